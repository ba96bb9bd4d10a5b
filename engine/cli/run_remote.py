"""``headrace run`` through a warm engine (``headrace serve``): submit, show progress, print the summary.

What the user sees is what a run in this process shows: warnings and problems as ``file:line:col``, a
progress line on stderr, the same summary table or ``--json`` object, the same exit codes; Ctrl-C
cancels the run on the engine and waits for its end (a second Ctrl-C leaves at once). This module
stays light: no Ray, no pyarrow, no pipeline models.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import click

from engine.errors import ConfigError, Diagnostic
from engine.service.client import EngineClient, EngineTarget, Refused

_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)")
_LINE_EVERY_S = 5.0
_INTERNAL = 70


def run_remote(
    target: EngineTarget,
    *,
    path: str,
    overrides: Sequence[str],
    as_json: bool,
    run_id: str | None,
    resume: str | None,
    graph_input: Mapping[str, Any] | None,
    checkpoint: str | None,
    cache: bool,
) -> int:
    """Run the pipeline on the engine at ``target``; return the exit code ``headrace run`` exits with."""
    text = sys.stdin.read() if path == "-" else None
    body = request_body(path, overrides, cache=cache, text=text)
    for key, value in (("run_id", run_id), ("resume", resume), ("inputs", graph_input)):
        if value is not None:
            body[key] = value
    if checkpoint is not None:
        body["checkpoint"] = checkpoint if "://" in checkpoint else os.path.abspath(checkpoint)
    client = EngineClient(target)
    try:
        try:
            created = client.submit(body)
        except Refused as exc:
            raise ConfigError([Diagnostic(**p) for p in exc.problems]) from None
        for warning in created.get("warnings", []):
            click.echo(Diagnostic(**warning).format(), err=True)
        end = _follow(client, created["run_id"], progress=not as_json)
    finally:
        client.close()
    return _finish(end, as_json)


def request_body(
    path: str, overrides: Sequence[str], *, cache: bool, text: str | None = None
) -> dict[str, Any]:
    """The body of a run request for the pipeline at ``path`` (or its ``text``, read from stdin): the
    ``--set`` values, this directory, and the variables the pipeline names that are set here."""
    body: dict[str, Any] = {
        "overrides": list(overrides),
        "cwd": os.getcwd(),
        "env": _referenced_env(text if text is not None else _read(path), overrides),
        "cache": cache,
    }
    body.update({"pipeline": text} if text is not None else {"path": path})
    return body


def _follow(client: EngineClient, run_id: str, *, progress: bool) -> dict[str, Any]:
    line = _ProgressLine(enabled=progress)
    cancelled = False
    while True:
        try:
            for kind, data in client.events(run_id):
                if kind == "progress":
                    line.show(data.get("summary") or {})
                elif kind == "end":
                    line.close()
                    return data
        except KeyboardInterrupt:
            if cancelled:
                raise  # a second Ctrl-C: leave now (the engine goes on cancelling)
            cancelled = True
            line.close()
            click.echo(f"cancelling run {run_id} on the engine (Ctrl-C again to leave at once)", err=True)
            client.cancel(run_id)


def _finish(end: dict[str, Any], as_json: bool) -> int:
    summary = end.get("summary")
    if summary is not None:
        click.echo(json.dumps(summary, indent=None) if as_json else end.get("text", ""))
        return int(end.get("exit_code", 0))
    error = end.get("error") or {}
    if error.get("problems"):
        raise ConfigError([Diagnostic(**p) for p in error["problems"]])
    code = int(end.get("exit_code", _INTERNAL))
    if error.get("code") == "internal":
        click.echo(
            f"internal error: {error.get('message')} (this is a bug in headrace; the engine's log has the "
            "traceback with HEADRACE_DEBUG=1; please report it)",
            err=True,
        )
    elif error.get("code") == "cancelled":
        click.echo("interrupted", err=True)
    else:
        click.echo(f"error: {error.get('message')}", err=True)
    return code


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.read()
    except OSError:
        return ""  # the engine reports the unreadable file, located, as `validate` does


def _referenced_env(text: str, overrides: Sequence[str]) -> dict[str, str]:
    """The variables the pipeline names (``${NAME}``) that are set here: a run through the engine
    interpolates this shell's values, as a run in this process would."""
    names = set(_VARIABLE.findall(text))
    for override in overrides:
        names.update(_VARIABLE.findall(override))
    return {name: os.environ[name] for name in sorted(names) if name in os.environ}


class _ProgressLine:
    """The run's progress on stderr: one line rewritten on a terminal, a line every 5 s otherwise."""

    def __init__(self, *, enabled: bool) -> None:
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self.started = time.perf_counter()
        self.last = 0.0
        self.shown = False

    def show(self, summary: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        nodes = summary.get("nodes") or {}
        rows = " ".join(f"{name}={node.get('rows', 0):,}" for name, node in nodes.items())
        spend = "".join(
            f" {name}: {node.get('tokens', 0):,} tokens ${node.get('cost_usd', 0.0):.4f}"
            for name, node in nodes.items()
            if "llm" in node
        )
        text = f"[{now - self.started:6.1f}s]  rows: {rows}{spend and '  llm:' + spend}"
        if self.tty:
            sys.stderr.write("\r\x1b[2K" + text)
            sys.stderr.flush()
            self.shown = True
        elif now - self.last >= _LINE_EVERY_S:
            self.last = now
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.shown:
            sys.stderr.write("\r\x1b[2K")
            sys.stderr.flush()
            self.shown = False
