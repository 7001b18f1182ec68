"""The train step: one run or a sweep, here, on Ray Train, or as a job on a Ray cluster."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from multivae.config import ConfigError, read_yaml
from multivae.io import atomic_copy_tree, atomic_write_text
from multivae.names import (
    BEST_FILE,
    BEST_FOLDER,
    METRICS_FILE,
    MLFLOW_RUN_FILE,
    MODEL_FOLDER,
    RUN_CONFIG_FILE,
    STAGING_FOLDER,
    SWEEP_FILE,
    TRAIN_RECORD_FILE,
    TRIALS_FOLDER,
)
from multivae.workflow.parameters import TRAIN_MODES, integral
from multivae.workflow.tracking import EXPERIMENT, tag_step_run, tracking_uri_for


def _base_run(
    data: Path,
    out: Path,
    model: str,
    model_config: Mapping[str, Any],
    training: Mapping[str, Any],
    tracking_uri: str,
    parent_run_id: str,
) -> dict[str, Any]:
    return {
        "model": model,
        "data": str(data),
        "output_dir": str(out),
        "model_config": dict(model_config),
        "training": {"progress_bar": False, **dict(training)},
        "mlflow": {
            "enabled": True,
            "tracking_uri": tracking_uri,
            "experiment": EXPERIMENT,
            "run_name": "train",
            "parent_run_id": parent_run_id or None,
        },
    }


def train_step(
    data: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    model: str = "mopoe",
    model_config: Mapping[str, Any] | None = None,
    training: Mapping[str, Any] | None = None,
    sweep: str = "",
    mode: str = "local",
    num_workers: int = 2,
    ray_address: str = "",
    shared_dir: str = "",
    namespace: str = "",
    image: str = "",
    ray_cluster: str = "",
    ray_auth_secret: str = "",
    tracking_uri: str = "",
    parent_run_id: str = "",
    timeout_s: float = 24 * 3600.0,
) -> dict[str, Any]:
    """Train (or sweep) and put the model folder, ``run.yaml`` and ``metrics.json`` in ``out``.

    Args:
        data: The dataset folder from :func:`preprocess_step`.
        out: The model artifact folder: ``model/``, ``run.yaml``, ``metrics.json``, ``train.json``.
        model: A registered model name.
        model_config: The model's options.
        training: :class:`~multivae.training.TrainingConfig` entries.
        sweep: The text of a sweep file (its ``space``, ``num_samples``, scheduler, ...); its
            base run is this step's. Empty: one training run.
        mode: One of :data:`TRAIN_MODES`.
        num_workers: Ray Train workers (modes other than ``local``).
        ray_address: The cluster's Ray Job Submission address (``http://head:8265``) for
            ``ray-job``; the Ray address for ``ray`` (empty: local Ray or ``RAY_ADDRESS``).
        shared_dir: A folder the step and the Ray cluster both see (``ray-job``, ``rayjob``):
            the data and the run are staged there.
        namespace: Kubernetes namespace of the ``RayJob`` (``rayjob``).
        image: Container image of the ``RayJob``'s submitter (``rayjob``).
        ray_cluster: Name of the RayCluster the ``RayJob`` runs on (``rayjob``).
        ray_auth_secret: Secret with the cluster's Ray auth token, for the ``RayJob``'s
            submitter (``rayjob``; empty without token auth).
        tracking_uri: MLflow tracking URI.
        parent_run_id: The pipeline's MLflow run.
        timeout_s: Longest wait for a remote job.

    Returns:
        ``{"mlflow_run_id", "metrics", "mode", "sweep"}``, also written to ``out/train.json``.
    """
    from multivae.run import run_training
    from multivae.run_config import RunConfig

    data = Path(data).resolve()
    out = Path(out).resolve()
    model_config, training = integral(model_config or {}), integral(training or {})
    tracking_uri = tracking_uri_for(tracking_uri, out.parent)
    if mode not in TRAIN_MODES:
        raise ConfigError(f"train_mode: expected one of {list(TRAIN_MODES)}, found {mode!r}")

    # The run's working folder (checkpoints, trials) sits beside the artifact, which keeps
    # only what later steps use.
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(
        prefix=f".{out.name}-work-", dir=out.parent, ignore_cleanup_errors=True
    ) as scratch:
        work = Path(scratch)
        base = _base_run(
            data, work / "run", model, model_config, training, tracking_uri, parent_run_id
        )
        if mode in ("ray-job", "rayjob"):
            result_dir = _train_remotely(
                base,
                sweep,
                mode,
                num_workers,
                ray_address,
                shared_dir,
                namespace,
                image,
                ray_cluster,
                ray_auth_secret,
                timeout_s,
            )
        elif sweep.strip():
            workers = num_workers if mode == "ray" else 0
            result_dir = _sweep_here(base, sweep, work / "sweep", workers)
        else:
            if mode == "ray":
                base["ray"] = {"num_workers": num_workers, "address": ray_address or None}
            run_training(RunConfig.from_dict(base))
            result_dir = work / "run"
        out.mkdir(parents=True, exist_ok=True)
        atomic_copy_tree(result_dir / MODEL_FOLDER, out / MODEL_FOLDER)
        for name in (RUN_CONFIG_FILE, METRICS_FILE):
            shutil.copy2(result_dir / name, out / name)
        run_id = _mlflow_run_id(result_dir)
    if run_id:
        tag_step_run(tracking_uri, run_id, "train")  # its source: the train step
    metrics = json.loads((out / METRICS_FILE).read_text())
    record = {"mlflow_run_id": run_id, "metrics": metrics, "mode": mode, "sweep": bool(sweep)}
    atomic_write_text(out / TRAIN_RECORD_FILE, json.dumps(record, indent=2, default=str))
    return record


def _mlflow_run_id(result_dir: Path) -> str:
    """The MLflow run of a finished training run (or of a sweep's best trial)."""
    own = result_dir / MLFLOW_RUN_FILE
    if own.is_file():
        return str(json.loads(own.read_text())["run_id"])
    best = result_dir.parent / BEST_FILE
    if best.is_file():
        trial = json.loads(best.read_text())["trial_id"]
        path = result_dir.parent / TRIALS_FOLDER / trial / MLFLOW_RUN_FILE
        if path.is_file():
            return str(json.loads(path.read_text())["run_id"])
    return ""


def _sweep_document(sweep: str, base: Mapping[str, Any], output_dir: Path) -> dict[str, Any]:
    raw = read_yaml(sweep)
    if not isinstance(raw, dict):
        raise ConfigError(f"sweep: expected the text of a sweep file, found {raw!r}")
    return {**raw, "run": dict(base), "output_dir": str(output_dir)}


def _sweep_here(base: dict[str, Any], sweep: str, output_dir: Path, train_workers: int) -> Path:
    from multivae.integrations.sweep_file import SweepConfig
    from multivae.integrations.tune import run_sweep

    document = _sweep_document(sweep, base, output_dir)
    if train_workers:
        document["train_workers"] = train_workers
    config = SweepConfig.from_dict(document)
    result = run_sweep(config, dict(base), tracking_uri=base["mlflow"]["tracking_uri"])
    return result.best_dir


def _train_remotely(
    base: dict[str, Any],
    sweep: str,
    mode: str,
    num_workers: int,
    ray_address: str,
    shared_dir: str,
    namespace: str,
    image: str,
    ray_cluster: str,
    ray_auth_secret: str,
    timeout_s: float,
) -> Path:
    """Stage the data and config on shared storage, run the job on the cluster, wait."""
    from multivae.integrations.kuberay import run_ray_job, run_rayjob

    if not shared_dir:
        raise ConfigError(
            f"train_mode {mode!r}: expected shared_dir, a folder that this step and the Ray "
            "cluster both mount (the RayCluster's shared volume), found none"
        )
    stamp = time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}"
    stage = Path(shared_dir) / STAGING_FOLDER / stamp
    atomic_copy_tree(Path(base["data"]), stage / "data")
    run = {**base, "data": str(stage / "data"), "output_dir": str(stage / "run")}
    if sweep.strip():
        document = _sweep_document(sweep, run, stage / "sweep")
        document["train_workers"] = num_workers
        config_path = stage / SWEEP_FILE
        atomic_write_text(config_path, yaml.safe_dump(document, sort_keys=False))
        entrypoint = f"multivae tune --sweep {config_path}"
        result = stage / "sweep" / BEST_FOLDER
    else:
        config_path = stage / RUN_CONFIG_FILE
        atomic_write_text(config_path, yaml.safe_dump(run, sort_keys=False))
        entrypoint = f"multivae train --config {config_path} --ray --num-workers {num_workers}"
        result = stage / "run"
    if mode == "ray-job":
        run_ray_job(ray_address, entrypoint, timeout_s=timeout_s)
    else:
        run_rayjob(
            entrypoint,
            name=f"multivae-{stamp}",
            namespace=namespace,
            image=image,
            ray_cluster=ray_cluster,
            auth_secret=ray_auth_secret,
            timeout_s=timeout_s,
        )
    return result
