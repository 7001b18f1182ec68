"""The ``multivae`` command."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from multivae.data.errors import DataFormatError

if TYPE_CHECKING:
    from multivae.models.base import Capabilities


def _parse_parameter(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, found {text!r}")
    try:
        return key, json.loads(raw)
    except json.JSONDecodeError:
        return key, raw


def _datasets_epilog() -> str:
    from multivae.data.datasets import BUILTIN_DATASETS

    lines = ["built-in datasets and their parameters (defaults):"]
    for dataset in BUILTIN_DATASETS.values():
        lines.append(f"  {dataset.name:<15} {dataset.summary}")
        settings = ", ".join(f"{k}={v}" for k, v in dataset.parameters.items())
        lines.append(f"  {'':<15} {settings}")
    lines += [
        "",
        "example:",
        "  multivae prepare-data poly-digits --out data/poly --missing-rate 0.5 --seed 0",
        "  multivae prepare-data gaussian-views --out data/gv --param num_views=3",
    ]
    return "\n".join(lines)


def _train_epilog() -> str:
    return "\n".join(
        [
            "run config (keys; see examples/*.yaml):",
            "  model          registered model name (multivae list-models)",
            "  data | builtin a dataset folder, or {name, missing_rate, seed, params}",
            "  model_config   the model's options; modalities filled from the dataset if omitted",
            "  training       epochs, stage_epochs, batch_size, optimizer {name, kwargs},",
            "                 scheduler {name, kwargs} (stepped per epoch), grad_clip_norm,",
            "                 precision fp32|bf16, device auto|cpu|cuda, seed,",
            "                 early_stopping_patience, early_stopping_min_delta, keep best|last,",
            "                 checkpoint_every, num_workers, progress_bar",
            "  output_dir     folder of the run's outputs",
            "",
            "example:",
            "  multivae train --config examples/mvae.yaml --set training.epochs=3",
        ]
    )


def _capability_flags(capabilities: Capabilities) -> str:
    flags = [name.replace("_", "-") for name, value in asdict(capabilities).items() if value]
    return " ".join(flags) if flags else "-"


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="multivae",
        description="Multimodal VAEs for partially observed data.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    prepare = commands.add_parser(
        "prepare-data",
        help="generate a built-in offline dataset as Parquet files",
        description=(
            "Generate a built-in dataset (no network needed) into DIR as Parquet files, one "
            "sub-folder per split (train/, val/, test/). The same NAME, parameters and seed always "
            "give the same data. Missingness applies to train and val; test stays complete."
        ),
        epilog=_datasets_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    prepare.add_argument("name", metavar="NAME", help="built-in dataset (listed below)")
    prepare.add_argument("--out", required=True, metavar="DIR", help="folder to write")
    prepare.add_argument(
        "--missing-rate",
        type=float,
        default=0.0,
        metavar="R",
        help="probability that a modality is missing from a sample (poly-digits: every modality "
        "but m0, as in incomplete PolyMNIST; others: each modality, keeping at least one)",
    )
    prepare.add_argument("--seed", type=int, default=0, metavar="S", help="random seed")
    prepare.add_argument(
        "--param",
        action="append",
        default=[],
        type=_parse_parameter,
        metavar="KEY=VALUE",
        help="a generator parameter, e.g. --param n_train=2000 (repeatable)",
    )

    convert = commands.add_parser(
        "convert",
        help="convert a public dataset you downloaded (PolyMNIST, MNIST-SVHN) to Parquet",
        description=(
            "Convert public data already on disk (nothing is downloaded) into a multivae "
            "dataset folder. The release's test split becomes test/; its train split is split "
            "into train/ and val/ (stratified, seeded). Missingness applies to train and val."
        ),
    )
    sources = convert.add_subparsers(dest="source", required=True, metavar="SOURCE")
    polymnist = sources.add_parser(
        "polymnist",
        help="the PolyMNIST release (zip or extracted folder with train/m0..m4, test/m0..m4)",
        description="Convert the PolyMNIST release: PNGs named <index>.<label>.png under "
        "train/m0 ... test/m4, zipped or extracted.",
    )
    polymnist.add_argument("source_path", metavar="ZIP_OR_DIR", help="the release")
    mnist_svhn = sources.add_parser(
        "mnist-svhn",
        help="MNIST + SVHN from torchvision's download folders, paired by class",
        description="Pair every MNIST digit with --pairs-per-image SVHN images of the same "
        "class (the MMVAE construction). Reads MNIST/raw/*-ubyte[.gz] and "
        "{train,test}_32x32.mat.",
    )
    mnist_svhn.add_argument("--mnist", required=True, metavar="DIR", help="torchvision MNIST root")
    mnist_svhn.add_argument("--svhn", required=True, metavar="DIR", help="torchvision SVHN root")
    mnist_svhn.add_argument("--pairs-per-image", type=int, default=5, metavar="K")
    for source in (polymnist, mnist_svhn):
        source.add_argument("--out", required=True, metavar="DIR", help="folder to write")
        source.add_argument(
            "--missing-rate",
            type=float,
            default=0.0,
            metavar="R",
            help="probability that a modality is missing from a train/val sample "
            "(PolyMNIST: every modality but m0)",
        )
        source.add_argument(
            "--val-fraction",
            type=float,
            default=0.1,
            metavar="F",
            help="fraction of the release's train split moved to val/, per class",
        )
        source.add_argument("--seed", type=int, default=0, metavar="S", help="random seed")

    inspect = commands.add_parser(
        "inspect",
        help="describe a dataset folder",
        description=(
            "Print the modalities (shape, dtype, kind, value range, likelihood), the split sizes, "
            "the fraction of samples in which each modality is present, the label balance and "
            "how missingness was generated."
        ),
    )
    inspect.add_argument("path", metavar="DIR", help="dataset folder (holding train/, val/, test/)")
    inspect.add_argument("--json", action="store_true", help="print JSON instead of text")
    inspect.add_argument(
        "--validate",
        action="store_true",
        help="also decode every row group and check every value (NaN, range, presence)",
    )

    commands.add_parser(
        "list-models",
        help="list the registered models and their capabilities",
        description="Print one registered model per line with the capabilities it declares "
        "(missing-modalities, private-latents, multi-stage, importance-sampled).",
    )

    train = commands.add_parser(
        "train",
        help="train a model from a run config (YAML or JSON)",
        description=(
            "Train the model of a run config on its dataset. The output folder receives "
            "run.yaml (the resolved config), checkpoint.pt (every training.checkpoint_every "
            "epochs and at the end), model/ (the best or last weights, loadable with "
            "multivae.load_model) and metrics.json."
        ),
        epilog=_train_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    train.add_argument(
        "--config", required=True, metavar="FILE", help="run config (.yaml, .yml or .json)"
    )
    train.add_argument(
        "--resume",
        action="store_true",
        help="continue from the checkpoint in output_dir (exactly where it stopped)",
    )
    train.add_argument(
        "--ray",
        action="store_true",
        help="train on Ray Train workers (the run's 'ray' section, or its defaults); connects "
        "to RAY_ADDRESS when set, else starts a local Ray instance",
    )
    train.add_argument(
        "--num-workers", type=int, metavar="N", help="Ray Train workers (implies --ray)"
    )
    train.add_argument(
        "--gpus-per-worker", type=float, metavar="G", help="GPUs per Ray worker (implies --ray)"
    )
    train.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config entry by its dotted key, e.g. --set training.epochs=3 "
        "(values read as JSON when they parse; repeatable)",
    )
    tune = commands.add_parser(
        "tune",
        help="run a hyperparameter sweep (Ray Tune + Optuna + ASHA) from a sweep file",
        description=(
            "Run the sweep of a sweep file: Optuna (TPE) proposes trials, ASHA stops weak ones "
            "early, each trial is a real training run reported to Ray Tune and to MLflow as a "
            "nested run of the sweep's parent run. The best finished trial is exported to "
            "OUTPUT_DIR/best (model/, run.yaml, metrics.json) and described in "
            "OUTPUT_DIR/best.json. Works unchanged as a Ray job: ray job submit --working-dir . "
            "-- multivae tune --sweep FILE."
        ),
        epilog="example:\n  multivae tune --sweep examples/sweep-mopoe.yaml",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    tune.add_argument("--sweep", required=True, metavar="FILE", help="sweep file (YAML)")
    tune.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a sweep entry by its dotted key, e.g. --set num_samples=4 (repeatable)",
    )
    classifiers = commands.add_parser(
        "train-classifiers",
        help="train the per-modality classifiers that judge coherence",
        description=(
            "Train one classifier per modality on the dataset's labelled train split (present "
            "samples only), keep the best on val, report test accuracy. Saved to "
            "DATA/classifiers (or --out) as safetensors + JSON; multivae evaluate uses them."
        ),
    )
    classifiers.add_argument("data", metavar="DATA", help="dataset folder")
    classifiers.add_argument("--out", metavar="DIR", help="output folder (DATA/classifiers)")
    classifiers.add_argument("--epochs", type=int, default=10)
    classifiers.add_argument("--batch-size", type=int, default=128)
    classifiers.add_argument("--seed", type=int, default=0)

    evaluate = commands.add_parser(
        "evaluate",
        help="compute every metric of a model on a dataset (metrics.json + figures)",
        description=(
            "Likelihoods (importance-sampled), cross-modal and joint coherences, FID per "
            "sampler, reconstruction, latent clustering and linear probes, and figures, "
            "written to OUT/metrics.json and OUT/figures/. Needs the dataset's classifiers "
            "(multivae train-classifiers DATA)."
        ),
    )
    evaluate.add_argument("--model", required=True, metavar="DIR", help="model folder or repo id")
    evaluate.add_argument("--data", required=True, metavar="DIR", help="dataset folder")
    evaluate.add_argument("--out", metavar="DIR", help="output folder (MODEL/../evaluation)")
    evaluate.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an EvaluationConfig entry, e.g. --set k=100 --set samplers='[\"prior\"]' "
        "(k, likelihood_samples, samplers, n_generated, max_samples, inception_weights, ...)",
    )
    sample = commands.add_parser(
        "sample",
        help="write a synthetic dataset generated by a model (data augmentation)",
        description=(
            "Generate N samples of every modality from the model's prior or from a latent "
            "sampler fitted on a dataset's train latents (gmm, maf, iaf), and write them as a "
            "dataset in the project's format (all modalities present, provenance in the "
            "metadata: model, sampler, seed)."
        ),
    )
    sample.add_argument("--model", required=True, metavar="DIR", help="model folder or repo id")
    sample.add_argument("--n", type=int, required=True, help="number of samples")
    sample.add_argument("--out", required=True, metavar="DIR", help="dataset folder to write")
    sample.add_argument(
        "--sampler", default="prior", help="prior, gmm, maf or iaf (default: prior)"
    )
    sample.add_argument(
        "--fit-data", metavar="DIR", help="dataset whose train latents fit the sampler"
    )
    sample.add_argument("--sampler-dir", metavar="DIR", help="a saved, fitted sampler instead")
    sample.add_argument(
        "--save-sampler", metavar="DIR", help="save the fitted sampler there (reuse: --sampler-dir)"
    )
    sample.add_argument("--seed", type=int, default=0)

    impute = commands.add_parser(
        "impute",
        help="fill the missing modalities of a dataset by conditional generation",
        description=(
            "Write a copy of DATA in which every missing modality is generated from the "
            "sample's observed ones; observed values are copied unchanged and a boolean "
            "<modality>__imputed column marks each imputed cell."
        ),
    )
    impute.add_argument("--model", required=True, metavar="DIR", help="model folder or repo id")
    impute.add_argument("--data", required=True, metavar="DIR", help="dataset with gaps")
    impute.add_argument("--out", required=True, metavar="DIR", help="dataset folder to write")
    impute.add_argument(
        "--method",
        default="mean",
        choices=["mean", "sample"],
        help="decode the posterior mean (default) or a posterior sample",
    )
    impute.add_argument("--seed", type=int, default=0)
    return parser


def _ray_overrides(args: argparse.Namespace) -> list[str]:
    """``--set`` entries for ``train --ray``/``--num-workers``/``--gpus-per-worker``."""
    overrides = []
    if args.ray or args.num_workers is not None or args.gpus_per_worker is not None:
        overrides.append("ray.name=train")
    if args.num_workers is not None:
        overrides.append(f"ray.num_workers={args.num_workers}")
    if args.gpus_per_worker is not None:
        overrides.append(f"ray.gpus_per_worker={args.gpus_per_worker}")
    return overrides


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``multivae`` command; returns the exit status."""
    args = _build_parser().parse_args(argv)
    try:
        if args.command == "prepare-data":
            from multivae.data.datasets import prepare_builtin
            from multivae.data.summary import format_summary, summarize

            path = prepare_builtin(
                args.name,
                args.out,
                missing_rate=args.missing_rate,
                seed=args.seed,
                **dict(args.param),
            )
            print(format_summary(summarize(path)))
        elif args.command == "convert":
            from multivae.data.datasets import convert_mnist_svhn, convert_polymnist
            from multivae.data.summary import format_summary, summarize

            options = {
                "missing_rate": args.missing_rate,
                "val_fraction": args.val_fraction,
                "seed": args.seed,
            }
            if args.source == "polymnist":
                path = convert_polymnist(args.source_path, args.out, **options)
            else:
                path = convert_mnist_svhn(
                    args.mnist, args.svhn, args.out, pairs_per_image=args.pairs_per_image, **options
                )
            print(format_summary(summarize(path)))
        elif args.command == "inspect":
            from multivae.data.summary import format_summary, summarize

            summary = summarize(args.path, validate=args.validate)
            print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
        elif args.command == "list-models":
            from multivae.registry import get_model_class, list_models

            for name in list_models():
                flags = _capability_flags(get_model_class(name).capabilities)
                print(f"{name:<12} {flags}")
        elif args.command == "train":
            from multivae.run import load_run_config, run_training

            config = load_run_config(args.config, [*_ray_overrides(args), *args.overrides])
            result = run_training(config, resume=args.resume)
            if result.best_epoch is not None:
                print(f"best epoch: {result.best_epoch} ({result.monitor} {result.best_loss:.6g})")
            print(f"model: {result.model_dir}")
            print(f"metrics: {result.metrics_path}")
        elif args.command == "train-classifiers":
            from multivae.metrics import train_classifiers

            trained = train_classifiers(
                args.data,
                args.out,
                epochs=args.epochs,
                batch_size=args.batch_size,
                seed=args.seed,
            )
            for name, accuracy in trained.accuracy.items():
                print(f"{name:<16} test accuracy {accuracy:.4f}")
        elif args.command == "evaluate":
            from pathlib import Path

            from multivae.metrics import EvaluationConfig, evaluate
            from multivae.run import apply_overrides

            settings = EvaluationConfig.from_dict(apply_overrides({}, args.overrides))
            out = Path(args.out) if args.out else Path(args.model).resolve().parent / "evaluation"
            metrics = evaluate(args.model, args.data, out, settings)
            print(f"coherence (mean over pairs): {metrics['coherence']['mean']:.4f}")
            for kind, entry in metrics.get("samplers", {}).items():
                print(f"joint coherence ({kind}): {entry['joint_coherence']:.4f}")
            print(f"metrics: {out / 'metrics.json'}")
            print(f"figures: {out / 'figures'}")
        elif args.command in ("sample", "impute"):
            from multivae.augment import impute_command, sample_command
            from multivae.data.summary import format_summary, summarize

            if args.command == "sample":
                path = sample_command(
                    args.model,
                    args.n,
                    args.out,
                    None if args.sampler_dir and args.sampler == "prior" else args.sampler,
                    args.fit_data,
                    args.seed,
                    args.sampler_dir,
                    save_sampler=args.save_sampler,
                )
            else:
                path = impute_command(
                    args.model, args.data, args.out, args.seed, method=args.method
                )
            print(format_summary(summarize(path)))
        elif args.command == "tune":
            from multivae.integrations.tune import sweep_from_file

            sweep = sweep_from_file(args.sweep, args.overrides)
            print(f"best trial: {sweep.best_trial} {json.dumps(sweep.best_params)}")
            print(f"best model: {sweep.best_dir / 'model'}")
            finished = sum(trial["finished"] for trial in sweep.trials)
            print(f"trials: {finished} finished of {len(sweep.trials)}")
            if sweep.parent_run_id is not None:
                print(f"mlflow parent run: {sweep.parent_run_id}")
    except (
        DataFormatError,
        ValueError,
        FileNotFoundError,
        FileExistsError,
        FloatingPointError,
        RuntimeError,
    ) as error:
        print(f"multivae {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
