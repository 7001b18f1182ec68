"""Reader + collate throughput and peak memory on poly-digits-shaped data of a given size on disk.

Generates ``poly-digits`` train splits large enough to take the requested gigabytes on disk
(five 3x28x28 float32 modalities per sample, half of modalities 1-4 missing), then times shuffled
epochs through ``make_dataloader`` (block shuffle, batches of 256; the first epoch is reported
apart since it also validates every row group) in a fresh subprocess per configuration. The
parent samples the proportional set size (PSS) of the child and its DataLoader workers every
100 ms (PSS counts shared pages once across processes, so the sum is the real memory of the
reader); the child also reports its own peak RSS. Results go to stdout as a Markdown table.

Usage::

    python benchmarks/data_throughput.py --sizes-gb 0.5 1.1 2.2 --workers 0 2
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
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
    """Run in a child process: time ``epochs`` shuffled epochs."""
    import torch

    from multivae.data import MultimodalDataset, make_dataloader

    torch.set_num_threads(1)
    dataset = MultimodalDataset(root, "train", validate=validate)
    loader = make_dataloader(dataset, batch_size, shuffle=True, num_workers=workers)
    rates = []
    for epoch in range(epochs):
        loader.batch_sampler.set_epoch(epoch)  # type: ignore[union-attr]
        seen = 0
        start = time.perf_counter()
        for batch in loader:
            seen += len(batch)
        rates.append(seen / (time.perf_counter() - start))
    return {
        "samples_per_epoch": seen,
        "first_epoch_samples_per_s": rates[0],
        "later_epochs_samples_per_s": sum(rates[1:]) / max(1, len(rates) - 1),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def run_child(command: list[str]) -> dict[str, float]:
    """Run a measuring child; sample the PSS of its process tree from here every 100 ms.

    Sampling from outside keeps the measured process free of the sampler's work.
    """
    child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    peak = 0
    while child.poll() is None:
        peak = max(peak, sum(_pss_kib(p) for p in _tree(child.pid)))
        time.sleep(0.1)
    output = child.stdout.read() if child.stdout else ""
    if child.returncode:
        raise RuntimeError(f"{command} failed with status {child.returncode}")
    result: dict[str, float] = json.loads(output.strip().splitlines()[-1])
    result["peak_pss_mib"] = peak / 1024
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="/tmp/multivae-bench-data")
    parser.add_argument("--sizes-gb", type=float, nargs="+", default=[0.5, 1.1])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--no-validate", action="store_true")
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs per configuration: median rate, max memory"
    )
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
            runs = [run_child(command) for _ in range(args.repeat)]
            result = {
                key: (
                    statistics.median(r[key] for r in runs)
                    if "samples_per_s" in key
                    else max(r[key] for r in runs)
                )
                for key in runs[0]
            }
            rows.append((on_disk, n_train, workers, result))
            print(f"{on_disk:.2f} GiB, {workers} workers: {result}", file=sys.stderr)
    print(
        "| data on disk | samples | workers | validate | epoch 1 samples/s "
        "| later epochs samples/s | peak PSS, all processes (MiB) | peak RSS, main (MiB) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for on_disk, n_train, workers, result in rows:
        print(
            f"| {on_disk:.2f} GiB | {n_train} | {workers} | {not args.no_validate} | "
            f"{result['first_epoch_samples_per_s']:,.0f} | "
            f"{result['later_epochs_samples_per_s']:,.0f} | {result['peak_pss_mib']:.0f} | "
            f"{result['peak_rss_mib']:.0f} |"
        )


if __name__ == "__main__":
    main()
