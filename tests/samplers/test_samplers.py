"""Latent samplers: each fits what it should, scores a normalized density, and round-trips."""

import json
import math

import pytest
import torch
import zuko
from sklearn.mixture import GaussianMixture

import multivae
from multivae.config import ConfigError
from multivae.data import MultimodalDataset, make_dataloader, read_schema
from multivae.data.datasets import prepare_builtin
from multivae.models.mopoe import MoPoEConfig
from multivae.samplers import (
    SAMPLERS,
    GaussianMixtureSampler,
    IAFSampler,
    LatentSampler,
    MAFSampler,
    PriorSampler,
    SamplerNotFittedError,
    create_sampler,
    encode_latents,
    fit_sampler,
    load_sampler,
)

FLOW_OPTIONS = {"n_layers": 4, "hidden_size": 32, "steps": 300}
"""Small flows: about a second to fit on 3000 two-dimensional points."""


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def two_gaussians(n: int, seed: int = 0) -> torch.Tensor:
    """A known mixture: 30% around (-2, 0) stretched along x, 70% around (2, 1), tilted."""
    g = generator(seed)
    first = torch.randn(n, 2, generator=g) @ torch.tensor([[0.8, 0.0], [0.0, 0.3]])
    second = torch.randn(n, 2, generator=g) @ torch.tensor([[0.5, 0.3], [0.0, 0.4]])
    pick = torch.rand(n, generator=g) < 0.3
    return torch.where(
        pick[:, None], first + torch.tensor([-2.0, 0.0]), second + torch.tensor([2.0, 1.0])
    )


def banana(n: int, seed: int) -> torch.Tensor:
    """``x1 ~ N(0, 1)``, ``x2 = x1^2 - 1 + N(0, 0.25^2)``: far from any single Gaussian."""
    g = generator(seed)
    x1 = torch.randn(n, generator=g)
    x2 = x1.square() - 1 + 0.25 * torch.randn(n, generator=g)
    return torch.stack([x1, x2], dim=1)


def fitted(kind: str) -> LatentSampler:
    """A sampler fitted on 500 points of the known mixture (the flows barely trained)."""
    tiny_flow = {"n_layers": 2, "hidden_size": 16, "steps": 30}
    options = {"gmm": {"n_components": 2}, "maf": tiny_flow, "iaf": tiny_flow}
    return create_sampler(kind, **options.get(kind, {})).fit(two_gaussians(500))


def test_registry_holds_the_four_kinds():
    registered = dict(SAMPLERS)
    assert registered == {
        "prior": PriorSampler,
        "gmm": GaussianMixtureSampler,
        "maf": MAFSampler,
        "iaf": IAFSampler,
    }
    assert isinstance(create_sampler("gmm", n_components=3), GaussianMixtureSampler)
    with pytest.raises(ConfigError, match=r"unknown sampler kind 'gmn'.*Did you mean 'gmm'\?"):
        create_sampler("gmn")
    with pytest.raises(ConfigError, match=r"unknown options \['n_component'\].*'n_components'"):
        create_sampler("gmm", n_component=3)


# --------------------------------------------------------------------------------------------
# Prior


def test_prior_is_the_standard_normal():
    sampler = PriorSampler().fit(torch.full((4, 3), 7.0))
    assert sampler.dim == 3
    draws = sampler.sample(20000, generator()).double()
    assert draws.shape == (20000, 3)
    torch.testing.assert_close(
        draws.mean(0), torch.zeros(3, dtype=torch.float64), atol=0.03, rtol=0
    )
    torch.testing.assert_close(draws.T.cov(), torch.eye(3, dtype=torch.float64), atol=0.04, rtol=0)
    z = torch.randn(50, 3, generator=generator(1), dtype=torch.float64) * 2
    expected = -0.5 * (z**2).sum(1) - 1.5 * math.log(2 * math.pi)
    torch.testing.assert_close(sampler.log_prob(z), expected, atol=1e-12, rtol=0)


# --------------------------------------------------------------------------------------------
# Gaussian mixture


def test_gmm_samples_match_a_known_mixture():
    data = two_gaussians(4000).double()
    sampler = GaussianMixtureSampler(n_components=2).fit(data)
    draws = sampler.sample(40000, generator()).double()
    assert sampler.sample(1).dtype == torch.float32
    torch.testing.assert_close(draws.mean(0), data.mean(0), atol=0.05, rtol=0)
    torch.testing.assert_close(draws.T.cov(), data.T.cov(), atol=0.08, rtol=0)
    # The two components are recovered, the heavier one where the data put 70%.
    heavy = sampler.weights.argmax()
    assert sampler.weights[heavy] == pytest.approx(0.7, abs=0.03)
    torch.testing.assert_close(
        sampler.means[heavy], torch.tensor([2.0, 1.0], dtype=torch.float64), atol=0.05, rtol=0
    )


@pytest.mark.parametrize("covariance_type", ["full", "tied", "diag", "spherical"])
def test_gmm_log_prob_is_sklearn_score_samples(covariance_type):
    data = two_gaussians(1000)
    sampler = GaussianMixtureSampler(n_components=3, covariance_type=covariance_type, seed=4)
    sampler.fit(data)
    reference = GaussianMixture(3, covariance_type=covariance_type, random_state=4)
    reference.fit(data.double().numpy())
    points = torch.cat([data[:200], torch.randn(100, 2, generator=generator(2)) * 6]).double()
    expected = torch.from_numpy(reference.score_samples(points.numpy()))
    torch.testing.assert_close(sampler.log_prob(points), expected, atol=1e-9, rtol=1e-12)


# --------------------------------------------------------------------------------------------
# Flows


@pytest.fixture(scope="module")
def banana_flows():
    train = banana(3000, seed=0)
    return train, {kind: create_sampler(kind, **FLOW_OPTIONS).fit(train) for kind in ("maf", "iaf")}


@pytest.mark.parametrize("kind", ["maf", "iaf"])
def test_flow_beats_a_gaussian_on_held_out_data(kind, banana_flows):
    train, flows = banana_flows
    held_out = banana(2000, seed=1)
    gaussian = GaussianMixtureSampler(n_components=1).fit(train)
    flow_score = flows[kind].log_prob(held_out).mean().item()
    gaussian_score = gaussian.log_prob(held_out).mean().item()
    # The banana's true mean log-density is about -1.45 and the best Gaussian's about -3.2.
    assert flow_score > gaussian_score + 1.0, (flow_score, gaussian_score)


@pytest.mark.parametrize("kind", ["maf", "iaf"])
def test_flow_density_integrates_to_one(kind, banana_flows):
    _, flows = banana_flows
    xs = torch.linspace(-5.0, 5.0, 201)
    ys = torch.linspace(-3.0, 14.0, 341)
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="ij"), dim=-1).reshape(-1, 2)
    density = flows[kind].log_prob(grid.double()).exp()
    integral = density.sum().item() * (xs[1] - xs[0]).item() * (ys[1] - ys[0]).item()
    assert integral == pytest.approx(1.0, abs=0.03)


@pytest.mark.parametrize("kind", ["maf", "iaf"])
def test_flow_samples_follow_the_data(kind, banana_flows):
    train, flows = banana_flows
    draws = flows[kind].sample(6000, generator(3))
    assert draws.shape == (6000, 2)
    assert draws.dtype == torch.float32
    torch.testing.assert_close(draws.mean(0), train.mean(0), atol=0.1, rtol=0)
    levels = torch.tensor([0.1, 0.5, 0.9])
    torch.testing.assert_close(
        draws[:, 1].quantile(levels), train[:, 1].quantile(levels), atol=0.15, rtol=0
    )
    # The curve itself: x2 follows x1^2 (a Gaussian's samples would show no such relation).
    relation = torch.corrcoef(torch.stack([draws[:, 0].square(), draws[:, 1]]))[0, 1]
    assert relation > 0.9


@pytest.mark.parametrize(
    ("kind", "density_passes", "sampling_passes"), [("maf", 1, 2), ("iaf", 3, 1)]
)
def test_flow_direction_sets_which_side_is_sequential(
    kind, density_passes, sampling_passes, banana_flows
):
    """In 2-D: MAF scores in one pass per layer and samples in two; IAF the other way round
    (plus one pass for the log-determinant of the inverse)."""
    _, flows = banana_flows
    sampler = flows[kind]
    calls = []
    hooks = [
        module.register_forward_hook(lambda *_: calls.append(1))
        for module in sampler.flow.modules()
        if isinstance(module, zuko.nn.MaskedMLP)
    ]
    assert len(hooks) == FLOW_OPTIONS["n_layers"]
    try:
        sampler.log_prob(torch.zeros(3, 2))
        density_calls = len(calls)
        sampler.sample(3)
        sampling_calls = len(calls) - density_calls
    finally:
        for hook in hooks:
            hook.remove()
    assert density_calls == density_passes * FLOW_OPTIONS["n_layers"]
    assert sampling_calls == sampling_passes * FLOW_OPTIONS["n_layers"]


def test_flow_fit_is_seeded_and_leaves_the_global_rng_alone():
    data = two_gaussians(300)
    options = {"n_layers": 2, "hidden_size": 8, "steps": 20}
    torch.manual_seed(123)
    first = MAFSampler(**options).fit(data)
    after_fit = torch.rand(3)
    torch.manual_seed(123)
    assert torch.equal(torch.rand(3), after_fit)
    second = MAFSampler(**options).fit(data)
    other_seed = MAFSampler(**options, seed=1).fit(data)
    assert torch.equal(first.log_prob(data), second.log_prob(data))
    assert not torch.equal(first.log_prob(data), other_seed.log_prob(data))


# --------------------------------------------------------------------------------------------
# Saving and loading


@pytest.mark.parametrize("kind", sorted(SAMPLERS))
def test_save_load_gives_identical_samples_and_log_prob(kind, tmp_path):
    sampler = fitted(kind)
    folder = sampler.save(tmp_path / "sampler")
    assert sorted(p.name for p in folder.iterdir()) == ["sampler.json", "sampler.safetensors"]
    document = json.loads((folder / "sampler.json").read_text())
    assert document == {
        "format_version": 1,
        "kind": kind,
        "config": sampler.config(),
        "dim": 2,
    }
    loaded = load_sampler(folder)
    assert type(loaded) is type(sampler)
    assert loaded.config() == sampler.config()
    points = two_gaussians(100, seed=5)
    assert torch.equal(loaded.log_prob(points), sampler.log_prob(points))
    assert torch.equal(loaded.sample(50, generator(7)), sampler.sample(50, generator(7)))
    assert type(sampler).load(folder).dim == 2


def test_save_replaces_a_sampler_folder_atomically_and_refuses_other_folders(tmp_path):
    folder = tmp_path / "sampler"
    fitted("prior").save(folder)
    fitted("gmm").save(folder)
    assert isinstance(load_sampler(folder), GaussianMixtureSampler)
    assert [p.name for p in tmp_path.iterdir()] == ["sampler"]  # no staging folder left
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match=r"precious exists and is not a sampler folder"):
        fitted("prior").save(precious)
    assert (precious / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["precious", "sampler"]


def test_loading_refuses_bad_folders(tmp_path):
    folder = fitted("gmm").save(tmp_path / "gmm")
    with pytest.raises(ConfigError, match=r"holds a 'gmm' sampler, not a MAFSampler"):
        MAFSampler.load(folder)

    document = json.loads((folder / "sampler.json").read_text())
    (folder / "sampler.json").write_text(json.dumps({**document, "kind": "vae"}))
    with pytest.raises(ConfigError, match=r"unknown sampler kind 'vae'; expected one of"):
        load_sampler(folder)

    options = {**document["config"], "n_components": 3}
    (folder / "sampler.json").write_text(json.dumps({**document, "config": options}))
    with pytest.raises(ValueError, match=r"tensor 'weights': expected shape \(3,\), found \(2,\)"):
        load_sampler(folder)

    (folder / "sampler.json").write_text(json.dumps({**document, "config": {"n_comp": 3}}))
    with pytest.raises(ConfigError, match=r"unknown options \['n_comp'\]"):
        load_sampler(folder)

    (folder / "sampler.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"no sampler\.safetensors"):
        load_sampler(folder)
    with pytest.raises(FileNotFoundError, match=r"expected a sampler folder"):
        load_sampler(tmp_path / "nowhere")


# --------------------------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize("kind", sorted(SAMPLERS))
def test_use_before_fit_says_to_fit_first(kind, tmp_path):
    sampler = create_sampler(kind)
    assert not sampler.is_fitted
    name = type(sampler).__name__
    for call, what in [
        (lambda: sampler.sample(3), "sample"),
        (lambda: sampler.log_prob(torch.zeros(3, 2)), "log_prob"),
        (lambda: sampler.save(tmp_path / "s"), "save"),
        (lambda: sampler.dim, "dim"),
    ]:
        with pytest.raises(
            SamplerNotFittedError, match=rf"^{name}\.{what}: .*not fitted; call fit"
        ):
            call()
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("kind", sorted(SAMPLERS))
def test_bad_latents_are_refused(kind):
    sampler = create_sampler(kind, **({"n_components": 4} if kind == "gmm" else {}))
    name = type(sampler).__name__
    with pytest.raises(
        ValueError, match=rf"{name}\.fit: expected latents of shape \(N, D\), found a 1-D"
    ):
        sampler.fit(torch.zeros(10))
    latents = torch.randn(10, 2, generator=generator())
    latents[3, 1] = float("nan")
    with pytest.raises(ValueError, match=r"expected finite latents, found NaN or infinite .*\[3\]"):
        sampler.fit(latents)
    needed = sampler.min_samples()[0]
    if needed > 1:
        with pytest.raises(ValueError, match=rf"expected at least {needed} latents .*found 1$"):
            sampler.fit(torch.zeros(1, 2))
    assert not sampler.is_fitted


def test_log_prob_checks_its_input():
    sampler = PriorSampler().fit(torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"expected latents of shape \(n, 3\), found \(4, 2\)"):
        sampler.log_prob(torch.zeros(4, 2))
    with pytest.raises(ValueError, match="expected finite latents"):
        sampler.log_prob(torch.tensor([[0.0, float("inf"), 0.0]]))
    with pytest.raises(ValueError, match=r"expected n >= 0, found -1"):
        sampler.sample(-1)
    assert sampler.sample(0).shape == (0, 3)


# --------------------------------------------------------------------------------------------
# Encoding a model's data


@pytest.fixture(scope="module")
def views(tmp_path_factory):
    folder = tmp_path_factory.mktemp("samplers") / "d"
    return prepare_builtin(
        "gaussian-views", folder, missing_rate=0.3, seed=0, n_train=100, n_val=20, n_test=20
    )


def tiny_mopoe(views):
    torch.manual_seed(0)
    config = MoPoEConfig.from_schema(read_schema(views), latent_dim=3, private_dim=2)
    return multivae.create_model("mopoe", config.to_dict())


def test_encode_latents_are_the_posterior_means(views):
    model = tiny_mopoe(views)
    batch = MultimodalDataset(views, "train").read_all()
    model.train()
    latents = encode_latents(model, batch, batch_size=32)
    assert model.training  # the mode is restored
    model.eval()
    with torch.no_grad():
        expected = model.posterior(batch).mean
    assert latents.shape == (len(batch), 3)
    torch.testing.assert_close(latents, expected)
    assert not model.training

    loader = make_dataloader(MultimodalDataset(views, "train"), batch_size=40)
    torch.testing.assert_close(encode_latents(model, loader), expected)

    # From view0 alone, samples without view0 have nothing to encode and are left out.
    observed = batch.mask["view0"]
    assert 0 < observed.sum() < len(batch)
    with torch.no_grad():
        from_view0 = model.posterior(batch, ["view0"]).mean
    torch.testing.assert_close(encode_latents(model, batch, cond=["view0"]), from_view0[observed])
    kept = encode_latents(model, batch, cond=["view0"], drop_unobserved=False)
    torch.testing.assert_close(kept, from_view0)

    torch.manual_seed(0)
    drawn = encode_latents(model, batch, use_mean=False)
    assert drawn.shape == latents.shape
    assert not torch.allclose(drawn, latents)


def test_fit_sampler_feeds_model_sample(views):
    model = tiny_mopoe(views)
    batch = MultimodalDataset(views, "train").read_all()
    sampler = fit_sampler(model, batch, "gmm", n_components=2)
    assert isinstance(sampler, GaussianMixtureSampler)
    assert sampler.dim == model.config.latent_dim
    reference = GaussianMixtureSampler(n_components=2).fit(encode_latents(model, batch))
    torch.testing.assert_close(sampler.means, reference.means)
    generated = model.sample(5, sampler=sampler)
    assert set(generated) == {"view0", "view1"}
    for values in generated.values():
        assert values.shape == (5, 8)
        assert torch.isfinite(values).all()
    assert model.training  # fit_sampler restored the mode it found


def test_private_latent_spaces_get_their_own_samplers(views):
    from multivae.samplers import JointSampler, encode_private_latents, fit_joint_sampler

    model = tiny_mopoe(views)
    batch = MultimodalDataset(views, "train").read_all()
    private = encode_private_latents(model, batch, batch_size=32)
    model.eval()
    with torch.no_grad():
        means = model.split_posteriors(batch)[2]
    # One space per modality, over the samples where that modality is observed.
    assert set(private) == {"view0", "view1"}
    for i, name in enumerate(model.modalities):
        torch.testing.assert_close(private[name], means[i][batch.mask[name]])

    joint = fit_joint_sampler(model, batch, "gmm", n_components=2)
    assert isinstance(joint, JointSampler)
    assert joint.shared.dim == 3
    assert {name: s.dim for name, s in joint.private_samplers.items()} == {"view0": 2, "view1": 2}

    # The private draws reach the decoders: a sampler whose private draws are far from the
    # prior changes the generated data, while the shared draws are the same.
    class Fixed:
        def __init__(self, value, dim):
            self.value, self.dim = value, dim

        def sample(self, n, generator=None):
            return torch.full((n, self.dim), self.value)

    shared = Fixed(0.0, 3)
    near = model.sample(4, JointSampler(shared, {m: Fixed(0.0, 2) for m in model.modalities}))
    far = model.sample(4, JointSampler(shared, {m: Fixed(5.0, 2) for m in model.modalities}))
    again = model.sample(4, JointSampler(shared, {m: Fixed(0.0, 2) for m in model.modalities}))
    for name in model.modalities:
        torch.testing.assert_close(near[name], again[name])
        assert not torch.allclose(near[name], far[name])


def test_joint_sampler_saves_and_loads_every_space(views, tmp_path):
    from multivae.samplers import JointSampler, fit_joint_sampler

    model = tiny_mopoe(views)
    batch = MultimodalDataset(views, "train").read_all()
    joint = fit_joint_sampler(model, batch, "gmm", n_components=2)
    assert isinstance(joint, JointSampler) and joint.is_fitted
    folder = joint.save(tmp_path / "joint")
    assert sorted(p.name for p in folder.iterdir()) == ["joint.json", "private", "shared"]
    loaded = load_sampler(folder)
    assert isinstance(loaded, JointSampler)
    assert loaded.kind == "gmm" and loaded.dim == 3
    assert loaded.config() == joint.config()
    for name, sampler in joint.private_samplers.items():
        torch.testing.assert_close(loaded.private_samplers[name].means, sampler.means)
    torch.manual_seed(4)
    first = model.sample(6, joint)
    torch.manual_seed(4)
    second = model.sample(6, loaded)
    for name in model.modalities:
        torch.testing.assert_close(first[name], second[name])

    # Saving over something that is not a sampler folder is refused; nothing is lost.
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("x")
    with pytest.raises(ValueError, match="is not a sampler folder"):
        joint.save(other)
    assert (other / "keep.txt").read_text() == "x"
    (folder / "joint.json").write_text("{")
    with pytest.raises(ConfigError, match="unreadable joint sampler config"):
        load_sampler(folder)


def test_a_model_without_private_latents_gets_the_shared_sampler_alone(views):
    from multivae.samplers import encode_private_latents, fit_joint_sampler

    torch.manual_seed(0)
    config = MoPoEConfig.from_schema(read_schema(views), latent_dim=3)
    model = multivae.create_model("mopoe", config.to_dict())
    batch = MultimodalDataset(views, "train").read_all()
    assert encode_private_latents(model, batch) == {}
    assert isinstance(
        fit_joint_sampler(model, batch, "gmm", n_components=2), GaussianMixtureSampler
    )
