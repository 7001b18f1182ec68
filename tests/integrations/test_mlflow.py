"""MLflow tracking against real stores: a SQLite file, and an ``mlflow server`` over HTTP."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

import multivae
from multivae.data import DataFormatError, MultimodalDataset, SplitArrays, write_split
from multivae.data.datasets import prepare_builtin
from multivae.data.fingerprint import dataset_fingerprint
from multivae.distribution import DISTRIBUTION
from multivae.integrations.mlflow import (
    EXPERIMENT_KIND_TAG,
    MODEL_ID_TAG,
    MODEL_TRAINING_KIND,
    TRUNCATED,
    MLflowCallback,
    default_tracking_uri,
    experiment_id_for,
    finish_run,
    flatten_config,
    higher_is_better,
    log_dataset,
    promote_champion,
    register_model,
    run_tags,
    start_parent_run,
)
from multivae.names import MLFLOW_RUN_FILE
from multivae.run import run_training
from multivae.run_config import MLflowConfig, RunConfig
from multivae.training import Callback
from multivae.training.config import TrainingConfig


def monitor_threads():
    return [t for t in threading.enumerate() if t.name == "SystemMetricsMonitor" and t.is_alive()]


@pytest.fixture(autouse=True)
def working_dir(tmp_path, monkeypatch):
    """An empty working directory, which MLflow must leave alone (no ./mlflow.db, ./mlruns).

    No system metrics thread outlives a test either.
    """
    folder = tmp_path / "cwd"
    folder.mkdir()
    monkeypatch.chdir(folder)
    yield folder
    assert not list(folder.iterdir())
    assert not monitor_threads()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return prepare_builtin(
        "gaussian-views",
        tmp_path_factory.mktemp("data") / "gaussian",
        missing_rate=0.3,
        seed=0,
        n_train=200,
        n_val=50,
        n_test=50,
    )


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory):
    """One SQLite store for the module (creating its tables takes seconds)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture
def client(tracking_uri):
    return MlflowClient(tracking_uri)


def run_config(output_dir, data, epochs=3, **training):
    return RunConfig(
        model="mopoe",
        data=str(data),
        model_config={"latent_dim": 4},
        training=TrainingConfig(
            epochs=epochs, batch_size=64, progress_bar=False, device="cpu", **training
        ),
        output_dir=str(output_dir),
        # The tests attach their own MLflowCallback.
        mlflow=MLflowConfig(enabled=False),
    )


def artifact_paths(client, run_id, path=None):
    found = set()
    for item in client.list_artifacts(run_id, path):
        found |= artifact_paths(client, run_id, item.path) if item.is_dir else {item.path}
    return found


def steps_and_values(client, run_id, key="train_loss"):
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def history_of(result, key="train_loss"):
    return [(record["epoch"], record[key]) for record in result.history]


class StopAt(Callback):
    def __init__(self, epoch):
        self.epoch = epoch

    def on_epoch_end(self, epoch, metrics):
        return epoch >= self.epoch


class RaiseAt(Callback):
    def __init__(self, epoch, error):
        self.epoch, self.error = epoch, error

    def on_epoch_end(self, epoch, metrics):
        if epoch == self.epoch:
            raise self.error
        return False


def test_a_run_logs_params_tags_metrics_and_artifacts(tmp_path, dataset, tracking_uri, client):
    output_dir = tmp_path / "run"

    class Figures(Callback):
        """Draws the run's figures into its folder, as a plotting callback would."""

        def on_train_begin(self, trainer):
            (output_dir / "figures").mkdir(parents=True)
            (output_dir / "loss.png").write_bytes(b"\x89PNG loss")
            (output_dir / "figures" / "latent.png").write_bytes(b"\x89PNG latent")

    config = run_config(output_dir, dataset)
    callback = MLflowCallback(
        tracking_uri=tracking_uri,
        experiment="records",
        run_name="first",
        config=config.to_dict(),
        dataset=dataset,
        extra_tags={"team": "vae"},
    )
    result = run_training(config, callbacks=[Figures(), callback])

    run = client.get_run(callback.run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "first"
    assert run.data.params == flatten_config(config.to_dict())
    assert run.data.params["training.optimizer.kwargs.lr"] == "0.001"
    assert run.data.params["model_config.latent_dim"] == "4"
    assert run.data.params["training.epochs"] == "3"
    assert run.data.params["data"] == str(dataset)
    assert run.data.params["builtin"] == "null"
    tags = run.data.tags
    assert tags["multivae.model"] == "mopoe"
    assert tags["multivae.dataset_fingerprint"] == dataset_fingerprint(dataset)
    assert tags["multivae.version"] == metadata.version(DISTRIBUTION)
    assert tags["team"] == "vae"
    assert "mlflow.parentRunId" not in tags

    assert steps_and_values(client, callback.run_id) == history_of(result)
    assert [step for step, _ in history_of(result)] == [1, 2, 3]
    assert steps_and_values(client, callback.run_id, "val_loss") == history_of(result, "val_loss")
    final = json.loads(result.metrics_path.read_text())["final"]
    assert run.data.metrics["train_loss"] == final["train_loss"]
    assert run.data.metrics["epoch"] == 3
    assert "stage" not in run.data.metrics

    assert json.loads((output_dir / MLFLOW_RUN_FILE).read_text()) == {
        "tracking_uri": tracking_uri,
        "experiment_id": run.info.experiment_id,
        "run_id": callback.run_id,
    }
    paths = artifact_paths(client, callback.run_id)
    assert {
        "run.yaml",
        "metrics.json",
        "model/config.json",
        "model/model.safetensors",
        "figures/loss.png",
        "figures/latent.png",
    } <= paths
    assert not any("checkpoint" in path for path in paths)
    # A SQLite store keeps the artifacts next to the database, not in ./mlruns.
    assert (
        Path(tracking_uri.removeprefix("sqlite:///")).parent
        in Path(run.info.artifact_uri.removeprefix("file://")).parents
    )

    downloaded = client.download_artifacts(callback.run_id, "model", str(tmp_path / "download"))
    logged, saved = multivae.load_model(downloaded), multivae.load_model(result.model_dir)
    batch = MultimodalDataset(dataset, "test").read_all()
    outputs = []
    for model in (logged, saved):
        torch.manual_seed(0)
        outputs.append(model.predict(batch, cond=["view0"]))
    assert outputs[0].keys() == outputs[1].keys() == {"view0", "view1"}
    for name in outputs[0]:
        torch.testing.assert_close(outputs[0][name], outputs[1][name], rtol=0, atol=0)


def test_a_training_run_fills_what_the_mlflow_ui_shows(
    tmp_path, dataset, tracking_uri, client, monkeypatch
):
    """Experiment kind, dataset input, source, system metrics: what MLflow's UI reads."""
    monkeypatch.delenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", raising=False)
    callback = MLflowCallback(
        tracking_uri=tracking_uri,
        experiment="ui",
        dataset=dataset,
        # Longer than the run: its one sample is taken when it ends.
        system_metrics_interval=600,
    )
    run_training(run_config(tmp_path / "run", dataset, epochs=2), callbacks=[callback])
    assert not monitor_threads()

    run = client.get_run(callback.run_id)
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING_KIND == "custom_model_development"

    # The Source and User columns: as mlflow.start_run would set them for this process.
    assert run.data.tags["mlflow.source.type"] == "LOCAL"
    assert run.data.tags["mlflow.source.name"] == sys.argv[0]
    assert run.data.tags["mlflow.user"]

    # The Dataset column: the folder as a training input, its fingerprint as digest.
    (logged,) = run.inputs.dataset_inputs
    assert {(tag.key, tag.value) for tag in logged.tags} == {("mlflow.data.context", "training")}
    assert logged.dataset.name == "gaussian-views"
    assert logged.dataset.digest == dataset_fingerprint(dataset)
    assert logged.dataset.digest == run.data.tags["multivae.dataset_fingerprint"]
    assert logged.dataset.source_type == "local"
    assert json.loads(logged.dataset.source) == {"uri": Path(dataset).resolve().as_uri()}
    columns = json.loads(logged.dataset.schema)["mlflow_colspec"]
    assert [(c["name"], c["type"]) for c in columns] == [
        ("sample_id", "long"),
        ("view0", "array"),
        ("view0__present", "boolean"),
        ("view1", "array"),
        ("view1__present", "boolean"),
        ("label", "long"),
    ]
    assert columns[1]["items"] == {"type": "float"}  # float32 values of shape (8,)
    profile = json.loads(logged.dataset.profile)
    assert {split: info["rows"] for split, info in profile["splits"].items()} == {
        "train": 200,
        "val": 50,
        "test": 50,
    }
    assert 0.5 < profile["splits"]["train"]["presence"]["view0"] < 1.0  # missing rate 0.3
    # A run that evaluates on it has it as an input too, with that context: one dataset.
    evaluation = start_parent_run(tracking_uri, "ui", "evaluate")
    log_dataset(client, evaluation, dataset, "evaluation")
    (evaluated,) = client.get_run(evaluation).inputs.dataset_inputs
    assert [(tag.key, tag.value) for tag in evaluated.tags] == [
        ("mlflow.data.context", "evaluation")
    ]
    assert (evaluated.dataset.name, evaluated.dataset.digest) == (
        logged.dataset.name,
        logged.dataset.digest,
    )

    # System metrics, sampled in a thread that is gone once the run ends.
    assert "system/cpu_utilization_percentage" in run.data.metrics
    assert "system/system_memory_usage_megabytes" in run.data.metrics
    history = client.get_metric_history(callback.run_id, "system/cpu_utilization_percentage")
    assert [m.step for m in history] == [0]

    # Without them: none.
    quiet = MLflowCallback(tracking_uri=tracking_uri, experiment="ui", log_system_metrics=False)
    run_training(run_config(tmp_path / "quiet", dataset, epochs=1), callbacks=[quiet])
    assert not [k for k in client.get_run(quiet.run_id).data.metrics if k.startswith("system/")]


def test_system_metrics_are_sampled_while_a_run_trains(tmp_path, dataset, tracking_uri, client):
    callback = MLflowCallback(
        tracking_uri=tracking_uri, experiment="ui", system_metrics_interval=0.2
    )
    run_training(run_config(tmp_path / "run", dataset, epochs=6), callbacks=[callback])
    steps = [
        m.step for m in client.get_metric_history(callback.run_id, "system/disk_usage_megabytes")
    ]
    assert steps == list(range(len(steps))) and len(steps) >= 2


def test_experiments_are_marked_model_training_unless_their_user_chose(tracking_uri, client):
    created = experiment_id_for(client, "kind-new")
    assert client.get_experiment(created).tags[EXPERIMENT_KIND_TAG] == "custom_model_development"
    bare = client.create_experiment("kind-bare")  # made elsewhere, without a kind
    assert experiment_id_for(client, "kind-bare") == bare
    assert client.get_experiment(bare).tags[EXPERIMENT_KIND_TAG] == "custom_model_development"
    chosen = client.create_experiment(
        "kind-chosen", tags={EXPERIMENT_KIND_TAG: "genai_development"}
    )
    assert experiment_id_for(client, "kind-chosen") == chosen
    assert client.get_experiment(chosen).tags[EXPERIMENT_KIND_TAG] == "genai_development"
    parent = start_parent_run(tracking_uri, "kind-parent", "sweep")
    parent_run = client.get_run(parent)
    experiment = client.get_experiment(parent_run.info.experiment_id)
    assert experiment.tags[EXPERIMENT_KIND_TAG] == "custom_model_development"
    assert parent_run.data.tags["mlflow.source.type"] == "LOCAL"  # a parent run has a source
    named = start_parent_run(
        tracking_uri,
        "kind-parent",
        "pipeline",
        tags={"mlflow.source.name": "pipelines/pipeline.py", "mlflow.source.type": "JOB"},
    )
    tags = client.get_run(named).data.tags
    assert (tags["mlflow.source.name"], tags["mlflow.source.type"]) == (
        "pipelines/pipeline.py",
        "JOB",
    )


def test_metric_directions_follow_their_names():
    for lower in (
        "likelihood.joint.mean",
        "likelihood.conditional.view0.mean",
        "val_loss",
        "samplers.gmm.fid_classifier.m0",
        "reconstruction.view0.mse",
    ):
        assert not higher_is_better(lower), lower
    for higher in (
        "coherence.mean",
        "coherence.per_size.1",
        "samplers.gmm.joint_coherence",
        "latents.clustering.accuracy",
        "reconstruction.view0.ssim",
    ):
        assert higher_is_better(higher), higher


def test_the_champion_alias_moves_only_to_a_better_version(tracking_uri, client):
    """A real SQLite registry; versions ranked on a higher-better and a lower-better metric."""
    run_id = start_parent_run(tracking_uri, "champions", "source")

    def new_version(name):
        if not client.search_registered_models(f"name = '{name}'"):
            client.create_registered_model(name)
        return str(client.create_model_version(name, f"runs:/{run_id}/model", run_id).version)

    def holder(name):
        return str(client.get_model_version_by_alias(name, "champion").version)

    def rank(name, value, metric="coherence.mean"):
        version = new_version(name)
        return version, promote_champion(client, name, version, metric, value)

    version, decision = rank("coherent", 0.5)
    assert decision["promoted"] and decision["previous_version"] is None
    assert decision["higher_is_better"] is True
    assert holder("coherent") == version == "1"
    assert client.get_model_version("coherent", "1").tags["multivae.metric.coherence.mean"] == (
        "0.5"
    )
    _, decision = rank("coherent", 0.4)  # worse
    assert not decision["promoted"] and holder("coherent") == "1"
    assert decision["previous_version"] == "1" and decision["previous_value"] == 0.5
    assert "does not beat" in decision["reason"]
    assert client.get_model_version("coherent", "2").tags["multivae.champion"] == "false"
    _, decision = rank("coherent", 0.5)  # a tie keeps the champion
    assert not decision["promoted"] and holder("coherent") == "1"
    version, decision = rank("coherent", 0.6)  # better
    assert decision["promoted"] and holder("coherent") == version == "4"
    assert decision["previous_version"] == "1"
    assert client.get_model_version("coherent", "4").tags["multivae.champion"] == "true"
    for missing in (None, float("nan")):  # no finite value: never ranked above
        _, decision = rank("coherent", missing)
        assert not decision["promoted"] and holder("coherent") == "4"
    _, decision = rank("coherent", 0.9, metric="latents.clustering.accuracy")
    assert (
        not decision["promoted"]
        and "no recorded latents.clustering.accuracy" in (decision["reason"])
    )
    assert holder("coherent") == "4"

    # An NLL: lower is better.
    assert rank("likely", 1000.0, "likelihood.joint.mean")[1]["promoted"]
    _, decision = rank("likely", 1200.0, "likelihood.joint.mean")
    assert not decision["promoted"] and decision["higher_is_better"] is False
    assert holder("likely") == "1"
    version, decision = rank("likely", 900.0, "likelihood.joint.mean")
    assert decision["promoted"] and holder("likely") == version == "3"
    assert "lower is better" in decision["reason"]


def test_children_of_a_parent_run_are_nested_runs(tmp_path, dataset, tracking_uri, client):
    parent = start_parent_run(
        tracking_uri,
        "sweep",
        "sweep",
        params={"space": {"lr": [1e-3, 1e-2]}},
        tags={"kind": "sweep"},
    )
    children = []
    for trial in range(2):
        callback = MLflowCallback(
            tracking_uri=tracking_uri,
            experiment="sweep",
            run_name=f"trial-{trial}",
            parent_run_id=parent,
        )
        run_training(
            run_config(tmp_path / f"trial-{trial}", dataset, epochs=1), callbacks=[callback]
        )
        children.append(callback.run_id)
    finish_run(tracking_uri, parent)

    experiment = client.get_experiment_by_name("sweep")
    nested = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent}'"
    )
    assert sorted(run.info.run_id for run in nested) == sorted(children)
    assert len(set(children)) == 2
    parent_run = client.get_run(parent)
    assert parent_run.info.status == "FINISHED"
    assert parent_run.data.params == {"space.lr": "[0.001,0.01]"}
    assert parent_run.data.tags["kind"] == "sweep"


def test_a_resumed_run_continues_the_same_mlflow_run(tmp_path, dataset, tracking_uri, client):
    config = run_config(tmp_path / "run", dataset, epochs=4)
    first = MLflowCallback(tracking_uri=tracking_uri, experiment="resume", config=config.to_dict())
    stopped = run_training(config, callbacks=[first, StopAt(2)])
    assert stopped.stopped_by_callback
    assert [step for step, _ in steps_and_values(client, first.run_id)] == [1, 2]

    second = MLflowCallback(tracking_uri=tracking_uri, experiment="resume", config=config.to_dict())
    result = run_training(config, resume=True, callbacks=[second])

    assert second.run_id == first.run_id
    experiment = client.get_experiment_by_name("resume")
    assert len(client.search_runs([experiment.experiment_id])) == 1
    assert steps_and_values(client, second.run_id) == history_of(result)
    assert [step for step, _ in history_of(result)] == [1, 2, 3, 4]
    assert client.get_run(second.run_id).info.status == "FINISHED"


def test_a_failed_run_ends_failed_and_its_resume_logs_each_epoch_once(
    tmp_path, dataset, tracking_uri, client
):
    # Checkpoints every 2 epochs: the failure in epoch 3 comes after its metrics were logged,
    # and the resume recomputes epoch 3 from the checkpoint of epoch 2.
    config = run_config(tmp_path / "run", dataset, epochs=4, checkpoint_every=2)
    failing = MLflowCallback(tracking_uri=tracking_uri, experiment="failure")
    with pytest.raises(RuntimeError, match="boom"):
        run_training(config, callbacks=[failing, RaiseAt(3, RuntimeError("boom"))])
    assert client.get_run(failing.run_id).info.status == "FAILED"
    assert [step for step, _ in steps_and_values(client, failing.run_id)] == [1, 2, 3]

    resumed = MLflowCallback(tracking_uri=tracking_uri, experiment="failure")
    result = run_training(config, resume=True, callbacks=[resumed])
    assert resumed.run_id == failing.run_id
    assert client.get_run(resumed.run_id).info.status == "FINISHED"
    # Each step once, and the values logged before the failure are those the resume recomputed.
    assert steps_and_values(client, resumed.run_id) == history_of(result)


def test_an_interrupted_run_ends_killed(tmp_path, dataset, tracking_uri, client):
    callback = MLflowCallback(tracking_uri=tracking_uri, experiment="failure")
    with pytest.raises(KeyboardInterrupt):
        run_training(
            run_config(tmp_path / "run", dataset, epochs=2),
            callbacks=[callback, RaiseAt(1, KeyboardInterrupt())],
        )
    assert client.get_run(callback.run_id).info.status == "KILLED"


@pytest.mark.parametrize(("code", "status"), [(0, "KILLED"), (None, "KILLED"), (3, "FAILED")])
def test_a_run_that_exits_cleanly_was_stopped_and_one_that_exits_with_an_error_failed(
    tmp_path, dataset, tracking_uri, client, code, status
):
    # Ray Tune stops a trial that ASHA ends early by sys.exit(0) in the trial's thread.
    callback = MLflowCallback(tracking_uri=tracking_uri, experiment="stopped")
    with pytest.raises(SystemExit):
        run_training(
            run_config(tmp_path / "run", dataset, epochs=2),
            callbacks=[callback, RaiseAt(1, SystemExit(code))],
        )
    assert client.get_run(callback.run_id).info.status == status


def test_registered_model_loads_as_pyfunc_and_predicts(
    tmp_path, dataset, tracking_uri, client, monkeypatch, fresh_python
):
    config = run_config(tmp_path / "run", dataset, epochs=2)
    callback = MLflowCallback(
        tracking_uri=tracking_uri, experiment="registry", register_as="poly-model"
    )
    result = run_training(config, callbacks=[callback])

    (version,) = client.search_model_versions("name = 'poly-model'")
    assert str(version.version) == "1"  # an int from the SQL store, despite its str annotation
    assert version.run_id == callback.run_id
    run = client.get_run(callback.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["multivae.registered_model"] == "poly-model"
    assert run.data.tags["multivae.registered_version"] == "1"

    # The logged model (MLflow 3's LoggedModel) comes from the run and is an output of it: the
    # run's Models column.
    model_id = version.tags[MODEL_ID_TAG]
    logged = client.get_logged_model(model_id)
    assert logged.source_run_id == callback.run_id
    assert logged.experiment_id == run.info.experiment_id
    assert [output.model_id for output in run.outputs.model_outputs] == [model_id]
    assert json.loads(logged.tags["mlflow.modelVersions"]) == [
        {"name": "poly-model", "version": "1"}
    ]
    # Its signature: every modality an optional input, every generated one an output tensor.
    from mlflow.models import Model

    source = client.get_model_version_download_uri("poly-model", "1")
    mlmodel = Model.load(source.removeprefix("file://"))
    assert mlmodel.model_id == model_id and mlmodel.run_id == callback.run_id
    signature = mlmodel.signature
    inputs = signature.inputs.to_dict()
    assert [(c["name"], c["type"], c["required"]) for c in inputs] == [
        ("view0", "any", False),
        ("view1", "any", False),
    ]
    outputs = signature.outputs.to_dict()
    assert [(t["name"], t["tensor-spec"]) for t in outputs] == [
        ("view0", {"dtype": "float32", "shape": (-1, 8)}),
        ("view1", {"dtype": "float32", "shape": (-1, 8)}),
    ]
    (gen,) = signature.params.params
    assert (gen.name, gen.default) == ("gen", ["view0", "view1"])
    assert mlmodel.metadata["multivae"]["modalities"]["view0"] == {
        "shape": [8],
        "dtype": "float32",
        "likelihood": "normal",
    }

    assert register_model(tracking_uri, callback.run_id, "poly-model") == "2"  # from artifacts
    assert len(client.search_model_versions("name = 'poly-model'")) == 2
    assert client.get_run(callback.run_id).data.tags["multivae.registered_version"] == "2"

    files = {
        path.relative_to(source.removeprefix("file://")).as_posix()
        for path in Path(source.removeprefix("file://")).rglob("*")
        if path.is_file()
    }
    assert {"MLmodel", "mlflow_pyfunc.py", "artifacts/model/model.safetensors"} <= files
    assert not [path for path in files if path.endswith((".pkl", ".pickle"))]  # no pickle

    # Imported here: importing mlflow.pyfunc warns (filtered above for the tests only).
    import mlflow.pyfunc
    import pandas as pd

    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    pyfunc = mlflow.pyfunc.load_model("models:/poly-model/1")
    test = MultimodalDataset(dataset, "test").__getitems__(range(10))
    observed = {"view0": test.data["view0"]}
    saved = multivae.load_model(result.model_dir)
    torch.manual_seed(0)
    generated = pyfunc.predict(observed)
    torch.manual_seed(0)
    expected = saved.predict(test.to_batch(), cond=["view0"])
    assert generated.keys() == {"view0", "view1"}
    for name, values in generated.items():
        assert isinstance(values, np.ndarray)
        assert values.shape == (10, 8)
        np.testing.assert_array_equal(values, expected[name].numpy())
    only = pyfunc.predict(
        pd.DataFrame({"view1": list(test.data["view1"])}), params={"gen": ["view0"]}
    )
    assert only.keys() == {"view0"}
    assert only["view0"].shape == (10, 8)

    # The model carries the project's code and asks the index only for dependencies: never
    # for "multivae", which on the index is another project.
    requirements = (Path(source.removeprefix("file://")) / "requirements.txt").read_text()
    assert not [r for r in requirements.split() if r.split("=")[0].split(">")[0] == "multivae"]
    assert "code/multivae/models/mopoe.py" in files
    assert not [path for path in files if "__pycache__" in path]

    # A fresh interpreter where multivae is not installed loads it from the model's own code.
    fresh = fresh_python()
    np.save(tmp_path / "view0.npy", np.asarray(test.data["view0"]))
    script = f"""
import importlib.util, json, sys
assert importlib.util.find_spec("multivae") is None, "multivae is importable before loading"
import mlflow.pyfunc, numpy as np, torch
model = mlflow.pyfunc.load_model("models:/poly-model/1")
import multivae
torch.manual_seed(0)
out = model.predict({{"view0": np.load({str(tmp_path / "view0.npy")!r})}})
np.save({str(tmp_path / "fresh-view1.npy")!r}, out["view1"])
print(json.dumps({{"multivae": multivae.__file__}}))
"""
    cwd = tmp_path / "fresh-cwd"
    cwd.mkdir()
    done = subprocess.run(
        [str(fresh), "-I", "-c", script],
        cwd=cwd,
        env={**os.environ, "MLFLOW_TRACKING_URI": tracking_uri},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    loaded_from = json.loads(done.stdout.strip().splitlines()[-1])["multivae"]
    assert "/code/multivae/" in loaded_from, loaded_from
    assert not loaded_from.startswith(str(Path(multivae.__file__).parent))
    np.testing.assert_array_equal(np.load(tmp_path / "fresh-view1.npy"), expected["view1"].numpy())


def test_fingerprint_follows_the_data_not_the_folder(tmp_path, dataset):
    fingerprint = dataset_fingerprint(dataset)
    assert len(fingerprint) == 16
    int(fingerprint, 16)
    copy = shutil.copytree(dataset, tmp_path / "copy")
    assert dataset_fingerprint(copy) == fingerprint

    train = MultimodalDataset(copy, "train")
    block = train.__getitems__(range(len(train)))
    arrays = SplitArrays(block.data, block.present, block.labels, block.sample_ids)
    write_split(copy, "train", train.schema, arrays)
    rewritten = dataset_fingerprint(copy)
    write_split(copy, "train", train.schema, arrays)
    assert dataset_fingerprint(copy) == rewritten
    row = int(np.flatnonzero(arrays.present["view0"])[0])
    arrays.data["view0"][row, 3] += 1.0
    write_split(copy, "train", train.schema, arrays)
    assert dataset_fingerprint(copy) != rewritten
    assert dataset_fingerprint(dataset) == fingerprint


def test_fingerprint_of_large_files_samples_their_content(tmp_path):
    """Past 256 KiB a file is hashed by its footer and sampled blocks (this one: 1 MiB)."""
    split = tmp_path / "big" / "train"
    split.mkdir(parents=True)
    body = bytearray(np.random.default_rng(0).bytes(2**20))

    def write(footer=b"footer"):
        tail = footer + len(footer).to_bytes(4, "little") + b"PAR1"
        (split / "part-00000.parquet").write_bytes(b"PAR1" + bytes(body) + tail)
        return dataset_fingerprint(tmp_path / "big")

    first = write()
    assert write() == first
    assert write(footer=b"footer, other statistics") != first
    body[0] ^= 1  # in the first sampled block
    assert write() != first
    (split / "part-00000.parquet").write_bytes(b"no footer")
    with pytest.raises(DataFormatError, match="not a Parquet file"):
        dataset_fingerprint(tmp_path / "big")


def test_flatten_config_gives_dotted_keys_and_compact_values(tracking_uri, client):
    nested = {
        "model": "mvae",
        "training": {
            "epochs": 3,
            "optimizer": {"name": "Adam", "kwargs": {"lr": 0.001}},
            "scheduler": None,
            "progress_bar": False,
        },
        "model_config": {"hidden": [64, 32], "modalities": {}},
        "tags": ["a", "b"],
    }
    assert flatten_config(nested) == {
        "model": "mvae",
        "training.epochs": "3",
        "training.optimizer.name": "Adam",
        "training.optimizer.kwargs.lr": "0.001",
        "training.scheduler": "null",
        "training.progress_bar": "false",
        "model_config.hidden": "[64,32]",
        "model_config.modalities": "{}",
        "tags": '["a","b"]',
    }

    fits, long = "x" * MAX_PARAM_VAL_LENGTH, "y" * (MAX_PARAM_VAL_LENGTH + 1)
    flat = flatten_config({"a": {"fits": fits, "long": long}})
    assert flat["a.fits"] == fits
    assert len(flat["a.long"]) == MAX_PARAM_VAL_LENGTH
    assert flat["a.long"] == long[: MAX_PARAM_VAL_LENGTH - len(TRUNCATED)] + TRUNCATED
    # Logging it is accepted by the store.
    run_id = start_parent_run(tracking_uri, "params", None, params={"a": {"long": long}})
    assert client.get_run(run_id).data.params == {"a.long": flat["a.long"]}


def test_run_tags_name_the_git_commit_when_there_is_one(tmp_path, dataset, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not the working_dir fixture's folder: git init writes there
    tags = run_tags("mvae")
    assert tags == {"multivae.model": "mvae", "multivae.version": metadata.version(DISTRIBUTION)}
    if shutil.which("git") is None:
        pytest.skip("no git executable")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "start"], check=True)
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    tags = run_tags("mvae", dataset)
    assert tags["mlflow.source.git.commit"] == head
    assert tags["multivae.dataset_fingerprint"] == dataset_fingerprint(dataset)


def test_default_tracking_uri(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = default_tracking_uri(tmp_path / "out")
    assert uri == f"sqlite:///{(tmp_path / 'out').resolve()}/mlflow.db"
    assert (tmp_path / "out").is_dir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking:5000")
    assert default_tracking_uri(tmp_path / "elsewhere") == "http://tracking:5000"


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_health(url, server, seconds=180):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {server.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"mlflow server at {url} did not answer within {seconds} s")


@pytest.mark.integration
def test_a_run_reaches_an_mlflow_server_over_http(tmp_path, dataset):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    artifacts = tmp_path / "server-artifacts"
    log = open(tmp_path / "server.log", "wb")  # noqa: SIM115 (closed in finally)
    server = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "mlflow"),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{tmp_path / 'server.db'}",
            "--artifacts-destination",
            str(artifacts),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")},
    )
    try:
        wait_for_health(url, server)
        callback = MLflowCallback(tracking_uri=url, experiment="remote", config={"k": 1})
        result = run_training(run_config(tmp_path / "run", dataset), callbacks=[callback])

        client = MlflowClient(url)
        run = client.get_run(callback.run_id)
        assert run.info.status == "FINISHED"
        assert run.data.params == {"k": "1"}
        assert steps_and_values(client, callback.run_id) == history_of(result)
        assert {"model/model.safetensors", "run.yaml"} <= artifact_paths(client, callback.run_id)
        # The artifacts went through the server into its destination folder.
        assert list(artifacts.rglob("model.safetensors"))
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()
