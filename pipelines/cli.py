"""``python -m pipelines {compile,submit,run-local}``: the pipeline from the command line.

* ``compile``: KFP IR YAML of the cluster pipeline (``pipeline.yaml`` by default).
* ``submit``: compile, then create a run on a KFP endpoint with ``kfp.Client`` (``--host`` or
  ``KFP_HOST``; a bearer token from ``--token`` or ``KFP_TOKEN``; or the client's own
  credentials: in-cluster service account, kubeconfig, IAP).
* ``run-local``: the whole pipeline on this machine with KFP's local runner (each step a
  subprocess in this Python environment, artifacts in ``OUT/kfp``, MLflow in
  ``OUT/mlflow.db``), then a list of where every result is.

Pipeline parameters: the flags below, or any parameter with ``--set name=value`` (JSON values
for numbers, booleans and mappings, e.g. ``--set training='{"epochs": 3}'``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pipelines.arguments import pipeline_arguments
from pipelines.compile import compile_pipeline
from pipelines.local import DEFAULT_OUT, RUNS_KIND, report, run_local
from pipelines.submit import submit


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m pipelines`` argument parser."""
    from multivae.cli.paths import CommandParser, file_argument, output, path_argument

    parser = CommandParser(prog="python -m pipelines", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    compile_cmd = commands.add_parser("compile", help="compile the pipeline to KFP IR YAML")
    path_argument(
        compile_cmd,
        "--out",
        role=output("compiled pipeline", file=True),
        default="pipeline.yaml",
        help="the YAML file to write (a new file, or one this command wrote)",
    )
    compile_cmd.add_argument(
        "--platform", default="kubernetes", choices=("kubernetes", "local"), help="target"
    )
    for name, help_text in (
        ("submit", "compile and create a run on a KFP endpoint"),
        ("run-local", "run the whole pipeline here with KFP's local runner"),
    ):
        command = commands.add_parser(name, help=help_text)
        command.add_argument("--dataset", help="built-in dataset or converter (poly-digits)")
        command.add_argument("--missing-rate", type=float, help="missing rate in [0, 1) (0.5)")
        command.add_argument("--model", help="model name (mopoe)")
        command.add_argument("--epochs", type=int, help="training epochs (10)")
        file_argument(
            command, "--sweep", "sweep file", "a sweep file: tune instead of train", required=False
        )
        command.add_argument("--sampler", help="latent sampler: prior, gmm, maf, iaf (gmm)")
        command.add_argument("--train-mode", help="local, ray, ray-job or rayjob (local)")
        command.add_argument("--hub-repo", help="Hub repository owner/name")
        command.add_argument("--push", action="store_true", help="push to the Hub (HF_TOKEN)")
        command.add_argument("--mlflow-uri", help="MLflow tracking URI")
        command.add_argument(
            "--set", action="append", metavar="NAME=VALUE", help="any pipeline parameter"
        )
    submit_cmd = commands.choices["submit"]
    submit_cmd.add_argument("--host", help="KFP API endpoint (else KFP_HOST)")
    submit_cmd.add_argument("--token", help="bearer token (else KFP_TOKEN)")
    submit_cmd.add_argument("--namespace", help="Kubeflow profile namespace")
    submit_cmd.add_argument("--experiment", default="multivae")
    submit_cmd.add_argument("--run-name")
    submit_cmd.add_argument("--service-account", default="multivae-pipeline")
    for command in (compile_cmd, submit_cmd):
        command.add_argument(
            "--train-gpus",
            type=int,
            default=0,
            metavar="N",
            help="GPUs (nvidia.com/gpu) for the train step's pod, when it trains in the step",
        )
    local_cmd = commands.choices["run-local"]
    path_argument(
        local_cmd,
        "--out",
        role=output(RUNS_KIND),
        default=str(DEFAULT_OUT),
        help="output folder (runs/pipeline): new or empty, or one where this command ran before",
    )
    local_cmd.add_argument("--no-cache", action="store_true", help="rerun every step")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (2 for bad input, 1 for a failed run)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as done:  # --help, or a usage error (one line)
        return done.code if isinstance(done.code, int) else 2
    try:
        if args.command == "compile":
            path = compile_pipeline(args.out, args.platform, args.train_gpus)
            print(f"compiled {path}")
            return 0
        arguments = pipeline_arguments(args)
        if args.command == "submit":
            result = submit(
                arguments,
                host=args.host,
                token=args.token,
                namespace=args.namespace,
                experiment=args.experiment,
                run_name=args.run_name,
                service_account=args.service_account,
                train_gpus=args.train_gpus,
            )
            print(f"submitted run {result.run_id}")
            return 0
        outcome = run_local(arguments, args.out, cache=not args.no_cache)
        print(report(outcome))
        return 0
    except (ValueError, FileNotFoundError, FileExistsError, ConnectionError) as error:
        from multivae.redact import redact

        print(f"python -m pipelines {args.command}: error: {redact(str(error))}", file=sys.stderr)
        return 2
    except RuntimeError as error:
        from multivae.redact import redact

        print(
            f"python -m pipelines {args.command}: error: the pipeline failed: {redact(str(error))}",
            file=sys.stderr,
        )
        return 1
