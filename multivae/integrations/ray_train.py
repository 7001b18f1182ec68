"""Ray Train's driver: one run on the workers of a Ray cluster, its outputs in ``output_dir``.

:func:`train_with_ray` runs one :class:`~multivae.run_config.RunConfig` as a Ray Train
``TorchTrainer``: each worker runs :func:`~multivae.integrations.ray_worker.train_worker` on its
shard of the run's Parquet splits, read through Ray Data
(:mod:`~multivae.integrations.ray_data`), and the driver copies the final checkpoint's outputs
(``checkpoint.pt``, ``model/``, ``metrics.json``) into ``output_dir``. When a worker dies, Ray
Train (``FailureConfig(max_failures)``) restarts the worker group; each worker then restores the
last reported checkpoint and the loop resumes exactly where it was; with ``ray.deterministic``
the data order is reproduced too, so the final weights are those of the uninterrupted run.
Every failure is bounded: ``ray.max_failures`` worker-group restarts,
``ray.controller_failure_limit`` further attempts when the workers cannot start, each waiting at
most ``ray.worker_start_timeout_s``; past them the run fails with what it asked and what the
cluster had.

Data must be readable from every node: on a multi-node cluster, ``data`` is a folder on storage
that all nodes mount (NFS, a persistent volume) and ``ray.storage_path`` likewise (or a
``s3://``/``gs://`` URI that Ray's storage layer supports).
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from multivae.config import ConfigError
from multivae.data.fingerprint import dataset_fingerprint
from multivae.integrations.ray_cluster import (
    check_cluster,
    cluster_address,
    local_cpus,
    start_ray,
)
from multivae.integrations.ray_worker import run_files, train_worker
from multivae.io import atomic_copy_tree, mark_output_once
from multivae.names import (
    CHECKPOINT_FILE,
    METRICS_FILE,
    MODEL_FOLDER,
    RAY_STORAGE_FOLDER,
    RUN_CONFIG_FILE,
    RUN_KIND,
    TRAIN_COMMAND,
)
from multivae.training import Callback, EpochRecord, TrainingResult
from multivae.training.checkpoint import load_checkpoint
from multivae.training.identity import check_fresh_output, check_resume_identity, run_identity

if TYPE_CHECKING:
    from multivae.run_config import RayConfig, RunConfig


def _check_resources(config: RayConfig, available: Mapping[str, float], where: str) -> None:
    needs = {"CPU": config.num_workers * config.cpus_per_worker}
    if config.gpus_per_worker:
        needs["GPU"] = config.num_workers * config.gpus_per_worker
    for name, amount in config.resources_per_worker.items():
        needs[name] = needs.get(name, 0.0) + config.num_workers * amount
    for name, amount in needs.items():
        have = float(available.get(name, 0.0))
        if amount > have:
            raise ConfigError(
                f"ray: {config.num_workers} workers need {amount:g} {name} in all "
                f"({config.num_workers} x per-worker request), found {have:g} {name} on {where}; "
                "lower ray.num_workers or the per-worker resources"
            )


@dataclass
class RayTrainingSetup:
    """What :func:`prepare_ray_run` checked and resolved before any cluster work."""

    run: RunConfig
    folder: Path
    train_rows: int
    storage_path: str
    identity: dict[str, Any]


def prepare_ray_run(config: RunConfig, *, resume: bool = False) -> RayTrainingSetup:
    """Check a Ray run before starting anything: data, model options, resources, output folder.

    Raises:
        ConfigError: For a run without a ``ray`` section, model options the model refuses, or
            more workers than this machine's CPUs (when no cluster address is set).
        DataFormatError: For a dataset folder without ``train/`` or ``val/``, or bad files.
        FileExistsError: When starting afresh in a folder that holds a checkpoint.
        FileNotFoundError: When resuming without a checkpoint.
    """
    from multivae.data.consistency import check_dataset
    from multivae.data.reader import MultimodalDataset
    from multivae.run_config import RunConfig, resolve_dataset, resolve_model_config

    if config.ray is None:
        raise ConfigError("expected a 'ray' section (or --ray) to train on Ray")
    import ray

    address = cluster_address(config.ray.address)
    # Inside a running Ray (a sweep's trial) the cluster is checked once the run starts.
    if not address and not ray.is_initialized():
        _check_resources(config.ray, {"CPU": local_cpus()}, "this machine")
    folder = resolve_dataset(config)
    check_dataset(folder)
    train = MultimodalDataset(folder, "train")
    MultimodalDataset(folder, "val")
    checkpoint = Path(config.output_dir) / CHECKPOINT_FILE
    if resume and not checkpoint.exists():
        raise FileNotFoundError(f"{checkpoint} does not exist: nothing to resume")
    if not resume:
        check_fresh_output(Path(config.output_dir))
    resolved = RunConfig.from_dict(
        {
            **config.to_dict(),
            "data": str(folder),
            "builtin": None,
            "model_config": resolve_model_config(config, train.schema),
        }
    )
    # Building the model here catches refused options before any worker starts.
    from multivae.factory import create_model

    model = create_model(resolved.model, resolved.model_config)
    identity = {"data": dataset_fingerprint(folder)}
    if resume:
        # Refused here, before any worker starts, as the workers' own check would.
        check_resume_identity(
            checkpoint,
            load_checkpoint(checkpoint),
            run_identity(model, resolved.training, identity),
        )
    storage = config.ray.storage_path or str(
        (Path(config.output_dir) / RAY_STORAGE_FOLDER).resolve()
    )
    return RayTrainingSetup(resolved, folder, len(train), storage, identity)


def train_with_ray(
    config: RunConfig,
    *,
    resume: bool = False,
    callbacks: Sequence[Callback] = (),
    ray_callbacks: Sequence[Any] = (),
) -> TrainingResult:
    """Train a run on Ray Train workers; write the run's outputs into ``config.output_dir``.

    Connects to ``ray.address`` (or ``RAY_ADDRESS``), or starts a local Ray instance. The
    outputs are those of :func:`multivae.run.run_training`: ``run.yaml``, ``checkpoint.pt``,
    ``model/`` and ``metrics.json``; Ray Train's own storage (reported checkpoints, the run's
    state) is ``ray.storage_path``, by default ``output_dir/ray``.

    Args:
        config: The run; its ``ray`` section sets the workers and their resources.
        resume: Continue from ``output_dir/checkpoint.pt``.
        callbacks: Run on the rank-0 worker (they are serialized to it, so they must pickle).
        ray_callbacks: Ray Train ``UserCallback`` objects for the run's controller (Ray Tune's
            ``TuneReportCallback`` when the run is a Tune trial).

    Raises:
        ConfigError: See :func:`prepare_ray_run`; also more workers than the cluster's CPUs.
        RuntimeError: When training fails for good (after ``ray.max_failures`` restarts).
    """
    import ray
    import ray.data
    import ray.train
    from ray.train.torch import TorchTrainer

    from multivae.integrations.tracking import tracking_callbacks

    setup = prepare_ray_run(config, resume=resume)
    run = setup.run
    assert run.ray is not None
    started_ray = check_cluster(run.ray.address, "ray.address")
    callbacks = [*tracking_callbacks(run, setup.folder), *callbacks]
    output_dir = Path(run.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    mark_output_once(output_dir, RUN_KIND, TRAIN_COMMAND)
    run.save(output_dir / RUN_CONFIG_FILE)
    if started_ray:
        # A local instance gets the workers' CPUs plus at least one for Ray Data's read tasks,
        # which would otherwise wait forever for a CPU the workers hold.
        start_ray(run.ray.address, math.ceil(run.ray.num_workers * run.ray.cpus_per_worker) + 1)
    ray.data.DataContext.get_current().enable_progress_bars = False
    cluster: dict[str, float] = ray.cluster_resources()  # type: ignore[no-untyped-call]
    _check_resources(run.ray, cluster, "the Ray cluster")
    initial = (
        {name: ray.put(path.read_bytes()) for name, path in _resume_files(output_dir).items()}
        if resume
        else None
    )
    resources = {"CPU": run.ray.cpus_per_worker, **run.ray.resources_per_worker}
    if run.ray.gpus_per_worker:
        resources["GPU"] = run.ray.gpus_per_worker
    # Files in their stored order when deterministic, else a new file order every epoch.
    file_order: Literal["files"] | None = None if run.ray.deterministic else "files"
    dataset_config = ray.train.DataConfig(
        execution_options=ray.data.ExecutionOptions(preserve_order=True)
        if run.ray.deterministic
        else None
    )
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={
            "run": run.to_dict(),
            "train_rows": setup.train_rows,
            "identity": setup.identity,
            "initial_checkpoint": initial,
            "callbacks": list(callbacks),
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=run.ray.num_workers,
            use_gpu=bool(run.ray.gpus_per_worker),
            resources_per_worker=resources,
        ),
        run_config=ray.train.RunConfig(
            name=run.ray.name,
            storage_path=setup.storage_path,
            # Statically ray.train.FailureConfig is Train V1's class; at run time it is Train
            # V2's (Ray 2.60's default), which has these bounds.
            failure_config=ray.train.FailureConfig(  # type: ignore[call-arg]
                max_failures=run.ray.max_failures,
                controller_failure_limit=run.ray.controller_failure_limit,
                max_preemption_failures=run.ray.max_failures,
            ),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            callbacks=list(ray_callbacks),
        ),
        datasets={
            "train": ray.data.read_parquet(str(setup.folder / "train"), shuffle=file_order),
            # Read once and kept in the object store: every epoch's validation then only
            # splits blocks, instead of starting read tasks again.
            "val": ray.data.read_parquet(str(setup.folder / "val")).materialize(),
        },
        dataset_config=dataset_config,
    )
    try:
        with _environment({WORKER_START_TIMEOUT_ENV: f"{run.ray.worker_start_timeout_s:g}"}):
            result = trainer.fit()
    except ray.train.TrainingFailedError as error:
        raise RuntimeError(_failure_message(run.ray, resources, error)) from error
    if result.error is not None:
        raise RuntimeError(_failure_message(run.ray, resources, result.error)) from result.error
    if result.checkpoint is None:
        raise RuntimeError(f"Ray Train run {run.ray.name!r} reported no final checkpoint")
    with result.checkpoint.as_directory() as folder:
        final = Path(folder)
        atomic_copy_tree(final / MODEL_FOLDER, output_dir / MODEL_FOLDER)
        for name in (METRICS_FILE, CHECKPOINT_FILE, *run_files(final)):
            staging = output_dir / f".{name}.tmp"
            shutil.copy2(final / name, staging)
            os.replace(staging, output_dir / name)
    return result_from_outputs(output_dir)


def _resume_files(output_dir: Path) -> dict[str, Path]:
    return {CHECKPOINT_FILE: output_dir / CHECKPOINT_FILE, **run_files(output_dir)}


WORKER_START_TIMEOUT_ENV = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"
"""Ray Train's bound on one attempt to start a worker group (read by the run's controller,
to which Ray Train propagates it from the process that calls ``fit``)."""


@contextlib.contextmanager
def _environment(values: Mapping[str, str]) -> Iterator[None]:
    """Set environment variables for the duration of the block, then restore them."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _failure_message(config: RayConfig, resources: Mapping[str, float], error: Exception) -> str:
    """What failed, said in the run's terms (the worker group that never started, above all)."""
    text = str(error)
    if "worker group startup timed out" in text.lower() or "WorkerGroupStartupTimeout" in text:
        import ray

        available = {
            name: amount
            for name, amount in ray.available_resources().items()  # type: ignore[no-untyped-call]
            if name in resources
        }
        attempts = config.controller_failure_limit + 1
        return (
            f"Ray Train run {config.name!r}: its {config.num_workers} workers (each "
            f"{dict(resources)}) could not start: {attempts} attempt(s) of "
            f"{config.worker_start_timeout_s:g} s (ray.worker_start_timeout_s) each found no "
            f"room; the cluster has {available} free now. Free the resources other jobs hold, "
            f"lower ray.num_workers or the per-worker resources, or raise "
            f"ray.worker_start_timeout_s. Ray Train said: {text}"
        )
    return (
        f"Ray Train run {config.name!r} failed (after at most {config.max_failures} "
        f"worker-group restarts, ray.max_failures): {text}"
    )


def result_from_outputs(output_dir: Path) -> TrainingResult:
    """The :class:`TrainingResult` of a finished run, rebuilt from its checkpoint and metrics."""
    import json

    loop = load_checkpoint(output_dir / CHECKPOINT_FILE)["loop"]
    metrics = json.loads((output_dir / METRICS_FILE).read_text())
    history: list[EpochRecord] = loop["history"]
    return TrainingResult(
        history=history,
        monitor=metrics["monitor"],
        best_epoch=metrics["best_epoch"],
        best_loss=metrics["best_loss"],
        epochs_run=metrics["epochs_run"],
        wall_time=metrics["wall_time_s"],
        early_stopped=metrics["early_stopped"],
        stopped_by_callback=metrics["stopped_by_callback"],
        output_dir=output_dir,
        model_dir=output_dir / MODEL_FOLDER,
        metrics_path=output_dir / METRICS_FILE,
        checkpoint_path=output_dir / CHECKPOINT_FILE,
    )
