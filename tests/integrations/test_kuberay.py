"""RayJob manifests against the KubeRay CRD, and the wait loops of both remote modes."""

import jsonschema
import pytest

from multivae.config import ConfigError
from multivae.integrations.kuberay import rayjob_manifest, run_ray_job, run_rayjob
from multivae.integrations.kuberay_crds import crd_schema
from multivae.workflow import train_step


def test_the_rayjob_manifest_is_valid_against_the_kuberay_crd():
    manifest = rayjob_manifest(
        "multivae train --config /mnt/multivae/run.yaml --ray --num-workers 4",
        name="multivae-20261126",
        namespace="multivae",
        ray_cluster="multivae-ray",
        image="ghcr.io/multivae/multivae:0.1.0",
        auth_secret="multivae-ray-auth",
        active_deadline_s=3600,
    )
    jsonschema.validate(manifest, crd_schema("RayJob"))
    assert manifest["spec"]["clusterSelector"] == {"ray.io/cluster": "multivae-ray"}
    (container,) = manifest["spec"]["submitterPodTemplate"]["spec"]["containers"]
    assert container["env"][0] == {"name": "RAY_AUTH_MODE", "value": "token"}
    assert container["env"][1]["valueFrom"]["secretKeyRef"] == {
        "name": "multivae-ray-auth",
        "key": "auth_token",
    }
    broken = {**manifest, "spec": {**manifest["spec"], "ttlSecondsAfterFinished": "soon"}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, crd_schema("RayJob"))


class FakeCustomObjects:
    """The two Kubernetes API calls :func:`run_rayjob` makes, answering a status sequence."""

    def __init__(self, statuses):
        self.statuses = list(statuses)
        self.created = []
        self.deleted = []

    def create_namespaced_custom_object(self, group, version, namespace, plural, body):
        self.created.append((group, version, namespace, plural, body))

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        status = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
        return {"status": status}

    def delete_namespaced_custom_object(self, group, version, namespace, plural, name):
        self.deleted.append(name)


def test_run_rayjob_creates_the_rayjob_and_waits_for_success():
    api = FakeCustomObjects([{}, {"jobStatus": "RUNNING"}, {"jobStatus": "SUCCEEDED"}])
    status = run_rayjob(
        "echo hi", name="j1", namespace="multivae", ray_cluster="multivae-ray", api=api, poll_s=0
    )
    assert status == {"jobStatus": "SUCCEEDED"}
    ((group, version, namespace, plural, body),) = api.created
    assert (group, version, namespace, plural) == ("ray.io", "v1", "multivae", "rayjobs")
    assert body["spec"]["entrypoint"] == "echo hi" and body["metadata"]["name"] == "j1"


def test_run_rayjob_reports_failures_and_timeouts():
    failed = FakeCustomObjects([{"jobDeploymentStatus": "Failed", "message": "image pull"}])
    with pytest.raises(RuntimeError, match="RayJob multivae/j2 ended FAILED: image pull"):
        run_rayjob("x", name="j2", namespace="multivae", ray_cluster="c", api=failed, poll_s=0)
    stuck = FakeCustomObjects([{"jobStatus": "RUNNING"}])
    with pytest.raises(TimeoutError, match="ran past 0 s; deleted"):
        run_rayjob(
            "x", name="j3", namespace="multivae", ray_cluster="c", api=stuck, timeout_s=0, poll_s=0
        )
    assert stuck.deleted == ["j3"]
    with pytest.raises(ValueError, match="expected the namespace and the RayCluster's name"):
        run_rayjob("x", name="j4", namespace="", ray_cluster="c", api=stuck)


class FakeJobClient:
    def __init__(self, statuses, logs="line\n" * 3):
        self.statuses = list(statuses)
        self.logs = logs
        self.submitted = []
        self.stopped = []

    def submit_job(self, entrypoint, runtime_env):
        self.submitted.append((entrypoint, runtime_env))
        return "raysubmit_1"

    def get_job_status(self, job_id):
        return self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]

    def get_job_logs(self, job_id):
        return self.logs

    def stop_job(self, job_id):
        self.stopped.append(job_id)


def test_run_ray_job_waits_and_raises_with_the_logs_of_a_failed_job():
    client = FakeJobClient(["PENDING", "RUNNING", "SUCCEEDED"])
    assert run_ray_job("http://head:8265", "echo hi", client=client, poll_s=0) == "raysubmit_1"
    assert client.submitted == [("echo hi", {})]
    failing = FakeJobClient(["RUNNING", "FAILED"], logs="Traceback: boom")
    with pytest.raises(RuntimeError, match=r"ended FAILED; its last logs:\nTraceback: boom"):
        run_ray_job("http://head:8265", "x", client=failing, poll_s=0)
    slow = FakeJobClient(["RUNNING"])
    with pytest.raises(TimeoutError):
        run_ray_job("http://head:8265", "x", client=slow, poll_s=0, timeout_s=0)
    assert slow.stopped == ["raysubmit_1"]
    with pytest.raises(ValueError, match="expected the cluster's job server address"):
        run_ray_job("", "x", client=slow)


def test_remote_modes_need_a_shared_folder(tmp_path):
    with pytest.raises(ConfigError, match="expected shared_dir"):
        train_step(tmp_path / "data", tmp_path / "out", mode="ray-job", ray_address="http://h")
