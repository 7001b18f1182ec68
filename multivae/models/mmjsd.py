"""mmJSD: a mixture of unimodal experts regularized by a Jensen-Shannon divergence.

Sutter, Daunhawer and Vogt, "Multimodal Generative Learning Utilizing Jensen-Shannon-Divergence",
NeurIPS 2020 (arXiv:2006.08242). Authors' code: thomassutter/mmjsd.

Every modality ``m`` has a Gaussian expert ``q_m = q(z | x_m)``; the prior ``q_0 = p(z) =
N(0, I)`` is one more expert. The *dynamic prior* ``f`` is the ``pi``-weighted geometric mean of
``q_0`` and the experts (the paper's "alpha-PoE"): precision ``sum_k pi_k / var_k`` and mean
``(sum_k pi_k mean_k / var_k) / precision``, with uniform weights ``pi_k``. The loss of a sample
observed on ``O`` is the negative of::

    sum_{m in O} λ_m log p(x_m | z, w_m) - beta * sum_{k in O + {0}} pi_k KL(q_k || f)
                                         - beta_style * sum_{m in O} KL(q(w_m | x_m) || p),

with ``pi_k = 1 / (|O| + 1)`` and one ``z`` per sample drawn from the mixture of the observed
experts ``(1/|O|) sum_{m in O} q_m`` (the prior's weight set to 0, as in the authors' code). The
middle sum bounds the Jensen-Shannon divergence of the experts from above (the ``regularizer``
part, without ``beta``). With uniform weights ``f`` has the mean of the product of experts with
the prior, ``PoE_{O + {0}}``, and ``|O| + 1`` times its variance. With ``private_dim > 0`` (the
paper's factorized representation) each modality also has a private latent ``w_m`` with its own
posterior and prior ``N(0, I)``; decoder ``m`` takes ``[z, w_m]`` and the divergence applies to
the shared part only.

The mixture sample is, by default, the authors' deterministic split of the batch across the
experts (``mixture_sampling="split"``: sample ``i`` of ``N`` takes its observed expert of rank
``floor(i * |O_i| / N)``; the authors put the remainder in the last expert instead of spreading
it), or a uniform draw among the observed experts (``"random"``). Batches are shuffled in
training, so each sample meets every expert uniformly over epochs either way.

Missing modalities follow the restriction principle: a sample observed on ``O`` gets the
objective of the sub-dataset ``X_O`` (experts ``O + {0}`` with ``pi_k = 1 / (|O| + 1)`` in ``f``
and in the divergence, the mixture over ``O``, reconstruction and private KLs over ``O``).
Everything else is removed with ``torch.where``, so an absent modality's encoder and decoder get
exactly zero gradient, even when it is absent from the whole batch. A sample with nothing
observed contributes exactly 0 and still counts in the batch mean.

The posterior given a subset ``S`` (``posterior``, generation, the NLL proposal) is the mixture
of the observed experts of ``S``, ``MoE_{S ∩ O}``, as the authors' conditional generation (the
prior where ``S ∩ O`` is empty); ``conditioning="dynamic_prior"`` uses ``f`` over ``(S ∩ O) +
{0}`` instead, as multi-view-AE does.

Defaults are the authors' MNIST-SVHN-Text flags (``flags_svhnmnist.py``): ``beta=5``,
``beta_style=3``, uniform ``pi``, no KL annealing (their run script ``job_mst.sh`` sets
``beta=2.5``, a shared dimension of 20 and no private latents). The authors multiply their
style KLs by ``beta`` as well (an effective weight of 15, times a per-modality factor); here
``beta_style`` is the private KL's whole weight, as in the project's MoPoE.

Deliberate differences from multi-view-AE's ``mmJSD``, whose bugs are not reproduced:

* its mixture split includes the prior expert, so about ``1/(M+1)`` of each batch reconstructs
  from prior draws; here the prior has weight 0 in the mixture, as in the authors' code;
* its divergence leaves out ``pi_0 KL(p || f)`` yet divides by ``M + 1``; here the prior's term
  is included;
* its private variant drops the prior from ``f``; here ``f`` always includes it;
* it infers with ``f``; here the default is the mixture, as in the authors' code.

The loss is a per-sample mean over the batch (the authors normalize by the batch size as well).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch

from multivae.config import ConfigError
from multivae.data.batch import Batch
from multivae.models.base import Capabilities, ModelConfig, MultimodalVAE, Objective
from multivae.nn.fusion import product_of_experts, select_components
from multivae.nn.posteriors import GaussianPosterior, MixturePosterior
from multivae.objectives import kl_normal
from multivae.registry import register_model


def dynamic_prior(
    means: torch.Tensor, logvars: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The dynamic prior ``f``: the weighted geometric mean of ``N(0, I)`` and present experts.

    With weights ``pi_k = 1 / (|O| + 1)`` over the present experts ``O`` and the prior,
    ``precision = (1 + sum_{m in O} 1/var_m) / (|O| + 1)`` and ``mean = (sum_{m in O} mean_m /
    var_m) / (1 + sum_{m in O} 1/var_m)``: the product of experts with the prior, its variance
    times ``|O| + 1``. A sample with no present expert gets ``N(0, I)``.

    Args:
        means: ``(M, N, D)`` expert means.
        logvars: ``(M, N, D)`` expert log-variances.
        mask: ``(M, N)`` presence of each expert.

    Returns:
        Mean and log-variance of ``f``, each ``(N, D)``.
    """
    mean, logvar = product_of_experts(means, logvars, mask, prior_expert=True)
    experts = mask.sum(0).to(logvar.dtype).unsqueeze(-1)
    return mean, logvar + torch.log1p(experts)


def jensen_shannon_regularizer(
    means: torch.Tensor,
    logvars: torch.Tensor,
    mask: torch.Tensor,
    prior_mean: torch.Tensor,
    prior_logvar: torch.Tensor,
) -> torch.Tensor:
    """``sum_{k in O + {0}} pi_k KL(q_k || f)`` per sample, ``(N,)``, with ``pi_k = 1/(|O|+1)``.

    ``q_0 = N(0, I)``; an upper bound on the Jensen-Shannon divergence of the experts. Absent
    experts become ``N(0, I)`` before their KL (so the masked-out branch stays finite), then
    contribute exactly 0.

    Args:
        means: ``(M, N, D)`` expert means.
        logvars: ``(M, N, D)`` expert log-variances.
        mask: ``(M, N)`` presence of each expert.
        prior_mean: ``(N, D)`` the mean of the dynamic prior ``f`` (:func:`dynamic_prior`).
        prior_logvar: ``(N, D)`` its log-variance.
    """
    zero = torch.zeros((), dtype=means.dtype, device=means.device)
    present = mask.unsqueeze(-1)
    experts = kl_normal(
        torch.where(present, means, zero),
        torch.where(present, logvars, zero),
        prior_mean,
        prior_logvar,
    )
    standard = torch.zeros_like(prior_mean)
    prior_term = kl_normal(standard, standard, prior_mean, prior_logvar)
    total = torch.where(mask, experts, zero).sum(0) + prior_term
    return total / (1 + mask.sum(0)).to(total.dtype)


@dataclass
class MMJSDConfig(ModelConfig):
    """Configuration of :class:`MMJSD`.

    Attributes:
        beta: Weight of the Jensen-Shannon regularizer (the authors' MNIST-SVHN-Text value).
        mixture_sampling: How each sample's mixture component is chosen in training: ``split``
            (the authors' deterministic split of the batch) or ``random`` (uniformly among the
            sample's observed experts).
        private_dim: Dimension of each modality's private latent ``w_m`` (0: none).
        beta_style: Weight of the private latents' KL terms.
        conditioning: The posterior given a subset ``S`` of modalities: ``mixture`` (of the
            observed experts of ``S``, as the authors) or ``dynamic_prior`` (``f`` over them and
            the prior, as multi-view-AE).
    """

    beta: float = 5.0
    mixture_sampling: Literal["split", "random"] = "split"
    private_dim: int = 0
    beta_style: float = 3.0
    conditioning: Literal["mixture", "dynamic_prior"] = "mixture"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.private_dim < 0:
            raise ConfigError(f"mmjsd: private_dim must be >= 0, found {self.private_dim}")
        for name in ("beta", "beta_style"):
            value = getattr(self, name)
            if value < 0:
                raise ConfigError(f"mmjsd: {name} must be >= 0, found {value}")


@register_model
class MMJSD(MultimodalVAE):
    """mmJSD (Sutter et al. 2020): mixture of experts, Jensen-Shannon regularizer to f.

    Args:
        config: The model's config.
    """

    name: ClassVar[str] = "mmjsd"
    config_class: ClassVar[type[ModelConfig]] = MMJSDConfig
    declared_capabilities: ClassVar[Capabilities] = Capabilities(private_latents=True)
    variant_configs: ClassVar[dict[str, dict[str, Any]]] = {
        "private": {"private_dim": 2, "beta_style": 0.5},
        "random": {"mixture_sampling": "random"},
        "dynamic-prior-inference": {"conditioning": "dynamic_prior", "private_dim": 2},
    }
    config: MMJSDConfig

    def private_dim(self, modality: str) -> int:
        """Every modality has a private latent of ``private_dim`` (0: none)."""
        return self.config.private_dim

    def select_experts(self, mask: torch.Tensor) -> torch.Tensor:
        """Which observed expert each sample's mixture draw comes from, by ``mixture_sampling``.

        :func:`multivae.nn.fusion.select_components` over the experts.

        Args:
            mask: ``(M, N)`` observed experts.

        Returns:
            ``(M, N)`` one-hot choice among each sample's observed experts (all false for a
            sample with none).
        """
        return select_components(mask, self.config.mixture_sampling)

    def objective(self, batch: Batch) -> Objective:
        """The negative mmJSD objective per sample.

        Randomness, in order (tests replay it): with ``mixture_sampling="random"``, one
        ``torch.rand((N,))`` for the expert choice; then ``torch.randn((N, D))`` for ``z``; then,
        with private latents, ``torch.randn((1, N, private_dim))`` for each modality in order.

        Parts: ``reconstruction`` (``sum_{m in O} λ_m log p(x_m | z, w_m)``), ``regularizer``
        (``sum_{k in O + {0}} pi_k KL(q_k || f)``, the Jensen-Shannon bound, without ``beta``)
        and, with private latents, ``kl_private``.
        """
        mask = self.condition_mask(batch, None)
        outputs = self.encoder_outputs(batch)
        shared_mean, shared_logvar = self.unimodal_posteriors(batch, outputs=outputs)
        zero = torch.zeros((), dtype=shared_mean.dtype, device=shared_mean.device)

        prior_mean, prior_logvar = dynamic_prior(shared_mean, shared_logvar, mask)
        regularizer = jensen_shannon_regularizer(
            shared_mean, shared_logvar, mask, prior_mean, prior_logvar
        )

        chosen = self.select_experts(mask).unsqueeze(-1)
        mean = torch.where(chosen, shared_mean, zero).sum(0)
        logvar = torch.where(chosen, shared_logvar, zero).sum(0)
        z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)

        private = self.private_posteriors(batch, outputs=outputs)
        latents, kl_private = {}, torch.zeros_like(regularizer)
        for i, name in enumerate(self.modalities):
            w = private[name].rsample(1)[0] if name in private else None
            latents[name] = self.generation_latent(z, name, w)
            if name in private:
                kl = self.private_prior(name).kl(private[name])
                kl_private = kl_private + torch.where(mask[i], kl, zero)
        reconstruction = self.decoded_log_likelihoods(latents, batch, mask).sum(0)

        usable = mask.any(0)
        objective = (
            reconstruction - self.config.beta * regularizer - self.config.beta_style * kl_private
        )
        objective = torch.where(usable, objective, zero)
        parts = {
            "reconstruction": torch.where(usable, reconstruction, zero),
            "regularizer": torch.where(usable, regularizer, zero),
        }
        if self.config.private_dim > 0:
            parts["kl_private"] = torch.where(usable, kl_private, zero)
        return Objective(-objective, parts)

    def posterior(
        self, batch: Batch, cond: Sequence[str] | None = None
    ) -> MixturePosterior | GaussianPosterior:
        """The posterior given the observed ``cond`` modalities (all by default).

        With ``conditioning="mixture"``, the uniform mixture of the observed ``cond`` experts
        (the prior ``N(0, I)`` for a sample with none); with ``"dynamic_prior"``, the dynamic
        prior ``f`` of those experts and the prior (:func:`dynamic_prior`; ``N(0, I)`` for a
        sample with none).
        """
        self.check_batch(batch)
        mask = self.condition_mask(batch, cond)
        mean, logvar = self.unimodal_posteriors(batch, cond)
        if self.config.conditioning == "dynamic_prior":
            return GaussianPosterior(*dynamic_prior(mean, logvar, mask))
        return MixturePosterior(
            torch.cat([mean, torch.zeros_like(mean[:1])]),
            torch.cat([torch.exp(0.5 * logvar), torch.ones_like(mean[:1])]),
            torch.cat([mask, ~mask.any(0, keepdim=True)]),
            "normal",
        )
