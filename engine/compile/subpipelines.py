"""``pipeline`` nodes at compile time: the files they run are checked and compiled too, and drawn.

A ``pipeline`` node's file is validated and compiled as ``validate`` would on its own (its problems keep
their own file, line and column), and must be a state graph (a dataflow's ``pipeline`` nodes are
inlined when it is loaded: ``engine.spec.inline``); a file that runs itself through ``pipeline`` nodes,
directly or not, is an error at the node that closes the cycle, naming the chain.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from engine.check import CheckedPipeline, check_file, locate
from engine.errors import ConfigError, Diagnostic
from engine.plan import Problem
from engine.plan.render import Cluster

__all__ = ["clusters_of", "subpipeline_problems"]


def subpipeline_problems(
    checked: CheckedPipeline, chain: tuple[str, ...], compile_one: Callable[..., Any]
) -> list[Diagnostic]:
    """Problems of the files ``checked``'s ``pipeline`` nodes run (``chain``: the files running it)."""
    doc = checked.loaded.document
    chain = (*chain, os.path.abspath(doc.path))
    out: list[Diagnostic] = []
    for name, node in checked.loaded.spec.nodes.items():
        if node.op != "pipeline":
            continue
        ref = str(getattr(node, "path", ""))
        path = _resolve(checked, ref)
        where = ("nodes", name, "path")
        if os.path.abspath(path) in chain:
            names = " -> ".join(_shown(p) for p in (*chain, os.path.abspath(path)))
            out.append(locate(Problem(where, f"pipeline cycle: {names}", code="compose"), doc))
            continue
        if not os.path.isfile(path):
            out.append(
                locate(Problem(where, f"node '{name}': sub-pipeline {ref!r} is not a file ({path})"), doc)
            )
            continue
        try:
            sub = check_file(path)
        except ConfigError as exc:
            out += exc.diagnostics
            continue
        if not (sub.loaded.spec.edges or any(n.kind == "state" for n in sub.loaded.spec.nodes.values())):
            message = (
                f"node '{name}': sub-pipeline {ref!r} is a dataflow; a state graph's `pipeline` node runs "
                "state graphs"
            )
            hint = "in a dataflow pipeline, give the node `input: NODE` to inline it there"
            out.append(locate(Problem(where, message, hint), doc))
            continue
        out += compile_one(sub, credentials="warning", _chain=chain).problems
    return out


def _resolve(checked: CheckedPipeline, ref: str) -> str:
    """A ``pipeline`` node's file, relative to its pipeline's file as that file was named (so problems
    in it are shown the way the user named the parent)."""
    own = checked.loaded.document.path
    if os.path.isabs(ref):
        return ref
    if own in ("-", "<stdin>") or checked.cwd is not None:
        return os.path.join(checked.base_dir(), ref)
    return os.path.join(os.path.dirname(own), ref)


def _shown(path: str) -> str:
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative


def clusters_of(checked: CheckedPipeline, chain: tuple[str, ...] = ()) -> dict[str, Cluster]:
    """Node id -> the sub-pipeline it runs, for every ``pipeline`` node whose file checks (a file
    already on ``chain``, i.e. a cycle, or one with errors is drawn as a plain node; `validate` names
    its problems)."""
    chain = (*chain, os.path.abspath(checked.loaded.document.path))
    out: dict[str, Cluster] = {}
    for name, node in checked.loaded.spec.nodes.items():
        if node.op != "pipeline":
            continue
        ref = str(getattr(node, "path", ""))
        path = _resolve(checked, ref)
        if os.path.abspath(path) in chain:
            continue
        try:
            sub = check_file(path)
        except ConfigError:
            continue
        out[name] = Cluster(ref, sub.plan, clusters_of(sub, chain))
    return out
