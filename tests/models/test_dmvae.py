"""DMVAE against the paper's objective worked out by hand, with replayed randomness.

``DMVAE.forward`` documents its draws: ``torch.randn((1 + M, N, D))`` for the shared latents of
the terms (PoE first, then each modality's own posterior), then ``torch.randn((1 + M, N, P_m))``
per modality with a private latent, in the config's order. The hand computations reseed and
draw the same noise, and use the model's encoders and decoders but none of its fusion, KL or
likelihood code: products of Gaussians and KLs are written out, likelihoods come from
torch.distributions, and the restriction to observed modalities is a Python loop per sample.
"""

import math

import pytest
import torch
from torch import nn
from torch.distributions import Normal

from multivae.config import ConfigError
from multivae.data.batch import Batch
from multivae.factory import create_model
from multivae.models.base import ModalityConfig
from multivae.models.dmvae import DMVAE, DMVAEConfig
from multivae.nn.architectures import ArchitectureConfig

SHAPES = {"a": (3,), "b": (4,), "c": (2,)}
SCALES = {"a": 1.0, "b": 0.5, "c": 2.0}
WEIGHTS = {"a": 1.0, "b": 2.0, "c": 0.5}
PRIVATE = {"a": 1, "b": 3, "c": 0}
LATENT = 2
N = 6
MISSING = {
    # Sample 3 has nothing, sample 5 only b.
    "a": [True, True, False, False, True, False],
    "b": [True, False, True, False, True, True],
    "c": [True, True, True, False, False, False],
}
COMPLETE = {m: [True] * N for m in SHAPES}


def make_config(shapes=SHAPES, **options) -> DMVAEConfig:
    mlp = ArchitectureConfig("mlp", {"hidden": [6]})
    modalities = {
        name: ModalityConfig(
            shape=shape,
            scale=SCALES[name],
            weight=WEIGHTS[name],
            encoder=mlp,
            decoder=mlp,
        )
        for name, shape in shapes.items()
    }
    return DMVAEConfig(modalities=modalities, latent_dim=LATENT, **options)


def make_model(seed=0, shapes=SHAPES, **options) -> DMVAE:
    options.setdefault("private_dims", {m: PRIVATE[m] for m in shapes})
    torch.manual_seed(seed)
    return DMVAE(make_config(shapes, **options))


def make_batch(present, shapes=SHAPES, seed=1) -> Batch:
    generator = torch.Generator().manual_seed(seed)
    mask = {m: torch.tensor(present[m]) for m in shapes}
    data = {
        m: torch.randn(N, *shape, generator=generator) * mask[m].reshape(-1, 1)
        for m, shape in shapes.items()
    }
    return Batch(data=data, mask=mask)


def hand_encoders(model, batch):
    """Per modality: shared mean, shared variance, private mean, private variance, ``(N, .)``."""
    out = {}
    for name in model.modalities:
        size = LATENT + model.private_dim(name)
        features = model.encoders[name](batch.data[name])
        mean, logvar = features[:, :size], features[:, size:].clamp(-20.0, 20.0)
        var = torch.exp(logvar)
        out[name] = (mean[:, :LATENT], var[:, :LATENT], mean[:, LATENT:], var[:, LATENT:])
    return out


def hand_kl(mean, var):
    """KL(N(mean, var) || N(0, I)), summed."""
    return 0.5 * (var + mean**2 - 1.0 - torch.log(var)).sum()


def hand_product_with_prior(experts):
    """Mean and variance of the product of N(0, I) and the (mean, variance) experts."""
    precision = torch.ones(LATENT)
    weighted = torch.zeros(LATENT)
    for mean, var in experts:
        precision = precision + 1.0 / var
        weighted = weighted + mean / var
    return weighted / precision, 1.0 / precision


def log_likelihood(model, name, latent, target, weighted=True):
    """``log p(target | latent)``, times the modality's training weight when ``weighted``."""
    params = model.decoders[name](latent.unsqueeze(0))[0]
    log_p = Normal(params, SCALES[name]).log_prob(target).sum()
    return WEIGHTS[name] * log_p if weighted else log_p


def hand_per_sample(model, batch, seed, beta=1.0, private_betas=None):
    """Per sample: (sum over its 1 + |O| terms of E(q), number of terms)."""
    private_betas = private_betas or {}
    names = list(model.modalities)
    encoded = hand_encoders(model, batch)
    torch.manual_seed(seed)
    shared_noise = torch.randn(1 + len(names), N, LATENT)
    private_noise = {
        m: torch.randn(1 + len(names), N, model.private_dim(m))
        for m in names
        if model.private_dim(m) > 0
    }
    results = []
    for n in range(N):
        observed = [m for m in names if batch.mask[m][n]]
        if not observed:
            results.append((torch.zeros(()), 0))
            continue
        # Term 0 is the PoE with the prior; term 1 + k is modality k's own posterior.
        terms = [(0, hand_product_with_prior([encoded[m][:2] for m in observed]))]
        terms += [(1 + names.index(k), (encoded[k][0][n], encoded[k][1][n])) for k in observed]
        total = torch.zeros(())
        for t, (mean, var) in terms:
            if t == 0:
                mean, var = mean[n], var[n]
            z = mean + var.sqrt() * shared_noise[t, n]
            reconstruction = torch.zeros(())
            kl_private = torch.zeros(())
            for m in observed:
                latent = z
                if m in private_noise:
                    w_mean, w_var = encoded[m][2][n], encoded[m][3][n]
                    w = w_mean + w_var.sqrt() * private_noise[m][t, n]
                    latent = torch.cat([z, w])
                    kl_private = kl_private + private_betas.get(m, 1.0) * hand_kl(w_mean, w_var)
                reconstruction = reconstruction + log_likelihood(model, m, latent, batch.data[m][n])
            total = total - reconstruction + beta * hand_kl(mean, var) + kl_private
        results.append((total, len(terms)))
    return results


def test_one_modality_matches_the_closed_form_of_the_spec():
    shapes = {"a": (3,)}
    model = make_model(shapes=shapes, private_dims={"a": 2}, beta=1.5, beta_private=0.5)
    batch = make_batch({"a": [True] * N}, shapes)
    torch.manual_seed(3)
    loss = model(batch).loss
    with torch.no_grad():
        features = model.encoders["a"](batch.data["a"])
        mu, s2 = features[:, :LATENT], torch.exp(features[:, 4 : 4 + LATENT])
        w_mu, w_s2 = features[:, LATENT:4], torch.exp(features[:, 4 + LATENT :])
        # q_1 = N(mu, s^2) and the prior expert: PoE = N(mu / (1 + s^2), s^2 / (1 + s^2)).
        poe_mean, poe_var = mu / (1 + s2), s2 / (1 + s2)
        torch.manual_seed(3)
        shared_noise = torch.randn(2, N, LATENT)
        private_noise = torch.randn(2, N, 2)
        expected = torch.zeros(())
        for t, (mean, var) in enumerate([(poe_mean, poe_var), (mu, s2)]):
            z = mean + var.sqrt() * shared_noise[t]
            w = w_mu + w_s2.sqrt() * private_noise[t]
            params = model.decoders["a"](torch.cat([z, w], -1))
            reconstruction = Normal(params, 1.0).log_prob(batch.data["a"]).sum(-1)
            kl = 0.5 * (var + mean**2 - 1 - torch.log(var)).sum(-1)
            kl_private = 0.5 * (w_s2 + w_mu**2 - 1 - torch.log(w_s2)).sum(-1)
            expected = expected + (-reconstruction + 1.5 * kl + 0.5 * kl_private).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("present", [COMPLETE, MISSING], ids=["complete", "missing"])
def test_loss_is_the_sum_of_the_poe_and_unimodal_elbos_computed_by_hand(present):
    model = make_model(beta=2.0, private_betas={"a": 0.5, "b": 3.0})
    batch = make_batch(present)
    torch.manual_seed(7)
    output = model(batch)
    with torch.no_grad():
        per_sample = hand_per_sample(model, batch, 7, 2.0, {"a": 0.5, "b": 3.0})
    expected = torch.stack([total for total, _ in per_sample]).mean()
    torch.testing.assert_close(output.loss, expected, rtol=1e-5, atol=1e-5)
    assert set(output.metrics) == {"reconstruction", "kl", "kl_private"}


def test_normalize_terms_divides_each_sample_by_one_plus_its_observed_count():
    model = make_model(normalize_terms=True, beta=0.5)
    batch = make_batch(MISSING)
    torch.manual_seed(5)
    loss = model(batch).loss
    with torch.no_grad():
        per_sample = hand_per_sample(model, batch, 5, 0.5)
    assert [count for _, count in per_sample] == [4, 3, 3, 0, 3, 2]
    expected = torch.stack([total / max(count, 1) for total, count in per_sample]).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)

    complete = make_batch(COMPLETE)
    torch.manual_seed(5)
    summed = make_model(beta=0.5)(complete).loss
    torch.manual_seed(5)
    normalized = make_model(normalize_terms=True, beta=0.5)(complete).loss
    torch.testing.assert_close(normalized * 4, summed)


def test_metrics_decompose_the_loss():
    model = make_model(beta=2.0, beta_private=0.5)
    batch = make_batch(MISSING)
    torch.manual_seed(2)
    output = model(batch)
    parts = output.metrics
    expected = -parts["reconstruction"] + 2.0 * parts["kl"] + 0.5 * parts["kl_private"]
    torch.testing.assert_close(output.loss, expected)
    assert "kl_private" not in make_model(private_dims={}, private_dim=0)(batch).metrics


def test_per_modality_private_sizes_reach_encoders_and_decoders():
    model = make_model()
    batch = make_batch(MISSING)
    assert model.private_dims == {"a": 1, "b": 3}
    for name in SHAPES:
        size = LATENT + PRIVATE[name]
        assert model.encoders[name](batch.data[name]).shape == (N, 2 * size)
        first = next(m for m in model.decoders[name].modules() if isinstance(m, nn.Linear))
        assert first.in_features == size
    means = model.private_latent_means(batch)
    assert {m: tuple(v.shape) for m, v in means.items()} == {"a": (N, 1), "b": (N, 3)}
    private = model.generation_privates(batch, ["a"], list(SHAPES), n_samples=2)
    assert {m: tuple(v.shape) for m, v in private.items()} == {"a": (2, N, 1), "b": (2, N, 3)}
    assert model.capabilities.private_latents
    assert not make_model(private_dims={}, private_dim=0).capabilities.private_latents
    # Unlisted modalities take private_dim.
    assert make_model(private_dims={"a": 5}, private_dim=2).private_dims == {"a": 5, "b": 2, "c": 2}


def test_absent_cells_give_their_encoder_outputs_exactly_zero_gradient():
    model = make_model()
    batch = make_batch(MISSING)
    outputs = {}

    def keep(name):
        def hook(module, inputs, output):
            output.retain_grad()
            outputs[name] = output

        return hook

    for name in SHAPES:
        model.encoders[name].register_forward_hook(keep(name))
    model(batch).loss.backward()
    for name in SHAPES:
        grad = outputs[name].grad
        size = LATENT + PRIVATE[name]
        present = batch.mask[name]
        # Rows of absent samples: shared and private means and log-variances alike.
        assert torch.equal(grad[~present], torch.zeros_like(grad[~present])), name
        shared = torch.cat([grad[present, :LATENT], grad[present, size : size + LATENT]], -1)
        assert (shared.abs().sum(-1) > 0).all(), name
        if PRIVATE[name]:
            private = torch.cat([grad[present, LATENT:size], grad[present, size + LATENT :]], -1)
            assert (private.abs().sum(-1) > 0).all(), name


def test_posterior_is_the_product_with_the_prior_expert():
    model = make_model()
    batch = make_batch(MISSING)
    cond = ["a", "c"]
    with torch.no_grad():
        posterior = model.posterior(batch, cond)
        encoded = hand_encoders(model, batch)
        for n in range(N):
            experts = [(encoded[m][0][n], encoded[m][1][n]) for m in cond if batch.mask[m][n]]
            mean, var = hand_product_with_prior(experts)
            torch.testing.assert_close(posterior.mean[n], mean)
            torch.testing.assert_close(posterior.logvar[n], torch.log(var))
    # Samples 3 and 5 observe neither a nor c: the prior alone.
    assert torch.equal(posterior.mean[[3, 5]], torch.zeros(2, LATENT))
    assert torch.equal(posterior.logvar[[3, 5]], torch.zeros(2, LATENT))


def test_predict_means_take_private_means_from_observed_cond_and_zeros_otherwise():
    model = make_model()
    batch = make_batch(MISSING)
    out = model.predict(batch, cond=["a"], use_mean=True)
    with torch.no_grad():
        encoded = hand_encoders(model, batch)
        for n in range(N):
            observed = bool(batch.mask["a"][n])
            experts = [(encoded["a"][0][n], encoded["a"][1][n])] if observed else []
            z, _ = hand_product_with_prior(experts)
            privates = {
                "a": encoded["a"][2][n] if observed else torch.zeros(1),
                "b": torch.zeros(3),
                "c": torch.zeros(0),
            }
            for name in SHAPES:
                latent = torch.cat([z, privates[name]]).unsqueeze(0)
                torch.testing.assert_close(out[name][n], model.decoders[name](latent)[0])


def test_predict_draws_private_latents_from_q_for_observed_cond_and_from_the_prior_otherwise():
    """Replays the base class's draws: z, then per generated modality a prior draw, then a
    posterior draw when it is a cond modality."""
    model = make_model()
    batch = make_batch(MISSING)
    cond, k = ["a", "c"], 3
    torch.manual_seed(4)
    out = model.predict(batch, cond=cond, n_samples=k)
    with torch.no_grad():
        encoded = hand_encoders(model, batch)
        torch.manual_seed(4)
        shared_noise = torch.randn(k, N, LATENT)
        prior_a, q_noise_a = torch.randn(k, N, 1), torch.randn(k, N, 1)
        prior_b = torch.randn(k, N, 3)
        for n in range(N):
            experts = [(encoded[m][0][n], encoded[m][1][n]) for m in cond if batch.mask[m][n]]
            mean, var = hand_product_with_prior(experts)
            for i in range(k):
                z = mean + var.sqrt() * shared_noise[i, n]
                if batch.mask["a"][n]:
                    w_a = encoded["a"][2][n] + encoded["a"][3][n].sqrt() * q_noise_a[i, n]
                else:
                    w_a = prior_a[i, n]
                latents = {"a": torch.cat([z, w_a]), "b": torch.cat([z, prior_b[i, n]]), "c": z}
                for name, latent in latents.items():
                    expected = model.decoders[name](latent.unsqueeze(0))[0]
                    torch.testing.assert_close(out[name][i, n], expected)


@pytest.mark.parametrize(
    ("shapes", "present"),
    [({"a": (3,)}, {"a": [True] * N}), (SHAPES, MISSING)],
    ids=["one-modality", "three-with-missing"],
)
def test_joint_nll_is_the_iwae_estimate_with_the_poe_and_private_posteriors(shapes, present):
    model = make_model(shapes=shapes).eval()
    batch = make_batch(present, shapes)
    k = 16
    torch.manual_seed(9)
    nll = model.nll(batch, k=k, chunk_size=k)
    names = list(shapes)
    standard = Normal(0.0, 1.0)
    with torch.no_grad():
        encoded = hand_encoders(model, batch)
        torch.manual_seed(9)
        shared_noise = torch.randn(k, N, LATENT)
        private_noise = {}
        for m in names:
            if model.private_dim(m) > 0:
                prior = torch.randn(k, N, model.private_dim(m))
                private_noise[m] = (prior, torch.randn(k, N, model.private_dim(m)))
        for n in range(N):
            observed = [m for m in names if batch.mask[m][n]]
            mean, var = hand_product_with_prior(
                [(encoded[m][0][n], encoded[m][1][n]) for m in observed]
            )
            log_w = []
            for i in range(k):
                z = mean + var.sqrt() * shared_noise[i, n]
                value = standard.log_prob(z).sum() - Normal(mean, var.sqrt()).log_prob(z).sum()
                for m in observed:
                    latent = z
                    if m in private_noise:
                        w_mean, w_std = encoded[m][2][n], encoded[m][3][n].sqrt()
                        w = w_mean + w_std * private_noise[m][1][i, n]
                        value = value + standard.log_prob(w).sum()
                        value = value - Normal(w_mean, w_std).log_prob(w).sum()
                        latent = torch.cat([z, w])
                    # log p(X) itself: the likelihoods' training weights do not enter.
                    value = value + log_likelihood(
                        model, m, latent, batch.data[m][n], weighted=False
                    )
                log_w.append(value)
            expected = -(torch.logsumexp(torch.stack(log_w), 0) - math.log(k))
            torch.testing.assert_close(nll[n], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"private_dims": {"a": 1, "z": 2}}, "private_dims names unknown modalities ['z']"),
        ({"private_betas": {"q": 1.0}}, "private_betas names unknown modalities ['q']"),
        ({"private_dims": {"a": -1}}, "private_dims['a'] must be an integer >= 0, found -1"),
        ({"private_dims": {"a": 1.0}}, "private_dims.a: expected an integer, found 1.0"),
        ({"private_dims": {"a": True}}, "private_dims.a: expected an integer, found True"),
        ({"private_dim": -2}, "private_dim must be an integer >= 0, found -2"),
        ({"beta": -1.0}, "beta must be a number >= 0, found -1.0"),
        ({"private_betas": {"b": -0.5}}, "private_betas['b'] must be a number >= 0"),
    ],
)
def test_invalid_config_values_are_refused(options, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        make_config(**options)


def test_config_round_trips_through_json_and_rebuilds_the_model():
    config = make_config(private_dims={"a": 1, "b": 3}, private_betas={"c": 0.25}, beta=2.0)
    again = DMVAEConfig.from_json(config.to_json())
    assert again == config
    assert again.private_dims == {"a": 1, "b": 3}
    model = create_model("dmvae", again.to_dict())
    assert model.private_dims == {"a": 1, "b": 3, "c": 4}
    with pytest.raises(ConfigError, match="expected an integer"):
        DMVAEConfig.from_dict({**config.to_dict(), "private_dims": {"a": 1.5}})
