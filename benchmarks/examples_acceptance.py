"""Every example config trains briefly and evaluates with finite metrics, through the real CLI.

For each registered model, ``examples/NAME.yaml`` (poly-digits, 5 modalities, each but ``m0``
missing from half of the train and validation samples) is trained with the command a user
types::

    multivae train --config examples/NAME.yaml --set training.epochs=2 --set output_dir=WORK/NAME

then evaluated with ``multivae evaluate`` on the same dataset (classifiers trained once with
``multivae train-classifiers``). The table gives, per model, the training time, the last
validation loss, the joint NLL, the mean coherence from one modality, the prior samples' joint
coherence, how many numbers ``metrics.json`` holds and how many of them are not finite (NaN or
infinite: a failure unless the metric says it is not applicable).

Usage::

    python benchmarks/examples_acceptance.py                       # every model, 2 epochs
    python benchmarks/examples_acceptance.py --models mvae cmvae --epochs 1 --k 50
    python benchmarks/examples_acceptance.py --samplers prior --n-generated 200  # lighter

Results: ``benchmarks/results/examples_acceptance.{json,md}`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
EXAMPLES = ROOT / "examples"


def cli(*args: str) -> tuple[float, str]:
    """Run ``multivae ARGS`` (this interpreter's); raise with its output on failure."""
    began = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "multivae.cli", *args],
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - began
    if done.returncode != 0:
        raise RuntimeError(f"multivae {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return seconds, done.stdout


def numbers(value: Any, path: str = "") -> list[tuple[str, float]]:
    """Every number in a JSON value, with its path."""
    if isinstance(value, bool):
        return []
    if isinstance(value, int | float):
        return [(path, float(value))]
    if isinstance(value, dict):
        return [pair for key, item in value.items() for pair in numbers(item, f"{path}.{key}")]
    if isinstance(value, list):
        return [pair for i, item in enumerate(value) for pair in numbers(item, f"{path}[{i}]")]
    return []


def dataset(example: Path) -> Path:
    """The built-in dataset folder an example trains on (prepared if absent)."""
    import yaml

    from multivae.data.datasets import load_builtin

    builtin = yaml.safe_load(example.read_text())["builtin"]
    return Path(
        load_builtin(
            builtin["name"],
            missing_rate=builtin.get("missing_rate", 0.0),
            seed=builtin.get("seed", 0),
            **builtin.get("params", {}),
        )
    )


def run_model(name: str, work: Path, data: Path, classifiers: Path, args: Any) -> dict[str, Any]:
    """Train and evaluate one example; the row of the table."""
    out = work / name
    if out.exists():
        # This benchmark's own earlier run of the model (the work folder is the benchmark's):
        # training refuses a folder holding a run, so the earlier one goes.
        shutil.rmtree(out)
    train_seconds, _ = cli(
        "train",
        "--config",
        str(EXAMPLES / f"{name}.yaml"),
        "--set",
        f"training.epochs={args.epochs}",
        "--set",
        f"output_dir={out}",
        "--set",
        "training.progress_bar=false",
    )
    final = json.loads((out / "metrics.json").read_text())["final"]
    evaluate_seconds, _ = cli(
        "evaluate",
        "--model",
        str(out / "model"),
        "--data",
        str(data),
        "--out",
        str(out / "evaluation"),
        "--overwrite",
        "--set",
        f"k={args.k}",
        "--set",
        f"classifiers={classifiers}",
        "--set",
        f"max_samples={args.max_samples}",
        "--set",
        f"samplers={json.dumps(args.samplers)}",
        "--set",
        f"n_generated={args.n_generated}",
    )
    metrics = json.loads((out / "evaluation" / "metrics.json").read_text())
    found = numbers(metrics)
    bad = [path for path, value in found if not math.isfinite(value)]
    coherence = metrics.get("coherence") or {}
    prior = (metrics.get("samplers") or {}).get("prior") or {}
    return {
        "model": name,
        "train_seconds": train_seconds,
        "evaluate_seconds": evaluate_seconds,
        "val_loss": final.get("val_loss"),
        "joint_nll": (metrics.get("likelihood") or {}).get("joint", {}).get("mean"),
        "coherence_1": (coherence.get("per_size") or {}).get("1"),
        "joint_coherence": prior.get("joint_coherence"),
        "numbers": len(found),
        "not_finite": bad,
    }


def table(rows: list[dict[str, Any]], epochs: int) -> str:
    def fmt(value: Any, digits: int = 3) -> str:
        if value is None:
            return "n/a"
        if isinstance(value, float):
            return f"{value:.{digits}f}"
        return str(value)

    lines = [
        f"| model | train s ({epochs} epochs) | evaluate s | last val loss | joint NLL | "
        "coherence from 1 | joint coherence (prior) | numbers | not finite |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['model']} | failed: {row['error'].splitlines()[0]} |||||||")
            continue
        lines.append(
            f"| {row['model']} | {row['train_seconds']:.0f} | {row['evaluate_seconds']:.0f} | "
            f"{fmt(row['val_loss'], 1)} | {fmt(row['joint_nll'], 1)} | "
            f"{fmt(row['coherence_1'])} | {fmt(row['joint_coherence'])} | {row['numbers']} | "
            f"{len(row['not_finite'])} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    import multivae

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=multivae.list_models())
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--k", type=int, default=100, help="importance samples of the NLL")
    parser.add_argument("--max-samples", type=int, default=500, help="test samples evaluated")
    parser.add_argument(
        "--samplers", nargs="+", default=["prior", "gmm"], help="latent samplers evaluated"
    )
    parser.add_argument(
        "--n-generated", type=int, default=1000, help="samples generated per sampler"
    )
    parser.add_argument("--work", type=Path, default=HERE / ".examples-work")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "examples_acceptance.json")
    args = parser.parse_args(argv)
    missing = [m for m in args.models if not (EXAMPLES / f"{m}.yaml").exists()]
    if missing:
        parser.error(f"no example config for {missing} in {EXAMPLES}")

    data = dataset(EXAMPLES / f"{args.models[0]}.yaml")
    classifiers = args.work / "classifiers"
    if not (classifiers / "classifiers.json").exists():
        cli("train-classifiers", str(data), "--out", str(classifiers), "--overwrite")
    rows = []
    for name in args.models:
        if dataset(EXAMPLES / f"{name}.yaml") != data:
            parser.error(f"examples/{name}.yaml trains on another dataset than {data}")
        try:
            row = run_model(name, args.work, data, classifiers, args)
        except RuntimeError as error:
            row = {"model": name, "error": str(error)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"epochs": args.epochs, "k": args.k, "rows": rows}, indent=1))
    markdown = table(rows, args.epochs)
    args.out.with_suffix(".md").write_text(markdown)
    print(markdown)
    return 0 if all("error" not in r and not r["not_finite"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
