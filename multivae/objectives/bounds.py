"""Evidence lower bounds from per-sample log-likelihoods and log-densities.

Notation: ``log_w[k, n] = log p(x_n, z_k) - log q(z_k | x_n)`` for ``K`` samples ``z_k``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


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
