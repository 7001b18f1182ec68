"""Training commands: ``train`` (one run, here or on Ray Train) and ``tune`` (a sweep)."""

from __future__ import annotations

import argparse
import json

from multivae.cli.paths import config_path, file_argument, output, source
from multivae.names import MODEL_FOLDER, RUN_KIND, SWEEP_KIND


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


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``train`` and ``tune``."""
    train_parser = commands.add_parser(
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
    file_argument(train_parser, "--config", "run config", "run config (.yaml, .yml or .json)")
    config_path(train_parser, "output_dir", output(RUN_KIND))
    config_path(train_parser, "data", source("dataset"))
    train_parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from the checkpoint in output_dir (exactly where it stopped)",
    )
    train_parser.add_argument(
        "--ray",
        action="store_true",
        help="train on Ray Train workers (the run's 'ray' section, or its defaults); connects "
        "to RAY_ADDRESS when set, else starts a local Ray instance",
    )
    train_parser.add_argument(
        "--num-workers", type=int, metavar="N", help="Ray Train workers (implies --ray)"
    )
    train_parser.add_argument(
        "--gpus-per-worker", type=float, metavar="G", help="GPUs per Ray worker (implies --ray)"
    )
    train_parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config entry by its dotted key, e.g. --set training.epochs=3 "
        "(values read as JSON when they parse; repeatable)",
    )
    train_parser.set_defaults(func=train)

    tune_parser = commands.add_parser(
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
    file_argument(tune_parser, "--sweep", "sweep file", "sweep file (YAML)")
    config_path(tune_parser, "output_dir", output(SWEEP_KIND))
    config_path(tune_parser, "run.data", source("dataset"))
    tune_parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a sweep entry by its dotted key, e.g. --set num_samples=4 (repeatable)",
    )
    tune_parser.set_defaults(func=tune)


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


def train(args: argparse.Namespace) -> None:
    """``multivae train``: one training run; prints where the model and metrics are."""
    from multivae.run import run_training
    from multivae.run_config import load_run_config

    config = load_run_config(args.config, [*_ray_overrides(args), *args.overrides])
    result = run_training(config, resume=args.resume)
    if result.best_epoch is not None:
        print(f"best epoch: {result.best_epoch} ({result.monitor} {result.best_loss:.6g})")
    print(f"model: {result.model_dir}")
    print(f"metrics: {result.metrics_path}")


def tune(args: argparse.Namespace) -> None:
    """``multivae tune``: a sweep; prints the best trial and where its model is."""
    from multivae.integrations.tune import sweep_from_file

    sweep = sweep_from_file(args.sweep, args.overrides)
    print(f"best trial: {sweep.best_trial} {json.dumps(sweep.best_params)}")
    print(f"best model: {sweep.best_dir / MODEL_FOLDER}")
    finished = sum(trial["finished"] for trial in sweep.trials)
    print(f"trials: {finished} finished of {len(sweep.trials)}")
    if sweep.parent_run_id is not None:
        print(f"mlflow parent run: {sweep.parent_run_id}")
