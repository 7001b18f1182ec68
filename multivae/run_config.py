"""The description of one training run: data, model, training settings and output folder.

A run config is YAML (or JSON) read by :class:`RunConfig` (:func:`load_run_config`, with
``--set`` style overrides); :func:`multivae.run.run_training` does the run it describes.
Example::

    model: mvae
    builtin: {name: poly-digits, missing_rate: 0.5, seed: 0, params: {n_train: 10000}}
    model_config: {latent_dim: 32, beta: 1.0}
    training: {epochs: 30, batch_size: 128, optimizer: {name: Adam, kwargs: {lr: 1.0e-3}}}
    output_dir: runs/mvae

Relative paths (``data``, ``output_dir``, ``ray.storage_path``, a ``sqlite:///`` or plain
``mlflow.tracking_uri``), in the file or in a ``--set``, are relative to the working directory
of the command that reads the file; they are made absolute once, when it is read
(:func:`absolute_paths`), so that they mean the same in every process the run reaches (Ray
workers, Tune trials, Kubeflow steps). Write floats with a dot (``1.0e-3``): YAML reads
``1e-3`` as a string.

:func:`resolve_dataset` and :func:`resolve_model_config` turn a description into what a run
needs (the dataset folder, the model's options with every modality filled in); local runs, Ray
workers and sweeps share them.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from multivae.config import Config, ConfigError, _suggest, locate, read_json, read_yaml
from multivae.data.datasets import load_builtin
from multivae.data.schema import DatasetSchema
from multivae.factory import get_model_class
from multivae.models.base import ModelConfig
from multivae.training.config import TrainingConfig


@dataclass
class BuiltinDataConfig(Config):
    """A built-in dataset, generated on first use (see :func:`multivae.data.datasets.load_builtin`).

    Attributes:
        name: The dataset (``multivae prepare-data --help`` lists them).
        missing_rate: Probability that a modality is missing from a train or val sample.
        seed: Seed of the generator.
        params: Generator parameters, e.g. ``{"n_train": 2000}``.
    """

    name: str
    missing_rate: float = 0.0
    seed: int = 0
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class RayConfig(Config):
    """How a run trains on Ray Train (``multivae train --ray``).

    Attributes:
        num_workers: Training workers (data-parallel ranks).
        cpus_per_worker: CPUs reserved per worker.
        gpus_per_worker: GPUs per worker; more than 0 trains on CUDA with NCCL.
        resources_per_worker: Extra custom Ray resources per worker, e.g. ``{"a100": 1}``.
        max_failures: Worker-group restarts after a worker or its node dies (from the last
            checkpoint) before the run fails; node preemptions have the same budget.
        controller_failure_limit: Further attempts after the worker group could not start
            (no room for its workers within ``worker_start_timeout_s``) before the run fails.
        worker_start_timeout_s: Seconds one attempt waits for the workers' resources.
        deterministic: Read the Parquet files in their stored order, split them in that order
            (Ray Data's ``preserve_order``) and shuffle only in each worker's seeded local
            buffer: a run restarted after a failure then ends with the weights the uninterrupted
            run would have had. Costs the file-level shuffle.
        address: Ray cluster to connect to (``ray://...``, ``auto``); else ``RAY_ADDRESS``, else
            a local Ray instance.
        storage_path: Ray Train's storage for reported checkpoints (a folder every node sees,
            or a cloud URI); ``output_dir/ray`` by default.
        name: Name of the Ray Train run inside ``storage_path``.
        shuffle_buffer_size: Rows in each worker's local shuffle buffer (0: read order).
    """

    num_workers: int = 2
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    resources_per_worker: dict[str, float] = field(default_factory=dict)
    max_failures: int = 3
    controller_failure_limit: int = 2
    worker_start_timeout_s: float = 120.0
    address: str | None = None
    storage_path: str | None = None
    name: str = "train"
    shuffle_buffer_size: int = 1024
    deterministic: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_workers < 1:
            raise ConfigError(f"ray.num_workers: expected at least 1, found {self.num_workers}")
        for option in (
            "cpus_per_worker",
            "gpus_per_worker",
            "shuffle_buffer_size",
            "max_failures",
            "controller_failure_limit",
        ):
            if getattr(self, option) < 0:
                raise ConfigError(
                    f"ray.{option}: expected >= 0 (a bounded number), found {getattr(self, option)}"
                )
        if not self.worker_start_timeout_s > 0:
            raise ConfigError(
                f"ray.worker_start_timeout_s: expected > 0 seconds, found "
                f"{self.worker_start_timeout_s}"
            )
        for name, amount in self.resources_per_worker.items():
            if not amount >= 0:
                raise ConfigError(f"ray.resources_per_worker.{name}: expected >= 0, found {amount}")


@dataclass
class MLflowConfig(Config):
    """MLflow tracking of a run.

    Attributes:
        enabled: Track the run.
        tracking_uri: Where; else ``MLFLOW_TRACKING_URI``, else the SQLite file
            ``output_dir/mlflow.db``.
        experiment: MLflow experiment name.
        run_name: Name of the MLflow run (MLflow picks one when empty).
        parent_run_id: Make the run a nested run of this one (sweeps, pipelines).
        register_as: Register the final model in the MLflow model registry under this name.
    """

    enabled: bool = True
    tracking_uri: str | None = None
    experiment: str = "multivae"
    run_name: str | None = None
    parent_run_id: str | None = None
    register_as: str | None = None


@dataclass
class RunConfig(Config):
    """Everything one training run needs.

    Attributes:
        model: A registered model name (``multivae list-models``).
        output_dir: Folder for the checkpoint, ``model/``, ``metrics.json`` and ``run.yaml``.
        data: A dataset folder with ``train/`` and ``val/`` splits; or else ``builtin``.
        builtin: A built-in dataset; or else ``data``.
        model_config: The model's options. ``modalities`` may be left out: each modality then
            gets the dataset's likelihood and default architectures. Entries given under
            ``modalities.<name>`` override those defaults for that modality.
        training: The training settings.
        ray: Train on Ray Train workers with these settings; ``None`` trains in this process.
        mlflow: MLflow tracking.
    """

    model: str
    output_dir: str
    data: str | None = None
    builtin: BuiltinDataConfig | None = None
    model_config: dict[str, Any] = field(default_factory=dict)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    ray: RayConfig | None = None
    mlflow: MLflowConfig = field(default_factory=MLflowConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        if (self.data is None) == (self.builtin is None):
            found = "both" if self.data is not None else "neither"
            raise ConfigError(
                "expected one of 'data' (a dataset folder) and 'builtin' (a built-in dataset), "
                f"found {found}"
            )
        get_model_class(self.model)


def _parse_value(text: str) -> Any:
    """A ``--set`` value: JSON when it parses (numbers, booleans, null, lists), else the text."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply dotted ``KEY=VALUE`` overrides (``training.epochs=3``) to a plain config.

    Values are read as JSON when they parse (``3``, ``1e-3``, ``true``, ``null``, ``[1, 2]``),
    as text otherwise. Missing or null intermediate mappings are created; the result is checked
    when the config is built, so misspelled keys get the usual suggestion.

    Raises:
        ConfigError: For an override without ``=`` or a path through a non-mapping value.
    """
    raw = copy.deepcopy(raw)
    for override in overrides:
        path, separator, text = override.partition("=")
        keys = path.split(".")
        if not separator or not all(keys):
            raise ConfigError(f"--set: expected KEY=VALUE with a dotted KEY, found {override!r}")
        target = raw
        for depth, key in enumerate(keys[:-1]):
            if target.get(key) is None:
                target[key] = {}
            if not isinstance(target[key], dict):
                where = ".".join(keys[: depth + 1])
                raise ConfigError(
                    f"--set {override}: expected a mapping at {where!r}, found {target[key]!r}"
                )
            target = target[key]
        target[keys[-1]] = _parse_value(text)
    return raw


RUN_PATH_KEYS = ("data", "output_dir", "ray.storage_path", "mlflow.tracking_uri")
"""The run config's entries that name a place on disk (:func:`absolute_paths`)."""


def absolute_location(text: str) -> str:
    """A path or URI whose relative path is made absolute against the working directory.

    ``~`` is expanded; a ``sqlite:///relative.db`` URI becomes ``sqlite:////abs/relative.db``;
    other URIs (``s3://``, ``http://``, ``file:///``) and empty texts are returned unchanged.
    """
    if not text.strip():
        return text
    if text.startswith("sqlite:///"):
        database = text[len("sqlite:///") :]
        if database and not database.startswith("/") and database != ":memory:":
            return "sqlite:///" + os.path.abspath(os.path.expanduser(database))
        return text
    if "://" in text or text.startswith("file:"):
        return text
    return os.path.abspath(os.path.expanduser(text))


def absolute_paths(raw: Mapping[str, Any]) -> dict[str, Any]:
    """A plain run config with every entry of :data:`RUN_PATH_KEYS` made absolute.

    Called once where a run config is read (:func:`load_run_config`, a sweep file's base run),
    after the ``--set`` overrides and before the config goes to another process.
    """
    resolved = copy.deepcopy(dict(raw))
    for key in RUN_PATH_KEYS:
        *parents, name = key.split(".")
        target: Any = resolved
        for parent in parents:
            target = target.get(parent) if isinstance(target, dict) else None
        if isinstance(target, dict) and isinstance(target.get(name), str):
            target[name] = absolute_location(target[name])
    return resolved


def load_run_config(path: str | os.PathLike[str], overrides: Sequence[str] = ()) -> RunConfig:
    """Read a YAML or JSON run config and apply ``--set`` style overrides.

    Raises:
        FileNotFoundError: When there is no file at ``path``.
        ConfigError: For malformed YAML or JSON, an unknown key (with the closest known key) or
            an ill-typed value, prefixed by the file's name.
    """
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path}: expected a run config file (YAML or JSON), found a folder")
    if not path.exists():
        raise FileNotFoundError(f"{path}: expected a run config file (YAML or JSON), found nothing")
    text = path.read_text()
    try:
        raw = read_json(text) if path.suffix == ".json" else read_yaml(text)
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        raise ConfigError(f"{path}: not valid {path.suffix[1:].upper()} ({error})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of run settings, found {raw!r}")
    try:
        return RunConfig.from_dict(absolute_paths(apply_overrides(raw, overrides)))
    except ConfigError as error:
        given = [override.partition("=")[0] for override in overrides]
        raise locate(error, path, text, given) from None


def resolve_dataset(config: RunConfig) -> Path:
    """The run's dataset folder; a built-in dataset is generated (and cached) on first use."""
    if config.builtin is not None:
        return load_builtin(
            config.builtin.name,
            missing_rate=config.builtin.missing_rate,
            seed=config.builtin.seed,
            **config.builtin.params,
        )
    assert config.data is not None
    return Path(config.data)


def check_option_names(model: str, options: Mapping[str, Any], where: str) -> None:
    """Refuse an option ``model`` does not have, before the data fills in the modalities.

    Only the names are checked: the values need the dataset (:func:`resolve_model_config`).
    """
    known = [f.name for f in fields(get_model_class(model).config_class)]
    prefix = f"{where}: " if where else ""
    for key in options:
        if key not in known:
            raise ConfigError(f"{prefix}{model} has no option {key!r}.{_suggest(key, known)}")


def resolve_model_config(config: RunConfig, schema: DatasetSchema) -> dict[str, Any]:
    """The model's options with every modality filled in from the dataset's schema."""
    defaults = ModelConfig.from_schema(schema).to_dict()["modalities"]
    given = config.model_config.get("modalities") or {}
    if not isinstance(given, dict):
        raise ConfigError(f"model_config.modalities: expected a mapping, found {given!r}")
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ConfigError(
            f"model_config.modalities: the dataset has no modalities {unknown}; expected some "
            f"of {list(defaults)}"
        )
    modalities = {}
    for name, default in defaults.items():
        entries = given.get(name) or {}
        if not isinstance(entries, dict):
            raise ConfigError(
                f"model_config.modalities.{name}: expected a mapping, found {entries!r}"
            )
        modalities[name] = {**default, **entries}
    return {**config.model_config, "modalities": modalities}
