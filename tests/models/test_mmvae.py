"""MMVAE against the paper's looser bounds, worked out by hand with torch.distributions.

Sampling is made deterministic by replaying the seed: ``MMVAE.forward`` documents that its only
random draw is ``Distribution(loc, scale).rsample((K,))`` on the stacked ``(M, N, D)`` expert
parameters, so the hand computation reseeds and makes the same call on parameters it computes
itself from the model's encoder networks. Everything after the networks (scales, densities,
mixtures, bounds, masks) is written here independently of the model's code, with Python loops
over samples, experts and draws.
"""

import math

import pytest
import torch
from kit.models import vector_batch
from torch.distributions import Laplace, Normal

from multivae.config import ConfigError
from multivae.data.batch import Batch
from multivae.factory import create_model
from multivae.models.base import ModalityConfig
from multivae.models.mmvae import MMVAE, MMVAEConfig
from multivae.nn.architectures import ArchitectureConfig

SIZES = {"a": 3, "b": 4, "c": 3}
NAMES = list(SIZES)
LATENT = 2
N = 4
MASKS = {
    "complete": {name: [True] * N for name in NAMES},
    # Sample 1 lacks a, sample 2 has only a, sample 3 lacks c.
    "missing": {
        "a": [True, False, True, True],
        "b": [True, True, False, True],
        "c": [True, True, False, False],
    },
}


def make_config(**options):
    mlp = ArchitectureConfig("mlp", {"hidden": [8]})
    modalities = {
        name: ModalityConfig(shape=(size,), encoder=mlp, decoder=mlp)
        for name, size in SIZES.items()
    }
    options.setdefault("samples_per_expert", 3)
    return MMVAEConfig(modalities=modalities, latent_dim=LATENT, **options)


def make_model(seed=0, **options):
    torch.manual_seed(seed)
    return MMVAE(make_config(**options))


def make_batch(mask="complete", seed=1):
    return vector_batch(SIZES, MASKS[mask], seed)


def hand_expert_parameters(model, batch, family):
    """Per modality: location and scale of its posterior, from the encoder network."""
    params = []
    for name in NAMES:
        out = model.encoders[name](batch.data[name])
        loc, second = out[:, :LATENT], out[:, LATENT:]
        if family == "laplace":
            scale = torch.softmax(second, dim=-1) * LATENT + 1e-6
        else:
            scale = torch.exp(0.5 * second.clamp(-20.0, 20.0))
        params.append((loc, scale))
    return params


def hand_log_weights(model, batch, seed, family="laplace", detach_q=False):
    """``log w`` for every observed expert ``r`` of every sample ``n``: {(r, n): (K,) tensor}.

    ``log w = sum_{d observed} log p(x_d | z) + log p(z) - log (1/|S|) sum_{j in S} q_j(z)``.
    """
    distribution = Laplace if family == "laplace" else Normal
    params = hand_expert_parameters(model, batch, family)
    locs = torch.stack([loc for loc, _ in params])
    scales = torch.stack([scale for _, scale in params])
    k = model.config.samples_per_expert
    torch.manual_seed(seed)
    z = distribution(locs, scales).rsample((k,))
    prior = distribution(torch.zeros(LATENT), torch.ones(LATENT))
    log_w = {}
    for n in range(N):
        present = [i for i, name in enumerate(NAMES) if batch.mask[name][n]]
        for r in present:
            entries = []
            for j in range(k):
                z_k = z[j, r, n]
                log_likelihood = sum(
                    Normal(model.decoders[NAMES[d]](z_k.unsqueeze(0))[0], 1.0)
                    .log_prob(batch.data[NAMES[d]][n])
                    .sum()
                    for d in present
                )
                experts = []
                for e in present:
                    loc, scale = params[e][0][n], params[e][1][n]
                    if detach_q:
                        loc, scale = loc.detach(), scale.detach()
                    experts.append(distribution(loc, scale).log_prob(z_k).sum())
                log_q = torch.logsumexp(torch.stack(experts), 0) - math.log(len(present))
                entries.append(log_likelihood + prior.log_prob(z_k).sum() - log_q)
            log_w[r, n] = torch.stack(entries)
    return log_w


def hand_bound(log_w, kind):
    """Per sample: the mean over observed experts of the IWAE bound (or ELBO) of each."""
    per_sample = []
    for n in range(N):
        terms = []
        for (_, m), values in log_w.items():
            if m != n:
                continue
            if kind == "elbo":
                terms.append(values.mean())
            else:
                terms.append(torch.logsumexp(values, 0) - math.log(len(values)))
        per_sample.append(torch.stack(terms).mean())
    return torch.stack(per_sample)


def gradients(model):
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("mask", ["complete", "missing"])
@pytest.mark.parametrize(
    ("bound", "family"),
    [("dreg", "laplace"), ("iwae", "laplace"), ("elbo", "laplace"), ("iwae", "normal")],
)
def test_loss_is_the_looser_bound_computed_by_hand(bound, family, mask):
    model = make_model(bound=bound, latent_distribution=family)
    batch = make_batch(mask)
    torch.manual_seed(7)
    out = model(batch)
    with torch.no_grad():
        expected = hand_bound(hand_log_weights(model, batch, 7, family), bound)
    torch.testing.assert_close(out.loss, -expected.mean(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.metrics["bound"], expected.mean(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mask", ["complete", "missing"])
def test_with_one_sample_per_expert_iwae_equals_elbo(mask):
    iwae = make_model(bound="iwae", samples_per_expert=1)
    elbo = MMVAE(make_config(bound="elbo", samples_per_expert=1))
    elbo.load_state_dict(iwae.state_dict())
    batch = make_batch(mask)
    torch.manual_seed(3)
    iwae_loss = iwae(batch).loss
    torch.manual_seed(3)
    elbo_loss = elbo(batch).loss
    torch.testing.assert_close(iwae_loss, elbo_loss)


def test_dreg_gradients_are_the_papers():
    """Encoder: ``sum_k w~_k^2 d log w_k / dz_k dz_k / dphi`` (q's parameters stopped in log w);
    decoder: the IWAE gradient ``sum_k w~_k d log w_k / dtheta``."""
    dreg = make_model(bound="dreg", samples_per_expert=4)
    iwae = MMVAE(make_config(bound="iwae", samples_per_expert=4))
    iwae.load_state_dict(dreg.state_dict())
    batch = make_batch("missing")

    torch.manual_seed(11)
    dreg(batch).loss.backward()
    dreg_grads = gradients(dreg)
    torch.manual_seed(11)
    iwae(batch).loss.backward()
    iwae_grads = gradients(iwae)

    dreg.zero_grad()
    log_w = hand_log_weights(dreg, batch, 11, detach_q=True)
    observed = {n: sum(1 for (_, m) in log_w if m == n) for n in range(N)}
    surrogate = sum(
        (torch.softmax(values, 0).detach() ** 2 * values).sum() / observed[n]
        for (_, n), values in log_w.items()
    )
    (-surrogate / N).backward()
    hand_grads = gradients(dreg)

    encoders = [name for name in dreg_grads if name.startswith("encoders.")]
    decoders = [name for name in dreg_grads if name.startswith("decoders.")]
    assert encoders
    assert decoders
    for name in encoders:
        torch.testing.assert_close(dreg_grads[name], hand_grads[name], rtol=1e-4, atol=1e-6)
    for name in decoders:
        torch.testing.assert_close(dreg_grads[name], iwae_grads[name], rtol=1e-5, atol=1e-7)
    assert not all(torch.allclose(dreg_grads[name], iwae_grads[name]) for name in encoders)


def test_posterior_is_the_mixture_of_the_cond_experts_only():
    model = make_model()
    batch = make_batch("missing")
    cond = ["a", "c"]
    z = torch.randn(5, N, LATENT)
    with torch.no_grad():
        posterior = model.posterior(batch, cond)
        params = hand_expert_parameters(model, batch, "laplace")
        for n in range(N):
            present = [i for i, name in enumerate(NAMES) if name in cond and batch.mask[name][n]]
            if present:
                mean = torch.stack([params[i][0][n] for i in present]).mean(0)
                densities = torch.stack(
                    [
                        Laplace(params[i][0][n], params[i][1][n]).log_prob(z[:, n]).sum(-1)
                        for i in present
                    ]
                )
                log_q = torch.logsumexp(densities, 0) - math.log(len(present))
            else:
                mean = torch.zeros(LATENT)
                log_q = Laplace(0.0, 1.0).log_prob(z[:, n]).sum(-1)
            torch.testing.assert_close(posterior.mean[n], mean)
            torch.testing.assert_close(posterior.log_prob(z)[:, n], log_q)

        changed = Batch(data={**batch.data, "b": batch.data["b"] + 5.0}, mask=batch.mask)
        other = model.posterior(changed, cond)
        torch.testing.assert_close(other.mean, posterior.mean)
        torch.testing.assert_close(other.log_prob(z), posterior.log_prob(z))
        torch.manual_seed(5)
        draws = posterior.rsample(6)
        torch.manual_seed(5)
        torch.testing.assert_close(other.rsample(6), draws)
        assert draws.shape == (6, N, LATENT)

        changed_cond = Batch(data={**batch.data, "a": batch.data["a"] + 5.0}, mask=batch.mask)
        assert not torch.allclose(model.posterior(changed_cond, cond).mean, posterior.mean)


def test_nll_prior_and_config_round_trip():
    model = make_model(latent_distribution="normal")
    batch = make_batch("missing")
    nll = model.nll(batch, k=30, chunk_size=7)
    assert nll.shape == (N,)
    assert torch.isfinite(nll).all()
    assert model.nll(batch, cond=["a"], gen=["b"], k=10).shape == (N,)
    assert model.prior_sample(5).shape == (5, LATENT)
    assert {name: x.shape for name, x in model.sample(5).items()} == {
        name: (5, size) for name, size in SIZES.items()
    }

    plain = make_config(bound="iwae", latent_distribution="normal").to_dict()
    rebuilt = create_model("mmvae", plain)
    assert isinstance(rebuilt, MMVAE)
    assert rebuilt.config == make_config(bound="iwae", latent_distribution="normal")


def test_bad_config_is_refused():
    with pytest.raises(ConfigError, match="samples_per_expert must be >= 1, found 0"):
        make_config(samples_per_expert=0)
    plain = make_config().to_dict()
    plain["bound"] = "dreg_looser"
    with pytest.raises(ConfigError, match="bound"):
        MMVAEConfig.from_dict(plain)


def decoder_rows(model, batch):
    """How many latents each decoder ran on in one forward pass on ``batch``."""
    rows = dict.fromkeys(NAMES, 0)
    hooks = [
        model.decoders[name].register_forward_hook(
            lambda module, inputs, output, name=name: rows.__setitem__(
                name, rows[name] + inputs[0].shape[0]
            )
        )
        for name in NAMES
    ]
    try:
        model(batch)
    finally:
        for hook in hooks:
            hook.remove()
    return rows


def test_on_incomplete_data_each_decoder_runs_only_where_expert_and_target_are_observed():
    model = make_model(samples_per_expert=3)
    observed = {
        name: [i for i, flag in enumerate(flags) if flag]
        for name, flags in MASKS["missing"].items()
    }
    # Modality d is scored from expert m's K draws of sample n when both are observed there.
    per_sample = [sum(n in observed[m] for m in NAMES) for n in range(N)]
    expected = {name: 3 * sum(per_sample[n] for n in observed[name]) for name in NAMES}
    assert decoder_rows(model, make_batch("missing")) == expected == {"a": 18, "b": 21, "c": 15}
    # Complete data decodes all K x M x N latents for every modality.
    assert decoder_rows(model, make_batch("complete")) == dict.fromkeys(NAMES, 3 * 3 * N)
    # A modality absent from the whole batch still decodes (masked), so that its decoder takes
    # part in every step with a zero gradient, as DistributedDataParallel needs.
    batch = make_batch("complete")
    batch.mask["b"] = torch.zeros(N, dtype=torch.bool)
    assert decoder_rows(model, batch)["b"] == 3 * 3 * N
