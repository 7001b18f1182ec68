"""Learning curves: cross-modal coherence epoch by epoch, beyond what the learning test trains.

The suite's learning test (``tests/models/test_learning.py``) trains every model just long enough
to leave the mean-image plateau, on small networks. This script runs the same models with the
same options (``tests/kit/learning.py``, one source for both) longer, on the default networks or
the test's, and records after every epoch the coherence m0 -> m1 on the complete test split of
poly-digits (half of m1, m2, ... missing in training), judged by a classifier trained on 2,000
complete m1 images of the same generator, and the CPU seconds so far.

Usage::

    python benchmarks/learning_curves.py --epochs 20 --out benchmarks/results/learning_curves
    python benchmarks/learning_curves.py --models mopoe mmvae --networks test --epochs 12
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=None, help="default: every registered one")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument(
        "--networks",
        choices=["default", "test"],
        default="default",
        help="the default conv networks (32, 64 channels) or the learning test's (16, 32)",
    )
    parser.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=JSON",
        help='a model option over the learning setting\'s (repeatable), e.g. bound="elbo"',
    )
    parser.add_argument("--modalities", type=int, default=None, help="over the setting's")
    parser.add_argument("--lr", type=float, default=None, help="over the test's learning rate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True, help="writes OUT.json and OUT.md")
    args = parser.parse_args(argv)

    import torch

    sys.path.insert(0, str(ROOT / "tests"))
    from kit.judges import train_judge
    from kit.learning import (
        COHERENCE_FLOOR,
        LEARNING,
        LEARNING_RATE,
        learning_run,
    )

    import multivae
    from multivae.data import MultimodalDataset
    from multivae.data.datasets import prepare_builtin
    from multivae.metrics.classifiers import ClassifierSet
    from multivae.run import run_training
    from multivae.training import Callback, Trainer

    torch.set_num_threads(args.threads)
    overrides = {key: json.loads(value) for key, value in (o.split("=", 1) for o in args.option)}
    lr = args.lr or LEARNING_RATE
    names = args.models or multivae.list_models()
    rows: list[dict[str, Any]] = []

    class Coherence(Callback):
        """Coherence m0 -> m1 on the test split after every epoch."""

        def __init__(self, name: str, test: Any, judge: ClassifierSet, start: float) -> None:
            self.name, self.test, self.judge, self.start = name, test, judge, start

        def on_train_begin(self, trainer: Trainer) -> None:
            self.model = trainer.module

        def on_epoch_end(self, epoch: int, metrics: Mapping[str, float | int | str]) -> bool:
            seconds = time.process_time() - self.start
            self.model.eval()
            with torch.random.fork_rng():
                torch.manual_seed(0)
                generated = self.model.predict(self.test, cond=["m0"], gen=["m1"])["m1"]
            self.model.train()
            predicted = self.judge.predict("m1", generated)
            coherence = (predicted == self.test.label).float().mean().item()
            rows.append(
                {
                    "model": self.name,
                    "epoch": epoch,
                    "coherence": round(coherence, 4),
                    "cpu_seconds": round(seconds, 1),
                    "train_loss": metrics["train_loss"],
                }
            )
            print(f"{self.name} epoch {epoch}: coherence {coherence:.3f}, {seconds:.0f} CPU s")
            return False

    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        judge_data = prepare_builtin(
            "poly-digits",
            root / "judge",
            seed=args.seed,
            num_modalities=2,
            n_train=2000,
            n_val=500,
            n_test=500,
        )
        judge = train_judge(judge_data, root / "judge-classifiers")
        datasets: dict[int, Path] = {}
        for name in names:
            setting = LEARNING[name]
            count = args.modalities or setting.num_modalities
            if count not in datasets:
                datasets[count] = prepare_builtin(
                    "poly-digits",
                    root / f"poly-{count}",
                    missing_rate=0.5,
                    seed=args.seed,
                    num_modalities=count,
                    n_train=2000,
                    n_val=200,
                    n_test=500,
                )
            test = MultimodalDataset(datasets[count], "test").read_all()
            config = learning_run(
                name,
                datasets[count],
                root / "runs" / name,
                num_modalities=count,
                epochs=args.epochs,
                seed=args.seed,
                small_networks=args.networks == "test",
                options=overrides,
                lr=lr,
            )
            run_training(config, callbacks=[Coherence(name, test, judge, time.process_time())])

    args.out.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "networks": args.networks,
        "options": overrides,
        "modalities": args.modalities,
        "lr": lr,
        "epochs": args.epochs,
        "seed": args.seed,
        "threads": args.threads,
        "judge_test_accuracy": judge.accuracy["m1"],
        "rows": rows,
    }
    args.out.with_suffix(".json").write_text(json.dumps(document, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(markdown(rows, COHERENCE_FLOOR) + "\n")
    print(markdown(rows, COHERENCE_FLOOR))
    return 0


def markdown(rows: list[dict[str, Any]], floor: float) -> str:
    """One row per model: coherence every other epoch, and the first epoch above the floor."""
    models = list(dict.fromkeys(row["model"] for row in rows))
    epochs = sorted({row["epoch"] for row in rows})
    shown = [e for e in epochs if e % 2 == 0 or e == epochs[-1]]
    head = "| model | " + " | ".join(f"ep {e}" for e in shown)
    lines = [
        head + f" | first epoch > {floor} | CPU s to there | CPU s in all |",
        "|---|" + "---|" * (len(shown) + 3),
    ]
    for model in models:
        mine = {row["epoch"]: row for row in rows if row["model"] == model}
        above = [e for e in sorted(mine) if mine[e]["coherence"] > floor]
        first = above[0] if above else None
        cells = [f"{mine[e]['coherence']:.3f}" if e in mine else "" for e in shown]
        reached = f"{mine[first]['cpu_seconds']:.0f}" if first else "never"
        total = mine[max(mine)]["cpu_seconds"]
        lines.append(
            f"| {model} | "
            + " | ".join(cells)
            + f" | {first or 'never'} | {reached} | {total:.0f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
