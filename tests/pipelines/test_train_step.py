"""The train step's sweep mode: a real Ray Tune + Optuna sweep inside the pipeline's MLflow run."""

import pytest
import yaml
from mlflow import MlflowClient

from multivae.data.datasets import prepare_builtin
from multivae.integrations.mlflow import start_parent_run
from multivae.models.base import MultimodalVAE
from multivae.workflow import train_step

pytestmark = pytest.mark.integration

SWEEP = {
    "num_samples": 2,
    "max_concurrent_trials": 2,
    "scheduler": None,
    "space": {"model_config.beta": {"uniform": [0.5, 1.5]}},
}


def test_a_sweep_in_the_train_step_keeps_the_best_trial_under_the_pipeline_run(tmp_path):
    data = prepare_builtin(
        "gaussian-views", tmp_path / "data", missing_rate=0.3, n_train=200, n_val=50, n_test=50
    )
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    pipeline_run = start_parent_run(uri, "multivae", "pipeline")
    out = tmp_path / "task" / "model"
    record = train_step(
        data,
        out,
        model="mvae",
        model_config={"latent_dim": 2.0},  # KFP's Struct numbers are doubles
        training={"epochs": 2.0, "batch_size": 64.0},
        sweep=yaml.safe_dump(SWEEP),
        tracking_uri=uri,
        parent_run_id=pipeline_run,
    )
    assert record["sweep"] is True and record["mode"] == "local"
    # The artifact holds what later steps use; the trials' working folder is gone.
    assert sorted(p.name for p in out.iterdir()) == [
        "metrics.json",
        "model",
        "run.yaml",
        "train.json",
    ]
    assert [p.name for p in out.parent.iterdir()] == ["model"]
    assert MultimodalVAE.from_pretrained(out / "model").name == "mvae"
    assert yaml.safe_load((out / "run.yaml").read_text())["model_config"]["beta"] != 1.0

    client = MlflowClient(uri)
    experiment = client.get_run(pipeline_run).info.experiment_id
    runs = {r.info.run_id: r for r in client.search_runs([experiment])}
    (sweep_run,) = [r for r in runs.values() if r.data.tags.get("multivae.kind") == "sweep"]
    assert sweep_run.data.tags["mlflow.parentRunId"] == pipeline_run
    trials = [
        r for r in runs.values() if r.data.tags.get("mlflow.parentRunId") == sweep_run.info.run_id
    ]
    assert len(trials) == 2
    assert record["mlflow_run_id"] in {t.info.run_id for t in trials}
    # The run the step reports is its run: the step's source, the dataset it trained on.
    best = client.get_run(record["mlflow_run_id"])
    assert best.data.tags["multivae.step"] == "train"
    assert best.data.tags["mlflow.source.type"] == "JOB"
    assert best.data.tags["mlflow.source.name"] == "components/train.py"
    (dataset,) = best.inputs.dataset_inputs
    assert [(t.key, t.value) for t in dataset.tags] == [("mlflow.data.context", "training")]
    assert client.get_experiment(experiment).tags["mlflow.experimentKind"] == (
        "custom_model_development"
    )
    # The sweep started Ray and shut it down: nothing is left running in this process.
    import ray

    assert not ray.is_initialized()
