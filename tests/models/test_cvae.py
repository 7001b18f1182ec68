"""CVAE: its objective and conditional likelihood against hand computations, and its roles.

The hand computations use the model's networks (feature encoders, the heads' MLPs, the decoder)
but none of its masking, layout, likelihood or KL code: the inputs of the heads and of the
decoder are laid out by hand per sample, and densities come from torch.distributions. The
model's objective draws exactly one standard normal tensor of shape (N, latent_dim), so after the
same torch.manual_seed the test replays the same noise.
"""

import math

import pytest
import torch
from kit.models import vector_batch
from torch import nn
from torch.distributions import Normal, kl_divergence

import multivae
from multivae.config import ConfigError
from multivae.data import Batch
from multivae.models.base import ModalityConfig
from multivae.models.cvae import CVAE, CVAEConfig
from multivae.nn.architectures import ArchitectureConfig

MLP = ArchitectureConfig("mlp", {"hidden": [8]})
SIZES = {"a": 3, "b": 4, "c": 2}
SCALES = {"a": 0.5, "b": 1.0, "c": 1.0}
LATENT = 2
# Sample 0 is complete, 1 lacks b, 2 lacks the main modality a, 3 lacks c, 4 is complete.
PRESENT = {
    "a": [True, True, False, True, True],
    "b": [True, False, True, True, True],
    "c": [True, True, True, False, True],
}
COMPLETE = {name: [True] * 5 for name in SIZES}
ROWS = 5
USABLE = {"drop": [True, False, False, False, True], "masked": [True, True, False, True, True]}


def make_config(sizes=SIZES, latent=LATENT, weight_a=1.0, **options) -> CVAEConfig:
    modalities = {
        name: ModalityConfig(
            shape=(size,),
            scale=SCALES.get(name, 1.0),
            weight=weight_a if name == "a" else 1.0,
            encoder=MLP,
            decoder=MLP,
        )
        for name, size in sizes.items()
    }
    options = {"joint_hidden": (8,), "prior_hidden": (6,), **options}
    return CVAEConfig(modalities=modalities, latent_dim=latent, **options)


def make_model(seed=0, **options) -> CVAE:
    torch.manual_seed(seed)
    return CVAE(make_config(**options))


def make_batch(present=PRESENT, sizes=SIZES, seed=1) -> Batch:
    return vector_batch(sizes, present, seed=seed)


def linear_layers(module: nn.Module) -> list[nn.Linear]:
    return [layer for layer in module.modules() if isinstance(layer, nn.Linear)]


def hand_terms(model: CVAE, batch: Batch, noise: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    """Per sample: q's and p's parameters, the draw z and log p(y | z, x_C), by hand."""
    main, conditions = model.main, list(model.conditions)
    encoded = [m for m in model.modalities if m == main or m in conditions]
    twice = 2 * model.config.latent_dim
    features = {m: model.encoders[m](batch.data[m]) for m in encoded}
    out = []
    for n in range(len(noise)):
        seen = {m: bool(batch.mask[m][n]) for m in model.modalities}

        def inputs(names, seen=seen, n=n):
            values = [features[m][n] if seen[m] else torch.zeros(twice) for m in names]
            return torch.cat([*values, torch.tensor([float(seen[m]) for m in names])])

        mean_q, logvar_q = model.posterior_head.head(inputs(encoded)[None])[0].chunk(2)
        if model.prior_head is None:
            mean_p, logvar_p = torch.zeros(LATENT), torch.zeros(LATENT)
        else:
            mean_p, logvar_p = model.prior_head.head(inputs(conditions)[None])[0].chunk(2)
        z = mean_q + torch.exp(0.5 * logvar_q) * noise[n]
        decoder_input = torch.cat([z, inputs(conditions)])
        params = model.decoders[main](decoder_input[None])[0]
        scale = model.config.modalities[main].scale
        log_p = Normal(params, scale).log_prob(batch.data[main][n]).sum()
        out.append(
            {
                "q": (mean_q, logvar_q),
                "p": (mean_p, logvar_p),
                "z": z,
                "log_p": log_p,
                "seen": seen,
            }
        )
    return out


def hand_losses(model: CVAE, batch: Batch, seed: int) -> torch.Tensor:
    """The loss of every sample: -lambda_y log p(y|z,x_C) + beta KL(q || p), or 0."""
    torch.manual_seed(seed)
    noise = torch.randn(len(batch), model.config.latent_dim)
    weight = model.config.modalities[model.main].weight
    losses = []
    for term in hand_terms(model, batch, noise):
        seen = term["seen"]
        counts = seen[model.main] and (
            model.config.missing_conditions == "masked" or all(seen[c] for c in model.conditions)
        )
        if not counts:
            losses.append(torch.zeros(()))
            continue
        (mean_q, logvar_q), (mean_p, logvar_p) = term["q"], term["p"]
        kl = kl_divergence(
            Normal(mean_q, torch.exp(0.5 * logvar_q)), Normal(mean_p, torch.exp(0.5 * logvar_p))
        ).sum()
        losses.append(-weight * term["log_p"] + model.config.beta * kl)
    return torch.stack(losses)


# --------------------------------------------------------------------------------------------
# The objective


@pytest.mark.parametrize("prior_network", [False, True], ids=["standard-prior", "prior-network"])
@pytest.mark.parametrize("missing", ["drop", "masked"])
def test_loss_matches_the_hand_computed_objective(missing, prior_network):
    model = make_model(
        missing_conditions=missing, prior_network=prior_network, beta=1.7, weight_a=2.0
    )
    batch = make_batch()
    torch.manual_seed(5)
    objective = model.objective(batch)
    torch.manual_seed(5)
    output = model(batch)
    with torch.no_grad():
        expected = hand_losses(model, batch, seed=5)
    torch.testing.assert_close(objective.loss, expected)
    torch.testing.assert_close(output.loss, expected.mean())
    assert output.usable == sum(USABLE[missing])
    torch.testing.assert_close(objective.usable, torch.tensor(USABLE[missing]))


def test_without_prior_network_and_with_a_decoder_ignoring_x_C_it_is_a_plain_vae_on_y():
    """The spec's hand test: -log p(y|z) + KL(q(z|y) || N(0, I)), whatever x_C holds."""
    model = make_model(beta=1.0)
    twice = 2 * LATENT
    with torch.no_grad():
        # The decoder reads z alone; the posterior head reads the features of y alone.
        linear_layers(model.decoders["a"])[0].weight[:, LATENT:] = 0.0
        first = linear_layers(model.posterior_head)[0]
        first.weight[:, twice : 3 * twice] = 0.0  # the features of b and c
        first.weight[:, 3 * twice + 1 :] = 0.0  # the presence bits of b and c
    batch = make_batch(COMPLETE)
    torch.manual_seed(3)
    objective = model.objective(batch)
    with torch.no_grad():
        q = model.posterior(batch)
        torch.manual_seed(3)
        z = q.mean + torch.exp(0.5 * q.logvar) * torch.randn(ROWS, LATENT)
        params = model.decoders["a"](torch.cat([z, torch.zeros(ROWS, 2 * (twice + 1))], -1))
        log_p = Normal(params, SCALES["a"]).log_prob(batch.data["a"]).sum(-1)
        q_dist = Normal(q.mean, torch.exp(0.5 * q.logvar))
        kl = kl_divergence(q_dist, Normal(0.0, 1.0)).sum(-1)
    torch.testing.assert_close(objective.parts["reconstruction"], log_p)
    torch.testing.assert_close(objective.parts["kl"], kl)
    torch.testing.assert_close(objective.loss, -log_p + kl)
    # Other conditioning values change nothing.
    other = Batch(
        data={**batch.data, "b": batch.data["b"] + 3.0, "c": -batch.data["c"]}, mask=batch.mask
    )
    torch.manual_seed(3)
    torch.testing.assert_close(model.objective(other).loss, objective.loss)


def test_a_constant_prior_network_gives_the_closed_form_kl():
    model = make_model(prior_network=True)
    mean_p = torch.tensor([0.7, -1.2])
    logvar_p = torch.tensor([0.4, -0.9])
    with torch.no_grad():
        last = linear_layers(model.prior_head)[-1]
        last.weight.zero_()
        last.bias.copy_(torch.cat([mean_p, logvar_p]))
    batch = make_batch(COMPLETE)
    torch.manual_seed(0)
    kl = model.objective(batch).parts["kl"]
    with torch.no_grad():
        q = model.posterior(batch)
        prior = model.posterior(batch, ["b", "c"])
    torch.testing.assert_close(prior.mean, mean_p.expand(ROWS, LATENT))
    torch.testing.assert_close(prior.logvar, logvar_p.expand(ROWS, LATENT))
    # 1/2 sum(logvar_p - logvar_q + (var_q + (mean_q - mean_p)^2) / var_p - 1)
    closed_form = 0.5 * (
        logvar_p
        - q.logvar
        + (torch.exp(q.logvar) + (q.mean - mean_p) ** 2) / torch.exp(logvar_p)
        - 1.0
    ).sum(-1)
    torch.testing.assert_close(kl, closed_form)


# --------------------------------------------------------------------------------------------
# Incomplete samples


@pytest.mark.parametrize("missing", ["drop", "masked"])
def test_samples_that_do_not_count_contribute_exactly_zero(missing):
    model = make_model(missing_conditions=missing, prior_network=True)
    batch = make_batch()
    torch.manual_seed(2)
    objective = model.objective(batch)
    dropped = [n for n in range(ROWS) if not USABLE[missing][n]]
    for n in dropped:
        assert objective.loss[n] == 0.0
        assert all(value[n] == 0.0 for value in objective.parts.values())
    objective.loss[dropped].sum().backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and torch.all(parameter.grad == 0), name
    # Their absent cells, and with drop their observed ones too, do not matter.
    noisy = Batch(
        data={m: torch.where(batch.mask[m][:, None], v, 9.0) for m, v in batch.data.items()},
        mask=batch.mask,
    )
    torch.manual_seed(2)
    torch.testing.assert_close(model.objective(noisy).loss, objective.loss.detach())


@pytest.mark.parametrize(
    ("missing", "absent"), [("drop", "c"), ("drop", "a"), ("masked", "a")], ids=str
)
def test_a_batch_without_a_usable_sample_has_zero_loss_and_zero_gradients(missing, absent):
    model = make_model(missing_conditions=missing, prior_network=True)
    batch = make_batch({**COMPLETE, absent: [False] * ROWS})
    output = model(batch)
    assert output.usable == 0  # the training loop skips this step
    assert output.loss == 0.0
    output.loss.backward()
    for name, parameter in model.named_parameters():
        # A gradient tensor for every parameter (DistributedDataParallel needs one), all zero.
        assert parameter.grad is not None and torch.all(parameter.grad == 0), name


def test_masked_conditions_give_an_absent_conditioning_modality_exactly_zero_gradient():
    model = make_model(missing_conditions="masked", prior_network=True)
    batch = make_batch({**COMPLETE, "c": [False] * ROWS})
    output = model(batch)
    assert output.usable == ROWS
    output.loss.backward()
    for parameter in model.encoders["c"].parameters():
        assert parameter.grad is not None and torch.all(parameter.grad == 0)
    for module in (model.encoders["a"], model.encoders["b"], model.decoders["a"]):
        assert all(p.grad.abs().sum() > 0 for p in module.parameters())
    assert all(p.grad.abs().sum() > 0 for p in model.prior_head.parameters())


# --------------------------------------------------------------------------------------------
# Roles, inference and generation


def test_roles_default_to_the_first_modality_given_all_the_others():
    model = make_model(prior_network=True)
    assert (model.main, model.conditions) == ("a", ("b", "c"))
    assert set(model.encoders) == {"a", "b", "c"}
    assert set(model.decoders) == {"a"}  # the conditioning modalities have no decoder
    # [z, f_b m_b, f_c m_c, m_b, m_c]
    assert linear_layers(model.decoders["a"])[0].in_features == LATENT + 2 * (2 * LATENT + 1)
    assert model.capabilities.conditional


def test_a_modality_outside_the_roles_has_no_network_and_is_never_read():
    model = make_model(main_modality="c", conditioning_modalities=["a"])
    assert (model.main, model.conditions) == ("c", ("a",))
    assert set(model.encoders) == {"a", "c"}
    assert set(model.decoders) == {"c"}
    assert model.prior_head is None
    assert not any(name.startswith("prior_head") for name in model.state_dict())
    batch = make_batch(COMPLETE)
    other = Batch(data={**batch.data, "b": batch.data["b"] + 1.0}, mask=batch.mask)
    torch.manual_seed(0)
    loss = model(batch).loss
    torch.manual_seed(0)
    torch.testing.assert_close(model(other).loss, loss)


CONDITIONABLE = [
    (("b", "c"), None, True),
    (("b", "c"), "a", True),  # generation from x_C
    (("a", "b", "c"), None, True),
    (("a", "b", "c"), "a", True),  # reconstruction through q(z | y, x_C)
    (("b", "c"), "b", False),
    (("a", "b", "c"), "c", False),
    (("a", "b"), None, False),
    (("b",), "a", False),
    (("a",), None, False),
    ((), "a", False),
    (("b", "c", "d"), "a", False),
]


@pytest.mark.parametrize(("subset", "target", "expected"), CONDITIONABLE, ids=str)
def test_conditionable_only_from_subsets_holding_every_condition(subset, target, expected):
    assert make_model().conditionable(subset, target) is expected


def test_sample_is_refused():
    with pytest.raises(ValueError, match=r"generates only given conditioning data.*\['b', 'c'\]"):
        make_model().sample(3)


def test_decode_without_conditioning_data_is_refused():
    with pytest.raises(ValueError, match="needs the conditioning data"):
        make_model().decode(torch.zeros(ROWS, LATENT))


@pytest.mark.parametrize("prior_network", [False, True], ids=["standard-prior", "prior-network"])
def test_posterior_is_q_where_y_is_given_and_observed_else_the_conditional_prior(prior_network):
    model = make_model(prior_network=prior_network, missing_conditions="masked")
    batch = make_batch()
    with torch.no_grad():
        terms = hand_terms(model, batch, torch.zeros(ROWS, LATENT))
        joint = model.posterior(batch)  # every modality: y's rows use q
        prior = model.posterior(batch, ["c", "b"])
    for n, term in enumerate(terms):
        mean, logvar = term["q"] if term["seen"]["a"] else term["p"]
        torch.testing.assert_close(joint.mean[n], mean)
        torch.testing.assert_close(joint.logvar[n], logvar)
        torch.testing.assert_close(prior.mean[n], term["p"][0])
        torch.testing.assert_close(prior.logvar[n], term["p"][1])
    with pytest.raises(ValueError, match=r"cond \['a', 'b'\] lacks \['c'\]"):
        model.posterior(batch, ["a", "b"])
    with pytest.raises(TypeError, match="string"):
        model.posterior(batch, "bc")


def test_predict_generates_y_alone_from_the_conditioning_modalities():
    model = make_model(prior_network=True).eval()
    batch = make_batch()
    one = model.predict(batch, cond=["b", "c"])
    assert {m: tuple(v.shape) for m, v in one.items()} == {"a": (ROWS, 3)}
    several = model.predict(batch, cond=["b", "c"], gen=["a"], n_samples=4)
    assert several["a"].shape == (4, ROWS, 3)
    reconstruction = model.predict(batch, cond=["a", "b", "c"], gen=["a"])
    assert reconstruction["a"].shape == (ROWS, 3)
    # The mean generation decodes the prior network's mean with x_C.
    mean = model.predict(batch, cond=["b", "c"], use_mean=True)["a"]
    with torch.no_grad():
        expected = model.decode_main(model.posterior(batch, ["b", "c"]).mean, batch)
    torch.testing.assert_close(mean, expected)
    with pytest.raises(
        ValueError, match=r"generates only its main modality 'a'.*found gen \['b'\]"
    ):
        model.predict(batch, cond=["b", "c"], gen=["b"])
    with pytest.raises(ValueError, match=r"lacks \['c'\]"):
        model.predict(batch, cond=["a", "b"], gen=["a"])
    with pytest.raises(TypeError, match="string"):
        model.predict(batch, cond=["b", "c"], gen="a")


def test_predict_of_a_categorical_main_modality_gives_class_indices():
    modalities = {
        "img": ModalityConfig(
            shape=(1, 28, 28),
            encoder=ArchitectureConfig("conv", {"channels": [2, 4]}),
            decoder=ArchitectureConfig("conv", {"channels": [2, 4]}),
        ),
        "lab": ModalityConfig(
            shape=(),
            likelihood="categorical",
            num_categories=3,
            encoder=ArchitectureConfig("embedding", {"embedding_dim": 4, "hidden": [8]}),
            decoder=MLP,
        ),
    }
    torch.manual_seed(0)
    model = CVAE(CVAEConfig(modalities=modalities, latent_dim=2, main_modality="lab")).eval()
    batch = Batch(
        data={"img": torch.rand(ROWS, 1, 28, 28), "lab": torch.tensor([0, 1, 2, 1, 0])},
        mask={"img": torch.ones(ROWS, dtype=torch.bool), "lab": torch.ones(ROWS, dtype=torch.bool)},
    )
    labels = model.predict(batch, cond=["img"])["lab"]
    assert labels.shape == (ROWS,) and labels.dtype == torch.long
    assert bool(((labels >= 0) & (labels < 3)).all())


# --------------------------------------------------------------------------------------------
# The conditional likelihood


def test_one_importance_weight_by_hand():
    model = make_model(prior_network=True, missing_conditions="masked", weight_a=5.0)
    batch = make_batch()
    torch.manual_seed(4)
    log_w = model.importance_log_weights(batch, None, None, 1)[0]
    with torch.no_grad():
        torch.manual_seed(4)
        terms = hand_terms(model, batch, torch.randn(ROWS, LATENT))
    for n, term in enumerate(terms):
        if not term["seen"]["a"]:
            assert log_w[n] == 0.0  # nothing scored
            continue
        (mean_q, logvar_q), (mean_p, logvar_p) = term["q"], term["p"]
        z = term["z"]
        expected = (  # unweighted: the training weight 5 of a is not in the likelihood
            term["log_p"]
            + Normal(mean_p, torch.exp(0.5 * logvar_p)).log_prob(z).sum()
            - Normal(mean_q, torch.exp(0.5 * logvar_q)).log_prob(z).sum()
        )
        torch.testing.assert_close(log_w[n], expected)


def test_nll_is_the_conditional_likelihood_asked_either_way_and_nothing_else():
    model = make_model(prior_network=True).eval()
    batch = make_batch()
    torch.manual_seed(0)
    plain = model.nll(batch, k=16, chunk_size=5)
    torch.manual_seed(0)
    asked = model.nll(batch, cond=["b", "c"], gen=["a"], k=16, chunk_size=5)
    torch.testing.assert_close(plain, asked, equal_nan=True)
    assert plain[2] == 0.0  # no y: nothing to score
    assert plain[[1, 3]].isnan().all()  # y without all of x_C: undefined under drop
    assert plain[[0, 4]].isfinite().all()
    for cond, gen in [
        (["b"], ["a"]),
        (["a", "b", "c"], ["a"]),
        (None, ["a", "b", "c"]),
        (["b", "c"], ["b"]),
        (["b", "c"], ["a", "c"]),
    ]:
        with pytest.raises(ValueError, match=r"defines only the conditional likelihood|lacks"):
            model.nll(batch, cond=cond, gen=gen, k=2)


GRID = torch.linspace(-10.0, 10.0, 401)
GRID_SIZES = {"a": 3, "b": 2}
# Both observed (twice), y alone, x_C alone, nothing.
GRID_PRESENT = {"a": [True, True, True, False, False], "b": [True, True, False, True, False]}


def grid_model(**options) -> CVAE:
    model = make_model(sizes=GRID_SIZES, latent=1, **options).eval()
    with torch.no_grad():
        # A decoder that depends on z: the posterior is then narrower than the prior, and a
        # wrong proposal density or prior term shows.
        linear_layers(model.decoders["a"])[-1].weight.mul_(4.0)
    return model


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"prior_network": True},
        {"prior_network": True, "missing_conditions": "masked"},
    ],
    ids=["standard-prior", "prior-network", "masked-prior-network"],
)
def test_nll_is_the_integral_of_the_conditional_prior_times_the_decoder(options):
    """-log p(y | x_C) = -log int p(z | x_C) p(y | z, x_C) dz, by quadrature on a grid."""
    model = grid_model(**options)
    mask = {m: torch.tensor(p) for m, p in GRID_PRESENT.items()}
    torch.manual_seed(1)
    with torch.no_grad():
        # Rows generated by the model itself (typical data): x_b at random, y ~ p(y | x_b).
        x_b = torch.randn(len(GRID_PRESENT["a"]), 2) * mask["b"][:, None]
        draft = Batch(data={"a": torch.zeros(5, 3), "b": x_b}, mask=mask)
        z = model.posterior(draft, ["b"]).rsample(1)[0]
        y = model.likelihood("a").sample(model.decode_main(z, draft)) * mask["a"][:, None]
        batch = Batch(data={"a": y, "b": x_b}, mask=mask)
        prior = model.posterior(batch, ["b"])
        grid = GRID.reshape(-1, 1, 1).expand(-1, 5, 1)
        params = model.decode_main(grid, batch)  # (G, N, 3)
        log_joint = Normal(params, SCALES["a"]).log_prob(y).sum(-1) + Normal(
            prior.mean, torch.exp(0.5 * prior.logvar)
        ).log_prob(grid).sum(-1)
        step = float(GRID[1] - GRID[0])
        expected = torch.logsumexp(log_joint, 0) + math.log(step)
    torch.manual_seed(2)
    estimate, error = model.nll_with_error(batch, k=20000, chunk_size=5000)
    assert estimate[3] == 0.0 and estimate[4] == 0.0  # no y: nothing scored
    if options.get("missing_conditions", "drop") == "drop":
        assert estimate[2].isnan()  # y without x_b: the model defines nothing
        scored = [0, 1]
    else:
        scored = [0, 1, 2]  # masked: p(y) with x_b absent, an integral all the same
    gap = (-estimate[scored] - expected[scored]).abs()
    assert bool((gap <= 0.02 + 4 * error[scored]).all()), (gap, error)
    assert float(error[scored].max()) < 0.05


# --------------------------------------------------------------------------------------------
# Config and folders


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"main_modality": "x"}, r"main_modality 'x' is not a modality; expected one of \['a'"),
        ({"main_modality": "b2"}, r"Did you mean 'b'\?"),
        ({"conditioning_modalities": ["b", "d"]}, r"names unknown modalities \['d'\]"),
        (
            {"main_modality": "b", "conditioning_modalities": ["a", "b"]},
            r"must not hold the main modality 'b', found \['a', 'b'\]",
        ),
        ({"conditioning_modalities": []}, r"at least one conditioning modality"),
        ({"conditioning_modalities": ["b", "b"]}, r"names \['b'\] more than once"),
        ({"sizes": {"a": 3}}, r"at least two modalities .* found \['a'\]"),
        ({"beta": -1.0}, r"cvae: beta must be >= 0, found -1.0"),
        ({"joint_hidden": (8, 0)}, r"joint_hidden sizes must be >= 1, found \[8, 0\]"),
        ({"prior_hidden": (0,)}, r"prior_hidden sizes must be >= 1"),
        (
            {"missing_conditions": "impute"},
            r"missing_conditions: expected one of \['drop', 'masked'\], found 'impute'",
        ),
        ({"prior_network": "yes"}, r"prior_network: expected true or false"),
    ],
)
def test_bad_options_are_refused_with_a_clear_message(options, message):
    with pytest.raises(ConfigError, match=message):
        make_config(**options)


def test_learning_the_scale_of_a_modality_that_is_never_scored_is_refused():
    config = make_config().to_dict()
    config["modalities"]["b"]["learn_scale"] = True
    with pytest.raises(ConfigError, match=r"modality 'b' has learn_scale.*main modality 'a'"):
        multivae.create_model("cvae", config)
    config["modalities"]["b"]["learn_scale"] = False
    config["modalities"]["a"]["learn_scale"] = True
    assert "likelihoods.a.log_scale" in dict(
        multivae.create_model("cvae", config).named_parameters()
    )


def test_save_then_load_keeps_the_roles_the_weights_and_the_outputs(tmp_path):
    model = make_model(
        main_modality="c",
        conditioning_modalities=["b", "a"],
        prior_network=True,
        missing_conditions="masked",
    ).eval()
    batch = make_batch()
    loaded = multivae.load_model(model.save_pretrained(tmp_path / "cvae"))
    assert isinstance(loaded, CVAE)
    assert loaded.config == model.config
    assert (loaded.main, loaded.conditions) == ("c", ("a", "b"))
    assert loaded.state_dict().keys() == model.state_dict().keys()
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    for method, arguments in (
        ("predict", {"cond": ["a", "b"], "n_samples": 2}),
        ("nll", {"k": 6}),
    ):
        torch.manual_seed(0)
        expected = getattr(model, method)(batch, **arguments)
        torch.manual_seed(0)
        found = getattr(loaded, method)(batch, **arguments)
        if method == "predict":
            expected, found = expected["c"], found["c"]
        torch.testing.assert_close(found, expected, rtol=0, atol=0, equal_nan=True)
