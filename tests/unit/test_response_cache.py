"""The response cache: answers round-trip on a local disk and on ``memory://``; only the very same request
is answered; bad files are misses (with one warning), never wrong answers or exceptions; concurrent
writers never expose half a file; and the default location follows the environment."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import multiprocessing
import pickle
import shutil
import threading
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
import pytest

from operators.providers.base import LlmRequest, LlmResponse
from operators.providers.cache import CacheStats, CacheWarning, ResponseCache, default_cache_url

SCHEMA = {"type": "object", "properties": {"label": {"type": "string"}}, "required": ["label"]}
REQUEST = LlmRequest(
    provider="anthropic",
    model="claude-haiku-4-5",
    prompt="Classify this ticket: the export button does nothing.",
    max_tokens=256,
    system="You triage support tickets.",
    temperature=0.0,
    output_schema=SCHEMA,
)
RESPONSE = LlmResponse(
    text=None,
    parsed={"label": "bug"},
    input_tokens=120,
    output_tokens=9,
    model="claude-haiku-4-5-20251001",
    latency_s=0.8,
    stop_reason="end_turn",
    request_id="req_0123",
)


@pytest.fixture(params=["local", "memory"])
def cache(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ResponseCache]:
    if request.param == "local":
        yield ResponseCache(str(tmp_path / "cache"))
        return
    url = f"memory://headrace-test-{uuid.uuid4().hex}"  # the memory filesystem is shared by the process
    yield ResponseCache(url)
    fs, root = fsspec.core.url_to_fs(url)
    if fs.exists(root):
        fs.rm(root, recursive=True)


def _fs(cache: ResponseCache) -> Any:
    return fsspec.core.url_to_fs(cache.url)[0]


def _files(cache: ResponseCache) -> list[str]:
    fs, root = fsspec.core.url_to_fs(cache.url)
    return sorted(fs.find(root)) if fs.exists(root) else []


def test_round_trip(cache: ResponseCache) -> None:
    assert cache.put(REQUEST, RESPONSE) is True
    assert cache.get(REQUEST) == RESPONSE
    assert cache.stats == CacheStats(hits=1, misses=0, writes=1)


def test_entry_is_plain_json_at_its_fingerprint(cache: ResponseCache) -> None:
    cache.put(REQUEST, RESPONSE)
    fingerprint = REQUEST.fingerprint()
    (path,) = _files(cache)  # no temporary file left behind
    assert path.endswith(f"/{fingerprint[:2]}/{fingerprint}.json")
    assert path == cache.path(REQUEST)
    entry = json.loads(_fs(cache).cat_file(path))
    assert entry == {"format": 1, "request": REQUEST.to_json(), "response": RESPONSE.to_json()}


def test_cached_answer_keeps_its_source_and_usage(cache: ResponseCache) -> None:
    offline = LlmResponse("hi", None, 3, 1, "m", 0.0, stop_reason="end_turn", source="offline")
    cache.put(REQUEST, offline)
    hit = cache.get(REQUEST)
    assert hit is not None and hit.source == "offline" and hit.input_tokens == 3


def test_missing_entry_and_missing_folder_are_a_quiet_miss(cache: ResponseCache) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cache.get(REQUEST) is None
    assert cache.stats == CacheStats(hits=0, misses=1, writes=0)


@pytest.mark.parametrize(
    "change",
    [
        {"max_tokens": 257},
        {"output_schema": {**SCHEMA, "required": []}},
        {"output_schema": None, "labels": ("bug", "question")},
        {"system": None},
        {"temperature": 0.7},
        {"prompt": REQUEST.prompt + " "},
        {"model": "claude-sonnet-4-5"},
        {"provider": "gemini"},
    ],
    ids=lambda change: ",".join(change),
)
def test_a_different_request_misses(cache: ResponseCache, change: dict[str, Any]) -> None:
    cache.put(REQUEST, RESPONSE)
    other = LlmRequest(**{**_fields(REQUEST), **change})
    assert cache.get(other) is None
    assert cache.get(REQUEST) == RESPONSE


def test_timeout_does_not_change_the_answer(cache: ResponseCache) -> None:
    cache.put(REQUEST, RESPONSE)
    assert cache.get(LlmRequest(**{**_fields(REQUEST), "timeout_s": 5.0})) == RESPONSE


def test_labels_given_as_a_list_hit_the_same_entry(cache: ResponseCache) -> None:
    # YAML gives lists; the request keeps a tuple, and the stored JSON has a list: all three must agree.
    as_list: Any = ["a", "b"]
    cache.put(
        LlmRequest(provider="gemini", model="gemini-2.5-flash", prompt="p", labels=("a", "b")), RESPONSE
    )
    assert (
        cache.get(LlmRequest(provider="gemini", model="gemini-2.5-flash", prompt="p", labels=as_list))
        == RESPONSE
    )


@pytest.mark.parametrize(
    "content",
    [
        b'{"format": 1, "request": {',
        b"\x80\x04\x95 not json, a pickle maybe",
        b"[]",
        b'{"format": 2, "request": {}, "response": {}}',
        b'{"format": 1}',
        b'{"format": 1, "request": "text", "response": {}}',
    ],
    ids=["truncated", "binary", "list", "future-format", "no-request", "request-not-object"],
)
def test_corrupt_file_is_a_miss_with_one_warning(cache: ResponseCache, content: bytes) -> None:
    path = cache.path(REQUEST)
    _fs(cache).makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    _fs(cache).pipe_file(path, content)
    with pytest.warns(CacheWarning, match=r"unreadable cache entry .*treating it as a miss") as caught:
        assert cache.get(REQUEST) is None
        assert cache.get(REQUEST) is None
    assert len(caught) == 1
    assert cache.stats.misses == 2
    # The next answer overwrites the bad entry.
    assert cache.put(REQUEST, RESPONSE)
    assert cache.get(REQUEST) == RESPONSE


def test_response_with_unknown_fields_is_a_miss_not_an_error(cache: ResponseCache) -> None:
    cache.put(REQUEST, RESPONSE)
    path = cache.path(REQUEST)
    entry = json.loads(_fs(cache).cat_file(path))
    entry["response"]["written_by_a_newer_version"] = True
    _fs(cache).pipe_file(path, json.dumps(entry).encode())
    with pytest.warns(CacheWarning, match="unknown response fields"):
        assert cache.get(REQUEST) is None


def test_tampered_request_is_a_miss_never_a_wrong_answer(cache: ResponseCache) -> None:
    cache.put(REQUEST, RESPONSE)
    path = cache.path(REQUEST)
    entry = json.loads(_fs(cache).cat_file(path))
    entry["request"]["prompt"] = "Something else entirely."
    _fs(cache).pipe_file(path, json.dumps(entry).encode())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cache.get(REQUEST) is None


def test_an_entry_stored_under_another_fingerprint_is_a_miss(cache: ResponseCache) -> None:
    # What a sha256 collision would look like: the file at B's key holds A's request and answer.
    other = LlmRequest(**{**_fields(REQUEST), "prompt": "A different ticket."})
    cache.put(REQUEST, RESPONSE)
    fs = _fs(cache)
    fs.makedirs(cache.path(other).rsplit("/", 1)[0], exist_ok=True)
    fs.pipe_file(cache.path(other), fs.cat_file(cache.path(REQUEST)))
    assert cache.get(other) is None
    assert cache.get(REQUEST) == RESPONSE


def test_concurrent_writers_never_expose_a_partial_file(cache: ResponseCache) -> None:
    # Big answers make a torn write likely if writes were not atomic; readers must always see a whole one.
    answers = [
        LlmResponse(
            text=str(n) * 200_000, parsed=None, input_tokens=n, output_tokens=n, model="m", latency_s=1.0
        )
        for n in range(6)
    ]
    cache.put(REQUEST, answers[0])
    seen: list[LlmResponse | None] = []
    errors: list[BaseException] = []
    start = threading.Barrier(len(answers) + 3)

    def write(answer: LlmResponse) -> None:
        try:
            start.wait()
            for _ in range(15):
                assert cache.put(REQUEST, answer)
        except BaseException as exc:
            errors.append(exc)

    def read() -> None:
        try:
            start.wait()
            for _ in range(60):
                seen.append(cache.get(REQUEST))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(a,)) for a in answers]
    threads += [threading.Thread(target=read) for _ in range(3)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert errors == []
    assert [w.message for w in caught if issubclass(w.category, CacheWarning)] == []
    assert len(seen) == 180 and all(response in answers for response in seen)
    assert _files(cache) == [cache.path(REQUEST)]  # every temporary file was renamed into place
    assert cache.stats.writes == 1 + 15 * len(answers)


def test_write_failure_warns_and_returns_false(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    cache = ResponseCache(str(blocker / "cache"))
    with pytest.warns(CacheWarning, match="could not write cache entry") as caught:
        assert cache.put(REQUEST, RESPONSE) is False
        assert cache.put(REQUEST, RESPONSE) is False
    assert len(caught) == 1
    assert cache.get(REQUEST) is None
    assert cache.stats == CacheStats(hits=0, misses=1, writes=0)


def test_a_deleted_local_folder_is_made_again(tmp_path: Path) -> None:
    cache = ResponseCache(str(tmp_path / "cache"))
    cache.put(REQUEST, RESPONSE)
    shutil.rmtree(tmp_path / "cache")  # a user clearing the cache while a run goes on
    assert cache.put(REQUEST, RESPONSE) is True
    assert cache.get(REQUEST) == RESPONSE


def test_cache_object_travels_to_workers_as_its_url(tmp_path: Path) -> None:
    cache = ResponseCache(str(tmp_path / "cache"))
    cache.put(REQUEST, RESPONSE)
    copy = pickle.loads(pickle.dumps(cache))
    assert copy.url == cache.url
    assert copy.get(REQUEST) == RESPONSE
    assert copy.stats == CacheStats(hits=1)


def test_cache_dir_variable_is_honoured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEADRACE_CACHE_DIR", str(tmp_path / "shared"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    cache = ResponseCache()
    assert cache.url == str(tmp_path / "shared")
    cache.put(REQUEST, RESPONSE)
    assert (tmp_path / "shared" / REQUEST.fingerprint()[:2] / f"{REQUEST.fingerprint()}.json").is_file()
    assert not (tmp_path / "xdg").exists()


def test_default_location_follows_xdg_then_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HEADRACE_CACHE_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert default_cache_url() == str(tmp_path / "home" / ".cache" / "headrace" / "llm")
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    assert default_cache_url() == str(tmp_path / "home" / ".cache" / "headrace" / "llm")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_url() == str(tmp_path / "xdg" / "headrace" / "llm")
    assert default_cache_url({"HEADRACE_CACHE_DIR": "s3://bucket/llm"}) == "s3://bucket/llm"


def test_home_relative_path_is_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    cache = ResponseCache("~/llm-cache")
    cache.put(REQUEST, RESPONSE)
    assert cache.url == str(tmp_path / "llm-cache")
    assert len(list((tmp_path / "llm-cache").rglob("*.json"))) == 1


def _fields(request: LlmRequest) -> dict[str, Any]:
    return {name: getattr(request, name) for name in LlmRequest.__dataclass_fields__}


# ---------------------------------------------------------------- one cache shared by several engines


def _engine_writes(url: str, engine: int, keys: int, rounds: int) -> dict[str, Any]:
    """One engine's worker: answer every shared key (its own answer, several times), and read them all
    while the other engines write; returns what it read and any warning."""
    cache = ResponseCache(url)
    requests = [dataclasses.replace(REQUEST, prompt=f"shared prompt {k}") for k in range(keys)]
    wrong: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(rounds):
            for k, request in enumerate(requests):
                cache.put(request, _answer(engine, k))
                for j, other in enumerate(requests):
                    found = cache.get(other)
                    if found is not None and found not in [_answer(e, j) for e in range(_ENGINES)]:
                        wrong.append(f"key {j}: {found!r}")
    return {"wrong": wrong, "warnings": [str(w.message) for w in caught], "writes": cache.stats.writes}


_ENGINES = 4


def _answer(engine: int, key: int) -> LlmResponse:
    # big enough that a torn write would show; each engine's answer to a key differs
    return dataclasses.replace(
        RESPONSE, text=f"engine {engine} key {key} " + "x" * 50_000, output_tokens=engine
    )


def _check_shared(url: str, results: list[dict[str, Any]], keys: int) -> None:
    assert [r["wrong"] for r in results] == [[]] * _ENGINES  # never another key's or a torn answer
    assert [r["warnings"] for r in results] == [[]] * _ENGINES
    final = ResponseCache(url)
    for k in range(keys):
        found = final.get(dataclasses.replace(REQUEST, prompt=f"shared prompt {k}"))
        assert found in [_answer(e, k) for e in range(_ENGINES)]  # the last writer's, whichever it was
    fs, root = fsspec.core.url_to_fs(url)
    names = [p.rsplit("/", 1)[1] for p in fs.find(root)]
    assert len(names) == keys and all(n.endswith(".json") and not n.startswith(".") for n in names)


def test_engines_in_several_processes_share_a_local_folder(tmp_path: Path) -> None:
    url, keys = str(tmp_path / "shared"), 12
    context = multiprocessing.get_context("spawn")  # fresh interpreters, as separate engines would be
    with concurrent.futures.ProcessPoolExecutor(_ENGINES, mp_context=context) as pool:
        futures = [pool.submit(_engine_writes, url, e, keys, 3) for e in range(_ENGINES)]
        results = [f.result(timeout=240) for f in futures]
    _check_shared(url, results, keys)
    assert sum(r["writes"] for r in results) == _ENGINES * keys * 3


def test_engines_sharing_a_memory_url_each_with_its_own_cache_object() -> None:
    url, keys = f"memory://headrace-shared-{uuid.uuid4().hex}", 12
    try:
        with concurrent.futures.ThreadPoolExecutor(_ENGINES) as pool:
            futures = [pool.submit(_engine_writes, url, e, keys, 3) for e in range(_ENGINES)]
            results = [f.result(timeout=240) for f in futures]
        _check_shared(url, results, keys)
    finally:
        fs, root = fsspec.core.url_to_fs(url)
        if fs.exists(root):
            fs.rm(root, recursive=True)


def test_a_hit_compares_the_whole_request_not_just_its_fingerprint(cache: ResponseCache) -> None:
    # the fast path compares canonical JSON text: a list and a tuple of labels are the same request,
    # another temperature is not, even when it is stored under this request's fingerprint
    labelled = dataclasses.replace(REQUEST, output_schema=None, labels=("bug", "other"))
    cache.put(labelled, RESPONSE)
    assert cache.get(dataclasses.replace(labelled, labels=["bug", "other"])) == RESPONSE  # type: ignore[arg-type]
    entry = json.loads(_fs(cache).cat_file(cache.path(labelled)))
    entry["request"]["temperature"] = 0.5
    _fs(cache).pipe_file(cache.path(labelled), json.dumps(entry).encode())
    assert cache.get(labelled) is None
