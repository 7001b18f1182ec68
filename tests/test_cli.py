import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from multivae.cli import main
from multivae.data import MultimodalDataset


def test_prepare_data_then_inspect(tmp_path, capsys):
    out = tmp_path / "d"
    status = main(
        [
            "prepare-data",
            "poly-digits",
            "--out",
            str(out),
            "--missing-rate",
            "0.5",
            "--seed",
            "0",
            "--param",
            "n_train=400",
            "--param",
            "n_val=100",
            "--param",
            "n_test=100",
        ]
    )
    assert status == 0
    capsys.readouterr()
    assert main(["inspect", str(out), "--json", "--validate"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert [m["name"] for m in summary["modalities"]] == ["m0", "m1", "m2", "m3", "m4"]
    assert all(m["shape"] == [3, 28, 28] for m in summary["modalities"])
    train = summary["splits"]["train"]
    assert train["rows"] == 400
    assert train["presence"]["m0"] == 1.0
    assert 0.35 < train["presence"]["m3"] < 0.65
    assert train["label_counts"] == [40] * 10
    assert train["validated"] is True
    assert summary["splits"]["test"]["presence"]["m4"] == 1.0

    assert main(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert "m4           shape (3, 28, 28)" in text
    assert "train       400" in text
    assert "balance 1.00" in text
    assert "polymnist: always_present=m0, rate=0.5" in text


def test_errors_are_one_line_and_exit_2(tmp_path, capsys):
    assert main(["inspect", str(tmp_path / "missing")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("multivae inspect: error: ")
    assert "missing" in error
    assert main(["prepare-data", "digits", "--out", str(tmp_path / "x")]) == 2
    assert "unknown built-in dataset 'digits'" in capsys.readouterr().err


def test_console_script_help_lists_datasets():
    script = Path(sys.executable).parent / "multivae"
    result = subprocess.run(
        [str(script), "prepare-data", "--help"], capture_output=True, text=True, check=True
    )
    for name in ("poly-digits", "digits-label", "gaussian-views", "--missing-rate", "n_train"):
        assert name in result.stdout


def test_convert_polymnist_folder(tmp_path, capsys):
    from PIL import Image

    release = tmp_path / "MMNIST"
    for split, count in (("train", 20), ("test", 10)):
        for m in range(2):
            folder = release / split / f"m{m}"
            folder.mkdir(parents=True)
            for index in range(count):
                pixels = np.full((28, 28, 3), index * 10 + m, dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{index}.{index % 5}.png")
    out = tmp_path / "converted"
    status = main(
        ["convert", "polymnist", str(tmp_path), "--out", str(out), "--val-fraction", "0.2"]
    )
    assert status == 0
    assert "dataset 'polymnist'" in capsys.readouterr().out.lower()
    test = MultimodalDataset(out, "test").read_all()
    assert tuple(test.data["m1"].shape) == (10, 3, 28, 28)
    order = test.sample_id.argsort()
    expected = (np.arange(10) * 10 + 1) / 255
    np.testing.assert_allclose(test.data["m1"][order, 0, 0, 0].numpy(), expected, rtol=1e-6)
    assert len(MultimodalDataset(out, "train")) + len(MultimodalDataset(out, "val")) == 20


def test_convert_reports_a_bad_release(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    status = main(["convert", "polymnist", str(tmp_path / "empty"), "--out", str(tmp_path / "o")])
    assert status == 2
    assert capsys.readouterr().err.startswith("multivae convert: error: ")


def test_list_models_prints_every_model_with_its_capabilities(capsys):
    import multivae

    assert main(["list-models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == multivae.list_models()
    flags = {line.split()[0]: line.split()[1:] for line in lines}
    assert "missing-modalities" in flags["mvae"]
    assert "importance-sampled" in flags["mmvae"]
    assert "importance-sampled" not in flags["mvae"]


def _write_run_config(tmp_path, **training):
    import yaml

    config = {
        "model": "mvae",
        "builtin": {
            "name": "gaussian-views",
            "missing_rate": 0.5,
            "seed": 0,
            "params": {"n_train": 64, "n_val": 32, "n_test": 16},
        },
        "model_config": {"latent_dim": 2, "warmup": 1.0},
        "training": {"epochs": 2, "batch_size": 32, "device": "cpu", **training},
        "output_dir": str(tmp_path / "run"),
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_train_writes_a_loadable_model_and_metrics_then_resumes(tmp_path, capsys, monkeypatch):
    import multivae

    monkeypatch.setenv("MULTIVAE_CACHE", str(tmp_path / "cache"))
    config = _write_run_config(tmp_path)
    assert main(["train", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    run = tmp_path / "run"
    assert f"model: {run / 'model'}" in out
    assert f"metrics: {run / 'metrics.json'}" in out
    model = multivae.load_model(run / "model")
    assert model.name == "mvae"
    assert json.loads((run / "metrics.json").read_text())["epochs_run"] == 2

    assert main(["train", "--config", str(config)]) == 2
    assert "--resume" in capsys.readouterr().err

    assert main(["train", "--config", str(config), "--resume", "--set", "training.epochs=3"]) == 0
    assert json.loads((run / "metrics.json").read_text())["epochs_run"] == 3


def test_train_refuses_a_bad_config_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MULTIVAE_CACHE", str(tmp_path / "cache"))
    config = _write_run_config(tmp_path, epoch=3)
    assert main(["train", "--config", str(config)]) == 2
    error = capsys.readouterr().err
    line = config.read_text().splitlines().index("  epoch: 3") + 1  # the file names its line
    assert error.startswith(
        f"multivae train: error: {config}, line {line}: training: unknown key 'epoch'"
    )
    assert "Did you mean 'epochs'?" in error
    assert error.count("\n") == 1

    config = _write_run_config(tmp_path)
    assert main(["train", "--config", str(config), "--set", "model_config.betaa=2"]) == 2
    assert "Did you mean 'beta'?" in capsys.readouterr().err
    assert main(["train", "--config", str(config), "--set", "training.epochs"]) == 2
    assert "expected KEY=VALUE" in capsys.readouterr().err
    assert main(["train", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml" in capsys.readouterr().err


def test_train_help_describes_the_run_config():
    script = Path(sys.executable).parent / "multivae"
    result = subprocess.run(
        [str(script), "train", "--help"], capture_output=True, text=True, check=True
    )
    for text in ("--config", "--resume", "--set", "training.epochs=3", "model_config", "builtin"):
        assert text in result.stdout


def test_an_unforeseen_error_is_one_line_and_debug_shows_the_traceback(monkeypatch, capsys):
    def broken(args):
        raise KeyError("the registry lost a model")

    # The parser is built at each call of main, from the command modules' functions.
    monkeypatch.setattr("multivae.cli.models.list_models", broken)
    assert main(["list-models"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("multivae list-models: error: KeyError: 'the registry lost a model'")
    assert "--debug" in err and "Traceback" not in err
    with pytest.raises(KeyError, match="the registry lost a model"):
        main(["--debug", "list-models"])
