"""cluster/kuberay-service.yaml and the container entry point (engine/service/container.py): valid
Kubernetes objects, the token store on the volume, TLS from a secret, probes on the service's health
routes, the configuration a valid service configuration, and a command line ``headrace serve`` takes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from engine.cli.main import cli
from engine.service.config import load_service_config
from engine.service.container import serve_argv

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "cluster" / "kuberay-service.yaml"


def _objects() -> dict[str, dict[str, Any]]:
    return {doc["kind"]: doc for doc in yaml.safe_load_all(MANIFEST.read_text())}


def _container() -> dict[str, Any]:
    return dict(_objects()["Deployment"]["spec"]["template"]["spec"]["containers"][0])


def test_every_object_is_valid_kubernetes() -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate: dev extra")
    objects = _objects()
    assert set(objects) == {"PersistentVolumeClaim", "ConfigMap", "Deployment", "Service"}
    for obj in objects.values():
        kubernetes_validate.validate(obj, kubernetes_validate.latest_version(), strict=True)


def test_the_token_store_and_ledger_live_on_the_persistent_volume() -> None:
    objects = _objects()
    pod = objects["Deployment"]["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in _container()["env"]}
    mounts = {m["name"]: m["mountPath"] for m in _container()["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    state = next(name for name, path in mounts.items() if path == env["HEADRACE_HOME"])
    claim = volumes[state]["persistentVolumeClaim"]["claimName"]
    assert claim == objects["PersistentVolumeClaim"]["metadata"]["name"]
    assert objects["Deployment"]["spec"]["replicas"] == 1  # one SQLite ledger, ReadWriteOnce
    assert pod["securityContext"]["runAsNonRoot"] is True


def test_tls_comes_from_a_secret_and_the_probes_use_the_health_routes() -> None:
    container = _container()
    env = {e["name"]: e.get("value") for e in container["env"]}
    pod = _objects()["Deployment"]["spec"]["template"]["spec"]
    tls_volume = next(
        m["name"] for m in container["volumeMounts"] if m["mountPath"] == env["HEADRACE_TLS_DIR"]
    )
    assert "secretName" in next(v for v in pod["volumes"] if v["name"] == tls_volume)["secret"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "https", "scheme": "HTTPS"}
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    service = _objects()["Service"]
    assert service["spec"]["ports"][0]["targetPort"] == container["ports"][0]["name"]


def test_the_configmap_holds_a_valid_service_configuration(tmp_path: Path) -> None:
    text = _objects()["ConfigMap"]["data"]["service.yaml"]
    config = load_service_config("service.yaml", text)
    assert config.policy is not None and config.policy.name == "closed"
    assert set(config.quotas()) == {"team-a", "team-b"}


def test_the_entry_point_runs_serve_with_tls_from_the_pods_environment(tmp_path: Path) -> None:
    assert _container()["command"] == ["python", "-m", "engine.service.container"]
    tls = tmp_path / "tls"
    tls.mkdir()
    (tls / "tls.crt").write_text("x")
    (tls / "tls.key").write_text("x")
    config = tmp_path / "service.yaml"
    config.write_text("tenants: {}\n")
    env = {e["name"]: e["value"] for e in _container()["env"]}
    env.update(HEADRACE_TLS_DIR=str(tls), HEADRACE_SERVICE_CONFIG=str(config))
    argv = serve_argv(env)
    assert argv[:2] == ["headrace", "serve"]
    command = cli.get_command(click.Context(cli), "serve")
    assert command is not None
    params = command.make_context("serve", argv[2:]).params
    assert params["host"] == "0.0.0.0" and params["address"] == "ray://headrace-head-svc:10001"
    assert params["tls_cert"] == str(tls / "tls.crt") and params["config_path"] == str(config)
    assert not params["insecure"]
    # without the secret's files, plain HTTP only when asked for
    bare = {**env, "HEADRACE_TLS_DIR": str(tmp_path / "none")}
    assert "--tls-cert" not in serve_argv(bare) and "--insecure" not in serve_argv(bare)
    assert "--insecure" in serve_argv({**bare, "HEADRACE_INSECURE": "1"})
    with pytest.raises(SystemExit, match="HEADRACE_HOME"):
        serve_argv({})
