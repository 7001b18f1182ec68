"""Priors over latents as objects: each one samples, scores and, where one exists, gives its KL.

A model declares the prior of its shared latent (:attr:`MultimodalVAE.shared_prior`) and of each
private latent (:meth:`MultimodalVAE.private_prior`); the base class samples from them
(:meth:`~MultimodalVAE.sample`, generation), scores with them (importance weights) and, in the
models' objectives, takes their closed-form KL to a posterior where one exists.

* :class:`StandardNormalPrior`: ``N(0, I)``; closed-form KL to a Gaussian posterior.
* :class:`SoftmaxScalePrior`: a centred Laplace (:class:`LaplacePrior`) or normal with scales
  ``softmax(a) * D``, learned or fixed at 1 (MMVAE's and MMVAE+'s parameterization);
  closed-form KL to a posterior of its family. :class:`SoftmaxScaleSlice` is a block of its
  dimensions (MMVAE+'s ``p(z)`` and ``p(w_m)``: one softmax over ``[z, w]``).
* :class:`MixturePrior`: ``sum_c pi_c N(mu_c, diag(sigma_c^2))`` with learned means, weights
  and (optionally) scales; no closed-form KL, a log-density by logsumexp.
* :class:`ClusterPrior`: ``sum_c pi_c F(mu_c, 1)``, ``F`` Laplace or normal, over the active
  clusters only (CMVAE's clusters, prunable by a saved mask); a log-density by logsumexp.

Every prior is an ``nn.Module`` (its learned parameters are the model's, saved with it) and
makes its draws in float32 on its parameters' device, or on the ``device`` its caller gives
(a prior without parameters holds no buffer either: DistributedDataParallel would broadcast it
inside every forward, which a compiled forward cannot trace).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import distributions, nn

from multivae.nn.fusion import laplace_log_density, normal_log_density
from multivae.nn.posteriors import (
    GaussianPosterior,
    LaplacePosterior,
    LatentFamily,
    Posterior,
    family_log_density,
    family_rsample,
)
from multivae.objectives.kl import kl_normal, kl_standard_normal


class Prior(nn.Module):
    """A distribution over ``D``-dimensional latents.

    Args:
        dim: ``D``.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        if dim < 1:
            raise ValueError(f"a prior needs a dimension >= 1, found {dim}")
        self.dim = dim

    def device(self, device: torch.device | str | None = None) -> torch.device:
        """Where draws are made: ``device`` when given, else the parameters', else the CPU."""
        if device is not None:
            return torch.device(device)
        parameter = next(self.parameters(), None)
        return parameter.device if parameter is not None else torch.device("cpu")

    def sample(
        self, shape: Sequence[int], device: torch.device | str | None = None
    ) -> torch.Tensor:
        """Draws of shape ``(*shape, D)``, reparameterized where the family allows."""
        raise NotImplementedError

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """``log p(z)`` of shape ``z.shape[:-1]``."""
        raise NotImplementedError

    def mean(self, shape: Sequence[int], device: torch.device | str | None = None) -> torch.Tensor:
        """The prior's mean, ``(*shape, D)``."""
        return torch.zeros((*shape, self.dim), device=self.device(device))

    def kl(self, posterior: Posterior) -> torch.Tensor:
        """``KL(posterior || prior)`` in closed form, shape ``(N,)``.

        Raises:
            NotImplementedError: Where no closed form exists for this pair (the objective then
                estimates it by sampling: ``log q(z) - log p(z)``).
        """
        raise NotImplementedError(
            f"{type(self).__name__} has no closed-form KL to a {type(posterior).__name__}"
        )


class StandardNormalPrior(Prior):
    """``N(0, I)``."""

    def sample(
        self, shape: Sequence[int], device: torch.device | str | None = None
    ) -> torch.Tensor:
        """Draws ``(*shape, D)``."""
        return torch.randn((*shape, self.dim), device=self.device(device))

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """``log N(z; 0, I)``."""
        zero = torch.zeros((), dtype=z.dtype, device=z.device)
        return normal_log_density(z, zero, zero)

    def kl(self, posterior: Posterior) -> torch.Tensor:
        """``KL(N(mean, var) || N(0, I))`` for a Gaussian posterior."""
        if isinstance(posterior, GaussianPosterior):
            return kl_standard_normal(posterior.mean, posterior.logvar)
        return super().kl(posterior)


def renamed_state_key(old: str, new: str):  # type: ignore[no-untyped-def]
    """A load-state-dict pre-hook that renames ``old`` to ``new`` (folders saved earlier).

    Register it with ``module.register_load_state_dict_pre_hook(renamed_state_key(...))``;
    both keys are relative to the module.
    """

    def hook(module: nn.Module, state: dict[str, torch.Tensor], prefix: str, *args: object) -> None:
        if f"{prefix}{old}" in state:
            state[f"{prefix}{new}"] = state.pop(f"{prefix}{old}")

    return hook


def _learned_or_fixed(module: nn.Module, name: str, value: torch.Tensor, learn: bool) -> None:
    """Register ``value`` as a parameter when learned, else as a (saved) buffer.

    A frozen parameter would take no gradient, which the training contract reads as a broken
    graph.
    """
    if learn:
        module.register_parameter(name, nn.Parameter(value))
    else:
        module.register_buffer(name, value)


class SoftmaxScalePrior(Prior):
    """A centred Laplace or normal with scales ``softmax(a) * D``: positive, summing to ``D``.

    Args:
        dim: ``D``.
        family: ``laplace`` or ``normal``.
        learn_scale: Learn the logits ``a`` (initialized at 0: unit scales); otherwise the
            scales stay 1.
    """

    scale_logits: torch.Tensor

    def __init__(self, dim: int, family: str = "laplace", learn_scale: bool = False) -> None:
        super().__init__(dim)
        if family not in ("laplace", "normal"):
            raise ValueError(f"expected family 'laplace' or 'normal', found {family!r}")
        self.family = family
        _learned_or_fixed(self, "scale_logits", torch.zeros(dim), learn_scale)

    def scale(self) -> torch.Tensor:
        """The scales, ``(D,)``."""
        return torch.softmax(self.scale_logits.float(), dim=-1) * self.dim

    def sample(
        self, shape: Sequence[int], device: torch.device | str | None = None
    ) -> torch.Tensor:
        """Reparameterized draws ``(*shape, D)`` (``torch.distributions``' own)."""
        scale = self.scale()
        family = distributions.Laplace if self.family == "laplace" else distributions.Normal
        return family(torch.zeros_like(scale), scale, validate_args=False).rsample(tuple(shape))

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """``log p(z)`` of the centred family with these scales."""
        scale = self.scale().to(z.dtype)
        zero = torch.zeros((), dtype=z.dtype, device=z.device)
        if self.family == "laplace":
            return laplace_log_density(z, zero, scale)
        return normal_log_density(z, zero, 2.0 * torch.log(scale))

    def slice(self, start: int, stop: int) -> SoftmaxScaleSlice:
        """The prior of dimensions ``[start, stop)`` (independent dimensions: exact)."""
        return SoftmaxScaleSlice(self, start, stop)

    def kl(self, posterior: Posterior) -> torch.Tensor:
        """``KL(posterior || prior)`` for a posterior of the prior's family.

        Laplace, per dimension: ``log(c / b) + |m| / c + (b / c) exp(-|m| / b) - 1``; normal:
        the Gaussian KL to ``N(0, c^2)``; summed over the dimensions.
        """
        if self.family == "laplace" and isinstance(posterior, LaplacePosterior):
            c = self.scale().to(posterior.loc.dtype)
            m, b = posterior.loc, posterior.scale
            return (torch.log(c / b) + m.abs() / c + (b / c) * torch.exp(-m.abs() / b) - 1).sum(-1)
        if self.family == "normal" and isinstance(posterior, GaussianPosterior):
            logvar_p = 2.0 * torch.log(self.scale().to(posterior.mean.dtype))
            return kl_normal(posterior.mean, posterior.logvar, torch.zeros_like(logvar_p), logvar_p)
        return super().kl(posterior)


class SoftmaxScaleSlice(SoftmaxScalePrior):
    """Dimensions ``[start, stop)`` of a :class:`SoftmaxScalePrior` over a joint latent.

    MMVAE+'s prior is one softmax over ``[z, w]``: the scales of ``p(z)`` and ``p(w_m)`` are
    slices of ``softmax(a) * (D + Dw)``, so they share the logits ``a``. A slice holds no
    tensor of its own (the joint prior is the model's module, registered once, so its logits
    are saved and moved with the model once); it samples, scores and gives its KL with the
    slice of the joint's scales.

    Args:
        joint: The prior over the joint latent.
        start: The first dimension of the slice.
        stop: One past its last dimension.
    """

    def __init__(self, joint: SoftmaxScalePrior, start: int, stop: int) -> None:
        if not 0 <= start < stop <= joint.dim:
            raise ValueError(
                f"expected 0 <= start < stop <= {joint.dim}, found start {start}, stop {stop}"
            )
        Prior.__init__(self, stop - start)
        self.family = joint.family
        # In a tuple, not an attribute: a module attribute would register the joint prior
        # (and its logits) a second time under this slice.
        self._joint = (joint,)
        self.start, self.stop = start, stop

    @property
    def joint(self) -> SoftmaxScalePrior:
        """The prior over the joint latent whose scales this slice takes."""
        return self._joint[0]

    def scale(self) -> torch.Tensor:
        """The slice of the joint's scales, ``(stop - start,)``."""
        return self.joint.scale()[self.start : self.stop]

    def slice(self, start: int, stop: int) -> SoftmaxScaleSlice:
        """A slice of the joint prior, in the joint's dimensions."""
        return self.joint.slice(start, stop)


class LaplacePrior(SoftmaxScalePrior):
    """``Laplace(0, softmax(a) * D)`` (see :class:`SoftmaxScalePrior`)."""

    def __init__(self, dim: int, learn_scale: bool = False) -> None:
        super().__init__(dim, "laplace", learn_scale)


class MixturePrior(Prior):
    """``sum_c pi_c N(mu_c, diag(sigma_c^2))``: learned means, weights and scales.

    Args:
        dim: ``D``.
        components: ``C``.
        learn_scale: Learn each component's log-variance (initialized at 0); otherwise unit
            variances.
        spread: Standard deviation of the means' initialization (reproducible given the torch
            seed at construction).
    """

    logvars: torch.Tensor

    def __init__(
        self, dim: int, components: int, learn_scale: bool = False, spread: float = 1.0
    ) -> None:
        super().__init__(dim)
        if components < 1:
            raise ValueError(f"a mixture prior needs >= 1 components, found {components}")
        self.components = components
        self.means = nn.Parameter(spread * torch.randn(components, dim))
        self.weight_logits = nn.Parameter(torch.zeros(components))
        _learned_or_fixed(self, "logvars", torch.zeros(components, dim), learn_scale)

    def log_weights(self) -> torch.Tensor:
        """``log pi``, ``(C,)``."""
        return torch.log_softmax(self.weight_logits.float(), dim=-1)

    def component_log_probs(self, z: torch.Tensor) -> torch.Tensor:
        """``log pi_c + log N(z; mu_c, sigma_c^2)`` for every component: ``(..., C)``."""
        densities = normal_log_density(
            z.unsqueeze(-2), self.means.to(z.dtype), self.logvars.to(z.dtype)
        )
        return densities + self.log_weights().to(z.dtype)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """``log sum_c pi_c N(z; mu_c, sigma_c^2)`` (a logsumexp)."""
        return torch.logsumexp(self.component_log_probs(z), dim=-1)

    def sample(
        self, shape: Sequence[int], device: torch.device | str | None = None
    ) -> torch.Tensor:
        """Draws ``(*shape, D)``: a component by its weight, then a draw from it."""
        count = math.prod(shape)
        component = torch.multinomial(self.log_weights().exp(), count, replacement=True)
        noise = torch.randn((count, self.dim), device=self.means.device)
        draws = self.means[component] + torch.exp(0.5 * self.logvars[component]) * noise
        return draws.reshape(*shape, self.dim)

    def mean(self, shape: Sequence[int], device: torch.device | str | None = None) -> torch.Tensor:
        """``sum_c pi_c mu_c``, expanded to ``(*shape, D)``."""
        mean = (self.log_weights().exp().unsqueeze(-1) * self.means).sum(0)
        return mean.expand(*shape, self.dim)


class ClusterPrior(Prior):
    """``sum_c pi_c F(z; mu_c, 1)`` over the active clusters, ``pi = softmax(rho)`` among them.

    ``F`` is a Laplace or normal family with unit scales; the means ``mu_c`` (initialized
    ``U(-1, 1)`` from torch's generator) and the logits ``rho`` (initialized at 0) are learned.
    Pruned clusters are masked out (:attr:`active`, a saved buffer): they get ``pi_c = 0``
    exactly, ``log pi`` renormalizes over the active ones, and the parameters stay the same
    objects (an optimizer keeps its references).

    Args:
        dim: ``D``.
        clusters: ``C``.
        family: ``laplace`` or ``normal``.
    """

    active: torch.Tensor

    def __init__(self, dim: int, clusters: int, family: LatentFamily = "laplace") -> None:
        super().__init__(dim)
        if clusters < 1:
            raise ValueError(f"a cluster prior needs >= 1 clusters, found {clusters}")
        if family not in ("laplace", "normal"):
            raise ValueError(f"expected family 'laplace' or 'normal', found {family!r}")
        self.clusters = clusters
        self.family: LatentFamily = family
        self.means = nn.Parameter(2.0 * torch.rand(clusters, dim) - 1.0)
        self.weight_logits = nn.Parameter(torch.zeros(clusters))
        self.register_buffer("active", torch.ones(clusters, dtype=torch.bool))

    def log_weights(self) -> torch.Tensor:
        """``log pi``, ``(C,)``: ``-inf`` for pruned clusters, normalized over the active ones."""
        minus_inf = torch.tensor(-math.inf, device=self.weight_logits.device)
        return torch.log_softmax(
            torch.where(self.active, self.weight_logits.float(), minus_inf), dim=-1
        )

    def component_log_probs(self, z: torch.Tensor) -> torch.Tensor:
        """``log pi_c + log F(z; mu_c, 1)`` for every cluster, ``(..., C)``; ``-inf`` if pruned.

        Only ever reduced by a logsumexp or a softmax, which give pruned clusters weight 0
        (no ``0 * inf``: the gradient of the masked entries is 0).
        """
        means = self.means.to(z.dtype)
        densities = family_log_density(self.family, z.unsqueeze(-2), means, torch.ones_like(means))
        return densities + self.log_weights().to(z.dtype)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """``log sum_c pi_c F(z; mu_c, 1)`` (a logsumexp over the active clusters)."""
        return torch.logsumexp(self.component_log_probs(z), dim=-1)

    def cluster_log_posterior(self, z: torch.Tensor) -> torch.Tensor:
        """``log p(c | z)``, ``(..., C)``: ``-inf`` for pruned clusters."""
        return torch.log_softmax(self.component_log_probs(z), dim=-1)

    def sample(
        self, shape: Sequence[int], device: torch.device | str | None = None
    ) -> torch.Tensor:
        """Draws ``(*shape, D)``: a cluster by its weight, then a reparameterized ``z | c``."""
        count = math.prod(shape)
        cluster = torch.multinomial(self.log_weights().exp(), count, replacement=True)
        means = self.means[cluster]
        draws = family_rsample(self.family, means, torch.ones_like(means), 1)[0]
        return draws.reshape(*shape, self.dim).to(self.device(device))

    def mean(self, shape: Sequence[int], device: torch.device | str | None = None) -> torch.Tensor:
        """``sum_c pi_c mu_c``, expanded to ``(*shape, D)``."""
        mean = (self.log_weights().exp().unsqueeze(-1) * self.means).sum(0)
        return mean.expand(*shape, self.dim).to(self.device(device))
