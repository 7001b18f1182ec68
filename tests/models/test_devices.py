"""Every model on another device and in another precision, and its likelihood being log p(X).

* A second device: every model and variant runs forward, backward, ``nll`` (joint and
  conditional), ``predict`` and ``sample`` on the meta device, which refuses any tensor made on
  the CPU without a GPU at hand (``Tensor on device cpu is not on the expected device meta``),
  and on CUDA when this machine has one.
* bf16 autocast: the gradients of a step under CPU autocast stay within a cosine of 0.99 of
  float32's (noise, posteriors and log-densities stay in float32).
* The NLL ignores the likelihoods' training ``weight``: it is the model's log p(X).
"""

from __future__ import annotations

import pytest
import torch
from kit.models import (
    MODALITY_SETS,
    N,
    generation_case,
    names_of,
    tiny_batch,
    tiny_config,
    tiny_model,
)

import multivae
from multivae.models.base import MultimodalVAE

DEVICES = ["meta", *(["cuda"] if torch.cuda.is_available() else [])]


def _cases(sets: list[str]) -> list[tuple[str, str, str]]:
    return [
        (name, variant, modalities)
        for name in multivae.list_models()
        for variant in ["default", *multivae.get_model_class(name).variant_configs]
        for modalities in sets
    ]


CASES = _cases(list(MODALITY_SETS))
IDS = [f"{name}-{variant}-{modalities}" for name, variant, modalities in CASES]
case = pytest.mark.parametrize(("name", "variant", "modalities"), CASES, ids=IDS)


@pytest.mark.parametrize("device", DEVICES)
@case
def test_every_entry_point_runs_on_another_device(name, variant, modalities, device):
    model = tiny_model(name, variant, modalities).to(device)
    first, second, third = names_of(modalities)
    batch = tiny_batch(modalities, missing={first: [True, False] * (N // 2)}).to(device)
    for stage in model.stages:  # each trains its parameters; the others are frozen in it
        model.set_stage(stage)
        model.zero_grad(set_to_none=True)
        model(batch).loss.backward()
        assert all(p.grad is not None for p in model.parameters() if p.requires_grad), stage
    model.eval()
    # The second modality to the third, or the model's own case (DVCCA: from its primary view;
    # a CVAE: its main modality given its conditioning ones).
    cond, gen = [second], [third]
    if not model.conditionable(cond, third):
        cond, gen = generation_case(model, modalities)
    if model.capabilities.tractable_likelihood:
        assert model.nll(batch, k=4, chunk_size=3).device.type == device
        assert model.nll(batch, cond=cond, gen=gen, k=3).device.type == device
    # Every modality from cond, or what a conditional model generates from it.
    every = gen if model.capabilities.conditional else None
    out = model.predict(batch, cond=cond, gen=every, use_mean=True)
    assert {value.device.type for value in out.values()} == {device}
    if not model.capabilities.conditional:
        assert {value.device.type for value in model.sample(3).values()} == {device}


def _gradients(model: MultimodalVAE, batch, autocast: bool) -> torch.Tensor:
    model.zero_grad()
    torch.manual_seed(0)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = model(batch).loss
    loss.backward()
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


@case
def test_bf16_autocast_keeps_the_gradients_of_float32(name, variant, modalities):
    model = tiny_model(name, variant, modalities)
    first = names_of(modalities)[0]
    batch = tiny_batch(modalities, missing={first: [True, False] * (N // 2)})
    full = _gradients(model, batch, autocast=False)
    half = _gradients(model, batch, autocast=True)
    assert torch.isfinite(half).all()
    cosine = torch.nn.functional.cosine_similarity(full, half, dim=0)
    assert cosine > 0.99, f"{name} {variant}: cosine {cosine:.4f} of bf16 and float32 gradients"


@pytest.mark.parametrize("name", multivae.list_models())
def test_the_nll_does_not_use_the_training_weights_of_the_likelihoods(name):
    model = tiny_model(name, "default", "vectors").eval()
    assert model.capabilities.tractable_likelihood, f"{name}: without nll, give it its own case"
    first, second, _ = names_of("vectors")
    raw = tiny_config(
        name, "default", "vectors"
    ).to_dict()  # a copy: the kit's sets stay as they are
    raw["modalities"][first]["weight"] = 50.0
    weighted = multivae.create_model(name, raw).eval()
    weighted.load_state_dict(model.state_dict())
    assert weighted.likelihood(first).weight == 50.0 and model.likelihood(first).weight == 1.0
    batch = tiny_batch("vectors", missing={second: [True, False] * (N // 2)})
    pair = ([second], [first])
    if not model.conditionable([second], first):
        pair = generation_case(model, "vectors")  # DVCCA: [a] -> [b, c]; a CVAE: [b, c] -> [a]
    for cond, gen in ((None, None), pair):
        torch.manual_seed(0)
        plain = model.nll(batch, cond=cond, gen=gen, k=8)
        torch.manual_seed(0)
        found = weighted.nll(batch, cond=cond, gen=gen, k=8)
        # (NaN where a model defines no likelihood: a CVAE's samples lacking a condition.)
        torch.testing.assert_close(found, plain, equal_nan=True)
    # The training objective does use the weight.
    torch.manual_seed(0)
    loss = model(batch).loss
    torch.manual_seed(0)
    assert not torch.isclose(weighted(batch).loss, loss)


def test_the_nll_standard_error_is_the_delta_method_over_the_weights(monkeypatch):
    model = tiny_model("mvae", "default", "vectors").eval()
    weights = torch.tensor([[1.0, 2.0], [3.0, 2.0], [2.0, 2.0]])  # K = 3 draws, N = 2 samples
    monkeypatch.setattr(
        model, "importance_log_weights", lambda batch, cond, gen, n: weights.log()[:n]
    )
    nll, error = model.nll_with_error(tiny_batch("vectors"), k=3, chunk_size=3)
    torch.testing.assert_close(nll, -torch.log(torch.tensor([2.0, 2.0])))
    # Sample 0: w / mean(w) = (0.5, 1.5, 1.0), standard deviation 0.5; sample 1: all equal.
    torch.testing.assert_close(error, torch.tensor([0.5 / 3**0.5, 0.0]))
