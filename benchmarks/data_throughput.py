"""Reader + collate throughput and peak memory on poly-digits-shaped data of a given size on disk.

Generates ``poly-digits`` train splits large enough to take the requested gigabytes on disk (five
3x28x28 float32 modalities per sample, half of modalities 1-4 missing), then times shuffled
epochs through ``make_dataloader`` (block shuffle, batches of 256) in a fresh subprocess per
configuration, sampling the proportional set size (PSS) of that process and its DataLoader
workers every 20 ms. PSS counts shared library pages once across processes, so the sum is the
real memory of the reader. Results go to stdout as a Markdown table (paste into RESULTS.md).

Usage::

    python benchmarks/data_throughput.py --sizes-gb 0.5 1.1 2.2 --workers 0 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

BYTES_PER_SAMPLE = 5 * 3 * 28 * 28 * 4


def _pss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as handle:
            for line in handle:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0


def _tree(pid: int) -> list[int]:
    pids = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except FileNotFoundError:
        return pids
    for child in children:
        pids += _tree(int(child))
    return pids


def measure(
    root: str, workers: int, epochs: int, batch_size: int, validate: bool
) -> dict[str, float]:
    """Run in a child process: time ``epochs`` shuffled epochs, track peak PSS of the tree."""
    import torch

    from multivae.data import MultimodalDataset, make_dataloader

    torch.set_num_threads(1)
    peak = [0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], sum(_pss_kib(p) for p in _tree(os.getpid())))
            time.sleep(0.02)

    baseline = _pss_kib(os.getpid())
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    dataset = MultimodalDataset(root, "train", validate=validate)
    loader = make_dataloader(dataset, batch_size, shuffle=True, num_workers=workers)
    seen = 0
    start = time.perf_counter()
    for epoch in range(epochs):
        loader.sampler.set_epoch(epoch)  # type: ignore[attr-defined]
        for batch in loader:
            seen += len(batch)
    elapsed = time.perf_counter() - start
    stop.set()
    sampler.join()
    return {
        "samples": seen,
        "seconds": elapsed,
        "samples_per_s": seen / elapsed,
        "peak_pss_mib": peak[0] / 1024,
        "baseline_pss_mib": baseline / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="/tmp/multivae-bench-data")
    parser.add_argument("--sizes-gb", type=float, nargs="+", default=[0.5, 1.1])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--no-validate", action="store_true")
    parser.add_argument("--child", nargs=2, metavar=("ROOT", "WORKERS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = measure(
            args.child[0], int(args.child[1]), args.epochs, args.batch_size, not args.no_validate
        )
        print(json.dumps(result))
        return

    from multivae.data.datasets import prepare_builtin

    rows = []
    for size in args.sizes_gb:
        n_train = int(size * 2**30 / BYTES_PER_SAMPLE)
        root = Path(args.root) / f"{size}gb"
        if not (root / "train").exists():
            print(f"generating {n_train} samples (~{size} GiB) into {root}", file=sys.stderr)
            prepare_builtin(
                "poly-digits",
                root,
                missing_rate=0.5,
                n_train=n_train,
                n_val=10,
                n_test=10,
            )
        on_disk = sum(p.stat().st_size for p in (root / "train").glob("*.parquet")) / 2**30
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
            ] + (["--no-validate"] if args.no_validate else [])
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            result = json.loads(output.strip().splitlines()[-1])
            rows.append((on_disk, n_train, workers, result))
            print(f"{on_disk:.2f} GiB, {workers} workers: {result}", file=sys.stderr)
    print("| data on disk | samples | workers | validate | samples/s | peak PSS (MiB) |")
    print("|---|---|---|---|---|---|")
    for on_disk, n_train, workers, result in rows:
        print(
            f"| {on_disk:.2f} GiB | {n_train} | {workers} | {not args.no_validate} | "
            f"{result['samples_per_s']:,.0f} | {result['peak_pss_mib']:.0f} |"
        )


if __name__ == "__main__":
    main()
