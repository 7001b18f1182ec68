"""The one training loop: stages, epochs, validation, checkpoints, resume, callbacks.

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

import json
import math
import os
import random
import time
import types
from collections.abc import Callable, Iterable, Mapping, Sequence, Sized
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from multivae.config import ConfigError, flatten_mapping
from multivae.data.batch import Batch
from multivae.models.base import ModelOutput, MultimodalVAE
from multivae.names import METRICS_FILE as METRICS_FILE
from multivae.names import MODEL_FOLDER as MODEL_FOLDER
from multivae.training.checkpoint import (
    CHECKPOINT_FILE,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from multivae.training.config import TrainingConfig

EpochRecord = dict[str, float | int | str]
"""One entry of the history: ``epoch`` (counted over all stages, from 1), ``stage``,
``stage_epoch`` (from 1), ``lr``, ``train_loss`` and ``train_<metric>`` for every metric the
model reports, ``val_loss`` and ``val_<metric>`` when there is validation data,
``epoch_time`` (seconds, training and validation) and ``samples_per_s`` (training)."""


_POSTFIX_SECONDS = 1.0
"""How often the progress bar's loss is refreshed (reading it waits for the device)."""
_GRAPHS_PER_STAGE = 4
"""Graphs a compiled forward may need per training stage before it counts as recompiling
without end: the first (``progress`` fixed), one with the changing ``progress`` as an input,
and two to spare (e.g. for a branch some steps take)."""


def distributed_rank() -> int:
    """This process's rank under ``torch.distributed``, 0 when it is not initialized."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return 0


def unwrap_model(model: nn.Module) -> MultimodalVAE:
    """The model inside a ``DistributedDataParallel`` or ``DataParallel`` wrapper (or itself)."""
    module = (
        model.module
        if isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel)
        else model
    )
    if not isinstance(module, MultimodalVAE):
        raise TypeError(f"expected a MultimodalVAE (maybe wrapped), found {type(module).__name__}")
    return module


def resolve_device(name: str) -> torch.device:
    """The device named in :attr:`TrainingConfig.device`."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "training.device: expected a machine with CUDA for 'cuda', found none; "
            "use 'auto' or 'cpu'"
        )
    return torch.device(name)


def _all_reduce(values: torch.Tensor, op: dist.ReduceOp.RedOpType) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(values, op=op)
    return values


def _set_epoch(data: object, epoch: int) -> None:
    """Call ``set_epoch(epoch)`` on the data, its batch sampler and its sampler where they have it.

    This is how a ``DataLoader`` built by ``make_dataloader`` (its batch sampler) or with a
    ``DistributedSampler`` (its sampler) picks the permutation of an epoch.
    """
    for holder in (data, getattr(data, "batch_sampler", None), getattr(data, "sampler", None)):
        set_epoch = getattr(holder, "set_epoch", None)
        if callable(set_epoch):
            set_epoch(epoch)


def _cpu_copy(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: value.detach().to("cpu", copy=True) for key, value in state.items()}


def _call_model(model: nn.Module, batch: Batch) -> ModelOutput:
    """``model(batch)``: what :class:`CompiledForward` compiles."""
    output: ModelOutput = model(batch)
    return output


def compile_failure(error: BaseException) -> bool:
    """Whether ``error`` comes from ``torch.compile`` itself rather than from the model's code.

    Dynamo's and Inductor's errors (tracing, lowering, a missing or failing C++ compiler or
    Triton, the recompile limit) are; an exception the model raises, e.g. on a bad batch,
    reaches the caller unchanged under ``torch.compile`` and is not.
    """
    from torch._dynamo import exc as dynamo_errors
    from torch._inductor import exc as inductor_errors

    return isinstance(
        error,
        dynamo_errors.TorchDynamoException
        | dynamo_errors.FailOnRecompileLimitHit
        | inductor_errors.InvalidCxxCompiler
        | inductor_errors.CppCompileError,
    )


class CompiledForward:
    """``model(batch)`` through ``torch.compile``, with graphs of its own, failing loudly.

    Dynamo keeps compiled graphs, and counts recompilations, per code object: each instance
    compiles its own copy of the calling function, so two trainers (or training and validation)
    in one process neither share graphs nor use up each other's recompilation budget. The model
    is an argument, not compiled itself, so its ``state_dict`` keys keep their names (no
    ``_orig_mod.`` prefix) and a ``DistributedDataParallel`` wrapper is compiled from the
    outside, as PyTorch recommends (Dynamo then splits the graph at DDP's gradient buckets).

    Random draws inside the graph go through the eager random functions (Inductor's
    ``fallback_random``): the compiled pass draws exactly what eager mode draws from the same
    generator state, so its losses equal eager ones within float rounding and resume stays
    exact. A graph is compiled once per set of Python-level facts the forward pass reads
    (training flag, stage, shapes...); the changing float ``progress`` becomes a graph input
    after its first change, and the batch size is dynamic from the start, so that a short last
    batch needs no graph of its own. Within :meth:`settings`, a call beyond ``recompile_limit``
    graphs raises instead of falling back to eager mode.

    Args:
        name: Name of the compiled function in Dynamo's logs (e.g. ``train_forward``).
        recompile_limit: Graphs allowed for one model before the call fails.
        cuda_graphs: Replay the compiled graphs as CUDA graphs (``triton.cudagraphs``).
    """

    def __init__(self, name: str, recompile_limit: int, cuda_graphs: bool = False) -> None:
        code = _call_model.__code__.replace(co_name=name, co_qualname=name)
        function = types.FunctionType(code, _call_model.__globals__, name)
        self.name = name
        self.recompile_limit = recompile_limit
        options: dict[str, Any] = {"fallback_random": True}
        if cuda_graphs:
            options["triton.cudagraphs"] = True
        self._compiled: Callable[[nn.Module, Batch], ModelOutput] = torch.compile(
            function, options=options
        )

    def settings(self) -> AbstractContextManager[Any]:
        """Dynamo's settings for the calls: this recompile limit, and an error beyond it.

        Enter them around a loop of calls rather than each call (entering costs tens of
        microseconds); outside them, Dynamo's defaults apply (a silent fallback to eager mode
        after ``torch._dynamo.config.recompile_limit`` graphs).
        """
        patch: AbstractContextManager[Any] = torch._dynamo.config.patch(
            recompile_limit=self.recompile_limit, fail_on_recompile_limit_hit=True
        )
        return patch

    def __call__(self, model: nn.Module, batch: Batch) -> ModelOutput:
        """``model(batch)``, compiled on first use and whenever a guard fails."""
        for tensor in (*batch.data.values(), *batch.mask.values(), batch.label, batch.sample_id):
            if tensor is not None:
                # Dynamic unless the model's code fixes it (maybe_: then it stays static).
                torch._dynamo.maybe_mark_dynamic(tensor, 0)
        return self._compiled(model, batch)


class Callback:
    """Hooks into the training loop; subclass and override what you need.

    Callbacks run on every rank; one that logs or writes should check
    :func:`distributed_rank` itself.
    """

    def on_train_begin(self, trainer: Trainer) -> None:
        """Called once before the first epoch of :meth:`Trainer.fit` (after a resume's load)."""

    def on_epoch_end(self, epoch: int, metrics: Mapping[str, float | int | str]) -> bool:
        """Called after each epoch with its history entry (see :data:`EpochRecord`).

        Args:
            epoch: The epoch just finished, counted over all stages from 1.
            metrics: Its history entry.

        Returns:
            ``True`` to stop training after this epoch (a checkpoint is written, and a later
            resume continues from there).
        """
        return False

    def on_epoch_saved(
        self, epoch: int, metrics: Mapping[str, float | int | str], checkpoint: Path | None
    ) -> None:
        """Called after :meth:`on_epoch_end` and after the epoch's checkpoint, if any, is written.

        Args:
            epoch: The epoch just finished, counted over all stages from 1.
            metrics: Its history entry.
            checkpoint: The checkpoint file written at this epoch (by rank 0; the same path is
                passed on every rank), or ``None`` when this epoch wrote none.
        """

    def on_train_end(self, result: TrainingResult) -> None:
        """Called once at the end of :meth:`Trainer.fit`, after the outputs are written."""

    def on_train_error(self, error: BaseException) -> None:
        """Called when :meth:`Trainer.fit` fails after ``on_train_begin``; the error is re-raised.

        The checkpoint of the last saved epoch stays in place, so the run can be resumed.
        """


@dataclass
class TrainingResult:
    """What :meth:`Trainer.fit` returns.

    Attributes:
        history: One :data:`EpochRecord` per epoch, over all stages (and runs, when resumed).
        monitor: ``val_loss`` or ``train_loss``: the loss that picks the best epoch.
        best_epoch: The best epoch of the last stage trained, or ``None``.
        best_loss: Its monitored loss, or ``None``.
        epochs_run: Epochs trained over all stages (and runs, when resumed).
        wall_time: Seconds spent in :meth:`Trainer.fit` (and before, when resumed).
        early_stopped: The stages that early stopping ended.
        stopped_by_callback: Whether a callback stopped training.
        output_dir: The run's folder.
        model_dir: The saved model (``output_dir/model``), best or last by ``keep``.
        metrics_path: ``output_dir/metrics.json``.
        checkpoint_path: ``output_dir/checkpoint.pt``.
    """

    history: list[EpochRecord]
    monitor: str
    best_epoch: int | None
    best_loss: float | None
    epochs_run: int
    wall_time: float
    early_stopped: list[str]
    stopped_by_callback: bool
    output_dir: Path
    model_dir: Path
    metrics_path: Path
    checkpoint_path: Path


@dataclass
class _LoopState:
    """Where the loop is; all of it goes into the checkpoint."""

    stage_index: int = 0
    stage_epoch: int = 0
    epoch: int = 0
    stage_done: bool = False
    best_loss: float = math.inf
    best_epoch: int | None = None
    best_state: dict[str, torch.Tensor] | None = None
    bad_epochs: int = 0
    history: list[EpochRecord] = field(default_factory=list)
    early_stopped: list[str] = field(default_factory=list)
    elapsed: float = 0.0

    def next_stage(self) -> None:
        self.stage_index += 1
        self.stage_epoch = 0
        self.stage_done = False
        self.best_loss = math.inf
        self.best_epoch = None
        self.best_state = None
        self.bad_epochs = 0


RESUME_SAFE_KEYS = (
    "epochs",
    "stage_epochs",
    "progress_bar",
    "num_workers",
    "checkpoint_every",
    "device",
    "compile",
    "cuda_graphs",
    "early_stopping_patience",
    "early_stopping_min_delta",
)
"""Training settings a resume may change: how long, how often to save, on what hardware, how
fast; none of them changes what the epochs already trained mean. Everything else of the run's
identity (:meth:`Trainer.identity`) is checked against the checkpoint."""


def changed_keys(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[str]:
    """``key: old -> new`` for every dotted key whose value differs (or that one side lacks)."""
    missing = object()

    def show(value: Any) -> str:
        return "(absent)" if value is missing else repr(value)

    changes = []
    for key in sorted(set(before) | set(after)):
        old, new = before.get(key, missing), after.get(key, missing)
        if old != new:
            changes.append(f"{key}: {show(old)} -> {show(new)}")
    return changes


def check_fresh_output(output_dir: Path) -> None:
    """Refuse to start a run afresh where a run's outputs already are.

    Raises:
        FileExistsError: For a checkpoint (resume that run instead), or a model folder or
            metrics file without one (an earlier run's outputs, or files of the user's, which a
            new run would replace).
    """
    checkpoint = output_dir / CHECKPOINT_FILE
    if checkpoint.exists():
        raise FileExistsError(
            f"{checkpoint} exists: resume to continue that run (--resume), or choose another "
            "output_dir"
        )
    present = [name for name in (MODEL_FOLDER, METRICS_FILE) if (output_dir / name).exists()]
    if present:
        raise FileExistsError(
            f"{output_dir} already holds {present} without a checkpoint to resume; a new run "
            "would replace them: choose another output_dir"
        )


def run_identity(
    model: MultimodalVAE, config: TrainingConfig, extra: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """What makes a run this run, as dotted keys: what a resume must not change.

    The model's name and config, the training settings but :data:`RESUME_SAFE_KEYS`, and
    ``extra`` (the caller's: the data's fingerprint).
    """
    training = {
        f"training.{key}": value
        for key, value in flatten_mapping(config.to_dict(), "").items()
        if not any(key == safe or key.startswith(f"{safe}.") for safe in RESUME_SAFE_KEYS)
    }
    return {
        "model": model.name,
        **flatten_mapping(model.config.to_dict(), "model_config."),
        **training,
        **flatten_mapping(dict(extra or {}), ""),
    }


def check_resume_identity(
    path: Path, checkpoint: Mapping[str, Any], identity: Mapping[str, Any]
) -> None:
    """Refuse to resume ``checkpoint`` (read from ``path``) as a run of another ``identity``.

    Raises:
        ConfigError: Listing every changed key with its old and new value.
    """
    if "identity" not in checkpoint:  # written before checkpoints kept their run's identity
        return
    changed = changed_keys(checkpoint["identity"], identity)
    if changed:
        raise ConfigError(
            f"{path}: resuming would change the run: "
            + "; ".join(changed)
            + ". A resumed run keeps what it started with, except "
            + ", ".join(f"training.{key}" for key in RESUME_SAFE_KEYS)
            + "; start a new run in another output_dir to change the rest"
        )


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
        ConfigError: For ``stage_epochs`` naming a stage the model does not have, or a device,
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
        if (
            config.precision == "bf16"
            and self.device.type == "cuda"
            and not torch.cuda.is_bf16_supported()
        ):
            raise ConfigError(
                "training.precision: expected a GPU with bfloat16 support for 'bf16', found "
                f"{torch.cuda.get_device_name(self.device)}; use 'fp32'"
            )
        self._state = _LoopState()
        self._train_forward: Callable[[nn.Module, Batch], ModelOutput] = _call_model
        self._eval_forward: Callable[[nn.Module, Batch], ModelOutput] = _call_model
        if config.compile:
            if not torch._dynamo.eval_frame.is_dynamo_supported():
                raise ConfigError(
                    "training.compile: torch.compile does not support this Python or platform "
                    f"(torch {torch.__version__}); set training.compile to false"
                )
            limit = max(
                torch._dynamo.config.recompile_limit,
                _GRAPHS_PER_STAGE * len(self.module.stages),
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
            self._state = _LoopState()
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
                optimizer = self.config.optimizer.build(self.module.stage_parameters(stage))
                scheduler = (
                    None
                    if self.config.scheduler is None
                    else self.config.scheduler.build(optimizer)
                )
                if pending is not None:
                    optimizer.load_state_dict(pending["optimizer"])
                    if scheduler is not None and pending["scheduler"] is not None:
                        scheduler.load_state_dict(pending["scheduler"])
                    pending = None
                epochs = self.config.epochs_of(stage)
                while not state.stage_done and state.stage_epoch < epochs:
                    record = self._epoch(
                        stage, epochs, optimizer, train_data, val_data, steps_per_epoch
                    )
                    monitored = float(record["val_loss" if val_data is not None else "train_loss"])
                    if scheduler is not None:
                        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                            scheduler.step(monitored)
                        else:
                            scheduler.step()
                    self._track_best(monitored, stage)
                    state.history.append(record)
                    requests = [
                        callback.on_epoch_end(state.epoch, record) for callback in self.callbacks
                    ]
                    stopped_by_callback = bool(
                        _all_reduce(
                            torch.tensor(float(any(requests)), device=self.device),
                            dist.ReduceOp.MAX,
                        ).item()
                    )
                    state.elapsed = time.monotonic() - started
                    every = self.config.checkpoint_every
                    saved = stopped_by_callback or bool(every and state.epoch % every == 0)
                    if saved:
                        self._save_checkpoint(optimizer, scheduler)
                        saved_epoch = state.epoch
                    for callback in self.callbacks:
                        callback.on_epoch_saved(
                            state.epoch, record, self.checkpoint_path if saved else None
                        )
                    if stopped_by_callback:
                        break
                if stopped_by_callback or state.stage_index == len(stages) - 1:
                    break
                if self.config.keep == "best" and state.best_state is not None:
                    self.module.load_state_dict(state.best_state)
                state.next_stage()
            state.elapsed = time.monotonic() - started
            if saved_epoch != state.epoch:
                self._save_checkpoint(optimizer, scheduler)
            if self.config.keep == "best" and state.best_state is not None:
                self.module.load_state_dict(state.best_state)
            result = self._result(val_data is not None, stopped_by_callback)
            if self.rank == 0:
                self._write_outputs(result)
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
        self,
        batch: Batch,
        optimizer: torch.optim.Optimizer,
        parameters: list[torch.Tensor],
        module_parameters: Sequence[torch.Tensor],
    ) -> ModelOutput:
        try:
            with self._autocast():
                output = self._train_forward(self.model, batch)
            # Module.zero_grad(set_to_none=True) without walking the module tree every step.
            for parameter in module_parameters:
                parameter.grad = None
            # Inductor compiles the backward graph on the first backward pass.
            torch.autograd.backward(output.loss)
        except Exception as error:
            if self.config.compile and compile_failure(error):
                raise self._compile_error(error, "training") from error
            raise
        if self.config.grad_clip_norm is not None:
            # After backward (the gradients exist) and before the step (which uses them).
            nn.utils.clip_grad_norm_(parameters, self.config.grad_clip_norm)
        optimizer.step()
        # A model's post-step hook (gPoE projects its fusion weights back into range).
        after_step = getattr(self.module, "after_optimizer_step", None)
        if after_step is not None:
            after_step()
        return output

    def _epoch(
        self,
        stage: str,
        epochs: int,
        optimizer: torch.optim.Optimizer,
        train_data: Iterable[Batch],
        val_data: Iterable[Batch] | None,
        steps_per_epoch: int | None,
    ) -> EpochRecord:
        state = self._state
        began = time.monotonic()
        lr = float(optimizer.param_groups[0]["lr"])
        _set_epoch(train_data, state.epoch)
        steps = len(train_data) if isinstance(train_data, Sized) else steps_per_epoch
        assert steps is not None
        parameters = [p for group in optimizer.param_groups for p in group["params"]]
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
                    output = self._step(
                        batch.to(self.device, non_blocking=True),
                        optimizer,
                        parameters,
                        module_parameters,
                    )
                    self._accumulate(sums, output, len(batch))
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
        self, sums: dict[tuple[str, ...], torch.Tensor], output: ModelOutput, size: int
    ) -> None:
        """Add a batch's loss and metrics, weighted by its size (they are per-sample means).

        ``sums`` maps the names ``("loss", *metrics)`` to their weighted sums, one tensor per
        set of names: a step costs two small tensor operations whatever its number of metrics.
        """
        names = ("loss", *output.metrics)
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
        reduced: list[float] = _all_reduce(totals, dist.ReduceOp.SUM).tolist()
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
            state.best_state = _cpu_copy(self.module.state_dict())
            state.bad_epochs = 0
        else:
            state.bad_epochs += 1
        patience = self.config.early_stopping_patience
        if patience is not None and state.bad_epochs >= patience:
            state.stage_done = True
            state.early_stopped.append(stage)

    # ----------------------------------------------------------------------------------------
    # Checkpoints and outputs

    def _save_checkpoint(
        self,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    ) -> None:
        if self.rank != 0:
            return
        state = self._state
        save_checkpoint(
            {
                "identity": self.identity(),
                "stages": list(self.module.stages),
                "model": _cpu_copy(self.module.state_dict()),
                "optimizer": optimizer.state_dict(),
                "scheduler": None if scheduler is None else scheduler.state_dict(),
                "rng": capture_rng_state(),
                "loop": {
                    "stage_index": state.stage_index,
                    "stage_epoch": state.stage_epoch,
                    "epoch": state.epoch,
                    "stage_done": state.stage_done,
                    "best_loss": state.best_loss,
                    "best_epoch": state.best_epoch,
                    "best_state": state.best_state,
                    "bad_epochs": state.bad_epochs,
                    "history": state.history,
                    "early_stopped": state.early_stopped,
                    "elapsed": state.elapsed,
                },
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
        self._state = _LoopState(**checkpoint["loop"])
        return {"optimizer": checkpoint["optimizer"], "scheduler": checkpoint["scheduler"]}

    def _result(self, validated: bool, stopped_by_callback: bool) -> TrainingResult:
        state = self._state
        return TrainingResult(
            history=state.history,
            monitor="val_loss" if validated else "train_loss",
            best_epoch=state.best_epoch,
            best_loss=None if state.best_epoch is None else state.best_loss,
            epochs_run=state.epoch,
            wall_time=state.elapsed,
            early_stopped=state.early_stopped,
            stopped_by_callback=stopped_by_callback,
            output_dir=self.output_dir,
            model_dir=self.output_dir / MODEL_FOLDER,
            metrics_path=self.output_dir / METRICS_FILE,
            checkpoint_path=self.checkpoint_path,
        )

    def _write_outputs(self, result: TrainingResult) -> None:
        self.module.save_pretrained(result.model_dir)
        best = [r for r in result.history if r["epoch"] == result.best_epoch]
        document = {
            "model": self.module.name,
            "kept": self.config.keep,
            "monitor": result.monitor,
            "epochs_run": result.epochs_run,
            "wall_time_s": result.wall_time,
            "best_epoch": result.best_epoch,
            "best_loss": result.best_loss,
            "early_stopped": result.early_stopped,
            "stopped_by_callback": result.stopped_by_callback,
            "final": result.history[-1],
            "best": best[0] if best else None,
        }
        temporary = result.metrics_path.with_name(f".{METRICS_FILE}.tmp")
        temporary.write_text(json.dumps(document, indent=2))
        os.replace(temporary, result.metrics_path)
