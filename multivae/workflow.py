"""The pipeline's steps as library calls: what each Kubeflow component runs.

``preprocess -> train -> evaluate -> sample-augmentation -> register``. Each step reads and
writes plain folders, so the components in ``components/`` only map KFP artifacts to paths and
call these functions (and the steps run, and are tested, without KFP):

* :func:`preprocess_step`: checks every pipeline parameter first (a bad model name or missing
  rate fails here, before any work), writes the validated Parquet splits of a built-in dataset
  or of a converter source, trains the per-modality classifiers that judge coherence into
  ``DATA/classifiers``, and opens the pipeline's parent MLflow run;
* :func:`train_step`: one training run or a sweep, in this process, on Ray Train, on an existing
  Ray cluster through Ray Job Submission, or as a KubeRay ``RayJob``;
* :func:`evaluate_step`: :func:`multivae.metrics.evaluate`;
* :func:`augment_step`: a latent sampler fitted on the train latents and a synthetic dataset;
* :func:`register_step`: the Hub folder (model files and a model card with the metrics), pushed
  to the Hub unless it is a dry run, and a version in the MLflow model registry.

MLflow: the parent run is created by the first step and finished by the last; every step logs a
run nested under it (training's run is the one :class:`~multivae.integrations.mlflow.
MLflowCallback` logs), and the registered model version comes from the training run that the
evaluation scored.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import html
import json
import math
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from multivae.config import ConfigError, _suggest
from multivae.io import atomic_copy_tree, atomic_write_text

STEPS = ("preprocess", "train", "evaluate", "sample-augmentation", "register")
"""The pipeline's steps, in order."""

TRAIN_MODES = ("local", "ray", "ray-job", "rayjob")
"""``local``: in the step's process; ``ray``: Ray Train workers on a local Ray instance (or
``RAY_ADDRESS``); ``ray-job``: Ray Job Submission to an existing cluster; ``rayjob``: a KubeRay
``RayJob`` custom resource."""

SAMPLER_KINDS = ("prior", "gmm", "maf", "iaf")
EXPERIMENT = "multivae"
SUMMARY_FILE = "summary.json"
STEP_TAG = "multivae.step"


# ------------------------------------------------------------------------------------------------
# Parameters


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
    from multivae.integrations.tune import SweepConfig
    from multivae.registry import get_model_class
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
    model_class = get_model_class(model)  # an unknown name fails with the closest known one
    # Only the keys: the modalities are filled in from the dataset when training starts.
    known = [f.name for f in dataclasses.fields(model_class.config_class)]
    for key in model_config:
        if key not in known:
            raise ConfigError(f"model_config: {model} has no option {key!r}.{_suggest(key, known)}")
    try:
        TrainingConfig.from_dict(dict(training or {}))
    except ConfigError as error:
        raise ConfigError(f"training: {error}") from None
    if sweep.strip():
        try:
            raw = yaml.safe_load(sweep)
        except yaml.YAMLError as error:
            raise ConfigError(f"sweep: not valid YAML ({error})") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"sweep: expected the text of a sweep file, found {raw!r}")
        raw = {**raw, "run": {}, "output_dir": "unused"}
        try:
            SweepConfig.from_dict(raw)
        except ConfigError as error:
            raise ConfigError(f"sweep: {error}") from None
    if train_mode not in TRAIN_MODES:
        raise ConfigError(f"train_mode: expected one of {list(TRAIN_MODES)}, found {train_mode!r}")
    if sampler not in SAMPLER_KINDS:
        raise ConfigError(f"sampler: expected one of {list(SAMPLER_KINDS)}, found {sampler!r}")
    if isinstance(n_synthetic, bool) or not isinstance(n_synthetic, int) or n_synthetic < 1:
        raise ConfigError(f"n_synthetic: expected an integer >= 1, found {n_synthetic!r}")


# ------------------------------------------------------------------------------------------------
# MLflow


def tracking_uri_for(uri: str, folder: str | os.PathLike[str]) -> str:
    """``uri``, else ``MLFLOW_TRACKING_URI``, else a SQLite store in ``folder``."""
    if uri:
        return uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    path = Path(folder).resolve() / "mlflow.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


@contextlib.contextmanager
def step_run(
    tracking_uri: str, parent_run_id: str, step: str, params: Mapping[str, Any] | None = None
) -> Iterator[tuple[Any, str]]:
    """An MLflow run for one pipeline step, nested under the pipeline's run.

    Yields the client and the run id; the run ends ``FINISHED``, or ``FAILED`` when the block
    raises.
    """
    from mlflow import MlflowClient

    from multivae.integrations.mlflow import experiment_id_for, flatten_config, package_version

    client = MlflowClient(tracking_uri)
    tags = {STEP_TAG: step, "multivae.version": package_version()}
    if parent_run_id:
        experiment_id = client.get_run(parent_run_id).info.experiment_id
        tags["mlflow.parentRunId"] = parent_run_id
    else:
        experiment_id = experiment_id_for(client, EXPERIMENT)
    run = client.create_run(experiment_id, run_name=step, tags=tags)
    run_id = str(run.info.run_id)
    for key, value in flatten_config(dict(params or {})).items():
        client.log_param(run_id, key, value)
    status = "FAILED"
    try:
        yield client, run_id
        status = "FINISHED"
    finally:
        client.set_terminated(run_id, status)


_METRIC_KEY = re.compile(r"[^A-Za-z0-9_\-./ ]")
_SKIPPED = ("config", "pairs", "counts", "per_subset", "data", "model", "split")


def scalar_metrics(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The finite numbers of a nested metrics document, keyed by dotted path (MLflow-safe).

    Per-pair coherences, per-subset probes and counts are left out (the summaries stay).
    """
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if key in _SKIPPED:
            continue
        name = _METRIC_KEY.sub("_", f"{prefix}{key}")
        if isinstance(value, Mapping):
            out.update(scalar_metrics(value, f"{name}."))
        elif (
            isinstance(value, int | float)
            and not isinstance(value, bool)
            and math.isfinite(float(value))
        ):
            out[name] = float(value)
    return out


def _log_metrics(client: Any, run_id: str, metrics: Mapping[str, float]) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    items = [Metric(key, value, now, 0) for key, value in metrics.items()]
    for start in range(0, len(items), 500):
        client.log_batch(run_id, metrics=items[start : start + 500])


# ------------------------------------------------------------------------------------------------
# Steps


def preprocess_step(
    out: str | os.PathLike[str],
    *,
    dataset: str = "poly-digits",
    missing_rate: float = 0.5,
    seed: int = 0,
    dataset_params: Mapping[str, Any] | None = None,
    source: Mapping[str, Any] | None = None,
    classifier_epochs: int = 5,
    tracking_uri: str = "",
    run_name: str = "pipeline",
    parameters: Mapping[str, Any] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Check the pipeline's parameters, write the dataset and its classifiers.

    Args:
        out: The dataset folder (``train/``, ``val/``, ``test/``, ``classifiers/``).
        dataset: A built-in dataset, or ``polymnist`` / ``mnist-svhn`` with ``source``.
        missing_rate: Probability that a modality is missing from a train or val sample.
        seed: Seed of the generator (and the converters' splits).
        dataset_params: Parameters of the built-in generator, e.g. ``{"n_train": 4000}``.
        source: For converters: ``{"path": ...}`` (PolyMNIST) or ``{"mnist": ..., "svhn":
            ...}``.
        classifier_epochs: Epochs of the coherence classifiers (0: none are trained).
        tracking_uri: MLflow; empty for ``MLFLOW_TRACKING_URI`` or ``out/../mlflow.db``.
        run_name: Name of the pipeline's parent MLflow run.
        parameters: Every pipeline parameter, checked (:func:`check_parameters` keys) and
            logged on the parent run.
        progress: Show progress bars.

    Returns:
        The dataset summary, with ``mlflow_parent_run_id``, ``tracking_uri`` and the classifiers'
        test accuracies.
    """
    from multivae.data.datasets import convert_mnist_svhn, convert_polymnist, prepare_builtin
    from multivae.data.summary import summarize
    from multivae.integrations.mlflow import run_tags, start_parent_run
    from multivae.metrics import train_classifiers

    dataset_params = integral(dataset_params or {})
    check_parameters(
        **{
            "dataset": dataset,
            "missing_rate": missing_rate,
            "source": source,
            **{k: v for k, v in (parameters or {}).items() if k in _CHECKED},
        }
    )
    out = Path(out)
    tracking_uri = tracking_uri_for(tracking_uri, out.parent)
    parent = start_parent_run(
        tracking_uri,
        EXPERIMENT,
        run_name,
        params=dict(parameters or {}),
        tags={**run_tags(str((parameters or {}).get("model", ""))), "multivae.kind": "pipeline"},
    )
    with step_run(tracking_uri, parent, "preprocess", {"dataset": dataset}) as (client, run_id):
        if dataset == "polymnist":
            convert_polymnist(
                source["path"],  # type: ignore[index]
                out,
                seed=seed,
                missing_rate=missing_rate,
                progress=progress,
            )
        elif dataset == "mnist-svhn":
            convert_mnist_svhn(
                source["mnist"],  # type: ignore[index]
                source["svhn"],  # type: ignore[index]
                out,
                seed=seed,
                missing_rate=missing_rate,
                progress=progress,
            )
        else:
            prepare_builtin(
                dataset, out, missing_rate=missing_rate, seed=seed, **dict(dataset_params or {})
            )
        summary = summarize(out, validate=True)
        accuracy: dict[str, float] = {}
        if classifier_epochs > 0 and summary.get("num_classes"):
            classifiers = train_classifiers(
                out, epochs=classifier_epochs, seed=seed, progress=progress
            )
            accuracy = {k: float(v) for k, v in classifiers.accuracy.items() if v is not None}
        summary = {
            **summary,
            "classifier_test_accuracy": accuracy,
            "mlflow_parent_run_id": parent,
            "tracking_uri": tracking_uri,
        }
        atomic_write_text(out / SUMMARY_FILE, json.dumps(summary, indent=2, default=str))
        _log_metrics(
            client,
            run_id,
            {
                **{f"classifier_accuracy.{k}": v for k, v in accuracy.items()},
                **{
                    f"samples.{split}": float(info["rows"])
                    for split, info in summary["splits"].items()
                },
            },
        )
        client.log_artifact(run_id, str(out / SUMMARY_FILE))
    return summary


_CHECKED = (
    "model",
    "model_config",
    "training",
    "sweep",
    "train_mode",
    "sampler",
    "n_synthetic",
)


def _base_run(
    data: Path,
    out: Path,
    model: str,
    model_config: Mapping[str, Any],
    training: Mapping[str, Any],
    tracking_uri: str,
    parent_run_id: str,
) -> dict[str, Any]:
    return {
        "model": model,
        "data": str(data),
        "output_dir": str(out),
        "model_config": dict(model_config),
        "training": {"progress_bar": False, **dict(training)},
        "mlflow": {
            "enabled": True,
            "tracking_uri": tracking_uri,
            "experiment": EXPERIMENT,
            "run_name": "train",
            "parent_run_id": parent_run_id or None,
        },
    }


def train_step(
    data: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    model: str = "mopoe",
    model_config: Mapping[str, Any] | None = None,
    training: Mapping[str, Any] | None = None,
    sweep: str = "",
    mode: str = "local",
    num_workers: int = 2,
    ray_address: str = "",
    shared_dir: str = "",
    namespace: str = "",
    image: str = "",
    ray_cluster: str = "",
    ray_auth_secret: str = "",
    tracking_uri: str = "",
    parent_run_id: str = "",
    timeout_s: float = 24 * 3600.0,
) -> dict[str, Any]:
    """Train (or sweep) and put the model folder, ``run.yaml`` and ``metrics.json`` in ``out``.

    Args:
        data: The dataset folder from :func:`preprocess_step`.
        out: The model artifact folder: ``model/``, ``run.yaml``, ``metrics.json``, ``train.json``.
        model: A registered model name.
        model_config: The model's options.
        training: :class:`~multivae.training.TrainingConfig` entries.
        sweep: The text of a sweep file (its ``space``, ``num_samples``, scheduler, ...); its
            base run is this step's. Empty: one training run.
        mode: One of :data:`TRAIN_MODES`.
        num_workers: Ray Train workers (modes other than ``local``).
        ray_address: The cluster's Ray Job Submission address (``http://head:8265``) for
            ``ray-job``; the Ray address for ``ray`` (empty: local Ray or ``RAY_ADDRESS``).
        shared_dir: A folder the step and the Ray cluster both see (``ray-job``, ``rayjob``):
            the data and the run are staged there.
        namespace: Kubernetes namespace of the ``RayJob`` (``rayjob``).
        image: Container image of the ``RayJob``'s submitter (``rayjob``).
        ray_cluster: Name of the RayCluster the ``RayJob`` runs on (``rayjob``).
        ray_auth_secret: Secret with the cluster's Ray auth token, for the ``RayJob``'s
            submitter (``rayjob``; empty without token auth).
        tracking_uri: MLflow tracking URI.
        parent_run_id: The pipeline's MLflow run.
        timeout_s: Longest wait for a remote job.

    Returns:
        ``{"mlflow_run_id", "metrics", "mode", "sweep"}``, also written to ``out/train.json``.
    """
    from multivae.run import RunConfig, run_training

    data = Path(data).resolve()
    out = Path(out).resolve()
    model_config, training = integral(model_config or {}), integral(training or {})
    tracking_uri = tracking_uri_for(tracking_uri, out.parent)
    if mode not in TRAIN_MODES:
        raise ConfigError(f"train_mode: expected one of {list(TRAIN_MODES)}, found {mode!r}")

    # The run's working folder (checkpoints, trials) sits beside the artifact, which keeps
    # only what later steps use.
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(
        prefix=f".{out.name}-work-", dir=out.parent, ignore_cleanup_errors=True
    ) as scratch:
        work = Path(scratch)
        base = _base_run(
            data, work / "run", model, model_config, training, tracking_uri, parent_run_id
        )
        if mode in ("ray-job", "rayjob"):
            result_dir = _train_remotely(
                base,
                sweep,
                mode,
                num_workers,
                ray_address,
                shared_dir,
                namespace,
                image,
                ray_cluster,
                ray_auth_secret,
                timeout_s,
            )
        elif sweep.strip():
            workers = num_workers if mode == "ray" else 0
            result_dir = _sweep_here(base, sweep, work / "sweep", workers)
        else:
            if mode == "ray":
                base["ray"] = {"num_workers": num_workers, "address": ray_address or None}
            run_training(RunConfig.from_dict(base))
            result_dir = work / "run"
        out.mkdir(parents=True, exist_ok=True)
        atomic_copy_tree(result_dir / "model", out / "model")
        for name in ("run.yaml", "metrics.json"):
            shutil.copy2(result_dir / name, out / name)
        run_id = _mlflow_run_id(result_dir)
    metrics = json.loads((out / "metrics.json").read_text())
    record = {"mlflow_run_id": run_id, "metrics": metrics, "mode": mode, "sweep": bool(sweep)}
    atomic_write_text(out / "train.json", json.dumps(record, indent=2, default=str))
    return record


def _mlflow_run_id(result_dir: Path) -> str:
    """The MLflow run of a finished training run (or of a sweep's best trial)."""
    own = result_dir / "mlflow_run.json"
    if own.is_file():
        return str(json.loads(own.read_text())["run_id"])
    best = result_dir.parent / "best.json"
    if best.is_file():
        trial = json.loads(best.read_text())["trial_id"]
        path = result_dir.parent / "trials" / trial / "mlflow_run.json"
        if path.is_file():
            return str(json.loads(path.read_text())["run_id"])
    return ""


def _sweep_document(sweep: str, base: Mapping[str, Any], output_dir: Path) -> dict[str, Any]:
    raw = yaml.safe_load(sweep)
    if not isinstance(raw, dict):
        raise ConfigError(f"sweep: expected the text of a sweep file, found {raw!r}")
    return {**raw, "run": dict(base), "output_dir": str(output_dir)}


def _sweep_here(base: dict[str, Any], sweep: str, output_dir: Path, train_workers: int) -> Path:
    from multivae.integrations.tune import SweepConfig, run_sweep

    document = _sweep_document(sweep, base, output_dir)
    if train_workers:
        document["train_workers"] = train_workers
    config = SweepConfig.from_dict(document)
    result = run_sweep(config, dict(base), tracking_uri=base["mlflow"]["tracking_uri"])
    return result.best_dir


def _train_remotely(
    base: dict[str, Any],
    sweep: str,
    mode: str,
    num_workers: int,
    ray_address: str,
    shared_dir: str,
    namespace: str,
    image: str,
    ray_cluster: str,
    ray_auth_secret: str,
    timeout_s: float,
) -> Path:
    """Stage the data and config on shared storage, run the job on the cluster, wait."""
    from multivae.integrations.kuberay import run_ray_job, run_rayjob

    if not shared_dir:
        raise ConfigError(
            f"train_mode {mode!r}: expected shared_dir, a folder that this step and the Ray "
            "cluster both mount (the RayCluster's shared volume), found none"
        )
    stamp = time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}"
    stage = Path(shared_dir) / "pipeline-runs" / stamp
    atomic_copy_tree(Path(base["data"]), stage / "data")
    run = {**base, "data": str(stage / "data"), "output_dir": str(stage / "run")}
    if sweep.strip():
        document = _sweep_document(sweep, run, stage / "sweep")
        document["train_workers"] = num_workers
        config_path = stage / "sweep.yaml"
        atomic_write_text(config_path, yaml.safe_dump(document, sort_keys=False))
        entrypoint = f"multivae tune --sweep {config_path}"
        result = stage / "sweep" / "best"
    else:
        config_path = stage / "run.yaml"
        atomic_write_text(config_path, yaml.safe_dump(run, sort_keys=False))
        entrypoint = f"multivae train --config {config_path} --ray --num-workers {num_workers}"
        result = stage / "run"
    if mode == "ray-job":
        run_ray_job(ray_address, entrypoint, timeout_s=timeout_s)
    else:
        run_rayjob(
            entrypoint,
            name=f"multivae-{stamp}",
            namespace=namespace,
            image=image,
            ray_cluster=ray_cluster,
            auth_secret=ray_auth_secret,
            timeout_s=timeout_s,
        )
    return result


def evaluate_step(
    model_dir: str | os.PathLike[str],
    data: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    evaluation: Mapping[str, Any] | None = None,
    tracking_uri: str = "",
    parent_run_id: str = "",
    train_run_id: str = "",
) -> dict[str, Any]:
    """Evaluate the model; log the scalar metrics and figures to MLflow.

    Args:
        model_dir: The model artifact folder (its ``model/``) or a model folder.
        data: The dataset folder, with ``classifiers/``.
        out: Where ``metrics.json`` and ``figures/`` go.
        evaluation: :class:`~multivae.metrics.EvaluationConfig` entries.
        tracking_uri: MLflow tracking URI.
        parent_run_id: The pipeline's MLflow run.
        train_run_id: The training run evaluated (tagged on the evaluation run).

    Returns:
        The metrics, as in ``metrics.json``.
    """
    from multivae.metrics import EvaluationConfig, evaluate

    model_path = _model_folder(model_dir)
    config = EvaluationConfig.from_dict(integral(evaluation or {}))
    out = Path(out)
    tracking_uri = tracking_uri_for(tracking_uri, out.parent)
    with step_run(tracking_uri, parent_run_id, "evaluate", config.to_dict()) as (client, run_id):
        if train_run_id:
            client.set_tag(run_id, "multivae.train_run_id", train_run_id)
        metrics = evaluate(model_path, data, out, config, progress=False)
        _log_metrics(client, run_id, scalar_metrics(metrics))
        client.log_artifact(run_id, str(out / "metrics.json"))
        if (out / "figures").is_dir():
            client.log_artifacts(run_id, str(out / "figures"), "figures")
    return metrics


def _model_folder(path: str | os.PathLike[str]) -> Path:
    folder = Path(path)
    return folder / "model" if (folder / "model" / "config.json").is_file() else folder


def figures_html(folder: str | os.PathLike[str], title: str) -> str:
    """A self-contained HTML page of every PNG in ``folder`` (for KFP's HTML artifact)."""
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    for path in sorted(Path(folder).glob("*.png")):
        encoded = base64.b64encode(path.read_bytes()).decode()
        parts.append(
            f"<figure><img alt='{html.escape(path.stem)}' src='data:image/png;base64,{encoded}'>"
            f"<figcaption>{html.escape(path.stem)}</figcaption></figure>"
        )
    parts.append("</body></html>")
    return "\n".join(parts)


def augment_step(
    model_dir: str | os.PathLike[str],
    data: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    sampler: str = "gmm",
    n: int = 1000,
    seed: int = 0,
    sampler_dir: str | os.PathLike[str] | None = None,
    tracking_uri: str = "",
    parent_run_id: str = "",
) -> dict[str, Any]:
    """Fit ``sampler`` on the train latents and write ``n`` synthetic samples to ``out``.

    The output is labelled by the dataset's classifiers when it has them. Returns the synthetic
    dataset's summary (validated).
    """
    from multivae.augment import sample_dataset
    from multivae.data.summary import summarize
    from multivae.hub import load_model
    from multivae.metrics.classifiers import ClassifierSet

    model = load_model(_model_folder(model_dir))
    classifier_dir = Path(data) / "classifiers"
    label_with = ClassifierSet.load(classifier_dir) if classifier_dir.is_dir() else None
    out = Path(out)
    tracking_uri = tracking_uri_for(tracking_uri, out.parent)
    params = {"sampler": sampler, "n": n, "seed": seed}
    with step_run(tracking_uri, parent_run_id, "sample-augmentation", params) as (client, run_id):
        sample_dataset(
            model,
            n,
            out,
            sampler=sampler,
            fit_data=None if sampler == "prior" else data,
            seed=seed,
            progress=False,
            model_path=_model_folder(model_dir),
            label_with=label_with,
            save_sampler=None if sampler == "prior" or sampler_dir is None else sampler_dir,
        )
        summary = summarize(out, validate=True)
        client.log_dict(run_id, summary, "synthetic_summary.json")
        _log_metrics(client, run_id, {"samples": float(n)})
    return summary


def register_step(
    model_dir: str | os.PathLike[str],
    metrics: Mapping[str, Any],
    data_summary: Mapping[str, Any],
    out: str | os.PathLike[str],
    *,
    hub_repo: str = "",
    dry_run: bool = True,
    token: str | None = None,
    registered_name: str = "multivae",
    tracking_uri: str = "",
    parent_run_id: str = "",
    train_run_id: str = "",
    private: bool = True,
) -> dict[str, Any]:
    """Write the Hub folder, push it (unless ``dry_run``), register it in MLflow.

    The folder ``out`` holds the model's files and a model card with the evaluation metrics,
    the dataset description, intended use and limits: exactly what is pushed. It is written
    first, so a push that fails (no token, no network) loses nothing. The model version is
    registered from the training run (``train_run_id``) that the evaluation scored. The last
    step of the pipeline: it also ends the pipeline's parent run.

    Raises:
        PermissionError: When pushing without a Hugging Face token (``HF_TOKEN`` or a saved
            login), with what to do.
        ValueError: When pushing without ``hub_repo``.

    Returns:
        ``{"hub_folder", "pushed", "repo_url", "registered_model", "registered_version"}``.
    """
    from multivae.hub import hub_folder, push_to_hub
    from multivae.integrations.mlflow import finish_run, register_model

    source = _model_folder(model_dir)
    out = Path(out)
    tracking_uri = tracking_uri_for(tracking_uri, out.parent)
    params = {"hub_repo": hub_repo, "dry_run": dry_run, "registered_name": registered_name}
    status = "FAILED"
    try:
        with step_run(tracking_uri, parent_run_id, "register", params) as (client, run_id):
            hub_folder(source, out, metrics=metrics, data_summary=data_summary, repo_id=hub_repo)
            record: dict[str, Any] = {"hub_folder": str(out), "pushed": False, "repo_url": None}
            if not dry_run:
                record["repo_url"] = push_to_hub(out, hub_repo, token=token, private=private)
                record["pushed"] = True
                client.set_tag(run_id, "multivae.hub_repo", hub_repo)
            version = None
            if train_run_id:
                version = register_model(
                    tracking_uri, train_run_id, registered_name, model_dir=source
                )
                client.set_tag(run_id, "multivae.registered_version", version)
            record["registered_model"] = registered_name if version else None
            record["registered_version"] = version
            client.log_dict(run_id, record, "register.json")
        status = "FINISHED"
    finally:
        if parent_run_id:
            finish_run(tracking_uri, parent_run_id, status)
    return record
