"""Baselines of ``headrace bench``: a run's figures saved under a name in ``$HEADRACE_HOME/bench/``, and
the comparison of a later run with them that lets CI catch a regression.

Only figures measured on the same kind of machine are compared: the kind is the CPU model, core count,
memory (to the GB), architecture, where the runs went (this process's Ray, a served engine, a cluster)
and how many Ray nodes there were. Another kind is reported as not compared, with both kinds, and never
fails the check. A regression is a median that is worse than the baseline's by more than the allowed
share, on a speed figure: wall time (higher is worse), input MB/s and rows/s (lower is worse).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from engine.errors import HeadraceError
from engine.service.discovery import headrace_home

SPEED_FIGURES: tuple[tuple[str, str, bool], ...] = (
    ("wall_s", "wall time", False),
    ("input_mb_per_s", "input MB/s", True),
    ("rows_per_s", "input rows/s", True),
)
"""Figures a regression is judged on: key, name, whether higher is better."""

EXIT_REGRESSION = 5
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


class BaselineError(HeadraceError):
    """A baseline name that is not valid, or a baseline that is not there."""

    code = "bench_baseline"
    exit_code = 1


def baseline_dir(env: Mapping[str, str] | None = None) -> Path:
    """Where baselines are kept: ``$HEADRACE_HOME/bench/baselines``."""
    return headrace_home(env) / "bench" / "baselines"


def baseline_path(name: str, env: Mapping[str, str] | None = None) -> Path:
    """The file of baseline ``name``."""
    if not _NAME.match(name):
        raise BaselineError(
            f"baseline name {name!r}: use letters, digits, '.', '_' and '-' (it names a file under "
            f"{baseline_dir(env)})"
        )
    return baseline_dir(env) / f"{name}.json"


def machine_kind(machine: Mapping[str, Any], where: Mapping[str, Any]) -> dict[str, Any]:
    """What makes two measurements comparable (see the module's docstring)."""
    return {
        "cpu_model": machine.get("cpu_model"),
        "cores": machine.get("cores"),
        "memory_gb": round(float(machine.get("memory_gb") or 0)),
        "arch": machine.get("arch"),
        "mode": where.get("mode"),
        "ray_nodes": where.get("nodes"),
    }


def save_baseline(name: str, doc: Mapping[str, Any], env: Mapping[str, str] | None = None) -> Path:
    """Store ``doc``'s machine, kind and per-variant figures as baseline ``name``; returns its file."""
    path = baseline_path(name, env)
    path.parent.mkdir(parents=True, exist_ok=True)
    kept = {
        "name": name,
        "pipeline": doc["pipeline"],
        "machine": doc["machine"],
        "machine_kind": doc["machine_kind"],
        "where": doc["where"],
        "repeats": doc["settings"]["repeats"],
        "variants": {v["name"]: {"figures": v["figures"]} for v in doc["variants"]},
    }
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(kept, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def load_baseline(name: str, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Baseline ``name`` as saved."""
    path = baseline_path(name, env)
    try:
        return dict(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        saved = sorted(p.stem for p in baseline_dir(env).glob("*.json")) if baseline_dir(env).is_dir() else []
        raise BaselineError(
            f"no baseline {name!r} in {baseline_dir(env)} (saved: {', '.join(saved) or 'none'}); save one "
            "with --save-baseline NAME"
        ) from None
    except (OSError, ValueError) as exc:
        raise BaselineError(f"{path}: not a baseline ({exc})") from None


def parse_share(text: str) -> float:
    """``10%`` or ``0.1`` as 0.1."""
    value = text.strip()
    try:
        share = float(value[:-1]) / 100 if value.endswith("%") else float(value)
    except ValueError:
        raise ValueError(f"{text!r} is not a share: give a percentage such as 10%") from None
    if share < 0:
        raise ValueError(f"{text!r}: a regression allowance cannot be negative")
    return share


def compare(doc: Mapping[str, Any], baseline: Mapping[str, Any], max_regression: float) -> dict[str, Any]:
    """Compare ``doc``'s variants with ``baseline``'s: per variant and speed figure, the change of the
    median; ``regressions`` lists each figure worse than ``max_regression``; ``compared`` is False (with
    the reason) when the machines are not of the same kind."""
    result: dict[str, Any] = {
        "name": baseline["name"],
        "baseline_date": baseline["machine"].get("date"),
        "max_regression": max_regression,
        "machine_kind": baseline["machine_kind"],
    }
    if baseline["machine_kind"] != doc["machine_kind"]:
        differ = [k for k in doc["machine_kind"] if doc["machine_kind"][k] != baseline["machine_kind"].get(k)]
        result.update(
            compared=False,
            reason="not compared: the baseline was measured on another kind of machine ("
            + "; ".join(
                f"{k}: {baseline['machine_kind'].get(k)} then, {doc['machine_kind'][k]} now" for k in differ
            )
            + ")",
            variants={},
            regressions=[],
        )
        return result
    variants: dict[str, Any] = {}
    regressions: list[dict[str, Any]] = []
    for variant in doc["variants"]:
        before = baseline["variants"].get(variant["name"])
        if before is None:
            variants[variant["name"]] = {"compared": False, "reason": "not in the baseline"}
            continue
        changes: dict[str, Any] = {}
        for key, label, higher_better in SPEED_FIGURES:
            now, then = variant["figures"].get(key), before["figures"].get(key)
            if now is None or then is None or not then["median"]:
                continue
            change = (now["median"] - then["median"]) / then["median"]
            worse = -change if higher_better else change
            changes[key] = {"baseline": then["median"], "now": now["median"], "change": round(change, 4)}
            if worse > max_regression:
                regressions.append(
                    {
                        "variant": variant["name"],
                        "figure": key,
                        "label": label,
                        "baseline": then["median"],
                        "now": now["median"],
                        "worse_by": round(worse, 4),
                    }
                )
        variants[variant["name"]] = {"compared": True, "figures": changes}
    result.update(
        compared=True,
        reason="compared: the baseline was measured on the same kind of machine",
        variants=variants,
        regressions=regressions,
    )
    return result


def describe(comparison: Mapping[str, Any]) -> list[str]:
    """Lines for people: whether the baseline was compared, and each regression by name."""
    lines = [f"baseline {comparison['name']} ({comparison.get('baseline_date')}): {comparison['reason']}"]
    for r in comparison["regressions"]:
        lines.append(
            f"  regression: {r['variant']}: {r['label']} ({r['figure']}) {r['now']:g} against "
            f"{r['baseline']:g}, "
            f"{r['worse_by']:.1%} worse (allowed {comparison['max_regression']:.1%})"
        )
    return lines
