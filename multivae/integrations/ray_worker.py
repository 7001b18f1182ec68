"""The Ray Train worker: the library's training loop on one worker, reporting to Ray Train.

Each worker runs :func:`train_worker`, which builds the model, wraps it with
``ray.train.torch.prepare_model`` (``DistributedDataParallel`` over gloo on CPU, NCCL on GPU)
and hands it to the same :class:`~multivae.training.Trainer` that local runs use; there is no
second loop. Its data is its shard of the run's splits, as
:class:`~multivae.integrations.ray_data.RayShardBatches`.

Checkpoints go through Ray Train (:class:`RayReportCallback`): after every epoch that writes
``checkpoint.pt`` the rank-0 worker reports it with ``ray.train.report``, and at the end it
reports the run's outputs (``checkpoint.pt``, ``model/``, ``metrics.json``) as the final
checkpoint. A restarted worker restores the last reported checkpoint and the loop resumes
exactly where it was (weights, optimizer, random generators, epoch, history).
"""

from __future__ import annotations

import math
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from multivae.data.reader import read_schema
from multivae.integrations.ray_data import RayShardBatches
from multivae.names import CHECKPOINT_FILE, METRICS_FILE, MLFLOW_RUN_FILE, MODEL_FOLDER
from multivae.training import Callback, Trainer, TrainingResult, distributed_rank
from multivae.training.distributed import finds_unused_parameters

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
            files = {CHECKPOINT_FILE: checkpoint, **run_files(checkpoint.parent)}
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
                **run_files(result.output_dir),
            },
        )


def run_files(folder: Path) -> dict[str, Path]:
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
