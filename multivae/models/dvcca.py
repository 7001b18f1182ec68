"""DVCCA: a shared latent inferred from one primary view, with optional private latents.

Wang, Yan, Lee and Livescu, "Deep Variational Canonical Correlation Analysis", arXiv:1610.03454
(2016). Reference implementation: multi-view-AE's ``dvcca.py`` (commit 4a8ea95).

VCCA (``private_dim: 0``): one shared latent ``z`` with prior ``N(0, I)`` and posterior
``q(z | x_p)`` from the primary view ``p`` alone (``primary_modality``, the first modality by
default); every decoder reconstructs its view from ``z``. VCCA-private (``private_dim > 0``): each
view ``m`` also has a private latent ``h_m`` with prior ``N(0, I)`` and posterior ``q(h_m |
x_m)``, and decoder ``m`` takes ``[z, h_m]`` (the reference gives ``h_m`` the dimension of
``z``). The loss of a sample observed on the views ``O``::

    loss = beta [KL(q(z | x_p) || p(z)) + sum_{m in O} KL(q(h_m | x_m) || p(h_m))]
           - sum_{m in O} lambda_m log p(x_m | z, h_m),   z ~ q(z | x_p), h_m ~ q(h_m | x_m),

with one draw of ``z`` shared by every decoder (``lambda_m`` is the modality's ``weight``).

Incomplete samples (the reference has no rule for them): absent views are not reconstructed and
have no private KL. Without the primary view a sample has no posterior for ``z``:

* ``missing_primary="drop"`` (default): the sample counts only if ``p`` is observed; otherwise
  it contributes exactly 0 (value and gradient, :meth:`~multivae.models.base.Objective.where`)
  and a batch without any such sample skips its optimizer step.
* ``missing_primary="prior"``: ``q(z) = p(z)`` for it, so the sample scores ``E_{p(z)}[...]``,
  a valid but loose lower bound on ``log p(X_O)``. Its shared KL is 0; a sample with nothing
  observed contributes 0.

Inference: :meth:`DVCCA.posterior` given ``cond`` is ``q(z | x_p)`` and needs ``p`` in
``cond`` (the prior for a sample lacking ``p``); :meth:`DVCCA.conditionable` says a subset
without ``p`` cannot be conditioned on, so metrics report it as not applicable instead of
substituting the prior. Private latents come from their posterior for observed conditioning
views and from the prior otherwise (the base's ``generation_privates``). The joint NLL is the
base's importance-sampled estimate with proposal ``q(z | x_p) prod_{m in O} q(h_m | x_m)``
(the prior for ``z`` when ``p`` is absent or not scored).

Networks: the primary view's encoder outputs ``[z | h_p]`` (means, then log-variances); every
other view's encoder outputs its ``h_m`` alone. Without private latents the other views have no
encoder at all (a parameterless :class:`AbsentEncoder` stands in), since nothing is inferred
from them.

Deliberate differences from the reference code (multi-view-AE ``dvcca.py``):

* One draw of ``z`` is shared by every decoder; the reference draws ``z`` separately for each.
* Each private KL is counted once. The reference's private variant returns the last view's
  concatenated ``[z, h]`` distribution as the shared posterior, so the last view's private KL
  is counted twice.
* The primary view is an option (the reference uses view 0), and its shared and private parts
  come from one network with one output head per half; the reference has a shared encoder and
  a separate private encoder for it.
* Incomplete samples follow the rules above (the reference needs complete data).
* The reference's sparse option (variational dropout on ``z``, as mcVAE's) is left out: its
  default config sets ``sparse: True`` with threshold 0, which silently disables it, and with
  private latents its thresholding uses a freshly created, untrained ``log_alpha``. mcVAE
  (``sparse: true``) offers the sparse prior.
* One optimizer over every parameter; the reference builds an Adam per encoder and decoder
  under Lightning's automatic optimization.
* The decoders' likelihoods are the project's (:class:`~multivae.models.base.ModalityConfig`):
  the reference's Gaussian decoders learn one log-variance per feature, initialized at -3; the
  closest here is ``likelihood: normal, learn_scale: true, scale: 0.2231`` (``exp(-3 / 2)``).

Defaults (the reference's): ``beta = 1``, no private latents; multi-view-AE trains with Adam at
1e-3 and ``z_dim`` 5.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from multivae.config import ConfigError
from multivae.data.batch import Batch
from multivae.models.base import Capabilities, ModelConfig, MultimodalVAE, Objective
from multivae.nn.posteriors import GaussianPosterior, Posterior
from multivae.objectives import kl_standard_normal
from multivae.registry import register_model


@dataclass
class DVCCAConfig(ModelConfig):
    """Options of :class:`DVCCA`.

    Attributes:
        primary_modality: The view the shared latent is inferred from; the first modality when
            ``None``.
        private_dim: Dimension of each view's private latent (0: plain VCCA, none).
        beta: Weight of every KL term, shared and private (1 in the reference).
        missing_primary: A sample without the primary view is left out of the loss (``drop``)
            or scored with the prior as the shared posterior (``prior``).
    """

    primary_modality: str | None = None
    private_dim: int = 0
    beta: float = 1.0
    missing_primary: Literal["drop", "prior"] = "drop"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.primary_modality is not None and self.primary_modality not in self.modalities:
            raise ConfigError(
                f"dvcca: primary_modality must be one of the modalities {list(self.modalities)}, "
                f"found {self.primary_modality!r}"
            )
        if self.private_dim < 0:
            raise ConfigError(f"dvcca: private_dim must be >= 0, found {self.private_dim}")
        if not (math.isfinite(self.beta) and self.beta >= 0):
            raise ConfigError(f"dvcca: beta must be a finite number >= 0, found {self.beta}")


class AbsentEncoder(nn.Module):
    """The encoder slot of a view DVCCA infers nothing from: no parameters, never called.

    Args:
        modality: The view's name, for the error message.
    """

    def __init__(self, modality: str) -> None:
        super().__init__()
        self.modality = modality

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        """Refuse: without private latents only the primary view is encoded."""
        raise ValueError(
            f"dvcca: modality {self.modality!r} has no encoder (without private latents the "
            f"shared latent is inferred from the primary modality alone)"
        )


@register_model
class DVCCA(MultimodalVAE):
    """DVCCA (Wang et al. 2016): ``q(z | x_p)`` from a primary view, optional private latents.

    Args:
        config: The model's config.
    """

    name: ClassVar[str] = "dvcca"
    config_class: ClassVar[type[ModelConfig]] = DVCCAConfig
    declared_capabilities: ClassVar[Capabilities] = Capabilities(private_latents=True)
    variant_configs: ClassVar[dict[str, dict[str, Any]]] = {
        "private": {"private_dim": 1, "beta": 0.5},
        "prior": {"missing_primary": "prior"},
        "private-prior": {"private_dim": 2, "missing_primary": "prior"},
    }
    config: DVCCAConfig

    def __init__(self, config: DVCCAConfig) -> None:
        super().__init__(config)
        if config.private_dim == 0:
            # The base class builds an encoder per modality; the views other than the primary
            # have nothing to infer, so no parameter may stand there untrained.
            for name in self.modalities:
                if name != self.primary:
                    self.encoders[name] = AbsentEncoder(name)

    @property
    def primary(self) -> str:
        """The primary view: ``primary_modality``, else the first modality."""
        return self.config.primary_modality or next(iter(self.config.modalities))

    def private_dim(self, modality: str) -> int:
        """``private_dim`` for every view (0: none)."""
        return self.config.private_dim

    def encoder_latent_dim(self, modality: str) -> int:
        """``[z | h_p]`` for the primary view, ``h_m`` alone for the others.

        Without private latents the other views get an :class:`AbsentEncoder`; the size given
        for them (1) only sizes the network the base class builds before it is replaced.
        """
        if modality == self.primary:
            return self.config.latent_dim + self.config.private_dim
        return max(self.config.private_dim, 1)

    def conditionable(self, subset: Sequence[str], target: str | None = None) -> bool:
        """Only subsets that hold the primary view: ``z`` is inferred from it alone."""
        return self.primary in subset and super().conditionable(subset, target)

    # ----------------------------------------------------------------------------------------
    # Posteriors

    def shared_posterior(
        self, mean: torch.Tensor, logvar: torch.Tensor, available: torch.Tensor
    ) -> GaussianPosterior:
        """``q(z | x_p)`` where ``available`` ``(N,)`` is true, the prior ``N(0, I)`` elsewhere."""
        keep = available.unsqueeze(-1)
        zero = torch.zeros((), dtype=mean.dtype, device=mean.device)
        return GaussianPosterior(torch.where(keep, mean, zero), torch.where(keep, logvar, zero))

    def primary_posterior(self, batch: Batch, available: torch.Tensor) -> GaussianPosterior:
        """:meth:`shared_posterior` from the primary view's encoder on ``batch``."""
        mean, logvar = self.encode_modality(self.primary, batch.data[self.primary])
        shared = self.config.latent_dim
        return self.shared_posterior(mean[..., :shared], logvar[..., :shared], available)

    def posterior(self, batch: Batch, cond: Sequence[str] | None = None) -> GaussianPosterior:
        """``q(z | x_p)``, or the prior for a sample without ``x_p``; ``cond`` must hold ``p``.

        Raises:
            ValueError: If ``cond`` lacks the primary view (see :meth:`conditionable`).
        """
        self.check_batch(batch)
        mask = self.condition_mask(batch, cond)
        if cond is not None and self.primary not in cond:
            raise ValueError(
                f"dvcca: the shared latent is inferred from the primary modality "
                f"{self.primary!r} alone; cond {list(cond)} does not hold it "
                f"(conditionable({list(cond)}) is false)"
            )
        return self.primary_posterior(batch, mask[self.modalities.index(self.primary)])

    def private_posteriors(
        self,
        batch: Batch,
        cond: Sequence[str] | None = None,
        outputs: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> dict[str, Posterior]:
        """``q(h_m | x_m)`` of every ``cond`` view (all by default), with private latents.

        The primary view's is the second part of its encoder's output, every other view's the
        whole of it. Only the ``cond`` encoders run (none when ``outputs`` is given).
        """
        names = [m for m in self.private_dims if cond is None or m in cond]
        if not names:
            return {}
        encoded = self.encoder_outputs(batch, names) if outputs is None else outputs
        posteriors: dict[str, Posterior] = {}
        for name in names:
            start = self.config.latent_dim if name == self.primary else 0
            mean, logvar = encoded[name]
            posteriors[name] = GaussianPosterior(mean[..., start:], logvar[..., start:])
        return posteriors

    def joint_proposal(
        self, batch: Batch, gen: Sequence[str] | None, n_samples: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``q(z | x_p)`` where ``p`` is scored and observed, the prior elsewhere.

        The prior is a valid (loose) proposal for samples without ``x_p``, and the only one
        when ``gen`` leaves ``p`` out: ``z`` then has nothing else to be inferred from.
        """
        mask = self.condition_mask(batch, gen)
        if gen is None or self.primary in gen:
            posterior = self.primary_posterior(batch, mask[self.modalities.index(self.primary)])
        else:
            zeros = torch.zeros(
                (mask.shape[1], self.config.latent_dim), device=mask.device, dtype=torch.float32
            )
            posterior = GaussianPosterior(zeros, zeros)
        z = posterior.rsample(n_samples)
        return z, posterior.log_prob(z)

    # ----------------------------------------------------------------------------------------
    # Objective

    def objective(self, batch: Batch) -> Objective:
        """The DVCCA loss per sample (module docstring).

        Randomness, in order (tests replay it): one ``torch.randn((1, N, D))``, the noise of
        ``z``; then, for each view in the config's order when ``private_dim > 0``, one
        ``torch.randn((1, N, private_dim))``, the noise of ``h_m``.

        Parts: ``reconstruction`` (``sum_{m in O} lambda_m log p(x_m | z, h_m)``), ``kl``
        (``KL(q(z | x_p) || p)``, 0 where ``q`` is the prior) and, with private latents,
        ``kl_private`` (``sum_{m in O} KL(q(h_m | x_m) || p)``), so ``loss = -reconstruction
        + beta * (kl + kl_private)``.
        """
        mask = self.condition_mask(batch, None)
        present_primary = mask[self.modalities.index(self.primary)]
        usable = present_primary if self.config.missing_primary == "drop" else mask.any(0)
        names = [m for m in self.modalities if m == self.primary or self.private_dim(m) > 0]
        outputs = self.encoder_outputs(batch, names)
        mean, logvar = outputs[self.primary]
        shared = self.config.latent_dim
        posterior = self.shared_posterior(mean[..., :shared], logvar[..., :shared], present_primary)
        z = posterior.rsample(1)[0]
        zero = torch.zeros((), dtype=z.dtype, device=z.device)
        kl = torch.where(
            present_primary, kl_standard_normal(posterior.mean, posterior.logvar), zero
        )

        latents = dict.fromkeys(self.modalities, z)
        kl_private = torch.zeros_like(kl)
        for name, private in self.private_posteriors(batch, None, outputs).items():
            assert isinstance(private, GaussianPosterior)  # from private_posteriors above
            latents[name] = torch.cat([z, private.rsample(1)[0]], dim=-1)
            observed = mask[self.modalities.index(name)]
            kl_private = kl_private + torch.where(
                observed, kl_standard_normal(private.mean, private.logvar), zero
            )
        # Decoders score only the observed views of the samples that count.
        cells = mask & usable
        reconstruction = self.decoded_log_likelihoods(latents, batch, cells).sum(0)
        loss = -reconstruction + self.config.beta * (kl + kl_private)
        parts = {"reconstruction": reconstruction, "kl": kl}
        if self.private_dims:
            parts["kl_private"] = kl_private
        return Objective(loss, parts).where(usable)
