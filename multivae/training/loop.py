"""The one training loop: stages, epochs, validation, checkpoints, resume, callbacks.

The package holds one job per module: this loop (:class:`Trainer`), its settings
(:mod:`~multivae.training.config`), where it runs (:mod:`~multivae.training.distributed`), the
compiled forward pass (:mod:`~multivae.training.compiled`), hooks and results
(:mod:`~multivae.training.callbacks`), the run's identity for resume
(:mod:`~multivae.training.identity`), the loop's state (:mod:`~multivae.training.state`), the
checkpoint file (:mod:`~multivae.training.checkpoint`) and the outputs
(:mod:`~multivae.training.outputs`).

:class:`Trainer` trains any :class:`~multivae.models.base.MultimodalVAE`, bare or wrapped in
``DistributedDataParallel``, on any iterable of :class:`~multivae.data.Batch` (a
``DataLoader`` from :func:`~multivae.data.make_dataloader`, or batches from Ray Data). Under
``torch.distributed`` every rank runs the loop on its own shard; epoch metrics and stop
requests are summed over ranks so that every rank takes the same decisions, and only rank 0
writes files or shows the progress bar.

Exact resume: a run interrupted after epoch ``k`` and resumed from its checkpoint ends with the
same weights, bit for bit, as a run that was not interrupted, given deterministic kernels (CPU,
or CUDA with ``torch.use_deterministic_algorithms``). The checkpoint holds the weights, the
optimizer and scheduler states, the random generators' states, the loop's position and its
best-model tracking; the data order of epoch ``e`` is chosen by ``set_epoch(e)`` on the data.

With :attr:`TrainingConfig.compile`, the model's forward pass runs through ``torch.compile``
(see :class:`CompiledForward`); the weights, checkpoints and saved models are those of the
model itself, so they load into an uncompiled model unchanged.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence, Sized
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from multivae.config import ConfigError
from multivae.data.batch import Batch
from multivae.models.base import ModelOutput
from multivae.names import METRICS_FILE as METRICS_FILE
from multivae.names import MODEL_FOLDER as MODEL_FOLDER
from multivae.training.callbacks import Callback, EpochRecord, TrainingResult
from multivae.training.checkpoint import (
    CHECKPOINT_FILE,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from multivae.training.compiled import CompiledForward, call_model, compile_failure
from multivae.training.config import TrainingConfig
from multivae.training.distributed import (
    all_reduce,
    distributed_rank,
    resolve_device,
    set_epoch,
    unwrap_model,
)
from multivae.training.identity import check_fresh_output, check_resume_identity, run_identity
from multivae.training.optimizers import (
    StageOptimizers,
    check_group_names,
    checkpoint_optimizers,
)
from multivae.training.outputs import training_result, write_outputs
from multivae.training.state import LoopState, cpu_copy

__all__ = [
    "METRICS_FILE",
    "MODEL_FOLDER",
    "Callback",
    "EpochRecord",
    "Trainer",
    "TrainingResult",
    "distributed_rank",
    "unwrap_model",
]

_POSTFIX_SECONDS = 1.0
"""How often the progress bar's loss is refreshed (reading it waits for the device)."""
_GRAPHS_PER_STAGE = 4
"""Graphs a compiled forward may need per training stage before it counts as recompiling
without end: the first (``progress`` fixed), one with the changing ``progress`` as an input,
and two to spare (e.g. for a branch some steps take)."""


class Trainer:
    """Trains a model by a :class:`TrainingConfig` and writes its outputs to ``output_dir``.

    ``output_dir`` receives ``checkpoint.pt`` (every ``checkpoint_every`` epochs and at the
    end), and at the end ``model/`` (``save_pretrained`` of the best or last weights) and
    ``metrics.json``. After :meth:`fit` the model in memory holds the weights that were saved.

    Args:
        model: A :class:`MultimodalVAE`, or one wrapped in ``DistributedDataParallel`` (placed
            on its device already).
        config: The training settings.
        output_dir: Folder of the run's checkpoint and outputs.
        callbacks: Called at the start, after every epoch and at the end.
        device: Device to train on; overrides ``config.device`` (data-parallel workers pass
            their own).
        identity: More of what makes the run this run (e.g. ``{"data": fingerprint}``), added
            to its :meth:`identity`.

    Raises:
        ConfigError: For ``stage_epochs`` naming a stage the model does not have, ``groups`` an
            optimizer group it does not have, or a device,
            precision or ``compile`` this machine does not support.
    """

    def __init__(
        self,
        model: nn.Module,
        config: TrainingConfig,
        output_dir: str | os.PathLike[str],
        *,
        callbacks: Sequence[Callback] = (),
        device: torch.device | None = None,
        identity: Mapping[str, Any] | None = None,
    ) -> None:
        self.model = model
        self.module = unwrap_model(model)
        self.config = config
        self.extra_identity = dict(identity or {})
        self.output_dir = Path(output_dir)
        self.callbacks = list(callbacks)
        self.device = resolve_device(config.device) if device is None else device
        self.rank = distributed_rank()
        for stage in config.stage_epochs or {}:
            if stage not in self.module.stages:
                raise ConfigError(
                    f"training.stage_epochs: {self.module.name} has no stage {stage!r}; "
                    f"expected some of {list(self.module.stages)}"
                )
        check_group_names(self.module, config)
        self._skipped_steps = 0
        if (
            config.precision == "bf16"
            and self.device.type == "cuda"
            and not torch.cuda.is_bf16_supported()
        ):
            raise ConfigError(
                "training.precision: expected a GPU with bfloat16 support for 'bf16', found "
                f"{torch.cuda.get_device_name(self.device)}; use 'fp32'"
            )
        self._state = LoopState()
        self._train_forward: Callable[[nn.Module, Batch], ModelOutput] = call_model
        self._eval_forward: Callable[[nn.Module, Batch], ModelOutput] = call_model
        if config.compile:
            if not torch._dynamo.eval_frame.is_dynamo_supported():
                raise ConfigError(
                    "training.compile: torch.compile does not support this Python or platform "
                    f"(torch {torch.__version__}); set training.compile to false"
                )
            limit = max(
                torch._dynamo.config.recompile_limit,
                _GRAPHS_PER_STAGE
                * sum(len(self.module.optimizer_groups(s)) for s in self.module.stages),
            )
            if config.cuda_graphs and self.device.type != "cuda":
                raise ConfigError(
                    f"training.cuda_graphs: needs a CUDA device, the run trains on "
                    f"{self.device.type!r}; set training.cuda_graphs to false"
                )
            graphs = config.cuda_graphs
            self._train_forward = CompiledForward("train_forward", limit, cuda_graphs=graphs)
            self._eval_forward = CompiledForward("validation_forward", limit, cuda_graphs=graphs)

    def identity(self) -> dict[str, Any]:
        """What a resume must not change (see :func:`run_identity`)."""
        return run_identity(self.module, self.config, self.extra_identity)

    @property
    def checkpoint_path(self) -> Path:
        """Where the checkpoint is written and resumed from."""
        return self.output_dir / CHECKPOINT_FILE

    @property
    def history(self) -> list[EpochRecord]:
        """Per-epoch metrics so far (including those of the run a resume continues)."""
        return self._state.history

    def fit(
        self,
        train_data: Iterable[Batch],
        val_data: Iterable[Batch] | None = None,
        *,
        resume: bool = False,
        steps_per_epoch: int | None = None,
    ) -> TrainingResult:
        """Train every stage of the model, validating after each epoch; write the outputs.

        Args:
            train_data: Training batches, iterated once per epoch. Before each epoch,
                ``set_epoch(epoch)`` is called on it, its ``batch_sampler`` and its ``sampler``
                where they have that method, so that each epoch has its own seeded order.
            val_data: Validation batches, or ``None`` (the training loss is then monitored).
            resume: Continue from ``output_dir/checkpoint.pt``.
            steps_per_epoch: Batches per epoch, for ``train_data`` without a length (it sets
                the model's fractional ``progress``).

        Raises:
            TypeError: For ``train_data`` without a length and no ``steps_per_epoch``.
            FileExistsError: When starting afresh in a folder that holds a checkpoint.
            FileNotFoundError: When resuming without a checkpoint.
            ConfigError: When resuming would change the run's :meth:`identity` (the error
                lists each changed key with its old and new value).
            ValueError: When the checkpoint is unreadable or belongs to another model, or an
                epoch yields no batches.
            FloatingPointError: When an epoch's training loss is not finite.
        """
        if not isinstance(train_data, Sized) and steps_per_epoch is None:
            raise TypeError(
                "train_data has no length: pass steps_per_epoch (batches per epoch), which sets "
                "the model's fractional progress"
            )
        stages = self.module.stages
        self.module.to(self.device)
        pending: dict[str, Any] | None = None
        if resume:
            pending = self._load_checkpoint(stages)
        else:
            check_fresh_output(self.output_dir)
            self._state = LoopState()
            torch.manual_seed(self.config.seed)
            random.seed(self.config.seed)
        state = self._state
        for callback in self.callbacks:
            callback.on_train_begin(self)
        try:
            started = time.monotonic() - state.elapsed
            saved_epoch = state.epoch if resume else -1
            stopped_by_callback = False
            while True:
                stage = stages[state.stage_index]
                self.module.set_stage(stage)
                optimizers = StageOptimizers(self.module, stage, self.config)
                if pending is not None:
                    optimizers.load_state_dict(pending)
                    pending = None
                epochs = self.config.epochs_of(stage)
                while not state.stage_done and state.stage_epoch < epochs:
                    record = self._epoch(
                        stage, epochs, optimizers, train_data, val_data, steps_per_epoch
                    )
                    monitored = float(record["val_loss" if val_data is not None else "train_loss"])
                    optimizers.step_schedulers(monitored)
                    self._track_best(monitored, stage)
                    state.history.append(record)
                    requests = [
                        callback.on_epoch_end(state.epoch, record) for callback in self.callbacks
                    ]
                    stopped_by_callback = bool(
                        all_reduce(
                            torch.tensor(float(any(requests)), device=self.device),
                            dist.ReduceOp.MAX,
                        ).item()
                    )
                    state.elapsed = time.monotonic() - started
                    every = self.config.checkpoint_every
                    saved = stopped_by_callback or bool(every and state.epoch % every == 0)
                    if saved:
                        self._save_checkpoint(optimizers)
                        saved_epoch = state.epoch
                    for callback in self.callbacks:
                        callback.on_epoch_saved(
                            state.epoch, record, self.checkpoint_path if saved else None
                        )
                    if stopped_by_callback:
                        break
                if stopped_by_callback or state.stage_index == len(stages) - 1:
                    break
                if (
                    self.config.keep == "best"
                    and self.module.restore_best_between_stages
                    and state.best_state is not None
                ):
                    self.module.load_state_dict(state.best_state)
                state.next_stage()
            state.elapsed = time.monotonic() - started
            if saved_epoch != state.epoch:
                self._save_checkpoint(optimizers)
            if self.config.keep == "best" and state.best_state is not None:
                self.module.load_state_dict(state.best_state)
            result = training_result(
                state, self.output_dir, val_data is not None, stopped_by_callback
            )
            if self.rank == 0:
                write_outputs(self.module, self.config.keep, result)
            for callback in self.callbacks:
                callback.on_train_end(result)
            return result
        except BaseException as error:
            for callback in self.callbacks:
                callback.on_train_error(error)
            raise

    # ----------------------------------------------------------------------------------------
    # One epoch

    def _autocast(self) -> AbstractContextManager[Any]:
        return torch.autocast(
            device_type=self.device.type,
            dtype=torch.bfloat16,
            enabled=self.config.precision == "bf16",
        )

    def _compile_settings(self) -> AbstractContextManager[Any]:
        forward = self._train_forward
        return forward.settings() if isinstance(forward, CompiledForward) else nullcontext()

    def _batches(self, data: Iterable[Batch]) -> Iterable[Batch]:
        # A DataLoader draws its workers' base seed from the global generator each time an
        # iterator is created, but only once with persistent workers; a resumed run would then
        # draw where an uninterrupted one does not. Isolating the draw keeps resume exact.
        with torch.random.fork_rng(devices=[]):
            return iter(data)

    def _compile_error(self, error: BaseException, phase: str) -> RuntimeError:
        """The error to raise for a failure of ``torch.compile`` in ``phase``."""
        from torch._dynamo.exc import FailOnRecompileLimitHit

        if isinstance(error, FailOnRecompileLimitHit):
            forward = self._train_forward
            limit = forward.recompile_limit if isinstance(forward, CompiledForward) else 0
            reason = (
                f"its forward pass needed more than {limit} compiled graphs in {phase}: "
                "something it reads changes from step to step in a way torch.compile cannot "
                "turn into a graph input (e.g. torch.tensor of a changing Python number, or "
                "Python control flow on random draws); the 'last reason' torch._dynamo logged "
                "above says what, and TORCH_LOGS=recompiles lists every recompilation"
            )
        else:
            lines = str(error).strip().splitlines()
            reason = (
                f"torch.compile failed in {phase}: {type(error).__name__}: "
                f"{lines[0] if lines else ''}"
            )
        return RuntimeError(
            f"training.compile: {self.module.name}: {reason}. Set training.compile to false to "
            "train without compiling."
        )

    def _step(
        self, batch: Batch, optimizers: StageOptimizers, module_parameters: Sequence[torch.Tensor]
    ) -> list[ModelOutput]:
        """One batch: each optimizer group in order, ``steps`` times, on its own forward pass.

        A step whose batch has no usable sample on any rank (``ModelOutput.usable`` 0) runs no
        backward pass and no optimizer step. Returns each group's last output.
        """
        outputs: list[ModelOutput] = []
        for entry in optimizers.entries:
            self.module.optimizer_group = entry.group.name
            for _ in range(entry.group.steps):
                try:
                    with self._autocast():
                        output = self._train_forward(self.model, batch)
                    if output.usable is not None and not self._any_usable(output.usable):
                        # A zero gradient would still move Adam's moments (and the weights).
                        self._skipped_steps += 1
                        continue
                    # Module.zero_grad(set_to_none=True) without walking the module tree.
                    for parameter in module_parameters:
                        parameter.grad = None
                    # Inductor compiles the backward graph on the first backward pass.
                    torch.autograd.backward(output.loss)
                except Exception as error:
                    if self.config.compile and compile_failure(error):
                        raise self._compile_error(error, "training") from error
                    raise
                entry.step()
            outputs.append(output)
        self.module.optimizer_group = optimizers.names[0]
        return outputs

    def _any_usable(self, usable: torch.Tensor) -> bool:
        """Whether any rank's batch has a usable sample (the same answer on every rank)."""
        count = all_reduce(usable.detach().float().reshape(1), dist.ReduceOp.SUM)
        return bool(count.item() > 0)

    def _epoch(
        self,
        stage: str,
        epochs: int,
        optimizers: StageOptimizers,
        train_data: Iterable[Batch],
        val_data: Iterable[Batch] | None,
        steps_per_epoch: int | None,
    ) -> EpochRecord:
        state = self._state
        began = time.monotonic()
        lr = optimizers.lr()
        set_epoch(train_data, state.epoch)
        steps = len(train_data) if isinstance(train_data, Sized) else steps_per_epoch
        assert steps is not None
        self._skipped_steps = 0
        module_parameters = list(self.module.parameters())
        stages = self.module.stages
        total = sum(self.config.epochs_of(s) for s in stages)
        description = f"epoch {state.epoch + 1}/{total}"
        if len(stages) > 1:
            description += f" ({stage} {state.stage_epoch + 1}/{epochs})"
        with tqdm(
            total=steps,
            desc=description,
            unit="batch",
            dynamic_ncols=True,
            disable=self.rank != 0 or not self.config.progress_bar,
        ) as bar:
            sums: dict[tuple[str, ...], torch.Tensor] = {}
            samples = 0
            shown = time.monotonic()
            self.model.train()
            with self._compile_settings():
                for step, batch in enumerate(self._batches(train_data)):
                    self.module.progress = state.stage_epoch + step / steps
                    outputs = self._step(
                        batch.to(self.device, non_blocking=True), optimizers, module_parameters
                    )
                    for name, output in zip(optimizers.names, outputs, strict=True):
                        # The first group's loss is the epoch's; the others' are prefixed.
                        prefix = "" if name == optimizers.names[0] else f"{name}_"
                        self._accumulate(sums, output, len(batch), prefix)
                    samples += len(batch)
                    bar.update()
                    if not bar.disable and time.monotonic() - shown > _POSTFIX_SECONDS:
                        loss = sum(values[0] for values in sums.values())
                        bar.set_postfix(loss=f"{float(loss) / samples:.4g}")
                        shown = time.monotonic()
            train, train_samples = self._average(sums, samples, "training")
            train_time = time.monotonic() - began
            record: EpochRecord = {
                "epoch": state.epoch + 1,
                "stage": stage,
                "stage_epoch": state.stage_epoch + 1,
                "lr": lr,
            }
            record.update({f"train_{name}": value for name, value in train.items()})
            if self._skipped_steps:
                record["skipped_steps"] = self._skipped_steps
            if not math.isfinite(train["loss"]):
                raise FloatingPointError(
                    f"{self.module.name}: training loss is {train['loss']} in epoch "
                    f"{state.epoch + 1} (stage {stage!r}); lower the learning rate or set "
                    "training.grad_clip_norm"
                )
            postfix = {"loss": f"{train['loss']:.4g}"}
            if val_data is not None:
                # A float, as in training: a compiled forward pass guards on the type.
                self.module.progress = float(state.stage_epoch + 1)
                val = self._validate(val_data)
                record.update({f"val_{name}": value for name, value in val.items()})
                postfix["val_loss"] = f"{val['loss']:.4g}"
            bar.set_postfix(postfix)
        record["epoch_time"] = time.monotonic() - began
        record["samples_per_s"] = train_samples / train_time
        state.epoch += 1
        state.stage_epoch += 1
        return record

    @torch.no_grad()
    def _validate(self, data: Iterable[Batch]) -> dict[str, float]:
        sums: dict[tuple[str, ...], torch.Tensor] = {}
        samples = 0
        self.model.eval()
        with self._compile_settings():
            for batch in self._batches(data):
                try:
                    with self._autocast():
                        output = self._eval_forward(
                            self.model, batch.to(self.device, non_blocking=True)
                        )
                except Exception as error:
                    if self.config.compile and compile_failure(error):
                        raise self._compile_error(error, "validation") from error
                    raise
                self._accumulate(sums, output, len(batch))
                samples += len(batch)
        return self._average(sums, samples, "validation")[0]

    def _accumulate(
        self,
        sums: dict[tuple[str, ...], torch.Tensor],
        output: ModelOutput,
        size: int,
        prefix: str = "",
    ) -> None:
        """Add a batch's loss and metrics, weighted by its size (they are per-sample means).

        ``sums`` maps the names ``("loss", *metrics)`` (each after ``prefix``: another optimizer
        group's) to their weighted sums, one tensor per set of names: a step costs two small
        tensor operations whatever its number of metrics.
        """
        names = tuple(f"{prefix}{name}" for name in ("loss", *output.metrics))
        total = sums.get(names)
        if total is None and "loss" in output.metrics:
            raise ValueError(
                f"{self.module.name}: the metric name 'loss' is reserved for the loss, found "
                f"metrics {sorted(output.metrics)}"
            )
        with torch.no_grad():
            values = torch.stack([output.loss, *output.metrics.values()]).float()
            if total is None:
                sums[names] = values * size
            else:
                total.add_(values, alpha=size)

    def _average(
        self, sums: dict[tuple[str, ...], torch.Tensor], samples: int, what: str
    ) -> tuple[dict[str, float], float]:
        """Per-sample averages over the epoch, and the number of samples (over all ranks)."""
        by_name: dict[str, torch.Tensor] = {}
        for names, values in sums.items():
            for name, value in zip(names, values.unbind(), strict=True):
                by_name[name] = by_name[name] + value if name in by_name else value
        ordered = sorted(by_name)
        totals = torch.stack(
            [*(by_name[name] for name in ordered), torch.tensor(float(samples), device=self.device)]
        )
        reduced: list[float] = all_reduce(totals, dist.ReduceOp.SUM).tolist()
        count = reduced[-1]
        if count == 0:
            raise ValueError(
                f"the {what} data yielded no batches in epoch {self._state.epoch + 1}; expected "
                "at least one"
            )
        averages = {name: total / count for name, total in zip(ordered, reduced[:-1], strict=True)}
        return averages, count

    def _track_best(self, monitored: float, stage: str) -> None:
        state = self._state
        if monitored < state.best_loss - self.config.early_stopping_min_delta:
            state.best_loss = monitored
            state.best_epoch = state.epoch
            state.best_state = cpu_copy(self.module.state_dict())
            state.bad_epochs = 0
        else:
            state.bad_epochs += 1
        patience = self.config.early_stopping_patience
        if patience is not None and state.bad_epochs >= patience:
            state.stage_done = True
            state.early_stopped.append(stage)

    # ----------------------------------------------------------------------------------------
    # Checkpoints and outputs

    def _save_checkpoint(self, optimizers: StageOptimizers) -> None:
        if self.rank != 0:
            return
        state = self._state
        save_checkpoint(
            {
                "identity": self.identity(),
                "stages": list(self.module.stages),
                "model": cpu_copy(self.module.state_dict()),
                "optimizers": optimizers.state_dict(),
                "rng": capture_rng_state(),
                "loop": state.to_checkpoint(),
            },
            self.checkpoint_path,
        )

    def _load_checkpoint(self, stages: tuple[str, ...]) -> dict[str, Any]:
        """Restore the model, random generators and loop state; return the optimizer's states."""
        checkpoint = load_checkpoint(self.checkpoint_path)
        check_resume_identity(self.checkpoint_path, checkpoint, self.identity())
        if tuple(checkpoint["stages"]) != stages:
            raise ValueError(
                f"{self.checkpoint_path}: expected a checkpoint of a model with stages "
                f"{list(stages)}, found stages {checkpoint['stages']}"
            )
        try:
            self.module.load_state_dict(checkpoint["model"])
        except RuntimeError as error:
            raise ValueError(
                f"{self.checkpoint_path}: the checkpoint's weights do not fit this "
                f"{self.module.name} model ({error})"
            ) from None
        restore_rng_state(checkpoint["rng"])
        self._state = LoopState.from_checkpoint(checkpoint["loop"])
        return checkpoint_optimizers(checkpoint)
