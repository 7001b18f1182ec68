"""Training throughput per model: the :class:`~multivae.training.Trainer` against a bare loop.

For each model and built-in dataset (missing modalities at ``--missing-rate``), two paths train
the same model (same config, same seed, fresh weights) for the same epochs on the same batches:

* ``ours``: the real path, ``Trainer(model, config, tmp).fit(make_dataloader(...), None)``
  with the progress bar off and ``checkpoint_every=0`` (one checkpoint, at the end of the run).
  An epoch's time is the wall time between consecutive ``on_epoch_end`` callbacks, so it holds
  everything the loop does per epoch: ``set_epoch``, the loader (sampler, row-group cache,
  gathering, collating), ``batch.to(device)``, the autocast context, the step, metric
  accumulation, the epoch averages, best-model tracking (a CPU copy of the weights) and the
  stop-request reduction. The run's setup and its end (final checkpoint, ``save_pretrained``,
  ``metrics.json``) happen once per run, not per epoch; the end is reported apart.
* ``floor``: the batches of one epoch are drawn from the same loader once, before timing, and
  kept in memory; then ``loss = model(batch).loss; optimizer.zero_grad(); loss.backward();
  optimizer.step()`` over them each epoch, with no ``Trainer``, no ``DataLoader`` and no
  metric accumulation. The model's forward is the same encoders, decoders and loss arithmetic,
  so this is the least a training loop can cost.

Both paths use the ``TrainingConfig`` default optimizer (Adam, lr 1e-3) and models built by
``ModelConfig.from_schema`` (default architectures: convolutional for poly-digits, MLPs for
gaussian-views) with ``latent_dim`` 16; MMVAE's ``samples_per_expert`` (K) is set per dataset.
The first ``--warmup-epochs`` epochs of every run are left out. Every run is a fresh
subprocess with ``torch.set_num_threads(--threads)``; the runs of a configuration alternate
floor, ours, floor, ours, ... so that load from other processes hits both paths alike. A run's
rate is its samples per epoch over its median epoch time; the table gives the median rate over
the runs of each path and the median over the (floor, ours) pairs of ``ours epoch time / floor
epoch time``. The table goes to stdout in Markdown, progress to stderr.

Usage::

    python benchmarks/train_throughput.py --repeat 3
    python benchmarks/train_throughput.py --models mvae mopoe --datasets gaussian-views --epochs 6
    python benchmarks/train_throughput.py --samples poly-digits=256 --mmvae-k poly-digits=10
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from typing import Any

MODELS = ("jmvae", "mvae", "mmvae", "mopoe")
PER_DATASET_DEFAULTS = {
    "poly-digits": {"samples": 128, "batch_size": 32, "mmvae_k": 2},
    "gaussian-views": {"samples": 2048, "batch_size": 64, "mmvae_k": 10},
}
"""Sizes that keep the whole default benchmark within minutes on 2 cores. MMVAE decodes
``K * M`` latents per sample, so poly-digits (5 convolutional decoders) gets a smaller K."""


@dataclasses.dataclass(frozen=True)
class Workload:
    """One configuration, as handed to a measuring subprocess."""

    model: str
    dataset: str
    samples: int
    batch_size: int
    mmvae_k: int
    missing_rate: float
    latent_dim: int
    epochs: int
    seed: int
    threads: int


def build(workload: Workload) -> tuple[Any, Any]:
    """The training loader and a freshly seeded model, as ``multivae train`` builds them."""
    import torch

    from multivae.data import MultimodalDataset, make_dataloader
    from multivae.data.datasets import load_builtin
    from multivae.registry import get_model_class

    root = load_builtin(
        workload.dataset,
        missing_rate=workload.missing_rate,
        n_train=workload.samples,
        n_val=16,
        n_test=16,
    )
    dataset = MultimodalDataset(root, "train")
    loader = make_dataloader(dataset, workload.batch_size, shuffle=True, seed=workload.seed)
    options: dict[str, Any] = {"latent_dim": workload.latent_dim}
    if workload.model == "mmvae":
        options["samples_per_expert"] = workload.mmvae_k
    model_class = get_model_class(workload.model)
    torch.manual_seed(workload.seed)
    model = model_class(model_class.config_class.from_schema(dataset.schema, **options))
    return loader, model


def measure_floor(workload: Workload, model: Any, loader: Any) -> dict[str, Any]:
    """Time the bare loop over batches drawn once from ``loader``."""
    import torch

    from multivae.training import TrainingConfig

    batches = list(loader)
    optimizer = TrainingConfig().optimizer.build(list(model.parameters()))
    torch.manual_seed(workload.seed)
    model.train()
    epoch_times = []
    for _ in range(workload.epochs):
        began = time.perf_counter()
        for batch in batches:
            loss = model(batch).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        epoch_times.append(time.perf_counter() - began)
    return {
        "samples": sum(len(batch) for batch in batches),
        "steps": len(batches),
        "epoch_times": epoch_times,
        "end": 0.0,
    }


def measure_ours(workload: Workload, model: Any, loader: Any) -> dict[str, Any]:
    """Time ``Trainer.fit`` epoch by epoch, from a callback."""
    from multivae.training import Callback, Trainer, TrainingConfig

    class EpochClock(Callback):
        def __init__(self) -> None:
            self.marks: list[float] = []

        def on_train_begin(self, trainer: Trainer) -> None:
            self.marks.append(time.perf_counter())

        def on_epoch_end(self, epoch: int, metrics: Mapping[str, float | int | str]) -> bool:
            self.marks.append(time.perf_counter())
            return False

    config = TrainingConfig(
        epochs=workload.epochs,
        batch_size=workload.batch_size,
        device="cpu",
        seed=workload.seed,
        checkpoint_every=0,
        progress_bar=False,
    )
    clock = EpochClock()
    with tempfile.TemporaryDirectory(prefix="multivae-bench-") as folder:
        Trainer(model, config, folder, callbacks=[clock]).fit(loader, None)
        finished = time.perf_counter()
    return {
        "samples": len(loader.dataset),
        "steps": len(loader),
        "epoch_times": [after - before for before, after in itertools.pairwise(clock.marks)],
        "end": finished - clock.marks[-1],
    }


def run_child(workload: Workload, path: str) -> dict[str, Any]:
    """Measure one path of a workload in a fresh Python process."""
    command = [
        sys.executable,
        __file__,
        "--child",
        json.dumps(dataclasses.asdict(workload)),
        path,
    ]
    output = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True).stdout
    result: dict[str, Any] = json.loads(output.strip().splitlines()[-1])
    return result


def epoch_time(run: Mapping[str, Any], warmup: int) -> float:
    """The median time of a run's epochs after the warm-up ones."""
    return statistics.median(run["epoch_times"][warmup:])


def per_dataset(text: str) -> tuple[str, int]:
    """Parse ``DATASET=VALUE`` (e.g. ``poly-digits=256``)."""
    name, separator, value = text.partition("=")
    if not separator or name not in PER_DATASET_DEFAULTS or not value.isdigit():
        raise argparse.ArgumentTypeError(
            f"expected DATASET=INTEGER with DATASET in {list(PER_DATASET_DEFAULTS)}, found {text!r}"
        )
    return name, int(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument(
        "--datasets",
        nargs="+",
        choices=list(PER_DATASET_DEFAULTS),
        default=list(PER_DATASET_DEFAULTS),
    )
    for option, what in (
        ("samples", "training samples"),
        ("batch_size", "batch size"),
        ("mmvae_k", "MMVAE samples_per_expert"),
    ):
        defaults = ", ".join(f"{d}={v[option]}" for d, v in PER_DATASET_DEFAULTS.items())
        parser.add_argument(
            f"--{option.replace('_', '-')}",
            nargs="+",
            type=per_dataset,
            default=[],
            metavar="DATASET=N",
            help=f"{what} per dataset (defaults: {defaults})",
        )
    parser.add_argument("--missing-rate", type=float, default=0.5)
    parser.add_argument("--latent-dim", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run, warm-up included")
    parser.add_argument("--warmup-epochs", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each path")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--child", nargs=2, metavar=("WORKLOAD", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        import torch

        workload = Workload(**json.loads(args.child[0]))
        torch.set_num_threads(workload.threads)
        loader, model = build(workload)
        measure = measure_floor if args.child[1] == "floor" else measure_ours
        print(json.dumps(measure(workload, model, loader)))
        return
    if args.epochs <= args.warmup_epochs:
        parser.error(
            f"--epochs must exceed --warmup-epochs, found {args.epochs} <= {args.warmup_epochs}"
        )

    settings = {name: dict(values) for name, values in PER_DATASET_DEFAULTS.items()}
    for option in ("samples", "batch_size", "mmvae_k"):
        for name, value in getattr(args, option):
            settings[name][option] = value
    rows = []
    for dataset_name in args.datasets:
        for model_name in args.models:
            workload = Workload(
                model=model_name,
                dataset=dataset_name,
                missing_rate=args.missing_rate,
                latent_dim=args.latent_dim,
                epochs=args.epochs,
                seed=args.seed,
                threads=args.threads,
                **settings[dataset_name],
            )
            runs: dict[str, list[dict[str, Any]]] = {"floor": [], "ours": []}
            for _ in range(args.repeat):
                for path in ("floor", "ours"):
                    run = run_child(workload, path)
                    runs[path].append(run)
                    rate = run["samples"] / epoch_time(run, args.warmup_epochs)
                    print(
                        f"{dataset_name} {model_name} {path}: {rate:,.0f} samples/s",
                        file=sys.stderr,
                    )
            rates = {
                path: statistics.median(
                    run["samples"] / epoch_time(run, args.warmup_epochs) for run in path_runs
                )
                for path, path_runs in runs.items()
            }
            ratio = statistics.median(
                epoch_time(ours, args.warmup_epochs) / epoch_time(floor, args.warmup_epochs)
                for floor, ours in zip(runs["floor"], runs["ours"], strict=True)
            )
            end = statistics.median(run["end"] for run in runs["ours"])
            rows.append((workload, runs["ours"][0]["steps"], rates, ratio, end))
    print(
        "| dataset | model | samples/epoch | batch | floor samples/s | ours samples/s "
        "| ours / floor step time | run end, once (s) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for workload, steps, rates, ratio, end in rows:
        model = f"mmvae (K={workload.mmvae_k})" if workload.model == "mmvae" else workload.model
        print(
            f"| {workload.dataset} | {model} | {workload.samples} | {workload.batch_size} "
            f"({steps} steps) | {rates['floor']:,.0f} | {rates['ours']:,.0f} | {ratio:.3f} "
            f"| {end:.2f} |"
        )


if __name__ == "__main__":
    main()
