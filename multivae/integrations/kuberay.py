"""Running a command on an existing Ray cluster: Ray Job Submission, or a KubeRay ``RayJob``.

The pipeline's train step uses these when the training runs on a RayCluster rather than in the
step's own pod:

* :func:`run_ray_job` submits the command to the cluster's job server (``RAY_ADDRESS``, the head's
  dashboard port 8265) with :class:`ray.job_submission.JobSubmissionClient`, waits for it and
  raises with the end of its logs when it fails. Token auth (``RAY_AUTH_TOKEN``) is read from
  the environment by the client.
* :func:`run_rayjob` creates a ``ray.io/v1`` ``RayJob`` (:func:`rayjob_manifest`) that runs the
  command on the RayCluster named by ``clusterSelector``, through the Kubernetes API with the
  step's service account, and waits for its ``jobStatus``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
"""Ray job statuses after which nothing more happens."""

RAYJOB_GROUP = "ray.io"
RAYJOB_VERSION = "v1"
RAYJOB_PLURAL = "rayjobs"
LOG_TAIL_CHARS = 4000


def run_ray_job(
    address: str,
    entrypoint: str,
    *,
    runtime_env: Mapping[str, Any] | None = None,
    timeout_s: float = 24 * 3600.0,
    poll_s: float = 2.0,
    client: Any = None,
) -> str:
    """Submit ``entrypoint`` to a Ray cluster's job server and wait for it to succeed.

    Args:
        address: The job server, e.g. ``http://multivae-ray-head-svc:8265``.
        entrypoint: The shell command the job runs (``multivae train --config ... --ray``).
        runtime_env: Ray runtime environment of the job (``env_vars``, ``working_dir``, ...).
        timeout_s: Longest wait; the job is stopped when it is exceeded.
        poll_s: Seconds between status checks.
        client: A ``JobSubmissionClient`` (built from ``address`` by default).

    Returns:
        The job's submission id.

    Raises:
        ValueError: Without an address.
        RuntimeError: When the job fails or is stopped (with the end of its logs).
        TimeoutError: When it runs longer than ``timeout_s`` (it is stopped first).
    """
    if not address:
        raise ValueError(
            "ray-job: expected the cluster's job server address (RAY_ADDRESS, e.g. "
            "http://<cluster>-head-svc:8265), found none"
        )
    if client is None:
        from ray.job_submission import JobSubmissionClient

        client = JobSubmissionClient(address)
    job_id = str(client.submit_job(entrypoint=entrypoint, runtime_env=dict(runtime_env or {})))
    status = _wait(lambda: str(client.get_job_status(job_id)), timeout_s, poll_s)
    if status is None:
        client.stop_job(job_id)
        raise TimeoutError(f"ray job {job_id} on {address} ran past {timeout_s:.0f} s; stopped")
    if not status.endswith("SUCCEEDED"):
        logs = str(client.get_job_logs(job_id))[-LOG_TAIL_CHARS:]
        raise RuntimeError(f"ray job {job_id} on {address} ended {status}; its last logs:\n{logs}")
    return job_id


def _wait(read: Callable[[], str], timeout_s: float, poll_s: float) -> str | None:
    """Poll ``read()`` until it returns a terminal status; ``None`` on timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        status = read()
        if status.rsplit(".", 1)[-1] in TERMINAL:
            return status.rsplit(".", 1)[-1]
        if time.monotonic() > deadline:
            return None
        time.sleep(poll_s)


def rayjob_manifest(
    entrypoint: str,
    *,
    name: str,
    namespace: str,
    ray_cluster: str,
    image: str = "",
    auth_secret: str = "",
    env_from_config_map: str = "",
    active_deadline_s: int | None = None,
    ttl_after_finished_s: int = 3600,
    labels: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """A ``ray.io/v1`` ``RayJob`` that runs ``entrypoint`` on the existing RayCluster.

    Args:
        entrypoint: The command.
        name: The RayJob's name (a DNS label).
        namespace: Its namespace (the RayCluster's).
        ray_cluster: The RayCluster's name (``clusterSelector: {ray.io/cluster: NAME}``).
        image: Image of the submitter pod (the project's image); KubeRay's default otherwise.
        auth_secret: A Secret with key ``auth_token`` (as in ``infra/``), given to the
            submitter as ``RAY_AUTH_TOKEN`` (with ``RAY_AUTH_MODE=token``) when the cluster
            uses token auth.
        env_from_config_map: A ConfigMap whose keys become the submitter's environment.
        active_deadline_s: Fail the job after this many seconds.
        ttl_after_finished_s: Delete the RayJob this long after it finishes.
        labels: Extra labels.
    """
    manifest: dict[str, Any] = {
        "apiVersion": f"{RAYJOB_GROUP}/{RAYJOB_VERSION}",
        "kind": "RayJob",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/part-of": "multivae", **dict(labels or {})},
        },
        "spec": {
            "entrypoint": entrypoint,
            "clusterSelector": {"ray.io/cluster": ray_cluster},
            "submissionMode": "K8sJobMode",
            "ttlSecondsAfterFinished": ttl_after_finished_s,
        },
    }
    if active_deadline_s is not None:
        manifest["spec"]["activeDeadlineSeconds"] = active_deadline_s
    if image or auth_secret or env_from_config_map:
        container: dict[str, Any] = {"name": "ray-job-submitter"}
        if image:
            container["image"] = image
        if auth_secret:
            container["env"] = [
                {"name": "RAY_AUTH_MODE", "value": "token"},
                {
                    "name": "RAY_AUTH_TOKEN",
                    "valueFrom": {"secretKeyRef": {"name": auth_secret, "key": "auth_token"}},
                },
            ]
        if env_from_config_map:
            container["envFrom"] = [{"configMapRef": {"name": env_from_config_map}}]
        manifest["spec"]["submitterPodTemplate"] = {
            "spec": {"restartPolicy": "Never", "containers": [container]}
        }
    return manifest


def run_rayjob(
    entrypoint: str,
    *,
    name: str,
    namespace: str,
    ray_cluster: str,
    image: str = "",
    auth_secret: str = "",
    timeout_s: float = 24 * 3600.0,
    poll_s: float = 10.0,
    api: Any = None,
) -> dict[str, Any]:
    """Create a ``RayJob`` (:func:`rayjob_manifest`) and wait until its Ray job finishes.

    Args:
        entrypoint: The command.
        name: The RayJob's name.
        namespace: Its namespace.
        ray_cluster: The RayCluster it runs on.
        image: The submitter's image.
        auth_secret: Secret holding the Ray auth token (see :func:`rayjob_manifest`).
        timeout_s: Longest wait; the RayJob is deleted when it is exceeded.
        poll_s: Seconds between status reads.
        api: A ``kubernetes.client.CustomObjectsApi``; by default built from the in-cluster
            service account (or the local kubeconfig outside a cluster).

    Returns:
        The RayJob's final ``status``.

    Raises:
        ValueError: For a missing namespace or cluster name.
        RuntimeError: When the Ray job fails or is stopped.
        TimeoutError: When it runs past ``timeout_s``.
    """
    if not namespace or not ray_cluster:
        raise ValueError(
            "rayjob: expected the namespace and the RayCluster's name (MULTIVAE_NAMESPACE, "
            f"RAY_CLUSTER_NAME), found namespace={namespace!r} ray_cluster={ray_cluster!r}"
        )
    if api is None:
        from kubernetes import client, config

        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
        api = client.CustomObjectsApi()
    body = rayjob_manifest(
        entrypoint,
        name=name,
        namespace=namespace,
        ray_cluster=ray_cluster,
        image=image,
        auth_secret=auth_secret,
    )
    api.create_namespaced_custom_object(
        RAYJOB_GROUP, RAYJOB_VERSION, namespace, RAYJOB_PLURAL, body
    )
    last: dict[str, Any] = {}

    def read() -> str:
        nonlocal last
        found = api.get_namespaced_custom_object(
            RAYJOB_GROUP, RAYJOB_VERSION, namespace, RAYJOB_PLURAL, name
        )
        last = dict(found.get("status") or {})
        if last.get("jobDeploymentStatus") == "Failed":
            return "FAILED"
        return str(last.get("jobStatus") or "PENDING")

    status = _wait(read, timeout_s, poll_s)
    if status is None:
        api.delete_namespaced_custom_object(
            RAYJOB_GROUP, RAYJOB_VERSION, namespace, RAYJOB_PLURAL, name
        )
        raise TimeoutError(f"RayJob {namespace}/{name} ran past {timeout_s:.0f} s; deleted")
    if status != "SUCCEEDED":
        raise RuntimeError(
            f"RayJob {namespace}/{name} ended {status}: {last.get('message') or last.get('reason')}"
        )
    return last
