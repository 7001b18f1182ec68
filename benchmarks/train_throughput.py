"""Training throughput per model: the :class:`~multivae.training.Trainer` against a bare loop.

For each model and built-in dataset (missing modalities at ``--missing-rate``), up to three paths
train the same model (same config, same seed, fresh weights) for the same epochs on the same
batches (``--paths``, default ``floor ours``):

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
* ``compiled``: ``ours`` with ``TrainingConfig(compile=True)``: the model's forward pass runs
  through ``torch.compile``. Its first epoch holds the compilation; the table reports that
  epoch's extra time over a steady epoch as the compile time.

All paths use the ``TrainingConfig`` default optimizer (Adam, lr 1e-3, ``fused=True`` as
``OptimizerConfig`` sets it: a single kernel per parameter; ``--unfused-adam`` passes
``fused=False``, PyTorch's own default on CPU, a for-loop of small kernels) and models built by
``ModelConfig.from_schema`` (default architectures: convolutional for poly-digits, MLPs for
gaussian-views) with ``latent_dim`` 16; MMVAE's ``samples_per_expert`` (K) is set per dataset.
The first ``--warmup-epochs`` epochs of every run are left out. Every run is a fresh
subprocess with ``torch.set_num_threads(--threads)``; the runs of a configuration alternate
floor, ours, floor, ours, ... so that load from other processes hits all paths alike. A run's
rate is its samples per epoch over its median epoch time; the table gives the median rate over
the runs of each path and the median over the (floor, ours) pairs of ``ours epoch time / floor
epoch time``. Epoch times are wall-clock times, or with ``--clock cpu`` the process's CPU time
(all its threads): on a machine shared with other jobs, ``--threads 1 --clock cpu`` counts the
work of each path without the time it waited for a core. The table goes to stdout in Markdown,
progress to stderr.

``--reference`` is the setting of the MultiVae 1.0.3 comparison: gaussian-views with 3 views
of 8 values (``num_views=3``, ``view_dim=8``), the default MLPs (encoders 512-512, decoders 512),
latent 16, batch 64, 8,192 training samples (128 steps), MMVAE with K = 10, paths ``floor ours
compiled``, 4 epochs with 1 of warm-up; its table adds the reference library's figures
(:data:`REFERENCE`, wall-clock samples/s on 2 cores) and the target of 1.5 times them.

Usage::

    python benchmarks/train_throughput.py --repeat 3
    python benchmarks/train_throughput.py --models mvae mopoe --datasets gaussian-views --epochs 6
    python benchmarks/train_throughput.py --samples poly-digits=256 --mmvae-k poly-digits=10
    python benchmarks/train_throughput.py --reference --repeat 3
    python benchmarks/train_throughput.py --reference --repeat 3 --unfused-adam
    python benchmarks/train_throughput.py --reference --repeat 3 --threads 1 --clock cpu
    python benchmarks/train_throughput.py --datasets gaussian-views \
        --dataset-param gaussian-views:num_views=3 --paths ours compiled
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
PATHS = ("floor", "ours", "compiled")
REFERENCE = {"mopoe": 6100, "mvae": 4500, "jmvae": 4500, "mmvae": 2700}
"""Training samples/s of MultiVae 1.0.3 on the development machine's 2 cores with the same
3-modality MLP networks (encoders 512-512, decoders 512, latent 16, batch 64, MMVAE K = 10),
measured 2026-12-01 (``/work/shared/ENVIRONMENT.md``)."""
TARGET_SPEEDUP = 1.5
CLOCK = {"times": "epoch_times"}
"""Which epoch times rates come from: ``epoch_times`` (wall clock) or ``cpu_times`` (the
process's CPU time, all its threads; ``--clock cpu``)."""
REFERENCE_SETTINGS = {
    "datasets": ["gaussian-views"],
    "dataset_param": [("gaussian-views", "num_views", 3), ("gaussian-views", "view_dim", 8)],
    "samples": [("gaussian-views", 8192)],
    "batch_size": [("gaussian-views", 64)],
    "mmvae_k": [("gaussian-views", 10)],
    "paths": ["floor", "ours", "compiled"],
    "epochs": 4,
    "warmup_epochs": 1,
}
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
    dataset_params: dict[str, int] = dataclasses.field(default_factory=dict)
    fused_adam: bool = True

    def optimizer(self) -> Any:
        """The ``TrainingConfig`` default optimizer (Adam, lr 1e-3, fused), or unfused."""
        from multivae.training import OptimizerConfig

        kwargs: dict[str, Any] = {"lr": 1e-3} if self.fused_adam else {"lr": 1e-3, "fused": False}
        return OptimizerConfig("Adam", kwargs)


def build(workload: Workload) -> tuple[Any, Any]:
    """The training loader and a freshly seeded model, as ``multivae train`` builds them."""
    import torch

    from multivae.data import MultimodalDataset, make_dataloader
    from multivae.data.datasets import load_builtin
    from multivae.factory import get_model_class

    root = load_builtin(
        workload.dataset,
        missing_rate=workload.missing_rate,
        n_train=workload.samples,
        n_val=16,
        n_test=16,
        **workload.dataset_params,  # type: ignore[arg-type]
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

    batches = list(loader)
    optimizer = workload.optimizer().build(list(model.parameters()))
    torch.manual_seed(workload.seed)
    model.train()
    epoch_times = []
    cpu_times = []
    for _ in range(workload.epochs):
        began = time.perf_counter()
        began_cpu = time.process_time()
        for batch in batches:
            loss = model(batch).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        epoch_times.append(time.perf_counter() - began)
        cpu_times.append(time.process_time() - began_cpu)
    return {
        "samples": sum(len(batch) for batch in batches),
        "steps": len(batches),
        "epoch_times": epoch_times,
        "cpu_times": cpu_times,
        "end": 0.0,
    }


def measure_ours(
    workload: Workload, model: Any, loader: Any, compiled: bool = False
) -> dict[str, Any]:
    """Time ``Trainer.fit`` epoch by epoch, from a callback."""
    from multivae.training import Callback, Trainer, TrainingConfig

    class EpochClock(Callback):
        def __init__(self) -> None:
            self.marks: list[float] = []
            self.cpu_marks: list[float] = []

        def on_train_begin(self, trainer: Trainer) -> None:
            self.marks.append(time.perf_counter())
            self.cpu_marks.append(time.process_time())

        def on_epoch_end(self, epoch: int, metrics: Mapping[str, float | int | str]) -> bool:
            self.marks.append(time.perf_counter())
            self.cpu_marks.append(time.process_time())
            return False

    config = TrainingConfig(
        epochs=workload.epochs,
        batch_size=workload.batch_size,
        device="cpu",
        seed=workload.seed,
        checkpoint_every=0,
        progress_bar=False,
        compile=compiled,
        optimizer=workload.optimizer(),
    )
    clock = EpochClock()
    with tempfile.TemporaryDirectory(prefix="multivae-bench-") as folder:
        Trainer(model, config, folder, callbacks=[clock]).fit(loader, None)
        finished = time.perf_counter()
    return {
        "samples": len(loader.dataset),
        "steps": len(loader),
        "epoch_times": [after - before for before, after in itertools.pairwise(clock.marks)],
        "cpu_times": [after - before for before, after in itertools.pairwise(clock.cpu_marks)],
        "end": finished - clock.marks[-1],
    }


def run_child(workload: Workload, path: str) -> dict[str, Any]:
    """Measure one path of a workload in a fresh Python process.

    A run that fails (e.g. a model ``torch.compile`` refuses) gives ``{"error": message}``.
    """
    command = [
        sys.executable,
        __file__,
        "--child",
        json.dumps(dataclasses.asdict(workload)),
        path,
    ]
    process = subprocess.run(command, check=False, stdout=subprocess.PIPE, text=True)
    lines = process.stdout.strip().splitlines()
    if process.returncode != 0 or not lines:
        return {"error": f"exit status {process.returncode}"}
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def epoch_time(run: Mapping[str, Any], warmup: int) -> float:
    """The median time (by ``--clock``) of a run's epochs after the warm-up ones."""
    return float(statistics.median(run[CLOCK["times"]][warmup:]))


def rate(run: Mapping[str, Any], warmup: int) -> float:
    """A run's samples per second at steady state."""
    return float(run["samples"] / epoch_time(run, warmup))


def per_dataset_param(text: str) -> tuple[str, str, int]:
    """Parse ``DATASET:KEY=INTEGER`` (e.g. ``gaussian-views:num_views=3``)."""
    name, colon, rest = text.partition(":")
    key, equals, value = rest.partition("=")
    if not colon or not equals or name not in PER_DATASET_DEFAULTS or not value.isdigit():
        raise argparse.ArgumentTypeError(
            f"expected DATASET:KEY=INTEGER with DATASET in {list(PER_DATASET_DEFAULTS)}, found "
            f"{text!r}"
        )
    return name, key, int(value)


def summarize(
    runs: Mapping[str, list[dict[str, Any]]], warmup: int
) -> dict[str, dict[str, Any] | str]:
    """Per path: median rate and first-epoch overhead, or the error of a failed run."""
    summary: dict[str, dict[str, Any] | str] = {}
    for path, path_runs in runs.items():
        failed = [run["error"] for run in path_runs if "error" in run]
        if failed:
            summary[path] = failed[0]
            continue
        summary[path] = {
            "rate": statistics.median(rate(run, warmup) for run in path_runs),
            # Wall clock whatever --clock: the compiler runs in worker processes too.
            "first_epoch_extra": statistics.median(
                run["epoch_times"][0] - statistics.median(run["epoch_times"][warmup:])
                for run in path_runs
            ),
            "end": statistics.median(run["end"] for run in path_runs),
        }
    return summary


def print_table(rows: list[tuple[Workload, int, dict[str, Any], float | None]]) -> None:
    """The floor / ours table (and the compiled path's rate when it ran)."""
    compiled = any("compiled" in summary for _, _, summary, _ in rows)
    extra = " ours compiled samples/s |" if compiled else ""
    print(
        "| dataset | model | samples/epoch | batch | floor samples/s | ours samples/s |"
        f"{extra} ours / floor step time | run end, once (s) |"
    )
    print("|---|---|---|---|---|---|" + ("---|" if compiled else "") + "---|---|")
    for workload, steps, summary, ratio in rows:
        ours = summary.get("ours")
        end = f"{ours['end']:.2f}" if isinstance(ours, dict) else "-"
        compiled_cell = f" {cell(summary.get('compiled'))} |" if compiled else ""
        print(
            f"| {workload.dataset} | {model_label(workload)} | {workload.samples} "
            f"| {workload.batch_size} ({steps} steps) | {cell(summary.get('floor'))} "
            f"| {cell(ours)} |{compiled_cell} {'-' if ratio is None else f'{ratio:.3f}'} "
            f"| {end} |"
        )


def print_reference_table(rows: list[tuple[Workload, int, dict[str, Any], float | None]]) -> None:
    """Eager and compiled Trainer paths against MultiVae 1.0.3 and the 1.5x target.

    With ``--clock cpu`` the rates are samples per CPU-second, which do not compare with the
    reference's wall-clock figures: the reference columns are left out.
    """
    wall = CLOCK["times"] == "epoch_times"
    unit = "samples/s" if wall else "samples/CPU-s"
    reference_header = (
        f"| MultiVae 1.0.3 samples/s | target ({TARGET_SPEEDUP}x) | best of ours / MultiVae "
        if wall
        else ""
    )
    print(
        f"| model | floor {unit} | ours eager {unit} | ours compiled {unit} | compiled / eager "
        f"| compile time, first epoch (s) {reference_header}|"
    )
    print("|---|---|---|---|---|---|" + ("---|---|---|" if wall else ""))
    for workload, _, summary, _ in rows:
        eager, compiled = summary.get("ours"), summary.get("compiled")
        ratio = (
            f"{compiled['rate'] / eager['rate']:.2f}"
            if isinstance(eager, dict) and isinstance(compiled, dict)
            else "-"
        )
        compile_time = f"{compiled['first_epoch_extra']:.1f}" if isinstance(compiled, dict) else "-"
        reference_cells = ""
        reference = REFERENCE.get(workload.model)
        if wall and reference is not None:
            rates = [s["rate"] for s in (eager, compiled) if isinstance(s, dict)]
            speedup = f"{max(rates) / reference:.2f}x" if rates else "-"
            target = TARGET_SPEEDUP * reference
            reference_cells = f"| {reference:,} | {target:,.0f} | {speedup} "
        elif wall:
            reference_cells = "| - | - | - "
        print(
            f"| {model_label(workload)} | {cell(summary.get('floor'))} | {cell(eager)} "
            f"| {cell(compiled)} | {ratio} | {compile_time} {reference_cells}|"
        )


def model_label(workload: Workload) -> str:
    """The model's name, with K for MMVAE."""
    if workload.model == "mmvae":
        return f"mmvae (K={workload.mmvae_k})"
    return workload.model


def cell(summary: dict[str, Any] | str | None) -> str:
    """A rate, ``fails: ...`` for a failed path, ``-`` for one not run."""
    if summary is None:
        return "-"
    if isinstance(summary, str):
        return f"fails: {summary}"
    return f"{summary['rate']:,.0f}"


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
    parser.add_argument(
        "--dataset-param",
        nargs="+",
        type=per_dataset_param,
        default=[],
        metavar="DATASET:KEY=N",
        help="a built-in dataset's generator parameter, e.g. gaussian-views:num_views=3",
    )
    parser.add_argument("--paths", nargs="+", choices=PATHS, default=["floor", "ours"])
    parser.add_argument(
        "--reference",
        action="store_true",
        help="the MultiVae 1.0.3 comparison setting (see the module docstring); it sets "
        "--datasets, --dataset-param, --samples, --batch-size, --mmvae-k, --paths, --epochs "
        "and --warmup-epochs",
    )
    parser.add_argument(
        "--unfused-adam",
        action="store_true",
        help="Adam with fused=False (PyTorch's for-loop implementation) in every path, instead "
        "of the fused kernel OptimizerConfig chooses",
    )
    parser.add_argument("--missing-rate", type=float, default=0.5)
    parser.add_argument("--latent-dim", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run, warm-up included")
    parser.add_argument("--warmup-epochs", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each path")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="rates from wall-clock epoch times (default), or from the process's CPU time: "
        "with --threads 1 on a machine shared with other jobs, CPU time counts the work of a "
        "path without the time it waited for a core",
    )
    parser.add_argument("--child", nargs=2, metavar=("WORKLOAD", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        import torch

        workload = Workload(**json.loads(args.child[0]))
        torch.set_num_threads(workload.threads)
        loader, model = build(workload)
        path = args.child[1]
        try:
            if path == "floor":
                result = measure_floor(workload, model, loader)
            else:
                result = measure_ours(workload, model, loader, compiled=path == "compiled")
        except Exception as error:
            print(f"{type(error).__name__}: {error}", file=sys.stderr)
            lines = str(error).splitlines()
            result = {"error": f"{type(error).__name__}: {lines[0] if lines else ''}"}
        print(json.dumps(result))
        return
    CLOCK["times"] = "cpu_times" if args.clock == "cpu" else "epoch_times"
    if args.reference:
        for name, value in REFERENCE_SETTINGS.items():
            setattr(args, name, value)
    if args.epochs <= args.warmup_epochs:
        parser.error(
            f"--epochs must exceed --warmup-epochs, found {args.epochs} <= {args.warmup_epochs}"
        )

    settings = {name: dict(values) for name, values in PER_DATASET_DEFAULTS.items()}
    for option in ("samples", "batch_size", "mmvae_k"):
        for name, value in getattr(args, option):
            settings[name][option] = value
    dataset_params: dict[str, dict[str, int]] = {name: {} for name in PER_DATASET_DEFAULTS}
    for name, key, value in args.dataset_param:
        dataset_params[name][key] = value
    paths = [path for path in PATHS if path in args.paths]
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
                dataset_params=dataset_params[dataset_name],
                fused_adam=not args.unfused_adam,
                **settings[dataset_name],
            )
            runs: dict[str, list[dict[str, Any]]] = {path: [] for path in paths}
            for _ in range(args.repeat):
                for path in paths:
                    run = run_child(workload, path)
                    runs[path].append(run)
                    shown = (
                        run["error"]
                        if "error" in run
                        else f"{rate(run, args.warmup_epochs):,.0f} samples/s"
                    )
                    print(f"{dataset_name} {model_name} {path}: {shown}", file=sys.stderr)
            summary = summarize(runs, args.warmup_epochs)
            pairs = [
                (floor, ours)
                for floor, ours in zip(runs.get("floor", []), runs.get("ours", []), strict=False)
                if "error" not in floor and "error" not in ours
            ]
            ratio = (
                statistics.median(
                    epoch_time(ours, args.warmup_epochs) / epoch_time(floor, args.warmup_epochs)
                    for floor, ours in pairs
                )
                if pairs
                else None
            )
            steps = next(
                (
                    run["steps"]
                    for path_runs in runs.values()
                    for run in path_runs
                    if "steps" in run
                ),
                0,
            )
            rows.append((workload, steps, summary, ratio))
    if args.reference:
        print_reference_table(rows)
    else:
        print_table(rows)


if __name__ == "__main__":
    main()
