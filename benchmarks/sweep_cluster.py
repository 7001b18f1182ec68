r"""A sweep whose trials are Ray Train runs, on a multi-node Ray cluster started on this machine.

Starts a head node and worker nodes with ``ray start`` (each its own raylet and session folder,
token authentication as Ray 2.60 enables it), runs ``multivae tune --sweep FILE --set
train_workers=N ...`` against it (``RAY_ADDRESS``), stops the cluster, and reports:

* the sweep's wall time (the ``multivae tune`` command, from start to exit);
* per trial: its time in Tune (``time_total_s`` at its last report), the training epochs it ran
  and the time they took (the sum of the reported ``epoch_time``), and the difference, the
  trial's overhead: starting its Ray Train worker group, datasets and DDP, checkpoint reports,
  the time it waited to report.

Usage::

    python benchmarks/sweep_cluster.py --sweep examples/sweep-poly-digits.yaml \
        --set train_workers=2 num_samples=4 --out benchmarks/results/sweep_cluster.json

Not part of CI (minutes of training); ``tests/integrations/test_ray_job.py`` runs a small sweep
of this kind on a three-node cluster.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent


def free_port() -> int:
    """A TCP port nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def ray_cli(*args: str, env: dict[str, str]) -> None:
    """Run the ``ray`` command of this interpreter's environment; fail loudly."""
    done = subprocess.run([str(BIN / "ray"), *args], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"ray {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")


def start_cluster(
    root: Path, head_cpus: int, worker_nodes: int, worker_cpus: int
) -> tuple[dict[str, str], str]:
    """Start the cluster; returns the environment that reaches it and its GCS address."""
    env = {**os.environ, "HOME": str(root / "home"), "RAY_AUTH_MODE": "token"}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.pop("RAY_ADDRESS", None)
    ray_cli("get-auth-token", "--generate", env=env)
    port = free_port()
    ray_cli(
        "start",
        "--head",
        f"--port={port}",
        f"--num-cpus={head_cpus}",
        # The dashboard serves the state API, which Ray Train's placement group cleaner needs.
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={free_port()}",
        "--disable-usage-stats",
        env=env,
    )
    for index in range(worker_nodes):
        # Each node its own session folder, as on separate machines.
        folder = tempfile.mkdtemp(prefix=f"node{index}-", dir=root)
        ray_cli(
            "start",
            f"--address=127.0.0.1:{port}",
            f"--num-cpus={worker_cpus}",
            f"--temp-dir={folder}",
            "--disable-usage-stats",
            env=env,
        )
    return env, f"127.0.0.1:{port}"


def tune_results(output_dir: Path) -> list[dict[str, Any]]:
    """Per trial, from Tune's ``result.json`` files: reports, time in Tune, epoch times."""
    best = json.loads((output_dir / "best.json").read_text())
    status = {trial["trial_id"]: trial for trial in best["trials"]}
    rows = []
    for path in sorted((output_dir / "tune").glob("*/result.json")):
        reports = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        # The final report of a Train run repeats its last epoch's record (with run_finished).
        epochs = [r for r in reports if "epoch_time" in r and not r.get("run_finished")]
        if not reports:
            continue
        trial_id = str(reports[-1].get("trial_id", ""))
        in_tune = float(reports[-1]["time_total_s"])
        training = sum(float(r["epoch_time"]) for r in epochs)
        rows.append(
            {
                "trial_id": trial_id,
                "finished": bool(status.get(trial_id, {}).get("finished")),
                "error": status.get(trial_id, {}).get("error"),
                "epochs": len(epochs),
                "seconds_in_tune": round(in_tune, 1),
                "seconds_training": round(training, 1),
                "overhead_seconds": round(in_tune - training, 1),
                "model": reports[-1].get("config", {}).get("model"),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    """Start the cluster, run the sweep, stop the cluster, write the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sweep", default="examples/sweep-poly-digits.yaml")
    parser.add_argument("--set", nargs="*", default=["train_workers=2"], dest="overrides")
    parser.add_argument("--head-cpus", type=int, default=1)
    parser.add_argument("--worker-nodes", type=int, default=2)
    parser.add_argument("--worker-cpus", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/results/sweep_cluster.json")
    args = parser.parse_args(argv)

    root = Path(tempfile.mkdtemp(prefix="sweep-cluster-", dir="/tmp"))
    output_dir = root / "sweep"
    env, address = start_cluster(root, args.head_cpus, args.worker_nodes, args.worker_cpus)
    try:
        command = [str(BIN / "multivae"), "tune", "--sweep", args.sweep]
        for entry in [*args.overrides, f"output_dir={output_dir}"]:
            command += ["--set", entry]
        began = time.monotonic()
        done = subprocess.run(
            command, env={**env, "RAY_ADDRESS": address}, capture_output=True, text=True
        )
        wall = time.monotonic() - began
    finally:
        ray_cli("stop", "--force", env=env)
    (root / "tune.log").write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        print(done.stdout[-5000:], done.stderr[-5000:], sep="\n", file=sys.stderr)
        print(f"the sweep failed; log kept in {root / 'tune.log'}", file=sys.stderr)
        return 1
    plan = next((line for line in done.stdout.splitlines() if line.startswith("sweep: ")), "")
    trials = tune_results(output_dir)
    overheads = [t["overhead_seconds"] for t in trials]
    document = {
        "command": "python benchmarks/sweep_cluster.py " + " ".join(argv or sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"),
        "cpus": os.cpu_count(),
        "cluster": {
            "head_cpus": args.head_cpus,
            "worker_nodes": args.worker_nodes,
            "worker_cpus": args.worker_cpus,
        },
        "sweep": args.sweep,
        "overrides": args.overrides,
        "plan": plan,
        "wall_seconds": round(wall, 1),
        "trials": trials,
        "median_overhead_seconds": sorted(overheads)[len(overheads) // 2] if overheads else None,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(document, indent=2) + "\n")
    shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(document, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
