"""Where a training process runs: its rank, its device, its model unwrapped, collective sums.

Under ``torch.distributed`` (DDP, Ray Train workers) every rank runs the same loop on its own
shard; these helpers let the loop take the same decisions on every rank and work unchanged in a
single process.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from multivae.config import ConfigError
from multivae.models.base import MultimodalVAE


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


def all_reduce(values: torch.Tensor, op: dist.ReduceOp.RedOpType) -> torch.Tensor:
    """``values`` reduced in place over the ranks by ``op`` (unchanged in a single process)."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(values, op=op)
    return values


def set_epoch(data: object, epoch: int) -> None:
    """Call ``set_epoch(epoch)`` on the data, its batch sampler and its sampler where they have it.

    This is how a ``DataLoader`` built by ``make_dataloader`` (its batch sampler) or with a
    ``DistributedSampler`` (its sampler) picks the permutation of an epoch.
    """
    for holder in (data, getattr(data, "batch_sampler", None), getattr(data, "sampler", None)):
        set_epoch = getattr(holder, "set_epoch", None)
        if callable(set_epoch):
            set_epoch(epoch)


def finds_unused_parameters(model: MultimodalVAE) -> bool:
    """Whether ``DistributedDataParallel`` must look for parameters a step leaves unused.

    True for a model whose steps do not all train every parameter: several stages (a later
    stage freezes modules), frozen modules, or several optimizer groups (each group's forward
    pass computes its own loss). DDP then skips what a step does not reach instead of waiting
    for its gradient ("Expected to have finished reduction"); other models keep the cheaper
    default.
    """
    return (
        any(
            model.frozen_modules(stage) or len(model.optimizer_groups(stage)) > 1
            for stage in model.stages
        )
        or len(model.stages) > 1
    )
