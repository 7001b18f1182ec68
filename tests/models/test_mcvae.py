"""mcVAE against its loss worked out by hand (MODELS_SPEC section 11's hand tests)."""

import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from multivae.config import ConfigError
from multivae.data.batch import Batch
from multivae.factory import create_model
from multivae.models.base import ModalityConfig
from multivae.models.mcvae import MCVAEConfig, kl_log_uniform

SIZES = {"a": 3, "b": 4, "c": 2}
LATENT = 2
N = 4
MISSING = {
    "a": [True, False, True, False],
    "b": [True, True, False, False],
    "c": [True, True, True, False],  # the last sample has nothing observed
}


def make_model(sizes=SIZES, seed=0, **options):
    torch.manual_seed(seed)
    modalities = {name: ModalityConfig(shape=(size,)) for name, size in sizes.items()}
    return create_model("mcvae", MCVAEConfig(modalities=modalities, latent_dim=LATENT, **options))


def make_batch(present=None, sizes=SIZES, seed=1):
    generator = torch.Generator().manual_seed(seed)
    mask = {name: torch.tensor((present or {}).get(name, [True] * N)) for name in sizes}
    data = {
        name: torch.where(mask[name].unsqueeze(-1), torch.randn(N, size, generator=generator), 0.0)
        for name, size in sizes.items()
    }
    return Batch(data=data, mask=mask)


def replay(model, batch, seed):
    """The objective, then its noise ``(1, M, N, D)`` drawn again from the same seed."""
    torch.manual_seed(seed)
    output = model.objective(batch)
    torch.manual_seed(seed)
    noise = torch.randn(1, len(model.modalities), N, LATENT)
    return output, noise[0]


def hand_terms(model, batch, noise):
    """Per sample: the log-likelihood of every (expert, target) pair and every expert's KL.

    Built from the encoders, decoders and formulas directly, observed pairs only.
    """
    names = list(model.modalities)
    terms = []
    with torch.no_grad():
        for n in range(N):
            observed = [i for i, m in enumerate(names) if batch.mask[m][n]]
            log_likelihoods, kls = [], []
            for i in observed:
                out = model.encoders[names[i]](batch.data[names[i]][n : n + 1])[0]
                mu, logvar = out[:LATENT], out[LATENT:]
                if model.config.sparse:
                    logvar = model.log_alpha[0] + 2 * torch.log(mu.abs() + 1e-8)
                    kls.append(kl_log_uniform(model.log_alpha[0]))
                else:
                    std = (0.5 * logvar).exp()
                    kls.append(kl_divergence(Normal(mu, std), Normal(0.0, 1.0)).sum())
                z = mu + (0.5 * logvar).exp() * noise[i, n]
                for j in observed:
                    decoded = model.decoders[names[j]](z.unsqueeze(0))[0]
                    target = batch.data[names[j]][n]
                    log_likelihoods.append(Normal(decoded, 1.0).log_prob(target).sum())
            terms.append((log_likelihoods, kls))
    return terms


def hand_loss(model, batch, noise):
    losses = []
    for log_likelihoods, kls in hand_terms(model, batch, noise):
        count = math.isqrt(len(log_likelihoods))
        scale = 1 / count**2 if model.config.ll_normalization == "m2" and count else 1.0
        losses.append(model.config.beta * sum(kls, 0.0) - scale * sum(log_likelihoods, 0.0))
    return torch.tensor([float(loss) for loss in losses])


def test_one_modality_is_a_vae_elbo():
    sizes = {"a": 3}
    model = make_model(sizes=sizes, beta=1.5)
    batch = make_batch(sizes=sizes)
    output, noise = replay(model, batch, seed=2)
    with torch.no_grad():
        means, logvars = model.unimodal_posteriors(batch)
        std = (0.5 * logvars[0]).exp()
        decoded = model.decoders["a"](means[0] + std * noise[0])
        log_p = Normal(decoded, 1.0).log_prob(batch.data["a"]).sum(-1)
        kl = kl_divergence(Normal(means[0], std), Normal(0.0, 1.0)).sum(-1)
    torch.testing.assert_close(output.loss.detach(), -log_p + 1.5 * kl, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(output.parts["reconstruction"].detach(), log_p)
    torch.testing.assert_close(output.parts["kl"].detach(), kl)


@pytest.mark.parametrize("sparse", [False, True], ids=["gaussian", "sparse"])
def test_two_modalities_give_four_log_likelihoods_and_two_kls(sparse):
    sizes = {"a": 3, "b": 4}
    model = make_model(sizes=sizes, beta=0.7, sparse=sparse)
    batch = make_batch(sizes=sizes)
    output, noise = replay(model, batch, seed=5)
    terms = hand_terms(model, batch, noise)
    assert all(len(log_likelihoods) == 4 and len(kls) == 2 for log_likelihoods, kls in terms)
    reconstruction = torch.stack([sum(ll, torch.tensor(0.0)) for ll, _ in terms])
    kl = torch.stack([sum(kls, torch.tensor(0.0)) for _, kls in terms])
    torch.testing.assert_close(output.parts["reconstruction"].detach(), reconstruction)
    torch.testing.assert_close(output.parts["kl"].detach(), kl)
    torch.testing.assert_close(output.loss.detach(), 0.7 * kl - reconstruction)


@pytest.mark.parametrize("normalization", ["none", "m2"])
@pytest.mark.parametrize("sparse", [False, True], ids=["gaussian", "sparse"])
def test_incomplete_samples_score_observed_pairs_and_observed_kls(normalization, sparse):
    model = make_model(beta=1.3, ll_normalization=normalization, sparse=sparse)
    batch = make_batch(MISSING)
    output, noise = replay(model, batch, seed=7)
    torch.testing.assert_close(
        output.loss.detach(), hand_loss(model, batch, noise), rtol=1e-5, atol=1e-5
    )
    # Nothing observed: exactly 0, value and parts.
    assert output.loss[-1].item() == 0.0
    assert all(part[-1].item() == 0.0 for part in output.parts.values())


def test_m2_divides_the_double_sum_by_the_square_of_the_observed_count():
    batch = make_batch(MISSING)
    plain = make_model()
    m2 = make_model(ll_normalization="m2")
    first, _ = replay(plain, batch, seed=3)
    second, _ = replay(m2, batch, seed=3)
    count = torch.tensor([3.0, 2.0, 2.0, 1.0])  # observed channels per sample (the last: none)
    torch.testing.assert_close(
        second.parts["reconstruction"], first.parts["reconstruction"] / count**2
    )
    torch.testing.assert_close(second.parts["kl"], first.parts["kl"])


def test_absent_experts_and_targets_get_exactly_zero_gradient():
    model = make_model(sparse=True)
    batch = make_batch({"a": [False] * N})
    model(batch).loss.backward()
    for module in (model.encoders["a"], model.decoders["a"]):
        for parameter in module.parameters():
            assert parameter.grad is not None and torch.all(parameter.grad == 0)
    assert model.log_alpha.grad is not None and model.log_alpha.grad.abs().sum() > 0


def test_the_molchanov_kl_is_its_formula():
    k1, k2, k3 = 0.63576, 1.8732, 1.48695
    values = [-3.0, -0.5, 0.0, 2.0, 7.5]
    expected = sum(
        -(k1 / (1 + math.exp(-(k2 + k3 * a))) - 0.5 * math.log(1 + math.exp(-a)) - k1)
        for a in values
    )
    found = kl_log_uniform(torch.tensor([values], dtype=torch.float64))
    torch.testing.assert_close(found, torch.tensor([expected], dtype=torch.float64))
    # log alpha is clamped to [-8, 8]; the KL vanishes as alpha grows.
    clamped = kl_log_uniform(torch.tensor([[-20.0, 30.0]]))
    torch.testing.assert_close(clamped, kl_log_uniform(torch.tensor([[-8.0, 8.0]])))
    assert 0 < kl_log_uniform(torch.tensor([[8.0]])).item() < 1e-3


def test_the_sparse_log_variance_is_log_alpha_plus_twice_log_abs_mean():
    model = make_model(sparse=True)
    assert model.log_alpha.shape == (1, LATENT)
    with torch.no_grad():
        model.log_alpha.copy_(torch.tensor([[-1.0, 0.5]]))
    batch = make_batch()
    means, logvars = model.expert_parameters(batch)
    torch.testing.assert_close(
        logvars, torch.tensor([[-1.0, 0.5]]) + 2 * torch.log(means.abs() + 1e-8)
    )
    # sigma^2 = alpha mu^2.
    torch.testing.assert_close(
        logvars.exp(), torch.tensor([-1.0, 0.5]).exp() * means**2, rtol=1e-4, atol=1e-6
    )
    torch.testing.assert_close(model.dropout_rates(), torch.tensor([-1.0, 0.5]).sigmoid())


def test_log_alpha_starts_near_zero_from_the_torch_generator():
    first, second = make_model(sparse=True, seed=4), make_model(sparse=True, seed=4)
    assert torch.equal(first.log_alpha, second.log_alpha)
    assert first.log_alpha.abs().max() < 0.05
    assert not torch.equal(first.log_alpha, make_model(sparse=True, seed=5).log_alpha)


def test_dimensions_above_the_threshold_are_zeroed_in_eval_mode_only():
    model = make_model(sparse=True)
    with torch.no_grad():
        model.log_alpha.copy_(torch.tensor([[6.0, -4.0]]))  # dropout rates 0.998 and 0.018
    assert model.kept_dimensions().tolist() == [False, True]
    batch = make_batch(MISSING)
    z = torch.ones(3, N, LATENT)

    model.train()
    assert model.posterior(batch).mean[:3, 0].abs().min() > 0
    assert torch.equal(model.generation_latent(z, "a"), z)

    model.eval()
    posterior = model.posterior(batch)
    assert torch.all(posterior.mean[:, 0] == 0)
    assert torch.all(posterior.scale[:, :, 0] == 1)  # the prior's: it cancels out of the NLL
    assert torch.all(posterior.mean[:3, 1] != 0)
    assert torch.equal(model.generation_latent(z, "a")[..., 0], torch.zeros(3, N))
    # Draws decode with the dropped dimension at 0: predictions and prior samples alike.
    drop = torch.tensor([0.0, 1.0])
    torch.manual_seed(0)
    draws = model.posterior(batch, ["c"]).rsample(1)[0]
    torch.manual_seed(0)
    predicted = model.predict(batch, cond=["c"], gen=["a"])["a"]
    torch.manual_seed(0)
    prior = model.prior_sample(5)
    torch.manual_seed(0)
    sampled = model.sample(5)["b"]
    with torch.no_grad():
        torch.testing.assert_close(predicted, model.decoders["a"](draws * drop))
        torch.testing.assert_close(sampled, model.decoders["b"](prior * drop))


def test_the_non_sparse_model_keeps_every_dimension():
    model = make_model().eval()
    assert model.kept_dimensions().tolist() == [True] * LATENT
    assert model.log_alpha is None
    with pytest.raises(ValueError, match="only the sparse variant"):
        model.dropout_rates()


@pytest.mark.parametrize("sparse", [False, True], ids=["gaussian", "sparse"])
def test_the_posterior_of_a_subset_is_the_mixture_of_its_observed_experts(sparse):
    model = make_model(sparse=sparse)
    if sparse:
        with torch.no_grad():
            model.log_alpha.copy_(torch.tensor([[-3.0, -2.0]]))  # both dimensions kept
    model.eval()
    batch = make_batch(MISSING)
    cond = ["a", "b"]
    posterior = model.posterior(batch, cond)
    means, logvars = model.expert_parameters(batch)
    z = torch.randn(7, N, LATENT)
    log_q = posterior.log_prob(z)
    with torch.no_grad():
        for n in range(N):
            experts = [i for i, m in enumerate(model.modalities) if m in cond and batch.mask[m][n]]
            if not experts:  # the prior where the subset has nothing observed
                torch.testing.assert_close(posterior.mean[n], torch.zeros(LATENT))
                expected = Normal(0.0, 1.0).log_prob(z[:, n]).sum(-1)
            else:
                torch.testing.assert_close(posterior.mean[n], means[experts, n].mean(0))
                densities = torch.stack(
                    [
                        Normal(means[i, n], (0.5 * logvars[i, n]).exp()).log_prob(z[:, n]).sum(-1)
                        for i in experts
                    ]
                )
                expected = torch.logsumexp(densities, 0) - math.log(len(experts))
            torch.testing.assert_close(log_q[:, n], expected)
    assert posterior.mask[:, -1].tolist() == [False, False, False, True]


def test_the_sparse_parameter_is_saved(tmp_path):
    model = make_model(sparse=True)
    with torch.no_grad():
        model.log_alpha.copy_(torch.tensor([[3.0, -3.0]]))
    loaded = type(model).from_pretrained(model.save_pretrained(tmp_path / "model"))
    assert torch.equal(loaded.log_alpha, model.log_alpha)
    assert loaded.kept_dimensions().tolist() == [False, True]
    assert "log_alpha" not in make_model().state_dict()


def test_config_is_validated():
    with pytest.raises(ConfigError, match="beta must be >= 0"):
        make_model(beta=-1.0)
    with pytest.raises(ConfigError, match="dropout_threshold must be in"):
        make_model(sparse=True, dropout_threshold=0.0)
    with pytest.raises(ConfigError, match="dropout_threshold must be in"):
        make_model(sparse=True, dropout_threshold=1.5)
    with pytest.raises(ConfigError, match="ll_normalization: expected one of"):
        make_model(ll_normalization="M2")


def test_evaluate_reports_and_draws_the_kept_dimensions_of_a_sparse_model(tmp_path):
    import json

    from multivae.cli import main
    from multivae.factory import load_model

    data, run = tmp_path / "views", tmp_path / "run"
    sizes = ["--param", "n_train=64", "--param", "n_val=16", "--param", "n_test=16"]
    assert main(["prepare-data", "gaussian-views", "--out", str(data), *sizes]) == 0
    config = tmp_path / "run.yaml"
    config.write_text(
        f"model: mcvae\ndata: {data}\noutput_dir: {run}\n"
        "model_config: {latent_dim: 3, sparse: true, dropout_threshold: 0.5}\n"
        "training: {epochs: 1, batch_size: 32, progress_bar: false}\nmlflow: {enabled: false}\n"
    )
    assert main(["train", "--config", str(config)]) == 0
    assert main(["train-classifiers", str(data), "--epochs", "1"]) == 0
    fast = ["--set", "k=2", "--set", 'samplers=["prior"]', "--set", "n_generated=16"]
    out = tmp_path / "report"
    evaluate = ["evaluate", "--model", str(run / "model"), "--data", str(data), "--out", str(out)]
    assert main([*evaluate, *fast]) == 0
    report = json.loads((out / "metrics.json").read_text())["latents"]["model_report"]
    model = load_model(run / "model")
    rates = model.dropout_rates()
    assert report["dropout_rates"] == pytest.approx(rates.tolist())
    assert report["kept_dimensions"] == int((rates < 0.5).sum()) and report["dimensions"] == 3
    assert (out / "figures" / "dropout_rates.png").is_file()
