"""MMVAE: a multimodal VAE whose joint posterior is a mixture of the unimodal experts.

Shi, Siddharth, Paige and Torr, "Variational Mixture-of-Experts Autoencoders for Multi-Modal Deep
Generative Models", NeurIPS 2019, arXiv:1911.03393.

The joint posterior is the uniform mixture ``q(z|X) = (1/M) sum_m q(z|x_m)``. Training draws
``K`` samples from every expert (stratified sampling: each expert contributes its own samples),
decodes every modality from each of them (cross-reconstruction) and maximizes the paper's
"looser" importance-weighted bound, whose average over experts sits outside the log::

    (1/M) sum_m log (1/K) sum_k p(X, z_mk) / q(z_mk | X),    z_mk ~ q(z | x_m),

by default with doubly reparameterized gradients (DReG, Tucker et al. 2018, arXiv:1810.04152):
the posterior's parameters are detached inside ``log q`` and the gradient through each sample is
reweighted (see :func:`multivae.objectives.dreg_surrogate`). Posterior and prior are Laplace by
default, the posterior's scale being ``softmax(h) * D + 1e-6`` of the encoder's second output
half ``h``, as in the reference code; the prior's scale is ``softmax(a) * D`` of a vector ``a``
(zeros at initialisation, learned by default as in the reference).

Missing modalities: a sample's mixture holds only its observed experts (the density is a
logsumexp over them divided by their number, and the average over experts has the same divisor),
and only its observed modalities are scored. Absent experts' terms are removed with
``torch.where``, so their encoders get exactly zero gradient, even when a modality is absent
from the whole batch.

Deliberate differences from the reference code:

* The loss is a per-sample mean (the reference sums over the batch).
* ``bound="elbo"`` is the Monte Carlo ELBO of the mixture posterior (``log q`` is the mixture
  density), the ``K``-sample average of the same log-weights the IWAE bound uses, so ``K = 1``
  makes both equal. The reference's ``m_elbo`` uses unimodal analytic KLs instead, which bounds
  a looser objective.
* With ``latent_distribution="normal"`` the posterior is the base's mean and clamped
  log-variance (no softmax scale); the prior keeps the ``softmax(a) * D`` scale.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import distributions

from multivae.config import ConfigError
from multivae.data.batch import Batch
from multivae.models.base import Capabilities, ModelConfig, MultimodalVAE, Objective
from multivae.nn.fusion import (
    mixture_log_density,
)
from multivae.nn.posteriors import LatentFamily, MixturePosterior, component_log_densities
from multivae.nn.priors import SoftmaxScalePrior, renamed_state_key
from multivae.objectives import average_over_experts, mixture_of_experts_bound
from multivae.registry import register_model

LatentDistribution = LatentFamily

LAPLACE_SCALE_EPS = 1e-6
"""Added to the softmax scale of Laplace posteriors (the reference's value) so it is never 0."""


def latent_distribution(
    family: LatentDistribution, loc: torch.Tensor, scale: torch.Tensor
) -> distributions.Distribution:
    """A factorized Laplace or normal distribution with the given location and scale."""
    if family == "laplace":
        return distributions.Laplace(loc, scale, validate_args=False)
    return distributions.Normal(loc, scale, validate_args=False)


@dataclass
class MMVAEConfig(ModelConfig):
    """Configuration of :class:`MMVAE`.

    Attributes:
        samples_per_expert: ``K``, latent samples drawn from every observed expert per step.
        bound: ``dreg`` (the looser IWAE bound with DReG gradients, as the reference trains),
            ``iwae`` (the same bound with its plain gradient) or ``elbo`` (the ``K``-sample
            Monte Carlo ELBO of the mixture).
        latent_distribution: ``laplace`` (the paper's choice) or ``normal``, for the posterior
            experts and the prior.
        learn_prior_scale: Learn the prior's per-dimension scales (their sum stays ``D``); on by
            default, as in the reference (its ``learn_prior``).
    """

    samples_per_expert: int = 10
    bound: Literal["dreg", "iwae", "elbo"] = "dreg"
    latent_distribution: LatentDistribution = "laplace"
    learn_prior_scale: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.samples_per_expert < 1:
            raise ConfigError(
                f"mmvae: samples_per_expert must be >= 1, found {self.samples_per_expert}"
            )


@register_model
class MMVAE(MultimodalVAE):
    """MMVAE (Shi et al. 2019): mixture-of-experts posterior, cross-reconstruction, IWAE/DReG.

    Args:
        config: The model's config.
    """

    name: ClassVar[str] = "mmvae"
    config_class: ClassVar[type[ModelConfig]] = MMVAEConfig
    declared_capabilities: ClassVar[Capabilities] = Capabilities(importance_sampled=True)
    variant_configs: ClassVar[dict[str, dict[str, Any]]] = {
        # With the default (Laplace, DReG), every bound with every latent family.
        "normal-iwae": {"latent_distribution": "normal", "bound": "iwae", "samples_per_expert": 3},
        "normal-dreg": {"latent_distribution": "normal", "samples_per_expert": 2},
        "normal-elbo": {"latent_distribution": "normal", "bound": "elbo"},
        "laplace-iwae": {"bound": "iwae", "samples_per_expert": 2},
        "elbo-fixed-prior": {"bound": "elbo", "learn_prior_scale": False},
    }
    config: MMVAEConfig

    def __init__(self, config: MMVAEConfig) -> None:
        super().__init__(config)
        self.shared_prior = SoftmaxScalePrior(
            config.latent_dim, config.latent_distribution, config.learn_prior_scale
        )
        # Model folders saved before the prior was an object name its logits so.
        self.register_load_state_dict_pre_hook(  # type: ignore[no-untyped-call]
            renamed_state_key("prior_scale_logits", "shared_prior.scale_logits")
        )

    # ----------------------------------------------------------------------------------------
    # Prior and experts

    def prior_scale(self) -> torch.Tensor:
        """The prior's per-dimension scale, ``(D,)``: ``softmax(a) * D``."""
        assert isinstance(self.shared_prior, SoftmaxScalePrior)
        return self.shared_prior.scale()

    def expert_parameters(
        self, batch: Batch, cond: Sequence[str] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Location and scale of every modality's posterior expert, each ``(M, N, D)``.

        Every encoder of a ``cond`` modality (all by default) runs on every batch; absent
        experts are masked by the callers. Experts outside ``cond`` are ``(0, 1)``
        placeholders, for callers that mask them out.
        """
        if self.config.latent_distribution == "normal":
            mean, logvar = self.unimodal_posteriors(batch, cond)
            return mean, torch.exp(0.5 * logvar)
        locs, scales = [], []
        for name in self.modalities:
            if cond is not None and name not in cond:
                rows = batch.data[name].shape[0]
                placeholder = next(self.parameters()).new_zeros((rows, self.config.latent_dim))
                locs.append(placeholder)
                scales.append(placeholder + 1)
                continue
            # float32 whatever autocast computed in (see MultimodalVAE.encode_modality).
            loc, scale_logits = self.encoders[name](batch.data[name]).float().chunk(2, dim=-1)
            locs.append(loc)
            # The reference's Laplace scale: positive, and its dimensions sum to about D.
            scales.append(
                torch.softmax(scale_logits, dim=-1) * self.config.latent_dim + LAPLACE_SCALE_EPS
            )
        return torch.stack(locs), torch.stack(scales)

    # ----------------------------------------------------------------------------------------
    # Objective and inference

    def objective(self, batch: Batch) -> Objective:
        """The negative looser bound (IWAE, DReG or ELBO) per sample.

        Randomness, in order (tests replay it): one call
        ``latent_distribution(family, loc, scale).rsample((K,))`` with ``loc`` and ``scale`` the
        stacked ``(M, N, D)`` expert parameters, giving ``z`` of shape ``(K, M, N, D)``.

        Parts: ``bound`` (the bound's value: for ``dreg``, the IWAE bound whose gradient the
        loss carries), and the stratified ``K``-sample averages of ``log p(X|z)``
        (``reconstruction``) and of ``log q(z|X) - log p(z)`` (``kl``).
        """
        family = self.config.latent_distribution
        mask = self.condition_mask(batch, None)
        loc, scale = self.expert_parameters(batch)
        z = latent_distribution(family, loc, scale).rsample((self.config.samples_per_expert,))

        dreg = self.config.bound == "dreg"
        # DReG needs log q with the posterior's parameters stopped (only the path through z).
        q_loc, q_scale = (loc.detach(), scale.detach()) if dreg else (loc, scale)
        log_q = mixture_log_density(component_log_densities(z, q_loc, q_scale, family), mask)
        # Expert m's draws score modality n only where both are observed; only those decode.
        latents = dict.fromkeys(self.modalities, z)
        log_px = self.decoded_log_likelihoods(latents, batch, self.observed_pairs(mask)).sum(0)
        log_pz = self.prior_log_prob(z)
        log_w = log_px + log_pz - log_q  # (K, M, N): expert m's samples, all modalities scored

        objective, bound = mixture_of_experts_bound(log_w, mask, self.config.bound, [z])

        parts = {
            "bound": bound,
            "reconstruction": average_over_experts(log_px.detach().mean(0), mask),
            "kl": average_over_experts((log_q - log_pz).detach().mean(0), mask),
        }
        return Objective(-objective, parts)

    def posterior(self, batch: Batch, cond: Sequence[str] | None = None) -> MixturePosterior:
        """The mixture of the observed ``cond`` experts (all modalities by default).

        A sample with none of the ``cond`` modalities observed gets the prior.
        """
        self.check_batch(batch)
        mask = self.condition_mask(batch, cond)
        loc, scale = self.expert_parameters(batch, cond)
        prior_loc = torch.zeros_like(loc[:1])
        prior_scale = self.prior_scale().to(scale.dtype).expand_as(prior_loc)
        return MixturePosterior(
            torch.cat([loc, prior_loc]),
            torch.cat([scale, prior_scale]),
            torch.cat([mask, ~mask.any(0, keepdim=True)]),
            self.config.latent_distribution,
        )
