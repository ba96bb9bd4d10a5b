"""Converted pipeline_ex workflows run: every example offline, through ``replay``, and through the real
Anthropic and Gemini SDKs against the loopback server (HTTP on 127.0.0.1, no Ray)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from engine.graph.spec import graph_from_spec, recursion_limit_of
from engine.importers import import_pipeline_ex
from engine.importers.pipeline_ex import runtime
from engine.spec.loader import load_pipeline
from operators.providers.errors import RecordingMissing
from tests.loopback import LLMServer

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "pipeline_ex"
EXAMPLES = sorted((FIXTURES / "examples").glob("*.yaml"))
# Where pipeline_ex's runtime stops too, and why: these examples read a field that an LLM step's result
# ({text, success, cost, model}) never has
FAILS_AS_IN_PIPELINE_EX = {
    "comprehensive_config_example": "field 'content' not found in the result of step 'comprehensive_ana",
    "simple_comprehensive_example": "field 'content' not found in the result of step 'quick_analysis'",
    "data_transform_example": "input_source 'previous_response:generate_sample_data.orders' not found",
    "performance_demo": "data_source 'previous_response:generate_data:large_dataset' is not a list",
}


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A working directory holding the repository files the examples' `file` prompts read, offline
    providers, and an agent handler for the steps that need tools."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "README.md").write_text("# a project\n")
    (tmp_path / "lib" / "pipeline").mkdir(parents=True)
    (tmp_path / "lib" / "pipeline" / "config.ex").write_text("defmodule Pipeline.Config do\nend\n")
    monkeypatch.setenv("PIPELINE_EX_CLAUDE_PROVIDER", "offline")
    monkeypatch.setenv("PIPELINE_EX_GEMINI_PROVIDER", "offline")
    monkeypatch.setattr(runtime, "_agent_handlers", {})
    for kind in ("claude", "claude_smart", "claude_session", "codebase_query", "file_ops"):
        runtime.register_agent_handler(
            kind, lambda settings, prompt, steps: {"text": prompt, "success": True}
        )
    yield tmp_path


def _run(source: Path, out: Path) -> dict[str, Any]:
    result = import_pipeline_ex(str(source), base_dir=str(source.parent))
    assert result.ok and result.text is not None
    out.write_text(result.text)
    spec = load_pipeline(str(out)).spec
    app = graph_from_spec(spec, base_dir=str(out.parent)).compile()
    return dict(app.invoke({}, recursion_limit=recursion_limit_of(spec)).steps)


@pytest.mark.parametrize("source", EXAMPLES, ids=lambda p: p.stem)
def test_every_example_runs_offline_and_records_each_step(source: Path, workdir: Path) -> None:
    if source.stem in FAILS_AS_IN_PIPELINE_EX:
        with pytest.raises(Exception, match=FAILS_AS_IN_PIPELINE_EX[source.stem]):
            _run(source, workdir / source.name)
        return
    steps = _run(source, workdir / source.name)
    workflow = YAML(typ="safe").load(source.read_text())["workflow"]
    assert [s["name"] for s in workflow["steps"] if s["name"] not in steps] == []
    for step in workflow["steps"]:
        result = steps[step["name"]]
        if step["type"] in ("claude", "gemini", "claude_smart", "claude_extract", "claude_robust"):
            assert result.get("skipped") or (result["success"] is True and isinstance(result["text"], str))
        if step["type"] == "parallel_claude":
            assert set(result["individual_results"]) == {t["id"] for t in step["parallel_tasks"]}


def test_replay_answers_a_recorded_run_with_the_same_outputs(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = FIXTURES / "own" / "switch_and_checkpoint.yaml"
    recording = workdir / "rec.jsonl"
    for variable in ("PIPELINE_EX_CLAUDE_PROVIDER", "PIPELINE_EX_GEMINI_PROVIDER"):
        monkeypatch.setenv(variable, "replay")
    config = {"path": str(recording), "mode": "record", "provider": "offline"}
    monkeypatch.setenv(runtime.PROVIDER_CONFIG_VARIABLE, json.dumps({"replay": config}))
    recorded = _run(source, workdir / "a.yaml")
    monkeypatch.setenv(runtime.PROVIDER_CONFIG_VARIABLE, json.dumps({"replay": {**config, "mode": "replay"}}))
    assert _run(source, workdir / "b.yaml") == recorded
    assert len(recording.read_text().splitlines()) == 2  # lint_python and summary
    recording.write_text("")
    with pytest.raises(RecordingMissing):
        _run(source, workdir / "c.yaml")


def test_the_real_sdks_answer_through_the_loopback_server(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with LLMServer() as server:
        for variable in ("PIPELINE_EX_CLAUDE_PROVIDER", "PIPELINE_EX_GEMINI_PROVIDER"):
            monkeypatch.delenv(variable)  # the converted file's defaults: anthropic and gemini
        monkeypatch.setenv("ANTHROPIC_BASE_URL", server.url)
        monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
        monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", server.url)
        monkeypatch.setenv("GEMINI_API_KEY", "test-key")
        steps = _run(FIXTURES / "examples" / "simple_test.yaml", workdir / "simple.yaml")
        seen = [(r.provider, r.model) for r in server.requests]
    assert seen == [("gemini", "gemini-flash-lite-latest"), ("anthropic", "claude-haiku-4-5")]
    assert steps["gemini_test"]["success"] and steps["claude_test"]["success"]
    assert steps["claude_test"]["tokens"]["input"] > 0
