"""Dataset commands: ``prepare-data``, ``convert`` and ``inspect``."""

from __future__ import annotations

import argparse
import json
from typing import Any

from multivae.cli.paths import (
    folder_argument,
    output,
    overwrite_argument,
    path_argument,
    source,
)


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


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``prepare-data``, ``convert`` and ``inspect``."""
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
    folder_argument(prepare, "--out", output("dataset"), "folder to write")
    overwrite_argument(prepare)
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
    prepare.set_defaults(func=prepare_data)

    convert_parser = commands.add_parser(
        "convert",
        help="convert a public dataset you downloaded (PolyMNIST, MNIST-SVHN) to Parquet",
        description=(
            "Convert public data already on disk (nothing is downloaded) into a multivae "
            "dataset folder. The release's test split becomes test/; its train split is split "
            "into train/ and val/ (stratified, seeded). Missingness applies to train and val."
        ),
    )
    sources = convert_parser.add_subparsers(dest="source", required=True, metavar="SOURCE")
    polymnist = sources.add_parser(
        "polymnist",
        help="the PolyMNIST release (zip or extracted folder with train/m0..m4, test/m0..m4)",
        description="Convert the PolyMNIST release: PNGs named <index>.<label>.png under "
        "train/m0 ... test/m4, zipped or extracted.",
    )
    path_argument(
        polymnist, "source_path", role=source("release"), metavar="ZIP_OR_DIR", help="the release"
    )
    mnist_svhn = sources.add_parser(
        "mnist-svhn",
        help="MNIST + SVHN from torchvision's download folders, paired by class",
        description="Pair every MNIST digit with --pairs-per-image SVHN images of the same "
        "class (the MMVAE construction). Reads MNIST/raw/*-ubyte[.gz] and "
        "{train,test}_32x32.mat.",
    )
    for flag, what in (("--mnist", "torchvision MNIST root"), ("--svhn", "torchvision SVHN root")):
        folder_argument(mnist_svhn, flag, source("release"), what)
    mnist_svhn.add_argument("--pairs-per-image", type=int, default=5, metavar="K")
    for release in (polymnist, mnist_svhn):
        folder_argument(release, "--out", output("dataset"), "folder to write")
        overwrite_argument(release)
        release.add_argument(
            "--missing-rate",
            type=float,
            default=0.0,
            metavar="R",
            help="probability that a modality is missing from a train/val sample "
            "(PolyMNIST: every modality but m0)",
        )
        release.add_argument(
            "--val-fraction",
            type=float,
            default=0.1,
            metavar="F",
            help="fraction of the release's train split moved to val/, per class",
        )
        release.add_argument("--seed", type=int, default=0, metavar="S", help="random seed")
        release.set_defaults(func=convert)

    inspect_parser = commands.add_parser(
        "inspect",
        help="describe a dataset folder",
        description=(
            "Print the modalities (shape, dtype, kind, value range, likelihood), the split sizes, "
            "the fraction of samples in which each modality is present, the label balance and "
            "how missingness was generated."
        ),
    )
    path_argument(
        inspect_parser,
        "path",
        role=source("dataset"),
        metavar="DIR",
        help="dataset folder (holding train/, val/, test/)",
    )
    inspect_parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    inspect_parser.add_argument(
        "--validate",
        action="store_true",
        help="also decode every row group and check every value (NaN, range, presence)",
    )
    inspect_parser.set_defaults(func=inspect)


def prepare_data(args: argparse.Namespace) -> None:
    """``multivae prepare-data``: write a built-in dataset and print its summary."""
    from multivae.data.datasets import prepare_builtin
    from multivae.data.summary import format_summary, summarize

    path = prepare_builtin(
        args.name,
        args.out,
        missing_rate=args.missing_rate,
        seed=args.seed,
        overwrite=args.overwrite,
        **dict(args.param),
    )
    print(format_summary(summarize(path)))


def convert(args: argparse.Namespace) -> None:
    """``multivae convert SOURCE``: convert downloaded data and print its summary."""
    from multivae.data.datasets import convert_mnist_svhn, convert_polymnist
    from multivae.data.summary import format_summary, summarize

    options = {
        "missing_rate": args.missing_rate,
        "val_fraction": args.val_fraction,
        "seed": args.seed,
        "overwrite": args.overwrite,
    }
    if args.source == "polymnist":
        path = convert_polymnist(args.source_path, args.out, **options)
    else:
        path = convert_mnist_svhn(
            args.mnist, args.svhn, args.out, pairs_per_image=args.pairs_per_image, **options
        )
    print(format_summary(summarize(path)))


def inspect(args: argparse.Namespace) -> None:
    """``multivae inspect``: print a dataset's summary, as text or JSON."""
    from multivae.data.summary import format_summary, summarize

    summary = summarize(args.path, validate=args.validate)
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
