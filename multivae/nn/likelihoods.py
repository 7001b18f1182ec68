"""Per-modality likelihoods: per-sample log-likelihoods with presence masks applied.

Each :class:`ModalityLikelihood` turns decoder outputs into ``log p(x | z)`` summed over the
modality's dimensions, one value per sample, times the modality's rescaling weight, and exactly
zero where the modality is absent (``torch.where``, so an absent cell contributes neither value
nor gradient).

* ``normal``: decoder output is the mean; scale fixed or learned (one scalar per modality).
* ``laplace``: decoder output is the location; scale fixed or learned.
* ``bernoulli``: decoder output is logits; targets in [0, 1] (continuous targets allowed, as is
  usual for greyscale images).
* ``categorical``: decoder output is ``(N, K)`` logits; targets are class indices.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from multivae.config import ConfigError

LIKELIHOODS = ("normal", "laplace", "bernoulli", "categorical")
_HALF_LOG_TWO_PI = 0.5 * math.log(2 * math.pi)


class ModalityLikelihood(nn.Module):
    """The observation model of one modality.

    Args:
        kind: One of ``normal``, ``laplace``, ``bernoulli``, ``categorical``.
        scale: Initial (or fixed) standard deviation (normal) or scale (laplace).
        learn_scale: Learn the scale (normal, laplace) as one log-parameter.
        weight: Factor applied to the log-likelihood (rescaling of modalities of very
            different sizes).
    """

    def __init__(
        self, kind: str, scale: float = 1.0, learn_scale: bool = False, weight: float = 1.0
    ) -> None:
        super().__init__()
        if kind not in LIKELIHOODS:
            raise ConfigError(f"unknown likelihood {kind!r}; expected one of {list(LIKELIHOODS)}")
        if scale <= 0:
            raise ConfigError(f"likelihood scale must be > 0, found {scale}")
        if learn_scale and kind not in ("normal", "laplace"):
            raise ConfigError(f"a {kind} likelihood has no scale to learn")
        self.kind = kind
        self.weight = weight
        log_scale = torch.tensor(math.log(scale))
        if learn_scale:
            self.log_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_scale", log_scale)

    def log_prob(
        self,
        params: torch.Tensor,
        target: torch.Tensor,
        *,
        weighted: bool = True,
        detach_params: bool = False,
    ) -> torch.Tensor:
        """``log p(target | params)`` summed over the modality's dimensions: shape ``(N,)``.

        ``params`` may have extra leading sample dimensions ``(..., N, ...)`` matching
        ``target`` broadcast from the left. Computed in float32 (or float64 when ``params``
        are), whatever autocast made the decoder compute in. ``weighted`` multiplies by the
        modality's training ``weight``; the likelihood estimates use ``weighted=False``.
        ``detach_params`` gives a learned scale no gradient from the result (``params`` still
        get theirs).
        """
        log_scale = self.log_scale.detach() if detach_params else self.log_scale
        if params.dtype in (torch.float16, torch.bfloat16):
            params = params.float()
        factor = self.weight if weighted else 1.0
        batch_dims = params.dim() - (target.dim() - 1)
        if self.kind == "categorical":
            batch_dims = params.dim() - 1
            log_p = -F.cross_entropy(
                params.reshape(-1, params.shape[-1]),
                target.long().expand(params.shape[:-1]).reshape(-1),
                reduction="none",
            ).reshape(params.shape[:-1])
            return factor * log_p
        target = target.to(params.dtype)
        if self.kind == "bernoulli":
            elementwise = -F.binary_cross_entropy_with_logits(
                params, target.expand_as(params), reduction="none"
            )
        elif self.kind == "normal":
            log_scale = log_scale.to(params.dtype)
            elementwise = (
                -0.5 * ((target - params) / log_scale.exp()) ** 2 - log_scale - _HALF_LOG_TWO_PI
            )
        else:
            log_scale = log_scale.to(params.dtype)
            elementwise = -(target - params).abs() / log_scale.exp() - log_scale - math.log(2.0)
        summed = elementwise.reshape(*elementwise.shape[:batch_dims], -1).sum(-1)
        return factor * summed

    def masked_log_prob(
        self, params: torch.Tensor, target: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """:meth:`log_prob` with exact zeros (value and gradient) where ``mask`` is false."""
        log_p = self.log_prob(params, target)
        return torch.where(mask, log_p, torch.zeros((), dtype=log_p.dtype, device=log_p.device))

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        """The expected observation, shaped like the data.

        Means for normal and laplace, probabilities for bernoulli, the most probable class for
        categorical (class indices, like the stored data).
        """
        if self.kind == "bernoulli":
            return torch.sigmoid(params)
        if self.kind == "categorical":
            return params.argmax(-1)
        return params

    def sample(self, params: torch.Tensor) -> torch.Tensor:
        """A draw from the likelihood."""
        if self.kind == "bernoulli":
            return torch.bernoulli(torch.sigmoid(params))
        if self.kind == "categorical":
            probabilities = torch.softmax(params, dim=-1)
            flat = torch.multinomial(probabilities.reshape(-1, params.shape[-1]), 1)
            return flat.reshape(params.shape[:-1])
        scale = self.log_scale.exp().to(params.dtype)
        if self.kind == "normal":
            return params + scale * torch.randn_like(params)
        # Inverse CDF of the Laplace distribution.
        uniform = torch.rand_like(params) - 0.5
        return params - scale * uniform.sign() * torch.log1p(-2 * uniform.abs())
