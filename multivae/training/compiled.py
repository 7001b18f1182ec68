"""The model's forward pass through ``torch.compile``, failing loudly instead of falling back.

See :class:`CompiledForward`; :func:`compile_failure` tells a compiler error from the model's own.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import nn

from multivae.data.batch import Batch
from multivae.models.base import ModelOutput


def call_model(model: nn.Module, batch: Batch) -> ModelOutput:
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
        code = call_model.__code__.replace(co_name=name, co_qualname=name)
        function = types.FunctionType(code, call_model.__globals__, name)
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
