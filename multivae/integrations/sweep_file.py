"""The sweep file: its format and checks, and the search space it describes.

A sweep file (YAML) names a base run config and a search space over dotted keys of it::

    run: examples/mopoe.yaml        # base run config: a file or a mapping
    output_dir: runs/sweep-mopoe
    metric: val_loss
    mode: min
    num_samples: 12                 # trials
    max_concurrent_trials: 2
    seed: 0                         # seeds Optuna's sampler
    scheduler: {grace_period: 2, reduction_factor: 2}   # ASHA; null runs every trial to the end
    space:
      model: {choice: [mvae, mopoe]}
      model_config.latent_dim: {choice: [8, 16, 32]}
      model_config.beta: {loguniform: [0.25, 4.0]}
      training.optimizer.kwargs.lr: {loguniform: [1.0e-4, 3.0e-3]}
    trial_resources: {cpu: 1}       # the trial's driver; default 1 CPU, 0.25 with train_workers
    train_workers: 0                # > 0: each trial is a Ray Train run with that many workers
    verbose: 1                      # Tune's status on the terminal: trials running/finished, best

Every key of ``space`` is checked against the run config, and against the options of every model
the sweep may pick, before Ray starts: a misspelled key is an error with a suggestion
(:func:`check_sweep`). :mod:`multivae.integrations.tune` runs the sweep.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import yaml

from multivae.config import Config, ConfigError, locate, read_yaml

DISTRIBUTIONS = ("choice", "uniform", "loguniform", "randint")

TRAIN_DRIVER_CPUS = 0.25
"""CPUs a trial's driver reserves by default when the trial is a Ray Train run: it builds the
run and waits on Ray Train's controller, the workers do the work (the Tune-over-Train pattern of
the Ray Train guide)."""


@dataclass
class ASHAConfig(Config):
    """Asynchronous successive halving (``ray.tune.schedulers.ASHAScheduler``).

    Attributes:
        grace_period: Epochs every trial runs before it may be stopped.
        reduction_factor: Keep the best ``1 / reduction_factor`` of trials at each rung.
    """

    grace_period: int = 1
    reduction_factor: float = 2.0


@dataclass
class SweepConfig(Config):
    """A sweep file (see the module docstring).

    Attributes:
        run: The base run config: a file name (relative to the working directory) or a
            mapping.
        space: Dotted run-config key -> ``{distribution: arguments}``; distributions are
            ``choice: [values]``, ``uniform: [low, high]``, ``loguniform: [low, high]``,
            ``randint: [low, high)``.
        output_dir: Folder of the trials, Tune's state, ``best/`` and ``best.json``.
        metric: The reported metric to optimize.
        mode: ``min`` or ``max``.
        num_samples: Number of trials.
        max_concurrent_trials: Trials running at once.
        seed: Seed of Optuna's TPE sampler.
        scheduler: ASHA settings; ``None`` runs every trial to its last epoch.
        trial_resources: Ray resources of each trial's driver (``cpu``, ``gpu``, custom names);
            by default 1 CPU, or ``TRAIN_DRIVER_CPUS`` when ``train_workers`` > 0 (the driver
            then only waits on its Train run).
        train_workers: 0 trains each trial in its own Tune process; more makes each trial a Ray
            Train run with that many workers (``run.ray`` sets their resources).
        address: Ray cluster to connect to; else ``RAY_ADDRESS``, else a local instance.
        verbose: Ray Tune's terminal output: 0 silent, 1 the status of the sweep (trials
            pending, running, finished, failed; the best so far), 2 also every reported result.
    """

    run: str | dict[str, Any]
    space: dict[str, dict[str, list[Any]]]
    output_dir: str
    metric: str = "val_loss"
    mode: Literal["min", "max"] = "min"
    num_samples: int = 8
    max_concurrent_trials: int = 2
    seed: int = 0
    scheduler: ASHAConfig | None = field(default_factory=ASHAConfig)
    trial_resources: dict[str, float] | None = None
    train_workers: int = 0
    address: str | None = None
    verbose: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.space:
            raise ConfigError("space: expected at least one parameter to search, found none")
        for key, spec in self.space.items():
            where = f"space.{key}"
            if not isinstance(spec, dict) or len(spec) != 1:
                raise ConfigError(
                    f"{where}: expected one distribution such as {{choice: [a, b]}} or "
                    f"{{loguniform: [low, high]}}, found {spec!r}"
                )
            (kind, arguments), *_ = spec.items()
            if kind not in DISTRIBUTIONS:
                raise ConfigError(
                    f"{where}: unknown distribution {kind!r}; expected one of {list(DISTRIBUTIONS)}"
                )
            if not isinstance(arguments, list) or not arguments:
                raise ConfigError(f"{where}.{kind}: expected a non-empty list, found {arguments!r}")
            if kind != "choice" and (len(arguments) != 2 or not arguments[0] < arguments[1]):
                raise ConfigError(
                    f"{where}.{kind}: expected [low, high] with low < high, found {arguments!r}"
                )
            if kind == "loguniform" and arguments[0] <= 0:
                raise ConfigError(f"{where}.loguniform: expected low > 0, found {arguments[0]}")
        for option in ("num_samples", "max_concurrent_trials"):
            if getattr(self, option) < 1:
                raise ConfigError(f"{option}: expected at least 1, found {getattr(self, option)}")
        if self.train_workers < 0:
            raise ConfigError(f"train_workers: expected >= 0, found {self.train_workers}")
        if self.verbose not in (0, 1, 2):
            raise ConfigError(f"verbose: expected 0, 1 or 2, found {self.verbose}")
        for name, amount in (self.trial_resources or {}).items():
            if not isinstance(amount, int | float) or amount < 0:
                raise ConfigError(
                    f"trial_resources.{name}: expected a number >= 0, found {amount!r}"
                )

    def driver_resources(self) -> dict[str, float]:
        """What each trial's driver (its Tune actor) reserves, in Tune's names (``cpu``, ...)."""
        if self.trial_resources is not None:
            return {name: float(amount) for name, amount in self.trial_resources.items()}
        return {"cpu": TRAIN_DRIVER_CPUS if self.train_workers else 1.0}

    def candidates(self, key: str) -> list[Any]:
        """Representative values of a parameter: every choice, or the bounds of a range."""
        ((kind, arguments),) = self.space[key].items()
        if kind == "randint":
            return [arguments[0], arguments[1] - 1]
        return list(arguments)


def load_sweep(
    path: str | os.PathLike[str], overrides: Sequence[str] = ()
) -> tuple[SweepConfig, dict[str, Any]]:
    """Read a sweep file and its base run config (as plain data, its values unchecked).

    ``overrides`` (``--set`` entries) apply to the sweep file with its base run in place of
    ``run`` (``run.training.epochs=3``). Relative paths are relative to the working directory,
    as everywhere (``run:`` when it names a file, ``output_dir``, and the base run's paths):
    they are made absolute here, before the trials run in their own working directories
    (:func:`multivae.run_config.absolute_paths`).

    Raises:
        ConfigError: For malformed YAML, unknown keys or bad distributions.
        FileNotFoundError: When the sweep file or its base run file does not exist.
    """
    from multivae.run_config import absolute_location, absolute_paths, apply_overrides

    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path}: expected a sweep file (YAML), found a folder")
    if not path.exists():
        raise FileNotFoundError(f"{path}: expected a sweep file (YAML), found nothing")
    text = path.read_text()
    try:
        raw = read_yaml(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({error})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sweep settings, found {raw!r}")
    run = raw.get("run")
    if isinstance(run, str) and run.strip():
        run_path = Path(run).expanduser().resolve()
        if not run_path.is_file():
            beside = (path.parent / run).resolve()
            hint = (
                f"; relative paths are relative to the working directory: did you mean "
                f"run: {beside}?"
                if beside.is_file()
                else ""
            )
            raise FileNotFoundError(
                f"{path}: run: expected a run config file, found nothing at {run_path}{hint}"
            )
        try:
            run = read_yaml(run_path.read_text())
        except yaml.YAMLError as error:
            raise ConfigError(f"{run_path}: not valid YAML ({error})") from None
        if not isinstance(run, dict):
            raise ConfigError(f"{run_path}: expected a run config mapping, found {run!r}")
    try:
        raw = apply_overrides({**raw, "run": run}, overrides)
        sweep = SweepConfig.from_dict(raw)
    except ConfigError as error:
        given = [override.partition("=")[0] for override in overrides]
        raise locate(error, path, text, given) from None
    if not isinstance(sweep.run, dict):
        raise ConfigError(f"{path}: run: expected a run config mapping, found {sweep.run!r}")
    base = absolute_paths(sweep.run)
    return replace(sweep, run=base, output_dir=absolute_location(sweep.output_dir)), base


def with_params(base: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    """The base run config (plain data) with each dotted key set to its value."""
    raw = copy.deepcopy(dict(base))
    for key, value in params.items():
        target = raw
        parts = key.split(".")
        for part in parts[:-1]:
            if not isinstance(target.get(part), dict):
                target[part] = {}
            target = target[part]
        target[parts[-1]] = value
    return raw


def check_sweep(sweep: SweepConfig, base: Mapping[str, Any], *, with_data: bool = True) -> None:
    """Refuse a sweep whose keys or values the run config or a model would refuse.

    Every value of every ``choice`` (and both bounds of every range) is tried in the base
    config, one key at a time, with every model the sweep may pick; the dataset's schema fills
    the modalities. Without ``with_data`` (the pipeline's first step, before the dataset is
    written), the model options are checked by name only.

    Raises:
        ConfigError: Naming the parameter, the model and the refused key (with a suggestion).
        DataFormatError: When the run's dataset cannot be opened.
    """
    from multivae.data.reader import MultimodalDataset
    from multivae.factory import get_model_class
    from multivae.run_config import (
        RunConfig,
        check_option_names,
        resolve_dataset,
        resolve_model_config,
    )

    try:
        config = RunConfig.from_dict(with_params(base, {}))
    except ConfigError as error:
        raise ConfigError(f"sweep: run: {error}") from None
    schema = MultimodalDataset(resolve_dataset(config), "train").schema if with_data else None
    models = sweep.candidates("model") if "model" in sweep.space else [config.model]
    # One key at a time, so that the error names the key that is refused.
    checks = [({"model": model}, "model", model) for model in models]
    for key in sweep.space:
        if key != "model":
            checks += [
                ({"model": model, key: value}, key, value)
                for model in models
                for value in sweep.candidates(key)
            ]
    for params, key, value in checks:
        where = f"sweep: space.{key} = {value!r} (model {params['model']})"
        try:
            candidate = RunConfig.from_dict(with_params(base, params))
            if schema is None:
                check_option_names(candidate.model, candidate.model_config, "")
            else:
                resolved = resolve_model_config(candidate, schema)
                get_model_class(candidate.model).config_class.from_dict(resolved)
        except ConfigError as error:
            raise ConfigError(f"{where}: {error}") from None


def search_space(sweep: SweepConfig) -> dict[str, Any]:
    """The sweep's ``space`` as Ray Tune's distributions (``tune.choice``, ...)."""
    from ray import tune

    space = {}
    for key, spec in sweep.space.items():
        ((kind, arguments),) = spec.items()
        if kind == "choice":
            space[key] = tune.choice(arguments)
        elif kind == "uniform":
            space[key] = tune.uniform(*arguments)
        elif kind == "loguniform":
            space[key] = tune.loguniform(*arguments)
        else:
            space[key] = tune.randint(*arguments)
    return space
