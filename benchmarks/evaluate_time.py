"""Time of the full metric set (``multivae evaluate``) on a large poly-digits test split.

Builds poly-digits with ``--test`` test samples (half of modalities m1-m4 missing in train/val),
trains MoPoE briefly (timings do not depend on how good the model is) and the per-modality
classifiers, then runs :func:`multivae.metrics.evaluate` with its defaults (K=1000 importance
samples on ``likelihood_samples`` test samples; prior and GMM samplers with 1000 generated
samples each; coherence, reconstruction, clustering and linear probes on the whole split) and
prints the seconds of each metric group and the likelihood throughput (samples x K per second).

Usage::

    python benchmarks/evaluate_time.py --test 10000
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--test", type=int, default=10000)
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()

    from multivae.data.datasets import prepare_builtin
    from multivae.metrics import EvaluationConfig, evaluate, train_classifiers
    from multivae.run import run_training
    from multivae.run_config import RunConfig, apply_overrides

    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        data = prepare_builtin(
            "poly-digits",
            root / "poly",
            missing_rate=0.5,
            n_train=args.train,
            n_val=200,
            n_test=args.test,
        )
        result = run_training(
            RunConfig.from_dict(
                {
                    "model": "mopoe",
                    "data": str(data),
                    "output_dir": str(root / "run"),
                    "training": {"epochs": args.epochs, "batch_size": 64, "progress_bar": False},
                    "mlflow": {"enabled": False},
                }
            )
        )
        train_classifiers(data, epochs=2, progress=False)
        config = EvaluationConfig.from_dict(apply_overrides({}, args.overrides))
        started = time.perf_counter()
        metrics = evaluate(result.model_dir, data, root / "evaluation", config, progress=False)
        total = time.perf_counter() - started
    print(f"| metric group | seconds ({args.test} test samples) |")
    print("|---|---|")
    for group, seconds in metrics["seconds"].items():
        print(f"| {group} | {seconds:.1f} |")
    print(f"| **total** (incl. loading) | **{total:.1f}** |")
    likelihood = metrics.get("likelihood", {})
    print(
        json.dumps(
            {
                "likelihood_samples": config.likelihood_samples,
                "k": config.k,
                "likelihood_throughput_samples_x_k_per_s": likelihood.get("throughput"),
            }
        )
    )


if __name__ == "__main__":
    main()
