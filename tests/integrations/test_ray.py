"""Ray Tune (and Ray Train's failure bounds) on a real local Ray instance, tracked in MLflow.

Training on several nodes, and a node killed mid-run, are in ``test_ray_cluster.py``.
"""

import json
import sys
import time
from pathlib import Path

import pytest
from kit.data import builtin
from mlflow.tracking import MlflowClient

import multivae
from multivae.config import ConfigError
from multivae.data.datasets import prepare_builtin
from multivae.integrations.sweep_file import load_sweep
from multivae.integrations.tune import run_sweep
from multivae.names import MLFLOW_RUN_FILE
from multivae.run import run_training
from multivae.run_config import RunConfig

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    # Three logical CPUs on two cores: two training workers and one for Ray Data's reads.
    ray.init(address="local", num_cpus=3, include_dashboard=False)
    # Workers cannot import this test module: ship its callback class by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield ray
    ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    ray.shutdown()


@pytest.fixture(scope="module")
def poly(kit_folder):
    return builtin(
        kit_folder,
        "poly-digits",
        missing_rate=0.5,
        seed=0,
        n_train=256,
        n_val=64,
        n_test=64,
    )


def ray_run(poly, output_dir, epochs, **training):
    return RunConfig.from_dict(
        {
            "model": "mopoe",
            "data": str(poly),
            "output_dir": str(output_dir),
            "model_config": {"latent_dim": 8},
            "training": {"epochs": epochs, "batch_size": 32, "progress_bar": False, **training},
            "ray": {"num_workers": 2, "max_failures": 2},
        }
    )


def mlflow_history(output_dir, metric):
    stored = json.loads((Path(output_dir) / MLFLOW_RUN_FILE).read_text())
    client = MlflowClient(stored["tracking_uri"])
    runs = client.search_runs([stored["experiment_id"]])
    return (
        client,
        runs,
        [(m.step, m.value) for m in client.get_metric_history(stored["run_id"], metric)],
    )


SWEEP = """
run:
  model: mopoe
  builtin: {{name: gaussian-views, missing_rate: 0.3, seed: 0,
            params: {{n_train: 300, n_val: 100, n_test: 100}}}}
  model_config: {{latent_dim: 4}}
  training: {{epochs: 4, batch_size: 64, progress_bar: false}}
  output_dir: unused
output_dir: {output_dir}
num_samples: 6
max_concurrent_trials: 2
seed: 0
scheduler: {{grace_period: 1, reduction_factor: 2}}
space:
  model: {{choice: [mvae, mopoe]}}
  model_config.latent_dim: {{choice: [2, 4]}}
  training.optimizer.kwargs.lr: {{loguniform: [1.0e-4, 1.0e-2]}}
"""


def test_optuna_sweep_with_asha_reports_the_best_trial_and_nests_mlflow_runs(ray_cluster, tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text(SWEEP.format(output_dir=tmp_path / "sweep"))
    sweep, base = load_sweep(path)
    result = run_sweep(sweep, base)

    assert len(result.trials) == 6
    finished = [t for t in result.trials if t["finished"]]
    # The best is the finished trial with the lowest final val_loss.
    assert result.best_trial == min(finished, key=lambda t: t["val_loss"])["trial_id"]
    best = json.loads((tmp_path / "sweep" / "best.json").read_text())
    assert best["trial_id"] == result.best_trial
    assert best["value"] == result.best_metrics["val_loss"]
    model = multivae.load_model(result.best_dir / "model")
    assert model.name == best["params"]["model"]
    assert model.config.latent_dim == best["params"]["model_config.latent_dim"]
    # ASHA stopped some trials before their 4th epoch (reduction factor 2, grace period 1).
    assert any(t["epochs"] < 4 for t in result.trials)

    client = MlflowClient(f"sqlite:///{tmp_path / 'sweep' / 'mlflow.db'}")
    parent = client.get_run(result.parent_run_id)
    assert parent.info.status == "FINISHED"
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{result.parent_run_id}'",
    )
    assert len(children) == 6
    statuses = sorted(run.info.status for run in children)
    assert statuses.count("FINISHED") == len(finished)
    assert set(statuses) <= {"FINISHED", "KILLED"}, result.trials
    for child in children:
        history = client.get_metric_history(child.info.run_id, "val_loss")
        assert [m.step for m in history] == list(range(1, len(history) + 1))
        assert history


def test_a_sweep_that_cannot_fit_the_cluster_is_refused_before_any_trial(ray_cluster, tmp_path):
    path = tmp_path / "sweep.yaml"
    # Each trial: its driver (1 CPU), 2 Train workers of 1 CPU and 1 CPU of headroom for its
    # dataset's reads: 4 CPUs, on a cluster of 3.
    path.write_text(SWEEP.format(output_dir=tmp_path / "sweep") + "train_workers: 2\n")
    sweep, base = load_sweep(path)
    with pytest.raises(ConfigError, match=r"a trial needs 3.25 CPU .* the Ray cluster has 3\."):
        run_sweep(sweep, base)
    assert not (tmp_path / "sweep").exists()  # no output folder, no MLflow run, no trial
    assert ray_cluster.is_initialized()  # the caller's cluster is left as it was
    assert ray_cluster.available_resources().get("CPU") == 3.0


FAILING_SWEEP = """
run:
  model: mvae
  data: views    # relative to the working directory, not to the trials' own
  model_config: {{latent_dim: 2}}
  training: {{epochs: 2, batch_size: 50, progress_bar: false}}
  output_dir: unused
output_dir: sweep
num_samples: 4
max_concurrent_trials: 2
seed: 1
scheduler: null
space:
  # A learning rate of 1e12 sends the weights to infinity: that trial's loss is NaN and its run
  # fails (FloatingPointError) in its first epoch.
  training.optimizer.kwargs.lr: {{choice: [1.0e-3, 1.0e+12]}}
"""


def test_a_failed_trial_does_not_end_the_sweep_and_the_best_finished_one_is_exported(
    ray_cluster, tmp_path, monkeypatch
):
    # The sweep names its dataset and its output by paths relative to the working directory;
    # the trials run in Tune's own working directories, where those paths would find nothing.
    monkeypatch.chdir(tmp_path)
    params = {"n_train": 200, "n_val": 50, "n_test": 50}
    prepare_builtin("gaussian-views", "views", missing_rate=0.3, seed=0, **params)
    (tmp_path / "sweeps").mkdir()
    path = tmp_path / "sweeps" / "sweep.yaml"
    path.write_text(FAILING_SWEEP.format())
    sweep, base = load_sweep(path)
    assert base["data"] == str(tmp_path / "views") and sweep.output_dir == str(tmp_path / "sweep")
    monkeypatch.chdir(tmp_path / "sweeps")  # resolved once: moving away changes nothing
    result = run_sweep(sweep, base)

    failed = [t for t in result.trials if t["error"] is not None]
    finished = [t for t in result.trials if t["finished"]]
    assert len(result.trials) == 4 and failed and finished, result.trials
    assert len(failed) + len(finished) == 4
    assert all(t["params"]["training.optimizer.kwargs.lr"] == 1e12 for t in failed)
    assert all(
        t["error"].startswith("FloatingPointError: mvae: training loss is nan in epoch 1")
        for t in failed
    ), failed
    assert all(t["params"]["training.optimizer.kwargs.lr"] == 1e-3 for t in finished)
    assert result.best_trial == min(finished, key=lambda t: t["val_loss"])["trial_id"]
    assert multivae.load_model(result.best_dir / "model").name == "mvae"
    best = json.loads((tmp_path / "sweep" / "best.json").read_text())
    assert best["trial_id"] == result.best_trial
    # The failed trials' MLflow runs say so; the sweep's parent run finished.
    client = MlflowClient(f"sqlite:///{tmp_path / 'sweep' / 'mlflow.db'}")
    assert client.get_run(result.parent_run_id).info.status == "FINISHED"
    children = client.search_runs(
        [client.get_run(result.parent_run_id).info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{result.parent_run_id}'",
    )
    assert sorted(run.info.status for run in children) == sorted(
        ["FAILED"] * len(failed) + ["FINISHED"] * len(finished)
    )


def test_a_run_whose_workers_find_no_room_fails_in_bounded_time_with_what_it_needed(
    ray_cluster, tmp_path
):
    data = prepare_builtin(
        "gaussian-views", tmp_path / "data", missing_rate=0.3, n_train=100, n_val=20, n_test=20
    )

    @ray_cluster.remote(num_cpus=2)
    class Holder:
        def ready(self):
            return True

    holder = Holder.remote()  # another job's actor holds 2 of the cluster's 3 CPUs
    ray_cluster.get(holder.ready.remote())
    config = RunConfig.from_dict(
        {
            "model": "mvae",
            "data": str(data),
            "output_dir": str(tmp_path / "run"),
            "model_config": {"latent_dim": 2},
            "training": {"epochs": 1, "progress_bar": False},
            "mlflow": {"enabled": False},
            "ray": {"num_workers": 2, "worker_start_timeout_s": 2, "controller_failure_limit": 1},
        }
    )
    began = time.monotonic()
    try:
        with pytest.raises(RuntimeError) as raised:
            run_training(config)
    finally:
        ray_cluster.kill(holder)
    assert time.monotonic() - began < 120
    message = str(raised.value)
    assert "its 2 workers (each {'CPU': 1.0}) could not start: 2 attempt(s) of 2 s" in message
    assert "ray.worker_start_timeout_s" in message


def test_asha_over_train_trials_without_the_state_api_is_refused_rather_than_left_to_hang(
    ray_cluster, tmp_path
):
    # This cluster runs without the dashboard, so without Ray's state API, through which Ray
    # Train frees the workers of a trial that ASHA stops.
    path = tmp_path / "sweep.yaml"
    path.write_text(SWEEP.format(output_dir=tmp_path / "sweep") + "train_workers: 1\n")
    sweep, base = load_sweep(path)
    with pytest.raises(ConfigError, match=r"state API.*dashboard.*or set scheduler: null"):
        run_sweep(sweep, base)
    assert not (tmp_path / "sweep").exists()
