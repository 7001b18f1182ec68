"""Latent distributions over ``(N, D)`` latents: Gaussian, Laplace and uniform mixtures of them.

Every model's posterior (shared or private) is one of these, or anything with the same three
members (:class:`Posterior`). ``rsample`` returns ``(n_samples, N, D)`` reparameterized draws and
``log_prob`` the log-density summed over the last dimension. A posterior that can be sampled but
has no closed-form density (an HMC chain, a compound posterior) raises ``NotImplementedError``
from ``log_prob``; its model then provides importance weights through
:meth:`~multivae.models.base.MultimodalVAE.importance_log_weights`.
"""

from __future__ import annotations

import math
from typing import Literal, Protocol

import torch
from torch import distributions

from multivae.nn.fusion import (
    laplace_log_density,
    mixture_log_density,
    normal_log_density,
    stratified_mixture_weights,
)

LatentFamily = Literal["laplace", "normal"]


class Posterior(Protocol):
    """A distribution over ``(N, D)`` latents."""

    @property
    def mean(self) -> torch.Tensor:
        """The distribution's mean, ``(N, D)`` (what deterministic embeddings use)."""
        ...

    def rsample(self, n_samples: int) -> torch.Tensor:
        """Reparameterized samples of shape ``(n_samples, N, D)``."""
        ...

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """``log q(z)`` of shape ``z.shape[:-1]`` (``NotImplementedError`` if not tractable)."""
        ...


class GaussianPosterior:
    """A diagonal Gaussian ``N(mean, exp(logvar))`` over ``(N, D)`` latents."""

    def __init__(self, mean: torch.Tensor, logvar: torch.Tensor) -> None:
        self.mean = mean
        self.logvar = logvar

    def rsample(self, n_samples: int) -> torch.Tensor:
        """Reparameterized samples of shape ``(n_samples, N, D)``."""
        noise = torch.randn(
            (n_samples, *self.mean.shape), dtype=self.mean.dtype, device=self.mean.device
        )
        return self.mean + torch.exp(0.5 * self.logvar) * noise

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """``log q(z)`` of shape ``z.shape[:-1]``."""
        return normal_log_density(z, self.mean, self.logvar)


class LaplacePosterior:
    """A factorized Laplace ``Laplace(loc, scale)`` over ``(N, D)`` latents."""

    def __init__(self, loc: torch.Tensor, scale: torch.Tensor) -> None:
        self.loc = loc
        self.scale = scale

    @property
    def mean(self) -> torch.Tensor:
        """The location, ``(N, D)``."""
        return self.loc

    def rsample(self, n_samples: int) -> torch.Tensor:
        """Reparameterized samples of shape ``(n_samples, N, D)``."""
        return family_rsample("laplace", self.loc, self.scale, n_samples)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """``log q(z)`` of shape ``z.shape[:-1]``."""
        return laplace_log_density(z, self.loc, self.scale)


def family_rsample(
    family: LatentFamily, loc: torch.Tensor, scale: torch.Tensor, n_samples: int
) -> torch.Tensor:
    """``(n_samples, *loc.shape)`` reparameterized draws of a Laplace or normal family."""
    if family == "laplace":
        return distributions.Laplace(loc, scale, validate_args=False).rsample((n_samples,))
    return distributions.Normal(loc, scale, validate_args=False).rsample((n_samples,))


def family_log_density(
    family: LatentFamily, z: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor
) -> torch.Tensor:
    """Log-density of a Laplace or normal family with location and scale, summed over ``D``."""
    if family == "laplace":
        return laplace_log_density(z, loc, scale)
    return normal_log_density(z, loc, 2.0 * torch.log(scale))


def component_log_densities(
    z: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor, family: LatentFamily
) -> torch.Tensor:
    """Log-density of latents under each of several components.

    Args:
        z: ``(..., N, D)`` latents.
        loc: ``(C, N, D)`` component locations.
        scale: ``(C, N, D)`` component scales.
        family: ``laplace`` or ``normal``.

    Returns:
        ``(C, ..., N)``: the log-density of every latent under every component of its sample.
    """
    shape = (loc.shape[0],) + (1,) * (z.dim() - 2) + tuple(loc.shape[1:])
    return family_log_density(family, z, loc.reshape(shape), scale.reshape(shape))


class MixturePosterior:
    """A uniform mixture of each sample's present components, Laplace or normal.

    Args:
        loc: ``(C, N, D)`` component locations.
        scale: ``(C, N, D)`` component scales.
        mask: ``(C, N)`` which components make up each sample's mixture; every sample needs at
            least one.
        family: ``laplace`` or ``normal``.
    """

    def __init__(
        self, loc: torch.Tensor, scale: torch.Tensor, mask: torch.Tensor, family: LatentFamily
    ) -> None:
        self.loc = loc
        self.scale = scale
        self.mask = mask
        self.family = family

    @property
    def mean(self) -> torch.Tensor:
        """The mixture's mean, ``(N, D)``: the average of its components' locations."""
        weights = stratified_mixture_weights(self.mask).to(self.loc.dtype).unsqueeze(-1)
        zero = torch.zeros((), dtype=self.loc.dtype)
        return torch.where(self.mask.unsqueeze(-1), weights * self.loc, zero).sum(0)

    def rsample(self, n_samples: int) -> torch.Tensor:
        """Samples ``(n_samples, N, D)``: a present component at random, then a draw from it.

        The draw is reparameterized given the chosen component.
        """
        probabilities = self.mask.to(self.loc.dtype).T
        component = torch.multinomial(probabilities, n_samples, replacement=True).T
        sample_index = torch.arange(self.loc.shape[1], device=self.loc.device)
        loc = self.loc[component, sample_index]
        scale = self.scale[component, sample_index]
        return family_rsample(self.family, loc, scale, 1)[0]

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """``log q(z)`` of shape ``z.shape[:-1]``, for latents ``(..., N, D)``."""
        densities = component_log_densities(z, self.loc, self.scale, self.family)
        return mixture_log_density(densities, self.mask)


def softmax_scale(logits: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """``softmax(logits) * D + eps`` over the last dimension: positive scales summing to ``D``.

    MMVAE's and MMVAE+'s parameterization of Laplace scales (the reference's ``eps`` is 1e-6).
    """
    return torch.softmax(logits, dim=-1) * logits.shape[-1] + eps


def standard_log_density(family: LatentFamily, z: torch.Tensor) -> torch.Tensor:
    """Log-density of ``z`` under the unit-scale Laplace or normal at 0, summed over ``D``."""
    if family == "laplace":
        return (-z.abs() - math.log(2.0)).sum(-1)
    return (-0.5 * (z**2 + math.log(2 * math.pi))).sum(-1)
