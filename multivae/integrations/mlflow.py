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

What MLflow's UI reads, and where it comes from:

* the experiment's kind: the tag ``mlflow.experimentKind`` = ``custom_model_development``
  ("Machine learning"), set on every experiment this module creates or uses
  (:func:`experiment_id_for`); an experiment given another kind by its user keeps it;
* the Dataset column: the dataset folder logged as a run input (:func:`log_dataset`) with its
  fingerprint as digest, its folder as source, its columns as schema and its splits as profile
  (:class:`MLflowDataset`), with the context ``training`` (or ``evaluation``);
* the Source and User columns: ``mlflow.source.name``, ``mlflow.source.type`` and
  ``mlflow.user`` as MLflow's own ``start_run`` sets them (:func:`source_tags`), and
  ``mlflow.source.git.commit`` (:func:`run_tags`);
* the Models column: the pyfunc model logged as a LoggedModel whose ``source_run_id`` is the
  run, and an output of that run (:func:`register_model`);
* system metrics (``system/...``) on training runs, sampled by MLflow's monitor
  (:class:`SystemMetrics`);
* the model's signature: the modalities as optional inputs, the generated ones as output
  tensors, ``gen`` as param (:func:`model_signature`); the registry alias ``champion``
  (:func:`promote_champion`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
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
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import (
    DatasetInput,
    InputTag,
    LoggedModelOutput,
    LoggedModelStatus,
    Metric,
    Param,
    SourceType,
)
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import (
    MLFLOW_DATASET_CONTEXT,
    MLFLOW_GIT_COMMIT,
    MLFLOW_MODEL_VERSIONS,
    MLFLOW_PARENT_RUN_ID,
    MLFLOW_SOURCE_NAME,
    MLFLOW_SOURCE_TYPE,
)
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

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
"""The experiment tag from which MLflow 3's UI tells GenAI experiments from model training."""
MODEL_TRAINING_KIND = "custom_model_development"
"""Its value for a model-training ("Machine learning") experiment."""
TRAINING_CONTEXT = "training"
"""The context of a dataset that a run trains on (``mlflow.data.context``)."""
EVALUATION_CONTEXT = "evaluation"
"""The context of a dataset that a run evaluates on."""
SYSTEM_METRICS_INTERVAL_S = 5.0
"""Seconds between two samples of the system metrics of a training run (MLflow's default, 10 s,
misses most of a short run); ``MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL`` overrides it."""
CHAMPION_ALIAS = "champion"
"""The registry alias of the best version of a registered model (:func:`promote_champion`)."""
MODEL_ID_TAG = "multivae.model_id"
"""The model-version tag naming the logged model (LoggedModel) the version was made from."""
METRIC_TAG_PREFIX = "multivae.metric."
"""Prefix of the model-version tag that records the value of the metric it was ranked on."""


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


def source_tags(name: str | None = None, source_type: str | None = None) -> dict[str, str]:
    """A run's user and source, the tags MLflow's UI shows in its User and Source columns.

    By default what MLflow's own ``mlflow.start_run`` records (its run context providers):
    ``mlflow.user``, ``mlflow.source.name`` (the main script, ``sys.argv[0]``) and
    ``mlflow.source.type`` (``LOCAL``), plus the notebook or job tags where MLflow detects
    one. Runs made through a client get none of them unless they are given, as here. ``name``
    and ``source_type`` (one of MLflow's ``NOTEBOOK``, ``JOB``, ``PROJECT``, ``LOCAL``,
    ``UNKNOWN``) replace the detected source. The git commit is :func:`run_tags`'s.
    """
    from mlflow.tracking.context.git_context import GitRunContext
    from mlflow.tracking.context.registry import resolve_tags

    tags = {
        key: str(value)
        # ``ignore`` takes provider classes (annotated as instances); the commit is run_tags'.
        for key, value in resolve_tags(ignore=[GitRunContext]).items()  # type: ignore[list-item]
        if value is not None
    }
    if name is not None:
        tags[MLFLOW_SOURCE_NAME] = name
    if source_type is not None:
        SourceType.from_string(source_type)  # refuses a type MLflow does not know
        tags[MLFLOW_SOURCE_TYPE] = source_type
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
    """The id of experiment ``name``, created (or restored from deletion) when needed.

    It is marked a model-training experiment (:data:`EXPERIMENT_KIND_TAG`) unless its user gave
    it a kind already.
    """
    kind = {EXPERIMENT_KIND_TAG: MODEL_TRAINING_KIND}
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(
                name, artifact_location=_artifact_location(client.tracking_uri), tags=kind
            )
        except MlflowException:
            # Another run (a concurrent trial) may have created it since.
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
    if experiment.lifecycle_stage == "deleted":
        client.restore_experiment(experiment.experiment_id)
    if EXPERIMENT_KIND_TAG not in experiment.tags:
        client.set_experiment_tag(
            experiment.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND
        )
    return str(experiment.experiment_id)


def experiment_id_for(client: MlflowClient, name: str) -> str:
    """The id of experiment ``name``, created when needed (for runs made with the client).

    The experiment is tagged ``mlflow.experimentKind: custom_model_development`` ("Machine
    learning" in MLflow's UI) when it has no kind yet.
    """
    return _experiment_id(client, name)


class MLflowDataset(MetaDataset):
    """A multivae dataset folder as MLflow sees it: metadata, the data staying in its folder.

    A :class:`~mlflow.data.meta_dataset.MetaDataset` (no data is copied or loaded) whose

    * source is the folder (``local``, its ``file://`` URI);
    * digest is :func:`dataset_fingerprint`: it follows the data, not the folder, and equals
      the run tag ``multivae.dataset_fingerprint`` (``MetaDataset``'s own digest hashes the
      name, source and schema only, so the same folder rewritten would keep it);
    * schema is the columns of its Parquet files, as MLflow column specs (what MLflow's UI
      shows as a table): ``sample_id``, each modality (nested arrays of its shape and dtype)
      with its presence flag ``<name>__present`` (and ``<name>__imputed``), ``label``;
    * profile is, per split, the rows and the fraction of samples where each modality is
      present.

    Build one with :meth:`from_folder`.
    """

    def __init__(
        self,
        source: Any,
        name: str,
        digest: str,
        schema: Any,
        profile: Mapping[str, Any],
    ) -> None:
        self._profile = dict(profile)
        super().__init__(source, name=name, digest=digest, schema=schema)

    @property
    def profile(self) -> dict[str, Any]:
        """Rows and presence per split, the number of classes."""
        return self._profile

    def to_dict(self) -> dict[str, str]:
        """MetaDataset's fields (name, digest, source, source type, schema) and the profile."""
        config = super().to_dict()
        config["profile"] = json.dumps(self._profile)
        return config

    @classmethod
    def from_folder(cls, folder: str | os.PathLike[str]) -> MLflowDataset:
        """The dataset of a folder with ``train/``, ``val/`` and ``test/`` splits."""
        from mlflow.data.dataset_source_registry import get_dataset_source_from_json
        from mlflow.types import ColSpec, DataType, Schema, TensorSpec
        from mlflow.types.schema import Array

        from multivae.data.reader import read_schema
        from multivae.data.schema import (
            LABEL_COLUMN,
            SAMPLE_ID_COLUMN,
            imputed_column,
            presence_column,
        )
        from multivae.data.summary import summarize

        root = Path(folder).resolve()
        schema = read_schema(root)
        columns: list[ColSpec | TensorSpec] = [ColSpec(DataType.long, SAMPLE_ID_COLUMN)]
        for modality in schema.modalities:
            # Every dtype of the format (multivae.data.schema.DTYPES) by the MLflow type that
            # holds it.
            value: Any = {"float64": DataType.double, "int64": DataType.long}.get(
                modality.dtype,
                DataType.float if modality.dtype.startswith("float") else DataType.integer,
            )
            for _ in modality.shape:
                value = Array(value)
            columns.append(ColSpec(value, modality.name))
            columns.append(ColSpec(DataType.boolean, presence_column(modality.name)))
            if schema.imputed:
                columns.append(ColSpec(DataType.boolean, imputed_column(modality.name)))
        if schema.num_classes is not None:
            columns.append(ColSpec(DataType.long, LABEL_COLUMN))
        summary = summarize(root)
        profile = {
            "num_classes": summary["num_classes"],
            "splits": {
                split: {"rows": info["rows"], "presence": info["presence"]}
                for split, info in summary["splits"].items()
            },
        }
        source = get_dataset_source_from_json(json.dumps({"uri": root.as_uri()}), "local")
        return cls(source, schema.name, dataset_fingerprint(root), Schema(columns), profile)


def dataset_input(folder: str | os.PathLike[str], context: str = TRAINING_CONTEXT) -> DatasetInput:
    """A dataset folder as a run input (:class:`MLflowDataset`), tagged with its context."""
    dataset = MLflowDataset.from_folder(folder)._to_mlflow_entity()
    return DatasetInput(dataset, tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)])


def log_dataset(
    client_or_uri: MlflowClient | str,
    run_id: str,
    folder: str | os.PathLike[str],
    context: str = TRAINING_CONTEXT,
) -> None:
    """Log a dataset folder as an input of a run (MLflow's Dataset column), with ``context``.

    Logging the same dataset with the same context twice records it once.
    """
    _client(client_or_uri).log_inputs(run_id, datasets=[dataset_input(folder, context)])


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
        tags: Extra tags, over the source tags of :func:`source_tags` (give
            ``mlflow.source.name`` and ``mlflow.source.type`` to name another source).

    Returns:
        The run id. The run stays ``RUNNING`` until :func:`finish_run`.
    """
    from multivae.integrations.endpoints import check_tracking_uri

    check_tracking_uri(tracking_uri, "the MLflow tracking URI")
    client = MlflowClient(tracking_uri)
    run = client.create_run(
        _experiment_id(client, experiment),
        run_name=run_name,
        tags={**source_tags(), **dict(tags or {})},
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


def model_signature(modalities: Mapping[str, Mapping[str, Any]]) -> Any:
    """The signature of the pyfunc model of a model whose config has these ``modalities``.

    * inputs: one optional column per modality, of any type. A sample may leave any modality
      out (the model generates from those given), and MLflow's tensor specs cannot be optional:
      a tensor-based input schema would refuse every call that does not give all of them. Its
      shape and dtype are in the model's metadata (``multivae.modalities``);
    * outputs: one tensor per modality, ``(-1, *shape)``: likelihood means (``float32``), class
      indices (``int64``) for a categorical modality;
    * params: ``gen``, the modalities to generate (all by default).
    """
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema, TensorSpec
    from mlflow.types.schema import AnyType

    anything = AnyType()  # type: ignore[no-untyped-call]
    inputs = Schema([ColSpec(anything, name, required=False) for name in modalities])
    outputs = Schema(
        [
            TensorSpec(np.dtype(_value_dtype(spec)), (-1, *spec["shape"]), name)
            for name, spec in modalities.items()
        ]
    )
    params = ParamSchema([ParamSpec("gen", "string", list(modalities), (-1,))])
    return ModelSignature(inputs=inputs, outputs=outputs, params=params)


def _value_dtype(spec: Mapping[str, Any]) -> str:
    """The dtype of a modality's values given to and returned by the pyfunc model."""
    return "int64" if spec["likelihood"] == "categorical" else "float32"


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
    folder's safetensors and JSON; nothing is pickled. Its signature is
    :func:`model_signature`'s. The logged model (MLflow 3's LoggedModel) is created from the
    run (its ``source_run_id``) and is an output of it, which fills the run's Models column;
    the registered model is created when it does not exist, its new version points at the
    logged model (tagged ``multivae.model_id``; the logged model lists its versions in
    ``mlflow.modelVersions``, as ``mlflow.register_model`` does), and the run is tagged
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
    from mlflow.models import Model

    client = _client(client_or_uri)
    run = client.get_run(run_id)
    with tempfile.TemporaryDirectory() as temporary:
        if model_dir is None:
            model_dir = client.download_artifacts(run_id, MODEL_FOLDER, temporary)
        document = json.loads((Path(model_dir) / MODEL_CONFIG_FILE).read_text())
        modalities = document["config"]["modalities"]
        example = {  # one sample with every modality observed
            modality: np.zeros((1, *spec["shape"]), _value_dtype(spec))
            for modality, spec in modalities.items()
        }
        metadata = {
            "multivae": {
                "model": document.get("model"),
                "modalities": {
                    modality: {
                        "shape": list(spec["shape"]),
                        "dtype": _value_dtype(spec),
                        "likelihood": spec["likelihood"],
                    }
                    for modality, spec in modalities.items()
                },
            }
        }
        logged = client.create_logged_model(run.info.experiment_id, name=name, source_run_id=run_id)
        try:
            local = Path(temporary) / "pyfunc"
            mlflow.pyfunc.save_model(
                str(local),
                python_model=str(PYFUNC_CODE),
                artifacts={PYFUNC_MODEL_ARTIFACT: str(model_dir)},
                signature=model_signature(modalities),
                input_example=example,
                pip_requirements=_requirements(),
                code_paths=[str(_project_code(Path(temporary) / "code"))],
                metadata=metadata,
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
        name,
        logged.artifact_location,
        run_id=run_id,
        model_id=logged.model_id,
        # The SQL registry keeps no model id: the version records it.
        tags={MODEL_ID_TAG: logged.model_id},
    ).version
    # What mlflow.register_model does, and MLflow's UI shows on the logged model's page.
    versions = json.loads(logged.tags.get(MLFLOW_MODEL_VERSIONS, "[]"))
    client.set_logged_model_tags(
        logged.model_id,
        {MLFLOW_MODEL_VERSIONS: json.dumps([*versions, {"name": name, "version": str(version)}])},
    )
    client.set_tag(run_id, "multivae.registered_model", name)
    client.set_tag(run_id, "multivae.registered_version", str(version))
    return str(version)


LOWER_IS_BETTER = ("nll", "likelihood", "loss", "fid", "mse", "error")
"""Words of a metric name that mean lower is better: negative log-likelihoods (this project's
``likelihood`` report holds NLLs), losses, FIDs and errors. Others (coherence, accuracy, NMI,
ARI, SSIM) are better higher."""


def higher_is_better(metric: str) -> bool:
    """Whether a larger value of ``metric`` is better, from the words of its name.

    ``likelihood.joint.mean`` (an NLL), ``val_loss`` and ``samplers.gmm.fid.m0`` are better
    lower; ``coherence.mean`` and ``latents.clustering.accuracy`` higher.
    """
    words = re.split(r"[^a-z0-9]+", metric.lower())
    return not any(word in LOWER_IS_BETTER for word in words)


def _finite(value: Any) -> float | None:
    """``value`` (a number or its text) as a finite float; ``None`` for anything else."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def promote_champion(
    client_or_uri: MlflowClient | str,
    name: str,
    version: str,
    metric: str,
    value: float | None,
    *,
    higher_better: bool | None = None,
    alias: str = CHAMPION_ALIAS,
) -> dict[str, Any]:
    """Give ``version`` the registry alias ``alias`` when it beats the version holding it.

    ``version`` is tagged ``multivae.metric.<metric>`` with ``value`` (the score later
    versions are compared with). The alias moves to it when no version holds the alias, or
    when its value is strictly better than the holder's recorded value of the same metric
    (better: higher, or lower when ``higher_better`` is false; by default from the metric's
    name, :func:`higher_is_better`). Otherwise it stays: a version without a finite value, or
    a holder without a recorded value of this metric (registered before, or ranked on another
    metric), is never ranked above or below.

    Returns:
        The decision: ``{"alias", "metric", "higher_is_better", "version", "value",
        "previous_version", "previous_value", "promoted", "reason"}``; ``version`` is tagged
        ``multivae.champion`` with ``promoted`` (``"true"``/``"false"``).
    """
    client = _client(client_or_uri)
    version = str(version)
    higher = higher_is_better(metric) if higher_better is None else higher_better
    value = _finite(value)
    if value is not None:
        client.set_model_version_tag(name, version, f"{METRIC_TAG_PREFIX}{metric}", repr(value))
    aliases = client.get_registered_model(name).aliases
    holder = None if alias not in aliases else client.get_model_version(name, aliases[alias])
    previous_version = None if holder is None else str(holder.version)
    previous = None if holder is None else _finite(holder.tags.get(f"{METRIC_TAG_PREFIX}{metric}"))
    if holder is None:
        promoted, reason = True, f"no version held the alias {alias!r}"
    elif previous_version == version:
        promoted, reason = False, f"version {version} holds the alias already"
    elif value is None:
        promoted, reason = False, f"version {version} has no finite value of {metric}"
    elif previous is None:
        promoted, reason = (
            False,
            f"version {previous_version}, which holds the alias, has no recorded {metric} to "
            "compare with",
        )
    elif value > previous if higher else value < previous:
        promoted, reason = (
            True,
            f"{metric} {value:.6g} beats {previous:.6g} of version {previous_version} "
            f"({'higher' if higher else 'lower'} is better)",
        )
    else:
        promoted, reason = (
            False,
            f"{metric} {value:.6g} does not beat {previous:.6g} of version {previous_version} "
            f"({'higher' if higher else 'lower'} is better)",
        )
    if promoted:
        client.set_registered_model_alias(name, alias, version)
    client.set_model_version_tag(name, version, "multivae.champion", str(promoted).lower())
    return {
        "alias": alias,
        "metric": metric,
        "higher_is_better": higher,
        "version": version,
        "value": value,
        "previous_version": previous_version,
        "previous_value": previous,
        "promoted": promoted,
        "reason": reason,
    }


class SystemMetrics:
    """The system metrics of one run, sampled in a thread while it runs.

    CPU, memory, disk, network and GPU use, as ``system/cpu_utilization_percentage`` and the
    like: MLflow's :class:`~mlflow.system_metrics.system_metrics_monitor.SystemMetricsMonitor`,
    bound to the run and to ``tracking_uri`` (not to MLflow's active run), sampling every
    ``interval`` seconds (``MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL`` overrides it, as it does
    for ``mlflow.start_run(log_system_metrics=True)``). :meth:`stop` joins the thread and, for
    a run that ended before its first interval, logs one sample taken over the whole run, so
    every run has its system metrics. Without ``psutil`` (which the monitor needs) it warns
    and records nothing.

    Args:
        tracking_uri: The MLflow tracking URI.
        run_id: The run.
        interval: Seconds between samples.
        resume: Continue the steps of a run that has system metrics already.
    """

    def __init__(
        self,
        tracking_uri: str,
        run_id: str,
        *,
        interval: float = SYSTEM_METRICS_INTERVAL_S,
        resume: bool = False,
    ) -> None:
        self._monitor: Any = None
        self._published = False
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
        except ImportError as error:
            _logger.warning("no system metrics for MLflow run %s: %s", run_id, error)
            return
        owner = self

        class _Monitor(SystemMetricsMonitor):
            def publish_metrics(self, metrics: dict[str, float]) -> None:
                super().publish_metrics(metrics)  # type: ignore[no-untyped-call]
                owner._published = True

        self._monitor = _Monitor(  # type: ignore[no-untyped-call]
            run_id,
            sampling_interval=interval,
            resume_logging=resume,
            tracking_uri=tracking_uri,
        )
        self._monitor.start()

    def stop(self) -> None:
        """Stop sampling (the thread is joined) and log what is left; never raises."""
        monitor, self._monitor = self._monitor, None
        if monitor is None:
            return
        try:
            monitor.finish()
            if not self._published:
                # The first sample of the thread is its baseline (CPU use is measured between
                # two samples): one taken now spans the run.
                for part in monitor.monitors:
                    part.clear_metrics()
                monitor.collect_metrics()
                monitor.publish_metrics(monitor.aggregate_metrics())
                monitor.mlflow_logger.flush()
        except Exception as failure:  # the run's own outcome matters more
            _logger.warning("could not log the last system metrics: %s", failure)


def _write_json(path: Path, document: Mapping[str, Any]) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(document, indent=2))
    os.replace(temporary, path)


class MLflowCallback(Callback):
    """Tracks a training run in MLflow (on rank 0; other ranks do nothing).

    At the start it creates the run, tagged by :func:`source_tags`, :func:`run_tags` and
    ``extra_tags`` (and ``mlflow.parentRunId`` for a nested run), logs ``config`` through
    :func:`flatten_config` and the dataset as its ``training`` input (:func:`log_dataset`),
    writes ``output_dir/mlflow_run.json`` and starts sampling the system metrics
    (:class:`SystemMetrics`, unless ``log_system_metrics`` is false). A resumed run (that file
    and a checkpoint in ``output_dir``) continues the same MLflow run instead, without logging
    params again, and skips epochs it logged already (an exact resume recomputes the same
    values). After each epoch it logs every numeric entry of the history record with
    ``step=epoch``, in one call. At the end it logs ``run.yaml``, ``metrics.json``, the model
    folder (under ``model``, unless ``log_model`` is false) and the ``*.png`` files of
    ``output_dir`` and ``output_dir/figures`` (under ``figures``), registers the model when
    ``register_as`` is set (:func:`register_model`) and ends the run ``FINISHED``. A failed
    run ends ``FAILED`` (``KILLED`` for a ``KeyboardInterrupt``). Either way the system
    metrics' thread is stopped first.

    Args:
        tracking_uri: The MLflow tracking URI (see :func:`default_tracking_uri`).
        experiment: Experiment name; created when needed.
        run_name: Name of the run (MLflow picks one when ``None``).
        parent_run_id: Make this a nested run of that one (see :func:`start_parent_run`).
        config: The run config as plain data (``RunConfig.to_dict()``), logged as params.
        dataset: Dataset folder, fingerprinted into the tag ``multivae.dataset_fingerprint``
            and logged as the run's ``training`` input.
        extra_tags: More tags (``mlflow.source.name`` and ``mlflow.source.type`` among them
            name another source than the main script).
        log_model: Log the model folder as artifacts.
        register_as: Register the model under this name in the model registry.
        log_system_metrics: Sample the system metrics while the run trains.
        system_metrics_interval: Seconds between two samples.

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
        log_system_metrics: bool = True,
        system_metrics_interval: float = SYSTEM_METRICS_INTERVAL_S,
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
        self.log_system_metrics = log_system_metrics
        self.system_metrics_interval = system_metrics_interval
        self.run_id: str | None = None
        self._client: MlflowClient | None = None
        self._logged_through = 0
        self._system_metrics: SystemMetrics | None = None

    @property
    def client(self) -> MlflowClient:
        """The client of :attr:`tracking_uri`."""
        if self._client is None:
            self._client = MlflowClient(self.tracking_uri)
        return self._client

    def on_train_begin(self, trainer: Trainer) -> None:
        """Create the run (or continue it when resuming): tags, params, dataset, system metrics."""
        if distributed_rank() != 0:
            return
        run_file = trainer.output_dir / MLFLOW_RUN_FILE
        if run_file.is_file() and trainer.checkpoint_path.is_file():
            self._continue(json.loads(run_file.read_text()), run_file)
            self._start_system_metrics(resume=True)
            return
        client = self.client
        experiment_id = _experiment_id(client, self.experiment)
        tags = {
            **source_tags(),
            **run_tags(trainer.module.name, self.dataset),
            **self.extra_tags,
        }
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
            if self.dataset is not None:
                log_dataset(client, run_id, self.dataset, TRAINING_CONTEXT)
        except BaseException:
            client.set_terminated(run_id, "FAILED")
            raise
        self._start_system_metrics(resume=False)

    def _start_system_metrics(self, *, resume: bool) -> None:
        if self.log_system_metrics and self.run_id is not None:
            self._system_metrics = SystemMetrics(
                self.tracking_uri,
                self.run_id,
                interval=self.system_metrics_interval,
                resume=resume,
            )

    def _stop_system_metrics(self) -> None:
        system_metrics, self._system_metrics = self._system_metrics, None
        if system_metrics is not None:
            system_metrics.stop()

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
        self._stop_system_metrics()
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
        self._stop_system_metrics()
        stopped = isinstance(error, KeyboardInterrupt) or (
            isinstance(error, SystemExit) and error.code in (0, None)
        )
        status = "KILLED" if stopped else "FAILED"
        try:
            self.client.set_terminated(self.run_id, status)
        except Exception as failure:  # the training error is the one to propagate
            _logger.warning("could not end MLflow run %s as %s: %s", self.run_id, status, failure)
