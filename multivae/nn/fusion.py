"""Fusion of unimodal posteriors: product of experts, mixture of experts, mixture of products.

One implementation of each, shared by every model. Experts are stacked along a leading modality
axis: means and log-variances of shape ``(M, N, D)`` and a presence mask of shape ``(M, N)``.
An absent expert is removed by masking, never by giving it an infinite variance: its precision
is replaced by zero with ``torch.where``, so it contributes no value and exactly zero gradient.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch

LOGVAR_BOUNDS = (-20.0, 20.0)
"""Log-variances are clamped to this range before exponentiation (finite precisions)."""


def product_of_experts(
    means: torch.Tensor,
    logvars: torch.Tensor,
    mask: torch.Tensor,
    prior_expert: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The Gaussian product of the present experts (and of ``N(0, I)`` when ``prior_expert``).

    ``precision = sum_m mask_m / var_m (+ 1)`` and ``mean = sum_m mask_m mean_m / var_m /
    precision``.

    Args:
        means: ``(M, N, D)`` expert means.
        logvars: ``(M, N, D)`` expert log-variances.
        mask: ``(M, N)`` presence of each expert.
        prior_expert: Include the standard normal prior as an expert.

    Returns:
        Mean and log-variance of the product, each ``(N, D)``. A sample with no present expert
        and no prior expert gets the standard normal (so it stays finite); callers mask it out.
    """
    present = mask.unsqueeze(-1)
    precisions = torch.where(
        present, torch.exp(-logvars.clamp(*LOGVAR_BOUNDS)), torch.zeros((), dtype=means.dtype)
    )
    weighted_means = torch.where(present, means * precisions, torch.zeros((), dtype=means.dtype))
    precision = precisions.sum(0)
    weighted = weighted_means.sum(0)
    if prior_expert:
        precision = precision + 1.0
    else:
        # No expert at all: fall back to N(0, I) so nothing divides by zero.
        empty = ~mask.any(0, keepdim=False).unsqueeze(-1)
        precision = torch.where(empty, torch.ones((), dtype=precision.dtype), precision)
    return weighted / precision, -torch.log(precision)


def normal_log_density(z: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """``log N(z; mean, exp(logvar))`` summed over the last dimension."""
    return (-0.5 * ((z - mean) ** 2 * torch.exp(-logvar) + logvar + math.log(2 * math.pi))).sum(-1)


def laplace_log_density(z: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``log Laplace(z; loc, scale)`` summed over the last dimension."""
    return (-(z - loc).abs() / scale - torch.log(2 * scale)).sum(-1)


def mixture_log_density(component_log_densities: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Log-density of the uniform mixture of the present experts.

    ``log (1/|S|) sum_{m in S} q_m(z)`` with ``S`` the present experts of each sample.

    Args:
        component_log_densities: ``(M, ..., N)`` log-density of ``z`` under each expert.
        mask: ``(M, N)`` presence of each expert.

    Returns:
        ``(..., N)``. Samples with no present expert get 0 (callers mask them out).
    """
    shape = (mask.shape[0],) + (1,) * (component_log_densities.dim() - 2) + (mask.shape[1],)
    present = mask.reshape(shape)
    masked = torch.where(
        present,
        component_log_densities,
        torch.full((), float("-inf"), dtype=component_log_densities.dtype),
    )
    count = mask.sum(0).to(component_log_densities.dtype)
    log_sum = torch.logsumexp(masked, dim=0)
    result = log_sum - torch.log(count.clamp(min=1.0))
    return torch.where(count > 0, result, torch.zeros((), dtype=result.dtype))


def stratified_mixture_weights(mask: torch.Tensor) -> torch.Tensor:
    """Weights ``(M, N)`` for a stratified estimate over a uniform mixture of present experts.

    A stratified estimate draws samples from every present expert and averages their terms with
    weight ``1/|S|`` (``0`` for absent experts), instead of sampling the mixture's component at
    random; it has lower variance and is what MMVAE's bound uses.
    """
    count = mask.sum(0, keepdim=True).clamp(min=1)
    return mask.to(torch.get_default_dtype()) / count


def subsets(modalities: Sequence[str], min_size: int = 1) -> list[tuple[str, ...]]:
    """Every subset of ``modalities`` with at least ``min_size`` members, smallest first."""
    return [
        combo
        for size in range(min_size, len(modalities) + 1)
        for combo in itertools.combinations(modalities, size)
    ]


def subset_masks(
    chosen: Sequence[tuple[str, ...]], modalities: Sequence[str], mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Membership and availability of subsets.

    Args:
        chosen: The subsets, as tuples of modality names.
        modalities: The modality order of ``mask``.
        mask: ``(M, N)`` presence.

    Returns:
        ``membership`` ``(S, M)`` (whether modality ``m`` is in subset ``s``) and ``available``
        ``(S, N)`` (whether every modality of subset ``s`` is present in sample ``n``).
    """
    index = {name: i for i, name in enumerate(modalities)}
    membership = torch.zeros(len(chosen), len(modalities), dtype=torch.bool, device=mask.device)
    for s, subset in enumerate(chosen):
        for name in subset:
            membership[s, index[name]] = True
    # A subset is available when none of its members is absent.
    missing_member = (membership.unsqueeze(-1) & ~mask.unsqueeze(0)).any(1)
    return membership, ~missing_member


def mixture_of_products(
    means: torch.Tensor,
    logvars: torch.Tensor,
    membership: torch.Tensor,
    prior_expert: torch.Tensor | bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A product of experts for every subset (the components of MoPoE's mixture).

    Args:
        means: ``(M, N, D)``.
        logvars: ``(M, N, D)``.
        membership: ``(S, M)`` subset membership (see :func:`subset_masks`).
        prior_expert: Whether each subset's product includes ``N(0, I)``: one flag for all, or a
            boolean tensor of shape ``(S,)``.

    Returns:
        Means and log-variances of the products, each ``(S, N, D)``. Whether a subset is usable
        for a sample (all its members present) is the ``available`` mask of
        :func:`subset_masks`.
    """
    experts = membership.unsqueeze(-1).expand(-1, -1, means.shape[1])  # (S, M, N)
    present = experts.unsqueeze(-1)
    precisions = torch.where(
        present,
        torch.exp(-logvars.clamp(*LOGVAR_BOUNDS)).unsqueeze(0),
        torch.zeros((), dtype=means.dtype),
    )
    precision = precisions.sum(1)
    weighted = torch.where(
        present, (means * torch.exp(-logvars.clamp(*LOGVAR_BOUNDS))).unsqueeze(0), 0.0
    ).sum(1)
    prior = torch.as_tensor(prior_expert, device=means.device).reshape(-1, 1, 1)
    precision = precision + prior.to(precision.dtype)
    return weighted / precision, -torch.log(precision)


def weighted_product_of_experts(
    means: torch.Tensor,
    logvars: torch.Tensor,
    weights: torch.Tensor,
    mask: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The generalized product of experts (Cao & Fleet 2014): each expert's precision weighted.

    Per dimension ``precision = sum_m w_m / var_m`` and ``mean = sum_m w_m mean_m / var_m /
    precision`` over the present experts, no prior expert. A dimension whose present weights
    sum to 0 (no expert, or only zero weights) gets the standard normal, so it stays finite.

    Args:
        means: ``(M, N, D)`` expert means.
        logvars: ``(M, N, D)`` expert log-variances.
        weights: ``(M, N, D)`` non-negative weights (broadcastable).
        mask: ``(M, N)`` presence of each expert.

    Returns:
        Mean and log-variance of the product, each ``(N, D)``.
    """
    zero = torch.zeros((), dtype=means.dtype, device=means.device)
    present = mask.unsqueeze(-1)
    weights = torch.where(present, weights.expand_as(means), zero)
    precisions = weights * torch.exp(-logvars.clamp(*LOGVAR_BOUNDS))
    precision = precisions.sum(0)
    empty = weights.sum(0) <= 0
    safe = torch.where(empty, torch.ones((), dtype=means.dtype, device=means.device), precision)
    mean = torch.where(empty, zero, (precisions * means).sum(0) / safe)
    return mean, torch.where(empty, zero, -torch.log(safe))


def select_components(available: torch.Tensor, mode: str) -> torch.Tensor:
    """Which available component each sample's mixture draw comes from: ``(C, N)`` one-hot.

    ``split``: the batch is divided evenly, sample ``i`` taking its available component of rank
    ``floor(i * count_i / N)`` (the references' deterministic split); ``random``: a uniform draw
    among each sample's available components (one ``torch.rand((N,))``). A sample with none gets
    an all-false column. MoPoE chooses among subsets, mmJSD among experts.

    Args:
        available: ``(C, N)`` which components each sample may draw from.
        mode: ``split`` or ``random``.
    """
    count = available.sum(0)
    if mode == "split":
        position = torch.arange(available.shape[1], device=available.device)
        rank = position * count // available.shape[1]
    elif mode == "random":
        # Rank among the available components; a sample with none draws 0 and matches nothing.
        rank = (torch.rand(count.shape, device=available.device) * count).long()
    else:
        raise ValueError(f"select_components: expected 'split' or 'random', found {mode!r}")
    return available & (available.long().cumsum(0) == rank + 1)
