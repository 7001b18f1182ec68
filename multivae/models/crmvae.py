"""CRMVAE: a product of experts coordinated with its unimodal experts.

"Mitigating the Limitations of Multimodal VAEs with Coordination-Based Approach", an anonymous
ICLR 2023 submission (OpenReview Rn8u4MYgeNJ; no arXiv id is known here). The objective follows
the reference code, MultiVae's ``crmvae_model.py``, which produced its reproduction numbers.

A shared latent ``z`` with prior ``N(0, I)``, one Gaussian expert ``q_m = q(z | x_m)`` per
modality and the joint posterior ``q(z | X)``, the product of the observed experts **without** a
prior expert. Per sample and step, one draw ``z_X ~ q(z | X)`` and one draw ``z_m ~ q_m`` per
modality; each decoder scores its modality from ``z_X`` and from its own expert's ``z_m`` (the
unimodal self-reconstruction, never a cross-reconstruction). The loss is::

    sum_m lambda_m [-log p(x_m | z_X) - log p(x_m | z_m)] / (2 (M + 1))
      + beta [KL(q(z|X) || p) + sum_m KL(q(z|X) || q_m)] / (M + 1)

With one modality the product is ``q_1`` itself and the loss is ``[-l(z_X) - l(z_1)] / 4 +
(beta / 2) KL(q_1 || p)``.

Incomplete samples: a sample observed on ``O`` has its product run over ``O``, and only the
modalities of ``O`` are reconstructed and have a KL to their expert. Two rules set the divisors:

* ``incomplete_weights="observed"`` (the default, the restriction principle): every ``M`` above
  becomes ``|O|``, so the sample gets exactly the objective of the sub-dataset ``X_O``.
* ``incomplete_weights="reference"`` (the reference code, where it is a ``TODO``): the divisors
  keep the full ``M``.

A sample with no observed modality contributes exactly 0 under both (and still counts in the
batch mean). Everything is masked with ``torch.where``: absent experts get zero precision, their
self-reconstructions and KLs are masked out, and their encoders get exactly zero gradient.

Inference: the posterior given a subset ``S`` is the product of the observed experts of ``S``
(no prior expert), and the prior ``N(0, I)`` for a sample with none of them. The joint
likelihood uses the product of the observed experts as proposal (the base's ``nll``).

Deliberate differences from the reference code (MultiVae):

* The loss is a per-sample mean over the batch; the reference sums over the batch.
* Incomplete samples get the divisors ``2 (|O| + 1)`` and ``|O| + 1`` by default (see above).
* Absent experts are removed by masking precisions; the reference writes infinite log-variances
  into a copy of the encoder outputs.
* MultiVae's docstring weighs each reconstruction term by ``1 / (M + 1)``, its code by
  ``1 / (2 (M + 1))``: this follows the code (which of the two the paper uses is not checked
  here).

Defaults: ``beta = 2.5`` (MultiVae's). The translated-PolyMNIST reproduction used ``beta = 0.1``,
``latent_dim = 512``, Laplace likelihoods with scale 0.75, Adam at 5e-4, batches of 256, 500
epochs.

Randomness: :meth:`CRMVAE.objective` draws, from torch's global generator, one standard normal
tensor of shape ``(N, latent_dim)`` (the noise of ``z_X``), then one of shape ``(M, N,
latent_dim)`` (the noise of every ``z_m``, in the modalities' order).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch

from multivae.config import ConfigError
from multivae.data.batch import Batch
from multivae.models.base import Capabilities, ModelConfig, MultimodalVAE, Objective
from multivae.nn.fusion import product_of_experts
from multivae.nn.posteriors import GaussianPosterior
from multivae.objectives import kl_standard_normal, kl_to_experts
from multivae.registry import register_model


@dataclass
class CRMVAEConfig(ModelConfig):
    """Configuration of :class:`CRMVAE`.

    Attributes:
        beta: The weight of the KL part.
        incomplete_weights: ``observed``: an incomplete sample's divisors count its observed
            modalities ``|O|``; ``reference``: they count all ``M`` modalities.
    """

    beta: float = 2.5
    incomplete_weights: Literal["observed", "reference"] = "observed"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.beta < 0:
            raise ConfigError(f"crmvae: beta must be >= 0, found {self.beta}")


@register_model
class CRMVAE(MultimodalVAE):
    """CRMVAE (ICLR 2023 submission): a product of experts coordinated with its experts.

    Args:
        config: The model's config.
    """

    name: ClassVar[str] = "crmvae"
    config_class: ClassVar[type[ModelConfig]] = CRMVAEConfig
    declared_capabilities: ClassVar[Capabilities] = Capabilities()
    variant_configs: ClassVar[dict[str, dict[str, Any]]] = {
        "reference-divisors": {"incomplete_weights": "reference", "beta": 0.1},
    }
    config: CRMVAEConfig

    def objective(self, batch: Batch) -> Objective:
        """The CRMVAE loss per sample.

        ``loss = -reconstruction / (2 (count + 1)) + beta * (kl + kl_experts) / (count + 1)``
        with ``reconstruction = sum_{m in O} lambda_m [log p(x_m | z_X) + log p(x_m | z_m)]``
        (the joint and the unimodal self-reconstructions, each weighted by the modality's
        ``weight``), ``kl = KL(q(z|X_O) || p)``, ``kl_experts = sum_{m in O} KL(q(z|X_O) ||
        q_m)`` and ``count = |O|`` (or ``M`` with ``incomplete_weights="reference"``). The
        parts are reported before the divisors.

        Draws, in order: the ``(N, D)`` noise of ``z_X``, then the ``(M, N, D)`` noise of the
        unimodal draws ``z_m``.
        """
        presence = self.condition_mask(batch, None)
        means, logvars = self.unimodal_posteriors(batch)
        mean, logvar = product_of_experts(means, logvars, presence, prior_expert=False)
        z_joint = GaussianPosterior(mean, logvar).rsample(1)[0]
        z_experts = GaussianPosterior(means, logvars).rsample(1)[0]
        # Each decoder scores its modality from z_X and from its own expert's draw, in one pass.
        latents = {
            name: torch.stack([z_joint, z_experts[i]]) for i, name in enumerate(self.modalities)
        }
        cells = presence.unsqueeze(1)  # (M, 1, N): broadcast over the two latents
        reconstruction = self.decoded_log_likelihoods(latents, batch, cells).sum((0, 1))

        kl = kl_standard_normal(mean, logvar)
        kl_experts = kl_to_experts(mean, logvar, means, logvars, presence)

        # (With nothing observed the count is clamped to 1; the sample is zeroed below anyway.)
        divisor = self.modality_count(presence, self.config.incomplete_weights) + 1
        loss = -reconstruction / (2 * divisor) + self.config.beta * (kl + kl_experts) / divisor
        parts = {"reconstruction": reconstruction, "kl": kl, "kl_experts": kl_experts}
        return Objective(loss, parts).where(presence.any(0))

    def posterior(self, batch: Batch, cond: Sequence[str] | None = None) -> GaussianPosterior:
        """The product of the observed ``cond`` experts (all by default), without the prior.

        A sample with none of them observed gets the prior ``N(0, I)``.
        """
        return self.product_posterior(batch, cond, prior_expert=False)
