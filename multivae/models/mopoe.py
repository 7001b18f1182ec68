"""MoPoE: a multimodal VAE whose joint posterior is a mixture of products of experts over subsets.

Sutter, Daunhawer and Vogt, "Generalized Multimodal ELBO", ICLR 2021 (arXiv:2105.02470).

Every non-empty subset ``S`` of the modalities (or a configured list of subsets) has a posterior
``q_S``, the product of its members' Gaussian experts; the joint posterior is their uniform
mixture. The loss is the negative of::

    sum_m log p(x_m | z, w_m) - beta * (1/|S|) sum_S KL(q_S || p)
                              - beta_style * sum_m KL(q(w_m | x_m) || p),

with one ``z`` drawn from the mixture per sample and, when ``private_dim > 0``, a private latent
``w_m`` per modality drawn from its own posterior (the decoder of modality ``m`` takes
``[z, w_m]``; generation draws ``w_m`` from its prior ``N(0, I)`` unless ``x_m`` is observed).

As in the reference code (Sutter's MoPoE repository):

* the prior expert ``N(0, I)`` joins only the product of the full set (``prior_expert="full"``);
* the mixture sample is a deterministic split of the batch across the subsets (sample ``i`` of
  ``N`` takes subset ``floor(i * |S| / N)``), a stratified choice that gives every subset an
  equal share of each batch; the reference puts the remainder in the last subset instead of
  spreading it. Batches are shuffled in training, so each sample still meets every subset
  uniformly over epochs. ``mixture_sampling="random"`` draws the subset at random instead.

Missing modalities: a subset is available to a sample when all its members are observed. The
KL term averages over the sample's available subsets only, the mixture sample comes from one of
them (the split counts ``floor(i * |A_i| / N)`` among sample ``i``'s available subsets ``A_i``,
which is the reference's split when nothing is missing), and only observed modalities are scored
and have a private KL. Everything else is removed with ``torch.where``, so an absent modality's
encoder gets exactly zero gradient. A sample with no available subset (possible only with a
configured list of subsets) cannot be explained by the model: its objective is 0.

Conditioning on a subset ``A`` (``conditioning="product"``, the default) uses the product of the
observed experts of ``A``, with the prior expert when ``A`` holds every modality and
``prior_expert="full"`` (every product with ``"all"``, none with ``"none"``): the posterior the
paper's code and the reference use for ``A``. ``conditioning="mixture"`` uses instead the
mixture over the configured subsets made of observed members of ``A`` (the posterior the model
is trained with when only ``A`` is observed). Measured on the parity benchmark
(``benchmarks/reference_parity.py``) the product gives the better cross-modal coherence, so it
is the default.

Deliberate difference from the reference code: the loss is a per-sample mean.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch

from multivae.config import ConfigError
from multivae.data.batch import Batch
from multivae.models.base import Capabilities, ModelConfig, MultimodalVAE, Objective
from multivae.nn.fusion import (
    mixture_of_products,
    product_of_experts,
    select_components,
    subset_masks,
    subsets,
)
from multivae.nn.posteriors import GaussianPosterior, MixturePosterior
from multivae.objectives import kl_standard_normal
from multivae.registry import register_model


@dataclass
class MoPoEConfig(ModelConfig):
    """Configuration of :class:`MoPoE`.

    Attributes:
        beta: Weight of the KL term of the shared latent.
        subsets: The subsets whose products make up the mixture, as lists of modality names;
            ``None`` means every non-empty subset. Stored in this order (the default lists
            smaller subsets first).
        prior_expert: Which products include the prior ``N(0, I)`` as an expert: ``full`` (only
            the product of all modalities, as the reference), ``all`` or ``none``.
        mixture_sampling: How each sample's mixture component is chosen in training: ``split``
            (the reference's deterministic split of the batch) or ``random`` (uniformly among
            the sample's available subsets).
        private_dim: Dimension of each modality's private latent ``w_m`` (0: none).
        beta_style: Weight of the private latents' KL terms.
        conditioning: The posterior given a subset ``A`` of modalities: ``product`` (of
            ``A``'s observed experts, as the reference) or ``mixture`` (over the configured
            subsets within ``A``).
    """

    beta: float = 1.0
    subsets: tuple[tuple[str, ...], ...] | None = None
    prior_expert: Literal["full", "all", "none"] = "full"
    mixture_sampling: Literal["split", "random"] = "split"
    private_dim: int = 0
    beta_style: float = 1.0
    conditioning: Literal["product", "mixture"] = "product"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.private_dim < 0:
            raise ConfigError(f"mopoe: private_dim must be >= 0, found {self.private_dim}")
        if self.subsets is None:
            return
        if not self.subsets:
            raise ConfigError("mopoe: subsets must list at least one subset, found none")
        seen: set[frozenset[str]] = set()
        for i, subset in enumerate(self.subsets):
            unknown = sorted(set(subset) - set(self.modalities))
            if not subset or unknown or len(set(subset)) != len(subset):
                raise ConfigError(
                    f"mopoe: subsets[{i}] must be a non-empty list of distinct modalities among "
                    f"{list(self.modalities)}, found {list(subset)}"
                )
            if frozenset(subset) in seen:
                raise ConfigError(f"mopoe: subsets[{i}] {list(subset)} is listed twice")
            seen.add(frozenset(subset))


@register_model
class MoPoE(MultimodalVAE):
    """MoPoE (Sutter et al. 2021): mixture of products of experts over subsets of modalities.

    Args:
        config: The model's config.
    """

    name: ClassVar[str] = "mopoe"
    config_class: ClassVar[type[ModelConfig]] = MoPoEConfig
    declared_capabilities: ClassVar[Capabilities] = Capabilities(private_latents=True)
    variant_configs: ClassVar[dict[str, dict[str, Any]]] = {
        # Private latents or not, with either way of sampling the mixture.
        "private": {"private_dim": 2, "mixture_sampling": "random"},
        "private-split": {"private_dim": 2},
        "random": {"mixture_sampling": "random"},
        "mixture-conditioning": {"conditioning": "mixture", "prior_expert": "all"},
    }
    config: MoPoEConfig

    def __init__(self, config: MoPoEConfig) -> None:
        super().__init__(config)
        chosen = subsets(self.modalities) if config.subsets is None else config.subsets
        self.subsets: tuple[tuple[str, ...], ...] = tuple(tuple(s) for s in chosen)
        """The mixture's subsets, in the order of the ``(S, ...)`` tensors."""
        full = len(self.modalities)
        self.subset_prior_expert: tuple[bool, ...] = tuple(
            config.prior_expert == "all" or (config.prior_expert == "full" and len(s) == full)
            for s in self.subsets
        )
        """Whether each subset's product includes the prior expert."""

    # ----------------------------------------------------------------------------------------
    # Sizes of the shared and private parts

    def private_dim(self, modality: str) -> int:
        """Every modality has a private latent of ``private_dim`` (0: none)."""
        return self.config.private_dim

    def split_posteriors(
        self, batch: Batch, cond: Sequence[str] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Every modality's shared and private posteriors (only ``cond``'s encoders run).

        Returns:
            Shared means and log-variances ``(M, N, D)``, private means and log-variances
            ``(M, N, private_dim)`` (placeholders outside ``cond``).
        """
        outputs = self.encoder_outputs(batch, cond)
        shared_mean, shared_logvar = self.unimodal_posteriors(batch, cond, outputs)
        rows = shared_mean.shape[1]
        shared = self.config.latent_dim
        empty = shared_mean.new_zeros((rows, self.config.private_dim))
        private_mean = torch.stack(
            [outputs[m][0][..., shared:] if m in outputs else empty for m in self.modalities]
        )
        private_logvar = torch.stack(
            [outputs[m][1][..., shared:] if m in outputs else empty for m in self.modalities]
        )
        return shared_mean, shared_logvar, private_mean, private_logvar

    def subset_posteriors(
        self, shared_mean: torch.Tensor, shared_logvar: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The product of every subset and which samples can use it.

        Args:
            shared_mean: ``(M, N, D)``.
            shared_logvar: ``(M, N, D)``.
            mask: ``(M, N)`` which modalities may be used.

        Returns:
            Means and log-variances ``(S, N, D)`` and availability ``(S, N)``.
        """
        membership, available = subset_masks(self.subsets, self.modalities, mask)
        prior_expert = torch.tensor(self.subset_prior_expert, device=shared_mean.device)
        mean, logvar = mixture_of_products(shared_mean, shared_logvar, membership, prior_expert)
        return mean, logvar, available

    def select_components(self, available: torch.Tensor) -> torch.Tensor:
        """Which subset each sample's mixture draw comes from, by ``mixture_sampling``.

        Args:
            available: ``(S, N)`` availability of each subset.

        Returns:
            ``(S, N)`` one-hot choice among each sample's available subsets (all false for a
            sample with none).
        """
        return select_components(available, self.config.mixture_sampling)

    # ----------------------------------------------------------------------------------------
    # Objective and inference

    def objective(self, batch: Batch) -> Objective:
        """The negative MoPoE ELBO per sample.

        Randomness, in order (tests replay it): with ``mixture_sampling="random"``, one
        ``torch.rand((N,))`` for the subset choice; then ``torch.randn((N, D))`` for ``z`` and
        ``torch.randn((M, N, private_dim))`` for the private latents.

        Parts: ``reconstruction`` (``sum_m log p(x_m | z, w_m)``), ``kl`` (the mean KL of the
        available subsets) and, with private latents, ``kl_private``.
        """
        mask = self.condition_mask(batch, None)
        shared_mean, shared_logvar, private_mean, private_logvar = self.split_posteriors(batch)
        subset_mean, subset_logvar, available = self.subset_posteriors(
            shared_mean, shared_logvar, mask
        )
        zero = torch.zeros((), dtype=subset_mean.dtype)

        count = available.sum(0)
        kl_subsets = torch.where(available, kl_standard_normal(subset_mean, subset_logvar), zero)
        kl = kl_subsets.sum(0) / count.clamp(min=1)

        chosen = self.select_components(available).unsqueeze(-1)
        mean = torch.where(chosen, subset_mean, zero).sum(0)
        logvar = torch.where(chosen, subset_logvar, zero).sum(0)
        z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)
        private = private_mean + torch.exp(0.5 * private_logvar) * torch.randn_like(private_mean)

        params = {
            name: self.decode(torch.cat([z, private[i]], dim=-1), [name])[name]
            for i, name in enumerate(self.modalities)
        }
        reconstruction = self.log_likelihoods(params, batch, mask).sum(0)
        kl_private_each = kl_standard_normal(private_mean, private_logvar)
        kl_private = torch.where(mask, kl_private_each, zero).sum(0)

        usable = count > 0
        objective = reconstruction - self.config.beta * kl - self.config.beta_style * kl_private
        objective = torch.where(usable, objective, zero)
        parts = {"reconstruction": torch.where(usable, reconstruction, zero), "kl": kl}
        if self.config.private_dim > 0:
            parts["kl_private"] = torch.where(usable, kl_private, zero)
        return Objective(-objective, parts)

    def posterior(
        self, batch: Batch, cond: Sequence[str] | None = None
    ) -> GaussianPosterior | MixturePosterior:
        """The posterior given the observed ``cond`` modalities (all by default).

        With ``conditioning="product"``, the product of the observed ``cond`` experts (and of
        the prior expert as ``prior_expert`` says); with ``"mixture"``, the mixture over the
        configured subsets made of them. A sample with no observed ``cond`` modality gets the
        prior ``N(0, I)``.
        """
        self.check_batch(batch)
        mask = self.condition_mask(batch, cond)
        shared_mean, shared_logvar = self.unimodal_posteriors(batch, cond)
        if self.config.conditioning == "product":
            mean, logvar = product_of_experts(shared_mean, shared_logvar, mask, prior_expert=False)
            count = mask.sum(0)
            with_prior = (
                count == len(self.modalities)
                if self.config.prior_expert == "full"
                else torch.full_like(count, self.config.prior_expert == "all", dtype=torch.bool)
            )
            # Add the prior's unit precision where it joins a product of observed experts.
            with_prior = with_prior & (count > 0)
            precision = torch.exp(-logvar) + with_prior.unsqueeze(-1).to(logvar.dtype)
            mean = mean * torch.exp(-logvar) / precision
            return GaussianPosterior(mean, -torch.log(precision))
        subset_mean, subset_logvar, available = self.subset_posteriors(
            shared_mean, shared_logvar, mask
        )
        return MixturePosterior(
            torch.cat([subset_mean, torch.zeros_like(subset_mean[:1])]),
            torch.cat([torch.exp(0.5 * subset_logvar), torch.ones_like(subset_mean[:1])]),
            torch.cat([available, ~available.any(0, keepdim=True)]),
            "normal",
        )
