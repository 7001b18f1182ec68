"""CVAE: a conditional VAE that generates a main modality given conditioning modalities.

Sohn, Lee, Yan, "Learning Structured Output Representation using Deep Conditional Generative
Models", NeurIPS 2015; the conditional bound is also in Kingma, Rezende, Mohamed, Welling,
"Semi-Supervised Learning with Deep Generative Models", NeurIPS 2014 (arXiv:1406.5298). The
reference code is MultiVae's ``cvae_model.py`` (its docstring cites arXiv:1906.02691).

Roles: a main modality ``y`` (``main_modality``, the first modality by default) and a set ``C`` of
conditioning modalities (``conditioning_modalities``, all the others by default). A modality in
neither is ignored: it has no network and its data is never read. The model is::

    p(y, z | x_C) = p(z | x_C) p(y | z, x_C),    posterior q(z | y, x_C)

* ``p(z | x_C) = N(mu_psi(x_C), sigma_psi^2(x_C))`` from a prior network (``prior_network:
  true``, Sohn et al.'s conditional prior), or ``N(0, I)`` (``false``, MultiVae's default).
* ``q(z | y, x_C)``: a joint encoder over ``{y} + C``.
* ``p(y | z, x_C)``: ``y``'s decoder on ``[z, h_C]``.

Networks. Each modality ``m`` of ``{y} + C`` has one feature network, its configured encoder
(``encoders[m]``, with the ``2 latent_dim`` outputs every model's encoder has), shared by the
three parts. The posterior is a :class:`~multivae.nn.joint.MaskedJointEncoder` head (hidden sizes
``joint_hidden``) over the features of ``{y} + C`` and their presence bits; the prior network is
one (``prior_hidden``) over those of ``C``. The decoder of ``y`` (its configured decoder) takes
``[z, h_C]`` with ``h_C = [f_c(x_c) m_c for c in C, then m_c for c in C]``: the conditioning
features, zeroed where absent, then their presence bits (:meth:`CVAE.decoder_latent_dim`). The
conditioning modalities have no decoder: ``decoders`` holds ``y``'s alone.

The loss per sample, with one draw ``z ~ q(z | y, x_C)`` and the KL in closed form::

    loss = -lambda_y log p(y | z, x_C) + beta KL(q(z | y, x_C) || p(z | x_C))

reported as the parts ``reconstruction`` (``lambda_y log p(y | z, x_C)``) and ``kl``.

Incomplete samples (``missing_conditions``; MultiVae ignores masks and reads zero-filled cells
as data):

* ``drop`` (the default): a sample counts only when ``y`` and every modality of ``C`` are
  observed; ``p(y | x_C)`` needs ``x_C``.
* ``masked``: a sample counts when ``y`` is observed; the networks see the features of the
  observed conditioning modalities and the presence bits, ``(x_c m_c, m_c)``, so the model is
  ``p(y | x_{C_O})`` with ``C_O`` the observed part of ``C``, another (valid) model.

A sample without ``y`` never counts: there is nothing to model. A sample that does not count
contributes exactly 0 (value and gradient, :meth:`Objective.where`) and still counts in the
batch mean; a batch without a counted sample skips its optimizer step. Every network runs on
every batch, masked with ``torch.where``, so the features of an absent modality get exactly zero
gradient.

Inference (what a conditional model can do; :meth:`CVAE.conditionable` answers):

* :meth:`CVAE.posterior` given ``cond``, which must hold all of ``C``: with ``y`` in ``cond``
  (reconstruction), ``q(z | y, x_C)`` for the samples where ``y`` is observed and ``p(z | x_C)``
  for the others; without ``y``, ``p(z | x_C)``. Anything else raises.
* :meth:`CVAE.predict` generates ``y`` alone from such a ``cond``; :meth:`CVAE.sample` raises
  (no unconditional generation). ``shared_prior`` stays ``N(0, I)``: it is the model's prior
  without a prior network, and only the prior network's reference otherwise.
* :meth:`CVAE.nll` is the conditional likelihood ``-log p(y | x_C)``, the only likelihood a CVAE
  defines, importance-sampled with the proposal ``q(z | y, x_C)``::

      -log p(y | x_C) ~ -logmeanexp_k [log p(y | z_k, x_C) + log p(z_k | x_C)
                                       - log q(z_k | y, x_C)],   z_k ~ q(z | y, x_C)

  ``nll(batch)`` and ``nll(batch, cond=C, gen=[y])`` both return it; any other request raises.
  A sample without ``y`` gets 0 (nothing is scored, as the base class's rows with nothing
  observed); with ``missing_conditions="drop"``, a sample with ``y`` but not all of ``C`` gets
  NaN, since the model defines no likelihood there (the metrics skip such rows).

Deliberate differences from the reference code (MultiVae):

* Incomplete samples are dropped or masked as above; the reference reads absent cells as data.
* The decoder takes learned features of ``x_C`` with presence bits; the reference's
  ``ConditionalDecoderMLP`` concatenates the flattened raw ``x_C`` (unusable for a categorical
  modality, and wide for images).
* One feature network per modality serves the encoder, the prior network and the decoder; the
  reference's joint encoder copies the unimodal encoders and keeps only their means, and its
  prior network is whatever the user passes.
* ``posterior`` and ``predict`` accept any ``cond`` holding ``C`` (the reference, only the exact
  sets), and the prior ``N(0, I)`` is drawn on the model's device (the reference's
  ``generate_from_prior`` builds it on the CPU).
* The conditional NLL above; the reference has none for this model.

Defaults are MultiVae's: ``beta = 1``, no prior network, a joint encoder head of two hidden
layers of 512 (``MultipleHeadJointEncoder``). Sohn et al.'s hybrid objective (the GSNN term) is
not implemented, as in MultiVae.

Randomness: :meth:`CVAE.objective` draws one standard normal tensor of shape ``(N,
latent_dim)`` from torch's global generator, the noise of ``z``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from multivae.config import ConfigError, _suggest
from multivae.data.batch import Batch
from multivae.models.base import Capabilities, ModelConfig, MultimodalVAE, Objective
from multivae.nn.fusion import LOGVAR_BOUNDS
from multivae.nn.joint import MaskedJointEncoder
from multivae.nn.posteriors import GaussianPosterior
from multivae.objectives import kl_normal
from multivae.registry import register_model


@dataclass
class CVAEConfig(ModelConfig):
    """Configuration of :class:`CVAE`.

    Attributes:
        main_modality: The generated modality ``y``; the first modality when ``None``.
        conditioning_modalities: The conditioning modalities ``C``; all but ``y`` when
            ``None``.
        prior_network: Learn the prior ``p(z | x_C)`` with a network over ``x_C``; ``N(0, I)``
            otherwise.
        missing_conditions: ``drop``: a sample counts only when ``y`` and all of ``C`` are
            observed; ``masked``: when ``y`` is, the networks seeing which of ``C`` are.
        beta: Weight of the KL term.
        joint_hidden: Hidden sizes of the posterior's head over the features of ``{y} + C``.
        prior_hidden: Hidden sizes of the prior network's head over the features of ``C``.
    """

    main_modality: str | None = None
    conditioning_modalities: list[str] | None = None
    prior_network: bool = False
    missing_conditions: Literal["drop", "masked"] = "drop"
    beta: float = 1.0
    joint_hidden: tuple[int, ...] = (512, 512)
    prior_hidden: tuple[int, ...] = (512, 512)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.beta < 0:
            raise ConfigError(f"cvae: beta must be >= 0, found {self.beta}")
        for option in ("joint_hidden", "prior_hidden"):
            sizes = list(getattr(self, option))
            if any(size < 1 for size in sizes):
                raise ConfigError(f"cvae: {option} sizes must be >= 1, found {sizes}")
        main, _ = self.roles()
        for name, spec in self.modalities.items():
            if name != main and spec.learn_scale:
                raise ConfigError(
                    f"cvae: modality {name!r} has learn_scale, but only the main modality "
                    f"{main!r} is scored: its scale would never be learned"
                )

    def roles(self) -> tuple[str, tuple[str, ...]]:
        """``y`` and ``C`` (in the modalities' order), defaults resolved and checked.

        Raises:
            ConfigError: For an unknown name, ``y`` inside ``C``, a repeated name or an empty
                ``C``.
        """
        names = list(self.modalities)
        if len(names) < 2:
            raise ConfigError(
                f"cvae: expected at least two modalities (a main one and a conditioning one), "
                f"found {names}"
            )
        main = names[0] if self.main_modality is None else self.main_modality
        if main not in self.modalities:
            raise ConfigError(
                f"cvae: main_modality {main!r} is not a modality; expected one of {names}."
                f"{_suggest(main, names)}"
            )
        if self.conditioning_modalities is None:
            return main, tuple(m for m in names if m != main)
        given = list(self.conditioning_modalities)
        unknown = [m for m in given if m not in self.modalities]
        if unknown:
            raise ConfigError(
                f"cvae: conditioning_modalities names unknown modalities {unknown}; expected "
                f"some of {names}.{_suggest(unknown[0], names)}"
            )
        if main in given:
            raise ConfigError(
                f"cvae: conditioning_modalities must not hold the main modality {main!r}, "
                f"found {given}"
            )
        repeated = sorted({m for m in given if given.count(m) > 1})
        if repeated:
            raise ConfigError(
                f"cvae: conditioning_modalities names {repeated} more than once, found {given}"
            )
        if not given:
            raise ConfigError(
                f"cvae: expected at least one conditioning modality besides the main modality "
                f"{main!r}, found none"
            )
        return main, tuple(m for m in names if m in given)


@register_model
class CVAE(MultimodalVAE):
    """Conditional VAE (Sohn et al. 2015): ``y`` given ``x_C``, with an optional prior network.

    Args:
        config: The model's config.
    """

    name: ClassVar[str] = "cvae"
    config_class: ClassVar[type[ModelConfig]] = CVAEConfig
    declared_capabilities: ClassVar[Capabilities] = Capabilities(conditional=True)
    variant_configs: ClassVar[dict[str, dict[str, Any]]] = {
        "prior-network": {"prior_network": True},
        "masked": {"missing_conditions": "masked"},
        "masked-prior-network": {
            "missing_conditions": "masked",
            "prior_network": True,
            "beta": 0.5,
        },
    }
    config: CVAEConfig

    def __init__(self, config: CVAEConfig) -> None:
        super().__init__(config)
        self.main, self.conditions = config.roles()
        self.encoded: tuple[str, ...] = tuple(
            m for m in self.modalities if m == self.main or m in self.conditions
        )
        """``{y} + C`` in the modalities' order: the modalities with a feature network."""
        # The base class gave every modality an encoder and a decoder: keep the feature
        # networks of {y} + C and y's decoder (a parameter outside the graph breaks DDP).
        for name in self.modalities:
            if name not in self.encoded:
                del self.encoders[name]
            if name != self.main:
                del self.decoders[name]
        features = 2 * config.latent_dim
        # The feature networks are the encoders above (one per modality, shared by the three
        # parts); the heads fuse their outputs, so their own feature networks are identities.
        self.posterior_head = MaskedJointEncoder(
            {m: nn.Identity() for m in self.encoded}, features, config.joint_hidden, features
        )
        self.prior_head: MaskedJointEncoder | None = None
        if config.prior_network:
            self.prior_head = MaskedJointEncoder(
                {c: nn.Identity() for c in self.conditions},
                features,
                config.prior_hidden,
                features,
            )

    def decoder_latent_dim(self, modality: str) -> int:
        """``y``'s decoder takes ``[z, h_C]``: ``latent_dim + |C| (2 latent_dim + 1)`` values.

        (The base class builds every modality's decoder; only ``y``'s is kept.)
        """
        main, conditions = self.config.roles()
        if modality != main:
            return super().decoder_latent_dim(modality)
        return self.config.latent_dim + len(conditions) * (2 * self.config.latent_dim + 1)

    # ----------------------------------------------------------------------------------------
    # Roles and building blocks

    def conditionable(self, subset: Sequence[str], target: str | None = None) -> bool:
        """Whether the CVAE infers from ``subset`` (and generates ``target`` from it).

        True only for subsets holding every conditioning modality, and with a ``target``, only
        for ``y``: generated from ``x_C`` when ``y`` is outside the subset, reconstructed
        through ``q(z | y, x_C)`` when it is inside (``{y} + C``, the reconstruction path of
        :meth:`posterior`).
        """
        names = set(subset)
        if not names <= set(self.modalities) or not set(self.conditions) <= names:
            return False
        return target is None or target == self.main

    def usable(self, batch: Batch) -> torch.Tensor:
        """``(N,)``: the samples the objective scores (``y`` observed; with ``drop``, all of C)."""
        usable = batch.mask[self.main]
        if self.config.missing_conditions == "drop":
            usable = usable & self._presence(batch, self.conditions).all(0)
        return usable

    def _presence(self, batch: Batch, names: Sequence[str]) -> torch.Tensor:
        """``(len(names), N)`` presence of ``names``, in their order."""
        return torch.stack([batch.mask[m] for m in names])

    def _features(self, batch: Batch, names: Sequence[str]) -> dict[str, torch.Tensor]:
        """Each modality's features ``(N, 2 latent_dim)`` on every row (masked downstream)."""
        return {m: self.encoders[m](batch.data[m]) for m in names}

    def _joint_posterior(
        self, features: dict[str, torch.Tensor], batch: Batch
    ) -> GaussianPosterior:
        """``q(z | y, x_C)`` from the features of ``{y} + C``, absent ones masked."""
        out = self.posterior_head(features, self._presence(batch, self.encoded)).float()
        mean, logvar = out.chunk(2, dim=-1)
        return GaussianPosterior(mean, logvar.clamp(*LOGVAR_BOUNDS))

    def _conditional_prior(
        self, features: dict[str, torch.Tensor], batch: Batch
    ) -> GaussianPosterior:
        """``p(z | x_C)``: the prior network's Gaussian, or ``N(0, I)`` without one."""
        if self.prior_head is None:
            rows = batch.mask[self.main].shape[0]
            zeros = torch.zeros((rows, self.config.latent_dim), device=batch.mask[self.main].device)
            return GaussianPosterior(zeros, zeros)
        out = self.prior_head(features, self._presence(batch, self.conditions)).float()
        mean, logvar = out.chunk(2, dim=-1)
        return GaussianPosterior(mean, logvar.clamp(*LOGVAR_BOUNDS))

    def _condition(self, features: dict[str, torch.Tensor], batch: Batch) -> torch.Tensor:
        """``h_C``, ``(N, |C| (2 latent_dim + 1))``: masked features of ``C``, then the bits."""
        presence = self._presence(batch, self.conditions)
        parts = []
        for row, name in zip(presence, self.conditions, strict=True):
            value = features[name]
            parts.append(torch.where(row.unsqueeze(-1), value, torch.zeros((), dtype=value.dtype)))
        return torch.cat([*parts, presence.t().to(parts[0].dtype)], dim=-1)

    def decode_main(self, z: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Likelihood parameters of ``y`` from latents ``(..., N, D)`` given ``x_C`` in ``batch``.

        ``p(y | z, x_C)``: the conditioning modalities of ``batch`` (absent ones masked) make
        ``h_C``; leading sample dimensions of ``z`` are flattened into the batch and restored.
        """
        self.check_batch(batch)
        return self._decode(z, self._condition(self._features(batch, self.conditions), batch))

    def _decode(self, z: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """:meth:`decode_main` given ``h_C`` ``(N, F)`` already computed."""
        leading = z.shape[:-1]
        inputs = torch.cat([z, condition.expand(*leading, condition.shape[-1])], dim=-1)
        params = self.decoders[self.main](inputs.reshape(-1, inputs.shape[-1]))
        out: torch.Tensor = params.reshape(*leading, *params.shape[1:])
        return out

    def decode(
        self, z: torch.Tensor, modalities: Sequence[str] | None = None
    ) -> dict[str, torch.Tensor]:
        """Refused: the decoder ``p(y | z, x_C)`` needs the conditioning data.

        Raises:
            ValueError: Always; :meth:`predict` generates ``y`` given ``x_C``, and
                :meth:`decode_main` decodes latents given the conditioning data.
        """
        raise ValueError(
            f"{self.name}: the decoder p({self.main} | z, x_C) needs the conditioning data "
            f"{list(self.conditions)}: use predict(batch, cond) or decode_main(z, batch)"
        )

    def _check_cond(self, cond: Sequence[str] | None) -> set[str]:
        """The modalities of ``cond`` (all when ``None``); refuses a ``cond`` lacking ``C``."""
        if isinstance(cond, str):
            raise TypeError(
                f"{self.name}: expected a list of modality names, found the string {cond!r}"
            )
        names = set(self.modalities if cond is None else cond)
        unknown = sorted(names - set(self.modalities))
        if unknown:
            raise ValueError(
                f"{self.name}: unknown modalities {unknown} in cond; known: {list(self.modalities)}"
            )
        missing = [c for c in self.conditions if c not in names]
        if missing:
            raise ValueError(
                f"{self.name} infers only given all its conditioning modalities "
                f"{list(self.conditions)}: cond {sorted(names)} lacks {missing}"
            )
        return names

    def _inference(
        self, batch: Batch, cond: Sequence[str] | None
    ) -> tuple[GaussianPosterior, torch.Tensor]:
        """The posterior given ``cond`` (see :meth:`posterior`) and the decoder's ``h_C``."""
        self.check_batch(batch)
        names = self._check_cond(cond)
        if self.main not in names:
            features = self._features(batch, self.conditions)
            return self._conditional_prior(features, batch), self._condition(features, batch)
        features = self._features(batch, self.encoded)
        posterior = self._joint_posterior(features, batch)
        prior = self._conditional_prior(features, batch)
        observed = batch.mask[self.main].unsqueeze(-1)
        chosen = GaussianPosterior(
            torch.where(observed, posterior.mean, prior.mean),
            torch.where(observed, posterior.logvar, prior.logvar),
        )
        return chosen, self._condition(features, batch)

    # ----------------------------------------------------------------------------------------
    # The model's API

    def objective(self, batch: Batch) -> Objective:
        """``loss = -reconstruction + beta * kl`` per sample (module docstring).

        ``reconstruction = lambda_y log p(y | z, x_C)`` with ``z ~ q(z | y, x_C)`` and ``kl =
        KL(q(z | y, x_C) || p(z | x_C))``; samples that :meth:`usable` rejects get exactly 0.
        """
        features = self._features(batch, self.encoded)
        posterior = self._joint_posterior(features, batch)
        prior = self._conditional_prior(features, batch)
        z = posterior.rsample(1)[0]
        params = self._decode(z, self._condition(features, batch))
        reconstruction = self.likelihood(self.main).log_prob(params, batch.data[self.main])
        if self.prior_head is None:
            kl = self.shared_prior.kl(posterior)
        else:
            kl = kl_normal(posterior.mean, posterior.logvar, prior.mean, prior.logvar)
        loss = -reconstruction + self.config.beta * kl
        parts = {"reconstruction": reconstruction, "kl": kl}
        return Objective(loss, parts).where(self.usable(batch))

    def posterior(self, batch: Batch, cond: Sequence[str] | None = None) -> GaussianPosterior:
        """The latent's distribution given ``cond`` (all modalities by default).

        ``cond`` must hold every conditioning modality. With ``y`` in it: ``q(z | y, x_C)``
        where ``y`` is observed, the prior ``p(z | x_C)`` elsewhere; without ``y``: ``p(z |
        x_C)`` (the prior network's, or ``N(0, I)``).

        Raises:
            ValueError: For a ``cond`` without all of ``C`` (or with unknown names).
        """
        return self._inference(batch, cond)[0]

    @torch.no_grad()
    def predict(
        self,
        batch: Batch,
        cond: Sequence[str],
        gen: Sequence[str] | None = None,
        n_samples: int = 1,
        use_mean: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Generate ``y`` (the only modality a CVAE generates) from a ``cond`` holding ``C``.

        ``z`` comes from :meth:`posterior` given ``cond`` (``p(z | x_C)`` without ``y``, a
        reconstruction with it), drawn or, with ``use_mean``, its mean; the decoder then reads
        ``x_C``. Returns ``{y: (N, *shape)}``, or ``(n_samples, N, *shape)`` when ``n_samples >
        1``: likelihood means (class indices for a categorical ``y``).

        Raises:
            ValueError: For ``gen`` other than ``[y]`` (or ``None``), or a ``cond`` without all
                of ``C``.
        """
        if isinstance(gen, str):
            raise TypeError(
                f"{self.name}: expected a list of modality names, found the string {gen!r}"
            )
        if gen is not None and list(gen) != [self.main]:
            raise ValueError(
                f"{self.name} generates only its main modality {self.main!r} (from "
                f"{list(self.conditions)}); found gen {list(gen)}"
            )
        posterior, condition = self._inference(batch, cond)
        if use_mean:
            z = posterior.mean.unsqueeze(0).expand(n_samples, -1, -1)
        else:
            z = posterior.rsample(n_samples)
        mean = self.likelihood(self.main).mean(self._decode(z, condition))
        return {self.main: mean[0] if n_samples == 1 else mean}

    @torch.no_grad()
    def sample(self, n: int, sampler: Any = None) -> dict[str, torch.Tensor]:
        """Refused: a CVAE has no unconditional generation.

        Raises:
            ValueError: Always; :meth:`predict` generates ``y`` given ``x_C``.
        """
        raise ValueError(
            f"{self.name} generates only given conditioning data: it draws its main modality "
            f"{self.main!r} given {list(self.conditions)}, use predict(batch, "
            f"cond={list(self.conditions)})"
        )

    def importance_log_weights(
        self,
        batch: Batch,
        cond: Sequence[str] | None,
        gen: Sequence[str] | None,
        n_samples: int,
    ) -> torch.Tensor:
        """``(K, N)`` log-weights of ``-log p(y | x_C)``, the one likelihood a CVAE defines.

        ``log p(y | z, x_C) + log p(z | x_C) - log q(z | y, x_C)`` with ``z ~ q(z | y, x_C)``
        and the unweighted likelihood of ``y``; 0 for a sample without ``y`` (nothing scored)
        and NaN, with ``drop``, for one with ``y`` but not all of ``C`` (undefined).

        Raises:
            ValueError: Unless ``cond`` is ``None`` or holds ``C`` but not ``y``, and ``gen``
                is ``None`` or ``[y]``.
        """
        with_main = cond is not None and self.main in self._check_cond(cond)
        if with_main or (gen is not None and list(gen) != [self.main]):
            raise ValueError(
                f"{self.name} defines only the conditional likelihood -log p({self.main} | "
                f"{', '.join(self.conditions)}): call nll(batch), or nll(batch, "
                f"cond={list(self.conditions)}, gen={[self.main]}); found cond "
                f"{None if cond is None else list(cond)}, gen {None if gen is None else list(gen)}"
            )
        features = self._features(batch, self.encoded)
        posterior = self._joint_posterior(features, batch)
        prior = self._conditional_prior(features, batch)
        z = posterior.rsample(n_samples)
        params = self._decode(z, self._condition(features, batch))
        target = batch.data[self.main]
        log_w = (
            self.likelihood(self.main).log_prob(params, target, weighted=False)
            + prior.log_prob(z)
            - posterior.log_prob(z)
        )
        log_w = torch.where(batch.mask[self.main], log_w, torch.zeros((), dtype=log_w.dtype))
        if self.config.missing_conditions == "drop":
            defined = ~batch.mask[self.main] | self.usable(batch)
            log_w = torch.where(defined, log_w, torch.full((), float("nan"), dtype=log_w.dtype))
        return log_w
