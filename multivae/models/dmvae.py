"""DMVAE: a product of experts over a shared latent, with a private latent per modality.

Lee and Pavlovic, "Private-Shared Disentangled Multimodal VAE for Learning of Latent
Representations", CVPR Workshops 2021 (arXiv:2012.13024). Authors' code: seqam-lab/DMVAE.

Each modality ``m`` has an encoder that outputs a Gaussian ``q_m = q(z | x_m)`` over the shared
latent ``z`` (dimension ``latent_dim``) and a Gaussian ``q(w_m | x_m)`` over its private latent
``w_m`` (dimension :meth:`DMVAE.private_dim`, which may differ per modality; 0 means none).
Priors are ``N(0, I)``; decoder ``m`` takes ``[z, w_m]``. The posterior given observed
modalities ``O`` is the product of experts with the prior expert, ``PoE_O ∝ p(z) prod_{m in O}
q_m`` (the prior alone when nothing is observed).

The loss of a sample observed on ``O`` is the sum of ``1 + |O|`` negative ELBOs::

    loss = E(PoE_O) + sum_{k in O} E(q_k),
    E(q) = -sum_{n in O} λ_n log p(x_n | z, w_n) + beta KL(q || p(z))
           + sum_{n in O} beta_n KL(q(w_n | x_n) || p(w_n)),   z ~ q, w_n ~ q(w_n | x_n),

with a fresh draw of every ``w_n`` in every term. Each unimodal term reconstructs every observed
modality (``x_n`` from ``x_k``'s shared latent with ``x_n``'s own private latent), so the
private KLs appear ``1 + |O|`` times. With ``normalize_terms`` the sum is divided by ``1 + |O|``.

Missing modalities follow the restriction principle: a sample gets the objective of the
sub-dataset ``X_O`` (absent modalities are not fused, reconstructed or regularised, and absent
modalities have no unimodal term). This is also what the reference (MultiVae) computes.
Masking is done with ``torch.where``, and each decoder runs only on the (term, sample) cells it
scores, gathered by a boolean mask: an absent modality's encoder gets exactly zero gradient, its
shared and private parts alike, even when it is absent from the whole batch (its decoder then
does not run). A sample with no observed modality contributes 0. The batch loss is the mean over
all samples.

Deliberate differences from the reference code (MultiVae's ``dmvae_model.py``):

* Absent experts are removed with ``torch.where`` (zero precision) instead of log-variances set
  to ``+inf`` in place.
* Private dimensions are validated integers (0 allowed, meaning no private latent); the
  reference sets float dimensions of 1.0 when none are given, which crash its default encoders.
* The joint NLL is the base class's importance-sampled estimate with the proposal
  ``PoE_O prod_{n in O} q(w_n | x_n)``; the reference's never resets its prior and posterior
  accumulators across chunks and data points, so its values are wrong.

Difference from the authors' code: it zeroes the reconstruction of the PoE term (only the PoE's
KL remains) and uses β-TCVAE minibatch-weighted KL estimates; we keep the paper's and the
reference's objective, with the PoE reconstruction and analytic KLs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from multivae.config import ConfigError
from multivae.data.batch import Batch
from multivae.models.base import (
    Capabilities,
    GaussianPosterior,
    ModelConfig,
    MultimodalVAE,
    Objective,
)
from multivae.nn.fusion import product_of_experts
from multivae.objectives import kl_standard_normal
from multivae.registry import register_model


@dataclass
class DMVAEConfig(ModelConfig):
    """Configuration of :class:`DMVAE`.

    Attributes:
        beta: Weight of the shared latent's KL term in every ELBO.
        private_dim: Dimension of the private latent of each modality not listed in
            ``private_dims`` (0: those modalities have none).
        private_dims: Modality -> dimension of its private latent, overriding ``private_dim``
            (0: that modality has none).
        beta_private: Weight ``beta_n`` of the private KL of each modality not listed in
            ``private_betas``.
        private_betas: Modality -> weight ``beta_n`` of its private KL, overriding
            ``beta_private``.
        normalize_terms: Divide each sample's sum of ``1 + |O|`` ELBO terms by ``1 + |O|``.
    """

    beta: float = 1.0
    private_dim: int = 4
    private_dims: dict[str, int] = field(default_factory=dict)
    beta_private: float = 1.0
    private_betas: dict[str, float] = field(default_factory=dict)
    normalize_terms: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        for option, mapping in (
            ("private_dims", self.private_dims),
            ("private_betas", self.private_betas),
        ):
            unknown = sorted(set(mapping) - set(self.modalities))
            if unknown:
                raise ConfigError(
                    f"dmvae: {option} names unknown modalities {unknown}; known: "
                    f"{list(self.modalities)}"
                )
        dims = {"private_dim": self.private_dim}
        dims.update({f"private_dims[{m!r}]": d for m, d in self.private_dims.items()})
        for where, dim in dims.items():
            if isinstance(dim, bool) or not isinstance(dim, int) or dim < 0:
                raise ConfigError(f"dmvae: {where} must be an integer >= 0, found {dim!r}")
        weights = {"beta": self.beta, "beta_private": self.beta_private}
        weights.update({f"private_betas[{m!r}]": b for m, b in self.private_betas.items()})
        for where, weight in weights.items():
            if isinstance(weight, bool) or not isinstance(weight, int | float) or weight < 0:
                raise ConfigError(f"dmvae: {where} must be a number >= 0, found {weight!r}")


@register_model
class DMVAE(MultimodalVAE):
    """DMVAE (Lee & Pavlovic 2021): PoE with the prior expert, private latents per modality.

    Args:
        config: The model's config.
    """

    name: ClassVar[str] = "dmvae"
    config_class: ClassVar[type[ModelConfig]] = DMVAEConfig
    declared_capabilities: ClassVar[Capabilities] = Capabilities(private_latents=True)
    variant_configs: ClassVar[dict[str, dict[str, Any]]] = {
        # Overrides valid for any modality names (private_dims is keyed by name).
        "one-dim-private": {"private_dim": 1, "beta_private": 0.5},
        "shared-only": {"private_dim": 0},
        "normalized": {"normalize_terms": True, "beta": 2.0},
    }
    config: DMVAEConfig

    def private_dim(self, modality: str) -> int:
        """The modality's entry in ``private_dims``, else ``private_dim`` (0: none)."""
        return self.config.private_dims.get(modality, self.config.private_dim)

    def private_beta(self, modality: str) -> float:
        """Weight ``beta_n`` of the modality's private KL."""
        return self.config.private_betas.get(modality, self.config.beta_private)

    def objective(self, batch: Batch) -> Objective:
        """The DMVAE loss (module docstring) per sample.

        Randomness, in order (tests replay it): one ``torch.randn((1 + M, N, D))`` for the
        shared latents of the terms (the PoE first, then each modality's own posterior in the
        config's order); then, for each modality with a private latent in the config's order,
        one ``torch.randn((1 + M, N, P_m))`` for its private latent in every term.

        Parts, per sample, sums over the sample's terms (divided by
        ``1 + |O|`` with ``normalize_terms``): ``reconstruction`` (weighted log-likelihoods),
        ``kl`` (shared KLs) and ``kl_private`` (private KLs, without their ``beta_n``), so
        ``loss = -reconstruction + beta * kl + beta_private * kl_private`` when every
        ``beta_n`` is ``beta_private``.
        """
        mask = self.condition_mask(batch, None)
        outputs = self.encoder_outputs(batch)
        means, logvars = self.unimodal_posteriors(batch, None, outputs)
        joint_mean, joint_logvar = product_of_experts(means, logvars, mask, prior_expert=True)
        # The 1 + M terms are stacked along a leading axis: the PoE, then each modality's own
        # posterior; the decoders see them as one batch of (1 + M) * N latents.
        term_mean = torch.cat([joint_mean.unsqueeze(0), means])
        term_logvar = torch.cat([joint_logvar.unsqueeze(0), logvars])
        term_used = torch.cat([mask.any(0, keepdim=True), mask])  # (1 + M, N)
        n_terms = term_used.shape[0]
        z = term_mean + torch.exp(0.5 * term_logvar) * torch.randn_like(term_mean)
        zero = torch.zeros((), dtype=z.dtype, device=z.device)

        privates = self.private_posteriors(batch, None, outputs)
        latents = {}
        kl_private = torch.zeros_like(mask[0], dtype=z.dtype)
        kl_private_weighted = torch.zeros_like(kl_private)
        for i, name in enumerate(self.modalities):
            latents[name] = z
            if name in privates:
                private = privates[name]
                assert isinstance(private, GaussianPosterior)  # the base's private posteriors
                w = private.rsample(n_terms)  # a fresh w_n in every term
                latents[name] = torch.cat([z, w], dim=-1)
                kl = torch.where(mask[i], kl_standard_normal(private.mean, private.logvar), zero)
                kl_private = kl_private + kl
                kl_private_weighted = kl_private_weighted + self.private_beta(name) * kl
        # Only the cells that count are decoded (used term, observed target): about half of them
        # under PolyMNIST-style missingness. A decoder whose target is absent from the whole
        # batch still takes part, with zero gradient (DistributedDataParallel needs it).
        cells = term_used.unsqueeze(0) & mask.unsqueeze(1)  # (M, 1 + M, N)
        reconstruction_terms = self.decoded_log_likelihoods(latents, batch, cells).sum(0)
        reconstruction = reconstruction_terms.sum(0)
        kl_terms = kl_standard_normal(term_mean, term_logvar)
        kl = torch.where(term_used, kl_terms, zero).sum(0)
        # Every term carries the same private KLs: they count once per used term.
        count = term_used.sum(0).to(z.dtype)
        kl_private = count * kl_private
        kl_private_weighted = count * kl_private_weighted
        loss = -reconstruction + self.config.beta * kl + kl_private_weighted
        parts = {"reconstruction": reconstruction, "kl": kl}
        if self.private_dims:
            parts["kl_private"] = kl_private
        if self.config.normalize_terms:
            terms = count.clamp(min=1.0)
            loss = loss / terms
            parts = {key: value / terms for key, value in parts.items()}
        return Objective(loss, parts)

    def posterior(self, batch: Batch, cond: Sequence[str] | None = None) -> GaussianPosterior:
        """The product of the prior and the observed experts of ``cond`` (all by default).

        A sample with no observed ``cond`` modality gets the prior ``N(0, I)``.
        """
        return self.product_posterior(batch, cond, prior_expert=True)
