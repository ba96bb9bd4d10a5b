"""``headrace bench`` on the examples, on the suite's Ray (in this process, as a warm engine): variants,
an input of a size, the LLM figures of the offline provider, a baseline that fails on purpose, and the
per-machine figures of ``--address``. Against ``headrace serve``: tests/integration/test_serve.py (it
shares that module's server); on a two-node cluster: tests/integration/test_cluster.py. Tiny inputs and
two repeats: these check the plumbing, not speed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow.csv as pcsv
import pytest
from click.testing import CliRunner, Result

from engine.cli import cli

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("ray_cluster")]

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "configs" / "examples"
TICKET_ROWS = pcsv.read_csv(EXAMPLES / "data" / "tickets.csv").num_rows
FAST = ("--repeats", "2", "--warmup", "0", "--reruns", "0", "--json", "--no-engine")


def _bench(*args: str | Path, home: Path, out: Path) -> tuple[Result, dict[str, Any]]:
    env = {"HEADRACE_HOME": str(home), "HEADRACE_OUT": str(out), "HEADRACE_ENGINE": ""}
    result = CliRunner().invoke(cli, ["bench", *map(str, args)], env=env)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result, json.loads(result.stdout.strip().splitlines()[-1])


def test_quickstart_with_vary_measures_every_combination_to_scratch(tmp_path: Path) -> None:
    report = tmp_path / "report.html"
    result, doc = _bench(
        EXAMPLES / "quickstart.yaml",
        *FAST,
        "--vary",
        "defaults.batch_rows=1000",
        "--vary",
        "nodes.clean.where=length(body) >= 5,length(body) >= 30",
        "-o",
        report,
        home=tmp_path / "home",
        out=tmp_path / "out",
    )
    assert result.exit_code == 0, result.output
    # every combination (the unit tests check larger products; each run here costs seconds)
    assert [v["name"] for v in doc["variants"]] == [
        f"defaults.batch_rows=1000 nodes.clean.where=length(body) >= {n}" for n in (5, 30)
    ]
    assert not (tmp_path / "out").exists()  # every run wrote to scratch, not to ${HEADRACE_OUT}
    for variant in doc["variants"]:
        assert len(variant["repeats"]) == 2
        f = variant["figures"]
        for key in ("wall_s", "input_mb_per_s", "rows_per_s", "cpu_s_per_gb", "peak_memory_mb", "tree_cpu_s"):
            assert f[key]["min"] <= f[key]["median"] <= f[key]["max"] and f[key]["max"] > 0, key
        assert f["peak_object_store_mb"] is not None and f["other_cpu_share"] is not None
        assert set(f["nodes"]) == {"input", "clean", "normalise", "triage", "output"}
        assert f["nodes"]["input"]["rows_per_s"]["median"] > 0
        assert f["llm"]["triage"]["requests_per_s"]["median"] > 0
        assert all(r["rows_in"] == TICKET_ROWS for r in variant["repeats"])  # the tickets, every repeat
    # each variant ran with its own value: the stricter filter passes fewer rows to the LLM step
    loose, strict = doc["variants"][0], doc["variants"][1]
    assert strict["repeats"][0]["nodes"]["triage"]["rows"] < loose["repeats"][0]["nodes"]["triage"]["rows"]
    assert doc["where"]["mode"] == "local" and doc["machine"]["cores"] >= 1
    assert report.read_text(encoding="utf-8").count("<svg") == 4  # throughput, 2 memory, node time


def test_csv_to_parquet_on_an_input_of_a_size_and_a_baseline_that_fails_on_purpose(tmp_path: Path) -> None:
    home = tmp_path / "home"
    common = (EXAMPLES / "csv_to_parquet.yaml", *FAST, "--input-size", "300KB")
    saved, doc = _bench(*common, "--save-baseline", "main", home=home, out=tmp_path / "out")
    assert saved.exit_code == 0, saved.output
    (built,) = doc["inputs"]
    assert 300_000 <= built["bytes"] < 301_000 and built["copies"] > 30
    repeat = doc["variants"][0]["repeats"][0]
    assert repeat["rows_in"] == built["rows"] and repeat["bytes_in"] >= built["bytes"] - 1000
    # the baseline claims this machine was a thousand times faster: every speed figure now regresses
    path = home / "bench" / "baselines" / "main.json"
    baseline = json.loads(path.read_text())
    figures = baseline["variants"]["default"]["figures"]
    figures["wall_s"]["median"] /= 1000
    figures["rows_per_s"]["median"] *= 1000
    figures["input_mb_per_s"]["median"] *= 1000
    path.write_text(json.dumps(baseline))
    failed, doc = _bench(
        *common, "--baseline", "main", "--max-regression", "10%", home=home, out=tmp_path / "o"
    )
    assert failed.exit_code == 5, failed.output
    assert doc["baseline"]["compared"] is True and "same kind of machine" in doc["baseline"]["reason"]
    assert {r["figure"] for r in doc["baseline"]["regressions"]} == {"wall_s", "rows_per_s", "input_mb_per_s"}
    assert doc["exit_code"] == 5


def test_llm_classify_offline_reports_requests_tokens_cost_rate_limit_and_retries(tmp_path: Path) -> None:
    result, doc = _bench(
        EXAMPLES / "llm_classify.yaml",
        *FAST,
        "--set",
        "nodes.classify.provider=offline",
        "--set",
        "providers.offline.rate_limits.requests_per_minute=100000",
        home=tmp_path / "home",
        out=tmp_path / "out",
    )
    assert result.exit_code == 0, result.output
    llm = doc["variants"][0]["figures"]["llm"]["classify"]
    assert llm["requests_per_s"]["median"] > 0 and llm["tokens_per_s"]["median"] > 0
    assert llm["cost_per_1k_rows"]["median"] == 0.0  # offline is free
    assert 0 < llm["rate_limit_share"]["median"] < 1
    assert llm["retries"]["max"] == 0
    assert not (tmp_path / "out").exists()  # dead letters too went to scratch


def test_on_a_cluster_the_figures_are_per_machine_too(tmp_path: Path) -> None:
    # the suite's Ray is one node; --address makes bench probe every node of the Ray it runs on
    result, doc = _bench(
        EXAMPLES / "csv_to_parquet.yaml",
        *FAST,
        "--address",
        "auto",
        home=tmp_path / "home",
        out=tmp_path / "out",
    )
    assert result.exit_code == 0, result.output
    assert doc["where"]["mode"] == "cluster" and doc["where"]["nodes"] == 1
    (machine,) = doc["variants"][0]["figures"]["machines"].values()
    assert machine["host"] and machine["peak_memory_mb"]["median"] > 0 and machine["tree_cpu_s"]["max"] > 0
