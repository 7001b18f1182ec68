"""The pipeline's parameters: read from the command's flags, with their defaults and checks.

``submit`` and ``run-local`` take the flags of the common parameters, or any parameter with
``--set name=value`` (JSON values for numbers, booleans and mappings, e.g. ``--set
training='{"epochs": 3}'``); the parameters are checked as the preprocess step checks them
before anything is submitted or started.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def pipeline_arguments(args: argparse.Namespace) -> dict[str, Any]:
    """Pipeline parameters from the flags; ``--sweep FILE`` is read into the ``sweep`` text.

    Raises:
        FileNotFoundError: For a sweep file that does not exist.
        ValueError: For a sweep file that is not a YAML mapping, or a ``--set`` entry without
            ``=`` or naming an unknown parameter.
    """
    from multivae.config import ConfigError, check_known_keys, locate, read_yaml
    from multivae.integrations.sweep_file import SweepConfig

    known = set(pipeline_defaults())
    arguments: dict[str, Any] = {}
    flags = {
        "dataset": args.dataset,
        "missing_rate": args.missing_rate,
        "model_name": args.model,
        "sampler": args.sampler,
        "hub_repo": args.hub_repo,
        "mlflow_uri": args.mlflow_uri,
        "train_mode": args.train_mode,
    }
    arguments.update({k: v for k, v in flags.items() if v is not None})
    if args.epochs is not None:
        from pipelines.pipeline import TRAINING

        arguments["training"] = {**TRAINING, "epochs": args.epochs}
    if args.push:
        arguments["hub_dry_run"] = False
    if args.sweep is not None:
        path = Path(args.sweep)
        if not path.is_file():
            found = "a folder" if path.is_dir() else "nothing"
            raise FileNotFoundError(f"--sweep {path}: expected a sweep file (YAML), found {found}")
        text = path.read_text()
        try:
            document = read_yaml(text)
        except Exception as error:  # yaml.YAMLError: named with the file
            raise ValueError(f"--sweep {path}: not valid YAML ({error})") from None
        if not isinstance(document, dict):
            raise ValueError(
                f"--sweep {path}: expected a sweep file (a mapping of sweep settings), "
                f"found {document!r}"
            )
        sweep_fields = [entry.name for entry in dataclasses.fields(SweepConfig)]
        try:
            check_known_keys(document, sweep_fields, "sweep")
        except ConfigError as error:
            raise locate(error, f"--sweep {path}", text) from None
        arguments["sweep"] = text
    for entry in args.set or []:
        name, sep, value = entry.partition("=")
        if not sep:
            raise ValueError(f"--set: expected name=value, found {entry!r}")
        if name not in known:
            raise ValueError(f"--set: unknown pipeline parameter {name!r}; known: {sorted(known)}")
        arguments[name] = _parse_value(value)
    return arguments


def pipeline_defaults() -> dict[str, Any]:
    """Every pipeline parameter with its default, read from the pipeline's signature."""
    import inspect

    from pipelines.pipeline import build_pipeline

    parameters = inspect.signature(build_pipeline("local").pipeline_func).parameters
    return {name: parameter.default for name, parameter in parameters.items()}


def check_arguments(arguments: dict[str, Any]) -> None:
    """The preprocess step's parameter checks, run before anything is submitted or started."""
    from multivae.workflow import check_parameters

    values = {**pipeline_defaults(), **arguments}
    check_parameters(
        dataset=values["dataset"],
        missing_rate=values["missing_rate"],
        model=values["model_name"],
        model_config=values["model_config"],
        training=values["training"],
        sweep=values["sweep"],
        train_mode=values["train_mode"],
        sampler=values["sampler"],
        n_synthetic=values["n_synthetic"],
        source=values["source"],
    )
