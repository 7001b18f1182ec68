"""gPoE: a generalized product of experts with learned weights per modality and dimension.

Lawry Aguila, Chapman, Altmann, "Multi-modal Variational Autoencoders for normative modelling
across multiple imaging modalities", MICCAI 2023 (arXiv:2303.12706; multi-view-AE's
``weighted_mVAE``); the generalized product of experts is Cao & Fleet, arXiv:1410.7827.

Each modality's encoder gives a Gaussian expert ``q_m = N(mu_m, sigma_m^2)``; the joint posterior
fuses them per dimension ``d`` with learned weights ``alpha`` (an ``M x D`` matrix, initialized
at ``1/M``, kept in ``[0, 1]``)::

    precision_d = sum_m alpha_md / sigma_md^2
    mean_d = (sum_m alpha_md mu_md / sigma_md^2) / precision_d

with no prior expert. The loss, per sample, with ``z ~ q(z | X)``::

    loss = -(1/M) sum_m l_m(z) + beta KL(q(z | X) || N(0, I))
           [+ (beta/M) sum_m KL(q(w_m | x_m) || N(0, I))]

``l_m`` is the (weighted) log-likelihood of modality ``m``; the bracket is the private-latent
option (``private_dim``), decoder ``m`` then taking ``[z, w_m]``.

On incomplete samples (the reference has none): absent experts have zero precision, and every
``M`` becomes ``|O|``. ``incomplete_weights="rescale"`` (default) rescales the observed weights
of each dimension to the total of all its weights, ``alpha~_md = alpha_md * sum_k alpha_kd /
sum_{k in O} alpha_kd``, which is the reference on complete samples; ``drop`` leaves them as they
are (a plain PoE without the absent experts). A dimension whose observed weights sum to 0 falls
back to ``N(0, 1)``; a sample with nothing observed contributes exactly 0.

Deliberate differences from the reference (multi-view-AE ``weighted_mvae.py``):

* The weights are clamped into ``[0, 1]`` where they are used (the forward pass), and projected
  there after every optimizer step (:meth:`GPoE.project_weights`, the ``after_step`` of its
  optimizer group); the reference clamps the
  parameter in place after fusing, so its forward pass uses unclamped weights, and a negative
  precision can give NaN.
* The private-latent option works (the reference's default config lacks ``s_dim``).
* Subset inference fuses the experts of ``S`` (the reference has no ``encode_subset``); the
  posterior is Gaussian, so the base class's likelihood estimates apply unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from multivae.config import ConfigError
from multivae.data.batch import Batch
from multivae.models.base import (
    Capabilities,
    ModelConfig,
    MultimodalVAE,
    Objective,
    OptimizerGroup,
)
from multivae.nn.fusion import weighted_product_of_experts
from multivae.nn.posteriors import GaussianPosterior
from multivae.objectives import kl_standard_normal
from multivae.registry import register_model


@dataclass
class GPoEConfig(ModelConfig):
    """Options of :class:`GPoE`.

    Attributes:
        beta: Weight of the KL terms.
        private_dim: Dimension of each modality's private latent ``w_m`` (0: none).
        incomplete_weights: ``rescale`` (the observed weights of a dimension keep the total of
            all its weights) or ``drop`` (absent experts are left out, nothing rescaled).
    """

    beta: float = 1.0
    private_dim: int = 0
    incomplete_weights: Literal["rescale", "drop"] = "rescale"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.beta < 0:
            raise ConfigError(f"gpoe: beta must be >= 0, found {self.beta}")
        if self.private_dim < 0:
            raise ConfigError(f"gpoe: private_dim must be >= 0, found {self.private_dim}")


@register_model
class GPoE(MultimodalVAE):
    """gPoE (Lawry Aguila et al. 2023): a product of experts with learned weights.

    Args:
        config: The model's config.
    """

    name: ClassVar[str] = "gpoe"
    config_class: ClassVar[type[ModelConfig]] = GPoEConfig
    declared_capabilities: ClassVar[Capabilities] = Capabilities(private_latents=True)
    variant_configs: ClassVar[dict[str, dict[str, Any]]] = {
        "private": {"private_dim": 2},
        "drop": {"incomplete_weights": "drop"},
    }
    config: GPoEConfig

    def __init__(self, config: GPoEConfig) -> None:
        super().__init__(config)
        experts = len(self.modalities)
        self.fusion_weights = nn.Parameter(torch.full((experts, config.latent_dim), 1 / experts))

    def private_dim(self, modality: str) -> int:
        """Every modality's private latent has ``private_dim`` dimensions."""
        return self.config.private_dim

    def fusion(self) -> torch.Tensor:
        """The weights ``alpha`` as used, clamped into ``[0, 1]``: ``(M, D)``."""
        return self.fusion_weights.float().clamp(0.0, 1.0)

    def project_weights(self) -> None:
        """Project the weights back into ``[0, 1]`` after a gradient step."""
        with torch.no_grad():
            self.fusion_weights.clamp_(0.0, 1.0)

    def optimizer_groups(self, stage: str) -> list[OptimizerGroup]:
        """One optimizer, whose steps are each followed by :meth:`project_weights`."""
        return [
            OptimizerGroup("main", self.stage_parameters(stage), after_step=self.project_weights)
        ]

    def fuse(
        self, means: torch.Tensor, logvars: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The weighted product of the present experts: mean and log-variance, ``(N, D)``."""
        alpha = self.fusion().unsqueeze(1).expand_as(means)  # (M, N, D)
        if self.config.incomplete_weights == "rescale":
            zero = torch.zeros((), dtype=alpha.dtype, device=alpha.device)
            observed = torch.where(mask.unsqueeze(-1), alpha, zero).sum(0)  # (N, D)
            total = alpha.sum(0)
            factor = torch.where(observed > 0, total / observed.clamp(min=1e-12), zero)
            alpha = alpha * factor
        return weighted_product_of_experts(means, logvars, alpha, mask)

    def posterior(self, batch: Batch, cond: Sequence[str] | None = None) -> GaussianPosterior:
        """The weighted product of the observed ``cond`` experts (all modalities by default)."""
        self.check_batch(batch)
        means, logvars = self.unimodal_posteriors(batch, cond)
        return GaussianPosterior(*self.fuse(means, logvars, self.condition_mask(batch, cond)))

    def objective(self, batch: Batch) -> Objective:
        """The gPoE loss per sample (module docstring).

        Randomness, in order (tests replay it): one ``torch.randn((N, D))`` for ``z``, then, with
        private latents, one ``torch.randn((1, N, P))`` per modality in the config's order.
        """
        mask = self.condition_mask(batch, None)
        outputs = self.encoder_outputs(batch)
        means, logvars = self.unimodal_posteriors(batch, None, outputs)
        mean, logvar = self.fuse(means, logvars, mask)
        z = GaussianPosterior(mean, logvar).rsample(1)[0]
        zero = torch.zeros((), dtype=z.dtype, device=z.device)
        latents = {}
        kl_private = torch.zeros_like(z[:, 0])
        privates = self.private_posteriors(batch, None, outputs)
        for i, name in enumerate(self.modalities):
            if name not in privates:
                latents[name] = z
                continue
            private = privates[name]
            assert isinstance(private, GaussianPosterior)
            latents[name] = self.generation_latent(z, name, private.rsample(1)[0])
            kl = kl_standard_normal(private.mean, private.logvar)
            kl_private = kl_private + torch.where(mask[i], kl, zero)
        reconstruction = self.decoded_log_likelihoods(latents, batch, mask).sum(0)
        count = mask.sum(0).to(z.dtype).clamp(min=1.0)
        kl = kl_standard_normal(mean, logvar)
        beta = self.config.beta
        loss = -reconstruction / count + beta * kl + beta * kl_private / count
        parts = {"reconstruction": reconstruction, "kl": kl}
        if privates:
            parts["kl_private"] = kl_private
        return Objective(loss, parts).where(mask.any(0))
