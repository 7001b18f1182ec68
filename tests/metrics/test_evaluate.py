"""``evaluate`` on a really trained MoPoE: every metric group, figures, samplers, bad input."""

import json
import math
import shutil

import pytest

import multivae
from multivae.config import ConfigError
from multivae.data.datasets import prepare_builtin
from multivae.metrics import (
    ClassifierError,
    EvaluationConfig,
    default_classifier_dir,
    evaluate,
    train_classifiers,
)
from multivae.run import run_training
from multivae.run_config import MLflowConfig, RunConfig
from multivae.training import TrainingConfig
from multivae.training.config import OptimizerConfig


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """MoPoE trained on three poly-digits modalities (50% missing) until it is coherent, and the
    classifiers."""
    root = tmp_path_factory.mktemp("evaluate")
    data = prepare_builtin(
        "poly-digits",
        root / "poly",
        missing_rate=0.5,
        seed=0,
        num_modalities=3,
        n_train=2000,
        n_val=200,
        n_test=400,
    )
    result = run_training(
        RunConfig(
            model="mopoe",
            data=str(data),
            model_config={"latent_dim": 16},
            training=TrainingConfig(
                epochs=10,
                batch_size=32,
                optimizer=OptimizerConfig("Adam", {"lr": 3e-3}),
                progress_bar=False,
            ),
            output_dir=str(root / "run"),
            mlflow=MLflowConfig(enabled=False),
        )
    )
    classifiers = train_classifiers(data, epochs=6, progress=False)
    return data, result.model_dir, classifiers


@pytest.fixture(scope="module")
def metrics(trained, tmp_path_factory):
    data, model_dir, _ = trained
    out = tmp_path_factory.mktemp("evaluation")
    config = EvaluationConfig(
        k=50, likelihood_samples=40, n_generated=400, fit_samples=2000, figure_samples=4
    )
    return out, evaluate(model_dir, data, out, config, progress=False)


def finite_numbers(value):
    if isinstance(value, dict):
        for item in value.values():
            yield from finite_numbers(item)
    elif isinstance(value, float):
        yield value


def test_metrics_json_holds_every_group_with_finite_values(metrics):
    out, computed = metrics
    written = json.loads((out / "metrics.json").read_text())
    assert written == json.loads(json.dumps(computed))
    for group in ("likelihood", "coherence", "samplers", "reconstruction", "latents"):
        assert group in written, group
    assert all(math.isfinite(v) for v in finite_numbers(written))
    likelihood = written["likelihood"]
    assert likelihood["k"] == 50 and likelihood["joint"]["count"] == 40
    assert set(likelihood["conditional"]) == {"m0", "m1", "m2"}
    # Three modalities: coherence from 1 and 2 of them, each subset to each modality outside it.
    assert set(written["coherence"]["per_size"]) == {"1", "2"}
    assert len(written["coherence"]["pairs"]) == 3 * 2 + 3 * 1
    assert set(written["samplers"]) == {"prior", "gmm"}
    # No Inception weights were given: FID is computed on the classifiers' features and named so.
    assert set(written["samplers"]["gmm"]["fid_classifier"]) == {"m0", "m1", "m2"}
    assert "fid" not in written["samplers"]["gmm"]
    assert 0 < written["reconstruction"]["m0"]["ssim"] <= 1
    assert set(written["latents"]["clustering"]) == {"accuracy", "nmi", "ari"}
    assert len(written["latents"]["linear_probe"]["per_subset"]) == 7


def test_the_trained_model_is_coherent_and_its_classifiers_are_trustworthy(metrics, trained):
    _, computed = metrics
    accuracy = trained[2].accuracy
    assert computed["classifiers"]["test_accuracy"] == pytest.approx(dict(accuracy))
    assert min(accuracy.values()) > 0.7
    # Chance is 0.1: generation from one modality carries the class, from two even more.
    per_size = computed["coherence"]["per_size"]
    assert per_size["1"] > 0.25
    assert per_size["2"] >= per_size["1"] - 0.05
    # Latents from all observed modalities separate the classes for a linear probe.
    assert computed["latents"]["linear_probe"]["per_size"]["3"] > 0.5


def test_a_gmm_fitted_on_latents_is_at_least_as_coherent_as_the_prior(metrics):
    _, computed = metrics
    prior = computed["samplers"]["prior"]["joint_coherence"]
    gmm = computed["samplers"]["gmm"]["joint_coherence"]
    # 400 samples: a standard error of about 0.02 on each.
    assert gmm >= prior - 0.02, (gmm, prior)
    assert gmm > 0.1


def test_figures_are_written(metrics):
    out, _ = metrics
    names = {p.name for p in (out / "figures").glob("*.png")}
    assert {"samples-prior.png", "samples-gmm.png", "latents.png", "reconstructions.png"} <= names
    # A grid per conditioning subset of the three image modalities that leaves a target.
    assert sum(name.startswith("conditional-") for name in names) == 6


def test_a_dataset_with_other_modalities_is_refused(trained, tmp_path):
    _, model_dir, _ = trained
    other = prepare_builtin(
        "gaussian-views",
        tmp_path / "views",
        missing_rate=0.0,
        seed=0,
        n_train=20,
        n_val=5,
        n_test=5,
    )
    with pytest.raises(ConfigError, match=r"expects modalities .*'m0'.* holds .*'view0'"):
        evaluate(model_dir, other, tmp_path / "out", progress=False)


def test_the_default_classifiers_must_have_judged_this_very_dataset(trained, tmp_path):
    data, model_dir, _ = trained
    # The same generator with another seed: the same modalities, other data.
    other = prepare_builtin(
        "poly-digits",
        tmp_path / "poly",
        missing_rate=0.5,
        seed=1,
        num_modalities=3,
        n_train=50,
        n_val=10,
        n_test=10,
    )
    shutil.copytree(default_classifier_dir(data), tmp_path / "poly-classifiers")
    with pytest.raises(ConfigError, match="found ones trained on other data"):
        evaluate(model_dir, other, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_missing_classifiers_are_named(trained, tmp_path):
    data, model_dir, _ = trained
    with pytest.raises(ConfigError, match="multivae train-classifiers"):
        evaluate(
            model_dir,
            data,
            tmp_path / "out",
            EvaluationConfig(classifiers=str(tmp_path / "none")),
            progress=False,
        )
    partial = tmp_path / "partial"
    train_classifiers(data, partial, epochs=1, modalities=["m0"], progress=False)
    with pytest.raises(ClassifierError, match="m1"):
        evaluate(
            model_dir,
            data,
            tmp_path / "out",
            EvaluationConfig(classifiers=str(partial)),
            progress=False,
        )
    assert not (tmp_path / "out" / "metrics.json").exists()
    assert multivae.load_model(model_dir).name == "mopoe"
