"""A benchmark session without measuring anything: what ``--only`` selects, the order families run in,
a failing family, and the index the session writes (the families here are stand-ins)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from benchmarks.harness import RunOptions
from benchmarks.session import FAMILIES, Family, run_session, select
from benchmarks.summary import SUMMARY_JSON, SUMMARY_MD


def test_only_selects_families_and_streaming_cases_in_session_order() -> None:
    assert select([]) == {
        "streaming": (),
        "llm": (),
        "graphs": (),
        "concurrency": (),
        "many": (),
        "estimate": (),
    }
    assert select(["many_sql"]) == {"many": ("many_sql",)}
    assert select(["concurrency", "llm"]) == {"llm": (), "concurrency": ()}
    assert select(["csv_sql"]) == {"streaming": ("csv_sql",)}
    assert select(["csv_sql", "parquet_transform"]) == {"streaming": ("parquet_transform", "csv_sql")}
    assert select(["csv_sql", "streaming"]) == {"streaming": ()}  # the family's name wins
    assert select(["streaming", "csv_sql"]) == {"streaming": ()}
    with pytest.raises(ValueError, match="no benchmark family or case 'nope'"):
        select(["nope"])


def _fake(name: str, ran: list[tuple[str, tuple[str, ...], Any]], fail: bool = False) -> Family:
    def run(options: RunOptions, cases: tuple[str, ...]) -> dict[str, Any]:
        ran.append((name, cases, options.gate))
        if fail:
            raise RuntimeError("the loopback server did not start")
        doc: dict[str, Any] = {
            "family": f"the {name} family",
            "name": f"{name}-tiny",
            "mode": options.mode,
            "command": options.command,
            "machine": {"date": "2026-01-02T03:04:05+00:00", "cores": 2, "cpu_model": "cpu", "memory_gb": 4},
            "targets": [
                {"target": f"{name} ≥ 2× baseline", "source": "issue", "measured": "2.50×", "status": "met"}
            ],
            "wall_seconds": 1.0,
        }
        path = options.results_dir / f"2026-01-02-{doc['name']}.json"
        doc["results_file"] = str(path)
        path.write_text(json.dumps(doc))
        return doc

    return replace(FAMILIES[name], run=run)


def test_a_session_runs_the_selected_families_in_order_and_indexes_them_even_when_one_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ran: list[tuple[str, tuple[str, ...], Any]] = []
    for name in FAMILIES:
        monkeypatch.setitem(FAMILIES, name, _fake(name, ran, fail=name == "llm"))
    options = RunOptions(mode="tiny", results_dir=tmp_path, command="python -m benchmarks run --tiny")
    session = run_session(options, ["concurrency", "csv_sql", "llm"])
    assert [(n, c) for n, c, _ in ran] == [("streaming", ("csv_sql",)), ("llm", ()), ("concurrency", ())]
    assert all(gate == {"skipped": "tiny run: no quiet-machine check"} for _, _, gate in ran)
    assert set(session.docs) == {"streaming", "concurrency"}
    assert session.failed == {"llm": "RuntimeError: the loopback server did not start"}
    index = (tmp_path / SUMMARY_MD).read_text()
    assert "which ran `streaming`, `concurrency` and failed to run `llm`." in index
    assert (
        f"| the streaming family (`streaming`) | `{tmp_path / '2026-01-02-streaming-tiny.json'}` |" in index
    )
    assert "| `llm` | failed in this session: RuntimeError: the loopback server did not start |" in index
    assert "| `graphs` | not run yet |" in index
    assert "| concurrency ≥ 2× baseline | issue | 2.50× | **met** |" in index

    ran.clear()
    run_session(replace(options, command="python -m benchmarks run --tiny --only graphs"), ["graphs"])
    assert [n for n, _, _ in ran] == ["graphs"]
    files = json.loads((tmp_path / SUMMARY_JSON).read_text())["families"]
    assert files == {
        "streaming": "2026-01-02-streaming-tiny.json",
        "concurrency": "2026-01-02-concurrency-tiny.json",
        "graphs": "2026-01-02-graphs-tiny.json",
    }
    index = (tmp_path / SUMMARY_MD).read_text()
    assert "which ran `graphs`." in index and "| `llm` | not run yet |" in index
    assert "`python -m benchmarks run --tiny` on 2026-01-02T03:04:05+00:00 (an earlier session" in index
    assert (
        "`python -m benchmarks run --tiny --only graphs` on 2026-01-02T03:04:05+00:00 (this session" in index
    )
