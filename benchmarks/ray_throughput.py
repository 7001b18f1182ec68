"""Ray Train against the local loop: samples/s, overhead, and peak memory per Ray worker.

For each dataset size, the same run (MoPoE on poly-digits with half of modalities m1-m4
missing, default convolutional architectures, batch 64 per worker, MLflow off) trains:

* ``local``: ``run_training`` in one process (the library's loop over ``make_dataloader``);
* ``ray xN``: ``run_training`` with ``ray.num_workers = N`` (Ray Train workers running the same
  loop, data streamed from the Parquet files by Ray Data and split evenly across workers).

An epoch's time is the ``epoch_time`` the loop records (training and validation); a run's rate
is its training samples per epoch over its median epoch time after the first epoch (which holds
Ray Data's first read and, for the local loop, validation of every row group). While a Ray run
trains, the resident memory of every Ray Train worker process is sampled every 100 ms; the
table gives the highest single worker. Every run is a fresh subprocess (a fresh Ray instance).

Usage::

    python benchmarks/ray_throughput.py --samples 4000 16000 --epochs 4
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any


def measure(data: str, workers: int, epochs: int, batch_size: int, cpus: float) -> dict[str, Any]:
    """One run in this process; returns its rates and the peak RSS and USS of its Ray workers.

    USS (memory only this process holds) leaves out the pages of Ray's shared object store that
    a worker maps while reading blocks, which RSS counts.
    """
    import psutil

    from multivae.run import run_training
    from multivae.run_config import RunConfig

    peak = {"rss": 0, "uss": 0}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            for process in psutil.process_iter(["cmdline", "memory_info"]):
                cmdline = " ".join(process.info["cmdline"] or [])
                if "RayTrainWorker" in cmdline and process.info["memory_info"] is not None:
                    peak["rss"] = max(peak["rss"], process.info["memory_info"].rss)
                    with contextlib.suppress(psutil.Error):
                        peak["uss"] = max(peak["uss"], process.memory_full_info().uss)
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    with tempfile.TemporaryDirectory() as output:
        raw: dict[str, Any] = {
            "model": "mopoe",
            "data": data,
            "output_dir": output,
            "model_config": {"latent_dim": 16},
            "training": {"epochs": epochs, "batch_size": batch_size, "progress_bar": False},
            "mlflow": {"enabled": False},
        }
        if workers:
            raw["ray"] = {"num_workers": workers, "cpus_per_worker": cpus}
        result = run_training(RunConfig.from_dict(raw))
    done.set()
    sampler.join()
    times = [float(record["epoch_time"]) for record in result.history[1:]]
    return {
        "epoch_time": statistics.median(times),
        "peak_worker_rss": peak["rss"] / 2**20,
        "peak_worker_uss": peak["uss"] / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="/tmp/multivae-bench-ray")
    parser.add_argument("--samples", type=int, nargs="+", default=[4000])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--cpus-per-worker",
        type=float,
        default=1.0,
        help="Ray reserves these per worker and sets its torch threads (OMP_NUM_THREADS) to them",
    )
    parser.add_argument("--child", nargs=2, metavar=("DATA", "WORKERS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = measure(
            args.child[0], int(args.child[1]), args.epochs, args.batch_size, args.cpus_per_worker
        )
        print(json.dumps(result))
        return

    from multivae.data.datasets import prepare_builtin

    print(
        "| train samples | data on disk | path | epoch time (s) | samples/s | vs local | "
        "peak RSS per Ray worker (MiB) | peak USS per Ray worker (MiB) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for samples in args.samples:
        root = Path(args.root) / f"poly-{samples}"
        if not (root / "train").exists():
            print(f"generating {samples} samples into {root}", file=sys.stderr)
            prepare_builtin(
                "poly-digits", root, missing_rate=0.5, n_train=samples, n_val=256, n_test=16
            )
        size = sum(p.stat().st_size for p in (root / "train").glob("*.parquet")) / 2**20
        local_time = None
        for workers in args.workers:
            command = [
                sys.executable,
                __file__,
                "--child",
                str(root),
                str(workers),
                "--epochs",
                str(args.epochs),
                "--batch-size",
                str(args.batch_size),
                "--cpus-per-worker",
                str(args.cpus_per_worker),
            ]
            print(f"running {samples} samples, workers={workers}", file=sys.stderr)
            output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            result = json.loads(output.strip().splitlines()[-1])
            epoch_time = result["epoch_time"]
            if workers == 0:
                local_time = epoch_time
            ratio = "" if local_time is None else f"{epoch_time / local_time:.2f}x time"
            path = (
                "local loop"
                if workers == 0
                else f"Ray Train x{workers} ({args.cpus_per_worker:g} CPU each)"
            )
            rss = "" if workers == 0 else f"{result['peak_worker_rss']:.0f}"
            uss = "" if workers == 0 else f"{result['peak_worker_uss']:.0f}"
            print(
                f"| {samples} | {size:.0f} MiB | {path} | {epoch_time:.2f} | "
                f"{samples / epoch_time:,.0f} | {ratio} | {rss} | {uss} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
