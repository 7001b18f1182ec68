"""CRMVAE against hand-computed values: its objective, its divisors and its masks."""

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from multivae.config import ConfigError
from multivae.data.batch import Batch
from multivae.models.base import ModalityConfig
from multivae.models.crmvae import CRMVAE, CRMVAEConfig
from multivae.nn.architectures import ArchitectureConfig

SIZES = {"a": 3, "b": 4, "c": 2}
WEIGHTS = {"a": 1.0, "b": 0.5, "c": 2.0}
NAMES = list(SIZES)
N_MODALITIES = len(SIZES)
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


def make_model(sizes=SIZES, seed=0, weights=None, **options):
    torch.manual_seed(seed)
    modalities = {
        name: ModalityConfig(
            shape=(size,),
            weight=(weights or {}).get(name, 1.0),
            encoder=ArchitectureConfig("mlp", {"hidden": [8]}),
            decoder=ArchitectureConfig("mlp", {"hidden": [8]}),
        )
        for name, size in sizes.items()
    }
    return CRMVAE(CRMVAEConfig(modalities=modalities, latent_dim=LATENT, **options))


def make_batch(mask="complete", sizes=SIZES, seed=1):
    generator = torch.Generator().manual_seed(seed)
    present = {name: torch.tensor(MASKS[mask][name]) for name in sizes}
    data = {
        name: torch.randn(N, size, generator=generator) * present[name].unsqueeze(-1)
        for name, size in sizes.items()
    }
    return Batch(data=data, mask=present)


def hand_loss(model, batch, seed=7):
    """The spec's per-sample objective, written out sample by sample; the batch mean."""
    beta = model.config.beta
    experts = {}
    for name in model.modalities:
        mean, logvar = model.encoders[name](batch.data[name]).chunk(2, dim=-1)
        experts[name] = (mean, logvar.clamp(-20.0, 20.0))
    # The model's draws, in its documented order: z_X's noise, then every z_m's.
    torch.manual_seed(seed)
    joint_noise = torch.randn(N, LATENT)
    expert_noise = torch.randn(len(model.modalities), N, LATENT)
    losses = []
    for n in range(N):
        observed = [m for m in model.modalities if batch.mask[m][n]]
        if not observed:
            losses.append(torch.zeros(()))
            continue
        precision = sum(torch.exp(-experts[m][1][n]) for m in observed)
        mean = sum(experts[m][0][n] * torch.exp(-experts[m][1][n]) for m in observed) / precision
        std = precision.rsqrt()
        z_joint = mean + std * joint_noise[n]
        recon = 0.0
        for m in observed:
            expert_mean, expert_std = experts[m][0][n], torch.exp(0.5 * experts[m][1][n])
            z_m = expert_mean + expert_std * expert_noise[model.modalities.index(m), n]
            weight = model.config.modalities[m].weight
            for z in (z_joint, z_m):
                decoded = model.decoders[m](z.unsqueeze(0))[0]
                recon = recon - weight * Normal(decoded, 1.0).log_prob(batch.data[m][n]).sum()
        joint = Normal(mean, std)
        kl = kl_divergence(joint, Normal(0.0, 1.0)).sum()
        kl_experts = sum(
            kl_divergence(joint, Normal(experts[m][0][n], torch.exp(0.5 * experts[m][1][n]))).sum()
            for m in observed
        )
        count = len(observed) if model.config.incomplete_weights == "observed" else N_MODALITIES
        losses.append(recon / (2 * (count + 1)) + beta * (kl + kl_experts) / (count + 1))
    return torch.stack(losses).mean()


@pytest.mark.parametrize("mask", ["complete", "missing"])
@pytest.mark.parametrize("weights", ["observed", "reference"])
def test_loss_matches_the_hand_computed_objective(mask, weights):
    model = make_model(weights=WEIGHTS, beta=1.7, incomplete_weights=weights)
    batch = make_batch(mask)
    torch.manual_seed(7)
    loss = model(batch).loss
    with torch.no_grad():
        expected = hand_loss(model, batch)
    torch.testing.assert_close(loss, expected)


def test_one_modality_gives_the_spec_hand_test():
    """M = 1: ``1/4 [-l(z_X) - l(z_1)] + (beta / 2) KL(q_1 || p)``."""
    sizes = {"a": 3}
    model = make_model(sizes=sizes, beta=1.5)
    batch = make_batch(sizes=sizes)
    torch.manual_seed(3)
    with torch.no_grad():
        objective = model.objective(batch)
        mean, logvar = model.encoders["a"](batch.data["a"]).chunk(2, dim=-1)
        kl_1 = kl_divergence(Normal(mean, torch.exp(0.5 * logvar)), Normal(0.0, 1.0)).sum(-1)
    parts = {"loss": objective.loss, **objective.parts}
    # The product of one expert is the expert itself.
    torch.testing.assert_close(parts["kl_experts"], torch.zeros(N))
    torch.testing.assert_close(parts["kl"], kl_1)
    torch.testing.assert_close(parts["loss"], -parts["reconstruction"] / 4 + 1.5 / 2 * kl_1)


def test_both_divisor_rules_agree_on_complete_samples_only():
    batch = make_batch("missing")
    losses = {}
    for weights in ("observed", "reference"):
        model = make_model(incomplete_weights=weights)
        torch.manual_seed(3)
        with torch.no_grad():
            losses[weights] = model.objective(batch)
    observed, reference = losses["observed"], losses["reference"]
    # Sample 0 is complete; sample 2 has only a, whose divisors are 4 and 2 instead of 8 and 4.
    torch.testing.assert_close(observed.loss[0], reference.loss[0])
    torch.testing.assert_close(observed.parts["kl"][2], reference.parts["kl"][2])
    torch.testing.assert_close(observed.loss[2], 2 * reference.loss[2])


@pytest.mark.parametrize("weights", ["observed", "reference"])
def test_a_sample_with_nothing_observed_contributes_zero_and_counts(weights):
    model = make_model(incomplete_weights=weights)
    batch = make_batch("missing")
    torch.manual_seed(3)
    objective = model.objective(batch)
    # Sample 4 has nothing.
    assert objective.loss[4] == 0.0
    for name, value in objective.parts.items():
        assert value[4] == 0.0, name
    torch.manual_seed(3)
    torch.testing.assert_close(model(batch).loss, objective.loss.sum() / N)
    model.zero_grad()
    objective.loss[4].backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is None or parameter.grad.abs().sum() == 0.0, name


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
        ({"beta": -1.0}, r"crmvae: beta must be >= 0, found -1.0"),
        (
            {"incomplete_weights": "all"},
            r"incomplete_weights: expected one of \['observed', 'reference'\], found 'all'",
        ),
    ],
)
def test_bad_options_are_refused(options, message):
    with pytest.raises(ConfigError, match=message):
        make_model(**options)
