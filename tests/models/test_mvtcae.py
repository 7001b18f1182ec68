"""MVTCAE against hand-computed values: its objective, its reductions and its masks."""

import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from multivae.config import ConfigError
from multivae.data.batch import Batch
from multivae.models.base import ModalityConfig
from multivae.models.mvtcae import MVTCAE, MVTCAEConfig
from multivae.nn.architectures import ArchitectureConfig
from multivae.objectives import kl_normal

SIZES = {"a": 3, "b": 4, "c": 2}
NAMES = list(SIZES)
LATENT = 2
N = 5
MASKS = {
    "complete": {name: [True] * N for name in NAMES},
    # Sample 1 lacks a, sample 2 has only a, sample 4 has nothing.
    "missing": {
        "a": [True, False, True, True, False],
        "b": [True, True, False, True, False],
        "c": [True, True, False, False, False],
    },
}


def make_model(sizes=SIZES, seed=0, **options):
    torch.manual_seed(seed)
    modalities = {
        name: ModalityConfig(
            shape=(size,),
            encoder=ArchitectureConfig("mlp", {"hidden": [8]}),
            decoder=ArchitectureConfig("mlp", {"hidden": [8]}),
        )
        for name, size in sizes.items()
    }
    return MVTCAE(MVTCAEConfig(modalities=modalities, latent_dim=LATENT, **options))


def make_batch(mask="complete", sizes=SIZES, seed=1):
    generator = torch.Generator().manual_seed(seed)
    present = {name: torch.tensor(MASKS[mask][name]) for name in sizes}
    data = {
        name: torch.randn(N, size, generator=generator) * present[name].unsqueeze(-1)
        for name, size in sizes.items()
    }
    return Batch(data=data, mask=present)


def hand_loss(model, batch, seed=7, weights="observed"):
    """The spec's per-sample objective, written out sample by sample."""
    alpha, beta = model.config.alpha, model.config.beta
    experts = {}
    for name in model.modalities:
        mean, logvar = model.encoders[name](batch.data[name]).chunk(2, dim=-1)
        experts[name] = (mean, logvar.clamp(-20.0, 20.0))
    torch.manual_seed(seed)
    noise = torch.randn(N, LATENT)
    losses = []
    for n in range(N):
        observed = [m for m in model.modalities if batch.mask[m][n]]
        if not observed:
            losses.append(torch.zeros(()))
            continue
        precision = sum(torch.exp(-experts[m][1][n]) for m in observed)
        mean = sum(experts[m][0][n] * torch.exp(-experts[m][1][n]) for m in observed) / precision
        std = precision.rsqrt()
        z = mean + std * noise[n]
        recon = 0.0
        for m in observed:
            decoded = model.decoders[m](z.unsqueeze(0))[0]
            recon = recon - Normal(decoded, 1.0).log_prob(batch.data[m][n]).sum()
        joint = Normal(mean, std)
        kl = kl_divergence(joint, Normal(0.0, 1.0)).sum()
        kl_conditional = sum(
            kl_divergence(joint, Normal(experts[m][0][n], torch.exp(0.5 * experts[m][1][n]))).sum()
            for m in observed
        )
        count = len(observed) if weights == "observed" else len(model.modalities)
        losses.append(
            (count - alpha) / count * recon
            + beta * ((1 - alpha) * kl + alpha / count * kl_conditional)
        )
    return torch.stack(losses).mean()


@pytest.mark.parametrize("mask", ["complete", "missing"])
@pytest.mark.parametrize("weights", ["observed", "reference"])
def test_loss_matches_the_hand_computed_objective(mask, weights):
    model = make_model(alpha=0.3, beta=1.7, incomplete_weights=weights)
    batch = make_batch(mask)
    torch.manual_seed(7)
    loss = model(batch).loss
    with torch.no_grad():
        expected = hand_loss(model, batch, weights=weights)
    torch.testing.assert_close(loss, expected)


def test_alpha_zero_is_the_beta_elbo_of_the_product_without_prior_expert():
    model = make_model(alpha=0.0, beta=2.0)
    batch = make_batch()
    torch.manual_seed(3)
    objective = model.objective(batch)
    parts = {"loss": objective.loss, **objective.parts}
    torch.testing.assert_close(parts["loss"], -parts["reconstruction"] + 2.0 * parts["kl"])


def test_one_modality_is_a_scaled_vae():
    sizes = {"a": 3}
    model = make_model(sizes=sizes, alpha=0.4, beta=1.5)
    batch = make_batch(sizes=sizes)
    torch.manual_seed(3)
    objective = model.objective(batch)
    parts = {"loss": objective.loss, **objective.parts}
    torch.testing.assert_close(parts["kl_experts"], torch.zeros(N))
    torch.testing.assert_close(parts["loss"], 0.6 * (-parts["reconstruction"] + 1.5 * parts["kl"]))


def test_a_single_observed_modality_has_no_conditional_kl():
    model = make_model(alpha=0.5, incomplete_weights="observed")
    batch = make_batch("missing")
    torch.manual_seed(3)
    with torch.no_grad():
        objective = model.objective(batch)
        parts = {"loss": objective.loss, **objective.parts}
    # Sample 2 has only modality a: its product is q_a itself.
    assert abs(parts["kl_experts"][2].item()) < 1e-6
    torch.testing.assert_close(
        parts["loss"][2], 0.5 * (-parts["reconstruction"][2] + 2.5 * parts["kl"][2])
    )
    # Sample 4 has nothing: it contributes exactly zero.
    assert parts["loss"][4] == 0.0


def test_kl_from_the_product_of_two_unit_experts_to_one_of_them():
    mu1, mu2 = torch.tensor([0.3, -1.0]), torch.tensor([1.1, 2.0])
    # The product of two unit-variance experts is N((mu1 + mu2) / 2, 1/2).
    kl = kl_normal((mu1 + mu2) / 2, torch.full((2,), math.log(0.5)), mu1, torch.zeros(2))
    d = (mu1 - mu2) / 2
    torch.testing.assert_close(kl, (0.5 * (math.log(2) - 0.5 + d**2)).sum())


def test_posterior_is_the_product_of_the_observed_cond_experts_without_prior():
    model = make_model()
    batch = make_batch("missing")
    with torch.no_grad():
        posterior = model.posterior(batch, ["a", "b"])
        for n in range(N):
            observed = [m for m in ("a", "b") if batch.mask[m][n]]
            if not observed:
                torch.testing.assert_close(posterior.mean[n], torch.zeros(LATENT))
                torch.testing.assert_close(posterior.logvar[n], torch.zeros(LATENT))
                continue
            precision = torch.zeros(LATENT)
            weighted = torch.zeros(LATENT)
            for m in observed:
                mean, logvar = model.encoders[m](batch.data[m][n : n + 1])[0].chunk(2)
                precision = precision + torch.exp(-logvar)
                weighted = weighted + mean * torch.exp(-logvar)
            torch.testing.assert_close(posterior.mean[n], weighted / precision)
            torch.testing.assert_close(posterior.logvar[n], -torch.log(precision))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"alpha": 1.5}, "alpha must be in"),
        ({"beta": -1.0}, "beta must be"),
        ({"incomplete_weights": "all"}, "incomplete_weights"),
    ],
)
def test_bad_options_are_refused(options, message):
    with pytest.raises(ConfigError, match=message):
        make_model(**options)
