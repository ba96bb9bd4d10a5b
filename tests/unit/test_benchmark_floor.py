"""``python -m benchmarks.floor`` on the smallest dataset: the plumbing, not the figures."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.csv as pacsv

from benchmarks.floor import MODES, STAGES, main


def test_floor_runs_each_mode_and_writes_what_each_stage_cost(tmp_path: Path) -> None:
    results, data = tmp_path / "results", tmp_path / "data"
    assert (
        main(["--size", "16e6", "--repeats", "2", "--results-dir", str(results), "--data-dir", str(data)])
        == 0
    )
    (json_file,) = results.glob("*-csv-floor.json")
    doc = json.loads(json_file.read_text())
    (csv_file,) = doc["dataset"]["files"]
    source = pacsv.read_csv(csv_file)
    kept = pc.sum(pc.greater(source["number"], 0.5)).as_py()  # the csv_sql query keeps number > 0.5
    assert set(doc["modes"]) == set(MODES)
    for mode in doc["modes"].values():
        assert mode["rows_out"] == kept > 0
        stages = mode["stages_cpu_s_per_gb"]
        assert set(stages) == set(STAGES) and all(v >= 0 for v in stages.values())
        assert mode["cpu_s_per_gb_min"] <= mode["cpu_s_per_gb"] <= mode["cpu_s_per_gb_max"]
        assert stages["read"] > 0 and stages["write"] > 0
    table = json_file.with_suffix(".md").read_text()
    assert all(f"| {name} ({codec}) |" in table for name, codec in MODES.items())
