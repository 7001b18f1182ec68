"""One contract every registered model keeps, in each of the variant configs its file declares.

A case is a model, a variant (``default`` or a name from the model's ``variant_configs``) and a
modality set of the test kit (:mod:`kit.models`): ``vectors`` (three 1-D modalities) and
``mixed`` (a 28x28 image with a conv encoder and decoder, a 1-D vector and a categorical label),
each with every variant. Checks that depend on what a model can do are chosen from its configured
:attr:`~multivae.models.base.MultimodalVAE.capabilities`. A new model is tested the day it is
registered.
"""

import itertools

import pytest
import torch
from kit.models import MODALITY_SETS, N, generation_case, names_of, tiny_batch, tiny_model

import multivae
from multivae.data import Batch
from multivae.models.base import ModelOutput, MultimodalVAE

MODELS = multivae.list_models()


def _cases() -> list[tuple[str, str, str]]:
    cases = []
    for name in MODELS:
        # Every variant on both sets: variant configs hold for any modality names and kinds.
        variants = ["default", *multivae.get_model_class(name).variant_configs]
        cases += [(name, variant, sets) for variant in variants for sets in MODALITY_SETS]
    return cases


CASES = _cases()
IDS = [f"{name}-{variant}-{modalities}" for name, variant, modalities in CASES]
case = pytest.mark.parametrize(("name", "variant", "modalities"), CASES, ids=IDS)


def loss_of(model: MultimodalVAE, batch: Batch, seed: int = 0) -> ModelOutput:
    torch.manual_seed(seed)
    return model(batch)


def first_second_third(modalities: str) -> tuple[str, str, str]:
    first, second, third = names_of(modalities)
    return first, second, third


def in_each_stage(model: MultimodalVAE):
    """Yield ``model`` switched to each of its training stages, gradients cleared.

    A multi-stage model trains some parameters in a stage and freezes the others: the gradient
    checks hold, stage by stage, for the parameters that stage trains, and the frozen ones get
    none (``grad`` stays ``None``).
    """
    for stage in model.stages:
        model.set_stage(stage)
        model.zero_grad(set_to_none=True)
        yield stage


def test_the_classic_and_new_models_are_registered():
    assert {"jmvae", "mvae", "mmvae", "mopoe"} <= set(MODELS)


@case
def test_output_is_a_finite_scalar_loss_with_named_scalar_metrics(name, variant, modalities):
    output = loss_of(tiny_model(name, variant, modalities), tiny_batch(modalities))
    assert isinstance(output, ModelOutput)
    assert output.loss.shape == ()
    assert torch.isfinite(output.loss)
    assert output.metrics
    for key, value in output.metrics.items():
        assert value.shape == (), key
        assert torch.isfinite(value), key


@case
def test_every_parameter_gets_a_gradient_on_complete_data(name, variant, modalities):
    model = tiny_model(name, variant, modalities)
    for stage in in_each_stage(model):
        loss_of(model, tiny_batch(modalities)).loss.backward()
        for parameter_name, parameter in model.named_parameters():
            if not parameter.requires_grad:
                assert parameter.grad is None, (stage, parameter_name)
                continue
            assert parameter.grad is not None, (stage, parameter_name)
            assert torch.isfinite(parameter.grad).all(), (stage, parameter_name)
            assert parameter.grad.abs().sum() > 0, (stage, parameter_name)


@case
def test_a_modality_absent_from_the_whole_batch(name, variant, modalities):
    for absent in names_of(modalities):
        model = tiny_model(name, variant, modalities)
        for stage in in_each_stage(model):
            where = (absent, stage)
            output = loss_of(model, tiny_batch(modalities, missing={absent: [False] * N}))
            assert torch.isfinite(output.loss), where
            output.loss.backward()
            trained = {n: p for n, p in model.named_parameters() if p.requires_grad}
            for parameter_name, parameter in trained.items():
                # Every parameter a stage trains takes part in every step, with a zero gradient
                # where it has nothing to learn from: DistributedDataParallel fails when one
                # rank's batch lacks a modality and a parameter gets no gradient tensor there.
                assert parameter.grad is not None, (*where, parameter_name)
                assert torch.isfinite(parameter.grad).all(), (*where, parameter_name)
            # Shared and private parts alike: the whole encoder of the absent modality, and its
            # decoder, which has no target to score (a CVAE's conditioning modalities have none).
            parts = (model.encoders, model.decoders)
            for module in [part[absent] for part in parts if absent in part]:
                for parameter_name, parameter in module.named_parameters():
                    if parameter.requires_grad:
                        assert torch.all(parameter.grad == 0), (*where, parameter_name)
            learnable = [
                parameter
                for m in names_of(modalities)
                if m != absent and m in model.encoders
                for parameter in model.encoders[m].parameters()
                if parameter.requires_grad
            ]
            # Something is learned from the other modalities' encoders, unless the stage trains
            # none of them (TELBO's joint stage), the model has none, or no sample is usable
            # without the absent one (DVCCA infers its shared latent from its primary modality).
            if learnable and (output.usable is None or output.usable > 0):
                assert any(p.grad.abs().sum() > 0 for p in learnable), where


@case
def test_absent_cells_get_exactly_zero_gradient_and_do_not_matter(name, variant, modalities):
    first, _, third = first_second_third(modalities)
    missing = {
        first: [True, False, True, True, False, True],
        third: [False, True, True, False, True, True],
    }
    model = tiny_model(name, variant, modalities)
    batch = tiny_batch(modalities, missing=missing)
    for stage in in_each_stage(model):
        inputs = {m: v.clone().requires_grad_(v.is_floating_point()) for m, v in batch.data.items()}
        output = loss_of(model, Batch(data=inputs, mask=batch.mask))
        assert torch.isfinite(output.loss), stage
        output.loss.backward()
        for m, value in inputs.items():
            if value.is_floating_point():
                assert value.grad is not None, (stage, m)
                absent = ~batch.mask[m]
                assert torch.all(value.grad[absent] == 0), (stage, m)
        # Absent cells hold zeros by contract; any other value must not matter.
        noisy = {
            m: torch.where(
                batch.mask[m].reshape(-1, *[1] * (v.dim() - 1)),
                v,
                torch.full((), 2, dtype=v.dtype),
            )
            for m, v in batch.data.items()
        }
        torch.testing.assert_close(
            loss_of(model, Batch(data=noisy, mask=batch.mask)).loss, output.loss.detach()
        )


@case
def test_same_seed_same_loss(name, variant, modalities):
    batch = tiny_batch(modalities)
    first = loss_of(tiny_model(name, variant, modalities, seed=3), batch, seed=11).loss
    second = loss_of(tiny_model(name, variant, modalities, seed=3), batch, seed=11).loss
    assert torch.equal(first, second)


@case
def test_save_then_load_gives_identical_outputs(name, variant, modalities, tmp_path):
    _, second, _ = first_second_third(modalities)
    model = tiny_model(name, variant, modalities).eval()
    batch = tiny_batch(modalities, missing={second: [True, False] * 3})
    cond, gen = generation_case(model, modalities)
    folder = model.save_pretrained(tmp_path / "model")
    loaded = multivae.load_model(folder)
    assert type(loaded) is type(model)
    assert loaded.config == model.config
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert loaded.modalities == model.modalities
    loaded.progress = model.progress
    assert torch.equal(loss_of(loaded, batch).loss, loss_of(model, batch).loss)
    torch.manual_seed(0)
    expected = model.predict(batch, cond=cond, gen=gen)
    torch.manual_seed(0)
    found = loaded.predict(batch, cond=cond, gen=gen)
    for modality in gen:
        assert torch.equal(found[modality], expected[modality])


@case
def test_create_model_from_plain_config_rebuilds_the_same_model(name, variant, modalities):
    model = tiny_model(name, variant, modalities)
    config = type(model.config).from_json(model.config.to_json())
    assert config == model.config
    rebuilt = multivae.create_model(name, config.to_dict())
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {
        k: v.shape for k, v in model.state_dict().items()
    }
    rebuilt.load_state_dict(model.state_dict())
    rebuilt.progress = model.progress
    assert rebuilt.modalities == model.modalities
    batch = tiny_batch(modalities)
    assert torch.equal(loss_of(rebuilt, batch).loss, loss_of(model, batch).loss)


def expected_shape(modalities: str, modality: str, leading: tuple[int, ...]) -> tuple[int, ...]:
    return (*leading, *MODALITY_SETS[modalities][modality].shape)


@case
def test_predict_from_every_subset(name, variant, modalities):
    model = tiny_model(name, variant, modalities).eval()
    _, _, third = first_second_third(modalities)
    batch = tiny_batch(modalities, missing={third: [False, True] * 3})
    names = names_of(modalities)
    for size in range(1, len(names) + 1):
        for cond in itertools.combinations(names, size):
            if not model.conditionable(cond):
                continue
            # Every modality (reconstructions too) by default; a conditional model generates
            # what it says it generates from cond (a CVAE: its main modality).
            gen = names
            if model.capabilities.conditional:
                gen = [m for m in names if model.conditionable(cond, m)]
            for use_mean in (False, True):
                out = model.predict(batch, cond=list(cond), gen=gen, use_mean=use_mean)
                assert {m: tuple(v.shape) for m, v in out.items()} == {
                    m: expected_shape(modalities, m, (N,)) for m in gen
                }
                assert all(torch.isfinite(v.float()).all() for v in out.values())


@case
def test_generation_api_shapes(name, variant, modalities):
    model = tiny_model(name, variant, modalities).eval()
    batch = tiny_batch(modalities)
    cond, (target, *_) = generation_case(model, modalities)
    several = model.predict(batch, cond=cond, gen=[target], n_samples=4)
    assert several[target].shape == expected_shape(modalities, target, (4, N))
    z = model.encode(batch, cond=[*cond, target], n_samples=3)
    assert z.shape == (3, N, model.config.latent_dim)
    # The mean prediction is deterministic.
    torch.manual_seed(1)
    once = model.predict(batch, cond=cond, gen=[target], use_mean=True)
    torch.manual_seed(2)
    twice = model.predict(batch, cond=cond, gen=[target], use_mean=True)
    torch.testing.assert_close(once[target], twice[target])
    if model.capabilities.conditional:
        with pytest.raises(ValueError, match="conditioning"):
            model.sample(5)
        return
    samples = model.sample(5)
    assert {m: tuple(v.shape) for m, v in samples.items()} == {
        m: expected_shape(modalities, m, (5,)) for m in names_of(modalities)
    }


@case
def test_private_latents_follow_the_capabilities(name, variant, modalities):
    model = tiny_model(name, variant, modalities).eval()
    batch = tiny_batch(modalities)
    means = model.private_latent_means(batch)
    if not model.capabilities.private_latents:
        assert means == {}
        assert model.private_dims == {}
        return
    assert {m: tuple(v.shape) for m, v in means.items()} == {
        m: (N, dim) for m, dim in model.private_dims.items()
    }
    for m, dim in model.private_dims.items():
        assert model.decoder_latent_dim(m) == model.config.latent_dim + dim
        z = torch.zeros(2, N, model.config.latent_dim)
        w = torch.ones(dim)
        latent = model.generation_latent(z, m, w)
        assert latent.shape == (2, N, model.config.latent_dim + dim)
        torch.testing.assert_close(latent[..., model.config.latent_dim :], w.expand(2, N, dim))


@case
def test_nll_is_finite_per_sample_whole_or_chunked(name, variant, modalities):
    model = tiny_model(name, variant, modalities).eval()
    first, second, third = first_second_third(modalities)
    batch = tiny_batch(modalities, missing={first: [True, True, False, True, False, True]})
    if not model.capabilities.tractable_likelihood:
        with pytest.raises(ValueError, match="not applicable"):
            model.nll(batch, k=4)
        return
    whole = model.nll(batch, k=20, chunk_size=20)
    chunked = model.nll(batch, k=20, chunk_size=7)
    assert whole.shape == (N,)
    assert torch.isfinite(whole).all()
    assert torch.isfinite(chunked).all()
    # The second modality to the third, or the model's own case (DVCCA: from its primary view;
    # a CVAE: its main modality given its conditioning ones).
    cond, gen = [second], [third]
    if not model.conditionable(cond, third):
        cond, gen = generation_case(model, modalities)
    conditional = model.nll(batch, cond=cond, gen=gen, k=10)
    assert conditional.shape == (N,) and torch.isfinite(conditional).all()


@case
def test_capabilities_are_those_of_the_configured_model(name, variant, modalities):
    model = tiny_model(name, variant, modalities)
    cls = type(model)
    assert cls.name == name
    assert cls.declared_capabilities.missing_modalities
    assert model.stages and all(isinstance(stage, str) for stage in model.stages)
    capabilities = model.capabilities
    assert capabilities.multi_stage == (len(model.stages) > 1)
    assert capabilities.private_latents == bool(model.private_dims)
    # What a configured model can do, its class declares it can do in some configuration.
    for flag in (
        "private_latents",
        "multi_stage",
        "importance_sampled",
        "conditional",
        "clustering",
    ):
        if getattr(capabilities, flag):
            assert getattr(cls.declared_capabilities, flag), flag


@case
def test_conditioning_on_a_subset_runs_only_its_encoders(name, variant, modalities):
    first, _, third = first_second_third(modalities)
    model = tiny_model(name, variant, modalities).eval()
    batch = tiny_batch(modalities, missing={first: [True, False, True, True, True, True]})
    conds = [c for c in ([first], [first, third]) if model.conditionable(c)]
    if not conds:  # a CVAE: its conditioning modalities, then every modality
        conds = [generation_case(model, modalities)[0], names_of(modalities)]
    for cond in conds:
        called: list[str] = []
        hooks = [
            model.encoders[m].register_forward_hook(lambda *_, m=m, seen=called: seen.append(m))
            for m in model.modalities
        ]
        torch.manual_seed(1)
        z = model.encode(batch, cond, n_samples=3)
        for hook in hooks:
            hook.remove()
        # (A CVAE without a prior network conditions on x_C through N(0, I): no encoder runs.)
        assert called or model.capabilities.conditional
        assert set(called) <= set(cond)
        # The same posterior as with every other modality marked absent and all encoders run.
        hidden = Batch(
            data=batch.data,
            mask={
                m: batch.mask[m] if m in cond else torch.zeros_like(batch.mask[m])
                for m in batch.mask
            },
            label=batch.label,
        )
        torch.manual_seed(1)
        torch.testing.assert_close(z, model.encode(hidden, None, n_samples=3))
