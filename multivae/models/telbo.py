"""TELBO: a joint encoder, then unimodal encoders fitted to its decoders.

Vedantam, Fischer, Huang, Murphy, "Generative Models of Visually Grounded Imagination", ICLR 2018
(arXiv:1705.10762); the authors' code is google/joint_vae (TensorFlow), MultiVae's is the
two-stage reference. A shared latent ``z`` with prior ``N(0, I)``, decoders ``p(x_m | z)``, a
Gaussian joint encoder ``q(z | X)`` and a Gaussian encoder ``q(z | x_m)`` per modality. With
``lambda_m`` the modality's ``ModalityConfig.weight`` and ``gamma_m`` its ``unimodal_weights``
entry (``lambda_m`` by default), write

* ``J = sum_{m in O} lambda_m log p(x_m | z) - KL(q(z | X_O) || p(z))``, ``z ~ q(z | X_O)``: the
  joint ELBO of the observed modalities ``O``;
* ``U_m = gamma_m log p(x_m | z_m) - KL(q(z | x_m) || p(z))``, ``z_m ~ q(z | x_m)``: modality
  ``m``'s own ELBO (it reconstructs ``x_m`` only). Its KL is the closed form
  ``0.5 sum_d (mu_md^2 + sigma_md^2 - 1 - log sigma_md^2)`` of the unimodal encoder's own mean
  and variance: it is exactly 0 when ``q(z | x_m) = N(0, I)``, whatever the joint posterior.

``schedule="two_stage"`` (default, MultiVae's): two training stages.

* ``joint``: ``loss = -J`` per sample. The joint encoder, the decoders and any learned
  likelihood scale train; the unimodal encoders are frozen.
* ``unimodal``: ``loss = -sum_{m in O} U_m``. Only the unimodal encoders train; the joint
  encoder, the decoders and the likelihoods are frozen (no gradient, evaluation mode), and the
  joint encoder does not run.

``schedule="stop_gradient"`` (the paper's): one stage, ``main``, with ``loss = -(J + sum_{m in
O} U_m) / (1 + |O|)``, the authors' average over each sample's available terms. The decoders
and likelihoods get their gradient from ``J`` only: each ``U_m`` calls them with detached
parameters (the paper's ``stop_elbox_gradient`` / ``stop_elboy_gradient``), so ``U_m`` trains
``q(z | x_m)`` alone.

Incomplete samples (MultiVae refuses them). The joint encoder is a
:class:`~multivae.nn.joint.MaskedJointEncoder`: it takes the values and the presence mask, so
``q(z | X_O)`` depends on the observed modalities only and ``J`` is a valid ELBO of ``log
p(X_O)``. Each ``U_m`` bounds ``log p(x_m)``. A sample with nothing observed contributes exactly
0. ``complete_only=True`` gives ``J`` of incomplete samples weight 0 (the references' joint term
sees complete samples only: MultiVae refuses the others, the authors' mask drops their joint
term); the ``U_m`` still train on every observed modality. In the ``joint`` stage a batch without
a complete sample then has no usable sample and the training loop skips its step.

Inference (:meth:`TELBO.posterior`) given a subset ``S``: the joint encoder where ``S∩O`` is
every modality; otherwise the product of the experts ``q(z | x_m)``, ``m in S∩O``, without the
prior expert (one expert: ``q(z | x_m)`` itself, the paper's unimodal inference; MultiVae raises
for larger subsets), and ``N(0, I)`` where ``S∩O`` is empty. The joint NLL's proposal is the
masked joint encoder ``q(z | X_O)`` (with ``complete_only``, which never trains it on incomplete
patterns, the posterior above).

Deliberate differences from the reference code (MultiVae's ``telbo_model.py``):

* Its stage-2 KL uses the joint encoder's log-variance in place of the unimodal one
  (``1 + log_var - mod_mu^2 - mod_log_var.exp()``); ours is the unimodal KL above.
* Its stages switch at epoch ``warmup + 1`` but reset the optimizer at ``warmup``, so the last
  joint epoch restarts from the best checkpoint with a fresh optimizer; here the stages are the
  training loop's (``training.stage_epochs: {joint: 10}`` is its ``warmup: 10``), each with
  its own optimizer from its first epoch.
* Its stage 2 still computes the joint ELBO, and it toggles ``requires_grad_`` inside
  ``forward``; here the frozen modules are declared (:meth:`TELBO.frozen_modules`).
* Its ``uses_likelihood_rescaling`` defaults the weights to ``max_k dim_k / dim_m``; here they
  are the modalities' ``weight`` (1 by default), to be set to those values for its recipe.
* Incomplete samples train, and subsets of two or more modalities condition, as above.

Randomness: the ``joint`` stage draws one standard normal tensor ``(N, latent_dim)``, the
``unimodal`` stage one ``(M, N, latent_dim)`` (every modality's, absent ones included), and
``stop_gradient`` the first then the second, all from torch's global generator.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

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
from multivae.nn.architectures import ArchitectureConfig
from multivae.nn.fusion import LOGVAR_BOUNDS
from multivae.nn.joint import build_masked_joint_encoder
from multivae.objectives import kl_standard_normal
from multivae.registry import register_model


@dataclass
class TELBOConfig(ModelConfig):
    """Configuration of :class:`TELBO`.

    Attributes:
        schedule: ``two_stage`` (stages ``joint`` then ``unimodal``, MultiVae's) or
            ``stop_gradient`` (one stage, the paper's).
        unimodal_weights: Modality -> ``gamma_m``, the weight of its log-likelihood in its own
            unimodal ELBO; a modality not listed uses its ``weight`` (the joint term's
            ``lambda_m``).
        complete_only: The joint ELBO scores complete samples only (see the module docstring).
        joint_feature_dim: Size of the features each modality contributes to the joint encoder.
        joint_hidden: Hidden sizes of the joint encoder's MLP head.
        joint_encoders: Architecture of the joint encoder's feature network, per modality; a
            modality not listed uses its own encoder's architecture.
    """

    schedule: Literal["two_stage", "stop_gradient"] = "two_stage"
    unimodal_weights: dict[str, float] = field(default_factory=dict)
    complete_only: bool = False
    joint_feature_dim: int = 128
    joint_hidden: tuple[int, ...] = (512,)
    joint_encoders: dict[str, ArchitectureConfig] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        for option in ("unimodal_weights", "joint_encoders"):
            unknown = sorted(set(getattr(self, option)) - set(self.modalities))
            if unknown:
                raise ConfigError(
                    f"telbo: {option} names unknown modalities {unknown}; expected some of "
                    f"{list(self.modalities)}"
                )
        negative = {m: w for m, w in self.unimodal_weights.items() if w < 0}
        if negative:
            raise ConfigError(f"telbo: unimodal_weights must be >= 0, found {negative}")
        if self.joint_feature_dim < 1:
            raise ConfigError(
                f"telbo: joint_feature_dim must be >= 1, found {self.joint_feature_dim}"
            )
        if any(size < 1 for size in self.joint_hidden):
            raise ConfigError(
                f"telbo: joint_hidden sizes must be >= 1, found {list(self.joint_hidden)}"
            )


@register_model
class TELBO(MultimodalVAE):
    """TELBO (Vedantam et al. 2018): a joint ELBO, then unimodal ELBOs through fixed decoders.

    Args:
        config: The model's config.
    """

    name: ClassVar[str] = "telbo"
    config_class: ClassVar[type[ModelConfig]] = TELBOConfig
    declared_capabilities: ClassVar[Capabilities] = Capabilities(multi_stage=True)
    stages: tuple[str, ...] = ("joint", "unimodal")
    variant_configs: ClassVar[dict[str, dict[str, Any]]] = {
        "stop-gradient": {"schedule": "stop_gradient"},
    }
    restore_best_between_stages: ClassVar[bool] = True
    """The ``unimodal`` stage fits the unimodal encoders to the decoders it freezes, which are
    the decoders the model keeps: so it starts from the ``joint`` stage's best weights (as
    MultiVae's trainer does), not from its last epoch's."""
    config: TELBOConfig

    def __init__(self, config: TELBOConfig) -> None:
        super().__init__(config)
        if config.schedule == "stop_gradient":
            self.stages = ("main",)
            self.stage = self.stages[0]
        self.unimodal_weights = {
            m: config.unimodal_weights.get(m, spec.weight) for m, spec in config.modalities.items()
        }
        """``gamma_m`` of every modality, in the model's order."""
        self.joint_encoder = build_masked_joint_encoder(
            {
                name: (
                    config.joint_encoders.get(name, spec.encoder),
                    spec.shape,
                    spec.num_categories,
                )
                for name, spec in config.modalities.items()
            },
            config.joint_feature_dim,
            config.joint_hidden,
            2 * config.latent_dim,
        )

    def frozen_modules(self, stage: str) -> list[str]:
        """``joint``: the unimodal encoders; ``unimodal``: everything else; ``main``: none."""
        if stage == "joint":
            return ["encoders"]
        if stage == "unimodal":
            return ["joint_encoder", "decoders", "likelihoods"]
        return []

    def joint_posterior(self, batch: Batch, mask: torch.Tensor) -> GaussianPosterior:
        """``q(z | X_A)`` from the masked joint encoder, ``A`` the modalities ``mask`` holds.

        Args:
            batch: The data.
            mask: ``(M, N)`` the modalities to encode (already restricted to observed ones).
        """
        mean, logvar = self.joint_encoder(batch.data, mask).float().chunk(2, dim=-1)
        return GaussianPosterior(mean, logvar.clamp(*LOGVAR_BOUNDS))

    def joint_elbo(
        self, batch: Batch, presence: torch.Tensor, usable: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``J``'s reconstruction ``sum_{m in O} lambda_m log p(x_m | z)`` and KL, each ``(N,)``.

        Only the cells of ``usable`` samples are decoded; the reconstruction is 0 elsewhere.
        """
        posterior = self.joint_posterior(batch, presence)
        z = posterior.rsample(1)[0]
        cells = presence & usable
        latents = dict.fromkeys(self.modalities, z)
        reconstruction = self.decoded_log_likelihoods(latents, batch, cells).sum(0)
        return reconstruction, kl_standard_normal(posterior.mean, posterior.logvar)

    def unimodal_elbos(
        self, batch: Batch, presence: torch.Tensor, *, detach_params: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Each ``U_m``'s reconstruction ``gamma_m log p(x_m | z_m)`` and KL, each ``(M, N)``.

        Exactly 0 where the modality is absent. ``detach_params``: the decoders and likelihoods
        get no gradient from the reconstruction (the stop-gradient schedule).
        """
        means, logvars = self.unimodal_posteriors(batch)
        z = GaussianPosterior(means, logvars).rsample(1)[0]
        latents = {name: z[i] for i, name in enumerate(self.modalities)}
        log_p = self.decoded_log_likelihoods(
            latents, batch, presence, weighted=False, detach_params=detach_params
        )
        reconstruction = torch.stack(
            [self.unimodal_weights[name] * log_p[i] for i, name in enumerate(self.modalities)]
        )
        zero = torch.zeros((), dtype=means.dtype, device=means.device)
        kl = torch.where(presence, kl_standard_normal(means, logvars), zero)
        return reconstruction, kl

    def objective(self, batch: Batch) -> Objective:
        """The loss of the current stage per sample (see the module docstring).

        ``reconstruction`` and ``kl`` are the stage's: ``J``'s in ``joint``; the sums over
        ``O`` of the ``U_m``'s in ``unimodal``; in ``main`` the averages over the available
        terms, so that ``loss = kl - reconstruction`` in every stage.
        """
        presence = self.condition_mask(batch, None)
        observed = presence.any(0)
        if self.stage == "unimodal":
            reconstruction, kl = self.unimodal_elbos(batch, presence, detach_params=False)
            parts = {"reconstruction": reconstruction.sum(0), "kl": kl.sum(0)}
            return Objective(parts["kl"] - parts["reconstruction"], parts).where(observed)
        joint_usable = presence.all(0) if self.config.complete_only else observed
        reconstruction, kl = self.joint_elbo(batch, presence, joint_usable)
        if self.stage == "joint":
            parts = {"reconstruction": reconstruction, "kl": kl}
            return Objective(kl - reconstruction, parts).where(joint_usable)
        unimodal_reconstruction, unimodal_kl = self.unimodal_elbos(
            batch, presence, detach_params=True
        )
        zero = torch.zeros((), dtype=kl.dtype, device=kl.device)
        terms = (presence.sum(0) + joint_usable.long()).to(kl.dtype).clamp(min=1.0)
        reconstruction = torch.where(joint_usable, reconstruction, zero)
        kl = torch.where(joint_usable, kl, zero)
        parts = {
            "reconstruction": (reconstruction + unimodal_reconstruction.sum(0)) / terms,
            "kl": (kl + unimodal_kl.sum(0)) / terms,
        }
        return Objective(parts["kl"] - parts["reconstruction"], parts).where(observed)

    def posterior(self, batch: Batch, cond: Sequence[str] | None = None) -> GaussianPosterior:
        """``q(z | observed cond modalities)``: the joint encoder if all are there, else a product.

        Args:
            batch: The data.
            cond: Modalities to condition on (all by default); absent ones are left out per
                sample. Only their encoders run (the joint encoder only when ``cond`` is every
                modality).
        """
        product = self.product_posterior(batch, cond, prior_expert=False)
        if cond is not None and set(self.modalities) - set(cond):
            return product
        mask = self.condition_mask(batch, cond)
        joint = self.joint_posterior(batch, mask)
        complete = mask.all(0).unsqueeze(-1)
        return GaussianPosterior(
            torch.where(complete, joint.mean, product.mean),
            torch.where(complete, joint.logvar, product.logvar),
        )

    def joint_proposal(
        self, batch: Batch, gen: Sequence[str] | None, n_samples: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The masked joint encoder given the observed ``gen`` modalities (the NLL's proposal).

        With ``complete_only`` the joint encoder never trained on incomplete patterns: the
        proposal is then :meth:`posterior`.
        """
        if self.config.complete_only:
            return super().joint_proposal(batch, gen, n_samples)
        posterior = self.joint_posterior(batch, self.condition_mask(batch, gen))
        z = posterior.rsample(n_samples)
        return z, posterior.log_prob(z)
