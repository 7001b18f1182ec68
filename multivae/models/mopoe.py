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

Deliberate differences from the reference code: the loss is a per-sample mean; the posterior
given a subset ``A`` of conditioning modalities is the mixture over the configured subsets made
of observed members of ``A`` (the posterior the model is trained with when only ``A`` is
observed), where the reference samples conditional generations from the product of ``A``
alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch

from multivae.config import ConfigError
from multivae.data.batch import Batch
from multivae.models.base import Capabilities, ModelConfig, ModelOutput, MultimodalVAE
from multivae.models.mmvae import MixturePosterior
from multivae.nn.fusion import mixture_of_products, normal_log_density, subset_masks, subsets
from multivae.objectives import kl_standard_normal, log_mean_exp
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
    """

    beta: float = 1.0
    subsets: tuple[tuple[str, ...], ...] | None = None
    prior_expert: Literal["full", "all", "none"] = "full"
    mixture_sampling: Literal["split", "random"] = "split"
    private_dim: int = 0
    beta_style: float = 1.0

    def __post_init__(self) -> None:
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
    capabilities: ClassVar[Capabilities] = Capabilities(private_latents=True)
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

    def encoder_latent_dim(self, modality: str) -> int:
        """Shared plus private dimensions: an encoder gives the posteriors of ``z`` and ``w_m``."""
        return self.config.latent_dim + self.config.private_dim

    def decoder_latent_dim(self, modality: str) -> int:
        """Each decoder takes ``[z, w_m]``."""
        return self.config.latent_dim + self.config.private_dim

    def generation_latent(
        self, z: torch.Tensor, modality: str, private: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``[z, w_m]`` with ``w_m`` given, or drawn from its prior ``N(0, I)``."""
        shape = (*z.shape[:-1], self.config.private_dim)
        if private is None:
            private = torch.randn(shape, dtype=z.dtype, device=z.device)
        else:
            private = private.to(dtype=z.dtype, device=z.device).expand(shape)
        return torch.cat([z, private], dim=-1)

    def private_latent_means(self, batch: Batch) -> torch.Tensor | None:
        """Posterior means of the private latents ``(M, N, private_dim)``, or ``None``."""
        if self.config.private_dim == 0:
            return None
        return self.split_posteriors(batch)[2]

    def split_posteriors(
        self, batch: Batch, cond: Sequence[str] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Every modality's shared and private posteriors (only ``cond``'s encoders run).

        Returns:
            Shared means and log-variances ``(M, N, D)``, private means and log-variances
            ``(M, N, private_dim)``.
        """
        mean, logvar = self.unimodal_posteriors(batch, cond)
        shared = self.config.latent_dim
        return mean[..., :shared], logvar[..., :shared], mean[..., shared:], logvar[..., shared:]

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
        count = available.sum(0)
        if self.config.mixture_sampling == "split":
            position = torch.arange(available.shape[1], device=available.device)
            rank = position * count // available.shape[1]
        else:
            # Rank among the available subsets; a sample with none draws 0 and matches nothing.
            rank = (torch.rand(count.shape, device=available.device) * count).long()
        return available & (available.long().cumsum(0) == rank + 1)

    # ----------------------------------------------------------------------------------------
    # Objective and inference

    def forward(self, batch: Batch) -> ModelOutput:
        """The negative MoPoE ELBO, averaged over the batch.

        Randomness, in order (tests replay it): with ``mixture_sampling="random"``, one
        ``torch.rand((N,))`` for the subset choice; then ``torch.randn((N, D))`` for ``z`` and
        ``torch.randn((M, N, private_dim))`` for the private latents.

        Metrics: ``reconstruction`` (``sum_m log p(x_m | z, w_m)``), ``kl`` (the mean KL of the
        available subsets) and, with private latents, ``kl_private``.
        """
        self.check_batch(batch)
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
        metrics = {
            "reconstruction": torch.where(usable, reconstruction, zero).detach().mean(),
            "kl": kl.detach().mean(),
        }
        if self.config.private_dim > 0:
            metrics["kl_private"] = torch.where(usable, kl_private, zero).detach().mean()
        return ModelOutput(loss=-objective.mean(), metrics=metrics)

    def posterior(self, batch: Batch, cond: Sequence[str] | None = None) -> MixturePosterior:
        """The mixture over the subsets made of observed ``cond`` modalities (all by default).

        A sample with no such subset gets the prior ``N(0, I)``.
        """
        self.check_batch(batch)
        shared_mean, shared_logvar, _, _ = self.split_posteriors(batch, cond)
        return self._mixture(shared_mean, shared_logvar, self.condition_mask(batch, cond))

    def _mixture(
        self, shared_mean: torch.Tensor, shared_logvar: torch.Tensor, mask: torch.Tensor
    ) -> MixturePosterior:
        mean, logvar, available = self.subset_posteriors(shared_mean, shared_logvar, mask)
        return MixturePosterior(
            torch.cat([mean, torch.zeros_like(mean[:1])]),
            torch.cat([torch.exp(0.5 * logvar), torch.ones_like(mean[:1])]),
            torch.cat([available, ~available.any(0, keepdim=True)]),
            "normal",
        )

    @staticmethod
    def private_latents(
        mean: torch.Tensor, logvar: torch.Tensor, from_posterior: torch.Tensor, n_samples: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Private latents from their posterior where ``from_posterior``, else from the prior.

        Args:
            mean: ``(M, N, private_dim)`` posterior means.
            logvar: ``(M, N, private_dim)`` posterior log-variances.
            from_posterior: ``(M, N)`` where to draw from ``q(w_m | x_m)``.
            n_samples: Draws per sample.

        Returns:
            ``w`` of shape ``(n_samples, M, N, private_dim)`` and ``log p(w) - log q(w)``
            summed over the modalities drawn from their posterior, ``(n_samples, N)``.
        """
        noise = torch.randn((n_samples, *mean.shape), dtype=mean.dtype, device=mean.device)
        use = from_posterior.unsqueeze(-1)
        w = torch.where(use, mean + torch.exp(0.5 * logvar) * noise, noise)
        zero = torch.zeros((), dtype=mean.dtype)
        log_ratio = normal_log_density(w, zero, zero) - normal_log_density(w, mean, logvar)
        return w, torch.where(from_posterior, log_ratio, zero).sum(1)

    @torch.no_grad()
    def predict(
        self,
        batch: Batch,
        cond: Sequence[str],
        gen: Sequence[str] | None = None,
        n_samples: int = 1,
    ) -> dict[str, torch.Tensor]:
        """Generate modalities ``gen`` (all by default) from the observed ``cond`` modalities.

        The shared latent comes from :meth:`posterior`; a generated modality's private latent
        comes from its own posterior where it is an observed ``cond`` modality (reconstruction)
        and from the prior otherwise (cross-generation). Shapes as the base's ``predict``.
        """
        gen = self.modalities if gen is None else tuple(gen)
        unknown = sorted(set(gen) - set(self.modalities))
        if unknown:
            raise ValueError(
                f"{self.name}: unknown modalities {unknown} in gen; known: {list(self.modalities)}"
            )
        self.check_batch(batch)
        mask = self.condition_mask(batch, cond)
        shared_mean, shared_logvar, private_mean, private_logvar = self.split_posteriors(
            batch, cond
        )
        z = self._mixture(shared_mean, shared_logvar, mask).rsample(n_samples)
        w, _ = self.private_latents(private_mean, private_logvar, mask, n_samples)
        out = {}
        for name in gen:
            latent = torch.cat([z, w[:, self.modalities.index(name)]], dim=-1)
            mean = self.likelihood(name).mean(self.decode(latent, [name])[name])
            out[name] = mean[0] if n_samples == 1 else mean
        return out

    @torch.no_grad()
    def nll(
        self,
        batch: Batch,
        cond: Sequence[str] | None = None,
        gen: Sequence[str] | None = None,
        k: int = 1000,
        chunk_size: int = 100,
    ) -> torch.Tensor:
        """Importance-sampled negative log-likelihood per sample, shape ``(N,)``.

        The base's estimates (see :meth:`MultimodalVAE.nll`) over the joint latent ``(z, w)``.
        Joint (``cond is None``): ``z ~ q(z | x_gen)`` and ``w_m ~ q(w_m | x_m)`` for the scored
        modalities, ``-log (1/K) sum_k p(x_gen | z_k, w_k) p(z_k) p(w_k) / (q(z_k | x_gen)
        q(w_k))``. Conditional: ``z ~ q(z | x_cond)``, ``w_m`` from ``q(w_m | x_m)`` for
        modalities both in ``cond`` and scored and from its prior otherwise, and
        ``-log (1/K) sum_k p(x_gen | z_k, w_k)``.
        """
        proposal_modalities = gen if cond is None else cond
        posterior = self.posterior(batch, proposal_modalities)
        gen_mask = self.condition_mask(batch, gen)
        from_posterior = self.condition_mask(batch, proposal_modalities) & gen_mask
        _, _, private_mean, private_logvar = self.split_posteriors(batch)
        chunks = []
        for start in range(0, k, chunk_size):
            count = min(chunk_size, k - start)
            z = posterior.rsample(count)
            w, log_ratio_w = self.private_latents(
                private_mean, private_logvar, from_posterior, count
            )
            # Only the scored modalities are decoded.
            params = {
                name: self.decode(torch.cat([z, w[:, i]], dim=-1), [name])[name]
                for i, name in enumerate(self.modalities)
                if gen is None or name in gen
            }
            log_p_x = self.log_likelihoods(params, batch, gen_mask).sum(0)
            if cond is None:
                log_p_x = log_p_x + self.prior_log_prob(z) - posterior.log_prob(z) + log_ratio_w
            chunks.append(log_p_x)
        return -log_mean_exp(torch.cat(chunks), dim=0)
