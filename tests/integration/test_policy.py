"""The operator's policy: files only under allowed roots and schemes, code only from allowed modules."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from engine.check import check_file
from engine.errors import ConfigError
from engine.runtime import run_checked

pytestmark = pytest.mark.usefixtures("ray_cluster")


def pipeline(tmp_path: Path, src: str, out: str, extra: str = "") -> Path:
    path = tmp_path / "pipe.yaml"
    path.write_text(
        f"""version: 1
name: policy
nodes:
  input: {{op: read_csv, path: "{src}"}}
{extra}
  output: {{op: write_parquet, input: {"udf" if extra else "input"}, path: "{out}"}}
""",
        encoding="utf-8",
    )
    return path


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "in.csv").write_text("n\n1\n2\n", encoding="utf-8")
    monkeypatch.setenv("HEADRACE_ALLOWED_ROOTS", str(allowed))
    return allowed


def test_paths_outside_the_roots_and_dot_dot_escapes_are_refused_at_their_line(
    tmp_path: Path, root: Path
) -> None:
    outside = tmp_path / "secret.csv"
    outside.write_text("n\n1\n", encoding="utf-8")
    escape = f"{root}/../secret.csv"
    with pytest.raises(ConfigError) as err:
        run_checked(check_file(str(pipeline(tmp_path, escape, f"{root}/out"))), progress=False)
    (diag,) = err.value.diagnostics
    assert diag.line == 4 and "outside the allowed roots" in diag.message and str(outside) in diag.message
    with pytest.raises(ConfigError) as err:
        run_checked(check_file(str(pipeline(tmp_path, f"{root}/in.csv", f"{tmp_path}/out"))), progress=False)
    (diag,) = err.value.diagnostics
    assert diag.line == 6 and "outside the allowed roots" in diag.message
    assert not (tmp_path / "out").exists()  # nothing written outside the roots


def test_a_symlink_out_of_an_allowed_folder_is_refused_when_the_folder_is_read(
    tmp_path: Path, root: Path
) -> None:
    folder = root / "inputs"
    folder.mkdir()
    (folder / "a.csv").write_text("n\n1\n", encoding="utf-8")
    outside = tmp_path / "elsewhere.csv"
    outside.write_text("n\n666\n", encoding="utf-8")
    os.symlink(outside, folder / "b.csv")
    summary = run_checked(check_file(str(pipeline(tmp_path, str(folder), f"{root}/out"))), progress=False)
    assert summary.status == "failed"
    assert "node 'input'" in (summary.error or "") and "elsewhere.csv" in (summary.error or "")
    assert not list((root / "out").glob("part-*"))


def test_schemes_and_modules_follow_the_policy(
    tmp_path: Path, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HEADRACE_ALLOWED_SCHEMES", "file")
    monkeypatch.setenv("HEADRACE_ALLOWED_ROOTS", f"{root}{os.pathsep}s3://team-bucket")
    with pytest.raises(ConfigError) as err:
        run_checked(
            check_file(str(pipeline(tmp_path, "s3://team-bucket/in.csv", f"{root}/o"))), progress=False
        )
    assert "scheme 's3' is not allowed" in err.value.diagnostics[0].message
    monkeypatch.setenv("HEADRACE_ALLOWED_MODULES", "mycompany.etl")
    udf = "  udf: {op: map_batches, input: input, fn: 'os:system'}"
    with pytest.raises(ConfigError) as err:
        run_checked(check_file(str(pipeline(tmp_path, f"{root}/in.csv", f"{root}/o", udf))), progress=False)
    (diag,) = err.value.diagnostics
    assert diag.line == 5 and "module 'os' is not in the allowed modules" in diag.message
    # allowed module and paths: the run goes through
    monkeypatch.setenv("HEADRACE_ALLOWED_MODULES", "tests")
    ok = "  udf: {op: map_batches, input: input, fn: 'tests.integration.udfs:double_n'}"
    summary = run_checked(
        check_file(str(pipeline(tmp_path, f"{root}/in.csv", f"{root}/o", ok))), progress=False
    )
    assert summary.status == "succeeded", summary.error
