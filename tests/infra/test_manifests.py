"""The kustomize overlays render, validate against the Kubernetes and KubeRay schemas, and hold
together: references resolve, settings.env agrees with the objects, Ray pods are sized, share
storage and authenticate."""

from __future__ import annotations

import copy
import functools
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kustomize_render import (
    OVERLAYS,
    ROOT,
    SETTINGS_KEYS,
    containers,
    find,
    pod_specs,
    read_settings,
    render_overlay,
)

from multivae.integrations.kuberay_crds import crd_schema

# The oldest Kubernetes minor that kubernetes-validate ships and docs/deploy.md supports.
KUBERNETES_VERSION = "1.34"
SHARED_MOUNT = "/mnt/multivae"


def ray_objects(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in objects if o["apiVersion"].startswith("ray.io/")]


def ray_cluster_specs(objects: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """The RayCluster's spec and every RayJob's embedded cluster spec."""
    specs = []
    for obj in ray_objects(objects):
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        if obj["kind"] == "RayCluster":
            specs.append((name, obj["spec"]))
        else:
            specs.append((f"{name}.rayClusterSpec", obj["spec"]["rayClusterSpec"]))
    return specs


def ray_node_containers(spec: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The Ray container (the first) of the head and of every worker group."""
    groups = [("head", spec["headGroupSpec"])] + [
        (group["groupName"], group) for group in spec["workerGroupSpecs"]
    ]
    return [(name, group["template"]["spec"]["containers"][0]) for name, group in groups]


def _strict(schema: Any) -> Any:
    """A CRD schema that refuses unknown fields, as the API server's strict field validation."""
    if isinstance(schema, dict):
        schema = {key: _strict(value) for key, value in schema.items()}
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    return schema


@functools.cache
def crd_validator(kind: str) -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(_strict(crd_schema(kind)))


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


@pytest.fixture(params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def objects(overlay: str) -> list[dict[str, Any]]:
    return render_overlay(overlay)


@pytest.fixture(scope="module")
def settings() -> dict[str, str]:
    return read_settings()


def test_settings_file_has_exactly_the_shared_keys(settings):
    assert tuple(settings) == SETTINGS_KEYS
    assert all(value and value == value.strip() for value in settings.values()), settings
    assert all('"' not in value and "'" not in value for value in settings.values())


def test_overlay_holds_the_expected_objects(overlay, objects):
    names = {(o["kind"], o["metadata"]["name"]) for o in objects}
    common = {
        ("ConfigMap", "multivae-settings"),
        ("PersistentVolumeClaim", "multivae-shared"),
        ("RayCluster", "multivae-ray"),
        ("RayJob", "multivae-sweep"),
        ("RayJob", "multivae-train"),
        ("Deployment", "mlflow"),
        ("Service", "mlflow"),
        ("ServiceAccount", "multivae-pipeline"),
        ("Role", "multivae-pipeline"),
        ("RoleBinding", "multivae-pipeline"),
        ("RoleBinding", "multivae-pipeline-runner"),
        ("Secret", "multivae-ray-auth"),
        ("Secret", "multivae-mlflow"),
        ("Secret", "multivae-hf"),
    }
    in_cluster_stores = {
        ("StatefulSet", "mlflow-postgres"),
        ("Service", "mlflow-postgres"),
        ("Secret", "multivae-postgres"),
        ("StatefulSet", "mlflow-minio"),
        ("Service", "mlflow-minio"),
        ("Job", "mlflow-minio-bucket"),
    }
    expected = common | in_cluster_stores if overlay == "local" else common
    assert names == expected


def test_core_objects_pass_kubernetes_validate_strict(objects):
    core = [o for o in objects if not o["apiVersion"].startswith("ray.io/")]
    assert core
    for obj in core:
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            where = f"{obj['kind']}/{obj['metadata']['name']} {error.json_path}"
            pytest.fail(f"{where}: {error.message}", pytrace=False)


def test_ray_objects_match_the_kuberay_crd_schemas(objects):
    assert {o["kind"] for o in ray_objects(objects)} == {"RayCluster", "RayJob"}
    for obj in ray_objects(objects):
        assert obj["apiVersion"] == "ray.io/v1"
        errors = sorted(crd_validator(obj["kind"]).iter_errors(obj), key=str)
        assert not errors, f"{obj['kind']}/{obj['metadata']['name']}: " + "; ".join(
            f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in errors
        )


def test_crd_validation_refuses_unknown_and_mistyped_fields(objects):
    cluster = copy.deepcopy(find(objects, "RayCluster", "multivae-ray"))
    cluster["spec"]["workerGroupSpecs"][0]["maxReplica"] = 3
    assert not crd_validator("RayCluster").is_valid(cluster)
    job = copy.deepcopy(find(objects, "RayJob", "multivae-train"))
    job["spec"]["shutdownAfterJobFinishes"] = "yes"
    assert not crd_validator("RayJob").is_valid(job)


def test_kuberay_operator_rules_hold(objects):
    """The checks KubeRay's controller makes before it creates anything (utils/validation.go)."""
    dns1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
    for obj in ray_objects(objects):
        name = obj["metadata"]["name"]
        assert dns1035.fullmatch(name) and len(name) <= 47, name
    for where, spec in ray_cluster_specs(objects):
        assert spec["enableInTreeAutoscaling"] is True, where
        assert spec["authOptions"]["mode"] == "token", where
        assert _version(spec["rayVersion"]) >= (2, 52, 0), f"{where}: token auth needs Ray 2.52"
        for group in spec["workerGroupSpecs"]:
            label = f"{where} group {group['groupName']}"
            assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], label
            assert not group.get("resources"), f"{label}: resources go in the container"
            assert group["template"]["spec"].get("restartPolicy") in (None, "Never"), label
    for job in (o for o in objects if o["kind"] == "RayJob"):
        spec = job["spec"]
        assert "clusterSelector" not in spec, "a suspended RayJob needs its own cluster spec"
        assert spec["suspend"] is True and spec["shutdownAfterJobFinishes"] is True
        assert spec["submitterPodTemplate"]["spec"]["restartPolicy"] == "Never"
        # KubeRay refuses an upgradeStrategy on a cluster that a RayJob creates.
        assert "upgradeStrategy" not in spec["rayClusterSpec"]


def test_rayjobs_run_on_a_copy_of_the_overlays_raycluster(objects):
    cluster = find(objects, "RayCluster", "multivae-ray")
    for job in (o for o in objects if o["kind"] == "RayJob"):
        assert job["spec"]["rayClusterSpec"] == cluster["spec"], job["metadata"]["name"]


def test_every_container_has_cpu_and_memory_requests_and_limits(objects):
    checked = 0
    for obj in objects:
        for where, container in containers(obj):
            resources = container.get("resources", {})
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources.get(bound, {})), f"{where}: {bound}"
            checked += 1
    assert checked >= 8


def test_gpu_workers_request_gpus_only_where_they_can_be_scheduled(overlay, objects):
    cluster = find(objects, "RayCluster", "multivae-ray")
    groups = {group["groupName"]: group for group in cluster["spec"]["workerGroupSpecs"]}
    assert set(groups) == {"cpu", "gpu"}
    gpu = groups["gpu"]
    limits = gpu["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert int(limits["nvidia.com/gpu"]) >= 1
    for name, container in ray_node_containers(cluster["spec"]):
        if name != "gpu":
            assert "nvidia.com/gpu" not in container["resources"]["limits"], name
    if overlay == "gpu":
        pod = gpu["template"]["spec"]
        assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
            "tolerations"
        ]
        assert gpu["maxReplicas"] >= 8
    else:
        assert gpu["replicas"] == gpu["minReplicas"] == gpu["maxReplicas"] == 0


def test_ray_pods_mount_the_shared_volume_at_one_path(objects):
    claim = find(objects, "PersistentVolumeClaim", "multivae-shared")
    for where, spec in ray_cluster_specs(objects):
        for name, container in ray_node_containers(spec):
            group = spec["headGroupSpec"] if name == "head" else None
            if group is None:
                (group,) = [g for g in spec["workerGroupSpecs"] if g["groupName"] == name]
            volumes = {v["name"]: v for v in group["template"]["spec"]["volumes"]}
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            volume = volumes[mounts[SHARED_MOUNT]]
            assert volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
            env = {e["name"]: e.get("value") for e in container["env"]}
            assert env["MULTIVAE_CACHE"].startswith(SHARED_MOUNT + "/"), f"{where} {name}"


def test_ray_pods_authenticate_with_the_token_secret(objects):
    for where, spec in ray_cluster_specs(objects):
        secret_name = spec["authOptions"]["secretName"]
        autoscaler = ("autoscaler", {"env": spec["autoscalerOptions"]["env"]})
        for name, container in [*ray_node_containers(spec), autoscaler]:
            env = {e["name"]: e for e in container["env"]}
            assert env["RAY_AUTH_MODE"]["value"] == "token", f"{where} {name}"
            ref = env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]
            assert ref == {"name": secret_name, "key": "auth_token"}, f"{where} {name}"
    for job in (o for o in objects if o["kind"] == "RayJob"):
        (submitter,) = job["spec"]["submitterPodTemplate"]["spec"]["containers"]
        env = {e["name"]: e for e in submitter["env"]}
        assert env["RAY_AUTH_MODE"]["value"] == "token"
        assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["key"] == "auth_token"
    token = find(objects, "Secret", secret_name)
    assert set(token["data"]) == {"auth_token"}


def _references(pod: dict[str, Any]) -> list[tuple[str, str, str | None]]:
    """(kind, name, key) of every ConfigMap, Secret and PVC a pod spec uses."""
    found: list[tuple[str, str, str | None]] = []
    for container in pod.get("initContainers", []) + pod["containers"]:
        for source in container.get("envFrom", []):
            for field, kind in (("secretRef", "Secret"), ("configMapRef", "ConfigMap")):
                if field in source:
                    found.append((kind, source[field]["name"], None))
        for variable in container.get("env", []):
            origin = variable.get("valueFrom", {})
            for field, kind in (("secretKeyRef", "Secret"), ("configMapKeyRef", "ConfigMap")):
                if field in origin:
                    found.append((kind, origin[field]["name"], origin[field]["key"]))
    for volume in pod.get("volumes", []):
        if "persistentVolumeClaim" in volume:
            found.append(
                ("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"], None)
            )
    return found


def test_every_secret_configmap_and_claim_a_pod_uses_exists_with_its_keys(objects):
    index = {(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]): o for o in objects}
    checked = 0
    for obj in objects:
        namespace = obj["metadata"].get("namespace")
        for where, pod in pod_specs(obj):
            for kind, name, key in _references(pod):
                target = index.get((kind, namespace, name))
                assert target is not None, f"{where}: {kind} {namespace}/{name} is not deployed"
                if key is not None:
                    assert key in target.get("data", {}), f"{where}: {kind} {name} lacks {key!r}"
                checked += 1
    assert checked >= 20


def test_objects_live_in_the_settings_namespace(objects, settings):
    """One namespace, KFP's: the pipeline's steps mount the shared volume and read the Secrets.

    No Namespace object: the namespace belongs to the KFP install (``kubectl delete -k`` must not
    take KFP with it).
    """
    namespace = settings["MULTIVAE_NAMESPACE"]
    for obj in objects:
        assert obj["kind"] != "Namespace"
        assert obj["metadata"].get("namespace") == namespace, obj["metadata"]["name"]
    for overlay in OVERLAYS:
        path = ROOT / "infra" / "overlays" / overlay / "kustomization.yaml"
        assert yaml.safe_load(path.read_text())["namespace"] == namespace, path


def test_settings_urls_name_the_deployed_services(objects, settings):
    namespace = settings["MULTIVAE_NAMESPACE"]
    cluster = find(objects, "RayCluster", settings["RAY_CLUSTER_NAME"])
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    ports = {port["name"]: port["containerPort"] for port in head["ports"]}
    ray = urlsplit(settings["RAY_ADDRESS"])
    # KubeRay names the head Service <cluster>-head-svc and exposes the container's ports.
    assert ray.scheme == "http"
    assert ray.hostname == f"{cluster['metadata']['name']}-head-svc.{namespace}.svc.cluster.local"
    assert ray.port == ports["dashboard"] == 8265
    mlflow = urlsplit(settings["MLFLOW_TRACKING_URI"])
    service = find(objects, "Service", "mlflow")
    assert mlflow.scheme == "http"
    assert mlflow.hostname == f"{service['metadata']['name']}.{namespace}.svc.cluster.local"
    assert mlflow.port == service["spec"]["ports"][0]["port"]
    (server,) = find(objects, "Deployment", "mlflow")["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value", "") for e in server["env"]}
    assert mlflow.netloc in env["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")


def test_rbac_lets_pipeline_steps_drive_rayjobs(objects, settings):
    role = find(objects, "Role", "multivae-pipeline")
    granted = {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    for verb in ("create", "get", "list", "watch", "delete"):
        assert ("ray.io", "rayjobs", verb) in granted
    assert ("ray.io", "rayclusters", "get") in granted
    assert {("", "pods", "get"), ("", "pods/log", "get")} <= granted
    account = find(objects, "ServiceAccount", "multivae-pipeline")["metadata"]
    subject = {"kind": "ServiceAccount", "name": account["name"], "namespace": account["namespace"]}
    binding = find(objects, "RoleBinding", "multivae-pipeline")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": "multivae-pipeline",
    }
    assert binding["subjects"] == [subject]
    # The account may also do what KFP's own runner does (the Role of the KFP install).
    runner = find(objects, "RoleBinding", "multivae-pipeline-runner")
    assert runner["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": "pipeline-runner",
    }
    assert runner["subjects"] == [subject]
    assert account["namespace"] == settings["MULTIVAE_NAMESPACE"]


def test_rendering_uses_only_committed_files():
    """The overlays' generators read settings.env and secret examples, never a real secret."""
    for overlay in OVERLAYS:
        kustomization = yaml.safe_load(
            (ROOT / "infra" / "overlays" / overlay / "kustomization.yaml").read_text()
        )
        for generator in kustomization["secretGenerator"]:
            assert set(generator) == {"name", "envs"}, generator
            for env in generator["envs"]:
                example = Path(ROOT / "infra" / "overlays" / overlay / f"{env}.example")
                assert example.is_file(), f"{overlay}: {env} has no example file"
