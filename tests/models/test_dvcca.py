"""DVCCA against its objective worked out by hand, its inference rules and its options.

``DVCCA.objective`` documents its draws: ``torch.randn((1, N, D))`` for ``z``, then, with private
latents, ``torch.randn((1, N, P))`` per view in the config's order. The hand computations reseed
and draw the same noise, and use the model's encoders and decoders but none of its posterior, KL
or likelihood code: KLs are written out, likelihoods come from ``torch.distributions``, and the
restriction to observed views is a Python loop per sample.
"""

import math

import pytest
import torch
from torch.distributions import Normal

import multivae
from multivae.config import ConfigError
from multivae.data.batch import Batch
from multivae.models.base import ModalityConfig
from multivae.models.dvcca import DVCCA, AbsentEncoder, DVCCAConfig
from multivae.nn.architectures import ArchitectureConfig

SHAPES = {"a": 3, "b": 4, "c": 2}
SCALES = {"a": 1.0, "b": 0.5, "c": 2.0}
WEIGHTS = {"a": 1.0, "b": 2.0, "c": 0.5}
LATENT = 2
N = 6
MISSING = {
    # Sample 1 lacks the primary a; sample 3 has nothing; sample 5 has only b.
    "a": [True, False, True, False, True, False],
    "b": [True, True, False, False, True, True],
    "c": [True, True, True, False, False, False],
}
COMPLETE = {m: [True] * N for m in SHAPES}


def make_config(shapes=SHAPES, **options) -> DVCCAConfig:
    mlp = ArchitectureConfig("mlp", {"hidden": [6]})
    modalities = {
        name: ModalityConfig(
            shape=(size,), scale=SCALES[name], weight=WEIGHTS[name], encoder=mlp, decoder=mlp
        )
        for name, size in shapes.items()
    }
    return DVCCAConfig(modalities=modalities, latent_dim=LATENT, **options)


def make_model(seed=0, shapes=SHAPES, **options) -> DVCCA:
    torch.manual_seed(seed)
    return DVCCA(make_config(shapes, **options))


def make_batch(present, shapes=SHAPES, seed=1) -> Batch:
    generator = torch.Generator().manual_seed(seed)
    mask = {m: torch.tensor(present[m]) for m in shapes}
    data = {
        m: torch.randn(N, size, generator=generator) * mask[m].reshape(-1, 1)
        for m, size in shapes.items()
    }
    return Batch(data=data, mask=mask)


def hand_kl(mean, var):
    """KL(N(mean, var) || N(0, I)), summed."""
    return 0.5 * (var + mean**2 - 1.0 - torch.log(var)).sum()


def split(features, size):
    """Means and variances of an encoder output ``[means | log-variances]`` of ``size`` each."""
    return features[..., :size], torch.exp(features[..., size:].clamp(-20.0, 20.0))


def hand_objective(model, batch, seed):
    """Per sample: (loss, reconstruction, kl, kl_private) of the spec, sample by sample."""
    config = model.config
    primary, private_dim = model.primary, config.private_dim
    names = list(model.modalities)
    mean_p, var_p = split(model.encoders[primary](batch.data[primary]), LATENT + private_dim)
    private = {}
    for m in names if private_dim else []:
        if m == primary:
            private[m] = (mean_p[:, LATENT:], var_p[:, LATENT:])
        else:
            private[m] = split(model.encoders[m](batch.data[m]), private_dim)
    torch.manual_seed(seed)
    z_noise = torch.randn(1, N, LATENT)[0]
    h_noise = {m: torch.randn(1, N, private_dim)[0] for m in private}
    rows = []
    for n in range(N):
        observed = [m for m in names if batch.mask[m][n]]
        has_primary = primary in observed
        if not observed or (config.missing_primary == "drop" and not has_primary):
            rows.append((0.0, 0.0, 0.0, 0.0))
            continue
        if has_primary:
            mean, var = mean_p[n, :LATENT], var_p[n, :LATENT]
            kl = hand_kl(mean, var)
        else:  # missing_primary="prior": q(z) = p(z)
            mean, var, kl = torch.zeros(LATENT), torch.ones(LATENT), torch.zeros(())
        z = mean + var.sqrt() * z_noise[n]  # one z for every decoder
        reconstruction = torch.zeros(())
        kl_private = torch.zeros(())
        for m in observed:
            latent = z
            if m in private:
                h_mean, h_var = private[m][0][n], private[m][1][n]
                latent = torch.cat([z, h_mean + h_var.sqrt() * h_noise[m][n]])
                kl_private = kl_private + hand_kl(h_mean, h_var)
            params = model.decoders[m](latent.unsqueeze(0))[0]
            log_p = Normal(params, SCALES[m]).log_prob(batch.data[m][n]).sum()
            reconstruction = reconstruction + WEIGHTS[m] * log_p
        loss = -reconstruction + config.beta * (kl + kl_private)
        rows.append(tuple(float(v) for v in (loss, reconstruction, kl, kl_private)))
    return torch.tensor(rows).T  # (4, N)


# --------------------------------------------------------------------------------------------
# The objective


def test_one_view_without_private_latents_is_a_vae_elbo():
    """M = 1: ``-log p(x | z) + beta KL(N(mu, s^2) || N(0, I))`` in closed form."""
    shapes = {"a": 3}
    model = make_model(shapes=shapes, beta=1.5)
    batch = make_batch({"a": [True] * N}, shapes)
    torch.manual_seed(3)
    loss = model(batch).loss
    with torch.no_grad():
        mean, var = split(model.encoders["a"](batch.data["a"]), LATENT)
        torch.manual_seed(3)
        z = mean + var.sqrt() * torch.randn(1, N, LATENT)[0]
        log_px = Normal(model.decoders["a"](z), 1.0).log_prob(batch.data["a"]).sum(-1)
        kl = 0.5 * (var + mean**2 - 1.0 - torch.log(var)).sum(-1)
        expected = (-log_px + 1.5 * kl).mean()
    torch.testing.assert_close(loss, expected)


@pytest.mark.parametrize("rule", ["drop", "prior"])
@pytest.mark.parametrize("private_dim", [0, 2], ids=["vcca", "private"])
@pytest.mark.parametrize("present", [COMPLETE, MISSING], ids=["complete", "missing"])
def test_objective_matches_the_hand_computed_one(present, private_dim, rule):
    model = make_model(private_dim=private_dim, beta=0.7, missing_primary=rule)
    batch = make_batch(present)
    torch.manual_seed(7)
    objective = model.objective(batch)
    with torch.no_grad():
        expected = hand_objective(model, batch, 7)
    torch.testing.assert_close(objective.loss.detach(), expected[0], rtol=1e-5, atol=1e-5)
    parts = ["reconstruction", "kl"] + (["kl_private"] if private_dim else [])
    assert list(objective.parts) == parts
    for i, name in enumerate(parts, start=1):
        found = objective.parts[name].detach()
        torch.testing.assert_close(found, expected[i], rtol=1e-5, atol=1e-5)
    torch.manual_seed(7)
    torch.testing.assert_close(model(batch).loss, objective.loss.mean())


def test_each_private_kl_counts_once_over_the_observed_views():
    """The reference's private variant counts the last view's private KL twice; here, once."""
    model = make_model(private_dim=2, beta=1.0)
    batch = make_batch(MISSING)
    torch.manual_seed(0)
    with torch.no_grad():
        kl_private = model.objective(batch).parts["kl_private"]
        expected = torch.zeros(N)
        for m in SHAPES:
            features = model.encoders[m](batch.data[m])
            start = LATENT if m == "a" else 0
            size = features.shape[-1] // 2
            mean, var = features[:, start:size], torch.exp(features[:, size + start :])
            kl = 0.5 * (var + mean**2 - 1.0 - torch.log(var)).sum(-1)
            expected += torch.where(batch.mask[m], kl, 0.0)
    usable = batch.mask["a"]
    torch.testing.assert_close(kl_private, torch.where(usable, expected, 0.0))


def test_one_draw_of_z_reaches_every_decoder():
    model = make_model(private_dim=1)
    batch = make_batch(COMPLETE)
    inputs = {}
    for m in SHAPES:
        model.decoders[m].register_forward_hook(
            lambda module, args, out, m=m: inputs.__setitem__(m, args[0])
        )
    model(batch)
    shared = [inputs[m][:, :LATENT] for m in SHAPES]
    for other in shared[1:]:
        assert torch.equal(other, shared[0])
    # The private halves are each view's own draws.
    assert not torch.equal(inputs["b"][:, LATENT:], inputs["c"][:, LATENT:])


# --------------------------------------------------------------------------------------------
# Incomplete data: drop and prior


def test_drop_scores_only_samples_with_the_primary_view_exactly():
    model = make_model(private_dim=2)
    batch = make_batch(MISSING)
    torch.manual_seed(1)
    objective = model.objective(batch)
    without = ~batch.mask["a"]
    assert torch.equal(objective.usable, batch.mask["a"])
    assert torch.all(objective.loss[without] == 0)
    for name, value in objective.parts.items():
        assert torch.all(value[without] == 0), name
    # Samples without it still count in the batch mean, with exactly zero gradient.
    torch.manual_seed(1)
    output = model(batch)
    torch.testing.assert_close(output.loss, objective.loss.sum() / N)
    assert output.usable == int(batch.mask["a"].sum())
    objective.loss[without].sum().backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is None or torch.all(parameter.grad == 0), name


def test_a_batch_without_the_primary_view_has_no_usable_sample():
    model = make_model(private_dim=1)
    batch = make_batch({**COMPLETE, "a": [False] * N})
    output = model(batch)
    assert output.usable == 0
    assert output.loss == 0
    output.loss.backward()
    # Every parameter still takes part (DistributedDataParallel), with a zero gradient.
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and torch.all(parameter.grad == 0), name


def test_prior_scores_samples_without_the_primary_view_from_the_prior():
    model = make_model(private_dim=1, missing_primary="prior")
    batch = make_batch(MISSING)
    torch.manual_seed(4)
    objective = model.objective(batch)
    # Samples 1 and 5 lack a: no shared KL, but their observed views are scored.
    assert torch.equal(objective.usable, torch.tensor([True, True, True, False, True, True]))
    assert objective.parts["kl"][1] == 0 and objective.parts["kl"][5] == 0
    assert objective.parts["reconstruction"][1] != 0 and objective.parts["kl_private"][5] > 0
    assert objective.loss[3] == 0  # nothing observed
    # The primary encoder gets nothing from them.
    model.zero_grad()
    objective.loss[[1, 5]].sum().backward()
    for parameter in model.encoders["a"].parameters():
        assert torch.all(parameter.grad == 0)
    assert any(p.grad.abs().sum() > 0 for p in model.encoders["b"].parameters())


@pytest.mark.parametrize("rule", ["drop", "prior"])
def test_absent_cells_give_their_encoder_outputs_exactly_zero_gradient(rule):
    model = make_model(private_dim=2, missing_primary=rule)
    batch = make_batch(MISSING)
    outputs = {}

    def keep(name):
        def hook(module, inputs, output):
            output.retain_grad()
            outputs[name] = output

        return hook

    for name in SHAPES:
        model.encoders[name].register_forward_hook(keep(name))
    torch.manual_seed(0)
    model(batch).loss.backward()
    usable = batch.mask["a"] if rule == "drop" else torch.stack(list(batch.mask.values())).any(0)
    for name in SHAPES:
        grad = outputs[name].grad
        counted = batch.mask[name] & usable
        assert torch.equal(grad[~counted], torch.zeros_like(grad[~counted])), name
        assert (grad[counted].abs().sum(-1) > 0).all(), name


# --------------------------------------------------------------------------------------------
# Inference


def test_only_subsets_with_the_primary_view_are_conditionable():
    model = make_model()
    assert model.conditionable(["a"]) and model.conditionable(["a", "c"])
    assert model.conditionable(["a"], "b") and model.conditionable(["a", "b"], "c")
    assert not model.conditionable(["b"]) and not model.conditionable(["b", "c"])
    assert not model.conditionable(["b"], "a") and not model.conditionable(["b", "c"], "a")
    assert not model.conditionable(["a"], "a")  # a target inside the subset
    other = make_model(primary_modality="c")
    assert other.conditionable(["c"], "a") and not other.conditionable(["a", "b"], "c")


def test_the_posterior_is_the_primary_views_with_the_prior_where_it_is_absent():
    model = make_model(private_dim=1)
    batch = make_batch(MISSING)
    with torch.no_grad():
        features = model.encoders["a"](batch.data["a"])
        mean, var = features[:, :LATENT], torch.exp(features[:, 3 : 3 + LATENT])
        for cond in (None, ["a"], ["a", "b", "c"]):
            posterior = model.posterior(batch, cond)
            present = batch.mask["a"].unsqueeze(-1)
            torch.testing.assert_close(posterior.mean, torch.where(present, mean, 0.0))
            torch.testing.assert_close(posterior.logvar, torch.where(present, var.log(), 0.0))
        # The other views do not enter it.
        changed = Batch(data={**batch.data, "b": batch.data["b"] + 5.0}, mask=batch.mask)
        torch.testing.assert_close(model.posterior(changed, ["a", "b"]).mean, posterior.mean)


def test_the_posterior_refuses_a_subset_without_the_primary_view():
    model = make_model()
    batch = make_batch(COMPLETE)
    message = r"primary modality 'a' alone; cond \['b', 'c'\] does not hold it"
    with pytest.raises(ValueError, match=message):
        model.posterior(batch, ["b", "c"])
    with pytest.raises(ValueError, match="does not hold it"):
        model.predict(batch, cond=["b"], gen=["c"])
    with pytest.raises(ValueError, match="does not hold it"):
        model.nll(batch, cond=["b"], gen=["a"], k=2)


def test_private_latents_come_from_the_posterior_only_for_observed_conditioning_views():
    model = make_model(private_dim=2)
    batch = make_batch(MISSING)
    posteriors = model.private_posteriors(batch)
    with torch.no_grad():
        features = model.encoders["a"](batch.data["a"])
        torch.testing.assert_close(posteriors["a"].mean, features[:, LATENT:4])
        b_means = model.encoders["b"](batch.data["b"])[:, :2]
        torch.testing.assert_close(posteriors["b"].mean, b_means)
        torch.manual_seed(0)
        drawn = model.generation_privates(batch, ["a", "b"], ["b", "c"], 1, use_mean=True)
    present = batch.mask["b"].unsqueeze(-1)
    torch.testing.assert_close(drawn["b"][0], torch.where(present, posteriors["b"].mean, 0.0))
    torch.testing.assert_close(drawn["c"][0], torch.zeros(N, 2))  # not conditioned on: prior


def test_the_nll_proposal_is_the_primary_posterior_or_the_prior():
    model = make_model(private_dim=1).eval()
    batch = make_batch(MISSING)
    torch.manual_seed(0)
    z, log_psi = model.joint_proposal(batch, None, 3)
    posterior = model.posterior(batch)
    torch.testing.assert_close(log_psi, posterior.log_prob(z))
    standard = Normal(0.0, 1.0).log_prob(z).sum(-1)
    absent = ~batch.mask["a"]
    torch.testing.assert_close(log_psi[:, absent], standard[:, absent])
    # Scoring views without the primary one: the prior for every sample.
    z, log_psi = model.joint_proposal(batch, ["b", "c"], 3)
    torch.testing.assert_close(log_psi, Normal(0.0, 1.0).log_prob(z).sum(-1))
    nll = model.nll(batch, k=50)
    assert torch.isfinite(nll).all() and nll[3] == 0  # sample 3: nothing observed


def test_an_importance_weight_of_one_view_replays_by_hand():
    """M = 1: ``log w = log p(x | z) + log p(z) - log q(z | x)`` with ``z ~ q(z | x)``."""
    shapes = {"a": 3}
    model = make_model(shapes=shapes).eval()
    batch = make_batch({"a": [True] * N}, shapes)
    torch.manual_seed(5)
    log_w = model.importance_log_weights(batch, None, None, 1)[0]
    with torch.no_grad():
        mean, var = split(model.encoders["a"](batch.data["a"]), LATENT)
        torch.manual_seed(5)
        z = mean + var.sqrt() * torch.randn(1, N, LATENT)[0]
        q = Normal(mean, var.sqrt()).log_prob(z).sum(-1)
        prior = Normal(0.0, 1.0).log_prob(z).sum(-1)
        log_px = Normal(model.decoders["a"](z), 1.0).log_prob(batch.data["a"]).sum(-1)
    torch.testing.assert_close(log_w, log_px + prior - q)


# --------------------------------------------------------------------------------------------
# Networks, options, saving


def test_views_besides_the_primary_encode_only_their_private_latent():
    vcca = make_model()
    assert isinstance(vcca.encoders["b"], AbsentEncoder)
    assert list(vcca.encoders["b"].parameters()) == []
    with pytest.raises(ValueError, match="'b' has no encoder"):
        vcca.encoders["b"](torch.zeros(1, 4))
    assert vcca.private_dims == {} and not vcca.capabilities.private_latents
    private = make_model(private_dim=3, primary_modality="b")
    batch = make_batch(COMPLETE)
    sizes = {m: private.encoders[m](batch.data[m]).shape[-1] for m in SHAPES}
    assert sizes == {"a": 6, "b": 2 * (LATENT + 3), "c": 6}
    assert private.private_dims == {"a": 3, "b": 3, "c": 3}
    assert all(private.decoder_latent_dim(m) == LATENT + 3 for m in SHAPES)


def test_another_primary_view_infers_z_from_its_own_encoder():
    model = make_model(primary_modality="b")
    assert isinstance(model.encoders["a"], AbsentEncoder)
    batch = make_batch(MISSING)
    with torch.no_grad():
        mean = model.encoders["b"](batch.data["b"])[:, :LATENT]
        posterior = model.posterior(batch, ["b"])
    present = batch.mask["b"].unsqueeze(-1)
    torch.testing.assert_close(posterior.mean, torch.where(present, mean, 0.0))
    torch.manual_seed(2)
    objective = model.objective(batch)
    assert torch.equal(objective.usable, batch.mask["b"])


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"primary_modality": "d"}, r"primary_modality must be one of .*'a', 'b', 'c'.*'d'"),
        ({"primary_modality": ""}, r"primary_modality: expected a value, found an empty text"),
        ({"private_dim": -1}, r"dvcca: private_dim must be >= 0, found -1"),
        ({"private_dim": 1.5}, r"private_dim: expected an integer, found 1.5"),
        ({"private_dim": True}, r"private_dim: expected an integer, found True"),
        ({"beta": -0.5}, r"dvcca: beta must be a finite number >= 0, found -0.5"),
        ({"beta": math.nan}, r"dvcca: beta must be a finite number >= 0, found nan"),
        ({"beta": "1"}, r"beta: expected a number, found '1'"),
        (
            {"missing_primary": "skip"},
            r"missing_primary: expected one of \['drop', 'prior'\], found 'skip'",
        ),
    ],
)
def test_bad_options_are_refused(options, message):
    with pytest.raises(ConfigError, match=message):
        make_config(**options)


def test_a_plain_config_with_an_unknown_option_is_refused():
    raw = make_config().to_dict()
    raw["sparse"] = True
    with pytest.raises(ConfigError, match="unknown key 'sparse'"):
        multivae.create_model("dvcca", raw)


@pytest.mark.parametrize("private_dim", [0, 2], ids=["vcca", "private"])
def test_save_then_load_keeps_the_model(tmp_path, private_dim):
    model = make_model(private_dim=private_dim, primary_modality="b", missing_primary="prior")
    model.eval()
    batch = make_batch(MISSING)
    folder = model.save_pretrained(tmp_path / "model")
    loaded = multivae.load_model(folder)
    assert isinstance(loaded, DVCCA) and loaded.config == model.config
    assert loaded.primary == "b"
    assert loaded.state_dict().keys() == model.state_dict().keys()
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    torch.manual_seed(0)
    expected = model.predict(batch, cond=["b", "c"], gen=["a", "c"])
    torch.manual_seed(0)
    found = loaded.predict(batch, cond=["b", "c"], gen=["a", "c"])
    for name in ("a", "c"):
        assert torch.equal(found[name], expected[name])
    torch.manual_seed(1)
    expected_loss = model(batch).loss
    torch.manual_seed(1)
    assert torch.equal(loaded(batch).loss, expected_loss)
