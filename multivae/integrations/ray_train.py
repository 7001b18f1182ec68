"""Ray Train: the library's own training loop on the workers of a Ray cluster.

:func:`train_with_ray` runs one :class:`~multivae.run_config.RunConfig` as a Ray Train
``TorchTrainer``. Each worker runs :func:`train_worker`, which builds the model, wraps it with
``ray.train.torch.prepare_model`` (``DistributedDataParallel`` over gloo on CPU, NCCL on GPU)
and hands it to the same :class:`~multivae.training.Trainer` that local runs use; there is no
second loop. Data comes from the run's Parquet splits through Ray Data (``read_parquet``,
streamed and split evenly across workers by Ray Train, presence masks kept), as
:class:`RayShardBatches`.

Checkpoints go through Ray Train: after every epoch that writes ``checkpoint.pt`` the rank-0
worker reports it with ``ray.train.report``, and at the end it reports the run's outputs
(``checkpoint.pt``, ``model/``, ``metrics.json``) as the final checkpoint, which the driver copies
into ``output_dir``. When a worker dies, Ray Train (``FailureConfig(max_failures)``) restarts the
worker group; each worker then restores the last reported checkpoint and the loop resumes
exactly where it was (weights, optimizer, random generators, epoch, history); with
``ray.deterministic`` the data order is reproduced too, so the final weights are those of the
uninterrupted run. Every failure is bounded: ``ray.max_failures`` worker-group restarts,
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
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from multivae.config import ConfigError
from multivae.data.batch import Batch
from multivae.data.errors import DataFormatError
from multivae.data.fingerprint import dataset_fingerprint
from multivae.data.reader import read_schema
from multivae.data.schema import (
    LABEL_COLUMN,
    PRESENCE_SUFFIX,
    SAMPLE_ID_COLUMN,
    DatasetSchema,
    imputed_column,
    presence_column,
)
from multivae.data.validation import check_chunk
from multivae.io import atomic_copy_tree, mark_output_once
from multivae.names import (
    CHECKPOINT_FILE,
    METRICS_FILE,
    MLFLOW_RUN_FILE,
    MODEL_FOLDER,
    RAY_STORAGE_FOLDER,
    RUN_CONFIG_FILE,
    RUN_KIND,
    TRAIN_COMMAND,
)
from multivae.training import Callback, EpochRecord, Trainer, TrainingResult, distributed_rank
from multivae.training.checkpoint import load_checkpoint
from multivae.training.distributed import finds_unused_parameters
from multivae.training.identity import check_fresh_output, check_resume_identity, run_identity

if TYPE_CHECKING:
    from multivae.run_config import RayConfig, RunConfig


def _writable(values: Any) -> np.ndarray[Any, Any]:
    """A contiguous array torch may wrap, copied when read-only.

    Ray Data's zero-copy batches are read-only views: ``torch.from_numpy`` warns on them and an
    in-place op on the tensor would be undefined.
    """
    array = np.ascontiguousarray(values)
    return array if array.flags.writeable else array.copy()


def batch_from_columns(
    columns: Mapping[str, np.ndarray[Any, Any]], modalities: Sequence[str]
) -> Batch:
    """A :class:`Batch` from one Ray Data batch in NumPy format (the Parquet columns).

    Modality columns become ``(N, *shape)`` tensors (zero-copy where NumPy allows), the
    ``<name>__present`` columns the masks, ``label`` and ``sample_id`` the long tensors.
    """
    data = {name: torch.from_numpy(_writable(columns[name])) for name in modalities}
    mask = {
        name: torch.from_numpy(_writable(np.asarray(columns[f"{name}{PRESENCE_SUFFIX}"], bool)))
        for name in modalities
    }
    label = columns.get("label")
    sample_id = columns.get("sample_id")
    return Batch(
        data=data,
        mask=mask,
        label=None if label is None else torch.from_numpy(_writable(label.astype(np.int64))),
        sample_id=None
        if sample_id is None
        else torch.from_numpy(_writable(sample_id.astype(np.int64))),
    )


def check_columns(schema: DatasetSchema, columns: Mapping[str, Any], where: str) -> None:
    """The local reader's row checks on one Ray Data batch.

    The checks and messages are :func:`~multivae.data.validation.check_chunk`'s; a bad row is
    named by its ``sample_id`` (Ray Data keeps no file rows).

    Raises:
        DataFormatError: The local reader's message, located at ``where`` and the sample id.
    """
    data = {spec.name: np.asarray(columns[spec.name]) for spec in schema.modalities}
    present = {
        spec.name: np.asarray(columns[presence_column(spec.name)]) for spec in schema.modalities
    }
    labels = None if schema.num_classes is None else np.asarray(columns[LABEL_COLUMN])
    imputed = None
    if schema.imputed:
        imputed = {
            spec.name: np.asarray(columns[imputed_column(spec.name)]) for spec in schema.modalities
        }
    try:
        check_chunk(schema, data, present, labels, imputed=imputed)
    except DataFormatError as error:
        sample = ""
        if error.row is not None and SAMPLE_ID_COLUMN in columns:
            sample = f", sample_id {int(np.asarray(columns[SAMPLE_ID_COLUMN])[error.row])}"
        raise DataFormatError(error.problem, f"{where}{sample}", column=error.column) from None


class RayShardBatches:
    """A worker's shard of a Ray Dataset as an epoch-by-epoch iterable of :class:`Batch`.

    Args:
        shard: ``ray.train.get_dataset_shard(name)``.
        modalities: The modality columns to read.
        batch_size: Samples per batch.
        steps: Batches per epoch (the loop's fractional progress needs it; the shards that Ray
            Train makes are equal in size, so every worker takes the same number of steps).
        seed: Seed of the local shuffle; epoch ``e`` uses ``seed + e``.
        shuffle_buffer_size: Rows in the local shuffle buffer; 0 keeps the read order.
        schema: Check every batch's rows as the local reader does (:func:`check_columns`);
            ``None`` skips the checks.
        where: Where the rows come from, for the messages (the split's folder).
    """

    def __init__(
        self,
        shard: Any,
        modalities: Sequence[str],
        batch_size: int,
        steps: int,
        seed: int = 0,
        shuffle_buffer_size: int = 0,
        schema: DatasetSchema | None = None,
        where: str = "",
    ) -> None:
        self.shard = shard
        self.schema = schema
        self.where = where
        self.modalities = tuple(modalities)
        self.batch_size = batch_size
        self.steps = steps
        self.seed = seed
        self.shuffle_buffer_size = shuffle_buffer_size
        self.epoch = 0

    def __len__(self) -> int:
        return self.steps

    def set_epoch(self, epoch: int) -> None:
        """Choose the shuffle of the next epoch."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[Batch]:
        options: dict[str, Any] = {}
        if self.shuffle_buffer_size:
            options = {
                "local_shuffle_buffer_size": self.shuffle_buffer_size,
                "local_shuffle_seed": self.seed + self.epoch,
            }
        for columns in self.shard.iter_batches(
            batch_size=self.batch_size, batch_format="numpy", prefetch_batches=2, **options
        ):
            if self.schema is not None:
                check_columns(self.schema, columns, self.where)
            yield batch_from_columns(columns, self.modalities)


FINAL_REPORT_KEY = "run_finished"
"""Set in the last report of a run (with its outputs); a key Ray Tune does not reserve."""
TUNE_RESERVED_KEYS = frozenset(
    {"done", "should_checkpoint", "trial_id", "experiment_tag", "time_this_iter_s"}
    | {"time_total_s", "training_iteration", "timesteps_this_iter", "episodes_this_iter"}
    | {"timesteps_total", "episodes_total", "timestamp", "date", "config", "pid", "hostname"}
    | {"node_ip", "time_since_restore", "iterations_since_restore", "checkpoint_dir_name"}
    | {"timesteps_since_restore"}
)
"""Result keys Ray Tune fills in or acts on (``ray.tune.result``); never reported by a run."""


class RayReportCallback(Callback):
    """Reports every epoch to Ray Train, with the checkpoint when the epoch wrote one.

    Every rank reports once per epoch (``ray.train.report`` is a barrier); rank 0 attaches the
    checkpoint. At the end, rank 0 reports the run's outputs as the final checkpoint.
    """

    def on_epoch_saved(
        self, epoch: int, metrics: Mapping[str, float | int | str], checkpoint: Path | None
    ) -> None:
        """Report the epoch's metrics, and its checkpoint from rank 0."""
        files = {}
        if checkpoint is not None:
            files = {CHECKPOINT_FILE: checkpoint, **_run_files(checkpoint.parent)}
        _report(dict(metrics), files)

    def on_train_end(self, result: TrainingResult) -> None:
        """Report the final outputs (``checkpoint.pt``, ``model/``, ``metrics.json``)."""
        final = dict(result.history[-1]) if result.history else {}
        # Not "done": Tune reserves it (a trial reporting done=True is stopped before it can
        # copy its outputs), and every key here reaches Tune when the run is a sweep's trial.
        final[FINAL_REPORT_KEY] = True
        _report(
            final,
            {
                CHECKPOINT_FILE: result.checkpoint_path,
                MODEL_FOLDER: result.model_dir,
                METRICS_FILE: result.metrics_path,
                **_run_files(result.output_dir),
            },
        )


def _resume_files(output_dir: Path) -> dict[str, Path]:
    return {CHECKPOINT_FILE: output_dir / CHECKPOINT_FILE, **_run_files(output_dir)}


def _run_files(folder: Path) -> dict[str, Path]:
    """Files beside the checkpoint that a restarted worker needs (the MLflow run's id)."""
    path = folder / MLFLOW_RUN_FILE
    return {MLFLOW_RUN_FILE: path} if path.is_file() else {}


def _report(metrics: dict[str, Any], files: Mapping[str, Path]) -> None:
    reserved = sorted(TUNE_RESERVED_KEYS & set(metrics))
    if reserved:
        raise ValueError(
            f"Ray Train report: keys {reserved} are reserved by Ray Tune (a sweep's trial that "
            "reports them is stopped or misread); rename them"
        )
    import ray.train

    if not files or distributed_rank() != 0:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory(prefix="multivae-report-") as staging:
        for name, source in files.items():
            target = Path(staging) / name
            if source.is_dir():
                shutil.copytree(source, target)
            else:
                shutil.copy2(source, target)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(staging))


def train_worker(loop_config: dict[str, Any]) -> None:
    """The function each Ray Train worker runs: the library's :class:`Trainer` on its shard.

    ``loop_config`` holds ``run`` (the resolved run config as plain data), ``train_rows``,
    ``initial_checkpoint`` (file name -> object reference to the bytes of the checkpoint and
    MLflow run file to resume from, or ``None``) and ``callbacks`` (extra :class:`Callback`
    objects for rank 0, e.g. MLflow).
    """
    import ray
    import ray.train
    import ray.train.torch

    from multivae.factory import create_model
    from multivae.run_config import RunConfig

    run = RunConfig.from_dict(loop_config["run"])
    training = run.training
    context = ray.train.get_context()
    world_size = context.get_world_size()
    local_dir = Path(tempfile.mkdtemp(prefix="multivae-worker-"))
    resume = False
    restored = ray.train.get_checkpoint()
    if restored is not None:
        with restored.as_directory() as folder:
            for path in Path(folder).iterdir():
                if path.is_file():
                    shutil.copy2(path, local_dir / path.name)
        resume = True
    elif loop_config.get("initial_checkpoint") is not None:
        for name, reference in loop_config["initial_checkpoint"].items():
            (local_dir / name).write_bytes(ray.get(reference))
        resume = True
    torch.manual_seed(training.seed)
    model = create_model(run.model, run.model_config)
    modalities = model.modalities
    device = ray.train.torch.get_device()
    prepared = ray.train.torch.prepare_model(
        model,
        parallel_strategy_kwargs={"find_unused_parameters": finds_unused_parameters(model)},
    )
    rows_per_worker = loop_config["train_rows"] // world_size
    steps = max(1, math.ceil(rows_per_worker / training.batch_size))
    assert run.ray is not None
    assert run.data is not None
    schema = read_schema(run.data)
    train = RayShardBatches(
        ray.train.get_dataset_shard("train"),
        modalities,
        training.batch_size,
        steps,
        seed=training.seed,
        shuffle_buffer_size=run.ray.shuffle_buffer_size,
        schema=schema,
        where=str(Path(run.data) / "train"),
    )
    val = RayShardBatches(
        ray.train.get_dataset_shard("val"),
        modalities,
        training.batch_size,
        steps=1,
        schema=schema,
        where=str(Path(run.data) / "val"),
    )
    callbacks: list[Callback] = [RayReportCallback()]
    if context.get_world_rank() == 0:
        callbacks += list(loop_config.get("callbacks") or [])
    trainer = Trainer(
        prepared,
        training,
        local_dir,
        callbacks=callbacks,
        device=device,
        identity=loop_config.get("identity"),
    )
    trainer.fit(train, val, resume=resume)


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

    address = config.ray.address or os.environ.get("RAY_ADDRESS")
    # Inside a running Ray (a sweep's trial) the cluster is checked once the run starts.
    if not address and not ray.is_initialized():
        _check_resources(config.ray, {"CPU": float(os.cpu_count() or 1)}, "this machine")
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

    from multivae.integrations.endpoints import check_ray_address
    from multivae.integrations.tracking import tracking_callbacks

    setup = prepare_ray_run(config, resume=resume)
    run = setup.run
    assert run.ray is not None
    if not ray.is_initialized():
        check_ray_address(run.ray.address, "ray.address")
    callbacks = [*tracking_callbacks(run, setup.folder), *callbacks]
    output_dir = Path(run.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    mark_output_once(output_dir, RUN_KIND, TRAIN_COMMAND)
    run.save(output_dir / RUN_CONFIG_FILE)
    if not ray.is_initialized():
        if run.ray.address or os.environ.get("RAY_ADDRESS"):
            ray.init(address=run.ray.address)
        else:
            # A local instance: the workers' CPUs plus at least one for Ray Data's read tasks,
            # which would otherwise wait forever for a CPU the workers hold.
            needed = math.ceil(run.ray.num_workers * run.ray.cpus_per_worker) + 1
            ray.init(address="local", num_cpus=max(os.cpu_count() or 1, needed))
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
        for name in (METRICS_FILE, CHECKPOINT_FILE, *_run_files(final)):
            staging = output_dir / f".{name}.tmp"
            shutil.copy2(final / name, staging)
            os.replace(staging, output_dir / name)
    return result_from_outputs(output_dir)


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
