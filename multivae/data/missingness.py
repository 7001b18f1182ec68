"""Seeded generators of presence masks, each returning the record stored in dataset metadata.

Every generator guarantees at least one present modality per sample, because a sample with no
modality carries no information and the format refuses it. How each generator enforces this is
written into its record.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class PresenceMasks:
    """Presence masks of a set of samples and how they were drawn.

    Attributes:
        present: Modality name -> boolean array of shape ``(samples,)``.
        record: JSON-ready description of the scheme, its parameters and its seed.
    """

    present: dict[str, np.ndarray[Any, Any]]
    record: dict[str, Any]


def _check_rate(rate: float, where: str) -> float:
    rate = float(rate)
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"{where}: expected a missing rate in [0, 1], found {rate}")
    return rate


def _keep_one_where_none(
    dropped: np.ndarray[Any, Any], rng: np.random.Generator
) -> np.ndarray[Any, Any]:
    """Presence from ``dropped`` (samples x modalities), with one modality kept where none was.

    The kept modality of a sample that dropped all of them is chosen uniformly.
    """
    present = ~dropped
    empty = np.flatnonzero(~present.any(axis=1))
    present[empty, rng.integers(0, present.shape[1], size=empty.size)] = True
    return present


def missing_completely_at_random(
    num_samples: int,
    modalities: Sequence[str],
    rates: float | Mapping[str, float],
    seed: int,
) -> PresenceMasks:
    """Drop each modality of each sample independently with its own rate (MCAR).

    A sample that drew no modality keeps one chosen uniformly, so observed missing rates are
    slightly below ``rates`` when rates are high.

    Args:
        num_samples: Number of samples.
        modalities: Modality names.
        rates: One rate for all modalities, or one per modality name.
        seed: Seed of the draw.
    """
    if isinstance(rates, Mapping):
        unknown = sorted(set(rates) - set(modalities))
        if unknown:
            raise ValueError(f"rates name unknown modalities {unknown}; known: {list(modalities)}")
        per_modality = {m: _check_rate(rates.get(m, 0.0), f"rate of {m}") for m in modalities}
    else:
        rate = _check_rate(rates, "missing rate")
        per_modality = dict.fromkeys(modalities, rate)
    rng = np.random.default_rng(seed)
    draws = rng.random((num_samples, len(modalities)))
    dropped = draws < np.array([per_modality[m] for m in modalities])
    present = _keep_one_where_none(dropped, rng)
    return PresenceMasks(
        present={m: present[:, i].copy() for i, m in enumerate(modalities)},
        record={
            "scheme": "missing_completely_at_random",
            "rates": per_modality,
            "seed": int(seed),
            "at_least_one": "a sample that drew no modality keeps one chosen uniformly",
        },
    )


def polymnist_scheme(
    num_samples: int, modalities: Sequence[str], rate: float, seed: int
) -> PresenceMasks:
    """The incomplete PolyMNIST scheme.

    The first modality is always kept; every other one is dropped independently with
    probability ``rate``.
    """
    rate = _check_rate(rate, "missing rate")
    if not modalities:
        raise ValueError("polymnist_scheme expected at least one modality, found none")
    rng = np.random.default_rng(seed)
    dropped = rng.random((num_samples, len(modalities))) < rate
    dropped[:, 0] = False
    present = ~dropped
    return PresenceMasks(
        present={m: present[:, i].copy() for i, m in enumerate(modalities)},
        record={
            "scheme": "polymnist",
            "rate": rate,
            "always_present": modalities[0],
            "seed": int(seed),
        },
    )


def missing_not_at_random_by_class(
    labels: np.ndarray[Any, Any],
    modalities: Sequence[str],
    rates: np.ndarray[Any, Any] | Sequence[Sequence[float]],
    seed: int,
) -> PresenceMasks:
    """Drop modality ``j`` of a sample of class ``c`` with probability ``rates[c][j]`` (MNAR).

    A sample that drew no modality keeps one chosen uniformly.

    Args:
        labels: Integer class of every sample.
        modalities: Modality names.
        rates: Matrix of shape ``(num_classes, num_modalities)``.
        seed: Seed of the draw.
    """
    table = np.asarray(rates, dtype=np.float64)
    labels = np.asarray(labels)
    if table.ndim != 2 or table.shape[1] != len(modalities):
        raise ValueError(
            f"expected a rate matrix of shape (num_classes, {len(modalities)}), "
            f"found shape {table.shape}"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= table.shape[0]):
        raise ValueError(
            f"expected labels in [0, {table.shape[0] - 1}] to index the rate matrix, found "
            f"[{labels.min()}, {labels.max()}]"
        )
    for value in table.flat:
        _check_rate(value, "rate matrix")
    rng = np.random.default_rng(seed)
    dropped = rng.random((labels.size, len(modalities))) < table[labels]
    present = _keep_one_where_none(dropped, rng)
    return PresenceMasks(
        present={m: present[:, i].copy() for i, m in enumerate(modalities)},
        record={
            "scheme": "missing_not_at_random_by_class",
            "rates": table.tolist(),
            "modalities": list(modalities),
            "seed": int(seed),
            "at_least_one": "a sample that drew no modality keeps one chosen uniformly",
        },
    )


def apply_presence(
    data: Mapping[str, np.ndarray[Any, Any]], present: Mapping[str, np.ndarray[Any, Any]]
) -> dict[str, np.ndarray[Any, Any]]:
    """Copies of ``data`` with the cells of absent modalities set to zero, as the format wants."""
    out = {}
    for name, values in data.items():
        flags = present[name].reshape((-1,) + (1,) * (values.ndim - 1))
        out[name] = np.where(flags, values, np.zeros((), dtype=values.dtype))
    return out
