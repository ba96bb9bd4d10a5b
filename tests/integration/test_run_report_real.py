"""``headrace runs report`` of runs the runtime really recorded: the quickstart dataflow in several
splits, and the review-loop state graph."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from engine.check import check_file
from engine.records import RunView, open_records
from engine.runtime import RunSummary, run_checked
from tests.unit.helpers import CONFIGS, invoke

pytestmark = pytest.mark.usefixtures("ray_cluster")


@pytest.fixture(autouse=True)
def _store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    url = f"sqlite:///{tmp_path}/runs.db"
    monkeypatch.setenv("HEADRACE_CHECKPOINTS", url)
    monkeypatch.setenv("HEADRACE_OUT", str(tmp_path / "out"))
    return url


def _report(run_id: str, tmp_path: Path) -> str:
    out = tmp_path / "report.html"
    result = invoke("runs", "report", run_id, "-o", str(out))
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(out)
    return out.read_text(encoding="utf-8")


def test_report_of_a_real_dataflow_run(tmp_path: Path, _store: str) -> None:
    checked = check_file(
        str(CONFIGS / "examples" / "quickstart.yaml"), overrides=["nodes.input.split_bytes=2000"]
    )
    summary = run_checked(checked, progress=False)
    assert isinstance(summary, RunSummary) and summary.status == "succeeded"
    store = open_records(_store)
    view = RunView.of(store.events(summary.run_id))
    store.close()
    assert len(view.batches) >= 3  # several splits, so several bars

    html = _report(summary.run_id, tmp_path)
    assert f"<title>quickstart · {summary.run_id}</title>" in html
    assert len(re.findall(r'<g class="dag-node ok" data-node="', html)) == 5
    assert len(re.findall(r'<rect class="bar attempt-1"', html)) == len(view.batches)
    written = summary.nodes["output"].rows
    assert f"<dt>rows written</dt>\n    <dd>{written:,}</dd>" in html
    assert "no LLM cost in this run" in html  # the offline provider is free


def test_report_of_a_real_graph_run(tmp_path: Path) -> None:
    result = invoke("run", str(CONFIGS / "examples" / "review_loop.yaml"), "--json")
    assert result.exit_code == 0, result.output
    run_id = json.loads(result.stdout)["run_id"]
    html = _report(run_id, tmp_path)
    assert len(re.findall(r'<g class="dag-node ok" data-node="', html)) == 3  # write, review, publish
    assert 'class="dag-endpoint"' in html and 'class="edge back"' in html  # START/END, review → write
    steps = len(re.findall(r'<rect class="bar attempt-1"', html))
    assert steps == json.loads(result.stdout)["steps"]
