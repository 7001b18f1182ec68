"""CMVAE: MMVAE+ with a mixture prior whose components are clusters.

Palumbo, Manduchi, Laguna, Chopard and Vogt, "Deep Generative Clustering with Multimodal
Diffusion Variational Autoencoders", ICLR 2024 (OpenReview k5THrhXDV3; the author list is from
memory). Reference code: MultiVae's ``cmvae_model.py``.

The generative model is MMVAE+'s (:mod:`multivae.models.mmvaeplus`: private latents ``w_m``,
auxiliary distributions ``r_n``, the looser IWAE bound with DReG by default) with a cluster
variable above the shared latent: ``c ~ Cat(pi)``, ``pi = softmax(rho)`` (``rho`` learned,
initialized at 0), ``z | c ~ F(mu_c, 1)`` (``F`` the latent family, Laplace by default; ``mu_c``
learned, initialized ``U(-1, 1)``; unit scales fixed), and ``w_m ~ F(0, 1)`` fixed. The paper
writes the prior term of each importance weight as an expectation over
``q(c|z) = pi_c p(z|c) / sum_c' pi_c' p(z|c')``; since ``q(c|z)`` is exactly ``p(c|z)``::

    E_{q(c|z)} [log pi_c + log p(z|c) - log q(c|z)] = log sum_c pi_c p(z|c) = log p(z),

so CMVAE is MMVAE+ with ``log p(z)`` the logsumexp of :class:`~multivae.nn.priors.ClusterPrior`;
everything else (missing modalities, subset inference, the joint NLL) is MMVAE+'s. Clusters are
predicted post hoc (:meth:`CMVAE.predict_clusters`) and pruned post hoc
(:meth:`CMVAE.prune_clusters`).

Deliberate differences from the reference code:

* ``log p(z)`` is the logsumexp, not the explicit expectation with ``q(c|z) + 1e-20``: exact,
  stable, and free of ``1e-20 * (-inf)`` terms once clusters are pruned.
* Pruning is a saved boolean mask (the prior's ``active`` buffer): pruned clusters get
  ``pi_c = 0`` through ``torch.where`` and the weights renormalize over the others, so the loss
  stays finite. The reference sets ``rho_c = -inf`` in a new Parameter (the optimizer keeps the
  stale one, and the training loss becomes ``-inf``) and turns ``n_clusters`` into a tensor.
* Cluster prediction votes only among each sample's observed modalities (``-1`` where none is
  observed); the reference ignores the masks.
* The loss is a per-sample mean (the reference sums over the batch); randomness comes only
  from torch's generator.
* ``learn_shared_prior`` is refused: ``p(w_m)`` is fixed and ``p(z)`` is the cluster prior.
* A posterior given no observed modality falls back to MMVAE+'s centred ``F(0, 1)`` (a proposal
  for the NLL, which stays unbiased), not to the cluster mixture.
* The diffusion decoders of the paper are not implemented (nor are they in the reference).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from multivae.config import ConfigError
from multivae.data.batch import Batch
from multivae.models.base import Capabilities, ModelConfig
from multivae.models.mmvaeplus import MMVAEPlus, MMVAEPlusConfig
from multivae.nn.posteriors import family_rsample
from multivae.nn.priors import ClusterPrior
from multivae.registry import register_model


@dataclass
class CMVAEConfig(MMVAEPlusConfig):
    """Configuration of :class:`CMVAE` (MMVAE+'s options, see :class:`MMVAEPlusConfig`).

    Attributes:
        n_clusters: ``C``, the clusters of the prior over ``z`` (>= 1; the reference's default
            10, its PolyMNIST runs 40 before pruning).
    """

    n_clusters: int = 10

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n_clusters < 1:
            raise ConfigError(f"cmvae: n_clusters must be >= 1, found {self.n_clusters}")
        if self.learn_shared_prior:
            raise ConfigError(
                "cmvae: learn_shared_prior must be false (p(w) is fixed and p(z) is the cluster "
                "prior), found true"
            )


@register_model
class CMVAE(MMVAEPlus):
    """CMVAE (Palumbo et al. 2024): MMVAE+ with a learned cluster mixture as the prior of ``z``.

    Args:
        config: The model's config.
    """

    name: ClassVar[str] = "cmvae"
    config_class: ClassVar[type[ModelConfig]] = CMVAEConfig
    declared_capabilities: ClassVar[Capabilities] = Capabilities(
        private_latents=True, importance_sampled=True, clustering=True
    )
    variant_configs: ClassVar[dict[str, dict[str, Any]]] = {
        "few-clusters": {"n_clusters": 2, "samples_per_expert": 2, "private_dim": 2},
        "elbo": {"n_clusters": 3, "bound": "elbo", "private_dim": 2},
        "normal-iwae": {
            "latent_distribution": "normal",
            "bound": "iwae",
            "samples_per_expert": 2,
            "private_dim": 2,
        },
        "softplus-dreg": {
            "latent_distribution": "normal_with_softplus",
            "samples_per_expert": 2,
            "private_dim": 2,
        },
        "auxiliary-generation": {
            "private_generation": "auxiliary",
            "bound": "elbo",
            "beta": 2.5,
            "samples_per_expert": 2,
            "private_dim": 3,
        },
    }
    config: CMVAEConfig
    shared_prior: ClusterPrior

    def __init__(self, config: CMVAEConfig) -> None:
        super().__init__(config)
        # p(z) is the cluster prior; p(w_m) stays MMVAE+'s w slice of its joint prior (unit
        # scales, since learn_shared_prior is refused).
        self.shared_prior = ClusterPrior(config.latent_dim, config.n_clusters, self.family)

    @property
    def active_clusters(self) -> torch.Tensor:
        """Which clusters are not pruned, ``(C,)`` booleans (saved with the model)."""
        return self.shared_prior.active

    # ----------------------------------------------------------------------------------------
    # Clusters

    def _expert_cluster_posteriors(
        self, batch: Batch, use_mean: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per expert: ``z ~ q(z|x_m)`` ``(M, N, D)``, ``log p(c|z)`` ``(M, N, C)``, the mask."""
        self.check_batch(batch)
        mask = self.condition_mask(batch, None)
        loc, scale, _, _ = self.expert_parameters(batch)
        z = loc if use_mean else family_rsample(self.family, loc, scale, 1)[0]
        return z, self.shared_prior.cluster_log_posterior(z), mask

    @torch.no_grad()
    def predict_clusters(self, batch: Batch, use_mean: bool = False) -> torch.Tensor:
        """Each sample's cluster, ``(N,)`` integers: a majority vote over its observed modalities.

        Modality ``m`` votes ``argmax_c p(c | z_m)`` with ``z_m ~ q(z | x_m)`` (its mean with
        ``use_mean``), among the active clusters; ties go to the smallest cluster index (as
        ``torch.mode``). A sample with no observed modality gets ``-1``.
        """
        _, log_posterior, mask = self._expert_cluster_posteriors(batch, use_mean)
        votes = F.one_hot(log_posterior.argmax(-1), self.config.n_clusters)  # (M, N, C)
        counts = (votes * mask.unsqueeze(-1)).sum(0)  # (N, C)
        winner = counts.argmax(-1)  # the first maximum: the smallest index on ties
        return torch.where(mask.any(0), winner, torch.full_like(winner, -1))

    @torch.no_grad()
    def _pruning_statistics(self, batches: Iterable[Batch]) -> tuple[float, torch.Tensor]:
        """The mean pruning criterion ``h`` over samples, and each cluster's assigned mass.

        ``h = beta mean_m [H(p(c|z_m)) / log C_active] - mean_m [log p(z_m) / D]`` per sample
        (the reference's ``sum_c p(c|z)(log p(z|c) + log pi_c - log p(c|z))`` is ``log p(z)``),
        means over the observed modalities; the mass of cluster ``c`` sums ``p(c|z_m)`` over
        the observed ``(m, sample)`` pairs.
        """
        active = int(self.active_clusters.sum())
        total, count = 0.0, 0
        mass = torch.zeros(self.config.n_clusters, device=self.active_clusters.device)
        for batch in batches:
            z, log_posterior, mask = self._expert_cluster_posteriors(batch, use_mean=False)
            posterior = log_posterior.exp()
            zero = torch.zeros((), dtype=posterior.dtype, device=posterior.device)
            # p log p is 0 for pruned clusters (p = 0), written with where: no 0 * (-inf).
            entropy = -torch.where(posterior > 0, posterior * log_posterior, zero).sum(-1)
            per_expert = (
                self.config.beta * entropy / math.log(active)
                - self.prior_log_prob(z) / self.config.latent_dim
            )  # (M, N)
            observed = mask.sum(0)
            h = torch.where(mask, per_expert, zero).sum(0) / observed.clamp(min=1)
            total += float(h[observed > 0].sum())
            count += int((observed > 0).sum())
            mass += torch.where(mask.unsqueeze(-1), posterior, zero).sum((0, 1)).float()
        if count == 0:
            raise ValueError("cmvae: prune_clusters needs samples with an observed modality")
        return total / count, mass

    @torch.no_grad()
    def prune_clusters(self, batches: Iterable[Batch]) -> dict[int, float]:
        """Prune clusters post hoc, as the reference's ``prune_clusters``; sets the mask.

        From the active clusters down to 2: score the data (mean ``h``, see
        :meth:`_pruning_statistics`), then deactivate the active cluster with the least
        assigned mass. The active set with the lowest mean ``h`` is kept. ``batches`` is read
        once per active count (a list of batches, or a re-iterable loader).

        Returns:
            Active cluster count -> mean ``h`` at that count.

        Raises:
            ValueError: With fewer than 2 active clusters.
        """
        if int(self.active_clusters.sum()) < 2:
            raise ValueError(
                f"cmvae: prune_clusters needs >= 2 active clusters, found "
                f"{int(self.active_clusters.sum())}"
            )
        batches = list(batches)
        original = self.active_clusters.clone()
        scores: dict[int, float] = {}
        masks: dict[int, torch.Tensor] = {}
        while True:
            active = int(self.active_clusters.sum())
            score, mass = self._pruning_statistics(batches)
            scores[active], masks[active] = score, self.active_clusters.clone()
            if active == 2:
                break
            least = torch.where(self.active_clusters, mass, math.inf).argmin()
            self.active_clusters[least] = False
        best = min(scores, key=lambda kept: scores[kept])
        self.active_clusters.copy_(masks[best] & original)
        return scores

    def latent_report(self) -> dict[str, Any]:
        """The clusters: their number, how many are active and the active ones' weights."""
        weights = self.shared_prior.log_weights().detach().exp()
        active = self.active_clusters
        return {
            "n_clusters": self.config.n_clusters,
            "active_clusters": int(active.sum()),
            "cluster_weights": [float(weight) for weight in weights[active]],
        }
