"""The training config: epochs, optimizer, schedule, precision, checkpoints, early stopping."""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch

from multivae.config import Config, ConfigError


def _torch_class(module: Any, name: str, base: type, kind: str) -> type:
    """The public class ``name`` of ``module`` deriving from ``base``, or an error with a hint."""
    known = sorted(
        attribute
        for attribute, value in vars(module).items()
        if isinstance(value, type)
        and issubclass(value, base)
        and value is not base
        and not attribute.startswith("_")
    )
    if name not in known:
        by_lower = {k.lower(): k for k in known}
        close = difflib.get_close_matches(name.lower(), by_lower, n=1)
        hint = f" Did you mean {by_lower[close[0]]!r}?" if close else ""
        raise ConfigError(f"unknown {kind} {name!r}; expected one of {known}.{hint}")
    found: type = getattr(module, name)
    return found


def _check_kwargs(cls: type, kwargs: dict[str, Any], given: str, where: str) -> None:
    """Refuse keyword arguments ``cls`` does not take, or lacking one it requires.

    ``given`` is the argument the training loop passes itself (the parameters or optimizer).
    """
    parameters = {
        name: parameter
        for name, parameter in inspect.signature(cls).parameters.items()
        if name != given
        and parameter.kind
        in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    }
    for key in kwargs:
        if key not in parameters:
            close = difflib.get_close_matches(key, parameters, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(
                f"{where}: {cls.__name__} takes no argument {key!r}; expected some of "
                f"{list(parameters)}.{hint}"
            )
    required = [
        name
        for name, parameter in parameters.items()
        if parameter.default is inspect.Parameter.empty and name not in kwargs
    ]
    if required:
        raise ConfigError(
            f"{where}: {cls.__name__} requires kwargs {required}, found kwargs {sorted(kwargs)}"
        )


def _probe() -> torch.nn.Parameter:
    return torch.nn.Parameter(torch.zeros(1))


def _is_number_text(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _try_build(build: Callable[[], object], kwargs: dict[str, Any], where: str) -> None:
    """Build once on a probe parameter, so that bad values fail when the config is read."""
    try:
        build()
    except (TypeError, ValueError) as error:
        # PyYAML reads 1e-3 (no dot) as a string, which then fails inside torch.
        texts = [k for k, v in kwargs.items() if isinstance(v, str) and _is_number_text(v)]
        hint = f" ({texts} are strings: write floats as 1.0e-3 in YAML)" if texts else ""
        raise ConfigError(f"{where}: kwargs {kwargs} are refused: {error}{hint}") from None


FUSED_DEVICE_TYPES = ("cpu", "cuda")
"""Devices where ``torch.optim``'s fused optimizers run."""


def _fuses_by_default(
    cls: type, kwargs: dict[str, Any], parameters: list[torch.nn.Parameter]
) -> bool:
    """Whether :meth:`OptimizerConfig.build` turns on ``fused`` (see :class:`OptimizerConfig`)."""
    if "fused" not in inspect.signature(cls).parameters:
        return False
    if any(key in kwargs for key in ("fused", "foreach")) or kwargs.get("differentiable"):
        return False
    return bool(parameters) and all(
        p.is_floating_point() and p.device.type in FUSED_DEVICE_TYPES for p in parameters
    )


@dataclass
class OptimizerConfig(Config):
    """A ``torch.optim`` optimizer by class name, with its keyword arguments.

    Optimizers that have a fused implementation (``Adam``, ``AdamW``, ``SGD``, ``Adagrad``) get
    ``fused=True`` when ``kwargs`` set neither ``fused`` nor ``foreach`` and every parameter is a
    floating-point tensor on the CPU or a CUDA device: PyTorch's default on CPU is a for-loop of
    small kernels per parameter, which costs 40-85% of a forward and backward pass of the
    built-in MLPs and which the fused kernel cuts about 3.5x (``benchmarks/RESULTS.md``). The
    update is the same algorithm; its float rounding differs from the for-loop's in the last
    bits. ``kwargs: {fused: false}`` keeps PyTorch's default.

    Attributes:
        name: Class name in ``torch.optim``, e.g. ``Adam``, ``AdamW``, ``SGD``.
        kwargs: Its keyword arguments besides the parameters, e.g. ``{"lr": 1e-3}``.
    """

    key_prefix: ClassVar[str] = "training.optimizer."

    name: str = "Adam"
    kwargs: dict[str, Any] = field(default_factory=lambda: {"lr": 1e-3})

    def __post_init__(self) -> None:
        super().__post_init__()
        cls = _torch_class(torch.optim, self.name, torch.optim.Optimizer, "optimizer")
        _check_kwargs(cls, self.kwargs, "params", "training.optimizer")
        _try_build(lambda: self.build([_probe()]), self.kwargs, "training.optimizer")

    def build(self, parameters: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
        """The optimizer over ``parameters``."""
        cls = getattr(torch.optim, self.name)
        kwargs = dict(self.kwargs)
        if _fuses_by_default(cls, kwargs, parameters):
            kwargs["fused"] = True
        optimizer: torch.optim.Optimizer = cls(parameters, **kwargs)
        return optimizer


@dataclass
class SchedulerConfig(Config):
    """A ``torch.optim.lr_scheduler`` class by name, with its keyword arguments.

    The training loop steps it once per epoch, after validation (``ReduceLROnPlateau`` with the
    monitored loss), so its horizon is counted in epochs: ``StepLR(step_size=10)`` decays every
    10 epochs and ``CosineAnnealingLR(T_max=E)`` anneals over ``E`` epochs.

    Attributes:
        name: Class name in ``torch.optim.lr_scheduler``, e.g. ``StepLR``, ``CosineAnnealingLR``.
        kwargs: Its keyword arguments besides the optimizer.
    """

    key_prefix: ClassVar[str] = "training.scheduler."

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        cls = _torch_class(
            torch.optim.lr_scheduler, self.name, torch.optim.lr_scheduler.LRScheduler, "scheduler"
        )
        _check_kwargs(cls, self.kwargs, "optimizer", "training.scheduler")
        _try_build(
            lambda: self.build(torch.optim.SGD([_probe()], lr=1.0)),
            self.kwargs,
            "training.scheduler",
        )

    def build(self, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
        """The scheduler of ``optimizer``."""
        scheduler: torch.optim.lr_scheduler.LRScheduler = getattr(
            torch.optim.lr_scheduler, self.name
        )(optimizer, **self.kwargs)
        return scheduler


@dataclass
class OptimizerGroupConfig(Config):
    """The optimizer, schedule and clipping of one optimizer group (``training.groups[name]``).

    Each entry left ``null`` is the run's own: ``training.optimizer``, ``training.scheduler``,
    ``training.grad_clip_norm``.

    Attributes:
        optimizer: The group's optimizer.
        scheduler: The group's learning-rate schedule, stepped once per epoch.
        grad_clip_norm: Clip the group's gradients to this total norm before its step.
    """

    optimizer: OptimizerConfig | None = None
    scheduler: SchedulerConfig | None = None
    grad_clip_norm: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.grad_clip_norm is not None and self.grad_clip_norm <= 0:
            raise ConfigError(
                f"grad_clip_norm: expected a number > 0 or null, found {self.grad_clip_norm}"
            )


@dataclass
class TrainingConfig(Config):
    """Everything the training loop needs besides the model and the data.

    The loop validates after every epoch. The *monitored loss* is the validation loss when
    validation data is given, else the training loss; it drives best-model tracking, early
    stopping and ``ReduceLROnPlateau``. An epoch *improves* when its monitored loss is below the
    best so far by more than ``early_stopping_min_delta``; the best weights are those of the
    last improving epoch. Multi-stage models train their stages in order, each with a fresh
    optimizer and scheduler, its own best-model tracking and early stopping.

    Attributes:
        epochs: Epochs per stage (for stages not in ``stage_epochs``).
        stage_epochs: Stage name -> epochs, overriding ``epochs`` for the stages named.
        batch_size: Samples per batch (per process when data-parallel).
        optimizer: The optimizer, rebuilt for each stage from the stage's parameters.
        scheduler: The learning-rate schedule, stepped once per epoch, or ``None``.
        grad_clip_norm: Clip the gradients' total norm to this value after the backward pass
            and before the optimizer step, or ``None`` for no clipping.
        groups: Optimizer group name -> its own optimizer, scheduler or clipping
            (:class:`OptimizerGroupConfig`), for models with several optimizers (a critic, a
            discriminator) or a group that needs other settings; a group not named here uses
            ``optimizer``, ``scheduler`` and ``grad_clip_norm``. Names the model does not have
            are refused.
        precision: ``fp32``, or ``bf16`` for autocast to bfloat16 (CUDA; also runs on CPU).
            bfloat16 has the range of float32, so no loss scaling is needed.
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        seed: Seeds the weights, the data order (epoch ``e`` uses ``seed + e``) and sampling.
        early_stopping_patience: End a stage after this many epochs without improvement, or
            ``None`` to train every epoch.
        early_stopping_min_delta: How much the monitored loss must fall to count as improving.
        keep: ``best``: the weights of each stage's best epoch are restored at the end of the
            stage (and saved at the end); ``last``: the weights of the last epoch.
        checkpoint_every: Write a checkpoint every this many epochs (0: only at the end).
        num_workers: Data-loading worker processes (0: load in the training process).
        progress_bar: Show a progress bar with the loss and an ETA (on rank 0 only).
        compile: Run the model's forward pass (training and validation, and so its backward
            pass) through ``torch.compile`` (TorchInductor; on CPU it needs a C++ compiler, on
            CUDA Triton). Opt-in: a run's first steps compile its graphs (tens of seconds on
            CPU), which later steps repay, 1.1-1.6x the training samples/s of the built-in MLP
            models on CPU (``benchmarks/RESULTS.md``). The optimizer step is not compiled (it is
            fused by default, see :class:`OptimizerConfig`). Random
            draws match eager mode, so losses equal eager ones within float rounding and resume
            stays exact. A model whose forward pass needs a new graph at (nearly) every step,
            e.g. by making a tensor of a changing Python number with ``torch.tensor``, is
            refused with an error naming it rather than falling back to eager mode; so is a
            machine where compilation fails.
        cuda_graphs: With ``compile`` on CUDA, replay the compiled passes as CUDA graphs
            (Inductor's ``triton.cudagraphs``, what ``torch.compile(mode="reduce-overhead")``
            turns on): one launch per step instead of one per kernel, for small networks whose
            steps are short. Needs ``compile: true`` and a CUDA device; refused otherwise.
    """

    key_prefix: ClassVar[str] = "training."

    epochs: int = 10
    stage_epochs: dict[str, int] | None = None
    batch_size: int = 64
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig | None = None
    grad_clip_norm: float | None = None
    groups: dict[str, OptimizerGroupConfig] | None = None
    precision: Literal["fp32", "bf16"] = "fp32"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: int = 0
    early_stopping_patience: int | None = None
    early_stopping_min_delta: float = 0.0
    keep: Literal["best", "last"] = "best"
    checkpoint_every: int = 1
    num_workers: int = 0
    progress_bar: bool = True
    compile: bool = False
    cuda_graphs: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        positive = {"epochs": self.epochs, "batch_size": self.batch_size}
        positive.update({f"stage_epochs.{k}": v for k, v in (self.stage_epochs or {}).items()})
        if self.early_stopping_patience is not None:
            positive["early_stopping_patience"] = self.early_stopping_patience
        for name, value in positive.items():
            if value < 1:
                raise ConfigError(f"training.{name}: expected an integer >= 1, found {value}")
        for name, value in {
            "checkpoint_every": self.checkpoint_every,
            "num_workers": self.num_workers,
        }.items():
            if value < 0:
                raise ConfigError(f"training.{name}: expected an integer >= 0, found {value}")
        if self.cuda_graphs and not self.compile:
            raise ConfigError(
                "training.cuda_graphs: CUDA graphs replay the compiled step; set "
                "training.compile: true as well"
            )
        if self.cuda_graphs and self.device == "cpu":
            raise ConfigError("training.cuda_graphs: needs a CUDA device, found device 'cpu'")
        if self.grad_clip_norm is not None and self.grad_clip_norm <= 0:
            raise ConfigError(
                f"training.grad_clip_norm: expected a number > 0 or null, found "
                f"{self.grad_clip_norm}"
            )
        if self.early_stopping_min_delta < 0:
            raise ConfigError(
                "training.early_stopping_min_delta: expected a number >= 0, found "
                f"{self.early_stopping_min_delta}"
            )

    def epochs_of(self, stage: str) -> int:
        """The number of epochs of ``stage``."""
        return (self.stage_epochs or {}).get(stage, self.epochs)
