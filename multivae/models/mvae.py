"""MVAE: a product of experts with a prior expert (Wu & Goodman 2018, arXiv:1802.05335).

A shared latent ``z`` with prior ``p(z) = N(0, I)``, decoders ``p(x_m | z)`` and one encoder per
modality; the posterior given a subset ``S`` of modalities is the product of the standard normal
prior and the experts of ``S``: ``q(z | X_S) ∝ p(z) prod_{m in S} q~(z | x_m)``.

The training objective is the paper's sub-sampled one: the sum of the ELBOs of the joint set, of
each single modality and of ``k`` random subsets::

    loss = -[ELBO(X) + sum_m ELBO(x_m) + sum_{j=1..k} ELBO(X_{S_j})],
    ELBO(X_S) = sum_{m in S} log p(x_m | z) - w * KL(q(z | X_S) || p(z)),  z ~ q(z | X_S)

Each subset's ELBO reconstructs the modalities of that subset only, as in the paper. ``w`` rises
linearly from 0 to ``beta`` over ``warmup`` epochs of :attr:`progress`, which the training loop
advances every step, so the annealing is per step as in the paper's code.

Missing modalities: in each term an absent expert drops out of the product (zero precision) and
its modality out of the reconstruction, so a term scores the observed part ``S ∩ O`` of its
subset. A term with no observed member contributes exactly zero for that sample. Each sample's
loss is the sum of its terms; the batch loss is the mean over all samples.

The ``k`` random subsets are drawn, for each training batch, without replacement among the
subsets of 2 to ``M - 1`` modalities (the others are already in the objective), listed smallest
first in :func:`itertools.combinations` order, by one ``torch.randperm`` on torch's global
generator; there are none in evaluation mode. The terms are ordered joint, single modalities
(in the config's order), random subsets, and the reparameterisation noise is one standard normal
tensor of shape ``(terms, N, latent_dim)`` drawn after the subsets.

Deliberate differences from the reference code (MultiVae):

* The loss is the mean over the batch of each sample's sum of terms; the reference divides each
  term by the number of samples where it is available, which weighs the samples of rarely
  observed subsets more.
* ``k`` larger than the number of subsets of 2 to ``M - 1`` modalities is a config error (the
  reference silently uses no random subset with two modalities).
* The random subsets come from torch's generator (the reference uses NumPy's), so seeding torch
  makes a run reproducible.
* The warmup follows fractional epochs from 0, so the KL weight starts at 0.
* In evaluation mode the KL weight is ``beta`` (see :attr:`MVAE.kl_weight`), so validation
  losses of all epochs are comparable; the reference instead keeps no best model before
  ``warmup + 1`` epochs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
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
from multivae.nn.fusion import product_of_experts, subset_masks, subsets
from multivae.objectives import kl_standard_normal
from multivae.registry import register_model


@dataclass
class MVAEConfig(ModelConfig):
    """Configuration of :class:`MVAE`.

    Attributes:
        beta: Weight of the KL terms once the warmup is over.
        warmup: Epochs over which the KL weight rises linearly from 0 to ``beta`` (0: none).
        subsampling: Add the ELBO of each single modality and of ``k`` random subsets to the
            joint ELBO (the paper's sub-sampled objective); false trains the joint ELBO alone.
        k: Number of random subsets per training batch, among the subsets of 2 to ``M - 1``
            modalities; needs ``subsampling``.
    """

    beta: float = 1.0
    warmup: float = 10.0
    subsampling: bool = True
    k: int = 0


@register_model
class MVAE(MultimodalVAE):
    """Multimodal VAE with a product-of-experts posterior and the sub-sampled objective.

    Args:
        config: The model's config.
    """

    name = "mvae"
    config_class = MVAEConfig
    declared_capabilities = Capabilities(missing_modalities=True)
    variant_configs: ClassVar[dict[str, dict[str, Any]]] = {
        "joint-only": {"subsampling": False, "warmup": 0.0},
        "random-subsets": {"k": 2},
    }
    config: MVAEConfig

    def __init__(self, config: MVAEConfig) -> None:
        super().__init__(config)
        for option in ("beta", "warmup", "k"):
            value = getattr(config, option)
            if value < 0:
                raise ConfigError(f"{self.name} config: {option} must be >= 0, found {value}")
        full = len(self.modalities)
        self.random_candidates: tuple[tuple[str, ...], ...] = tuple(
            subset for subset in subsets(self.modalities, min_size=2) if len(subset) < full
        )
        """The subsets the ``k`` random terms are drawn from."""
        if config.k > 0 and not config.subsampling:
            raise ConfigError(
                f"{self.name} config: k = {config.k} random subsets belong to the sub-sampled "
                "objective; expected subsampling = true or k = 0"
            )
        if config.k > len(self.random_candidates):
            raise ConfigError(
                f"{self.name} config: k must be at most the number of subsets of 2 to M - 1 "
                f"modalities, {len(self.random_candidates)} with M = {full}; found k = {config.k}"
            )
        singles = [(m,) for m in self.modalities] if config.subsampling else []
        # With one modality the joint set is the single modality: keep one term for it.
        self.fixed_subsets: tuple[tuple[str, ...], ...] = tuple(
            dict.fromkeys([self.modalities, *singles])
        )
        """The subsets whose ELBOs every forward pass includes: joint, then single modalities."""

    def objective_subsets(self) -> list[tuple[str, ...]]:
        """The subsets of the next objective: fixed ones, then ``k`` random ones when training."""
        chosen = list(self.fixed_subsets)
        if self.training and self.config.k > 0:
            order = torch.randperm(len(self.random_candidates))[: self.config.k]
            chosen += [self.random_candidates[i] for i in order.tolist()]
        return chosen

    def objective(self, batch: Batch) -> Objective:
        """``loss = -reconstruction + beta * kl_warmup * kl`` per sample, summed over the terms.

        ``reconstruction`` and ``kl`` are summed over the sub-sampled terms (see the module
        docstring).
        """
        presence = self.condition_mask(batch, None)
        chosen = self.objective_subsets()
        membership, _ = subset_masks(chosen, self.modalities, presence)
        experts = membership.unsqueeze(-1) & presence.unsqueeze(0)  # (T, M, N)
        means, logvars = self.unimodal_posteriors(batch)
        n_modalities, n_samples, latent_dim = means.shape
        n_terms = len(chosen)
        # The terms become extra samples of one product of experts: index t * N + n.
        flat = (n_modalities, n_terms * n_samples, latent_dim)
        mean, logvar = product_of_experts(
            means.unsqueeze(1).expand(n_modalities, n_terms, n_samples, latent_dim).reshape(flat),
            logvars.unsqueeze(1).expand(n_modalities, n_terms, n_samples, latent_dim).reshape(flat),
            experts.transpose(0, 1).reshape(n_modalities, n_terms * n_samples),
            prior_expert=True,
        )
        mean = mean.reshape(n_terms, n_samples, latent_dim)
        logvar = logvar.reshape(n_terms, n_samples, latent_dim)
        z = GaussianPosterior(mean, logvar).rsample(1)[0]
        zero = torch.zeros((), dtype=mean.dtype, device=mean.device)
        reconstruction = torch.zeros(n_samples, dtype=mean.dtype, device=mean.device)
        for name in self.modalities:
            # Each decoder runs only on the latents of the terms that reconstruct its modality
            # (joint + its own single term + the random subsets holding it), not on all T.
            rows = [t for t, subset in enumerate(chosen) if name in subset]
            params = self.decode(z[rows], [name])[name]
            log_p = self.likelihood(name).log_prob(params, batch.data[name])  # (T_m, N)
            reconstruction = reconstruction + torch.where(batch.mask[name], log_p, zero).sum(0)
        # A term with no observed member is the prior itself; masking states the rule instead of
        # relying on its KL being zero.
        kl = torch.where(experts.any(1), kl_standard_normal(mean, logvar), zero).sum(0)
        warmup = self.kl_warmup
        loss = -reconstruction + self.config.beta * warmup * kl
        return Objective(loss, {"reconstruction": reconstruction, "kl": kl}, kl_weight=warmup)

    def posterior(self, batch: Batch, cond: Sequence[str] | None = None) -> GaussianPosterior:
        """The product of the prior and the observed experts of ``cond`` (all by default).

        Args:
            batch: The data.
            cond: Modalities to condition on; absent ones are left out per sample.
        """
        return self.product_posterior(batch, cond, prior_expert=True)
