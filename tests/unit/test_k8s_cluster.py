"""Cluster files, validated offline: ray-cluster.yaml and the KubeRay RayCluster/RayService
declare what the code really requests, agree with each other, and the Serve config inside
the RayService is one Ray's own schema accepts, for the deployment serve/app.py declares."""

import json
from pathlib import Path

import jsonschema
import pytest
import ray.autoscaler
import yaml
from ray.serve.schema import ServeDeploySchema

from actors.cart.actor import CartShard
from actors.inventory.actor import InventoryShard
from actors.order.actor import OrderShard
from actors.session.actor import SessionShard
from serve.app import Api

ROOT = Path(__file__).resolve().parents[2]
LAUNCHER = yaml.safe_load((ROOT / "ray-cluster.yaml").read_text())
RAYCLUSTER = yaml.safe_load((ROOT / "cluster/k8s/raycluster.yaml").read_text())
RAYSERVICE = yaml.safe_load((ROOT / "cluster/k8s/rayservice.yaml").read_text())
SHARDS = (CartShard, InventoryShard, OrderShard, SessionShard)

# The subset of KubeRay v1's CRD schemas (ray.io_rayclusters / ray.io_rayservices,
# openAPIV3Schema) these manifests rely on: required fields and their types.
_CONTAINER = {
    "type": "object",
    "required": ["name", "image"],
    "properties": {
        "name": {"type": "string"},
        "image": {"type": "string"},
        "resources": {
            "type": "object",
            "properties": {
                "requests": {"type": "object", "additionalProperties": {"type": "string"}},
                "limits": {"type": "object", "additionalProperties": {"type": "string"}},
            },
        },
    },
}
_POD_TEMPLATE = {
    "type": "object",
    "required": ["spec"],
    "properties": {
        "spec": {
            "type": "object",
            "required": ["containers"],
            "properties": {"containers": {"type": "array", "minItems": 1, "items": _CONTAINER}},
        }
    },
}
_START_PARAMS = {"type": "object", "additionalProperties": {"type": "string"}}
RAYCLUSTER_SPEC = {
    "type": "object",
    "required": ["headGroupSpec"],
    "properties": {
        "rayVersion": {"type": "string"},
        "enableInTreeAutoscaling": {"type": "boolean"},
        "headGroupSpec": {
            "type": "object",
            "required": ["template"],
            "properties": {
                "rayStartParams": _START_PARAMS,
                "serviceType": {"type": "string"},
                "template": _POD_TEMPLATE,
            },
        },
        "workerGroupSpecs": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["groupName", "template"],
                "properties": {
                    "groupName": {"type": "string"},
                    "replicas": {"type": "integer", "minimum": 0},
                    "minReplicas": {"type": "integer", "minimum": 0},
                    "maxReplicas": {"type": "integer", "minimum": 0},
                    "rayStartParams": _START_PARAMS,
                    "template": _POD_TEMPLATE,
                },
            },
        },
    },
}
_OBJECT_META = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "ray.io/v1"},
        "metadata": {"type": "object", "required": ["name"]},
    },
}
RAYCLUSTER_SCHEMA = {
    **_OBJECT_META,
    "properties": {
        **_OBJECT_META["properties"],
        "kind": {"const": "RayCluster"},
        "spec": RAYCLUSTER_SPEC,
    },
}
RAYSERVICE_SCHEMA = {
    **_OBJECT_META,
    "properties": {
        **_OBJECT_META["properties"],
        "kind": {"const": "RayService"},
        "spec": {
            "type": "object",
            "required": ["rayClusterConfig", "serveConfigV2"],
            "properties": {
                "serveConfigV2": {"type": "string"},
                "rayClusterConfig": RAYCLUSTER_SPEC,
                "upgradeStrategy": {
                    "type": "object",
                    "properties": {
                        "type": {"enum": ["NewCluster", "NewClusterWithIncrementalUpgrade", "None"]}
                    },
                },
            },
        },
    },
}


def _requested() -> list[dict]:
    """The Ray resource requests of every shard actor and of the API replica."""
    asks = [dict(cls._default_options) for cls in SHARDS]
    asks.append(dict(Api.ray_actor_options))
    return asks


def _custom(request: dict) -> set[str]:
    return set(request.get("resources") or {})


def test_the_launcher_config_matches_rays_own_schema():
    """The JSON schema Ray's autoscaler validates `ray up` configs with (shipped with Ray)."""
    schema_path = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
    schema = json.loads(schema_path.read_text())
    jsonschema.validate(LAUNCHER, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**LAUNCHER, "available_node_types": "head"}, schema)


def test_the_manifests_match_the_crd_schema_subset():
    jsonschema.validate(RAYCLUSTER, RAYCLUSTER_SCHEMA)
    jsonschema.validate(RAYSERVICE, RAYSERVICE_SCHEMA)
    broken = {**RAYCLUSTER, "spec": {"workerGroupSpecs": []}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, RAYCLUSTER_SCHEMA)


def test_the_rayservice_runs_exactly_the_raycluster():
    assert RAYSERVICE["spec"]["rayClusterConfig"] == RAYCLUSTER["spec"]
    assert RAYSERVICE["spec"]["upgradeStrategy"]["type"] == "NewCluster"  # blue/green


def test_custom_resources_declared_are_the_ones_requested():
    requested = set().union(*(_custom(r) for r in _requested()))
    for name, node in LAUNCHER["available_node_types"].items():
        declared = set(node["resources"]) - {"CPU", "GPU", "memory", "object_store_memory"}
        assert declared <= requested, f"{name} declares {declared - requested}, asked by nothing"
    assert requested <= set().union(
        *(set(n["resources"]) for n in LAUNCHER["available_node_types"].values())
    ), "an actor asks for a resource no node type has"


def test_every_node_fits_the_biggest_request():
    biggest = max(float(r.get("num_cpus", 1)) for r in _requested())
    for node in LAUNCHER["available_node_types"].values():
        assert node["resources"]["CPU"] >= biggest


def test_the_launcher_and_kuberay_agree_on_shape():
    types = LAUNCHER["available_node_types"]
    head = RAYCLUSTER["spec"]["headGroupSpec"]
    assert int(head["rayStartParams"]["num-cpus"]) == types["head"]["resources"]["CPU"]
    assert "--num-cpus=4" in " ".join(LAUNCHER["head_start_ray_commands"])
    (group,) = RAYCLUSTER["spec"]["workerGroupSpecs"]
    worker = types[group["groupName"]]
    assert int(group["rayStartParams"]["num-cpus"]) == worker["resources"]["CPU"]
    assert (group["minReplicas"], group["maxReplicas"]) == (
        worker["min_workers"],
        worker["max_workers"],
    )
    assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    assert LAUNCHER["max_workers"] >= worker["max_workers"]
    for spec in (head, group):
        (container,) = spec["template"]["spec"]["containers"]
        cpus = int(spec["rayStartParams"]["num-cpus"])
        assert int(container["resources"]["requests"]["cpu"]) == cpus
        assert spec["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        assert env["AGORA_RAY_LOOPBACK_ONLY"] == "false"  # nodes must reach each other
        assert env["RAY_AUTH_MODE"] == "token"


def test_the_serve_config_is_valid_and_matches_the_api_deployment():
    config = ServeDeploySchema.parse_obj(yaml.safe_load(RAYSERVICE["spec"]["serveConfigV2"]))
    (app,) = config.applications
    assert app.import_path == "serve.app:app" and app.route_prefix == "/"
    (deployment,) = app.deployments
    assert deployment.name == Api.name
    assert deployment.ray_actor_options.num_cpus == Api.ray_actor_options["num_cpus"]
    assert deployment.max_ongoing_requests == Api.max_ongoing_requests
    scaling = dict(deployment.autoscaling_config)
    assert 1 <= scaling["min_replicas"] <= scaling["max_replicas"]


def _locked_version(package: str) -> str:
    lock = (ROOT / "uv.lock").read_text()
    return lock.split(f'\nname = "{package}"\nversion = "', 1)[1].split('"', 1)[0]


def test_the_image_is_multi_stage_on_the_locked_ray_and_runs_as_non_root():
    text = (ROOT / "Dockerfile").read_text()
    lines = [line.strip() for line in text.splitlines()]
    stages = [line for line in lines if line.startswith("FROM ")]
    assert len(stages) >= 2
    image = next(line for line in lines if line.startswith("ARG RAY_IMAGE=")).split("=", 1)[1]
    assert image == f"rayproject/ray:{_locked_version('ray')}-py311"
    assert all("${RAY_IMAGE}" in stage for stage in stages)
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users[-1] not in {"root", "0"}
    assert "--frozen" in text and "COPY --from=build" in text


def test_the_github_workflow_mirrors_ci_run():
    workflow = yaml.safe_load((ROOT / ".github/workflows/ci.yml").read_text())
    steps = workflow["jobs"]["check"]["steps"]
    assert any(step.get("run") == ".ci/run" for step in steps)
    assert workflow["jobs"]["check"]["timeout-minutes"] <= 25
    assert "docker build" in str(workflow["jobs"]["image"]["steps"])
    assert "locust" in str(workflow["jobs"]["slo-smoke"]["steps"])
    ci_run = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci_run and "make lint" in ci_run
