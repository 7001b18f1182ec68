"""The evaluation and augmentation commands: train-classifiers, evaluate, sample, impute."""

import json

import pytest

from multivae.cli import main
from multivae.data import MultimodalDataset
from multivae.data.datasets import prepare_builtin


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-eval")
    data = prepare_builtin(
        "gaussian-views", root / "views", missing_rate=0.3, seed=0, n_train=300, n_val=60, n_test=60
    )
    run = root / "run.yaml"
    run.write_text(
        "\n".join(
            [
                "model: mvae",
                f"data: {data}",
                "model_config: {latent_dim: 4}",
                "training: {epochs: 3, batch_size: 64, progress_bar: false}",
                "mlflow: {enabled: false}",
                f"output_dir: {root / 'run'}",
            ]
        )
    )
    assert main(["train", "--config", str(run)]) == 0
    return data, root / "run" / "model", root


def test_train_classifiers_then_evaluate(trained, capsys):
    data, model, root = trained
    assert main(["train-classifiers", str(data), "--epochs", "3"]) == 0
    printed = capsys.readouterr().out
    assert "view0" in printed and "test accuracy" in printed
    out = root / "evaluation"
    code = main(
        [
            "evaluate",
            "--model",
            str(model),
            "--data",
            str(data),
            "--out",
            str(out),
            "--set",
            "k=20",
            "--set",
            "likelihood_samples=20",
            "--set",
            "n_generated=100",
            "--set",
            'samplers=["prior", "gmm"]',
        ]
    )
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["likelihood"]["k"] == 20
    assert set(metrics["samplers"]) == {"prior", "gmm"}
    # Tabular views: no FID and no image grids, but the latent embedding is drawn.
    assert "fid_classifier" not in metrics["samplers"]["gmm"]
    assert (out / "figures" / "latents.png").exists()
    assert f"metrics: {out / 'metrics.json'}" in capsys.readouterr().out


def test_evaluate_with_an_unknown_setting_fails_cleanly(trained, capsys):
    data, model, _ = trained
    code = main(["evaluate", "--model", str(model), "--data", str(data), "--set", "kk=3"])
    assert code == 2
    assert "Did you mean 'k'" in capsys.readouterr().err


def test_sample_and_impute_write_valid_datasets(trained, capsys):
    data, model, root = trained
    synthetic = root / "synthetic"
    code = main(
        [
            "sample",
            "--model",
            str(model),
            "--n",
            "50",
            "--sampler",
            "gmm",
            "--fit-data",
            str(data),
            "--out",
            str(synthetic),
        ]
    )
    assert code == 0
    generated = MultimodalDataset(synthetic, "train").read_all()
    assert len(generated) == 50
    assert all(bool(generated.mask[m].all()) for m in generated.mask)
    provenance = MultimodalDataset(synthetic, "train").schema.extra["provenance"]
    assert provenance["sampler"]["kind"] == "gmm"

    filled = root / "imputed"
    assert main(["impute", "--model", str(model), "--data", str(data), "--out", str(filled)]) == 0
    source = MultimodalDataset(data, "train").read_all()
    imputed = MultimodalDataset(filled, "train").read_all()
    assert all(bool(imputed.mask[m].all()) for m in imputed.mask)
    for name in source.data:
        observed = source.mask[name]
        assert (imputed.data[name][observed] == source.data[name][observed]).all()
    assert "samples" in capsys.readouterr().out


def test_sampling_with_a_fitted_kind_and_no_data_fails_cleanly(trained, capsys):
    _, model, root = trained
    code = main(
        ["sample", "--model", str(model), "--n", "5", "--sampler", "maf", "--out", str(root / "x")]
    )
    assert code == 2
    assert "maf" in capsys.readouterr().err


def test_evaluate_reports_what_a_conditional_model_cannot_do(trained, capsys):
    """A CVAE has no prior samples: ``evaluate`` says so where it prints joint coherences."""
    data, _, root = trained
    run = root / "cvae.yaml"
    run.write_text(
        "\n".join(
            [
                "model: cvae",
                f"data: {data}",
                "model_config: {latent_dim: 4, main_modality: view1, "
                "conditioning_modalities: [view0], joint_hidden: [16], prior_hidden: [16]}",
                "training: {epochs: 1, batch_size: 64, progress_bar: false}",
                "mlflow: {enabled: false}",
                f"output_dir: {root / 'cvae'}",
            ]
        )
    )
    assert main(["train", "--config", str(run)]) == 0
    judges = root / "cvae-judges"
    assert main(["train-classifiers", str(data), "--epochs", "1", "--out", str(judges)]) == 0
    out = root / "cvae-evaluation"
    settings = ["k=5", "likelihood_samples=10", "n_generated=20", 'samplers=["prior"]']
    settings.append(f"classifiers={judges}")
    argv = ["evaluate", "--model", str(root / "cvae" / "model"), "--data", str(data)]
    argv += ["--out", str(out)]
    for setting in settings:
        argv += ["--set", setting]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert "not_applicable" in metrics["samplers"]
    assert f"joint coherence: not applicable ({metrics['samplers']['not_applicable']})" in printed
