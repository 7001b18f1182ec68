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


def kl_to_experts(
    mean: torch.Tensor,
    logvar: torch.Tensor,
    expert_means: torch.Tensor,
    expert_logvars: torch.Tensor,
    mask: torch.Tensor,
) -> torch.Tensor:
    """``sum_{m in O} KL(N(mean, logvar) || q_m)``, per sample: ``(N,)``.

    The masked KL of a joint posterior to each observed unimodal expert (JMVAE's and MVTCAE's
    regularizer). Absent experts become ``N(0, I)`` before the KL, so the masked-out branch
    stays finite (a ``where``'s zero gradient times an infinite derivative would give NaN),
    then contribute exactly 0.

    Args:
        mean: ``(N, D)`` the joint posterior's mean.
        logvar: ``(N, D)`` its log-variance.
        expert_means: ``(M, N, D)`` the experts' means.
        expert_logvars: ``(M, N, D)`` their log-variances.
        mask: ``(M, N)`` observed experts.
    """
    zero = torch.zeros((), dtype=mean.dtype, device=mean.device)
    observed = mask.unsqueeze(-1)
    each = kl_normal(
        mean,
        logvar,
        torch.where(observed, expert_means, zero),
        torch.where(observed, expert_logvars, zero),
    )
    return torch.where(mask, each, zero).sum(0)
