"""State graphs from pipeline files through the real ``headrace`` command: run, runs list/show/history,
resume after kill -9 in another process, interrupts, forks, and the refusals a user meets."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.cli import HEADRACE, ROOT, run_headrace

NODES = "tests.integration.graph_nodes"

LOOP = f"""\
version: 1
name: grow-loop
max_steps: 50
params: {{want: 4}}
state:
  fields:
    found: {{type: array, default: [], reducer: append}}
    done: {{type: array, default: [], reducer: append}}
nodes:
  grow: {{op: call, fn: "{NODES}:grow"}}
  check: {{op: call, fn: "{NODES}:mark", kwargs: {{name: check}}}}
edges:
  - {{from: START, to: grow}}
  - {{from: grow, to: check}}
  - from: check
    branches:
      - {{when: "found | length >= params.want", to: END}}
      - {{to: grow}}
"""

CHAIN = f"""\
version: 1
name: crash-chain
state:
  fields:
    done: {{type: array, default: [], reducer: append}}
nodes:
  first: {{op: call, fn: "{NODES}:mark", kwargs: {{name: first}}}}
  second: {{op: call, fn: "{NODES}:mark", kwargs: {{name: second}}}}
  slow: {{op: call, fn: "{NODES}:slow"}}
  last: {{op: call, fn: "{NODES}:mark", kwargs: {{name: last}}}}
edges:
  - {{from: START, to: first}}
  - {{from: first, to: second}}
  - {{from: second, to: slow}}
  - {{from: slow, to: last}}
  - {{from: last, to: END}}
"""

ASK = f"""\
version: 1
name: ask-human
state:
  fields:
    answer: {{type: string}}
    done: {{type: array, default: [], reducer: append}}
nodes:
  prepare: {{op: call, fn: "{NODES}:mark", kwargs: {{name: prepare}}}}
  ask: {{op: call, fn: "{NODES}:ask"}}
edges:
  - {{from: START, to: prepare}}
  - {{from: prepare, to: ask}}
  - {{from: ask, to: END}}
"""


def write(tmp_path: Path, text: str, name: str = "graph.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def env_for(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"PYTHONPATH": str(ROOT), "GRAPH_NODES_LOG": str(tmp_path / "events.log"), **extra}


def events(tmp_path: Path) -> list[str]:
    log = tmp_path / "events.log"
    return log.read_text(encoding="utf-8").splitlines() if log.exists() else []


def ok_json(proc: subprocess.CompletedProcess[str], code: int = 0) -> Any:
    assert proc.returncode == code, proc.stderr + proc.stdout
    return json.loads(proc.stdout)


def test_a_yaml_loop_runs_and_its_steps_are_listed(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path}/runs.db"
    path = write(tmp_path, LOOP)
    env = env_for(tmp_path, HEADRACE_AUDIT_LOG=str(tmp_path / "audit.jsonl"))
    out = ok_json(run_headrace("run", path, "--checkpoint", store, "--json", "--run-id", "loop-1", env=env))
    assert out["run_id"] == "loop-1" and out["status"] == "succeeded"
    assert out["state"] == {"found": ["item0", "item1", "item2", "item3"], "done": ["check"] * 4}
    assert out["steps"] == 8 and out["checkpoint"] == store

    listed = ok_json(
        run_headrace("runs", "list", "--store", store, "--graph", "grow-loop", "--json", env=env)
    )
    assert [(r["run_id"], r["status"]) for r in listed] == [("loop-1", "succeeded")]

    steps = ok_json(run_headrace("runs", "history", "loop-1", "--store", store, "--json", env=env))
    assert [s["node"] for s in steps] == ["__input__", *["grow", "check"] * 4]
    assert steps[1]["keys"] == ["found"] and steps[1]["delta"] == {"found": ["item0"]}

    full = ok_json(
        run_headrace("runs", "history", "loop-1", path, "--store", store, "--state", "--json", env=env)
    )
    assert full[-1]["state"] == out["state"] and full[1]["state"] == {"found": ["item0"], "done": []}

    audit = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert [(e["event"], e["run_id"]) for e in audit] == [
        ("run_started", "loop-1"),
        ("run_finished", "loop-1"),
    ]
    assert audit[1]["status"] == "succeeded" and audit[0]["kind"] == "state_graph"

    shown = run_headrace("runs", "show", "loop-1", "--store", store, env=env)
    assert shown.returncode == 0, shown.stderr
    assert "run loop-1: succeeded" in shown.stdout and "last step: 8 check" in shown.stdout

    # the input overrides the defaults, read inline or from a file
    (tmp_path / "in.json").write_text('{"found": ["a", "b", "c"]}', encoding="utf-8")
    more = ok_json(
        run_headrace(
            "run", path, "--checkpoint", store, "--json", "--input", "@" + str(tmp_path / "in.json"), env=env
        )
    )
    assert more["state"]["found"] == ["a", "b", "c", "item3"]

    # retention: keep the newest run, delete the others with their checkpoints
    pruned = run_headrace("runs", "prune", "--store", store, "--keep-last", "1", env=env)
    assert pruned.returncode == 0 and "deleted 1 run" in pruned.stdout, pruned.stderr
    left = ok_json(run_headrace("runs", "list", "--store", store, "--json", env=env))
    assert [r["run_id"] for r in left] == [more["run_id"]]
    refused = run_headrace("runs", "prune", "--store", store, env=env)
    assert refused.returncode == 2 and "--older-than" in refused.stderr


def test_a_run_killed_with_sigkill_resumes_in_another_process_without_rerunning_finished_nodes(
    tmp_path: Path,
) -> None:
    store = f"sqlite:///{tmp_path}/runs.db"
    path = write(tmp_path, CHAIN)
    env = {**os.environ, **env_for(tmp_path, GRAPH_NODES_SLEEP_S="120")}
    env.pop("HEADRACE_DEBUG", None)
    proc = subprocess.Popen(
        [*HEADRACE, "run", str(path), "--checkpoint", store, "--run-id", "crash-1"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while "slow:start" not in events(tmp_path):
            assert proc.poll() is None, "the run ended before its slow node started"
            assert time.monotonic() < deadline, "the slow node never started"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert events(tmp_path) == ["first", "second", "slow:start"]

    listed = ok_json(run_headrace("runs", "list", "--store", store, "--json", env=env_for(tmp_path)))
    assert listed[0]["run_id"] == "crash-1" and listed[0]["status"] == "running"  # it never got to say

    resumed = ok_json(
        run_headrace("runs", "resume", "crash-1", path, "--store", store, "--json", env=env_for(tmp_path))
    )
    assert resumed["status"] == "succeeded"
    assert resumed["state"] == {"done": ["first", "second", "slow", "last"]}
    # finished nodes ran once; the node in flight when the process died ran again from its start
    assert events(tmp_path) == ["first", "second", "slow:start", "slow:start", "slow:end", "last"]


def test_a_fork_with_an_edited_state_gets_its_own_diverging_history(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path}/runs.db"
    path = write(tmp_path, LOOP)
    env = env_for(tmp_path)
    ok_json(run_headrace("run", path, "--checkpoint", store, "--json", "--run-id", "base", env=env))
    parent_before = ok_json(run_headrace("runs", "history", "base", "--store", store, "--json", env=env))

    forked = ok_json(
        run_headrace(
            "runs",
            "fork",
            "base",
            path,
            "--step",
            "2",
            "--update",
            '{"found": ["edited", "x", "y"]}',
            "--store",
            store,
            "--resume",
            "--json",
            env=env,
        )
    )
    assert forked["run_id"] != "base" and forked["status"] == "succeeded"
    # the edit went through the append reducer; the fork then goes on from step 2's next node (grow)
    assert forked["state"]["found"] == ["item0", "edited", "x", "y", "item4"]

    mine = ok_json(run_headrace("runs", "history", forked["run_id"], "--store", store, "--json", env=env))
    assert [s["node"] for s in mine] == ["__input__", "grow", "check", "__update__", "grow", "check"]
    assert [s["run_id"] for s in mine[:3]] == ["base"] * 3
    assert {s["run_id"] for s in mine[3:]} == {forked["run_id"]}
    assert mine[4]["delta"] == {"found": ["item4"]}  # where the base run's step 3 appended item1
    assert (
        ok_json(run_headrace("runs", "history", "base", "--store", store, "--json", env=env)) == parent_before
    )

    # without --resume the new id is printed; replay re-runs from a step with no edit
    new_id = run_headrace("runs", "fork", "base", path, "--step", "4", "--store", store, env=env)
    assert new_id.returncode == 0 and new_id.stdout.strip().startswith("run-")
    listed = ok_json(run_headrace("runs", "list", "--store", store, "--json", env=env))
    assert {"run_id": "base", "step": 4} in [r["parent"] for r in listed]
    replayed = ok_json(
        run_headrace("runs", "replay", "base", path, "--step", "4", "--store", store, "--json", env=env)
    )
    assert replayed["state"]["found"] == ["item0", "item1", "item2", "item3"]
    assert replayed["steps"] == 8 and replayed["run_id"] not in ("base", new_id.stdout.strip())


def test_an_interrupt_exits_0_with_how_to_resume_and_the_value_answers_it(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path}/runs.db"
    path = write(tmp_path, ASK)
    env = env_for(tmp_path)
    paused = run_headrace("run", path, "--checkpoint", store, "--run-id", "ask-1", env=env)
    assert paused.returncode == 0, paused.stderr
    assert "interrupted" in paused.stdout and "ship it?" in paused.stdout
    assert f"headrace runs resume ask-1 {path}" in paused.stdout

    shown = run_headrace("runs", "show", "ask-1", "--store", store, env=env)
    assert "run ask-1: interrupted" in shown.stdout and "next: ask" in shown.stdout

    done = ok_json(
        run_headrace("runs", "resume", "ask-1", path, "--store", store, "--value", '"yes"', "--json", env=env)
    )
    assert done["status"] == "succeeded" and done["state"] == {"answer": "yes", "done": ["prepare"]}
    assert events(tmp_path) == ["prepare", "answer:yes"]  # work before the interrupt was not repeated


def test_a_changed_graph_cannot_resume_a_run(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path}/runs.db"
    path = write(tmp_path, ASK)
    env = env_for(tmp_path)
    assert run_headrace("run", path, "--checkpoint", store, "--run-id", "ask-2", env=env).returncode == 0
    path.write_text(ASK.replace("{name: prepare}", "{name: prepared}"), encoding="utf-8")
    refused = run_headrace("runs", "resume", "ask-2", path, "--store", store, "--value", '"yes"', env=env)
    assert refused.returncode == 1
    assert "run 'ask-2' was started by a different graph" in refused.stderr


def test_a_failing_node_exits_3_and_names_the_node(tmp_path: Path) -> None:
    text = CHAIN.replace(f'"{NODES}:slow"', f'"{NODES}:boom"')
    path = write(tmp_path, text)
    proc = run_headrace(
        "run", path, "--checkpoint", f"sqlite:///{tmp_path}/runs.db", "--json", env=env_for(tmp_path)
    )
    out = ok_json(proc, code=3)
    assert out["status"] == "failed" and "node 'slow'" in out["error"] and "always fails" in out["error"]
    assert out["state"] == {"done": ["first", "second"]}
    assert out["next"] == ["slow"]  # the failed node stays pending: `runs resume` runs it again


def test_a_pipeline_mixing_dataflow_and_state_nodes_is_refused_where_it_mixes(tmp_path: Path) -> None:
    text = CHAIN.replace(
        "nodes:\n",
        "nodes:\n  src: {op: read_csv, path: in.csv}\n  out: {op: write_csv, input: src, path: o/}\n",
    )
    path = write(tmp_path, text)
    proc = run_headrace("run", path, "--checkpoint", f"sqlite:///{tmp_path}/runs.db", env=env_for(tmp_path))
    assert proc.returncode == 1, proc.stderr
    assert (
        f"{path}:7:" in proc.stderr
        and "node 'src' is a source node in a pipeline with state nodes" in proc.stderr
    )


def test_a_node_with_resources_runs_as_a_ray_task(tmp_path: Path) -> None:
    text = f"""\
version: 1
name: on-ray
state:
  fields:
    pids: {{type: object, default: {{}}, reducer: merge}}
nodes:
  heavy: {{op: call, fn: "{NODES}:where", kwargs: {{key: heavy}}, resources: {{num_cpus: 1}}}}
  light: {{op: call, fn: "{NODES}:where", kwargs: {{key: light}}}}
edges:
  - {{from: START, to: heavy}}
  - {{from: heavy, to: light}}
"""
    path = write(tmp_path, text)
    out = ok_json(
        run_headrace(
            "run", path, "--checkpoint", f"sqlite:///{tmp_path}/runs.db", "--json", env=env_for(tmp_path)
        )
    )
    assert out["status"] == "succeeded"
    assert out["state"]["pids"]["heavy"] != out["state"]["pids"]["light"]  # a Ray worker, not the runner


def test_input_that_does_not_fit_the_state_and_misused_options_exit_1_or_2(tmp_path: Path) -> None:
    path = write(tmp_path, LOOP)
    store = f"sqlite:///{tmp_path}/runs.db"
    env = env_for(tmp_path)
    bad = run_headrace("run", path, "--checkpoint", store, "--input", '{"found": 3, "nope": 1}', env=env)
    assert bad.returncode == 1 and "did not start: the input does not fit state" in bad.stderr
    assert "nope" in bad.stderr
    assert run_headrace("run", path, "--input", "{not json", env=env).returncode == 2
    state_without_path = run_headrace("runs", "history", "some-run", "--state", "--store", store, env=env)
    assert (
        state_without_path.returncode == 2 and "--state needs the pipeline file" in state_without_path.stderr
    )
    unknown = run_headrace("runs", "show", "no-such-run", "--store", store, env=env)
    assert unknown.returncode == 1 and "no run 'no-such-run'" in unknown.stderr
    dataflow = run_headrace(
        "run", ROOT / "configs" / "examples" / "quickstart.yaml", "--input", "{}", env=env
    )
    assert dataflow.returncode == 1 and "--input and --checkpoint are for state graphs" in dataflow.stderr
