"""Artifacts bound to what made them: fingerprints recorded, and uses with another model refused.

One small dataset, one model trained on it for one epoch and a second model that differs from
it by one weight are made once. A fitted sampler, a synthetic dataset, an imputed dataset and an
evaluation record the model (and the data) by fingerprint; using a sampler or an evaluation with
the other model is refused in one line naming both fingerprints, with the same model (in another
folder) accepted, and an artifact written before fingerprints were recorded taken unchecked.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

import multivae
from multivae import hub
from multivae.cli import main
from multivae.data.fingerprint import dataset_fingerprint
from multivae.data.reader import read_schema
from multivae.model_folder import model_fingerprint, model_source
from multivae.workflow import augment_step, register_step

SMALL = ["--param", "n_train=64", "--param", "n_val=16", "--param", "n_test=16"]
EVALUATION = ["k=4", "likelihood_samples=4", "n_generated=16", "figures=false"]


def prepare(out: Path, seed: int) -> Path:
    command = ["prepare-data", "gaussian-views", "--out", str(out), "--seed", str(seed)]
    assert main([*command, "--missing-rate", "0.3", *SMALL]) == 0
    return out


def train(output_dir: Path, data: Path) -> Path:
    config = output_dir.parent / f"{output_dir.name}.yaml"
    raw = {
        "model": "mvae",
        "data": str(data),
        "model_config": {"latent_dim": 2},
        "training": {"epochs": 1, "batch_size": 32, "progress_bar": False},
        "mlflow": {"enabled": False},
        "output_dir": str(output_dir),
    }
    config.write_text(yaml.safe_dump(raw))
    assert main(["train", "--config", str(config)]) == 0
    return output_dir / "model"


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A dataset, its classifiers, a model, the model with one weight changed, and what the
    model made: a saved sampler with its synthetic dataset, an imputed dataset, an evaluation."""
    root = tmp_path_factory.mktemp("provenance")
    data = prepare(root / "views", seed=0)
    model = train(root / "run", data)
    other_model = multivae.load_model(model)
    with torch.no_grad():
        next(other_model.parameters()).view(-1)[0] += 1.0
    other = other_model.save_pretrained(root / "other")
    assert main(["train-classifiers", str(data), "--epochs", "1"]) == 0
    sampler = root / "sampler"
    synthetic = root / "synthetic"
    sample = ["sample", "--model", str(model), "--n", "8", "--out", str(synthetic)]
    fit = ["--sampler", "gmm", "--fit-data", str(data), "--save-sampler", str(sampler)]
    assert main([*sample, *fit]) == 0
    imputed = root / "imputed"
    assert main(["impute", "--model", str(model), "--data", str(data), "--out", str(imputed)]) == 0
    evaluation = root / "evaluation"
    settings = [part for entry in EVALUATION for part in ("--set", entry)]
    evaluate = ["evaluate", "--model", str(model), "--data", str(data), "--out", str(evaluation)]
    assert main([*evaluate, *settings]) == 0
    return {
        "root": root,
        "data": data,
        "model": model,
        "other": other,
        "sampler": sampler,
        "synthetic": synthetic,
        "imputed": imputed,
        "metrics": json.loads((evaluation / "metrics.json").read_text()),
    }


def provenance(dataset: Path, split: str = "train") -> dict:
    return read_schema(dataset, split).extra["provenance"]


def refusal(capsys, argv: list[str]) -> str:
    """The one stderr line of a command that must exit with status 2."""
    capsys.readouterr()
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


# ------------------------------------------------------------------------------------------------
# The fingerprint of a model folder


def test_one_changed_weight_changes_the_fingerprint_and_a_copy_keeps_it(made, tmp_path):
    fingerprint = model_fingerprint(made["model"])
    assert len(fingerprint) == 16 and int(fingerprint, 16) >= 0
    copy = shutil.copytree(made["model"], tmp_path / "elsewhere" / "copy")
    assert model_fingerprint(copy) == fingerprint
    assert model_fingerprint(made["other"]) != fingerprint


def test_a_loaded_model_has_its_folders_fingerprint_until_its_weights_change(made, tmp_path):
    model = multivae.load_model(made["model"])
    source = model_source(model)
    assert source is not None
    assert source.fingerprint == model_fingerprint(made["model"])
    assert source.folder == made["model"].resolve()
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] += 1.0
    assert model_source(model) is None
    saved = model.save_pretrained(tmp_path / "saved")
    assert model_source(model).fingerprint == model_fingerprint(saved)


# ------------------------------------------------------------------------------------------------
# What is recorded


def test_the_saved_sampler_and_the_synthetic_dataset_record_the_model_and_the_data(made):
    document = json.loads((made["sampler"] / "sampler.json").read_text())
    expected = {
        "model": str(made["model"].resolve()),
        "model_fingerprint": model_fingerprint(made["model"]),
        "data": str(made["data"].resolve()),
        "data_fingerprint": dataset_fingerprint(made["data"]),
    }
    assert document["fitted_on"] == expected
    record = provenance(made["synthetic"])
    assert record["model_fingerprint"] == expected["model_fingerprint"]
    assert record["sampler"]["fitted_on"] == expected


def test_the_imputed_dataset_records_the_model_and_its_source(made):
    for split in ("train", "val", "test"):
        record = provenance(made["imputed"], split)
        assert record["model_fingerprint"] == model_fingerprint(made["model"])
        assert record["source_fingerprint"] == dataset_fingerprint(made["data"])


def test_the_evaluation_records_the_model_and_the_data(made):
    metrics = made["metrics"]
    assert metrics["model_path"] == str(made["model"])
    assert metrics["model_fingerprint"] == model_fingerprint(made["model"])
    assert metrics["data_fingerprint"] == dataset_fingerprint(made["data"])


# ------------------------------------------------------------------------------------------------
# A sampler with another model


def test_sample_refuses_a_sampler_fitted_on_another_model(made, tmp_path, capsys):
    line = refusal(
        capsys,
        [
            "sample",
            "--model",
            str(made["other"]),
            "--sampler-dir",
            str(made["sampler"]),
            "--n",
            "4",
            "--out",
            str(tmp_path / "out"),
        ],
    )
    assert line.startswith(f"multivae sample: error: {made['sampler']}: expected a sampler")
    assert f"{made['other'].resolve()} (fingerprint {model_fingerprint(made['other'])})" in line
    assert f"{made['model'].resolve()} (fingerprint {model_fingerprint(made['model'])})" in line
    assert not (tmp_path / "out").exists()


def test_sample_takes_the_sampler_with_its_own_model_copied_elsewhere(made, tmp_path):
    copy = shutil.copytree(made["model"], tmp_path / "copy")
    out = tmp_path / "out"
    argv = ["sample", "--model", str(copy), "--sampler-dir", str(made["sampler"])]
    assert main([*argv, "--n", "4", "--out", str(out)]) == 0
    assert provenance(out)["sampler"]["fitted_on"]["model_fingerprint"] == model_fingerprint(copy)


def test_a_sampler_saved_before_fingerprints_is_taken_unchecked(made, tmp_path):
    old = shutil.copytree(made["sampler"], tmp_path / "old-sampler")
    document = json.loads((old / "sampler.json").read_text())
    del document["fitted_on"]
    (old / "sampler.json").write_text(json.dumps(document))
    argv = ["sample", "--model", str(made["other"]), "--sampler-dir", str(old)]
    assert main([*argv, "--n", "4", "--out", str(tmp_path / "out")]) == 0


# ------------------------------------------------------------------------------------------------
# An evaluation with another model, classifiers of other data


def test_publishing_the_evaluation_of_another_model_is_refused(made, tmp_path):
    with pytest.raises(ValueError) as refused:
        hub.hub_folder(made["other"], tmp_path / "hub", metrics=made["metrics"])
    message = str(refused.value)
    assert "\n" not in message
    assert f"{made['other']} (fingerprint {model_fingerprint(made['other'])})" in message
    assert f"{made['model']} (fingerprint {model_fingerprint(made['model'])})" in message
    assert not (tmp_path / "hub").exists()


def test_the_register_step_refuses_the_evaluation_of_another_model(made, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with pytest.raises(ValueError, match=model_fingerprint(made["model"])):
        register_step(made["other"], made["metrics"], {}, tmp_path / "hub", tracking_uri=uri)
    assert not (tmp_path / "hub").exists()


def test_publishing_accepts_its_own_evaluation_and_one_without_fingerprint(made, tmp_path):
    folder = hub.hub_folder(made["model"], tmp_path / "own", metrics=made["metrics"])
    assert json.loads((folder / "metrics.json").read_text()) == made["metrics"]
    old = {k: v for k, v in made["metrics"].items() if k != "model_fingerprint"}
    assert hub.hub_folder(made["other"], tmp_path / "old", metrics=old).is_dir()


def test_augmentation_refuses_the_datasets_own_classifiers_trained_on_other_data(made, tmp_path):
    data = prepare(tmp_path / "views", seed=1)
    shutil.copytree(made["root"] / "views-classifiers", tmp_path / "views-classifiers")
    with pytest.raises(ValueError) as refused:
        augment_step(made["model"], data, tmp_path / "synthetic", sampler="prior", n=4)
    message = str(refused.value)
    assert f"{data} (fingerprint {dataset_fingerprint(data)})" in message
    assert f"(fingerprint {dataset_fingerprint(made['data'])})" in message
    assert not (tmp_path / "synthetic").exists()
