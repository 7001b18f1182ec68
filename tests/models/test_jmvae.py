"""JMVAE: the loss against the paper's formula worked out by hand, and the incomplete-data rules.

The hand computations use the model's networks (encoders, joint encoder, decoders) but none of
its fusion, likelihood or KL code: torch.distributions and a hand-written product of Gaussians.
Sampling is made deterministic by replaying the seed: the model's forward draws exactly one
standard normal tensor of shape (N, latent_dim), so after the same torch.manual_seed the test
draws the same noise.
"""

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from multivae.config import ConfigError
from multivae.data import Batch
from multivae.models.base import ModalityConfig
from multivae.models.jmvae import JMVAE, JMVAEConfig
from multivae.nn.architectures import ArchitectureConfig

SHAPES = {"a": (3,), "b": (4,), "c": (3,)}
SCALES = {"a": 1.0, "b": 0.5, "c": 2.0}
LATENT = 2


def tiny_config(**options) -> JMVAEConfig:
    modalities = {
        name: ModalityConfig(
            shape=shape,
            scale=SCALES[name],
            encoder=ArchitectureConfig("mlp", {"hidden": [5]}),
            decoder=ArchitectureConfig("mlp", {"hidden": [5]}),
        )
        for name, shape in SHAPES.items()
    }
    options = {"joint_feature_dim": 4, "joint_hidden": (6,), **options}
    return JMVAEConfig(modalities=modalities, latent_dim=LATENT, **options)


def make_model(seed: int = 0, **options) -> JMVAE:
    torch.manual_seed(seed)
    return JMVAE(tiny_config(**options))


def make_batch(present: dict[str, list[bool]], n: int, seed: int = 1) -> Batch:
    """Random data, zeros in absent cells; modalities not in ``present`` are fully observed."""
    generator = torch.Generator().manual_seed(seed)
    mask = {m: torch.tensor(present.get(m, [True] * n)) for m in SHAPES}
    data = {
        m: torch.randn(n, *shape, generator=generator) * mask[m].reshape(-1, 1)
        for m, shape in SHAPES.items()
    }
    return Batch(data=data, mask=mask)


def replace_values(batch: Batch, keep: dict[str, torch.Tensor]) -> Batch:
    """A copy whose cells outside ``keep`` (modality -> (N,) bool) hold 7 instead."""
    data = {m: torch.where(keep[m].reshape(-1, 1), v, 7.0) for m, v in batch.data.items()}
    return Batch(data=data, mask=batch.mask)


def normal_from(params: torch.Tensor) -> Normal:
    mean, logvar = params.chunk(2, dim=-1)
    return Normal(mean, torch.exp(0.5 * logvar))


def hand_product(experts: list[Normal]) -> Normal:
    """Product of Gaussian experts, no prior expert: precisions add."""
    precision = sum(1.0 / expert.variance for expert in experts)
    mean = sum(expert.mean / expert.variance for expert in experts) / precision
    return Normal(mean, precision.rsqrt())


def hand_loss(
    model: JMVAE, batch: Batch, noise: torch.Tensor, alpha: float, beta: float, weight: float
) -> torch.Tensor:
    """JMVAE-kl per sample (joint encoder if complete, product of observed experts otherwise)."""
    losses = []
    for n in range(len(batch)):
        x = {m: batch.data[m][n : n + 1] for m in SHAPES}
        observed = [m for m in SHAPES if batch.mask[m][n]]
        experts = {m: normal_from(model.encoders[m](x[m])) for m in observed}
        if len(observed) == len(SHAPES):
            q = normal_from(model.joint_encoder(x))
        else:
            q = hand_product(list(experts.values()))
        z = q.mean + q.stddev * noise[n]
        log_p = sum(Normal(model.decoders[m](z), SCALES[m]).log_prob(x[m]).sum() for m in observed)
        kl_prior = kl_divergence(q, Normal(0.0, 1.0)).sum()
        kl_experts = sum(kl_divergence(q, experts[m]).sum() for m in observed)
        losses.append(-log_p + weight * (beta * kl_prior + alpha * kl_experts))
    return torch.stack(losses).mean()


@pytest.mark.parametrize(
    "present",
    [
        {},
        {
            "a": [True, True, False, True],
            "b": [True, False, False, True],
            "c": [True] * 3 + [False],
        },
        {"b": [False] * 4},
    ],
    ids=["complete", "mixed-missing", "b-absent-everywhere"],
)
def test_loss_equals_the_papers_formula_by_hand(present):
    model = make_model(alpha=0.3, beta=0.7, warmup=4.0)
    model.progress = 1.0  # KL weight 1/4
    batch = make_batch(present, n=4)
    torch.manual_seed(5)
    output = model(batch)
    torch.manual_seed(5)
    noise = torch.randn(len(batch), LATENT)
    with torch.no_grad():
        expected = hand_loss(model, batch, noise, alpha=0.3, beta=0.7, weight=0.25)
    torch.testing.assert_close(output.loss, expected)
    assert output.metrics["kl_weight"].item() == 0.25
    torch.testing.assert_close(
        output.loss,
        -output.metrics["reconstruction"]
        + 0.25 * (0.7 * output.metrics["kl"] + 0.3 * output.metrics["kl_experts"]),
    )


def test_before_warmup_the_loss_is_the_reconstruction_alone():
    model = make_model()
    output = model(make_batch({"a": [True, False]}, n=2))
    assert output.metrics["kl_weight"].item() == 0.0
    torch.testing.assert_close(output.loss, -output.metrics["reconstruction"])


def test_a_complete_samples_loss_does_not_depend_on_other_samples_missingness():
    model = make_model(warmup=0.0)
    complete = make_batch({}, n=3)
    partial = make_batch({"b": [True, False, True], "c": [True, True, False]}, n=3)
    torch.manual_seed(2)
    first = model.objective(complete).loss
    torch.manual_seed(2)
    second = model.objective(partial).loss
    assert torch.equal(first[0], second[0])
    assert not torch.equal(first[1:], second[1:])


def test_the_joint_encoder_gets_exactly_zero_gradient_from_incomplete_samples():
    model = make_model(warmup=0.0)
    batch = make_batch({"a": [True, False, True], "c": [True, True, False]}, n=3)
    losses = model.objective(batch).loss
    losses[1:].sum().backward(retain_graph=True)
    for name, parameter in model.joint_encoder.named_parameters():
        assert parameter.grad is None or torch.all(parameter.grad == 0), name
    model.zero_grad()
    losses[0].backward()
    assert any(p.grad.abs().sum() > 0 for p in model.joint_encoder.parameters())


def test_incomplete_samples_ignore_the_joint_encoder_and_absent_values():
    model = make_model(warmup=0.0)
    batch = make_batch({"a": [False, True], "b": [True, False]}, n=2)
    torch.manual_seed(4)
    first = model.objective(batch).loss
    with torch.no_grad():
        for parameter in model.joint_encoder.parameters():
            parameter.normal_()
    torch.manual_seed(4)
    second = model.objective(replace_values(batch, batch.mask)).loss
    assert torch.equal(first, second)


def test_a_modality_absent_from_the_whole_batch_gives_the_joint_encoder_zero_gradient():
    # The rest of this rule holds for every model: the contract's test.
    model = make_model(warmup=0.0)
    batch = make_batch({"c": [False] * 4}, n=4)
    model(batch).loss.backward()
    for name, parameter in model.joint_encoder.named_parameters():
        assert torch.all(parameter.grad == 0), name


@pytest.mark.parametrize(
    "cond", [["a"], ["a", "b"], ["b", "c"], None], ids=["a", "ab", "bc", "all"]
)
def test_posterior_uses_only_the_observed_conditioning_modalities(cond):
    model = make_model()
    batch = make_batch({"b": [True, False, True], "c": [False, True, True]}, n=3)
    # Cells outside these (unconditioned modalities, absent cells) may hold anything.
    used = {m: batch.mask[m] & (cond is None or m in cond) for m in SHAPES}
    with torch.no_grad():
        expected = model.posterior(batch, cond)
        found = model.posterior(replace_values(batch, used), cond)
    assert torch.equal(found.mean, expected.mean)
    assert torch.equal(found.logvar, expected.logvar)


def test_posterior_is_the_joint_encoder_when_complete_else_the_product_without_prior():
    model = make_model()
    batch = make_batch({"c": [True, False]}, n=2)
    with torch.no_grad():
        joint = normal_from(model.joint_encoder(batch.data))
        experts = {m: normal_from(model.encoders[m](batch.data[m])) for m in SHAPES}
        full = model.posterior(batch)
        single = model.posterior(batch, ["b"])
        pair = model.posterior(batch, ["a", "b"])
        empty = model.posterior(batch, [])
    torch.testing.assert_close(full.mean[0], joint.mean[0])
    torch.testing.assert_close(full.logvar[0], 2 * joint.stddev[0].log())
    product = hand_product([experts["a"], experts["b"]])
    torch.testing.assert_close(full.mean[1], product.mean[1])
    torch.testing.assert_close(pair.mean, product.mean)
    torch.testing.assert_close(pair.logvar, 2 * product.stddev.log())
    torch.testing.assert_close(single.mean, experts["b"].mean)
    torch.testing.assert_close(single.logvar, 2 * experts["b"].stddev.log())
    assert torch.equal(empty.mean, torch.zeros(2, LATENT))
    assert torch.equal(empty.logvar, torch.zeros(2, LATENT))


def test_joint_encoder_architecture_is_configurable_and_round_trips():
    config = tiny_config(joint_encoders={"b": ArchitectureConfig("mlp", {"hidden": [7, 7]})})
    rebuilt = JMVAEConfig.from_json(config.to_json())
    assert rebuilt == config
    model = JMVAE(rebuilt)
    widths = [
        layer.out_features
        for layer in model.joint_encoder.features["b"].modules()
        if isinstance(layer, torch.nn.Linear)
    ]
    assert widths == [7, 7, 4]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"alpha": -0.1}, "alpha must be >= 0"),
        ({"warmup": -1.0}, "warmup must be >= 0"),
        ({"joint_feature_dim": 0}, "joint_feature_dim must be >= 1"),
        ({"joint_hidden": (4, 0)}, "joint_hidden sizes must be >= 1"),
        ({"joint_encoders": {"d": ArchitectureConfig("mlp")}}, "unknown modalities \\['d'\\]"),
    ],
    ids=["alpha", "warmup", "feature-dim", "hidden", "joint-encoders"],
)
def test_bad_options_are_refused_with_a_clear_message(options, message):
    with pytest.raises(ConfigError, match=message):
        JMVAE(tiny_config(**options))
