"""JMVAE: a joint encoder plus unimodal encoders (Suzuki et al. 2016, arXiv:1611.01891).

A shared latent ``z`` with prior ``p(z) = N(0, I)``, decoders ``p(x_m | z)``, a joint encoder
``q(z | X)`` over all modalities and one encoder ``q(z | x_m)`` per modality. The training
objective is the paper's JMVAE-kl; per sample with every modality observed::

    loss = -sum_m log p(x_m | z)
           + w * [beta * KL(q(z|X) || p(z)) + alpha * sum_m KL(q(z|X) || q(z|x_m))],
    z ~ q(z|X)

with ``w`` rising linearly from 0 to 1 over ``warmup`` epochs of :attr:`progress`. As in the
reference code, the warmup scales the alpha terms as well as the prior KL.

Incomplete samples (the paper and the reference refuse them). The joint encoder is a function of
all modalities; zeros in place of an absent modality are not data, so its output means nothing
for an incomplete sample. A sample with observed modalities ``O`` (not all of them) uses instead
the product of its observed experts, ``q_O(z) = prod_{m in O} q(z | x_m)`` (no prior expert, the
same posterior as inference uses), and the objective restricted to ``O``::

    loss = -sum_{m in O} log p(x_m | z)
           + w * [beta * KL(q_O || p(z)) + alpha * sum_{m in O} KL(q_O || q(z|x_m))],
    z ~ q_O

* The first two terms are a (beta-)ELBO of ``log p(X_O)``: the decoders factorise given ``z``, so
  the absent modalities marginalise out, and an ELBO holds for any ``q``.
* The alpha terms keep the observed experts in agreement with their product, the role they play
  towards the joint encoder on complete samples. With one observed modality the product is that
  modality's posterior: the alpha term vanishes and the sample trains a plain VAE of ``x_m``
  through ``q(z|x_m)``, which is what that posterior is for.
* A sample with no observed modality (invalid data anyway) contributes exactly zero.

The choice between the two posteriors is a per-sample ``torch.where``: the joint encoder runs on
every batch (absent cells are zeros), but for incomplete samples its output is never selected,
so it gets exactly zero gradient from them, and the product gets none from complete samples.

Inference (:meth:`JMVAE.posterior`): the joint encoder for samples where every modality is
conditioned on and observed, otherwise the product of the observed conditioning experts. The
product has no prior expert, as in the reference: each ``q(z|x_m)`` is trained towards
``q(z|X)``, which already contains the prior once, and a single conditioning modality then gives
exactly ``q(z|x_m)``, the paper's unimodal inference. (The exact combination ``prod_m q(z|x_m) /
p(z)^(|S|-1)`` can have a negative precision, so it is not used.) Conditioning on nothing gives
``N(0, I)``, the prior.

Deliberate differences from the paper and the reference code (MultiVae):

* Incomplete samples train with the objective above.
* The warmup follows fractional epochs from 0, so the KL weight starts at 0; the reference uses
  ``epoch / warmup`` with whole epochs counted from 1. In evaluation mode the factor is 1 (see
  :attr:`JMVAE.kl_weight`), so validation losses of all epochs are comparable.
* The joint encoder is built from the config: per modality a feature network of the modality's
  encoder architecture (or ``joint_encoders``), the features concatenated, then ReLU and an MLP.

Randomness: :meth:`JMVAE.forward` draws exactly one standard normal tensor of shape ``(N,
latent_dim)``, the reparameterisation noise, from torch's global generator.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from multivae.config import ConfigError
from multivae.data.batch import Batch
from multivae.models.base import (
    Capabilities,
    GaussianPosterior,
    ModelConfig,
    MultimodalVAE,
    Objective,
)
from multivae.nn.architectures import ArchitectureConfig, MLPEncoder, build_encoder
from multivae.nn.fusion import LOGVAR_BOUNDS, product_of_experts
from multivae.objectives import kl_standard_normal, kl_to_experts
from multivae.registry import register_model


@dataclass
class JMVAEConfig(ModelConfig):
    """Configuration of :class:`JMVAE`.

    Attributes:
        alpha: Weight of the KL terms between the fused posterior and each unimodal posterior.
        beta: Weight of the KL between the fused posterior and the prior.
        warmup: Epochs over which the KL weight rises linearly from 0 to 1 (0: no warmup).
        joint_feature_dim: Size of the features each modality contributes to the joint encoder.
        joint_hidden: Hidden sizes of the joint encoder's MLP head.
        joint_encoders: Architecture of the joint encoder's feature network, per modality; a
            modality not listed uses its own encoder's architecture.
    """

    alpha: float = 0.1
    beta: float = 1.0
    warmup: float = 10.0
    joint_feature_dim: int = 128
    joint_hidden: tuple[int, ...] = (512,)
    joint_encoders: dict[str, ArchitectureConfig] = field(default_factory=dict)


class JointEncoder(nn.Module):
    """``q(z | X)``: a feature network per modality, concatenated, then ReLU and an MLP head.

    Args:
        features: Modality name -> network mapping ``(N, *shape)`` to ``(N, feature_dim)``.
        feature_dim: Size of each modality's features.
        hidden: Hidden sizes of the head.
        output_dim: Size of the output (mean and log-variance).
    """

    def __init__(
        self,
        features: dict[str, nn.Module],
        feature_dim: int,
        hidden: Sequence[int],
        output_dim: int,
    ) -> None:
        super().__init__()
        self.features = nn.ModuleDict(features)
        # Feature networks end with a linear layer; the ReLU keeps the head from composing with
        # it into a single linear map.
        self.head = nn.Sequential(
            nn.ReLU(), MLPEncoder((len(features) * feature_dim,), output_dim, hidden)
        )

    def forward(self, data: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean and log-variance, concatenated: ``(N, output_dim)``."""
        features = torch.cat([network(data[name]) for name, network in self.features.items()], -1)
        out: torch.Tensor = self.head(features)
        return out


@register_model
class JMVAE(MultimodalVAE):
    """Joint multimodal VAE (JMVAE-kl) with a joint encoder, trainable on incomplete samples.

    Args:
        config: The model's config.
    """

    name = "jmvae"
    config_class = JMVAEConfig
    declared_capabilities = Capabilities(missing_modalities=True)
    config: JMVAEConfig

    def __init__(self, config: JMVAEConfig) -> None:
        super().__init__(config)
        for option in ("alpha", "beta", "warmup"):
            value = getattr(config, option)
            if value < 0:
                raise ConfigError(f"{self.name} config: {option} must be >= 0, found {value}")
        if config.joint_feature_dim < 1:
            raise ConfigError(
                f"{self.name} config: joint_feature_dim must be >= 1, found "
                f"{config.joint_feature_dim}"
            )
        if any(size < 1 for size in config.joint_hidden):
            raise ConfigError(
                f"{self.name} config: joint_hidden sizes must be >= 1, found "
                f"{list(config.joint_hidden)}"
            )
        unknown = sorted(set(config.joint_encoders) - set(self.modalities))
        if unknown:
            raise ConfigError(
                f"{self.name} config: joint_encoders names unknown modalities {unknown}; "
                f"expected some of {list(self.modalities)}"
            )
        features = {
            name: build_encoder(
                config.joint_encoders.get(name, spec.encoder),
                spec.shape,
                config.joint_feature_dim,
                spec.num_categories,
            )
            for name, spec in config.modalities.items()
        }
        self.joint_encoder = JointEncoder(
            features, config.joint_feature_dim, config.joint_hidden, 2 * config.latent_dim
        )

    def _fused_posterior(
        self, batch: Batch, mask: torch.Tensor, cond: Sequence[str] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The posterior given the modalities of ``mask``, per sample, and its experts.

        Args:
            batch: The data.
            mask: ``(M, N)`` the modalities to condition on (already restricted to observed).
            cond: The modalities ``mask`` may hold (all by default): the other encoders, and the
                joint encoder unless ``cond`` is every modality, are skipped.

        Returns:
            Mean and log-variance ``(N, D)``: the joint encoder's where a sample's row of
            ``mask`` is all true, the product of its experts elsewhere; then the unimodal means
            and log-variances ``(M, N, D)``.
        """
        means, logvars = self.unimodal_posteriors(batch, cond)
        product_mean, product_logvar = product_of_experts(means, logvars, mask, prior_expert=False)
        if cond is not None and set(self.modalities) - set(cond):
            return product_mean, product_logvar, means, logvars
        joint_mean, joint_logvar = self.joint_encoder(batch.data).float().chunk(2, dim=-1)
        complete = mask.all(0).unsqueeze(-1)
        mean = torch.where(complete, joint_mean, product_mean)
        logvar = torch.where(complete, joint_logvar.clamp(*LOGVAR_BOUNDS), product_logvar)
        return mean, logvar, means, logvars

    def objective(self, batch: Batch) -> Objective:
        """``loss = -reconstruction + kl_warmup * (beta * kl + alpha * kl_experts)`` per sample.

        ``reconstruction`` is the log-likelihood of the observed modalities, ``kl`` the KL to
        the prior and ``kl_experts`` the sum of the KLs to the observed unimodal posteriors
        (see the module docstring).
        """
        presence = self.condition_mask(batch, None)
        mean, logvar, expert_means, expert_logvars = self._fused_posterior(batch, presence)
        z = GaussianPosterior(mean, logvar).rsample(1)[0]
        reconstruction = self.log_likelihoods(self.decode(z), batch).sum(0)
        kl = kl_standard_normal(mean, logvar)
        kl_experts = kl_to_experts(mean, logvar, expert_means, expert_logvars, presence)
        regularizer = self.config.beta * kl + self.config.alpha * kl_experts
        warmup = self.kl_warmup
        loss = -reconstruction + warmup * regularizer
        parts = {"reconstruction": reconstruction, "kl": kl, "kl_experts": kl_experts}
        return Objective(loss, parts, kl_weight=warmup)

    def posterior(self, batch: Batch, cond: Sequence[str] | None = None) -> GaussianPosterior:
        """``q(z | observed cond modalities)``: joint encoder if all are there, else a product.

        Args:
            batch: The data.
            cond: Modalities to condition on (all by default); absent ones are left out per
                sample.
        """
        self.check_batch(batch)
        mean, logvar, _, _ = self._fused_posterior(batch, self.condition_mask(batch, cond), cond)
        return GaussianPosterior(mean, logvar)
