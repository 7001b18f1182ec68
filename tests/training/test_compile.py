"""``TrainingConfig.compile``: the forward pass through ``torch.compile`` trains like eager mode."""

import pytest
import torch
from safetensors.torch import load_file
from toys import ToyVAE, TwoStageVAE, build, quiet, toy_config

from multivae.config import ConfigError
from multivae.data import MultimodalDataset, make_dataloader
from multivae.models.base import ModelOutput
from multivae.objectives import kl_standard_normal, linear_warmup
from multivae.training import Callback, Trainer, TrainingConfig
from multivae.training import compiled as training_compiled
from multivae.training import loop as training_loop

TIMINGS = ("epoch_time", "samples_per_s")


class WarmupVAE(TwoStageVAE):
    """Two stages as :class:`TwoStageVAE`, a KL warmup over 2 epochs of ``progress`` (as MVAE's
    and JMVAE's), and no Python side effects in ``forward`` (a list appended to at every step
    would be a new graph at every step)."""

    def forward(self, batch):
        mean, logvar = self.posterior_parameters(batch)
        z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)
        recon = -self.log_likelihoods(self.decode(z), batch).sum(0)
        kl = kl_standard_normal(mean, logvar)
        weight = linear_warmup(self.progress, 2.0)
        loss = (recon + weight * kl).mean()
        # torch.tensor(weight) would fix the number in the graph: a new graph at every step.
        metrics = {"recon": recon.mean(), "kl": kl.mean(), "kl_weight": loss.new_zeros(()) + weight}
        if self.stage == "second":
            fit = (self.head(mean).squeeze(-1) - batch.data["a"][:, 0]) ** 2
            loss = loss + fit.mean()
            metrics["fit"] = fit.mean()
        return ModelOutput(loss, metrics)


def warmup_config(**options):
    """Stage ``first`` for 2 epochs, ``second`` for 1; ``options`` override."""
    return quiet(**{"epochs": 2, "stage_epochs": {"second": 1}, **options})


def without_timings(history):
    return [{k: v for k, v in record.items() if k not in TIMINGS} for record in history]


def graphs():
    """Graphs Dynamo has compiled in this process so far."""
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


def toy_loaders(folder):
    """Shuffled train (6 batches of 16) and ordered val (2 batches) loaders."""
    train = make_dataloader(MultimodalDataset(folder, "train"), 16, shuffle=True, seed=0)
    val = make_dataloader(MultimodalDataset(folder, "val"), 16)
    return train, val


class Stop(Callback):
    """Ends training after ``epoch`` (a checkpoint is written there)."""

    def __init__(self, epoch):
        self.epoch = epoch

    def on_epoch_end(self, epoch, metrics):
        return epoch == self.epoch


@pytest.fixture(scope="module")
def runs(toy_dataset, tmp_path_factory):
    """Two stages (2 + 1 epochs) eager and compiled: (model, result, graphs compiled)."""
    done = {}
    for mode in ("eager", "compiled"):
        train, val = toy_loaders(toy_dataset)
        model = build(WarmupVAE)
        before = graphs()
        config = warmup_config(compile=mode == "compiled")
        result = Trainer(model, config, tmp_path_factory.mktemp(mode)).fit(train, val)
        done[mode] = (model, result, graphs() - before)
    return done


def test_compiled_losses_and_weights_match_eager(runs):
    eager_model, eager, eager_graphs = runs["eager"]
    model, compiled, _ = runs["compiled"]
    assert eager_graphs == 0
    # The same random draws (eager mode's) and KL weights (train_kl_weight, val_kl_weight).
    for mine, theirs in zip(
        without_timings(compiled.history), without_timings(eager.history), strict=True
    ):
        assert mine.keys() == theirs.keys()
        for key, value in mine.items():
            expected = theirs[key]
            if isinstance(value, str):
                assert value == expected, key
            else:
                assert value == pytest.approx(expected, rel=1e-5, abs=1e-6), key
    eager_state = eager_model.state_dict()
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, eager_state[key], rtol=1e-4, atol=1e-5)


def test_graphs_do_not_grow_with_steps(runs):
    # 18 training steps at 18 values of progress, 3 validations, 2 stages. Training: a graph
    # with progress fixed, one with progress as an input, one for the second stage; the same
    # for validation. Not one per step or epoch.
    _, _, compiled_graphs = runs["compiled"]
    assert 4 <= compiled_graphs <= 6


def test_a_compiled_run_saves_plain_weights_that_load_uncompiled(runs, toy_dataset):
    model, result, _ = runs["compiled"]
    saved = load_file(result.model_dir / "model.safetensors")
    assert set(saved) == set(WarmupVAE(toy_config()).state_dict())
    fresh = WarmupVAE(toy_config())
    fresh.load_state_dict(saved)
    batch = next(iter(toy_loaders(toy_dataset)[1]))
    z = torch.randn(5, 2)
    with torch.no_grad():
        for mine, theirs in zip(
            fresh.posterior_parameters(batch), model.posterior_parameters(batch), strict=True
        ):
            assert torch.equal(mine, theirs)
        for name, params in fresh.decode(z).items():
            assert torch.equal(params, model.decode(z)[name])
        assert torch.equal(fresh.head(z), model.head(z))


def test_a_compiled_run_resumes_exactly(runs, toy_dataset, tmp_path):
    reference, expected, _ = runs["compiled"]
    train, val = toy_loaders(toy_dataset)
    config = warmup_config(compile=True)
    Trainer(build(WarmupVAE), config, tmp_path, callbacks=[Stop(1)]).fit(train, val)
    train, val = toy_loaders(toy_dataset)
    model = build(WarmupVAE, seed=7)
    result = Trainer(model, config, tmp_path).fit(train, val, resume=True)
    assert without_timings(result.history) == without_timings(expected.history)
    reference_state = reference.state_dict()
    for key, value in model.state_dict().items():
        assert torch.equal(value, reference_state[key]), key


class TensorOfProgress(WarmupVAE):
    """Makes a tensor of ``progress`` with ``torch.tensor``: a new graph at every step."""

    def forward(self, batch):
        output = super().forward(batch)
        weight = torch.tensor(self.progress, dtype=output.loss.dtype)
        return ModelOutput(output.loss, {**output.metrics, "weight": weight})


def test_recompiling_at_every_step_is_an_error_not_a_fallback(toy_dataset, tmp_path, monkeypatch):
    # A small limit keeps the test short: 1 graph per stage, 2 for the model.
    monkeypatch.setattr(training_loop, "_GRAPHS_PER_STAGE", 1)
    train, val = toy_loaders(toy_dataset)
    model = build(TensorOfProgress)
    with (
        torch._dynamo.config.patch(recompile_limit=1),
        pytest.raises(RuntimeError, match=r"training\.compile: toy: .* more than 2 compiled"),
    ):
        Trainer(model, warmup_config(compile=True), tmp_path).fit(train, val)


def test_an_error_of_the_model_is_not_reported_as_a_compile_failure(toy_dataset, tmp_path):
    class Refuses(ToyVAE):
        def forward(self, batch):
            raise ValueError("toy: expected modalities ['a', 'b']")

    train, val = toy_loaders(toy_dataset)
    with pytest.raises(ValueError, match=r"expected modalities") as caught:
        Trainer(build(Refuses), quiet(epochs=1, compile=True), tmp_path).fit(train, val)
    assert "training.compile" not in str(caught.value)


def test_a_ddp_wrapped_model_trains_compiled(toy_dataset, tmp_path):
    import torch.distributed as dist

    train, val = toy_loaders(toy_dataset)
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1
    )
    try:
        model = build(WarmupVAE)
        # The head is unused in the first stage.
        wrapped = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
        config = warmup_config(epochs=1, stage_epochs={"second": 1}, compile=True)
        result = Trainer(wrapped, config, tmp_path / "run").fit(train, val)
    finally:
        dist.destroy_process_group()
    assert [record["stage"] for record in result.history] == ["first", "second"]
    saved = load_file(result.model_dir / "model.safetensors")
    assert set(saved) == set(WarmupVAE(toy_config()).state_dict())


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_compile_must_be_a_boolean(value):
    with pytest.raises(ConfigError, match=r"training\.compile: expected"):
        TrainingConfig.from_dict({"compile": value}, where="training")
    with pytest.raises(ConfigError, match=r"training\.compile: expected true or false"):
        TrainingConfig(compile=value)


def test_cuda_graphs_need_compile_and_a_cuda_device(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match=r"training.cuda_graphs: .* set training.compile: true"):
        TrainingConfig(cuda_graphs=True)
    with pytest.raises(ConfigError, match=r"needs a CUDA device, found device 'cpu'"):
        TrainingConfig(compile=True, cuda_graphs=True, device="cpu")
    # "auto" on a machine without CUDA: refused when the trainer picks the device.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=r"the run trains on 'cpu'; set training.cuda_graphs"):
        Trainer(build(), quiet(compile=True, cuda_graphs=True, device="auto"), tmp_path)


def test_cuda_graphs_reach_inductor_as_its_cudagraphs_option(monkeypatch):
    seen = []

    def record(function, options):
        seen.append(options)
        return function

    monkeypatch.setattr(torch, "compile", record)
    training_compiled.CompiledForward("plain", 8)
    training_compiled.CompiledForward("graphs", 8, cuda_graphs=True)
    assert seen == [
        {"fallback_random": True},
        {"fallback_random": True, "triton.cudagraphs": True},
    ]
