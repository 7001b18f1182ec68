import json
import re
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

import multivae
from multivae.config import ConfigError
from multivae.data import read_schema
from multivae.data.datasets import load_builtin
from multivae.run import run_training
from multivae.run_config import RunConfig, apply_overrides, load_run_config, resolve_model_config

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run_config(output_dir, data, **options):
    raw = {
        "model": "mvae",
        "data": str(data),
        "model_config": {"latent_dim": 2, "warmup": 1.0},
        "training": {"epochs": 2, "batch_size": 32, "device": "cpu", "progress_bar": False},
        "output_dir": str(output_dir),
    }
    return RunConfig.from_dict(apply_overrides(raw, [f"{k}={v}" for k, v in options.items()]))


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({}, "found neither"),
        ({"data": "d", "builtin": {"name": "gaussian-views"}}, "found both"),
        ({"data": "d", "model": "mvea"}, r"unknown model 'mvea'.*Did you mean 'mvae'\?"),
        ({"data": "d", "trainig": {}}, r"unknown key 'trainig'.*Did you mean 'training'\?"),
        ({"data": "d", "training": {"epoch": 1}}, r"training: unknown key 'epoch'"),
    ],
    ids=["no-data", "two-data", "model-name", "top-key", "training-key"],
)
def test_bad_run_configs_are_refused(raw, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig.from_dict({"model": "mvae", "output_dir": "out", **raw})


def test_overrides_are_dotted_and_read_as_json():
    raw = {"training": {"epochs": 5}, "model_config": None}
    result = apply_overrides(
        raw,
        [
            "training.epochs=3",
            "training.optimizer.kwargs.lr=1e-2",
            "training.scheduler=null",
            "model_config.subsampling=false",
            "model=mopoe",
            "output_dir=a=b",
        ],
    )
    assert result == {
        "training": {"epochs": 3, "optimizer": {"kwargs": {"lr": 0.01}}, "scheduler": None},
        "model_config": {"subsampling": False},
        "model": "mopoe",
        "output_dir": "a=b",
    }
    assert raw == {"training": {"epochs": 5}, "model_config": None}
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        apply_overrides(raw, ["training.epochs"])
    with pytest.raises(ConfigError, match=r"expected a mapping at 'training.epochs', found 5"):
        apply_overrides(raw, ["training.epochs.x=1"])


def test_load_names_the_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model: mvae\ndata: d\noutput_dir: o\ntraining: {epochs: 2}\n")
    assert load_run_config(path, ["training.epochs=4"]).training.epochs == 4
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: training: unknown key 'lr'"):
        load_run_config(path, ["training.lr=0.1"])
    path.write_text("model: [mvae\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: not valid YAML"):
        load_run_config(path)
    path.write_text("- mvae\n")
    with pytest.raises(ConfigError, match="expected a mapping of run settings"):
        load_run_config(path)


def test_modalities_are_filled_from_the_schema_and_can_be_tuned(toy_dataset):
    schema = read_schema(toy_dataset)
    config = run_config("out", toy_dataset)
    resolved = resolve_model_config(config, schema)
    assert set(resolved["modalities"]) == {"a", "b"}
    assert resolved["modalities"]["a"]["shape"] == [4]
    assert resolved["latent_dim"] == 2

    tuned = run_config("out", toy_dataset, **{"model_config.modalities.b.scale": 0.5})
    modalities = resolve_model_config(tuned, schema)["modalities"]
    assert (modalities["a"]["scale"], modalities["b"]["scale"]) == (1.0, 0.5)
    assert modalities["b"]["shape"] == [3]

    unknown = run_config("out", toy_dataset, **{"model_config.modalities.c.scale": 0.5})
    with pytest.raises(ConfigError, match=r"no modalities \['c'\]; expected some of \['a', 'b'\]"):
        resolve_model_config(unknown, schema)


def test_run_training_writes_a_loadable_model_and_resumes(toy_dataset, tmp_path):
    out = tmp_path / "run"
    result = run_training(run_config(out, toy_dataset))
    # MLflow tracking is on by default: the SQLite store and its artifacts sit in the run folder.
    assert sorted(p.name for p in out.iterdir()) == [
        ".multivae-output.json",  # the run's marker (multivae.io.claim_output)
        "checkpoint.pt",
        "metrics.json",
        "mlartifacts",
        "mlflow.db",
        "mlflow_run.json",
        "model",
        "run.yaml",
    ]
    assert result.epochs_run == 2
    saved = load_run_config(out / "run.yaml")
    assert set(saved.model_config["modalities"]) == {"a", "b"}
    assert saved.model_config["warmup"] == 1.0
    model = multivae.load_model(result.model_dir)
    assert model.name == "mvae"
    assert json.loads(result.metrics_path.read_text())["epochs_run"] == 2

    resumed = run_training(run_config(out, toy_dataset, **{"training.epochs": 3}), resume=True)
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3]
    assert resumed.history[:2] == result.history


def test_same_seed_same_run(toy_dataset, tmp_path):
    first = run_training(run_config(tmp_path / "one", toy_dataset))
    second = run_training(run_config(tmp_path / "two", toy_dataset))
    one = multivae.load_model(first.model_dir).state_dict()
    for key, value in multivae.load_model(second.model_dir).state_dict().items():
        assert torch.equal(value, one[key]), key


def test_unknown_model_option_gets_a_suggestion(toy_dataset, tmp_path):
    config = run_config(tmp_path, toy_dataset, **{"model_config.betaa": 2.0})
    with pytest.raises(ConfigError, match=r"unknown key 'betaa'.*Did you mean 'beta'\?"):
        run_training(config)


def test_there_is_one_example_per_model_and_each_builds(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    schema = read_schema(
        load_builtin("poly-digits", missing_rate=0.5, cache=cache, n_train=10, n_val=10, n_test=10)
    )
    paths = sorted(p for p in EXAMPLES.glob("*.yaml") if not p.stem.startswith("sweep-"))
    assert [p.stem for p in paths] == multivae.list_models()
    for path in paths:
        config = load_run_config(path)
        assert config.model == path.stem
        assert config.builtin is not None
        assert (config.builtin.name, config.builtin.missing_rate) == ("poly-digits", 0.5)
        model = multivae.create_model(config.model, resolve_model_config(config, schema))
        assert model.config.latent_dim == config.model_config["latent_dim"]


def test_a_resume_that_would_change_the_run_is_refused_with_the_changed_keys(toy_dataset, tmp_path):
    out = tmp_path / "run"
    options = {"mlflow.enabled": "false"}
    run_training(run_config(out, toy_dataset, **options))
    before = {path.name: path.read_bytes() for path in out.iterdir() if path.is_file()}

    changes = [
        ({"training.optimizer.kwargs.lr": 0.5}, r"training\.optimizer\.kwargs\.lr: 0\.001 -> 0\.5"),
        ({"training.seed": 7}, r"training\.seed: 0 -> 7"),
        ({"training.batch_size": 16}, r"training\.batch_size: 32 -> 16"),
        ({"model_config.latent_dim": 3}, r"model_config\.latent_dim: 2 -> 3"),
        ({"training.precision": "bf16"}, r"training\.precision: 'fp32' -> 'bf16'"),
    ]
    for change, message in changes:
        with pytest.raises(ConfigError, match=rf"resuming would change the run: {message}"):
            run_training(run_config(out, toy_dataset, **options, **change), resume=True)
    # Nothing was written by the refused resumes: run.yaml still says what the run is.
    assert {path.name: path.read_bytes() for path in out.iterdir() if path.is_file()} == before

    # Other data (a copy with one split rewritten) is another run.
    other = tmp_path / "other"
    shutil.copytree(toy_dataset, other)
    (train_file,) = (other / "train").glob("*.parquet")
    table = pq.read_table(train_file)
    pq.write_table(table.slice(0, table.num_rows - 1), train_file)
    with pytest.raises(ConfigError, match=r"data: '[0-9a-f]{16}' -> '[0-9a-f]{16}'"):
        run_training(run_config(out, other, **options), resume=True)

    # What the run does not depend on may change: more epochs, no progress bar, another device.
    safe = {"training.epochs": 3, "training.progress_bar": "true", "training.checkpoint_every": 2}
    resumed = run_training(run_config(out, toy_dataset, **options, **safe), resume=True)
    assert resumed.epochs_run == 3
