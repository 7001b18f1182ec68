"""Coherence: do generated modalities show the class of what they were generated from?

* Cross-modal coherence (Shi et al. 2019; Sutter et al. 2021): for every non-empty proper subset
  ``S`` of the modalities and every modality ``m`` outside it, generate ``m`` from ``S`` on
  labelled test samples and count how often the classifier of ``m`` finds the sample's label.
  Papers report it by the number of conditioning modalities ("coherence from k modalities").
* Joint coherence: draw unconditional samples of every modality and count how often the
  classifiers of all modalities agree on one class.

Both take any object with the model's interface (``modalities``, ``predict``, ``sample``), not
only a :class:`~multivae.models.base.MultimodalVAE`, and work through the data ``batch_size``
rows at a time so memory stays bounded.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from multivae.data.batch import Batch
from multivae.metrics.classifiers import ClassifierSet
from multivae.metrics.shared import (
    EvaluationData,
    evaluation_mode,
    iter_batches,
    model_device,
    select_rows,
)

Subset = tuple[str, ...]
"""A set of conditioning modalities, in the model's order."""


class GenerativeModel(Protocol):
    """What the coherence metrics need of a model."""

    @property
    def modalities(self) -> Sequence[str]:
        """Names of the model's modalities, in order."""
        ...

    def predict(
        self,
        batch: Batch,
        cond: Sequence[str],
        gen: Sequence[str] | None = None,
        n_samples: int = 1,
    ) -> dict[str, torch.Tensor]:
        """Generate modalities ``gen`` from the observed ``cond`` modalities.

        Each is shaped like the data, ``(N, *shape)``, or ``(n_samples, N, *shape)`` when
        ``n_samples > 1`` (class indices for categorical modalities).
        """
        ...

    def sample(self, n: int, sampler: Any = None) -> dict[str, torch.Tensor]:
        """``n`` unconditional samples of every modality, ``(n, *shape)`` each."""
        ...


@dataclass
class CoherenceResult:
    """Cross-modal coherences, per pair and averaged the way papers report them.

    Attributes:
        pairs: ``(subset, target)`` -> fraction of generated ``target`` samples whose predicted
            class is the label. Only pairs with at least one counted sample appear.
        counts: Subset -> number of test samples on which every modality of the subset was
            present (the samples its pairs are computed on; each counts ``n_samples`` times).
        per_target: Subset size ``k`` -> target -> mean of the target's pairs with ``k``
            conditioning modalities.
        per_size: Subset size ``k`` -> mean of all pairs with ``k`` conditioning modalities
            ("coherence from k modalities").
        mean: Mean of all pairs.
        n_samples: Generations per test sample.
        not_applicable: Subsets the model cannot condition on (its ``conditionable`` says
            no, or no target can be generated from them): reported, never scored with a
            substitute posterior.
        not_applicable_pairs: ``(subset, target)`` pairs of applicable subsets whose target
            the model cannot generate from them (a CVAE generates only its main modality).
    """

    pairs: dict[tuple[Subset, str], float]
    counts: dict[Subset, int]
    per_target: dict[int, dict[str, float]] = field(default_factory=dict)
    per_size: dict[int, float] = field(default_factory=dict)
    mean: float = math.nan
    n_samples: int = 1
    not_applicable: list[Subset] = field(default_factory=list)
    not_applicable_pairs: list[tuple[Subset, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form; a pair is keyed ``"m0+m1->m2"``, a subset ``"m0+m1"``."""
        return {
            "mean": self.mean,
            "per_size": {str(k): v for k, v in self.per_size.items()},
            "per_target": {str(k): dict(v) for k, v in self.per_target.items()},
            "pairs": {f"{'+'.join(s)}->{t}": v for (s, t), v in self.pairs.items()},
            "counts": {"+".join(s): v for s, v in self.counts.items()},
            "n_samples": self.n_samples,
            "not_applicable": ["+".join(s) for s in self.not_applicable],
            "not_applicable_pairs": [f"{'+'.join(s)}->{t}" for s, t in self.not_applicable_pairs],
        }


def _subsets(modalities: Sequence[str], sizes: Sequence[int] | None) -> list[Subset]:
    count = len(modalities)
    if count < 2:
        raise ValueError(
            f"cross-modal coherence needs at least two modalities, found {list(modalities)}"
        )
    sizes = list(range(1, count)) if sizes is None else sorted(set(sizes))
    bad = [k for k in sizes if not 1 <= k < count]
    if bad:
        raise ValueError(
            f"subset sizes must be between 1 and {count - 1} (proper non-empty subsets of "
            f"{count} modalities), found {bad}"
        )
    return [s for k in sizes for s in itertools.combinations(modalities, k)]


def cross_modal_coherence(
    model: GenerativeModel,
    batch: EvaluationData,
    classifiers: ClassifierSet,
    subset_sizes: Sequence[int] | None = None,
    n_samples: int = 1,
    batch_size: int = 256,
) -> CoherenceResult:
    """Coherence of every modality generated from every subset of the others.

    For each subset ``S`` (of the sizes asked) and each modality ``m`` outside ``S``, ``m`` is
    generated from ``S`` (``model.predict(..., cond=S, gen=...)``) for the labelled samples on
    which every modality of ``S`` is present; the pair's coherence is the fraction whose class,
    as the classifier of ``m`` sees it, is the label. All targets of a subset come from one
    ``predict`` call.

    Args:
        model: The model (anything with ``modalities`` and ``predict``).
        batch: Labelled test data: a batch, or a dataset split read ``batch_size`` rows at a time.
        classifiers: A classifier for every modality of the model.
        subset_sizes: Sizes of the conditioning subsets; ``1 .. M-1`` by default.
        n_samples: Generations per sample (each is judged).
        batch_size: Rows generated at a time.

    Raises:
        ValueError: For unlabelled data, bad subset sizes, or data on which no subset is ever
            fully present.
        ClassifierError: If a modality of the model has no classifier.
    """
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, found {n_samples}")
    modalities = tuple(model.modalities)
    classifiers.require(modalities)
    subsets = _subsets(modalities, subset_sizes)
    conditionable = getattr(model, "conditionable", None)

    def applies(subset: Subset, target: str) -> bool:
        return conditionable is None or (conditionable(subset) and conditionable(subset, target))

    targets_of = {s: [m for m in modalities if m not in s and applies(s, m)] for s in subsets}
    not_applicable = [s for s in subsets if not targets_of[s]]
    not_applicable_pairs = [
        (s, m)
        for s in subsets
        if targets_of[s]
        for m in modalities
        if m not in s and m not in targets_of[s]
    ]
    subsets = [s for s in subsets if s not in not_applicable]
    correct = {(s, m): 0 for s in subsets for m in targets_of[s]}
    counts = dict.fromkeys(subsets, 0)
    device = model_device(model)
    with evaluation_mode(model), torch.no_grad():
        for chunk in iter_batches(batch, batch_size):
            if chunk.label is None:
                raise ValueError("cross-modal coherence needs labelled data; the batch has none")
            for subset in subsets:
                rows = torch.stack([chunk.mask[m] for m in subset]).all(0)
                present = int(rows.sum())
                if not present:
                    continue
                selected = select_rows(chunk, rows)
                assert selected.label is not None
                targets = targets_of[subset]
                generated = model.predict(
                    selected.to(device), cond=list(subset), gen=targets, n_samples=n_samples
                )
                counts[subset] += present
                for target in targets:
                    predicted = classifiers.predict(target, generated[target]).cpu()
                    correct[(subset, target)] += int((predicted == selected.label).sum())
    pairs = {
        (subset, target): hits / (counts[subset] * n_samples)
        for (subset, target), hits in correct.items()
        if counts[subset]
    }
    if not pairs:
        raise ValueError(
            "no sample has every modality of any conditioning subset present; cross-modal "
            "coherence is undefined on this data"
        )
    result = _summarize(modalities, pairs, counts, n_samples)
    result.not_applicable = not_applicable
    result.not_applicable_pairs = not_applicable_pairs
    return result


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def _summarize(
    modalities: Sequence[str],
    pairs: dict[tuple[Subset, str], float],
    counts: dict[Subset, int],
    n_samples: int,
) -> CoherenceResult:
    per_target: dict[int, dict[str, float]] = {}
    per_size: dict[int, float] = {}
    for size in sorted({len(s) for s, _ in pairs}):
        of_size = {pair: value for pair, value in pairs.items() if len(pair[0]) == size}
        targets = [m for m in modalities if any(t == m for _, t in of_size)]
        per_target[size] = {
            target: _mean([v for (_, t), v in of_size.items() if t == target]) for target in targets
        }
        per_size[size] = _mean(list(of_size.values()))
    return CoherenceResult(
        pairs=pairs,
        counts=counts,
        per_target=per_target,
        per_size=per_size,
        mean=_mean(list(pairs.values())),
        n_samples=n_samples,
    )


def joint_coherence(
    model: GenerativeModel,
    classifiers: ClassifierSet,
    n: int = 1000,
    sampler: Any = None,
    batch_size: int = 256,
) -> float:
    """Fraction of unconditional samples on which the classifiers of all modalities agree.

    Args:
        model: The model (anything with ``modalities`` and ``sample``).
        classifiers: A classifier for every modality of the model.
        n: Number of samples drawn.
        sampler: Replaces the prior (see :meth:`~multivae.models.base.MultimodalVAE.sample`).
        batch_size: Samples drawn at a time.

    Raises:
        ClassifierError: If a modality of the model has no classifier.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, found {n}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, found {batch_size}")
    modalities = tuple(model.modalities)
    classifiers.require(modalities)
    agreeing = 0
    with evaluation_mode(model), torch.no_grad():
        for start in range(0, n, batch_size):
            count = min(batch_size, n - start)
            samples = model.sample(count, sampler)
            predicted = torch.stack([classifiers.predict(m, samples[m]).cpu() for m in modalities])
            if predicted.shape[1] != count:
                raise ValueError(f"model.sample({count}) returned {predicted.shape[1]} samples")
            agreeing += int((predicted == predicted[0]).all(0).sum())
    return agreeing / n
