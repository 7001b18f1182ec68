"""``ray job submit`` of a sweep to a ``ray start --head`` cluster with token authentication."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
SWEEP = """
run:
  model: mvae
  builtin: {{name: gaussian-views, missing_rate: 0.3, seed: 0,
            params: {{n_train: 200, n_val: 50, n_test: 50}}}}
  model_config: {{latent_dim: 2}}
  training: {{epochs: 2, batch_size: 64, progress_bar: false}}
  output_dir: unused
output_dir: {output_dir}
num_samples: 2
max_concurrent_trials: 2
scheduler: null
space:
  model_config.beta: {{uniform: [0.5, 1.5]}}
"""


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def ray(*args, env, timeout=300, check=True):
    return subprocess.run(
        [str(BIN / "ray"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=check,
    )


@pytest.fixture
def head_node(tmp_path):
    env = {
        **os.environ,
        # The token lands in ~/.ray/auth_token: keep it inside the test's folder.
        "HOME": str(tmp_path / "home"),
        "RAY_AUTH_MODE": "token",
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "MULTIVAE_CACHE": str(tmp_path / "cache"),
    }
    env.pop("RAY_ADDRESS", None)
    ray("get-auth-token", "--generate", env=env)
    dashboard = free_port()
    ray(
        "start",
        "--head",
        f"--port={free_port()}",
        f"--dashboard-port={dashboard}",
        "--dashboard-host=127.0.0.1",
        "--num-cpus=3",
        "--disable-usage-stats",
        env=env,
    )
    try:
        yield env, f"http://127.0.0.1:{dashboard}"
    finally:
        ray("stop", "--force", env=env, check=False)


def test_a_sweep_submitted_as_a_ray_job_succeeds_and_lands_in_mlflow(head_node, tmp_path):
    env, address = head_node
    workdir = tmp_path / "job"
    workdir.mkdir()
    output_dir = tmp_path / "sweep"
    (workdir / "sweep.yaml").write_text(SWEEP.format(output_dir=output_dir))

    # Without the token the cluster refuses the submission.
    anonymous = {**env, "HOME": str(tmp_path / "stranger")}
    refused = ray(
        "job", "submit", f"--address={address}", "--", "echo", "hi", env=anonymous, check=False
    )
    assert refused.returncode != 0

    submitted = ray(
        "job",
        "submit",
        f"--address={address}",
        f"--working-dir={workdir}",
        "--",
        "multivae",
        "tune",
        "--sweep",
        "sweep.yaml",
        env=env,
        timeout=500,
        check=False,
    )
    assert submitted.returncode == 0, submitted.stdout[-3000:] + submitted.stderr[-3000:]
    assert "succeeded" in submitted.stdout.lower()
    assert "best trial:" in submitted.stdout

    best = json.loads((output_dir / "best.json").read_text())
    client = MlflowClient(f"sqlite:///{output_dir / 'mlflow.db'}")
    parent = client.get_run(best["mlflow_parent_run_id"])
    assert parent.info.status == "FINISHED"
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
    )
    assert len(children) == 2
    assert all(child.info.status == "FINISHED" for child in children)
    assert all("val_loss" in child.data.metrics for child in children)
