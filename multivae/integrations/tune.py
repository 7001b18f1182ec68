"""Hyperparameter sweeps: Ray Tune trials proposed by Optuna (TPE), pruned by ASHA.

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
the sweep may pick, before Ray starts: a misspelled key is an error with a suggestion.

Each trial is a real training run (:func:`multivae.run.run_training`) in
``output_dir/trials/<trial id>`` that reports each epoch to Tune, so ASHA can stop it early.
With ``train_workers`` > 0 the trial runs :func:`~multivae.integrations.ray_train.train_with_ray`
and Ray Train's ``TuneReportCallback`` forwards the workers' reports to Tune (the Tune + Train
pattern of Ray Train V2). MLflow: the sweep is one parent run, each trial a nested run. At the
end the best finished trial is exported to ``output_dir/best/`` (``model/``, ``run.yaml``,
``metrics.json``) and described in ``output_dir/best.json``.

Before any trial starts the sweep is sized to the cluster (:func:`plan_sweep`): a running trial
takes its driver's resources, its Train workers' and one CPU of headroom for its dataset's read
tasks; concurrency is lowered to what fits and a sweep that cannot fit is refused. A trial that
fails (an error in its run, a Train run out of restarts) is recorded as failed and the sweep
goes on; the best of the finished trials is exported.
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import yaml

from multivae.config import Config, ConfigError, locate, read_yaml
from multivae.io import claim_output, write_output_marker
from multivae.names import (
    BEST_FILE,
    BEST_FOLDER,
    METRICS_FILE,
    MLFLOW_RUN_FILE,
    MODEL_FOLDER,
    RUN_CONFIG_FILE,
    SWEEP_KIND,
    TRIALS_FOLDER,
    TUNE_COMMAND,
)
from multivae.training import Callback

DISTRIBUTIONS = ("choice", "uniform", "loguniform", "randint")


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


class TuneReportCallback(Callback):
    """Reports every epoch of a single-process trial to Ray Tune.

    Only metrics go to Tune: the trial's checkpoint stays in its own output folder, where
    ``multivae train --resume`` can continue it; copying it into Tune's storage every epoch
    would double the disk traffic for no use (trials are not paused and resumed by ASHA).
    """

    def on_epoch_end(self, epoch: int, metrics: Mapping[str, float | int | str]) -> bool:
        """``ray.tune.report`` the epoch's record."""
        import ray.tune

        ray.tune.report(dict(metrics))
        return False


def _search_space(sweep: SweepConfig) -> dict[str, Any]:
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


def _run_trial(params: dict[str, Any], context: dict[str, Any]) -> None:
    """One Tune trial: the base run with the trial's parameters, trained and reported."""
    import ray.tune

    from multivae.run import run_training
    from multivae.run_config import MLflowConfig, RunConfig

    trial = ray.tune.get_context()
    trial_id = trial.get_trial_id()
    raw = with_params(context["base"], params)
    raw["output_dir"] = str(Path(context["output_dir"]) / TRIALS_FOLDER / trial_id)
    config = RunConfig.from_dict(raw)
    config.mlflow = MLflowConfig(
        enabled=context["tracking_uri"] is not None,
        tracking_uri=context["tracking_uri"],
        experiment=context["experiment"],
        run_name=trial.get_trial_name(),
        parent_run_id=context["parent_run_id"],
    )
    config.training.progress_bar = False
    if context["train_workers"]:
        from ray.tune.integration.ray_train import TuneReportCallback as TrainToTune

        from multivae.integrations.ray_train import train_with_ray
        from multivae.run_config import RayConfig

        ray_config = config.ray or RayConfig()
        ray_config.num_workers = context["train_workers"]
        ray_config.name = trial_id
        config.ray = ray_config
        train_with_ray(config, ray_callbacks=[TrainToTune()])  # type: ignore[no-untyped-call]
    else:
        config.ray = None
        run_training(config, callbacks=[TuneReportCallback()])


@dataclass
class SweepResult:
    """What :func:`run_sweep` returns.

    Attributes:
        best_trial: Tune's id of the best finished trial.
        best_params: Its sampled parameters.
        best_metrics: Its final reported metrics.
        best_dir: ``output_dir/best`` (``model/``, ``run.yaml``, ``metrics.json``).
        trials: One entry per trial: id, status, parameters, last metric.
        parent_run_id: The sweep's MLflow parent run, or ``None``.
    """

    best_trial: str
    best_params: dict[str, Any]
    best_metrics: dict[str, Any]
    best_dir: Path
    trials: list[dict[str, Any]]
    parent_run_id: str | None


DATA_HEADROOM_CPUS = 1.0
"""CPUs left unreserved for each running trial whose training is a Ray Train run: Ray Data's
read tasks of its dataset need them (with every CPU held by trial drivers and Train workers they
get a budget of 0 and the trial waits forever)."""

TRAIN_DRIVER_CPUS = 0.25
"""CPUs a trial's driver reserves by default when the trial is a Ray Train run: it builds the
run and waits on Ray Train's controller, the workers do the work (the Tune-over-Train pattern of
the Ray Train guide)."""

_RAY_NAMES = {"cpu": "CPU", "gpu": "GPU"}


def _ray_resources(resources: Mapping[str, float]) -> dict[str, float]:
    """Tune's resource names (``cpu``, ``gpu``) as the cluster reports them (``CPU``, ``GPU``)."""
    return {_RAY_NAMES.get(name, name): float(amount) for name, amount in resources.items()}


@dataclass(frozen=True)
class SweepPlan:
    """The resources a sweep needs per running trial, and how many trials run at once.

    Attributes:
        driver: What each trial's Tune actor reserves (Ray's names: ``CPU``, ``GPU``, custom).
        workers: Ray Train workers per trial (``train_workers``; 0: the driver trains).
        per_worker: What each worker reserves (``run.ray``: CPUs, GPUs, custom resources).
        headroom_cpus: Left free per trial for its dataset's read tasks (0 without workers).
        cluster: The cluster's resources (``ray.cluster_resources()``, or those Ray is started
            with).
        concurrency: Trials run at once: ``max_concurrent_trials``, lowered to what fits.
    """

    driver: dict[str, float]
    workers: int
    per_worker: dict[str, float]
    headroom_cpus: float
    cluster: dict[str, float]
    concurrency: int

    @property
    def trial(self) -> dict[str, float]:
        """Everything one running trial takes, headroom included (resources it needs > 0)."""
        needs: dict[str, float] = {"CPU": self.headroom_cpus}
        for name, amount in self.driver.items():
            needs[name] = needs.get(name, 0.0) + amount
        for name, amount in self.per_worker.items():
            needs[name] = needs.get(name, 0.0) + self.workers * amount
        return {name: amount for name, amount in needs.items() if amount > 0}

    @property
    def trial_cpus(self) -> float:
        """CPUs one running trial takes, headroom included."""
        return self.trial.get("CPU", 0.0)

    def fits(self) -> int:
        """How many trials the cluster holds at once (by its totals of each resource)."""
        counts = [
            int((float(self.cluster.get(name, 0.0)) + 1e-9) // amount)
            for name, amount in self.trial.items()
        ]
        return min(counts) if counts else self.concurrency

    def describe(self) -> str:
        """One line: what a trial needs and what runs at once."""
        cpus = (
            f"driver {self.driver.get('CPU', 0.0):g} + {self.workers} worker(s) x "
            f"{self.per_worker.get('CPU', 0.0):g} + headroom {self.headroom_cpus:g}"
        )
        others = ", ".join(
            f"{amount:g} {name}" for name, amount in self.trial.items() if name != "CPU"
        )
        return (
            f"{self.concurrency} trial(s) at once, each {self.trial_cpus:g} CPUs ({cpus})"
            + (f" and {others}" if others else "")
            + f", on a cluster of {self.cluster.get('CPU', 0.0):g} CPUs"
        )


def _plan(sweep: SweepConfig, base: Mapping[str, Any], cluster: Mapping[str, float]) -> SweepPlan:
    from multivae.run_config import RayConfig

    workers = int(sweep.train_workers)
    per_worker: dict[str, float] = {}
    if workers:
        ray_config = RayConfig.from_dict(dict(with_params(base, {}).get("ray") or {}))
        per_worker = {"CPU": ray_config.cpus_per_worker, **ray_config.resources_per_worker}
        if ray_config.gpus_per_worker:
            per_worker["GPU"] = ray_config.gpus_per_worker
    return SweepPlan(
        driver=_ray_resources(sweep.driver_resources()),
        workers=workers,
        per_worker=per_worker,
        headroom_cpus=DATA_HEADROOM_CPUS if workers else 0.0,
        cluster={name: float(amount) for name, amount in cluster.items()},
        concurrency=sweep.max_concurrent_trials,
    )


def plan_sweep(
    sweep: SweepConfig, base: Mapping[str, Any], cluster: Mapping[str, float]
) -> SweepPlan:
    """Size the sweep's concurrency to the cluster's resources, or refuse a sweep that cannot fit.

    Args:
        sweep: The sweep.
        base: The base run config (plain data); its ``ray`` section sizes the Train workers.
        cluster: The cluster's resources in Ray's names (``ray.cluster_resources()``).

    Raises:
        ConfigError: When not even one trial fits, with what it needs and what there is.
    """
    plan = _plan(sweep, base, cluster)
    fits = plan.fits()
    if fits < 1:
        shortages = []
        for name, amount in plan.trial.items():
            have = plan.cluster.get(name, 0.0)
            if have + 1e-9 >= amount:
                continue
            why = ""
            if name == "CPU":
                why = (
                    f" (driver {plan.driver.get('CPU', 0.0):g} + {plan.workers} train_workers x "
                    f"{plan.per_worker.get('CPU', 0.0):g} cpus_per_worker + "
                    f"{plan.headroom_cpus:g} for its dataset's read tasks)"
                )
            shortages.append(f"{amount:g} {name}{why}, the Ray cluster has {have:g}")
        raise ConfigError(
            f"sweep: a trial needs {'; '.join(shortages)}. Lower train_workers, the per-worker "
            "resources (run.ray) or trial_resources, or use a larger cluster"
        )
    return replace(plan, concurrency=min(sweep.max_concurrent_trials, fits))


def run_sweep(
    sweep: SweepConfig, base: Mapping[str, Any], *, tracking_uri: str | None = None
) -> SweepResult:
    """Run a sweep with Ray Tune, Optuna's TPE sampler and ASHA; export the best trial.

    Args:
        sweep: The sweep.
        base: The base run config (plain data).
        tracking_uri: MLflow tracking URI; by default ``MLFLOW_TRACKING_URI``, else
            ``output_dir/mlflow.db``. MLflow is skipped when the base run disables it.

    Concurrency follows :func:`plan_sweep`. When this function starts Ray itself, the local
    instance gets at least the CPUs one trial needs (its logical CPUs may then exceed the
    machine's cores); a sweep that cannot fit a given cluster is refused before any trial
    starts.

    Raises:
        ConfigError: From :func:`check_sweep` or :func:`plan_sweep`, before any trial starts
            (before Ray starts, when it is started here).
        RuntimeError: When no trial finishes.
    """
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    from multivae.integrations.endpoints import check_ray_address, check_tracking_uri

    check_sweep(sweep, base)
    # The one output rule, before Ray starts: a sweep never writes over another or into files.
    claim_output(sweep.output_dir, SWEEP_KIND, TUNE_COMMAND, option="output_dir")
    tracking = dict(base.get("mlflow") or {})
    if tracking.get("enabled", True):
        # Before anything is written or started: an MLflow server that does not answer.
        uri = tracking_uri or tracking.get("tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI")
        if uri:
            check_tracking_uri(uri, "run.mlflow.tracking_uri")
    address = sweep.address or os.environ.get("RAY_ADDRESS")
    started_ray = not ray.is_initialized()
    if started_ray:
        check_ray_address(sweep.address, "address (the sweep file's)")
    local_cpus = None
    if started_ray and not address:
        # A local instance: planned before it starts, with the headroom of one trial at least.
        local_cpus = max(float(os.cpu_count() or 1), _plan(sweep, base, {}).trial_cpus)
        plan = plan_sweep(sweep, base, {"CPU": local_cpus, "GPU": float(_local_gpus())})
    # A Ray instance started here is shut down at the end; one the caller started stays.
    if started_ray:
        ray.init(address=address) if address else ray.init(
            address="local", num_cpus=math.ceil(local_cpus or 1)
        )
    try:
        if local_cpus is None:
            plan = plan_sweep(sweep, base, ray.cluster_resources())  # type: ignore[no-untyped-call]
        if sweep.train_workers and sweep.scheduler is not None and not _state_api_available():
            raise ConfigError(
                "sweep: ASHA stops Train trials early, and Ray Train (2.60) frees a stopped "
                "trial's worker group only through Ray's state API, which this cluster does not "
                "serve (it runs without the dashboard): the freed CPUs would never come back and "
                "later trials would wait forever. Start the cluster with the dashboard (ray start "
                "--head without --include-dashboard=false; ray.init(include_dashboard=True)), or "
                "set scheduler: null"
            )
    except ConfigError:
        if started_ray:
            ray.shutdown()
        raise
    print(f"sweep: {plan.describe()}", flush=True)
    output_dir = Path(sweep.output_dir).resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    write_output_marker(output_dir, SWEEP_KIND, TUNE_COMMAND)
    epochs = int(with_params(base, {}).get("training", {}).get("epochs", 10))
    mlflow_settings = dict(base.get("mlflow") or {})
    parent_run_id = None
    experiment = str(mlflow_settings.get("experiment", "multivae"))
    if mlflow_settings.get("enabled", True):
        from multivae.integrations.mlflow import default_tracking_uri, start_parent_run

        tracking_uri = (
            tracking_uri or mlflow_settings.get("tracking_uri") or default_tracking_uri(output_dir)
        )
        parent_run_id = start_parent_run(
            tracking_uri,
            experiment,
            f"sweep-{output_dir.name}",
            params={f"space.{k}": json.dumps(v) for k, v in sweep.space.items()},
            tags={
                "multivae.kind": "sweep",
                "multivae.metric": sweep.metric,
                # Inside a pipeline, the sweep is one of its steps.
                **(
                    {"mlflow.parentRunId": str(mlflow_settings["parent_run_id"])}
                    if mlflow_settings.get("parent_run_id")
                    else {}
                ),
            },
        )
    else:
        tracking_uri = None
    scheduler = (
        None
        if sweep.scheduler is None
        else ASHAScheduler(
            time_attr="training_iteration",
            # Past the last report: the scheduler must not stop a trial that is writing its
            # outputs after its last epoch.
            max_t=max(epochs, sweep.scheduler.grace_period) + 2,
            grace_period=sweep.scheduler.grace_period,
            reduction_factor=sweep.scheduler.reduction_factor,
        )
    )
    context = {
        "base": dict(base),
        "output_dir": str(output_dir),
        "tracking_uri": tracking_uri,
        "experiment": experiment,
        "parent_run_id": parent_run_id,
        "train_workers": sweep.train_workers,
    }
    trainable = tune.with_resources(
        tune.with_parameters(_run_trial, context=context), sweep.driver_resources()
    )
    tuner = tune.Tuner(
        trainable,
        param_space=_search_space(sweep),
        tune_config=tune.TuneConfig(
            metric=sweep.metric,
            mode=sweep.mode,
            num_samples=sweep.num_samples,
            max_concurrent_trials=plan.concurrency,
            search_alg=OptunaSearch(seed=sweep.seed),
            scheduler=scheduler,
        ),
        run_config=tune.RunConfig(
            name="tune",
            storage_path=str(output_dir),
            verbose=sweep.verbose,
            # A failed trial is recorded and the others go on; it is not retried (a Train
            # trial already had its restarts, ray.max_failures, and a retry would start over).
            failure_config=tune.FailureConfig(max_failures=0, fail_fast=False),
        ),
    )
    status = "FAILED"
    try:
        grid = tuner.fit()
        trials = _trial_table(sweep, grid, output_dir)
        if tracking_uri is not None:
            _close_stopped_trial_runs(tracking_uri, output_dir, trials)
        result = _export_best(sweep, grid, trials, output_dir, parent_run_id)
        status = "FINISHED"
    finally:
        if parent_run_id is not None and tracking_uri is not None:
            from multivae.integrations.mlflow import finish_run

            finish_run(tracking_uri, parent_run_id, status)
        if started_ray:
            ray.shutdown()
    return result


def _state_api_available() -> bool:
    """Whether the connected cluster answers Ray's state API (its dashboard runs)."""
    import ray
    from ray.util.state import list_nodes

    try:
        # The connected cluster's own address: another local cluster must not answer for it.
        address = ray.get_runtime_context().gcs_address
        list_nodes(address=address, limit=1, timeout=15, raise_on_missing_output=False)
    except Exception:  # RayStateApiException, or a connection error without a dashboard
        return False
    return True


def _local_gpus() -> int:
    """GPUs a local Ray instance started here would detect (those torch sees)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _error_text(error: BaseException) -> str:
    """The trial's own exception, ``Type: message`` (not Ray's wrapper with its traceback)."""
    cause = getattr(error, "cause", None)
    root = cause if isinstance(cause, BaseException) else error
    return f"{type(root).__name__}: {root}"


def _trial_table(sweep: SweepConfig, grid: Any, output_dir: Path) -> list[dict[str, Any]]:
    """One entry per trial: id, whether it finished (wrote its model), error, params, metric."""
    trials = []
    for result in grid:
        metrics = dict(result.metrics or {})
        trial_id = str(metrics.get("trial_id", ""))
        trial_dir = output_dir / TRIALS_FOLDER / trial_id
        trials.append(
            {
                "trial_id": trial_id,
                "finished": (trial_dir / METRICS_FILE).exists()
                and (trial_dir / MODEL_FOLDER).exists(),
                "error": None if result.error is None else _error_text(result.error),
                "params": dict(result.config),
                sweep.metric: metrics.get(sweep.metric),
                "epochs": metrics.get("epoch"),
            }
        )
    return trials


def _close_stopped_trial_runs(
    tracking_uri: str, output_dir: Path, trials: Sequence[Mapping[str, Any]]
) -> None:
    """Mark the MLflow runs of trials that ASHA stopped as KILLED (not FAILED), tagged so."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    for trial in trials:
        run_file = output_dir / TRIALS_FOLDER / trial["trial_id"] / MLFLOW_RUN_FILE
        if trial["finished"] or trial["error"] is not None or not run_file.exists():
            continue
        run_id = json.loads(run_file.read_text())["run_id"]
        client.set_tag(run_id, "multivae.stopped_early", "true")
        client.set_terminated(run_id, "KILLED")


def _export_best(
    sweep: SweepConfig,
    grid: Any,
    trials: list[dict[str, Any]],
    output_dir: Path,
    parent_run_id: str | None,
) -> SweepResult:
    best: tuple[float, Any] | None = None
    sign = 1.0 if sweep.mode == "min" else -1.0
    for result, trial in zip(grid, trials, strict=True):
        value = trial[sweep.metric]
        if trial["finished"] and isinstance(value, int | float) and math.isfinite(value):
            score = sign * float(value)
            if best is None or score < best[0]:
                best = (score, result)
    if best is None:
        raise RuntimeError(
            f"no trial of the sweep in {output_dir} finished with a finite {sweep.metric}; "
            f"trials: {json.dumps(trials, default=str)}"
        )
    result = best[1]
    best_id = str(result.metrics["trial_id"])
    source = output_dir / TRIALS_FOLDER / best_id
    staging = output_dir / f".{BEST_FOLDER}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    shutil.copytree(source / MODEL_FOLDER, staging / MODEL_FOLDER)
    for name in (METRICS_FILE, RUN_CONFIG_FILE):
        shutil.copy2(source / name, staging / name)
    if (output_dir / BEST_FOLDER).exists():
        shutil.rmtree(output_dir / BEST_FOLDER)
    os.replace(staging, output_dir / BEST_FOLDER)
    metrics = {k: v for k, v in result.metrics.items() if isinstance(v, int | float | str)}
    document = {
        "trial_id": best_id,
        "metric": sweep.metric,
        "mode": sweep.mode,
        "value": result.metrics[sweep.metric],
        "params": dict(result.config),
        "metrics": metrics,
        "model_dir": str(output_dir / BEST_FOLDER / MODEL_FOLDER),
        "mlflow_parent_run_id": parent_run_id,
        "trials": trials,
    }
    temporary = output_dir / f".{BEST_FILE}.tmp"
    temporary.write_text(json.dumps(document, indent=2, default=str))
    os.replace(temporary, output_dir / BEST_FILE)
    return SweepResult(
        best_trial=best_id,
        best_params=dict(result.config),
        best_metrics=metrics,
        best_dir=output_dir / BEST_FOLDER,
        trials=trials,
        parent_run_id=parent_run_id,
    )


def sweep_from_file(path: str | os.PathLike[str], overrides: Sequence[str] = ()) -> SweepResult:
    """``multivae tune --sweep FILE``: read, check and run a sweep."""
    sweep, base = load_sweep(path, overrides)
    return run_sweep(sweep, base)
