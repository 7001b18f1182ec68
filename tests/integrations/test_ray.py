"""Ray Train and Ray Tune on a real local Ray cluster, tracked in a real MLflow store."""

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import torch
from mlflow.tracking import MlflowClient

import multivae
from multivae.config import ConfigError
from multivae.data import MultimodalDataset
from multivae.data.datasets import prepare_builtin
from multivae.integrations.tune import load_sweep, run_sweep
from multivae.models.base import MultimodalVAE
from multivae.names import MLFLOW_RUN_FILE
from multivae.run import run_training
from multivae.run_config import RunConfig
from multivae.training.loop import Callback

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    # Three logical CPUs on two cores: two training workers and one for Ray Data's reads.
    ray.init(num_cpus=3, include_dashboard=False)
    # Workers cannot import this test module: ship its callback class by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield ray
    ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    ray.shutdown()


@pytest.fixture(scope="module")
def poly(tmp_path_factory):
    return prepare_builtin(
        "poly-digits",
        tmp_path_factory.mktemp("ray") / "poly",
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


def test_two_workers_train_mopoe_on_incomplete_data(ray_cluster, poly, tmp_path):
    out = tmp_path / "run"
    result = run_training(ray_run(poly, out, epochs=3))

    losses = [record["train_loss"] for record in result.history]
    assert [record["epoch"] for record in result.history] == [1, 2, 3]
    assert losses[-1] < losses[0]
    model = MultimodalVAE.from_pretrained(out / "model")
    assert model.name == "mopoe"
    # The saved weights are the rank-0 replica's, which DDP keeps equal to every other rank's.
    test = MultimodalDataset(poly, "test").read_all()
    torch.manual_seed(0)
    assert model.predict(test, cond=["m0"], gen=["m1"])["m1"].shape == (64, 3, 28, 28)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs_run"] == 3
    # Rank 0 alone logs: one MLflow run, one value per epoch.
    _, runs, history = mlflow_history(out, "train_loss")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert [step for step, _ in history] == [1, 2, 3]
    assert [value for _, value in history] == pytest.approx(losses)


class EpochLog(Callback):
    """Appends ``<pid> <epoch>`` per epoch to a file (runs on the rank-0 worker)."""

    def __init__(self, path):
        self.path = str(path)

    def on_epoch_end(self, epoch, metrics):
        with open(self.path, "a") as log:
            log.write(f"{os.getpid()} {epoch}\n")
        return False


def read_log(path):
    if not path.exists():
        return []
    return [tuple(map(int, line.split())) for line in path.read_text().splitlines()]


def test_a_killed_worker_is_replaced_and_the_run_resumes_from_its_checkpoint(
    ray_cluster, poly, tmp_path
):
    out, log = tmp_path / "run", tmp_path / "epochs.log"
    killed = []

    def kill_rank_zero_after_epoch_two():
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            entries = read_log(log)
            if any(epoch >= 2 for _, epoch in entries):
                pid = entries[-1][0]
                assert "RayTrainWorker" in " ".join(psutil.Process(pid).cmdline())
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
            time.sleep(0.2)

    killer = threading.Thread(target=kill_rank_zero_after_epoch_two, daemon=True)
    killer.start()
    result = run_training(ray_run(poly, out, epochs=6), callbacks=[EpochLog(log)])
    killer.join()

    assert killed, "the worker was never killed"
    entries = read_log(log)
    first = [epoch for pid, epoch in entries if pid == killed[0]]
    later = [epoch for pid, epoch in entries if pid != killed[0]]
    assert first[0] == 1 and later, entries
    # The replacement resumed from the last checkpoint (every epoch writes one), not from the
    # start: it begins right after an epoch the killed worker finished.
    assert 2 <= later[0] <= first[-1] + 1, entries
    assert later == list(range(later[0], 7)), entries
    # Nothing lost, nothing counted twice: one history entry per epoch, six epochs in all.
    assert result.epochs_run == 6
    assert [record["epoch"] for record in result.history] == [1, 2, 3, 4, 5, 6]
    multivae.load_model(out / "model")
    # The replacement worker continued the same MLflow run, each epoch logged once.
    _, runs, history = mlflow_history(out, "train_loss")
    assert len(runs) == 1
    assert [step for step, _ in history] == [1, 2, 3, 4, 5, 6]


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
    assert set(statuses) <= {"FINISHED", "KILLED"}
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
    with pytest.raises(ConfigError, match=r"a trial needs 4 CPUs .* the Ray cluster has 3"):
        run_sweep(sweep, base)
    assert not (tmp_path / "sweep").exists()  # no output folder, no MLflow run, no trial
    assert ray_cluster.is_initialized()  # the caller's cluster is left as it was
    assert ray_cluster.available_resources().get("CPU") == 3.0
