import pytest

from multivae.config import ConfigError
from multivae.training import TrainingConfig


def test_defaults_round_trip_through_yaml():
    config = TrainingConfig()
    assert config.optimizer.name == "Adam"
    assert config.optimizer.kwargs == {"lr": 1e-3}
    assert config.scheduler is None
    assert TrainingConfig.from_yaml(config.to_yaml()) == config


def test_stage_epochs_override_epochs():
    config = TrainingConfig(epochs=5, stage_epochs={"second": 2})
    assert (config.epochs_of("first"), config.epochs_of("second")) == (5, 2)


BAD_SETTINGS = {
    "misspelled-key": ({"epoch": 3}, r"unknown key 'epoch'.*Did you mean 'epochs'\?"),
    "optimizer-name": ({"optimizer": {"name": "adamw"}}, r"'adamw'.*Did you mean 'AdamW'\?"),
    "optimizer-kwarg": ({"optimizer": {"kwargs": {"lrr": 0.1}}}, r"no argument 'lrr'.*'lr'\?"),
    "yaml-float-text": ({"optimizer": {"kwargs": {"lr": "1e-3"}}}, r"write floats as 1.0e-3"),
    "optimizer-value": ({"optimizer": {"kwargs": {"lr": -1.0}}}, r"kwargs .* are refused"),
    "scheduler-kwargs": ({"scheduler": {"name": "StepLR"}}, r"requires kwargs \['step_size'\]"),
    "scheduler-name": ({"scheduler": {"name": "Cosine"}}, r"unknown scheduler 'Cosine'"),
    "precision": ({"precision": "fp16"}, r"expected one of \['fp32', 'bf16'\]"),
    "device": ({"device": "gpu"}, r"expected one of \['auto', 'cpu', 'cuda'\]"),
    "epochs": ({"epochs": 0}, r"training.epochs: expected an integer >= 1, found 0"),
    "stage-epochs": ({"stage_epochs": {"first": 0}}, r"stage_epochs.first: expected an integer"),
    "patience": ({"early_stopping_patience": 0}, r"patience: expected an integer >= 1"),
    "checkpoint-every": ({"checkpoint_every": -1}, r"expected an integer >= 0, found -1"),
    "clip-norm": ({"grad_clip_norm": 0.0}, r"expected a number > 0 or null, found 0.0"),
    "keep": ({"keep": "first"}, r"expected one of \['best', 'last'\]"),
}


@pytest.mark.parametrize(("raw", "message"), BAD_SETTINGS.values(), ids=BAD_SETTINGS)
def test_bad_settings_are_refused_with_what_was_expected(raw, message):
    with pytest.raises(ConfigError, match=message):
        TrainingConfig.from_dict(raw, where="training")
