"""Hyperparameter sweeps: Ray Tune trials proposed by Optuna (TPE), pruned by ASHA.

The sweep comes from a sweep file (:mod:`~multivae.integrations.sweep_file`), is sized to the
cluster before any trial starts (:mod:`~multivae.integrations.sweep_plan`), and its best trial
is exported at the end (:mod:`~multivae.integrations.sweep_results`).

Each trial is a real training run (:func:`multivae.run.run_training`) in
``output_dir/trials/<trial id>`` that reports each epoch to Tune, so ASHA can stop it early.
With ``train_workers`` > 0 the trial runs :func:`~multivae.integrations.ray_train.train_with_ray`
and Ray Train's ``TuneReportCallback`` forwards the workers' reports to Tune (the Tune + Train
pattern of Ray Train V2). MLflow: the sweep is one parent run, each trial a nested run. A trial
that fails (an error in its run, a Train run out of restarts) is recorded as failed and the
sweep goes on.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from multivae.config import ConfigError
from multivae.integrations.ray_cluster import (
    check_cluster,
    cluster_address,
    local_cpus,
    local_gpus,
    start_ray,
)
from multivae.integrations.sweep_file import (
    SweepConfig,
    check_sweep,
    load_sweep,
    search_space,
    with_params,
)
from multivae.integrations.sweep_plan import make_plan, plan_sweep
from multivae.integrations.sweep_results import (
    SweepResult,
    close_stopped_trial_runs,
    export_best,
    trial_table,
)
from multivae.io import claim_output, write_output_marker
from multivae.names import SWEEP_KIND, TRIALS_FOLDER, TUNE_COMMAND
from multivae.training import Callback


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


def run_sweep(
    sweep: SweepConfig, base: Mapping[str, Any], *, tracking_uri: str | None = None
) -> SweepResult:
    """Run a sweep with Ray Tune, Optuna's TPE sampler and ASHA; export the best trial.

    Args:
        sweep: The sweep.
        base: The base run config (plain data).
        tracking_uri: MLflow tracking URI; by default ``MLFLOW_TRACKING_URI``, else
            ``output_dir/mlflow.db``. MLflow is skipped when the base run disables it.

    Concurrency follows :func:`~multivae.integrations.sweep_plan.plan_sweep`. When this
    function starts Ray itself, the local instance gets at least the CPUs one trial needs (its
    logical CPUs may then exceed the machine's cores); a sweep that cannot fit a given cluster
    is refused before any trial starts.

    Raises:
        ConfigError: From :func:`~multivae.integrations.sweep_file.check_sweep` or
            :func:`~multivae.integrations.sweep_plan.plan_sweep`, before any trial starts
            (before Ray starts, when it is started here).
        RuntimeError: When no trial finishes.
    """
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    from multivae.integrations.endpoints import check_tracking_uri

    check_sweep(sweep, base)
    # The one output rule, before Ray starts: a sweep never writes over another or into files.
    claim_output(sweep.output_dir, SWEEP_KIND, TUNE_COMMAND, option="output_dir")
    tracking = dict(base.get("mlflow") or {})
    if tracking.get("enabled", True):
        # Before anything is written or started: an MLflow server that does not answer.
        uri = tracking_uri or tracking.get("tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI")
        if uri:
            check_tracking_uri(uri, "run.mlflow.tracking_uri")
    started_ray = check_cluster(sweep.address, "address (the sweep file's)")
    cpus = None
    if started_ray and not cluster_address(sweep.address):
        # A local instance: planned before it starts, with the headroom of one trial at least.
        cpus = max(local_cpus(), make_plan(sweep, base, {}).trial_cpus)
        plan = plan_sweep(sweep, base, {"CPU": cpus, "GPU": float(local_gpus())})
    # A Ray instance started here is shut down at the end; one the caller started stays.
    if started_ray:
        start_ray(sweep.address, cpus or 1)
    try:
        if cpus is None:
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
        param_space=search_space(sweep),
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
        trials = trial_table(sweep, grid, output_dir)
        if tracking_uri is not None:
            close_stopped_trial_runs(tracking_uri, output_dir, trials)
        result = export_best(sweep, grid, trials, output_dir, parent_run_id)
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


def sweep_from_file(path: str | os.PathLike[str], overrides: Sequence[str] = ()) -> SweepResult:
    """``multivae tune --sweep FILE``: read, check and run a sweep."""
    sweep, base = load_sweep(path, overrides)
    return run_sweep(sweep, base)
