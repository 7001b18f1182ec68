"""Annealing schedules for KL weights."""

from __future__ import annotations


def linear_warmup(progress: float, warmup: float, final: float = 1.0) -> float:
    """Weight rising linearly from 0 to ``final`` over ``warmup`` units of ``progress``.

    ``progress`` and ``warmup`` are in the same unit (epochs, fractional epochs or steps);
    ``warmup <= 0`` means no warmup.
    """
    if warmup <= 0:
        return final
    return final * min(1.0, max(0.0, progress / warmup))
