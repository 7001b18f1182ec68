"""Closed-form Kullback-Leibler divergences between diagonal Gaussians."""

from __future__ import annotations

import torch


def kl_normal(
    mean_q: torch.Tensor, logvar_q: torch.Tensor, mean_p: torch.Tensor, logvar_p: torch.Tensor
) -> torch.Tensor:
    """``KL(N(mean_q, var_q) || N(mean_p, var_p))`` summed over the last dimension.

    ``0.5 * sum(logvar_p - logvar_q + (var_q + (mean_q - mean_p)^2) / var_p - 1)``.
    """
    return 0.5 * (
        logvar_p
        - logvar_q
        + (torch.exp(logvar_q) + (mean_q - mean_p) ** 2) * torch.exp(-logvar_p)
        - 1.0
    ).sum(-1)


def kl_standard_normal(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """``KL(N(mean, var) || N(0, I))`` summed over the last dimension."""
    return 0.5 * (torch.exp(logvar) + mean**2 - 1.0 - logvar).sum(-1)
