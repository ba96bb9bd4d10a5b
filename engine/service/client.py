"""The light client of a warm engine, for ``headrace run``: find it, submit, follow, cancel (httpx).

Nothing here imports Ray, pyarrow or the pipeline models: a run through the engine costs the client an
interpreter, click and httpx. :func:`find_engine` says which engine to use, if any: an explicit URL
(``--engine``, ``HEADRACE_ENGINE``), else the discovery file under ``$HEADRACE_HOME`` when its process is
alive and answers.
"""

from __future__ import annotations

import os
import ssl
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
from httpx_sse import connect_sse

from engine.errors import HeadraceError
from engine.service.discovery import discovery_path, live_info, read_info

_PROBE_S = 1.0
_RECONNECTS = 5


class EngineUnavailable(HeadraceError):
    """The engine named explicitly does not answer, or stopped answering during a run."""

    code = "engine_unavailable"
    exit_code = 1


class Refused(HeadraceError):
    """The engine refused the pipeline: ``problems`` are its located problems (as ``validate`` prints)."""

    code = "config_invalid"

    def __init__(self, message: str, problems: list[dict[str, Any]]) -> None:
        super().__init__(message)
        self.problems = problems


@dataclass(frozen=True)
class EngineTarget:
    """An engine to use: its URL and token."""

    url: str
    token: str | None


def find_engine(explicit: str | None, env: Mapping[str, str] | None = None) -> EngineTarget | None:
    """The engine ``headrace run`` should use: ``explicit`` (a URL; its token from the discovery file
    when that names the same URL, else ``$HEADRACE_ENGINE_TOKEN``), else a live discovery file's, else
    None (run with a private Ray)."""
    env = os.environ if env is None else env
    where = discovery_path(env)
    if explicit:
        url = explicit.rstrip("/")
        info = read_info(where)
        token = info.token if info is not None and info.url == url else env.get("HEADRACE_ENGINE_TOKEN")
        target = EngineTarget(url, token)
        if not _answers(target):
            raise EngineUnavailable(
                f"no headrace engine answers at {url}; start one with `headrace serve`, or run without "
                "it (--no-engine)"
            )
        return target
    info = live_info(where)
    if info is None:
        return None
    target = EngineTarget(info.url, info.token)
    return target if _answers(target) else None  # a stale file (its port now someone else's, or hung)


def _verify() -> ssl.SSLContext | bool:
    """How to check an HTTPS engine's certificate: ``$HEADRACE_ENGINE_CA`` (a PEM bundle, e.g. the
    self-signed certificate itself), else the system's authorities."""
    ca = os.environ.get("HEADRACE_ENGINE_CA")
    return ssl.create_default_context(cafile=ca) if ca else True


def _answers(target: EngineTarget) -> bool:
    try:
        response = httpx.get(f"{target.url}/healthz", timeout=_PROBE_S, verify=_verify())
    except httpx.HTTPError:
        return False
    return response.status_code == 200


class EngineClient:
    """Calls to one engine's ``/v1`` API."""

    def __init__(self, target: EngineTarget) -> None:
        headers = {"Authorization": f"Bearer {target.token}"} if target.token else {}
        # no read timeout: an event stream is quiet while a run works (the server sends keep-alives)
        self.url = target.url
        self._last_event: dict[str, str] = {}
        self._http = httpx.Client(
            base_url=target.url, headers=headers, timeout=httpx.Timeout(30.0, read=None), verify=_verify()
        )

    def close(self) -> None:
        """Close the connections."""
        self._http.close()

    def submit(self, body: dict[str, Any]) -> dict[str, Any]:
        """``POST /v1/runs``: the accepted run (``run_id``, ``status``, ``warnings``); raises
        :class:`Refused` for an invalid pipeline."""
        response = self._request("POST", "/v1/runs", json=body)
        if response.status_code == 422:
            data = response.json()
            if "problems" in data:
                raise Refused(data.get("detail", "invalid pipeline"), data["problems"])
        _raise_for(response)
        return dict(response.json())

    def cancel(self, run_id: str) -> None:
        """``POST /v1/runs/{id}/cancel``."""
        _raise_for(self._request("POST", f"/v1/runs/{run_id}/cancel"))

    def get(self, run_id: str) -> dict[str, Any]:
        """``GET /v1/runs/{id}``."""
        response = self._request("GET", f"/v1/runs/{run_id}")
        _raise_for(response)
        return dict(response.json())

    def events(self, run_id: str) -> Iterator[tuple[str, dict[str, Any]]]:
        """``(kind, data)`` of each event of the run until its ``end``, reconnecting with
        ``Last-Event-ID`` when the stream breaks (or when called again for the same run)."""
        last = self._last_event.get(run_id)
        failures = 0
        while True:
            headers = {"Last-Event-ID": last} if last is not None else {}
            try:
                with connect_sse(self._http, "GET", f"/v1/runs/{run_id}/events", headers=headers) as source:
                    _raise_for(source.response)
                    for sse in source.iter_sse():
                        if not sse.data:
                            continue  # a keep-alive comment
                        failures = 0
                        last = sse.id or last
                        if last is not None:
                            self._last_event[run_id] = last
                        yield sse.event, sse.json()
                        if sse.event == "end":
                            return
            except httpx.TransportError as exc:
                reason = str(exc) or type(exc).__name__
            else:
                reason = "the stream closed before the run ended"
            failures += 1
            if failures > _RECONNECTS:
                raise EngineUnavailable(
                    f"the engine at {self.url} stopped answering during run {run_id} ({reason}); its "
                    f"record: `headrace runs show {run_id}`"
                )
            time.sleep(min(0.1 * 2**failures, 2.0))

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise EngineUnavailable(f"the engine at {self.url} does not answer ({exc})") from None


def _raise_for(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    if response.status_code == 401:
        raise EngineUnavailable(
            f"the engine at {response.request.url.host}:{response.request.url.port} refused the token "
            "(401); use the discovery file's engine, or set HEADRACE_ENGINE_TOKEN"
        )
    try:
        detail = response.json().get("detail")
    except ValueError:
        detail = response.text
    raise EngineUnavailable(f"the engine answered {response.status_code}: {detail}")
