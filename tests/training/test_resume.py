from fractions import Fraction

import pytest
import torch
from toys import TwoStageVAE, build, quiet

from multivae.training import Callback, Trainer, load_checkpoint, save_checkpoint
from multivae.training.checkpoint import CHECKPOINT_FILE

TIMINGS = ("epoch_time", "samples_per_s")


class Killed(Exception):
    pass


class Crash(Callback):
    """Raises at the end of an epoch, before its checkpoint: a run killed during that epoch."""

    def __init__(self, epoch):
        self.epoch = epoch

    def on_epoch_end(self, epoch, metrics):
        if epoch == self.epoch:
            raise Killed
        return False


def config():
    return quiet(
        epochs=2,
        stage_epochs={"second": 3},
        optimizer={"name": "Adam", "kwargs": {"lr": 0.01}},
        scheduler={"name": "StepLR", "kwargs": {"step_size": 1, "gamma": 0.7}},
        early_stopping_patience=4,
    )


def without_timings(history):
    return [{k: v for k, v in record.items() if k not in TIMINGS} for record in history]


@pytest.fixture(scope="module")
def uninterrupted(toy_dataset, tmp_path_factory):
    from multivae.data import MultimodalDataset, make_dataloader

    train = make_dataloader(MultimodalDataset(toy_dataset, "train"), 16, shuffle=True, seed=0)
    val = make_dataloader(MultimodalDataset(toy_dataset, "val"), 16)
    model = build(TwoStageVAE)
    result = Trainer(model, config(), tmp_path_factory.mktemp("full")).fit(train, val)
    return model, result


# Crashes in stage 1, at the stage boundary (after stage 1's last epoch) and in stage 2; with
# persistent loader workers, which draw from the global generator once instead of every epoch.
@pytest.mark.parametrize(
    ("crash_epoch", "num_workers"),
    [(2, 0), (3, 0), (4, 0), (4, 1)],
    ids=["in-stage-1", "at-stage-boundary", "in-stage-2", "with-worker"],
)
def test_resume_after_a_crash_is_exact(loaders, tmp_path, uninterrupted, crash_epoch, num_workers):
    reference, expected = uninterrupted
    train, val = loaders(num_workers=num_workers)
    with pytest.raises(Killed):
        Trainer(build(TwoStageVAE), config(), tmp_path, callbacks=[Crash(crash_epoch)]).fit(
            train, val
        )
    assert load_checkpoint(tmp_path / CHECKPOINT_FILE)["loop"]["epoch"] == crash_epoch - 1

    # A new process: fresh loaders, a model initialized differently, the global RNG elsewhere.
    train, val = loaders(num_workers=num_workers)
    model = build(TwoStageVAE, seed=99)
    torch.rand(7)
    result = Trainer(model, config(), tmp_path).fit(train, val, resume=True)

    assert without_timings(result.history) == without_timings(expected.history)
    assert (result.best_epoch, result.best_loss) == (expected.best_epoch, expected.best_loss)
    reference_state = reference.state_dict()
    for key, value in model.state_dict().items():
        assert torch.equal(value, reference_state[key]), key


def test_resuming_a_finished_run_changes_nothing(loaders, tmp_path):
    train, val = loaders()
    model = build()
    first = Trainer(model, quiet(epochs=2), tmp_path).fit(train, val)
    resumed = build(seed=5)
    again = Trainer(resumed, quiet(epochs=2), tmp_path).fit(train, val, resume=True)
    assert again.history == first.history
    for key, value in resumed.state_dict().items():
        assert torch.equal(value, model.state_dict()[key]), key


def test_fresh_run_refuses_a_folder_with_a_checkpoint(loaders, tmp_path):
    train, val = loaders()
    Trainer(build(), quiet(epochs=1), tmp_path).fit(train, val)
    with pytest.raises(FileExistsError, match="--resume"):
        Trainer(build(), quiet(epochs=1), tmp_path).fit(train, val)


def test_resume_needs_a_checkpoint(loaders, tmp_path):
    train, val = loaders()
    with pytest.raises(FileNotFoundError, match="no checkpoint to resume from"):
        Trainer(build(), quiet(epochs=1), tmp_path).fit(train, val, resume=True)


def test_resume_refuses_a_checkpoint_of_another_model(loaders, tmp_path):
    train, val = loaders()
    Trainer(build(), quiet(epochs=1), tmp_path).fit(train, val)
    with pytest.raises(ValueError, match="expected a checkpoint of a model with stages"):
        Trainer(build(TwoStageVAE), quiet(epochs=2), tmp_path).fit(train, val, resume=True)


def test_a_failed_save_leaves_the_previous_checkpoint(loaders, tmp_path, monkeypatch):
    train, val = loaders()
    Trainer(build(), quiet(epochs=1), tmp_path).fit(train, val)
    before = (tmp_path / CHECKPOINT_FILE).read_bytes()

    real_save = torch.save

    def save_half_then_fail(state, handle):
        real_save(state, handle)
        handle.truncate(handle.tell() // 2)
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", save_half_then_fail)
    with pytest.raises(OSError, match="No space left"):
        Trainer(build(), quiet(epochs=3), tmp_path).fit(train, val, resume=True)
    monkeypatch.undo()

    assert (tmp_path / CHECKPOINT_FILE).read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT_FILE, "metrics.json", "model"]
    assert load_checkpoint(tmp_path / CHECKPOINT_FILE)["loop"]["epoch"] == 1


def test_checkpoints_load_without_unpickling_code(tmp_path):
    path = tmp_path / "foreign.pt"
    torch.save({"format_version": 1, "payload": Fraction(1, 3)}, path)
    with pytest.raises(ValueError, match="holds objects other than tensors"):
        load_checkpoint(path)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        load_checkpoint(path)

    save_checkpoint({"weights": torch.ones(2), "history": [{"epoch": 1}]}, tmp_path / "ok.pt")
    state = load_checkpoint(tmp_path / "ok.pt")
    assert torch.equal(state["weights"], torch.ones(2))
    assert state["history"] == [{"epoch": 1}]
