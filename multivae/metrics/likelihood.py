"""Importance-sampled likelihoods over a test set: joint, conditional, and a report of both.

Each metric runs ``model.nll`` on ``batch_size`` rows at a time (the model itself draws its ``K``
importance samples ``chunk_size`` at a time), so memory stays bounded by
``batch_size * chunk_size`` decodings whatever the size of the test set and ``K``.

Which samples count:

* joint NLL of modalities ``gen`` (all by default): samples with at least one of them present;
  on incomplete data it is the NLL of the observed ones (``model.nll`` masks the others);
* conditional NLL ``-log p(x_gen | x_cond)``: samples on which every modality of ``cond`` is
  present and at least one of ``gen`` is; the observed ones of ``gen`` are scored.

Samples that do not count get ``NaN`` in ``per_sample`` and stay out of the mean.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from itertools import combinations
from typing import Any, Protocol

import torch

from multivae.data.batch import Batch
from multivae.metrics.shared import (
    EvaluationData,
    evaluation_mode,
    iter_batches,
    model_device,
    seeded,
    select_rows,
)


class LikelihoodModel(Protocol):
    """What the likelihood metrics need of a model."""

    @property
    def modalities(self) -> Sequence[str]:
        """Names of the model's modalities, in order."""
        ...

    def nll(
        self,
        batch: Batch,
        cond: Sequence[str] | None = None,
        gen: Sequence[str] | None = None,
        k: int = 1000,
        chunk_size: int = 100,
    ) -> torch.Tensor:
        """Importance-sampled negative log-likelihood per sample, shape ``(N,)``."""
        ...


def _check_names(model: LikelihoodModel, names: Sequence[str], what: str) -> tuple[str, ...]:
    if isinstance(names, str):
        raise TypeError(f"{what}: expected a list of modality names, found the string {names!r}")
    unknown = [name for name in names if name not in model.modalities]
    if unknown:
        raise ValueError(
            f"{what}: unknown modalities {unknown}; the model has {list(model.modalities)}"
        )
    if not names:
        raise ValueError(f"{what}: expected at least one modality, found none")
    return tuple(names)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _evaluate(
    model: LikelihoodModel,
    data: EvaluationData,
    cond: tuple[str, ...] | None,
    gen: tuple[str, ...],
    k: int,
    chunk_size: int,
    batch_size: int,
    seed: int | None,
) -> dict[str, Any]:
    if k < 1 or chunk_size < 1:
        raise ValueError(f"k and chunk_size must be >= 1, found k={k}, chunk_size={chunk_size}")
    device = model_device(model)
    parts = []
    seconds = 0.0
    with evaluation_mode(model), torch.no_grad(), seeded(seed, device):
        for chunk in iter_batches(data, batch_size):
            rows = torch.stack([chunk.mask[m] for m in gen]).any(0)
            if cond:
                rows &= torch.stack([chunk.mask[m] for m in cond]).all(0)
            values = torch.full((len(chunk),), math.nan, dtype=torch.float64)
            if bool(rows.any()):
                selected = select_rows(chunk, rows).to(device)
                start = time.perf_counter()
                nll = model.nll(
                    selected,
                    cond=None if cond is None else list(cond),
                    gen=list(gen),
                    k=k,
                    chunk_size=chunk_size,
                )
                _synchronize(device)
                seconds += time.perf_counter() - start
                values[rows] = nll.detach().to("cpu", torch.float64)
            parts.append(values)
    per_sample = torch.cat(parts) if parts else torch.empty(0, dtype=torch.float64)
    counted = per_sample[~per_sample.isnan()]
    count = int(counted.numel())
    return {
        "mean": float(counted.mean()) if count else math.nan,
        "std_error": float(counted.std() / math.sqrt(count)) if count > 1 else math.nan,
        "count": count,
        "per_sample": per_sample,
        "k": k,
        "seconds": seconds,
        "throughput": count * k / seconds if seconds > 0 else math.nan,
    }


def joint_nll(
    model: LikelihoodModel,
    data: EvaluationData,
    k: int = 1000,
    chunk_size: int = 100,
    batch_size: int = 256,
    *,
    gen: Sequence[str] | None = None,
    seed: int | None = None,
) -> dict[str, Any]:
    """Importance-sampled joint negative log-likelihood over a test set.

    ``-log p(x)`` estimated per sample with ``K`` samples of the model's posterior given all
    observed modalities; on incomplete data it is the NLL of the observed modalities.

    Args:
        model: The model (anything with ``modalities`` and ``nll``).
        data: Test data: a batch, or a dataset split read ``batch_size`` rows at a time.
        k: Importance samples per test sample.
        chunk_size: Importance samples drawn at a time.
        batch_size: Test samples evaluated at a time.
        gen: Modalities whose (marginal) likelihood is estimated; all by default.
        seed: Seed of torch's random state for the estimate (the caller's state is restored);
            ``None`` uses the current state.

    Returns:
        ``mean`` (nats per sample), ``std_error`` (of the mean over samples), ``count``
        (samples that count), ``per_sample`` (``(N,)`` float64 tensor, NaN where nothing
        counts), ``k``, ``seconds`` (time in ``model.nll``) and ``throughput`` (samples x K per
        second).
    """
    names = tuple(model.modalities) if gen is None else _check_names(model, gen, "gen")
    return _evaluate(model, data, None, names, k, chunk_size, batch_size, seed)


def conditional_nll(
    model: LikelihoodModel,
    data: EvaluationData,
    cond: Sequence[str],
    gen: Sequence[str] | None = None,
    k: int = 1000,
    chunk_size: int = 100,
    batch_size: int = 256,
    *,
    seed: int | None = None,
) -> dict[str, Any]:
    """Importance-sampled conditional negative log-likelihood ``-log p(x_gen | x_cond)``.

    Counts the samples on which every modality of ``cond`` is present and at least one of
    ``gen`` is. The model's estimator is used (for the built-in models, the posterior given
    ``cond`` stands in for ``p(z | x_cond)``).

    Args:
        model: The model (anything with ``modalities`` and ``nll``).
        data: Test data: a batch, or a dataset split read ``batch_size`` rows at a time.
        cond: Conditioning modalities.
        gen: Modalities scored; all those not in ``cond`` by default.
        k: Importance samples per test sample.
        chunk_size: Importance samples drawn at a time.
        batch_size: Test samples evaluated at a time.
        seed: Seed of torch's random state for the estimate (the caller's state is restored).

    Returns:
        The same fields as :func:`joint_nll`.
    """
    cond_names = _check_names(model, cond, "cond")
    if gen is None:
        gen = [m for m in model.modalities if m not in cond_names]
    gen_names = _check_names(model, gen, "gen")
    overlap = sorted(set(cond_names) & set(gen_names))
    if overlap:
        raise ValueError(f"modalities {overlap} are both conditioned on and scored")
    return _evaluate(model, data, cond_names, gen_names, k, chunk_size, batch_size, seed)


def _summary(result: dict[str, Any]) -> dict[str, Any]:
    return {key: result[key] for key in ("mean", "std_error", "count")}


def _condition_of(model: LikelihoodModel, target: str) -> list[str] | None:
    """What ``target``'s conditional NLL conditions on: all the other modalities by default.

    ``None`` when the model's ``conditionable`` refuses that (DVCCA's primary view); for a
    conditional model, the smallest subset it generates ``target`` from (a CVAE: its
    conditioning modalities for its main modality, ``None`` for the others).
    """
    others = [m for m in model.modalities if m != target]
    conditionable = getattr(model, "conditionable", None)
    if conditionable is None:
        return others
    if not getattr(getattr(model, "capabilities", None), "conditional", False):
        return others if conditionable(others, target) else None
    for size in range(1, len(others) + 1):
        for subset in combinations(others, size):
            if conditionable(subset) and conditionable(subset, target):
                return list(subset)
    return None


def likelihood_report(
    model: LikelihoodModel,
    data: EvaluationData,
    k: int = 1000,
    chunk_size: int = 100,
    batch_size: int = 256,
    *,
    seed: int | None = None,
) -> dict[str, Any]:
    """The joint NLL, each modality's NLL given all the others, and the throughput.

    Args:
        model: The model (anything with ``modalities`` and ``nll``).
        data: Test data: a batch, or a dataset split read ``batch_size`` rows at a time.
        k: Importance samples per test sample.
        chunk_size: Importance samples drawn at a time.
        batch_size: Test samples evaluated at a time.
        seed: Seed of torch's random state for the whole report (the caller's is restored).

    A conditional model (``capabilities.conditional``, a CVAE) defines no joint likelihood:
    ``joint`` is reported as not applicable, and each modality it generates is scored given
    the smallest subset it generates it from.

    Returns:
        JSON-ready: ``joint`` and ``conditional[m]`` (each ``mean``, ``std_error``, ``count``;
        ``conditional`` is empty for a single-modality model), ``not_applicable`` (the modalities
        the model's ``conditionable`` cannot generate from the others), ``k``, ``throughput``
        (samples x K per second of the joint NLL, or of the first conditional one for a
        conditional model) and ``seconds`` (time in ``model.nll`` over the report).
    """
    modalities = tuple(model.modalities)
    conditional_only = getattr(getattr(model, "capabilities", None), "conditional", False)
    # A modality the model cannot generate from all the others (DVCCA's primary view) or from
    # any subset (a CVAE's conditioning modalities) is reported, never scored with a substitute.
    conditions = {m: _condition_of(model, m) for m in modalities if len(modalities) > 1}
    with seeded(seed, model_device(model)):
        joint = None if conditional_only else joint_nll(model, data, k, chunk_size, batch_size)
        conditional = {
            m: conditional_nll(model, data, cond, [m], k, chunk_size, batch_size)
            for m, cond in conditions.items()
            if cond is not None
        }
    timed = [r for r in (joint, *conditional.values()) if r is not None]
    return {
        "k": k,
        "joint": (
            {"not_applicable": "a conditional model defines no joint likelihood"}
            if joint is None
            else _summary(joint)
        ),
        "conditional": {m: _summary(result) for m, result in conditional.items()},
        "not_applicable": [m for m, cond in conditions.items() if cond is None],
        "throughput": timed[0]["throughput"] if timed else math.nan,
        "seconds": sum(r["seconds"] for r in timed),
    }
