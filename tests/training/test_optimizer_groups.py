"""Training loop v2: optimizer groups, frozen modules, skipped empty batches, stage switches."""

import pytest
import torch
from test_trainer import Recorder
from torch import nn
from toys import ScriptedVAE, ToyVAE, TwoStageVAE, build, quiet

from multivae.config import ConfigError
from multivae.data import Batch
from multivae.models.base import ModelOutput, MultimodalVAE, Objective, OptimizerGroup
from multivae.objectives import kl_standard_normal
from multivae.training import Trainer, load_checkpoint, save_checkpoint
from multivae.training.checkpoint import CHECKPOINT_FILE

TIMINGS = ("epoch_time", "samples_per_s")


class CriticVAE(ToyVAE):
    """Two groups: the VAE (``main``) and a critic head (``critic``, 2 steps per batch).

    The critic scores the (detached) posterior means; after each of its steps, ``after_step``
    records the call (and, with ``clip``, clips its weights as a WGAN critic).
    """

    clip: float | None = None

    def __init__(self, config) -> None:
        super().__init__(config)
        self.critic = nn.Linear(config.latent_dim, 1)
        self.after_steps = 0

    def optimizer_groups(self, stage: str) -> list[OptimizerGroup]:
        critic = list(self.critic.parameters())
        main = [p for p in self.parameters() if all(p is not c for c in critic)]
        return [
            OptimizerGroup("main", main),
            OptimizerGroup("critic", critic, steps=2, after_step=self.after_critic_step),
        ]

    def after_critic_step(self) -> None:
        self.after_steps += 1
        if self.clip is not None:
            with torch.no_grad():
                for parameter in self.critic.parameters():
                    parameter.clamp_(-self.clip, self.clip)

    def forward(self, batch: Batch) -> ModelOutput:
        if self.optimizer_group != "critic":
            return super().forward(batch)
        mean, _ = self.posterior_parameters(batch)
        score = self.critic(mean.detach()).squeeze(-1)
        loss = ((score - batch.data["a"][:, 0]) ** 2).mean()
        return ModelOutput(loss, {"score": score.mean()})


class SkippingVAE(ToyVAE):
    """The toy VAE on the contract's ``objective``, scoring only samples where ``b`` is present."""

    forward = MultimodalVAE.forward

    def objective(self, batch: Batch) -> Objective:
        mean, logvar = self.posterior_parameters(batch)
        z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)
        reconstruction = self.log_likelihoods(self.decode(z), batch).sum(0)
        kl = kl_standard_normal(mean, logvar)
        parts = {"reconstruction": reconstruction, "kl": kl}
        return Objective(kl - reconstruction, parts).where(batch.mask["b"])


class FrozenEncodersVAE(TwoStageVAE):
    """Stage ``second`` freezes the encoders (and trains everything else)."""

    def frozen_modules(self, stage: str) -> list[str]:
        return ["encoders"] if stage == "second" else []

    def stage_parameters(self, stage: str) -> list[nn.Parameter]:
        return MultimodalVAE.stage_parameters(self, stage)


def parameters_of(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def test_each_group_steps_its_own_parameters_with_its_own_optimizer(loaders, tmp_path):
    train, val = loaders(batch_size=32)  # 3 batches per epoch
    model = build(CriticVAE)
    config = quiet(
        epochs=2,
        optimizer={"name": "Adam", "kwargs": {"lr": 0.01}},
        groups={"critic": {"optimizer": {"name": "SGD", "kwargs": {"lr": 0.05}}}},
    )
    result = Trainer(model, config, tmp_path).fit(train, val)
    assert model.after_steps == 2 * 3 * 2  # 2 critic steps per batch, 3 batches, 2 epochs
    states = load_checkpoint(tmp_path / CHECKPOINT_FILE)["optimizers"]
    assert sorted(states) == ["critic", "main"]
    main, critic = states["main"]["optimizer"], states["critic"]["optimizer"]
    assert {int(s["step"]) for s in main["state"].values()} == {6}  # Adam: one step per batch
    assert critic["param_groups"][0]["lr"] == 0.05 and "momentum" in critic["param_groups"][0]
    assert len(main["param_groups"][0]["params"]) + len(critic["param_groups"][0]["params"]) == (
        len(list(model.parameters()))
    )
    record = result.history[-1]
    assert {"train_loss", "train_critic_loss", "train_critic_score", "val_loss"} <= set(record)
    assert record["lr"] == 0.01  # the first group's


def test_a_group_clips_its_own_gradients(loaders, tmp_path):
    train, val = loaders(batch_size=32)
    lr, max_norm = 1.0, 1e-3

    def critic_change(groups):
        model = build(CriticVAE)
        before = parameters_of(model.critic)
        config = quiet(epochs=1, optimizer={"name": "SGD", "kwargs": {"lr": lr}}, groups=groups)
        Trainer(model, config, tmp_path / str(len(groups["critic"]))).fit(train, val)
        after = parameters_of(model.critic)
        return torch.cat([(after[k] - before[k]).flatten() for k in before]).norm()

    clipped = critic_change({"critic": {"grad_clip_norm": max_norm}})
    free = critic_change({"critic": {}})
    # 6 critic steps of SGD, each moving the critic by at most lr * max_norm.
    assert clipped <= 6 * lr * max_norm * (1 + 1e-5)
    assert free > 100 * clipped


def test_unknown_groups_are_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"training.groups: toy has no optimizer group 'critc'"):
        Trainer(build(CriticVAE), quiet(groups={"critc": {}}), tmp_path)
    with pytest.raises(ConfigError, match="grad_clip_norm: expected a number > 0"):
        quiet(groups={"critic": {"grad_clip_norm": 0}})


class Explode(Exception):
    pass


class CrashingData:
    """The train loader, raising at batch ``at`` of epoch ``epoch`` (0-based) once."""

    def __init__(self, data, epoch, at):
        self.data, self.epoch, self.at, self.current = data, epoch, at, 0

    def __len__(self):
        return len(self.data)

    def set_epoch(self, epoch):
        self.current = epoch
        self.data.batch_sampler.set_epoch(epoch)

    def __iter__(self):
        # The loader's iterator now, as the loop makes it (a DataLoader draws its workers' seed
        # when its iterator is created; lazily, that draw would move the global generator).
        return self._guarded(iter(self.data))

    def _guarded(self, batches):
        for index, batch in enumerate(batches):
            if self.current == self.epoch and index == self.at:
                raise Explode
            yield batch


def test_resume_is_exact_for_two_groups_interrupted_mid_epoch(loaders, tmp_path):
    config = quiet(
        epochs=3,
        optimizer={"name": "Adam", "kwargs": {"lr": 0.01}},
        groups={
            "critic": {
                "optimizer": {"name": "RMSprop", "kwargs": {"lr": 0.01}},
                "scheduler": {"name": "StepLR", "kwargs": {"step_size": 1, "gamma": 0.5}},
            }
        },
    )
    train, val = loaders()
    reference = build(CriticVAE)
    expected = Trainer(reference, config, tmp_path / "full").fit(train, val)

    train, val = loaders()
    with pytest.raises(Explode):
        Trainer(build(CriticVAE), config, tmp_path / "run").fit(CrashingData(train, 1, 3), val)
    train, val = loaders()
    model = build(CriticVAE, seed=7)
    torch.rand(5)
    result = Trainer(model, config, tmp_path / "run").fit(train, val, resume=True)

    def strip(history):
        return [{k: v for k, v in r.items() if k not in TIMINGS} for r in history]

    assert strip(result.history) == strip(expected.history)
    reference_state = reference.state_dict()
    for key, value in model.state_dict().items():
        assert torch.equal(value, reference_state[key]), key


def test_a_checkpoint_of_one_optimizer_resumes_as_the_main_group(loaders, tmp_path):
    train, val = loaders()
    config = quiet(epochs=2, checkpoint_every=1, optimizer={"name": "Adam", "kwargs": {"lr": 0.01}})
    reference = build()
    Trainer(reference, config, tmp_path / "full").fit(train, val)

    class StopAfterOne(Recorder):
        def on_epoch_end(self, epoch, metrics):
            return epoch == 1

    Trainer(build(), config, tmp_path / "run", callbacks=[StopAfterOne()]).fit(train, val)
    path = tmp_path / "run" / CHECKPOINT_FILE
    checkpoint = load_checkpoint(path)
    (main,) = checkpoint.pop("optimizers").values()
    checkpoint.pop("format_version")
    save_checkpoint({**checkpoint, **main}, path)  # the format before optimizer groups
    model = build(seed=3)
    Trainer(model, config, tmp_path / "run").fit(train, val, resume=True)
    for key, value in model.state_dict().items():
        assert torch.equal(value, reference.state_dict()[key]), key


def batch_without_b(batch: Batch) -> Batch:
    mask = {**batch.mask, "b": torch.zeros_like(batch.mask["b"])}
    data = {**batch.data, "b": torch.zeros_like(batch.data["b"])}
    return Batch(data=data, mask=mask)


def test_a_batch_without_a_usable_sample_skips_the_optimizer_step(loaders, tmp_path):
    train, _ = loaders(batch_size=32)
    batches = list(train)
    data = [batches[0], batch_without_b(batches[1]), batches[2]]
    model = build(SkippingVAE)
    config = quiet(epochs=1, checkpoint_every=1)
    result = Trainer(model, config, tmp_path / "some").fit(data)
    assert result.history[0]["skipped_steps"] == 1
    states = load_checkpoint(tmp_path / "some" / CHECKPOINT_FILE)["optimizers"]["main"]
    assert {int(s["step"]) for s in states["optimizer"]["state"].values()} == {2}

    # An epoch of unusable batches leaves every weight as it was (a zero gradient would not:
    # Adam's moments from the earlier steps would still move them).
    before = {k: v.clone() for k, v in model.state_dict().items()}
    unusable = [batch_without_b(b) for b in batches]
    trainer = Trainer(model, quiet(epochs=1, keep="last"), tmp_path / "none")
    result = trainer.fit(unusable)
    assert result.history[0]["skipped_steps"] == len(unusable)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_frozen_modules_take_no_gradient_and_stay_in_evaluation_mode(loaders, tmp_path):
    model = build(FrozenEncodersVAE)
    model.set_stage("second")
    model.train()
    assert model.training and not model.encoders.training and model.decoders.training
    assert all(not p.requires_grad for p in model.encoders.parameters())
    encoder_ids = {id(p) for p in model.encoders.parameters()}
    assert not encoder_ids & {id(p) for p in model.stage_parameters("second")}
    train, val = loaders(batch_size=32)
    batch = next(iter(train))
    model(batch).loss.backward()
    assert all(p.grad is None for p in model.encoders.parameters())
    assert all(p.grad is not None for p in model.decoders.parameters())
    model.set_stage("first")
    model.train()
    assert model.encoders.training and all(p.requires_grad for p in model.parameters())

    model = build(FrozenEncodersVAE)
    Trainer(model, quiet(epochs=1, keep="last"), tmp_path).fit(train, val)
    entered = model.entered["second"]
    final = model.state_dict()
    for key, value in final.items():
        if key.startswith("encoders."):
            assert torch.equal(value, entered[key]), key
        elif key.startswith("decoders.") and key.endswith("weight"):
            assert not torch.equal(value, entered[key]), key
    with pytest.raises(ValueError, match=r"frozen_modules\('second'\) names \['encoderz'\]"):
        broken = build(FrozenEncodersVAE)
        broken.frozen_modules = lambda stage: ["encoderz"]
        broken.set_stage("second")


@pytest.mark.parametrize("restore", [True, False])
def test_a_model_declares_whether_a_stage_switch_restores_the_best_weights(
    loaders, tmp_path, restore
):
    class Scripted(ScriptedVAE, TwoStageVAE):
        restore_best_between_stages = restore

    train, val = loaders(batch_size=32)
    model = build(Scripted)
    model.script = (1.0, 2.0, 3.0)  # stage 1's best epoch is its first
    recorder = Recorder()
    Trainer(model, quiet(epochs=3), tmp_path, callbacks=[recorder]).fit(train, val)
    start = recorder.weights[1 if restore else 3]
    for key, value in model.entered["second"].items():
        assert torch.equal(value, start[key]), key
