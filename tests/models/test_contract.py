"""One contract every registered model must keep; a new model is tested the day it is added."""

import itertools

import pytest
import torch

import multivae
from multivae.data import Batch
from multivae.models.base import ModalityConfig, ModelOutput, MultimodalVAE
from multivae.nn.architectures import ArchitectureConfig

MODELS = multivae.list_models()
SHAPES = {"a": (4,), "b": (3,), "c": (5,)}


def tiny_config(name: str):
    cls = multivae.get_model_class(name)
    modalities = {
        modality: ModalityConfig(
            shape=shape,
            encoder=ArchitectureConfig("mlp", {"hidden": [8]}),
            decoder=ArchitectureConfig("mlp", {"hidden": [8]}),
        )
        for modality, shape in SHAPES.items()
    }
    return cls.config_class(modalities=modalities, latent_dim=2)


def tiny_batch(n: int = 6, missing: dict[str, list[bool]] | None = None, seed: int = 0) -> Batch:
    generator = torch.Generator().manual_seed(seed)
    mask = {m: torch.ones(n, dtype=torch.bool) for m in SHAPES}
    for modality, present in (missing or {}).items():
        mask[modality] = torch.tensor(present)
    data = {
        m: torch.randn(n, *shape, generator=generator) * mask[m].reshape(-1, 1)
        for m, shape in SHAPES.items()
    }
    return Batch(data=data, mask=mask, label=torch.zeros(n, dtype=torch.long))


def build(name: str, seed: int = 0) -> MultimodalVAE:
    torch.manual_seed(seed)
    model = multivae.create_model(name, tiny_config(name))
    model.progress = 5.0  # past typical warmups, so every term is active
    return model


def loss_of(model: MultimodalVAE, batch: Batch, seed: int = 0) -> ModelOutput:
    torch.manual_seed(seed)
    return model(batch)


def test_the_four_classic_models_are_registered():
    assert {"jmvae", "mvae", "mmvae", "mopoe"} <= set(MODELS)


@pytest.mark.parametrize("name", MODELS)
def test_output_is_a_finite_scalar_loss_with_named_scalar_metrics(name):
    output = loss_of(build(name), tiny_batch())
    assert isinstance(output, ModelOutput)
    assert output.loss.shape == ()
    assert torch.isfinite(output.loss)
    assert output.metrics
    for key, value in output.metrics.items():
        assert value.shape == (), key
        assert torch.isfinite(value), key


@pytest.mark.parametrize("name", MODELS)
def test_every_parameter_gets_a_gradient_on_complete_data(name):
    model = build(name)
    loss_of(model, tiny_batch()).loss.backward()
    for parameter_name, parameter in model.named_parameters():
        assert parameter.grad is not None, parameter_name
        assert torch.isfinite(parameter.grad).all(), parameter_name
        assert parameter.grad.abs().sum() > 0, parameter_name


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("absent", list(SHAPES))
def test_a_modality_absent_from_the_whole_batch(name, absent):
    model = build(name)
    batch = tiny_batch(missing={absent: [False] * 6})
    output = loss_of(model, batch)
    assert torch.isfinite(output.loss)
    output.loss.backward()
    for parameter_name, parameter in model.named_parameters():
        if parameter.grad is not None:
            assert torch.isfinite(parameter.grad).all(), parameter_name
    for parameter_name, parameter in model.encoders[absent].named_parameters():
        assert parameter.grad is None or torch.all(parameter.grad == 0), parameter_name


@pytest.mark.parametrize("name", MODELS)
def test_mixed_missingness_is_finite_and_independent_of_absent_values(name):
    model = build(name)
    missing = {
        "a": [True, False, True, True, False, True],
        "c": [False, True, True, False] * 1 + [True, True],
    }
    batch = tiny_batch(missing=missing)
    first = loss_of(model, batch).loss
    # Absent cells hold zeros by contract; any other value must not matter.
    noisy = Batch(
        data={m: torch.where(batch.mask[m].reshape(-1, 1), v, 7.0) for m, v in batch.data.items()},
        mask=batch.mask,
    )
    assert torch.isfinite(first)
    torch.testing.assert_close(loss_of(model, noisy).loss, first)


@pytest.mark.parametrize("name", MODELS)
def test_same_seed_same_loss(name):
    batch = tiny_batch()
    first = loss_of(build(name, seed=3), batch, seed=11).loss
    second = loss_of(build(name, seed=3), batch, seed=11).loss
    assert torch.equal(first, second)


@pytest.mark.parametrize("name", MODELS)
def test_save_then_load_gives_identical_outputs(name, tmp_path):
    model = build(name).eval()
    batch = tiny_batch(missing={"b": [True, False] * 3})
    folder = model.save_pretrained(tmp_path / "model")
    loaded = multivae.load_model(folder)
    assert type(loaded) is type(model)
    assert loaded.config == model.config
    loaded.progress = model.progress
    torch.testing.assert_close(loss_of(loaded, batch).loss, loss_of(model, batch).loss)
    torch.manual_seed(0)
    expected = model.predict(batch, cond=["a"], gen=["b", "c"])
    torch.manual_seed(0)
    found = loaded.predict(batch, cond=["a"], gen=["b", "c"])
    for modality in ("b", "c"):
        torch.testing.assert_close(found[modality], expected[modality])


@pytest.mark.parametrize("name", MODELS)
def test_create_model_from_plain_config_rebuilds_the_same_model(name):
    model = build(name)
    config = type(model.config).from_json(model.config.to_json())
    assert config == model.config
    rebuilt = multivae.create_model(name, config.to_dict())
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {
        k: v.shape for k, v in model.state_dict().items()
    }
    rebuilt.load_state_dict(model.state_dict())
    rebuilt.progress = model.progress
    batch = tiny_batch()
    torch.testing.assert_close(loss_of(rebuilt, batch).loss, loss_of(model, batch).loss)


@pytest.mark.parametrize("name", MODELS)
def test_generation_api_shapes(name):
    model = build(name).eval()
    batch = tiny_batch(missing={"c": [False, True] * 3})
    names = list(SHAPES)
    for size in (1, 2, 3):
        for cond in itertools.combinations(names, size):
            out = model.predict(batch, cond=list(cond))
            assert {m: tuple(v.shape) for m, v in out.items()} == {
                m: (6, *SHAPES[m]) for m in names
            }
            assert all(torch.isfinite(v).all() for v in out.values())
    several = model.predict(batch, cond=["a"], gen=["b"], n_samples=4)
    assert several["b"].shape == (4, 6, 3)
    z = model.encode(batch, cond=["a", "b"], n_samples=3)
    assert z.shape[:2] == (3, 6)
    samples = model.sample(5)
    assert {m: tuple(v.shape) for m, v in samples.items()} == {m: (5, *SHAPES[m]) for m in names}


@pytest.mark.parametrize("name", MODELS)
def test_nll_is_finite_per_sample_whole_or_chunked(name):
    model = build(name).eval()
    batch = tiny_batch(missing={"a": [True, True, False, True, False, True]})
    whole = model.nll(batch, k=20, chunk_size=20)
    chunked = model.nll(batch, k=20, chunk_size=7)
    assert whole.shape == (6,)
    assert torch.isfinite(whole).all()
    assert torch.isfinite(chunked).all()
    conditional = model.nll(batch, cond=["b"], gen=["c"], k=10)
    assert conditional.shape == (6,) and torch.isfinite(conditional).all()


@pytest.mark.parametrize("name", MODELS)
def test_capabilities_and_stages_are_declared(name):
    cls = multivae.get_model_class(name)
    assert cls.name == name
    assert cls.capabilities.missing_modalities
    assert cls.stages and all(isinstance(stage, str) for stage in cls.stages)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("cond", [["a"], ["a", "c"]])
def test_conditioning_on_a_subset_runs_only_its_encoders(name, cond):
    model = build(name).eval()
    batch = tiny_batch(missing={"a": [True, False, True, True, True, True]})
    called: list[str] = []
    hooks = [
        model.encoders[m].register_forward_hook(lambda *_, m=m: called.append(m))
        for m in model.modalities
    ]
    torch.manual_seed(1)
    z = model.encode(batch, cond, n_samples=3)
    for hook in hooks:
        hook.remove()
    assert called and set(called) <= set(cond)
    # The same posterior as with every other modality marked absent and all encoders run.
    hidden = Batch(
        data=batch.data,
        mask={m: batch.mask[m] if m in cond else torch.zeros_like(batch.mask[m]) for m in SHAPES},
        label=batch.label,
    )
    torch.manual_seed(1)
    torch.testing.assert_close(z, model.encode(hidden, None, n_samples=3))
