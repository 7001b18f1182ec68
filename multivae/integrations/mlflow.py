"""MLflow tracking of training runs: params, tags, per-epoch metrics, artifacts and the registry.

:class:`MLflowCallback` records one :class:`~multivae.training.Trainer` run as one MLflow run:
the run config as flattened params (:func:`flatten_config`), tags naming the model, the data
(:func:`dataset_fingerprint`), the package version and the git commit (:func:`run_tags`), every
numeric metric of every epoch with ``step=epoch``, and at the end ``run.yaml``,
``metrics.json``, the model folder (under ``model/``) and any ``*.png`` figures as artifacts. A
resumed run continues the same MLflow run, whose id is kept in ``output_dir/mlflow_run.json``.

Everything goes through an explicit :class:`~mlflow.tracking.MlflowClient` bound to one tracking
URI; nothing uses MLflow's global "active run", so several runs can be tracked from one process
(Ray Tune trials in threads). Under ``torch.distributed`` only rank 0 talks to MLflow.

:func:`register_model` turns a run's model folder into an MLflow pyfunc model, logged as
"models from code" (:mod:`multivae.integrations.mlflow_pyfunc`; nothing is pickled), and
registers it in the model registry. :func:`start_parent_run` and :func:`finish_run` frame sweeps
and pipelines: one parent run, one nested run per trial or step (``parent_run_id``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow.entities import LoggedModelOutput, LoggedModelStatus, Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT, MLFLOW_PARENT_RUN_ID
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH

from multivae.config import flatten_mapping
from multivae.data.fingerprint import dataset_fingerprint
from multivae.distribution import DISTRIBUTION, installed_version
from multivae.names import (
    FIGURES_FOLDER,
    METRICS_FILE,
    MLFLOW_ARTIFACTS_FOLDER,
    MLFLOW_DATABASE_FILE,
    MLFLOW_RUN_FILE,
    MODEL_CONFIG_FILE,
    MODEL_FOLDER,
    PYFUNC_MODEL_ARTIFACT,
    RUN_CONFIG_FILE,
)
from multivae.redact import redact
from multivae.training import Callback, Trainer, TrainingResult, distributed_rank

PYFUNC_CODE = Path(__file__).with_name("mlflow_pyfunc.py")
TRUNCATED = "...[truncated]"
"""Ends a param value cut to MLflow's length limit (the full config is in ``run.yaml``)."""
_SQLITE_PREFIX = "sqlite:///"
_logger = logging.getLogger(__name__)


def default_tracking_uri(output_dir: str | os.PathLike[str]) -> str:
    """``MLFLOW_TRACKING_URI`` when set, else the SQLite file ``output_dir/mlflow.db``.

    The folder is created. Artifacts of experiments created in that store go to
    ``output_dir/mlartifacts``.
    """
    if uri := os.environ.get("MLFLOW_TRACKING_URI"):
        return uri
    folder = Path(output_dir).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    return f"{_SQLITE_PREFIX}{folder / MLFLOW_DATABASE_FILE}"


def _param_value(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), default=str)


def flatten_config(mapping: Mapping[str, Any], limit: int = MAX_PARAM_VAL_LENGTH) -> dict[str, str]:
    """A nested config as MLflow params: dotted keys, string values.

    Nested mappings become dotted keys (``training.optimizer.kwargs.lr``); an empty mapping
    stays as ``{}``. Strings are kept as they are and every other value is written as compact
    JSON (``0.001``, ``true``, ``null``, ``[64,32]``); credentials in URIs are redacted
    (:func:`multivae.redact.redact`). A value longer than ``limit`` (MLflow's
    limit on param values) is cut to ``limit`` characters ending with :data:`TRUNCATED`, so
    logging never fails; the full config is logged as the ``run.yaml`` artifact.
    """
    flat: dict[str, str] = {}
    for key, value in flatten_mapping(mapping, "").items():
        text = redact(_param_value(value))
        flat[key] = text if len(text) <= limit else text[: limit - len(TRUNCATED)] + TRUNCATED
    return flat


def package_version() -> str:
    """The installed version of this project's distribution, or ``"unknown"``."""
    return installed_version()


def git_commit() -> str | None:
    """The commit checked out in the working directory, or ``None`` outside a git repository."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None


def run_tags(model: str, dataset: str | os.PathLike[str] | None = None) -> dict[str, str]:
    """Tags of a run: ``multivae.model``, ``multivae.version``, ``multivae.dataset_fingerprint``.

    ``multivae.dataset_fingerprint`` is there when ``dataset`` is given, and MLflow's
    ``mlflow.source.git.commit`` when the working directory is inside a git repository.
    """
    tags = {"multivae.model": model, "multivae.version": package_version()}
    if dataset is not None:
        tags["multivae.dataset_fingerprint"] = dataset_fingerprint(dataset)
    if commit := git_commit():
        tags[MLFLOW_GIT_COMMIT] = commit
    return tags


def _client(client_or_uri: MlflowClient | str) -> MlflowClient:
    return client_or_uri if isinstance(client_or_uri, MlflowClient) else MlflowClient(client_or_uri)


def _artifact_location(tracking_uri: str) -> str | None:
    """``mlartifacts`` next to a local SQLite store; ``None`` (the store decides) otherwise.

    Without it, MLflow puts the artifacts of a SQLite store in ``./mlruns`` of the working
    directory.
    """
    if not tracking_uri.startswith(_SQLITE_PREFIX):
        return None
    database = Path(tracking_uri.removeprefix(_SQLITE_PREFIX)).resolve()
    return (database.parent / MLFLOW_ARTIFACTS_FOLDER).as_uri()


def _experiment_id(client: MlflowClient, name: str) -> str:
    """The id of experiment ``name``, created (or restored from deletion) when needed."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(
                name, artifact_location=_artifact_location(client.tracking_uri)
            )
        except MlflowException:
            # Another run (a concurrent trial) may have created it since.
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
    if experiment.lifecycle_stage == "deleted":
        client.restore_experiment(experiment.experiment_id)
    return str(experiment.experiment_id)


def experiment_id_for(client: MlflowClient, name: str) -> str:
    """The id of experiment ``name``, created when needed (for runs made with the client)."""
    return _experiment_id(client, name)


def _log_params(client: MlflowClient, run_id: str, params: Mapping[str, str]) -> None:
    items = [Param(key, value) for key, value in params.items()]
    for start in range(0, len(items), MAX_PARAMS_TAGS_PER_BATCH):
        client.log_batch(run_id, params=items[start : start + MAX_PARAMS_TAGS_PER_BATCH])


def start_parent_run(
    tracking_uri: str,
    experiment: str,
    run_name: str | None,
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, str] | None = None,
) -> str:
    """Create a run for a sweep or a pipeline, to pass as ``parent_run_id`` to its children.

    Args:
        tracking_uri: The MLflow tracking URI.
        experiment: Experiment name; created when needed.
        run_name: Name of the run (MLflow picks one when ``None``).
        params: Logged through :func:`flatten_config` (e.g. the search space).
        tags: Extra tags.

    Returns:
        The run id. The run stays ``RUNNING`` until :func:`finish_run`.
    """
    from multivae.integrations.endpoints import check_tracking_uri

    check_tracking_uri(tracking_uri, "the MLflow tracking URI")
    client = MlflowClient(tracking_uri)
    run = client.create_run(
        _experiment_id(client, experiment), run_name=run_name, tags=dict(tags or {})
    )
    _log_params(client, run.info.run_id, flatten_config(params or {}))
    return str(run.info.run_id)


def finish_run(tracking_uri: str, run_id: str, status: str = "FINISHED") -> None:
    """End a run with ``status`` (``FINISHED``, ``FAILED`` or ``KILLED``)."""
    MlflowClient(tracking_uri).set_terminated(run_id, status)


def _requirements() -> list[str]:
    """What the pyfunc model's environment installs from an index.

    MLflow and this project's own runtime dependencies (``torch``, ``safetensors``, ...), as the
    installed distribution declares them. The project itself is never among them: its code
    travels inside the model (:func:`_project_code`), because the index's ``multivae`` is
    another project.
    """
    requirements = [f"mlflow=={mlflow.__version__}"]
    try:
        declared = metadata.requires(DISTRIBUTION) or []
    except metadata.PackageNotFoundError:
        declared = []
    for requirement in declared:
        if "extra ==" in requirement:  # optional dependencies (ray, kfp, dev, ...)
            continue
        requirements.append(requirement.split(";")[0].strip())
    return requirements


def _project_code(folder: Path) -> Path:
    """A copy of the ``multivae`` package in ``folder``, for the pyfunc model's ``code_paths``.

    MLflow puts it into the model's ``code/`` folder and that folder first on ``sys.path`` when
    the model loads, so the model runs the code it was logged with, with or without this
    project installed. Bytecode caches are left out.
    """
    source = Path(__file__).resolve().parents[1]
    target = folder / "multivae"
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return target


def register_model(
    client_or_uri: MlflowClient | str,
    run_id: str,
    name: str,
    *,
    model_dir: str | os.PathLike[str] | None = None,
) -> str:
    """Log a run's model as an MLflow pyfunc model and register it as a new version of ``name``.

    The pyfunc model is :mod:`multivae.integrations.mlflow_pyfunc` logged as code, with the
    model folder as its artifact ``model_dir``: loading it executes that file and reads the
    folder's safetensors and JSON; nothing is pickled. Its params schema has ``gen`` (the
    modalities to generate, all by default). The logged model is an output of the run, the
    registered model is created when it does not exist, and the run is tagged
    ``multivae.registered_model`` and ``multivae.registered_version``.

    Args:
        client_or_uri: A client, or a tracking URI (the registry is MLflow's default for it).
        run_id: The run that trained the model.
        name: Registered model name.
        model_dir: The model folder; by default the run's ``model`` artifacts are downloaded.

    Returns:
        The new version (``"1"`` for the first).
    """
    import mlflow.pyfunc
    from mlflow.models import Model, ModelSignature
    from mlflow.types import ParamSchema, ParamSpec

    client = _client(client_or_uri)
    run = client.get_run(run_id)
    with tempfile.TemporaryDirectory() as temporary:
        if model_dir is None:
            model_dir = client.download_artifacts(run_id, MODEL_FOLDER, temporary)
        modalities = json.loads((Path(model_dir) / MODEL_CONFIG_FILE).read_text())["config"][
            "modalities"
        ]
        signature = ModelSignature(
            params=ParamSchema([ParamSpec("gen", "string", list(modalities), (-1,))])
        )
        example = {  # one sample with every modality observed
            modality: np.zeros(
                (1, *spec["shape"]),
                np.int64 if spec["likelihood"] == "categorical" else np.float32,
            )
            for modality, spec in modalities.items()
        }
        logged = client.create_logged_model(run.info.experiment_id, name=name, source_run_id=run_id)
        try:
            local = Path(temporary) / "pyfunc"
            mlflow.pyfunc.save_model(
                str(local),
                python_model=str(PYFUNC_CODE),
                artifacts={PYFUNC_MODEL_ARTIFACT: str(model_dir)},
                signature=signature,
                input_example=example,
                pip_requirements=_requirements(),
                code_paths=[str(_project_code(Path(temporary) / "code"))],
                mlflow_model=Model(
                    artifact_path=logged.artifact_location,
                    run_id=run_id,
                    model_uuid=logged.model_id,
                    model_id=logged.model_id,
                ),
            )
            client.log_model_artifacts(logged.model_id, str(local))
        except BaseException:
            client.finalize_logged_model(logged.model_id, LoggedModelStatus.FAILED)
            raise
    client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
    client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step=0)])
    try:
        client.create_registered_model(name)
    except MlflowException as error:
        if error.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise
    # The logged model's location, not "models:/<id>": the SQL registry resolves that URI with
    # the global tracking URI instead of this client's.
    version = client.create_model_version(
        name, logged.artifact_location, run_id=run_id, model_id=logged.model_id
    ).version
    client.set_tag(run_id, "multivae.registered_model", name)
    client.set_tag(run_id, "multivae.registered_version", str(version))
    return str(version)


def _write_json(path: Path, document: Mapping[str, Any]) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(document, indent=2))
    os.replace(temporary, path)


class MLflowCallback(Callback):
    """Tracks a training run in MLflow (on rank 0; other ranks do nothing).

    At the start it creates the run, tagged by :func:`run_tags` and ``extra_tags`` (and
    ``mlflow.parentRunId`` for a nested run), logs ``config`` through :func:`flatten_config`
    and writes ``output_dir/mlflow_run.json``. A resumed run (that file and a checkpoint in
    ``output_dir``) continues the same MLflow run instead, without logging params again, and
    skips epochs it logged already (an exact resume recomputes the same values). After each
    epoch it logs every numeric entry of the history record with ``step=epoch``, in one call.
    At the end it logs ``run.yaml``, ``metrics.json``, the model folder (under ``model``,
    unless ``log_model`` is false) and the ``*.png`` files of ``output_dir`` and
    ``output_dir/figures`` (under ``figures``), registers the model when ``register_as`` is
    set (:func:`register_model`) and ends the run ``FINISHED``. A failed run ends ``FAILED``
    (``KILLED`` for a ``KeyboardInterrupt``).

    Args:
        tracking_uri: The MLflow tracking URI (see :func:`default_tracking_uri`).
        experiment: Experiment name; created when needed.
        run_name: Name of the run (MLflow picks one when ``None``).
        parent_run_id: Make this a nested run of that one (see :func:`start_parent_run`).
        config: The run config as plain data (``RunConfig.to_dict()``), logged as params.
        dataset: Dataset folder, fingerprinted into the tag ``multivae.dataset_fingerprint``.
        extra_tags: More tags.
        log_model: Log the model folder as artifacts.
        register_as: Register the model under this name in the model registry.

    Attributes:
        run_id: The MLflow run, once training has begun (``None`` on other ranks).
    """

    def __init__(
        self,
        *,
        tracking_uri: str,
        experiment: str = "multivae",
        run_name: str | None = None,
        parent_run_id: str | None = None,
        config: Mapping[str, Any] | None = None,
        dataset: str | os.PathLike[str] | None = None,
        extra_tags: Mapping[str, str] | None = None,
        log_model: bool = True,
        register_as: str | None = None,
    ) -> None:
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.run_name = run_name
        self.parent_run_id = parent_run_id
        self.config = dict(config or {})
        self.dataset = dataset
        self.extra_tags = dict(extra_tags or {})
        self.log_model = log_model
        self.register_as = register_as
        self.run_id: str | None = None
        self._client: MlflowClient | None = None
        self._logged_through = 0

    @property
    def client(self) -> MlflowClient:
        """The client of :attr:`tracking_uri`."""
        if self._client is None:
            self._client = MlflowClient(self.tracking_uri)
        return self._client

    def on_train_begin(self, trainer: Trainer) -> None:
        """Create the run (or continue it when resuming), log params and tags."""
        if distributed_rank() != 0:
            return
        run_file = trainer.output_dir / MLFLOW_RUN_FILE
        if run_file.is_file() and trainer.checkpoint_path.is_file():
            self._continue(json.loads(run_file.read_text()), run_file)
            return
        client = self.client
        experiment_id = _experiment_id(client, self.experiment)
        tags = {**run_tags(trainer.module.name, self.dataset), **self.extra_tags}
        if self.parent_run_id is not None:
            tags[MLFLOW_PARENT_RUN_ID] = self.parent_run_id
        run = client.create_run(experiment_id, run_name=self.run_name, tags=tags)
        self.run_id = run_id = str(run.info.run_id)
        try:
            trainer.output_dir.mkdir(parents=True, exist_ok=True)
            _write_json(
                run_file,
                {
                    "tracking_uri": redact(self.tracking_uri),
                    "experiment_id": experiment_id,
                    "run_id": run_id,
                },
            )
            _log_params(client, run_id, flatten_config(self.config))
        except BaseException:
            client.set_terminated(run_id, "FAILED")
            raise

    def _continue(self, stored: Mapping[str, Any], run_file: Path) -> None:
        try:
            run = self.client.get_run(stored["run_id"])
        except MlflowException as error:
            raise ValueError(
                f"{run_file}: expected run {stored['run_id']} (logged to "
                f"{stored['tracking_uri']}) at {redact(self.tracking_uri)}, found none "
                f"({redact(str(error))})"
            ) from None
        self.run_id = str(run.info.run_id)
        self.client.update_run(self.run_id, status="RUNNING")
        self._logged_through = int(run.data.metrics.get("epoch", 0))

    def on_epoch_end(self, epoch: int, metrics: Mapping[str, float | int | str]) -> bool:
        """Log the epoch's numeric metrics with ``step=epoch``; never stops training."""
        if self.run_id is None or epoch <= self._logged_through:
            return False
        now = int(time.time() * 1000)
        self.client.log_batch(
            self.run_id,
            metrics=[
                Metric(key, float(value), now, epoch)
                for key, value in metrics.items()
                if isinstance(value, int | float) and not isinstance(value, bool)
            ],
        )
        return False

    def on_train_end(self, result: TrainingResult) -> None:
        """Log the run's files, register the model if asked, and end the run ``FINISHED``."""
        if self.run_id is None:
            return
        client, output_dir = self.client, result.output_dir
        for name in (RUN_CONFIG_FILE, METRICS_FILE):
            if (output_dir / name).is_file():
                client.log_artifact(self.run_id, str(output_dir / name))
        if self.log_model:
            client.log_artifacts(self.run_id, str(result.model_dir), MODEL_FOLDER)
        for figure in sorted(
            [*output_dir.glob("*.png"), *(output_dir / FIGURES_FOLDER).glob("*.png")]
        ):
            client.log_artifact(self.run_id, str(figure), FIGURES_FOLDER)
        if self.register_as is not None:
            register_model(client, self.run_id, self.register_as, model_dir=result.model_dir)
        client.set_terminated(self.run_id, "FINISHED")

    def on_train_error(self, error: BaseException) -> None:
        """End the run ``FAILED``; ``KILLED`` when it was stopped; never raises.

        Stopped: ``KeyboardInterrupt``, or a clean ``SystemExit`` (code 0 or none), which is
        how Ray Tune stops a trial that its scheduler (ASHA) ends early. The sweep marks such
        runs ``KILLED`` as well once Tune returns, but Tune does not wait for the trial's thread
        to unwind, so this end may come after that mark, and must agree with it.
        """
        if self.run_id is None:
            return
        stopped = isinstance(error, KeyboardInterrupt) or (
            isinstance(error, SystemExit) and error.code in (0, None)
        )
        status = "KILLED" if stopped else "FAILED"
        try:
            self.client.set_terminated(self.run_id, status)
        except Exception as failure:  # the training error is the one to propagate
            _logger.warning("could not end MLflow run %s as %s: %s", self.run_id, status, failure)
