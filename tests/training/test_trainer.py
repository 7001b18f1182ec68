import json
import math

import pytest
import torch
from safetensors.torch import load_file
from torch.optim.optimizer import register_optimizer_step_pre_hook
from toys import ScriptedVAE, ToyVAE, TwoStageVAE, build, quiet, toy_config

from multivae.config import ConfigError
from multivae.training import Callback, Trainer


class Recorder(Callback):
    """Records every hook call; snapshots the weights after each epoch; stops when asked."""

    def __init__(self, stop_after: int | None = None):
        self.stop_after = stop_after
        self.began = []
        self.epochs = []
        self.weights = {}
        self.results = []

    def on_train_begin(self, trainer):
        self.began.append(trainer)

    def on_epoch_end(self, epoch, metrics):
        self.epochs.append((epoch, dict(metrics)))
        self.weights[epoch] = {k: v.clone() for k, v in self.began[0].module.state_dict().items()}
        return epoch == self.stop_after

    def on_train_end(self, result):
        self.results.append(result)


def test_loss_falls_on_a_learnable_problem(loaders, tmp_path):
    train, val = loaders()
    config = quiet(epochs=25, optimizer={"name": "Adam", "kwargs": {"lr": 0.02}})
    result = Trainer(build(), config, tmp_path).fit(train, val)
    first, last = result.history[0], result.history[-1]
    # Nats per sample; the data has 7 dimensions with noise 0.1 on a 2-d latent.
    assert last["train_loss"] < first["train_loss"] - 2.0
    assert last["val_loss"] < first["val_loss"] - 1.0


def test_history_metrics_callbacks_and_outputs(loaders, tmp_path):
    train, val = loaders()
    recorder = Recorder()
    model = build()
    result = Trainer(model, quiet(epochs=3), tmp_path, callbacks=[recorder]).fit(train, val)

    assert len(recorder.began) == 1
    assert [epoch for epoch, _ in recorder.epochs] == [1, 2, 3]
    assert recorder.results == [result]
    assert [metrics for _, metrics in recorder.epochs] == result.history
    first = result.history[0]
    assert set(first) == {
        "epoch",
        "stage",
        "stage_epoch",
        "lr",
        "train_loss",
        "train_recon",
        "train_kl",
        "val_loss",
        "val_recon",
        "val_kl",
        "epoch_time",
        "samples_per_s",
    }
    assert first["stage"] == "main"
    assert first["lr"] == pytest.approx(1e-3)
    assert first["samples_per_s"] > 0
    # Epoch metrics are per-sample means over the epoch: the parts add up to the loss.
    for record in result.history:
        assert record["train_recon"] + record["train_kl"] == pytest.approx(record["train_loss"])
        assert record["val_recon"] + record["val_kl"] == pytest.approx(record["val_loss"])

    assert result.monitor == "val_loss"
    best = min(result.history, key=lambda r: r["val_loss"])
    assert (result.best_epoch, result.best_loss) == (best["epoch"], best["val_loss"])
    assert result.epochs_run == 3
    assert result.checkpoint_path.is_file()
    metrics = json.loads(result.metrics_path.read_text())
    assert metrics["epochs_run"] == 3
    assert metrics["best_epoch"] == result.best_epoch
    assert metrics["final"] == result.history[-1]
    assert metrics["best"]["val_loss"] == result.best_loss
    assert metrics["wall_time_s"] > 0
    saved = load_file(result.model_dir / "model.safetensors")
    for key, value in model.state_dict().items():
        assert torch.equal(saved[key], value)
    assert json.loads((result.model_dir / "config.json").read_text())["model"] == "toy"


def test_a_callback_stops_training_and_resume_continues(loaders, tmp_path):
    train, val = loaders()
    result = Trainer(build(), quiet(epochs=4), tmp_path, callbacks=[Recorder(2)]).fit(train, val)
    assert result.stopped_by_callback
    assert [r["epoch"] for r in result.history] == [1, 2]
    resumed = Trainer(build(), quiet(epochs=4), tmp_path).fit(train, val, resume=True)
    assert not resumed.stopped_by_callback
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3, 4]


def test_progress_counts_fractional_epochs(loaders, tmp_path):
    train, val = loaders(batch_size=32)
    model = build()
    Trainer(model, quiet(epochs=2), tmp_path).fit(train, val)
    assert [progress for _, progress in model.seen] == pytest.approx(
        [0, 1 / 3, 2 / 3, 1, 4 / 3, 5 / 3]
    )


def test_each_epoch_selects_its_data_order(loaders, tmp_path):
    train, val = loaders()
    chosen = []
    train.batch_sampler.set_epoch = chosen.append
    Trainer(build(), quiet(epochs=3), tmp_path).fit(train, val)
    assert chosen == [0, 1, 2]


def test_scheduler_steps_once_per_epoch(loaders, tmp_path):
    train, val = loaders()
    config = quiet(
        epochs=4,
        optimizer={"name": "SGD", "kwargs": {"lr": 0.1}},
        scheduler={"name": "StepLR", "kwargs": {"step_size": 1, "gamma": 0.5}},
    )
    result = Trainer(build(), config, tmp_path).fit(train, val)
    assert [r["lr"] for r in result.history] == pytest.approx([0.1, 0.05, 0.025, 0.0125])


def test_plateau_scheduler_follows_the_validation_loss(loaders, tmp_path):
    train, val = loaders()
    model = build(ScriptedVAE)
    model.script = (3.0, 4.0, 5.0, 2.0)
    config = quiet(
        epochs=4,
        optimizer={"name": "SGD", "kwargs": {"lr": 0.1}},
        scheduler={"name": "ReduceLROnPlateau", "kwargs": {"patience": 0, "factor": 0.5}},
    )
    result = Trainer(model, config, tmp_path).fit(train, val)
    assert [r["lr"] for r in result.history] == pytest.approx([0.1, 0.1, 0.05, 0.025])


@pytest.fixture
def step_gradient_norms():
    """Total gradient norm of the optimizer's parameters at every ``optimizer.step``."""
    norms = []

    def hook(optimizer, args, kwargs):
        grads = [p.grad for group in optimizer.param_groups for p in group["params"]]
        norms.append(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item())

    handle = register_optimizer_step_pre_hook(hook)
    yield norms
    handle.remove()


@pytest.mark.parametrize("max_norm", [None, 1e-3], ids=["unclipped", "clipped"])
def test_gradients_are_clipped_after_backward(loaders, tmp_path, step_gradient_norms, max_norm):
    train, val = loaders(batch_size=96)
    model = build()
    before = torch.nn.utils.parameters_to_vector(model.parameters()).detach().clone()
    config = quiet(
        epochs=1, optimizer={"name": "SGD", "kwargs": {"lr": 1.0}}, grad_clip_norm=max_norm
    )
    Trainer(model, config, tmp_path).fit(train, val)
    moved = (torch.nn.utils.parameters_to_vector(model.parameters()) - before).norm().item()
    (norm,) = step_gradient_norms
    if max_norm is None:
        assert norm > 1.0
        assert moved == pytest.approx(norm, rel=1e-4)
    else:
        assert norm == pytest.approx(max_norm, rel=1e-4)
        assert moved == pytest.approx(max_norm, rel=1e-3)


@pytest.mark.parametrize(
    ("min_delta", "stop_epoch", "best_epoch"),
    [(0.05, 6, 4), (0.15, 4, 2)],
    ids=["small-delta", "large-delta"],
)
def test_early_stopping_and_best_weights(loaders, tmp_path, min_delta, stop_epoch, best_epoch):
    train, val = loaders()
    model = build(ScriptedVAE)
    model.script = (5.0, 4.0, 4.5, 3.9, 4.0, 4.1, 4.2, 1.0, 1.0, 1.0)
    recorder = Recorder()
    config = quiet(epochs=10, early_stopping_patience=2, early_stopping_min_delta=min_delta)
    result = Trainer(model, config, tmp_path, callbacks=[recorder]).fit(train, val)

    assert result.epochs_run == stop_epoch
    assert result.early_stopped == ["main"]
    assert result.best_epoch == best_epoch
    assert result.best_loss == pytest.approx(model.script[best_epoch - 1])
    saved = load_file(result.model_dir / "model.safetensors")
    for key, value in recorder.weights[best_epoch].items():
        assert torch.equal(model.state_dict()[key], value)
        assert torch.equal(saved[key], value)
    key = "decoders.a.network.0.weight"
    assert not torch.equal(recorder.weights[best_epoch][key], recorder.weights[stop_epoch][key])


def test_keep_last_saves_the_last_weights(loaders, tmp_path):
    train, val = loaders()
    model = build(ScriptedVAE)
    model.script = (1.0, 2.0, 3.0)
    recorder = Recorder()
    result = Trainer(model, quiet(epochs=3, keep="last"), tmp_path, callbacks=[recorder]).fit(
        train, val
    )
    assert result.best_epoch == 1
    saved = load_file(result.model_dir / "model.safetensors")
    for key, value in recorder.weights[3].items():
        assert torch.equal(saved[key], value)


def test_stages_train_their_own_parameters_with_fresh_optimizers(loaders, tmp_path):
    train, val = loaders(batch_size=32)
    model = build(TwoStageVAE)
    config = quiet(
        epochs=2,
        stage_epochs={"second": 3},
        keep="last",
        optimizer={"name": "SGD", "kwargs": {"lr": 0.05}},
        scheduler={"name": "StepLR", "kwargs": {"step_size": 1, "gamma": 0.5}},
    )
    result = Trainer(model, config, tmp_path).fit(train, val)

    assert [(r["stage"], r["stage_epoch"], r["epoch"]) for r in result.history] == [
        ("first", 1, 1),
        ("first", 2, 2),
        ("second", 1, 3),
        ("second", 2, 4),
        ("second", 3, 5),
    ]
    assert [r["lr"] for r in result.history] == pytest.approx([0.05, 0.025, 0.05, 0.025, 0.0125])
    assert "val_fit" in result.history[-1]
    assert "val_fit" not in result.history[0]
    first, second, final = model.entered["first"], model.entered["second"], model.state_dict()
    for key, value in final.items():
        if key.startswith("head."):
            assert torch.equal(second[key], first[key]), key
            assert not torch.equal(value, second[key]), key
        else:
            assert not torch.equal(second[key], first[key]), key
            assert torch.equal(value, second[key]), key
    progress = {stage: [p for s, p in model.seen if s == stage] for stage in model.stages}
    assert progress["first"] == pytest.approx([0, 1 / 3, 2 / 3, 1, 4 / 3, 5 / 3])
    assert progress["second"][:4] == pytest.approx([0, 1 / 3, 2 / 3, 1])


def test_each_stage_restores_its_best_weights(loaders, tmp_path):
    train, val = loaders(batch_size=32)

    class Scripted(ScriptedVAE, TwoStageVAE):
        pass

    model = build(Scripted)
    model.script = (1.0, 2.0)  # per stage: epoch 1 is the best of each
    recorder = Recorder()
    result = Trainer(model, quiet(epochs=2), tmp_path, callbacks=[recorder]).fit(train, val)
    assert result.best_epoch == 3
    for key, value in model.entered["second"].items():
        assert torch.equal(value, recorder.weights[1][key]), key
    for key, value in model.state_dict().items():
        assert torch.equal(value, recorder.weights[3][key]), key


def test_stage_epochs_must_name_model_stages(tmp_path):
    with pytest.raises(ConfigError, match=r"has no stage 'secnd'"):
        Trainer(build(TwoStageVAE), quiet(stage_epochs={"secnd": 1}), tmp_path)


def test_bfloat16_autocast_trains_on_cpu(loaders, tmp_path):
    train, val = loaders()
    result = Trainer(build(), quiet(epochs=1, precision="bf16"), tmp_path).fit(train, val)
    assert math.isfinite(result.history[0]["train_loss"])
    assert math.isfinite(result.history[0]["val_loss"])


def test_a_diverging_loss_is_an_error(loaders, tmp_path):
    train, val = loaders()
    model = build()
    with torch.no_grad():
        model.likelihoods["a"].log_scale.fill_(-1e4)
    with pytest.raises(FloatingPointError, match=r"training loss is (inf|nan) in epoch 1"):
        Trainer(model, quiet(epochs=2), tmp_path).fit(train, val)


def test_without_validation_data_the_training_loss_is_monitored(loaders, tmp_path):
    train, _ = loaders()
    result = Trainer(build(), quiet(epochs=2), tmp_path).fit(train)
    assert result.monitor == "train_loss"
    assert "val_loss" not in result.history[0]
    best = min(result.history, key=lambda r: r["train_loss"])
    assert result.best_epoch == best["epoch"]


def test_unsized_data_needs_steps_per_epoch(loaders, tmp_path):
    train, val = loaders(batch_size=32)
    batches = list(train)
    model = build()
    with pytest.raises(TypeError, match="steps_per_epoch"):
        Trainer(model, quiet(epochs=1), tmp_path).fit(iter(batches), val)
    Trainer(model, quiet(epochs=1), tmp_path).fit(
        (batch for batch in batches), val, steps_per_epoch=3
    )
    assert [p for _, p in model.seen] == pytest.approx([0, 1 / 3, 2 / 3])


def test_a_ddp_wrapped_model_trains_through_its_module(loaders, tmp_path):
    import torch.distributed as dist

    train, val = loaders()
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1
    )
    try:
        model = build()
        wrapped = torch.nn.parallel.DistributedDataParallel(model)
        result = Trainer(wrapped, quiet(epochs=2), tmp_path / "run").fit(train, val)
    finally:
        dist.destroy_process_group()
    assert len(model.seen) == 12
    assert result.model_dir.is_dir()
    saved = load_file(result.model_dir / "model.safetensors")
    assert set(saved) == set(ToyVAE(toy_config()).state_dict())
