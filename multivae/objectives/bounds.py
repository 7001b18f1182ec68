"""Evidence lower bounds from per-sample log-likelihoods and log-densities.

Notation: ``log_w[k, n] = log p(x_n, z_k) - log q(z_k | x_n)`` for ``K`` samples ``z_k``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from multivae.nn.fusion import stratified_mixture_weights


def elbo(log_likelihood: torch.Tensor, kl: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
    """``log p(x|z) - beta * KL``, per sample (the beta-ELBO with an analytic KL)."""
    return log_likelihood - beta * kl


def log_mean_exp(values: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """``log mean exp(values)`` along ``dim``, computed stably."""
    return torch.logsumexp(values, dim=dim) - math.log(values.shape[dim])


def iwae_bound(log_w: torch.Tensor) -> torch.Tensor:
    """The importance-weighted bound ``log (1/K) sum_k w_k`` per sample from ``(K, N)`` log-weights.

    With ``K = 1`` it is the Monte Carlo ELBO ``log w_1``.
    """
    return log_mean_exp(log_w, dim=0)


def dreg_surrogate(
    log_w: torch.Tensor, samples: torch.Tensor | Sequence[torch.Tensor] | None = None
) -> torch.Tensor:
    """Per-sample surrogate whose gradient is the doubly reparameterized (DReG) IWAE gradient.

    Tucker et al. 2018 (arXiv:1810.04152). The log-weights must be computed with the posterior's
    parameters detached inside ``log q`` (the samples themselves keep their reparameterized
    gradient). The surrogate is ``sum_k stopgrad(w~_k) log w_k`` with normalized weights ``w~``
    over the first dimension; a hook on each sampled tensor scales the gradient flowing through
    it by ``w~_k`` once more, giving the ``w~_k^2`` weighting of DReG for the encoders while the
    decoders keep the IWAE weighting ``w~_k``.

    Its value is not the bound; report :func:`iwae_bound` for that.

    Args:
        log_w: ``(K, ...)`` log-weights, normalized over ``K``.
        samples: The reparameterized samples the log-weights came from, each of shape
            ``(*log_w.shape, D)`` (e.g. a shared latent and private latents), or ``None`` when
            no gradient should be reweighted. Tensors that do not require a gradient are
            skipped.
    """
    normalized = torch.softmax(log_w, dim=0).detach()
    tensors = [samples] if isinstance(samples, torch.Tensor) else list(samples or [])
    for tensor in tensors:
        if tensor.shape[:-1] != log_w.shape:
            raise ValueError(
                f"dreg_surrogate: expected samples of shape {(*log_w.shape, '*')}, found "
                f"{tuple(tensor.shape)}"
            )
        if tensor.requires_grad:
            tensor.register_hook(lambda grad: normalized.unsqueeze(-1) * grad)  # type: ignore[no-untyped-call]
    return (normalized * log_w).sum(0)


def average_over_experts(per_expert: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The average over each sample's observed experts of ``(M, N)`` values: ``(N,)``.

    An absent expert passes no value and no gradient (``torch.where``, not a product); a sample
    with no observed expert gets 0.
    """
    weights = stratified_mixture_weights(mask).to(per_expert.dtype)
    zero = torch.zeros((), dtype=per_expert.dtype, device=per_expert.device)
    return torch.where(mask, weights * per_expert, zero).sum(0)


def mixture_of_experts_bound(
    log_w: torch.Tensor,
    mask: torch.Tensor,
    kind: str,
    samples: Sequence[torch.Tensor] = (),
) -> tuple[torch.Tensor, torch.Tensor]:
    """The looser mixture-of-experts bound of MMVAE and MMVAE+, per sample.

    ``(1/|O|) sum_{m in O} B_m`` with ``B_m`` expert ``m``'s bound over its ``K`` draws:
    ``elbo`` (``mean_k log w_mk``), ``iwae`` (``log mean_k w_mk``) or ``dreg`` (the IWAE value,
    with the gradient of :func:`dreg_surrogate` through ``samples``; ``log_w`` must then have
    the posteriors' parameters detached inside ``log q``).

    Args:
        log_w: ``(K, M, N)`` log-weights of expert ``m``'s draws.
        mask: ``(M, N)`` observed experts.
        kind: ``elbo``, ``iwae`` or ``dreg``.
        samples: For ``dreg``, the reparameterized draws ``(K, M, N, D)`` behind ``log_w``.

    Returns:
        ``(objective, bound)``, each ``(N,)``: what to maximize (its gradient) and its value.
    """
    if kind == "elbo":
        bound = average_over_experts(log_w.mean(0), mask)
        return bound, bound
    if kind not in ("iwae", "dreg"):
        raise ValueError(f"mixture_of_experts_bound: unknown kind {kind!r}")
    bound = average_over_experts(iwae_bound(log_w), mask)
    if kind == "iwae":
        return bound, bound
    surrogate = average_over_experts(dreg_surrogate(log_w, samples), mask)
    # The value of the bound, the gradient of the DReG surrogate.
    return surrogate + (bound - surrogate).detach(), bound
