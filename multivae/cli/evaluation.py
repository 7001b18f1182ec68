"""Evaluation commands: ``train-classifiers`` (the judges of coherence) and ``evaluate``."""

from __future__ import annotations

import argparse
from pathlib import Path

from multivae.cli.paths import (
    folder_argument,
    model_argument,
    output,
    path_argument,
    source,
)
from multivae.names import EVALUATION_FOLDER, FIGURES_FOLDER, METRICS_FILE


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``train-classifiers`` and ``evaluate``."""
    classifiers = commands.add_parser(
        "train-classifiers",
        help="train the per-modality classifiers that judge coherence",
        description=(
            "Train one classifier per modality on the dataset's labelled train split (present "
            "samples only), keep the best on val, report test accuracy. Saved beside the "
            "dataset, to DATA-classifiers (or --out), as safetensors + JSON; multivae evaluate "
            "finds them there."
        ),
    )
    path_argument(
        classifiers, "data", role=source("dataset"), metavar="DATA", help="dataset folder"
    )
    folder_argument(
        classifiers,
        "--out",
        output("classifiers"),
        "output folder (DATA-classifiers)",
        required=False,
    )
    classifiers.add_argument(
        "--overwrite",
        action="store_true",
        help="replace DIR when it holds classifiers it wrote earlier (never other files)",
    )
    classifiers.add_argument("--epochs", type=int, default=10)
    classifiers.add_argument("--batch-size", type=int, default=128)
    classifiers.add_argument("--seed", type=int, default=0)
    classifiers.set_defaults(func=train_classifiers)

    evaluate_parser = commands.add_parser(
        "evaluate",
        help="compute every metric of a model on a dataset (metrics.json + figures)",
        description=(
            "Likelihoods (importance-sampled), cross-modal and joint coherences, FID per "
            "sampler, reconstruction, latent clustering and linear probes, and figures, "
            "written to OUT/metrics.json and OUT/figures/. Needs the dataset's classifiers "
            "(multivae train-classifiers DATA, or --set classifiers=DIR)."
        ),
    )
    model_argument(evaluate_parser)
    folder_argument(evaluate_parser, "--data", source("dataset"), "dataset folder")
    folder_argument(
        evaluate_parser,
        "--out",
        output("evaluation"),
        "output folder (MODEL/../evaluation)",
        required=False,
    )
    evaluate_parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace DIR when it holds an earlier evaluation (never other files)",
    )
    evaluate_parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an EvaluationConfig entry, e.g. --set k=100 --set samplers='[\"prior\"]' "
        "(k, likelihood_samples, samplers, n_generated, max_samples, inception_weights, ...)",
    )
    evaluate_parser.set_defaults(func=evaluate)


def train_classifiers(args: argparse.Namespace) -> None:
    """``multivae train-classifiers``: train and save the judges; print their accuracies."""
    from multivae.metrics import train_classifiers as train

    trained = train(
        args.data,
        args.out,
        epochs=args.epochs,
        batch_size=args.batch_size,
        seed=args.seed,
        overwrite=args.overwrite,
    )
    print(f"classifiers: {trained.source}")
    for name, accuracy in trained.accuracy.items():
        print(f"{name:<16} test accuracy {accuracy:.4f}")


def _figure(value: object, section: object) -> str:
    """A metric for the summary lines: 4 decimals, or why the section has none."""
    if isinstance(value, int | float):
        return f"{value:.4f}"
    reason = section.get("not_applicable") if isinstance(section, dict) else None
    return f"not applicable ({reason})" if reason else "not computed"


def evaluate(args: argparse.Namespace) -> None:
    """``multivae evaluate``: every metric; prints the coherences and where the files are."""
    from multivae.metrics import EvaluationConfig
    from multivae.metrics import evaluate as evaluate_model
    from multivae.run_config import apply_overrides

    settings = EvaluationConfig.from_dict(apply_overrides({}, args.overrides))
    out = Path(args.out) if args.out else Path(args.model).resolve().parent / EVALUATION_FOLDER
    metrics = evaluate_model(
        args.model, args.data, out, settings, overwrite=args.overwrite, revision=args.revision
    )
    coherence = metrics.get("coherence") or {}
    print(f"coherence (mean over pairs): {_figure(coherence.get('mean'), coherence)}")
    samplers = metrics.get("samplers") or {}
    if "not_applicable" in samplers:
        print(f"joint coherence: not applicable ({samplers['not_applicable']})")
    else:
        for kind, entry in samplers.items():
            print(f"joint coherence ({kind}): {_figure(entry.get('joint_coherence'), entry)}")
    print(f"metrics: {out / METRICS_FILE}")
    print(f"figures: {out / FIGURES_FOLDER}")
