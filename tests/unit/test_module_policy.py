"""Code is allowed by where it is defined, not by the module it is reached through (issue 18.1).

With ``HEADRACE_ALLOWED_MODULES=tests.unit.policy_pkg`` (an operator's ``mycompany``), every import path
in :data:`BYPASSES` reaches code defined elsewhere (``subprocess``, ``os``, ``pyarrow``, builtins) and
must be refused before anything is called, for ``map_batches``, ``flat_map``, ``call`` and plugin entry
points alike; :data:`HONEST` paths still load.
"""

from __future__ import annotations

from importlib.metadata import EntryPoint
from pathlib import Path

import pyarrow as pa
import pytest

from engine.graph.spec import InvalidGraph, graph_from_spec
from engine.policy import Policy, PolicyViolation, import_object
from engine.spec.registry import RegistryError, load_entry_point
from operators.batch import batch_fn
from operators.transforms import FlatMap, MapBatches

PKG = "tests.unit.policy_pkg"
ALLOWED = Policy.open(modules=[PKG])

BYPASSES = [
    f"{PKG}:subprocess.run",  # a module it imported, then its function
    f"{PKG}:os.system",
    f"{PKG}:shell.system",  # the same module under another name
    f"{PKG}:pq.write_table",
    f"{PKG}:imported_run",  # `from subprocess import run as imported_run`
    f"{PKG}:write_table",  # re-exported from pyarrow.parquet
    f"{PKG}:partial_run",  # functools.partial over subprocess.run
    f"{PKG}:builtin_open",
    f"{PKG}:own.__globals__",
    f"{PKG}:Own.__init__.__globals__",
    f"{PKG}:settings.get",  # a builtin method of a dict defined here
    f"{PKG}:subprocess",  # a module is not a function
    PKG,  # no attribute at all
]
HONEST = [f"{PKG}:own", f"{PKG}:own_rows", f"{PKG}:Own", f"{PKG}:Own.step"]


@pytest.mark.parametrize("path", BYPASSES)
def test_attribute_paths_out_of_an_allowed_module_are_refused(path: str) -> None:
    with pytest.raises(PolicyViolation):
        import_object(path, ALLOWED)


@pytest.mark.parametrize(
    "path", [p for p in BYPASSES if ".__" in p or p.endswith(":subprocess") or ":" not in p]
)
def test_modules_and_internals_are_refused_even_by_the_open_policy(path: str) -> None:
    with pytest.raises(PolicyViolation):
        import_object(path, Policy.open())


@pytest.mark.parametrize("path", HONEST)
def test_functions_defined_in_the_allowed_module_load(path: str) -> None:
    assert callable(import_object(path, ALLOWED))


@pytest.fixture
def allowed_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEADRACE_ALLOWED_MODULES", PKG)


@pytest.mark.usefixtures("allowed_env")
def test_flat_map_does_not_run_a_command_named_by_a_csv_header(tmp_path: Path) -> None:
    target = tmp_path / "pwned"
    header_row = pa.table({"touch": ["x"], str(target): ["y"]})  # subprocess.run(row) runs its keys
    with pytest.raises(PolicyViolation):
        batch_fn(FlatMap(op="flat_map", input="i", fn=f"{PKG}:subprocess.run"))(header_row)
    assert not target.exists()


@pytest.mark.usefixtures("allowed_env")
def test_map_batches_does_not_write_through_a_reexported_function(tmp_path: Path) -> None:
    for fn in (f"{PKG}:pq.write_table", f"{PKG}:write_table"):
        target = tmp_path / "written.parquet"
        spec = MapBatches(op="map_batches", input="i", fn=fn, kwargs={"where": str(target)})
        with pytest.raises(PolicyViolation):
            batch_fn(spec)(pa.table({"n": [1]}))
        assert not target.exists(), fn
    assert (
        batch_fn(MapBatches(op="map_batches", input="i", fn=f"{PKG}:own"))(pa.table({"n": [1]})).num_rows == 1
    )


@pytest.mark.usefixtures("allowed_env")
@pytest.mark.parametrize("fn", [f"{PKG}:subprocess.run", f"{PKG}:imported_run"])
def test_a_call_node_is_refused_when_the_graph_is_built(fn: str) -> None:
    from engine.spec.loader import load_pipeline

    text = f"""version: 1
name: g
state: {{fields: {{n: {{type: integer, default: 0}}}}}}
nodes:
  step: {{op: call, fn: "{fn}"}}
edges: [{{from: START, to: step}}, {{from: step, to: END}}]
"""
    with pytest.raises(InvalidGraph, match=r"(policy does not allow|module)"):
        graph_from_spec(load_pipeline("g.yaml", content=text).spec)


@pytest.mark.parametrize(
    "value",
    [f"{PKG}:subprocess.run", f"{PKG}:imported_run", f"{PKG}:os", f"{PKG}:own.__globals__", "subprocess"],
)
def test_plugin_entry_points_follow_the_same_rule(value: str) -> None:
    ep = EntryPoint(name="evil", value=value, group="headrace.ops")
    with pytest.raises(RegistryError, match="evil"):
        load_entry_point(ep, ALLOWED)


def test_an_honest_plugin_entry_point_loads() -> None:
    ep = EntryPoint(name="fine", value=f"{PKG}:Own", group="headrace.ops")
    assert load_entry_point(ep, ALLOWED).__name__ == "Own"
    assert load_entry_point(EntryPoint(name="mod", value=PKG, group="headrace.ops"), ALLOWED).__name__ == PKG
