"""A dataflow's ``pipeline`` node on a real local Ray: the inlined sub-pipeline runs as the parent's nodes."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from engine.check import check_file
from engine.runtime import run_checked
from tests.unit.spec.test_inline import CHILD, PARENT

pytestmark = pytest.mark.usefixtures("ray_cluster")


def test_a_sub_pipeline_runs_on_the_rows_of_its_input_and_feeds_its_readers(
    tmp_path: Path, out_env: Path
) -> None:
    (tmp_path / "parts").mkdir()
    (tmp_path / "data.csv").write_text(
        "id,body\n1,the app crashes on start\n2,I was charged twice\n3,ok\n4,please refund me\n"
    )
    (tmp_path / "parts" / "triage.yaml").write_text(CHILD)
    (tmp_path / "parent.yaml").write_text(PARENT)
    summary = run_checked(check_file(str(tmp_path / "parent.yaml")), progress=False)
    assert summary.status == "succeeded", summary.error
    with open(next((out_env / "result").glob("part-*.csv")), newline="") as f:
        rows = sorted((int(r["id"]), r["team"]) for r in csv.DictReader(f))
    # the file's filter drops "ok"; its offline rules label the rest from the body, not "other": the rule
    # for the file's own params ("min 5)") does not fire since the node's params (min_length 3) replace
    # them; the parent's sql reads the labels
    assert rows == [(1, "bug"), (2, "billing"), (4, "billing")]
    assert summary.nodes["tickets"].rows == 4 and summary.nodes["triage.clean"].rows == 3
    assert summary.nodes["triage.label"].llm is not None
