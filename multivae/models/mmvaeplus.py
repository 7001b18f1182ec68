"""MMVAE+: a mixture-of-experts multimodal VAE with modality-specific latents.

Palumbo, Daunhawer and Vogt, "MMVAE+: Enhancing the Generative Quality of Multimodal VAEs
without Compromises", ICLR 2023 (OpenReview sdQGxouELX; authors' code: epalu/mmvaeplus).

Every modality ``m`` has a private latent ``w_m`` (dimension ``private_dim``, the same for all)
besides the shared ``z``; encoder ``m`` outputs the locations ``[mu_z | mu_w]`` then the scale
logits ``[h_z | h_w]``, and decoder ``n`` takes ``[z, w_n]``. The shared posterior is the uniform
mixture of the unimodal experts ``q(z|x_m)``. The prior is ``p(z) p(w_m) = Laplace(0,
softmax(a) * (D + Dw))``, the softmax running over the concatenated ``z`` and ``w`` dimensions
(``a = 0``, unit scales, unless ``learn_shared_prior``), and each modality has an auxiliary
distribution ``r_n(w_n) = Laplace(0, softmax(b_n) * Dw)`` with learned ``b_n``. Training
maximizes the looser importance-weighted bound, averaged over experts outside the log::

    (1/M) sum_m log (1/K) sum_k exp(log W_mk),    z_k, w_mk ~ q(z, w_m | x_m),
    log W_mk = log p(x_m | z_k, w_mk) + sum_{n != m} log p(x_n | z_k, w~_nk)
               + beta * [log p(z_k) + log p(w_mk) - log MoE(z_k | X) - log q(w_mk | x_m)],

with ``w~_nk ~ r_n`` reparameterized: cross-reconstructions must get by with a private latent
that says nothing about ``x_n``, which pushes the shared information into ``z``. By default the
gradient is the doubly reparameterized one (DReG, Tucker et al. 2018, arXiv:1810.04152) on
``z`` and ``w`` (``r_n`` is not a proposal, so ``w~`` keeps its plain gradient). Posterior
scales are ``softmax(h) * D + 1e-6`` (and ``softmax(h_w) * Dw + 1e-6``) for the Laplace family,
``exp(h / 2)`` for the normal one.

Missing modalities: a sample observed on ``O`` gets exactly the MMVAE+ bound of ``X_O``: the
mixture holds the observed experts only, the average runs over observed ``m`` with divisor
``|O|``, and only observed ``n`` are reconstructed (absent private latents integrate out). The
absent terms are removed with ``torch.where``, so absent encoders get exactly zero gradient.

Generation from a subset ``S``: ``z`` from the mixture of the observed experts of ``S`` (one
expert drawn per sample; the prior where there is none), ``w_n`` from ``q(w_n|x_n)`` where
``x_n`` is an observed member of ``S``, else from ``p(w_n)`` as the authors' test-time
cross-generation does (``private_generation="auxiliary"``: from ``r_n``, the reference's
``single_prior``). The joint likelihood is estimated with the proposal ``MoE_O(z) prod_{n in O}
q(w_n|x_n)``, drawn stratified across the observed experts (see
:meth:`MMVAEPlus.importance_log_weights`).

Deliberate differences from the reference code (MultiVae's ``mmvaePlus_model.py``):

* The loss is a per-sample mean (the reference sums over the batch).
* The joint NLL weighs ``p(w_n) / q(w_n | x_n)`` for every observed modality; the reference's
  ``compute_joint_nll`` draws the cross terms' private latents from ``r_n`` without a weight
  correction, which does not estimate ``p(X)``, and loops over samples.
* The shared latent of a subset's posterior comes from one observed expert drawn per sample;
  the reference picks one random modality for the whole batch with NumPy, and its
  ``return_mean`` averages the expert means (the mixture's mean, which is what ``use_mean``
  decodes here too).
* Modalities absent from the whole batch keep their keys and their encoders run on zeros; the
  reference drops them from the caller's batch in place.
* ``bound="elbo"`` is the ``K``-sample Monte Carlo beta-ELBO of the same log-weights (``K = 1``
  makes all three bounds equal).
* Scale logits are the base's clamped encoder outputs (``LOGVAR_BOUNDS``) before the softmax,
  as for every model here. The priors' scales (``softmax(a) * (D + Dw)``, ``softmax(b_n) * Dw``)
  carry no ``1e-6`` and keep the softmax parameterization with the normal family too (the
  reference's ``normal`` uses ``exp(a / 2)``). The private prior of generation is the ``w`` part
  of the joint prior's softmax; the reference's ``joint_prior`` option renormalizes that slice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from multivae.config import ConfigError
from multivae.data.batch import Batch
from multivae.models.base import Capabilities, ModelConfig, MultimodalVAE, Objective
from multivae.nn.fusion import mixture_log_density
from multivae.nn.posteriors import (
    GaussianPosterior,
    LaplacePosterior,
    LatentFamily,
    MixturePosterior,
    Posterior,
    component_log_densities,
    family_log_density,
    family_rsample,
    softmax_scale,
)
from multivae.nn.priors import SoftmaxScalePrior, renamed_state_key
from multivae.objectives import average_over_experts, mixture_of_experts_bound
from multivae.registry import register_model

Bound = Literal["dreg", "iwae", "elbo"]
PrivateGeneration = Literal["prior", "auxiliary"]

POSTERIOR_SCALE_EPS = 1e-6
"""Added to the softmax scales of Laplace posteriors (the reference's value) so none is 0."""


@dataclass
class MMVAEPlusConfig(ModelConfig):
    """Configuration of :class:`MMVAEPlus`.

    Attributes:
        private_dim: ``Dw``, the dimension of every modality's private latent (>= 1).
        samples_per_expert: ``K``, latent samples drawn from every observed expert per step (the
            reference's default 10; the paper's PolyMNIST runs use 1 or 10).
        beta: Weight of the log-density ratio inside each importance weight. 1 as MultiVae;
            the paper's PolyMNIST recipe uses 2.5.
        bound: ``dreg`` (the looser IWAE bound with DReG gradients, as the reference trains),
            ``iwae`` (the same bound, plain gradient) or ``elbo`` (the ``K``-sample beta-ELBO).
        latent_distribution: ``laplace`` (softmax scales, the paper's choice), ``normal``
            (posterior scales ``exp(h/2)``) or ``normal_with_softplus`` (posterior scales
            ``softplus(h) + 1e-6``), for the posteriors, the prior and the auxiliary
            distributions (the prior's and auxiliaries' scales are softmax ones in every case).
        learn_shared_prior: Learn the logits ``a`` of the prior's scales ``softmax(a)*(D+Dw)``.
        learn_modality_prior: Learn the logits ``b_n`` of the auxiliary scales
            ``softmax(b_n) * Dw`` (the reference's default; key to the method).
        private_generation: Where generation draws the private latent of a modality it does not
            condition on: ``prior`` (``p(w_n)``, as the authors' cross-generation) or
            ``auxiliary`` (``r_n``, the reference's ``single_prior``).
    """

    private_dim: int = 16
    samples_per_expert: int = 10
    beta: float = 1.0
    bound: Bound = "dreg"
    latent_distribution: Literal["laplace", "normal", "normal_with_softplus"] = "laplace"
    learn_shared_prior: bool = False
    learn_modality_prior: bool = True
    private_generation: PrivateGeneration = "prior"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.private_dim < 1:
            raise ConfigError(f"mmvaeplus: private_dim must be >= 1, found {self.private_dim}")
        if self.samples_per_expert < 1:
            raise ConfigError(
                f"mmvaeplus: samples_per_expert must be >= 1, found {self.samples_per_expert}"
            )
        if self.beta < 0:
            raise ConfigError(f"mmvaeplus: beta must be >= 0, found {self.beta}")


@register_model
class MMVAEPlus(MultimodalVAE):
    """MMVAE+ (Palumbo et al. 2023): mixture of experts with private latents and priors ``r_n``.

    Args:
        config: The model's config.
    """

    name: ClassVar[str] = "mmvaeplus"
    config_class: ClassVar[type[ModelConfig]] = MMVAEPlusConfig
    declared_capabilities: ClassVar[Capabilities] = Capabilities(
        private_latents=True, importance_sampled=True
    )
    variant_configs: ClassVar[dict[str, dict[str, Any]]] = {
        # With the default (Laplace, DReG), every bound with every latent family.
        "normal-dreg": {"latent_distribution": "normal", "samples_per_expert": 2, "private_dim": 2},
        "normal-elbo": {"latent_distribution": "normal", "bound": "elbo", "private_dim": 2},
        "softplus-dreg": {
            "latent_distribution": "normal_with_softplus",
            "samples_per_expert": 2,
            "private_dim": 2,
        },
        "laplace-iwae": {"bound": "iwae", "samples_per_expert": 2, "private_dim": 2},
        "normal-iwae": {
            "latent_distribution": "normal",
            "bound": "iwae",
            "samples_per_expert": 2,
            "private_dim": 2,
        },
        "auxiliary-generation": {
            "private_generation": "auxiliary",
            "learn_shared_prior": True,
            "bound": "elbo",
            "beta": 2.5,
            "samples_per_expert": 2,
            "private_dim": 3,
        },
    }
    config: MMVAEPlusConfig

    def __init__(self, config: MMVAEPlusConfig) -> None:
        super().__init__(config)
        shared, private = config.latent_dim, config.private_dim
        # One softmax over [z, w]: p(z) and every p(w_m) are slices of this joint prior.
        self.joint_prior = SoftmaxScalePrior(
            shared + private, self.family, config.learn_shared_prior
        )
        self.shared_prior = self.joint_prior.slice(0, shared)
        for name in self.modalities:
            self.private_priors[name] = self.joint_prior.slice(shared, shared + private)
        # Model folders saved before the priors were objects name the logits so.
        self.register_load_state_dict_pre_hook(  # type: ignore[no-untyped-call]
            renamed_state_key("prior_scale_logits", "joint_prior.scale_logits")
        )
        # Keyed by modality name, not stacked: saved configs may list the modalities in another
        # order. Fixed logits (``learn_modality_prior=False``) are zeros and need no storage.
        self.auxiliary_scale_logits = nn.ParameterDict(
            {name: nn.Parameter(torch.zeros(config.private_dim)) for name in self.modalities}
            if config.learn_modality_prior
            else {}
        )
        """``b_n``: logits of the auxiliary distributions' scales, ``(Dw,)`` per modality."""

    # ----------------------------------------------------------------------------------------
    # Priors, auxiliary distributions and experts

    def private_dim(self, modality: str) -> int:
        """Every modality has a private latent of ``private_dim``."""
        return self.config.private_dim

    def prior_scale(self) -> torch.Tensor:
        """The prior's scales over ``[z, w]``, ``(D + Dw,)``: ``softmax(a) * (D + Dw)``."""
        return self.joint_prior.scale()

    def auxiliary_scales(self) -> torch.Tensor:
        """The scales of every ``r_n``, ``(M, Dw)`` in modality order: ``softmax(b_n) * Dw``.

        Ones when not learned.
        """
        if not self.config.learn_modality_prior:
            return torch.ones(
                (len(self.modalities), self.config.private_dim), device=self._device()
            )
        return softmax_scale(torch.stack([self.auxiliary_scale_logits[m] for m in self.modalities]))

    def _centred_sample(self, scale: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
        """Reparameterized draws ``(*shape, P)`` of the centred family with scales ``(P,)``."""
        scale = scale.expand((*shape, scale.shape[-1]))
        return family_rsample(self.family, torch.zeros_like(scale), scale, 1)[0]

    @property
    def family(self) -> LatentFamily:
        """The latent family of every distribution: ``laplace`` or ``normal``."""
        return "laplace" if self.config.latent_distribution == "laplace" else "normal"

    def auxiliary_sample(self, modality: str, shape: Sequence[int]) -> torch.Tensor:
        """Reparameterized draws ``(*shape, Dw)`` from ``r_m``."""
        return self._centred_sample(self.auxiliary_scales()[self.modalities.index(modality)], shape)

    def expert_scales(self, logits: torch.Tensor) -> torch.Tensor:
        """Posterior scales ``[z | w]`` from an encoder's second output half ``[h_z | h_w]``."""
        if self.config.latent_distribution == "normal":
            return torch.exp(0.5 * logits)
        if self.config.latent_distribution == "normal_with_softplus":
            return F.softplus(logits) + POSTERIOR_SCALE_EPS
        shared = self.config.latent_dim
        return torch.cat(
            [
                softmax_scale(logits[..., :shared], POSTERIOR_SCALE_EPS),
                softmax_scale(logits[..., shared:], POSTERIOR_SCALE_EPS),
            ],
            dim=-1,
        )

    def expert_parameters(
        self, batch: Batch, cond: Sequence[str] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Location and scale of every expert's shared and private posterior.

        Only the encoders of ``cond`` modalities (all by default) run; the others are
        placeholders (location 0, scale about 1), for callers that mask them out. The scales of
        all experts come from one softmax over the stacked logits.

        Returns:
            ``(M, N, D)`` shared locations and scales, ``(M, N, Dw)`` private ones.
        """
        outputs = self.encoder_outputs(batch, cond)
        rows = batch.data[self.modalities[0]].shape[0]
        width = self.config.latent_dim + self.config.private_dim
        placeholder = (next(self.parameters()).new_zeros((rows, width)),) * 2
        encoded = [outputs.get(name, placeholder) for name in self.modalities]
        loc = torch.stack([mean for mean, _ in encoded])
        scale = self.expert_scales(torch.stack([logits for _, logits in encoded]))
        shared = self.config.latent_dim
        return loc[..., :shared], scale[..., :shared], loc[..., shared:], scale[..., shared:]

    def private_posteriors(
        self,
        batch: Batch,
        cond: Sequence[str] | None = None,
        outputs: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> dict[str, Posterior]:
        """``q(w_m | x_m)`` of every ``cond`` modality (all by default), Laplace or normal."""
        encoded = self.encoder_outputs(batch, cond) if outputs is None else outputs
        shared = self.config.latent_dim
        posteriors: dict[str, Posterior] = {}
        for name in self.modalities:
            if cond is not None and name not in cond:
                continue
            loc, logits = encoded[name]
            if self.config.latent_distribution == "normal":
                posteriors[name] = GaussianPosterior(loc[..., shared:], logits[..., shared:])
            elif self.config.latent_distribution == "normal_with_softplus":
                scale = self.expert_scales(logits)[..., shared:]
                posteriors[name] = GaussianPosterior(loc[..., shared:], 2.0 * torch.log(scale))
            else:
                scale = self.expert_scales(logits)[..., shared:]
                posteriors[name] = LaplacePosterior(loc[..., shared:], scale)
        return posteriors

    # ----------------------------------------------------------------------------------------
    # Objective

    def objective(self, batch: Batch) -> Objective:
        """The negative looser bound (DReG, IWAE or ELBO) per sample.

        Randomness, in order (tests replay it), with ``family`` the configured
        ``torch.distributions`` class: ``family(loc_z, scale_z).rsample((K,))`` on the stacked
        ``(M, N, D)`` shared expert parameters (``z``, ``(K, M, N, D)``), then
        ``family(loc_w, scale_w).rsample((K,))`` on the ``(M, N, Dw)`` private ones (``w``),
        then ``family(0, s).rsample((K,))`` with ``s`` the scales of ``r_n`` expanded to
        ``(M, M, N, Dw)`` (``w~``, ``(K, M, M, N, Dw)``: entry ``[k, n, m, i]`` is the private
        latent of decoder ``n`` for expert ``m``'s draw ``k`` of sample ``i``; the diagonal
        ``n = m`` is drawn and unused).

        Parts: ``bound`` (the bound's value: for ``dreg``, the IWAE bound whose gradient the
        loss carries), and the stratified ``K``-sample averages of ``sum_n log p(x_n | z, w_n)``
        (``reconstruction``) and of ``log q(z|X) q(w_m|x_m) - log p(z) p(w_m)`` (``kl``).
        """
        family = self.family
        k = self.config.samples_per_expert
        mask = self.condition_mask(batch, None)
        experts, rows = mask.shape
        loc_z, scale_z, loc_w, scale_w = self.expert_parameters(batch)
        z = family_rsample(family, loc_z, scale_z, k)
        w = family_rsample(family, loc_w, scale_w, k)
        auxiliary = self.auxiliary_scales().reshape(experts, 1, 1, -1)
        auxiliary = auxiliary.expand(experts, experts, rows, -1)
        w_auxiliary = family_rsample(family, torch.zeros_like(auxiliary), auxiliary, k)

        # Decoder n reconstructs from [z, w_n]: expert m's own w_m when n = m, else r_n's draw.
        expert_index = torch.arange(experts, device=mask.device).reshape(1, experts, 1, 1)
        latents = {
            name: self.generation_latent(
                z, name, torch.where(expert_index == n, w, w_auxiliary[:, n])
            )
            for n, name in enumerate(self.modalities)
        }
        # Expert m's draws score modality n only where both are observed; only those decode.
        cells = self.observed_pairs(mask)
        log_px = self.decoded_log_likelihoods(latents, batch, cells).sum(0)  # (K, M, N)

        dreg = self.config.bound == "dreg"
        # DReG needs log q with the posteriors' parameters stopped (only the paths through z, w).
        if dreg:
            loc_z, scale_z, loc_w, scale_w = (t.detach() for t in (loc_z, scale_z, loc_w, scale_w))
        log_qz = mixture_log_density(component_log_densities(z, loc_z, scale_z, family), mask)
        log_qw = family_log_density(family, w, loc_w, scale_w)
        # p(w_m) is the same for every modality (the w part of the joint prior).
        log_prior = self.prior_log_prob(z) + self.private_prior_log_prob(self.modalities[0], w)
        log_ratio = log_prior - log_qz - log_qw
        log_w = log_px + self.config.beta * log_ratio  # (K, M, N): expert m's draws

        objective, bound = mixture_of_experts_bound(log_w, mask, self.config.bound, [z, w])

        parts = {
            "bound": bound,
            "reconstruction": average_over_experts(log_px.detach().mean(0), mask),
            "kl": average_over_experts(-log_ratio.detach().mean(0), mask),
        }
        return Objective(-objective, parts)

    # ----------------------------------------------------------------------------------------
    # Inference and generation

    def posterior(self, batch: Batch, cond: Sequence[str] | None = None) -> MixturePosterior:
        """The mixture of the observed ``cond`` experts over ``z`` (all modalities by default).

        A sample with none of the ``cond`` modalities observed gets the prior ``p(z)``.
        """
        self.check_batch(batch)
        mask = self.condition_mask(batch, cond)
        loc, scale, _, _ = self.expert_parameters(batch, cond)
        prior_loc = torch.zeros_like(loc[:1])
        prior_scale = self.prior_scale()[: self.config.latent_dim].to(scale.dtype)
        return MixturePosterior(
            torch.cat([loc, prior_loc]),
            torch.cat([scale, prior_scale.expand_as(prior_loc)]),
            torch.cat([mask, ~mask.any(0, keepdim=True)]),
            self.family,
        )

    def generation_privates(
        self,
        batch: Batch,
        cond: Sequence[str] | None,
        gen: Sequence[str],
        n_samples: int,
        use_mean: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Private latents ``(n_samples, N, Dw)`` for generating the ``gen`` modalities.

        As the base (``q(w_n|x_n)`` for observed ``cond`` modalities, else ``p(w_n)``); with
        ``private_generation="auxiliary"`` the latter draws come from ``r_n`` instead (drawn
        after the base's draws). Both are centred, so ``use_mean`` gives 0 either way.
        """
        privates = super().generation_privates(batch, cond, gen, n_samples, use_mean)
        if self.config.private_generation == "prior" or use_mean:
            return privates
        mask = self.condition_mask(batch, cond)
        for name, drawn in privates.items():
            observed = mask[self.modalities.index(name)].reshape(1, -1, 1)
            auxiliary = self.auxiliary_sample(name, drawn.shape[:-1]).to(drawn.dtype)
            privates[name] = torch.where(observed, drawn, auxiliary)
        return privates

    def joint_proposal(
        self, batch: Batch, gen: Sequence[str] | None, n_samples: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draws of ``z`` for the joint :meth:`nll` from a stratified ``MoE_O(z)``.

        ``O``: the observed ``gen`` modalities (the prior where there is none); draw ``k`` of a
        sample comes from its ``(k mod |O|)``-th component, and ``log psi = log sum_c (K_c / K)
        q_c(z)`` is the density of the stratified draws (``K_c`` of the ``K`` come from
        component ``c``; it is ``MoE_O`` when ``|O|`` divides ``K``). The mean of the weights is
        then unbiased for ``p(X_O)`` for any ``K``, so chunks may be pooled. The base class adds
        each observed ``w_n ~ q(w_n | x_n)`` and scores the weights.
        """
        family = self.family
        posterior = self.posterior(batch, gen)
        present = posterior.mask  # (C, N), at least one component per sample
        rank = torch.arange(n_samples, device=present.device).unsqueeze(1) % present.sum(0)
        chosen = present.unsqueeze(1) & (present.long().cumsum(0).unsqueeze(1) == rank + 1)
        component = chosen.long().argmax(0)  # (K, N)
        sample_index = torch.arange(present.shape[1], device=present.device)
        z = family_rsample(
            family,
            posterior.loc[component, sample_index],
            posterior.scale[component, sample_index],
            1,
        )[0]
        share = chosen.sum(1).to(z.dtype) / n_samples  # (C, N): K_c / K
        densities = component_log_densities(z, posterior.loc, posterior.scale, family)
        return z, torch.logsumexp(densities + torch.log(share).unsqueeze(1), dim=0)
