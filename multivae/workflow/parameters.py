"""The pipeline's parameters: what they may be, checked once before any work."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml

from multivae.config import ConfigError, read_yaml

STEPS = ("preprocess", "train", "evaluate", "sample-augmentation", "register")
"""The pipeline's steps, in order."""

TRAIN_MODES = ("local", "ray", "ray-job", "rayjob")
"""``local``: in the step's process; ``ray``: Ray Train workers on a local Ray instance (or
``RAY_ADDRESS``); ``ray-job``: Ray Job Submission to an existing cluster; ``rayjob``: a KubeRay
``RayJob`` custom resource."""

SAMPLER_KINDS = ("prior", "gmm", "maf", "iaf")

CHECKED_PARAMETERS = (
    "model",
    "model_config",
    "training",
    "sweep",
    "train_mode",
    "sampler",
    "n_synthetic",
)
"""The parameters of :func:`check_parameters` that the preprocess step checks for later steps."""


def integral(value: Any) -> Any:
    """``value`` with every integral float made an int, recursively.

    KFP passes mapping parameters as protobuf ``Struct`` values, whose numbers are all doubles:
    ``{"epochs": 10}`` arrives as ``{"epochs": 10.0}``, which an ``int`` option refuses. An int
    is accepted wherever a float is, so this restores what the user wrote.
    """
    if isinstance(value, Mapping):
        return {key: integral(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [integral(item) for item in value]
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value


def check_parameters(
    *,
    dataset: str,
    missing_rate: float,
    model: str,
    model_config: Mapping[str, Any] | None = None,
    training: Mapping[str, Any] | None = None,
    sweep: str = "",
    train_mode: str = "local",
    sampler: str = "gmm",
    n_synthetic: int = 1000,
    source: Mapping[str, Any] | None = None,
) -> None:
    """Refuse bad pipeline parameters, naming the parameter, what was expected and what was found.

    Checks the dataset (a built-in name, or a converter with its ``source``), the missing rate
    (in ``[0, 1)``), the model name and options (built against the dataset's modalities is left
    to training; unknown keys are caught here), the training settings, the sweep (YAML text of
    a sweep file, checked key by key), the training mode and the sampler.

    Raises:
        ConfigError: For the first bad parameter.
    """
    from multivae.data.datasets import BUILTIN_DATASETS
    from multivae.integrations.sweep_file import SweepConfig, check_sweep
    from multivae.run_config import check_option_names
    from multivae.training.config import TrainingConfig

    model_config, training = integral(model_config or {}), integral(training or {})
    converters = ("polymnist", "mnist-svhn")
    if dataset not in BUILTIN_DATASETS and dataset not in converters:
        raise ConfigError(
            f"dataset: expected a built-in dataset {sorted(BUILTIN_DATASETS)} or a converter "
            f"{list(converters)}, found {dataset!r}"
        )
    if dataset in converters:
        needed = ["path"] if dataset == "polymnist" else ["mnist", "svhn"]
        missing = [key for key in needed if not (source or {}).get(key)]
        if missing:
            raise ConfigError(
                f"source: the {dataset} converter needs {needed} (downloaded files), "
                f"found {dict(source or {})}"
            )
    if isinstance(missing_rate, bool) or not isinstance(missing_rate, int | float):
        raise ConfigError(f"missing_rate: expected a number in [0, 1), found {missing_rate!r}")
    if not 0.0 <= float(missing_rate) < 1.0:
        raise ConfigError(f"missing_rate: expected a number in [0, 1), found {missing_rate}")
    # An unknown model name fails here too, with the closest known one.
    check_option_names(model, model_config, "model_config")
    try:
        TrainingConfig.from_dict(dict(training or {}))
    except ConfigError as error:
        raise ConfigError(f"training: {error}") from None
    if sweep.strip():
        try:
            raw = read_yaml(sweep)
        except yaml.YAMLError as error:
            raise ConfigError(f"sweep: not valid YAML ({error})") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"sweep: expected the text of a sweep file, found {raw!r}")
        raw = {**raw, "run": {}, "output_dir": "unused"}
        try:
            parsed = SweepConfig.from_dict(raw)
        except ConfigError as error:
            raise ConfigError(f"sweep: {error}") from None
        run = {"model": model, "model_config": model_config, "training": training}
        check_sweep(parsed, {**run, "data": "unused", "output_dir": "unused"}, with_data=False)
    if train_mode not in TRAIN_MODES:
        raise ConfigError(f"train_mode: expected one of {list(TRAIN_MODES)}, found {train_mode!r}")
    if sampler not in SAMPLER_KINDS:
        raise ConfigError(f"sampler: expected one of {list(SAMPLER_KINDS)}, found {sampler!r}")
    if isinstance(n_synthetic, bool) or not isinstance(n_synthetic, int) or n_synthetic < 1:
        raise ConfigError(f"n_synthetic: expected an integer >= 1, found {n_synthetic!r}")
