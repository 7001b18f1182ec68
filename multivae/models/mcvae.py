"""mcVAE: one posterior per channel in a common latent space, each decoding every channel.

Antelmi, Ayache, Robert and Lorenzi, "Sparse Multi-Channel Variational Autoencoder for the Joint
Analysis of Heterogeneous Data", ICML 2019, PMLR 97:302-311 (authors' code: ggbioing/mcvae;
multi-view-AE's ``mcVAE``).

Each channel (modality) ``m`` has its own Gaussian posterior ``q_m = q(z | x_m) = N(mu_m,
sigma_m^2)`` over one shared latent, with no fusion; every channel's draw decodes every channel.
The loss, per sample observed on the channels ``O``, with ``z_m ~ q_m``::

    loss = beta sum_{m in O} KL(q_m || p) - c sum_{m in O} sum_{n in O} l_n(z_m)

``l_n`` is the (weighted) log-likelihood of channel ``n``, ``p = N(0, I)`` and ``c = 1``
(``ll_normalization="none"``, the authors' loss) or ``1 / |O|^2`` (``"m2"``, multi-view-AE's
``1 / M^2`` on the double sum, which weighs the KLs ``M^2`` times more). A sample with nothing
observed contributes exactly 0.

The sparse variant (``sparse=True``) is variational dropout (Molchanov, Ashukha and Vetrov 2017,
arXiv:1701.05369) with one ``log alpha`` of shape ``(1, D)`` shared by all channels, initialized
from ``N(0, 0.01^2)``: ``sigma_m^2 = alpha mu_m^2``, that is ``logvar_m = log alpha + 2 log(|mu_m|
+ 1e-8)``, and the KL is to the log-uniform prior, with Molchanov's approximation
(:func:`kl_log_uniform`). A dimension's dropout rate is ``p = alpha / (1 + alpha)``; in
evaluation mode (:meth:`MCVAE.posterior`, ``predict``, ``sample``, ``nll``) the dimensions with
``p >= dropout_threshold`` are dropped (:meth:`MCVAE.kept_dimensions`).

Deliberate differences from the authors' code and multi-view-AE:

* Incomplete samples (the authors' ``MtMcvae`` keeps the KLs of the observed channels and the
  log-likelihoods of the pairs observed on the same subject, which is what this does): only
  observed channels are encoded into the loss, decoded to or regularised, and ``M`` becomes
  ``|O|`` under ``"m2"``.
* The decoders' likelihoods are the project's (:class:`~multivae.models.base.ModalityConfig`):
  the references' Gaussian decoders learn one log-variance per feature, initialized at -3; the
  closest here is ``likelihood: normal, learn_scale: true, scale: 0.2231`` (``exp(-3 / 2)``), one
  learned scale per channel.
* The sparse variant's encoders still have the log-variance half of their output layer (every
  encoder of the zoo does), which the sparse posterior ignores: those weights get a zero
  gradient. The KL uses ``log alpha`` itself, clamped to ``[-8, 8]``; the reference recomputes it
  per sample as ``logvar - 2 log(|mu| + 1e-8)``, the same value.
* The log-uniform prior is improper: sampling and the likelihood estimates of the sparse model
  use ``N(0, I)`` as the prior. In evaluation mode the decoders see ``z`` with the dropped
  dimensions set to 0 (:meth:`MCVAE.generation_latent`), and the posterior gives those dimensions
  the prior ``N(0, 1)`` itself (mean 0): they then cancel out of the importance weights, and the
  likelihood estimated is that of the pruned model. The reference zeroes the dropped dimensions
  of the posterior means it decodes, which is what ``predict(..., use_mean=True)`` does.
* multi-view-AE silently turns sparsity off when the threshold is 0; here the threshold must be
  in ``(0, 1]``.
* Subset inference is the uniform mixture of the observed experts of the subset (the authors'
  prediction averages the decoded means over the available channels), with the prior where none
  is observed; the base class's NLL uses that mixture as its proposal.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from multivae.config import ConfigError
from multivae.data.batch import Batch
from multivae.models.base import Capabilities, ModelConfig, MultimodalVAE, Objective
from multivae.nn.posteriors import GaussianPosterior, MixturePosterior
from multivae.objectives import kl_standard_normal
from multivae.registry import register_model

MOLCHANOV_CONSTANTS = (0.63576, 1.8732, 1.48695)
"""``k1, k2, k3`` of Molchanov et al.'s approximation of the KL to the log-uniform prior."""
LOG_ALPHA_BOUNDS = (-8.0, 8.0)
"""The references' clamp of ``log alpha`` in the KL: dropout rates from 0.03% to 99.97%."""
SPARSE_EPS = 1e-8
"""Added to ``|mu|`` in the sparse log-variance, so that a zero mean keeps a finite one."""


def kl_log_uniform(log_alpha: torch.Tensor) -> torch.Tensor:
    """Approximate ``KL(N(mu, alpha mu^2) || log-uniform)``, summed over the last dimension.

    Molchanov et al. (2017), section 4.2: ``-(k1 sigmoid(k2 + k3 log alpha) - 0.5 log1p(1 /
    alpha) - k1)`` per dimension, with ``log alpha`` clamped to ``[-8, 8]``. It depends on
    ``alpha`` alone and tends to 0 as ``alpha`` grows.
    """
    k1, k2, k3 = MOLCHANOV_CONSTANTS
    log_alpha = log_alpha.clamp(*LOG_ALPHA_BOUNDS)
    negative_kl = (
        k1 * torch.sigmoid(k2 + k3 * log_alpha) - 0.5 * torch.log1p(torch.exp(-log_alpha)) - k1
    )
    return -negative_kl.sum(-1)


@dataclass
class MCVAEConfig(ModelConfig):
    """Options of :class:`MCVAE`.

    Attributes:
        beta: Weight of the KL terms (1 in the references).
        ll_normalization: ``none`` (the authors' loss) or ``m2`` (the double sum of
            log-likelihoods divided by ``|O|^2``, multi-view-AE's ``M^2``).
        sparse: The sparse variant: variational dropout with one ``log alpha`` per latent
            dimension, shared by all channels.
        dropout_threshold: With ``sparse``, dimensions whose dropout rate is at least this are
            dropped in evaluation mode (0.2 in the authors' example); in ``(0, 1]``, unused
            otherwise.
    """

    beta: float = 1.0
    ll_normalization: Literal["none", "m2"] = "none"
    sparse: bool = False
    dropout_threshold: float = 0.2

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.beta < 0:
            raise ConfigError(f"mcvae: beta must be >= 0, found {self.beta}")
        if not 0 < self.dropout_threshold <= 1:
            raise ConfigError(
                f"mcvae: dropout_threshold must be in (0, 1], found {self.dropout_threshold}"
            )


@register_model
class MCVAE(MultimodalVAE):
    """mcVAE (Antelmi et al. 2019): a posterior per channel, each decoding every channel.

    Args:
        config: The model's config.
    """

    name: ClassVar[str] = "mcvae"
    config_class: ClassVar[type[ModelConfig]] = MCVAEConfig
    declared_capabilities: ClassVar[Capabilities] = Capabilities()
    variant_configs: ClassVar[dict[str, dict[str, Any]]] = {
        "sparse": {"sparse": True},
        "m2": {"ll_normalization": "m2"},
    }
    config: MCVAEConfig

    def __init__(self, config: MCVAEConfig) -> None:
        super().__init__(config)
        self.log_alpha: nn.Parameter | None = None
        if config.sparse:
            self.log_alpha = nn.Parameter(0.01 * torch.randn(1, config.latent_dim))

    # ----------------------------------------------------------------------------------------
    # Experts and sparsity

    def sparse_log_alpha(self) -> torch.Tensor:
        """``log alpha``, ``(1, D)`` in float32; only the sparse variant has one."""
        if self.log_alpha is None:
            raise ValueError("mcvae: only the sparse variant (sparse: true) has dropout rates")
        return self.log_alpha.float()

    def dropout_rates(self) -> torch.Tensor:
        """Each latent dimension's dropout rate ``p = alpha / (1 + alpha)``, ``(D,)``, detached."""
        return torch.sigmoid(self.sparse_log_alpha().detach())[0]

    def latent_report(self) -> dict[str, Any] | None:
        """The kept dimensions (and, sparse, each dimension's dropout rate and the threshold)."""
        kept = self.kept_dimensions()
        report: dict[str, Any] = {
            "dimensions": self.config.latent_dim,
            "kept_dimensions": int(kept.sum()),
            "kept": [bool(value) for value in kept.tolist()],
        }
        if self.log_alpha is not None:
            report["dropout_rates"] = [float(rate) for rate in self.dropout_rates().tolist()]
            report["dropout_threshold"] = self.config.dropout_threshold
        return report

    def kept_dimensions(self) -> torch.Tensor:
        """Boolean ``(D,)``: the dimensions used in evaluation mode.

        Those with a dropout rate below ``dropout_threshold`` for the sparse variant, all of
        them otherwise.
        """
        if self.log_alpha is None:
            return torch.ones(
                self.config.latent_dim, dtype=torch.bool, device=next(self.parameters()).device
            )
        return self.dropout_rates() < self.config.dropout_threshold

    def expert_parameters(
        self, batch: Batch, cond: Sequence[str] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance of every channel's posterior ``q(z | x_m)``, each ``(M, N, D)``.

        Only the ``cond`` encoders run (all by default); the other rows are placeholders for
        callers to mask. The sparse variant's log-variance is ``log alpha + 2 log(|mu| +
        1e-8)``.
        """
        means, logvars = self.unimodal_posteriors(batch, cond)
        if self.log_alpha is not None:
            logvars = self.sparse_log_alpha() + 2.0 * torch.log(means.abs() + SPARSE_EPS)
        return means, logvars

    def generation_latent(
        self, z: torch.Tensor, modality: str, private: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``z`` itself, with the dropped dimensions set to 0 in evaluation mode when sparse."""
        z = super().generation_latent(z, modality, private)
        if self.training or self.log_alpha is None:
            return z
        return torch.where(self.kept_dimensions(), z, torch.zeros((), dtype=z.dtype))

    # ----------------------------------------------------------------------------------------
    # Objective and inference

    def objective(self, batch: Batch) -> Objective:
        """The mcVAE loss per sample (module docstring); never thresholded, even in eval mode.

        Randomness, in order (tests replay it): one ``torch.randn((1, M, N, D))``, the noise
        of every channel's draw ``z_m = mu_m + sigma_m * noise[0, m]``.

        Parts: ``reconstruction``, ``c sum_{m in O} sum_{n in O} l_n(z_m)`` (with ``c`` the
        normalization: what the loss subtracts), and ``kl``, ``sum_{m in O} KL_m`` (before
        ``beta``; for the sparse variant the approximate KL to the log-uniform prior, the same
        for every channel).
        """
        mask = self.condition_mask(batch, None)
        means, logvars = self.expert_parameters(batch)
        z = GaussianPosterior(means, logvars).rsample(1)  # (1, M, N, D)
        # Channel m's draw scores channel n only where both are observed; only those decode.
        latents = dict.fromkeys(self.modalities, z)
        log_px = self.decoded_log_likelihoods(latents, batch, self.observed_pairs(mask))
        reconstruction = log_px.sum((0, 1, 2))
        if self.config.ll_normalization == "m2":
            count = mask.sum(0).to(reconstruction.dtype).clamp(min=1.0)
            reconstruction = reconstruction / count**2
        if self.log_alpha is None:
            kl_each = kl_standard_normal(means, logvars)
        else:
            kl_each = kl_log_uniform(self.sparse_log_alpha()).expand(mask.shape)
        zero = torch.zeros((), dtype=reconstruction.dtype, device=reconstruction.device)
        kl = torch.where(mask, kl_each, zero).sum(0)
        loss = self.config.beta * kl - reconstruction
        return Objective(loss, {"reconstruction": reconstruction, "kl": kl})

    def posterior(self, batch: Batch, cond: Sequence[str] | None = None) -> MixturePosterior:
        """The uniform mixture of the observed ``cond`` experts (all modalities by default).

        A sample with none of them observed gets the prior ``N(0, I)``. In evaluation mode the
        sparse variant gives every component the prior ``N(0, 1)`` on the dropped dimensions
        (mean 0; see the module docstring).
        """
        self.check_batch(batch)
        mask = self.condition_mask(batch, cond)
        means, logvars = self.expert_parameters(batch, cond)
        scales = torch.exp(0.5 * logvars)
        if not self.training and self.log_alpha is not None:
            keep = self.kept_dimensions()
            means = torch.where(keep, means, torch.zeros((), dtype=means.dtype))
            scales = torch.where(keep, scales, torch.ones((), dtype=scales.dtype))
        prior_loc = torch.zeros_like(means[:1])
        return MixturePosterior(
            torch.cat([means, prior_loc]),
            torch.cat([scales, torch.ones_like(prior_loc)]),
            torch.cat([mask, ~mask.any(0, keepdim=True)]),
            "normal",
        )
