"""One training run, from its description to its outputs.

:func:`run_training` does the whole run of a :class:`~multivae.run_config.RunConfig`, in this
process or, when the config has a ``ray`` section, on Ray Train workers
(:func:`~multivae.integrations.ray_train.train_with_ray`); MLflow tracks it when enabled. The
CLI (``multivae train``), sweep trials and Kubeflow components call it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from multivae.data.consistency import check_dataset
from multivae.data.fingerprint import dataset_fingerprint
from multivae.data.reader import MultimodalDataset, make_dataloader
from multivae.factory import create_model
from multivae.integrations.tracking import tracking_callbacks
from multivae.io import claim_output, mark_output_once
from multivae.names import RUN_CONFIG_FILE, RUN_KIND, TRAIN_COMMAND
from multivae.run_config import RunConfig, resolve_dataset, resolve_model_config
from multivae.training import Callback, Trainer, TrainingResult, distributed_rank
from multivae.training.distributed import resolve_device


class _SaveRunConfig(Callback):
    """Writes the resolved run config once the trainer has checked the output folder."""

    def __init__(self, config: RunConfig) -> None:
        self.config = config

    def on_train_begin(self, trainer: Trainer) -> None:
        if distributed_rank() == 0:
            trainer.output_dir.mkdir(parents=True, exist_ok=True)
            mark_output_once(trainer.output_dir, RUN_KIND, TRAIN_COMMAND)
            self.config.save(trainer.output_dir / RUN_CONFIG_FILE)


def claim_run_folder(config: RunConfig, *, resume: bool = False) -> Path:
    """The one output rule (:func:`multivae.io.claim_output`) on a run's ``output_dir``.

    A folder holding an earlier run (its marker, or, for a run written before markers, its
    ``run.yaml`` or ``checkpoint.pt``) is left to the trainer's own checks: resumed with
    ``resume``, refused otherwise when it holds a checkpoint or a model.
    """
    return claim_output(
        config.output_dir, RUN_KIND, TRAIN_COMMAND, overwrite=resume, option="output_dir"
    )


def run_training(
    config: RunConfig, *, resume: bool = False, callbacks: Sequence[Callback] = ()
) -> TrainingResult:
    """Train ``config.model`` on the config's data; write the run's outputs.

    ``output_dir`` receives ``run.yaml`` (the resolved config: model options with every
    modality filled in, so the file alone reproduces the run), ``checkpoint.pt``, ``model/`` and
    ``metrics.json``. Batches are shuffled with ``training.seed`` (epoch ``e`` uses
    ``seed + e``), and the weights are initialized after seeding with it.

    Args:
        config: The run.
        resume: Continue from the checkpoint in ``output_dir``.
        callbacks: Passed to the :class:`~multivae.training.Trainer`.

    Raises:
        ConfigError: For model options the model refuses (unknown keys get the closest known
            key), or settings the machine cannot honour (``cuda`` without a GPU).
        DataFormatError: For a dataset folder without ``train/`` or ``val/``, or bad files.
        FileExistsError: When starting afresh in a folder that holds a checkpoint, or for an
            ``output_dir`` the one output rule refuses (:func:`claim_run_folder`).
        FileNotFoundError: When resuming without a checkpoint.

    A resume keeps the run's identity: a changed model config, optimizer, seed, batch size or
    dataset (by fingerprint) is a ``ConfigError`` listing the changed keys; only the settings of
    :data:`~multivae.training.loop.RESUME_SAFE_KEYS` (``epochs``, ``progress_bar``, ...) may
    change.
    """
    claim_run_folder(config, resume=resume)
    if config.ray is not None:
        from multivae.integrations.ray_train import train_with_ray

        return train_with_ray(config, resume=resume, callbacks=callbacks)
    training = config.training
    folder = resolve_dataset(config)
    check_dataset(folder)
    train = MultimodalDataset(folder, "train")
    val = MultimodalDataset(folder, "val")
    torch.manual_seed(training.seed)
    model = create_model(config.model, resolve_model_config(config, train.schema))
    device = resolve_device(training.device)
    resolved = RunConfig.from_dict({**config.to_dict(), "model_config": model.config.to_dict()})
    trainer = Trainer(
        model,
        training,
        config.output_dir,
        # Tracking first: a callback after it (a Tune report) may end the process.
        callbacks=[_SaveRunConfig(resolved), *tracking_callbacks(resolved, folder), *callbacks],
        device=device,
        # A resume on other data is refused (the checkpoint records the data's fingerprint).
        identity={"data": dataset_fingerprint(folder)},
    )
    loader_options: dict[str, Any] = {
        "batch_size": training.batch_size,
        "seed": training.seed,
        "num_workers": training.num_workers,
        "pin_memory": device.type == "cuda",
    }
    return trainer.fit(
        make_dataloader(train, shuffle=True, **loader_options),
        make_dataloader(val, shuffle=False, **loader_options),
        resume=resume,
    )
