"""The pipeline: preprocess -> train -> evaluate -> sample-augmentation -> register.

:func:`build_pipeline` returns the ``@dsl.pipeline`` function for a platform:

* ``local``: plain components, for KFP's local runner (``python -m pipelines run-local``);
* ``kubernetes`` (what ``compile`` and ``submit`` use): the same graph, plus what the steps need
  on a cluster through ``kfp-kubernetes``: the train step mounts the RayCluster's shared volume
  (``multivae-shared`` at ``/mnt/multivae``) and reads the Ray auth token, the register step
  reads ``HF_TOKEN`` from a Secret, and every step gets the deployment settings
  (``multivae-settings`` ConfigMap) as environment variables.

Defaults of the cluster parameters (MLflow URI, Ray address, RayCluster, namespace, Hub repo)
and the components' image come from ``infra/base/settings.env`` (:mod:`pipelines.settings`).
(No ``from __future__ import annotations`` here: KFP reads the parameter types at run time.)
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kfp import dsl

from components import evaluate, preprocess, register, sample_augmentation, train
from pipelines.settings import SETTINGS

PIPELINE_NAME = "multivae"
SHARED_PVC = "multivae-shared"
SHARED_MOUNT = "/mnt/multivae"
RAY_AUTH_SECRET = "multivae-ray-auth"
RAY_AUTH_KEY = "auth_token"
HF_SECRET = "multivae-hf"
HF_KEY = "HF_TOKEN"
SETTINGS_CONFIG_MAP = "multivae-settings"

DATASET_PARAMS: dict[str, Any] = {"n_train": 4000, "n_val": 500, "n_test": 1000}
MODEL_CONFIG: dict[str, Any] = {"latent_dim": 16}
TRAINING: dict[str, Any] = {
    "epochs": 10,
    "batch_size": 32,
    "optimizer": {"name": "Adam", "kwargs": {"lr": 3.0e-3}},
}
EVALUATION: dict[str, Any] = {
    "likelihood_samples": 50,
    "k": 200,
    "samplers": ["prior", "gmm"],
    "n_generated": 500,
    "fit_samples": 2000,
}
NO_SOURCE: dict[str, Any] = {}

PLATFORMS = ("local", "kubernetes")


@dataclass(frozen=True)
class StepResources:
    """What a step's pod requests and may use on a cluster, and how often a failure is retried.

    CPU in cores (``"500m"`` is half a core), memory in bytes with a unit (``"4Gi"``).
    ``retries`` is 0 for a step with effects outside its own outputs.
    """

    cpu_request: str
    cpu_limit: str
    memory_request: str
    memory_limit: str
    retries: int


STEP_RESOURCES = {
    # Generating or converting a dataset and training its judges (small CNNs).
    "preprocess": StepResources("1", "2", "2Gi", "4Gi", retries=2),
    # Training in the step (train_mode local); with a Ray mode the step only submits and waits.
    # A retry trains again from the same seed into a fresh artifact.
    "train": StepResources("2", "4", "8Gi", "16Gi", retries=1),
    # The metrics (likelihoods, coherences, FID features) on the test split.
    "evaluate": StepResources("1", "2", "4Gi", "8Gi", retries=2),
    "sample-augmentation": StepResources("1", "2", "4Gi", "8Gi", retries=2),
    # Pushes to the Hub and creates a registry version: not retried (a retry could publish twice).
    "register": StepResources("500m", "1", "1Gi", "2Gi", retries=0),
}
"""Per step, on the ``kubernetes`` platform. KFP's local runner ignores them."""
RETRY_BACKOFF = "30s"
RETRY_BACKOFF_FACTOR = 2.0
GPU_RESOURCE = "nvidia.com/gpu"


def build_pipeline(platform: str = "kubernetes", train_gpus: int = 0) -> Callable[..., Any]:
    """The pipeline function for ``platform`` (``local`` or ``kubernetes``).

    Args:
        platform: ``local`` (KFP's local runner) or ``kubernetes``.
        train_gpus: GPUs (``nvidia.com/gpu``) the train step's pod requests on ``kubernetes``,
            for ``train_mode=local`` (with a Ray mode the GPUs belong to the Ray workers).

    Raises:
        ValueError: For another platform, or a negative ``train_gpus``, or GPUs asked of the
            local platform.
    """
    if platform not in PLATFORMS:
        raise ValueError(f"platform: expected one of {list(PLATFORMS)}, found {platform!r}")
    if train_gpus < 0 or (train_gpus and platform != "kubernetes"):
        raise ValueError(
            f"train_gpus: expected 0, or a positive count on the kubernetes platform; found "
            f"{train_gpus} on {platform!r}"
        )

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description=(
            "Multimodal VAE on partially observed data: preprocess -> train -> evaluate -> "
            "sample-augmentation -> register, tracked in MLflow."
        ),
    )
    def multivae_pipeline(
        dataset: str = "poly-digits",
        missing_rate: float = 0.5,
        dataset_params: dict = DATASET_PARAMS,
        source: dict = NO_SOURCE,
        classifier_epochs: int = 5,
        seed: int = 0,
        model_name: str = "mopoe",
        model_config: dict = MODEL_CONFIG,
        training: dict = TRAINING,
        sweep: str = "",
        train_mode: str = "local",
        num_workers: int = 2,
        ray_address: str = SETTINGS.ray_address,
        ray_cluster: str = SETTINGS.ray_cluster_name,
        namespace: str = SETTINGS.namespace,
        shared_dir: str = SHARED_MOUNT,
        evaluation: dict = EVALUATION,
        sampler: str = "gmm",
        n_synthetic: int = 1000,
        hub_repo: str = SETTINGS.hf_repo_id,
        hub_dry_run: bool = True,
        registered_name: str = "multivae",
        mlflow_uri: str = SETTINGS.mlflow_tracking_uri,
        run_name: str = "multivae-pipeline",
    ) -> None:
        """The five steps, each fed by the artifacts of the ones before it.

        Args:
            dataset: A built-in dataset (``poly-digits``, ...) or a converter (``polymnist``,
                ``mnist-svhn``, with ``source``).
            missing_rate: Probability that a modality is missing from a train/val sample.
            dataset_params: Parameters of the built-in generator.
            source: Files of a converter (``{"path": ...}``, ``{"mnist": ..., "svhn": ...}``).
            classifier_epochs: Epochs of the classifiers that judge coherence.
            seed: Seed of the data, the sampler and the synthetic data.
            model_name: A registered model (``multivae list-models``).
            model_config: The model's options.
            training: Training settings (epochs, batch size, optimizer, ...).
            sweep: Text of a sweep file (empty: a single run).
            train_mode: ``local``, ``ray``, ``ray-job`` or ``rayjob``.
            num_workers: Ray Train workers.
            ray_address: Ray Job Submission address of the RayCluster (``ray-job``).
            ray_cluster: The RayCluster's name (``rayjob``).
            namespace: Namespace of the RayCluster (``rayjob``).
            shared_dir: Volume shared with the Ray cluster (``ray-job``, ``rayjob``).
            evaluation: :class:`multivae.metrics.EvaluationConfig` entries.
            sampler: Latent sampler of the synthetic data (``prior``, ``gmm``, ``maf``, ``iaf``).
            n_synthetic: Synthetic samples.
            hub_repo: Hub repository (``owner/name``) of the model.
            hub_dry_run: Write the Hub folder without pushing it.
            registered_name: Name in the MLflow model registry.
            mlflow_uri: MLflow tracking URI.
            run_name: Name of the pipeline's MLflow run.
        """
        prepared = preprocess(
            dataset=dataset,
            missing_rate=missing_rate,
            seed=seed,
            dataset_params=dataset_params,
            source=source,
            classifier_epochs=classifier_epochs,
            model_name=model_name,
            model_config=model_config,
            training=training,
            sweep=sweep,
            train_mode=train_mode,
            sampler=sampler,
            n_synthetic=n_synthetic,
            mlflow_uri=mlflow_uri,
            run_name=run_name,
        ).set_display_name("preprocess")
        parent = prepared.outputs["parent_run_id"]
        tracking = prepared.outputs["tracking_uri"]
        trained = train(
            data=prepared.outputs["data"],
            model_name=model_name,
            model_config=model_config,
            training=training,
            sweep=sweep,
            train_mode=train_mode,
            num_workers=num_workers,
            ray_address=ray_address,
            shared_dir=shared_dir,
            namespace=namespace,
            ray_cluster=ray_cluster,
            ray_auth_secret=RAY_AUTH_SECRET,
            image=SETTINGS.image,
            mlflow_uri=tracking,
            parent_run_id=parent,
        ).set_display_name("train")
        evaluated = evaluate(
            model=trained.outputs["model"],
            data=prepared.outputs["data"],
            classifiers=prepared.outputs["classifiers"],
            evaluation=evaluation,
            mlflow_uri=tracking,
            parent_run_id=parent,
            train_run_id=trained.outputs["Output"],
        ).set_display_name("evaluate")
        augmented = sample_augmentation(
            model=trained.outputs["model"],
            data=prepared.outputs["data"],
            classifiers=prepared.outputs["classifiers"],
            sampler=sampler,
            n_synthetic=n_synthetic,
            seed=seed,
            mlflow_uri=tracking,
            parent_run_id=parent,
        ).set_display_name("sample-augmentation")
        # The Hub and the registry come last: a model is published only once it is evaluated
        # and its synthetic data written.
        augmented.after(evaluated)
        registered = (
            register(
                model=trained.outputs["model"],
                report=evaluated.outputs["report"],
                data=prepared.outputs["data"],
                hub_repo=hub_repo,
                dry_run=hub_dry_run,
                registered_name=registered_name,
                mlflow_uri=tracking,
                parent_run_id=parent,
                train_run_id=trained.outputs["Output"],
            )
            .set_display_name("register")
            .after(augmented)
        )
        # Publishing has side effects: never served from the cache.
        registered.set_caching_options(False)
        if platform == "kubernetes":
            _cluster_wiring(prepared, trained, evaluated, augmented, registered)
            _resources(
                {
                    "preprocess": prepared,
                    "train": trained,
                    "evaluate": evaluated,
                    "sample-augmentation": augmented,
                    "register": registered,
                },
                train_gpus,
            )

    return multivae_pipeline


def _resources(tasks: dict[str, Any], train_gpus: int) -> None:
    """Requests, limits and retries of :data:`STEP_RESOURCES`; GPUs for the train step."""
    for step, task in tasks.items():
        resources = STEP_RESOURCES[step]
        task.set_cpu_request(resources.cpu_request).set_cpu_limit(resources.cpu_limit)
        task.set_memory_request(resources.memory_request)
        task.set_memory_limit(resources.memory_limit)
        if resources.retries:
            task.set_retry(
                resources.retries,
                backoff_duration=RETRY_BACKOFF,
                backoff_factor=RETRY_BACKOFF_FACTOR,
            )
    if train_gpus:
        tasks["train"].set_accelerator_type(GPU_RESOURCE).set_accelerator_limit(train_gpus)


def _cluster_wiring(*tasks: Any) -> None:
    """Volumes, Secrets and settings of the steps on a cluster (kfp-kubernetes)."""
    from kfp import kubernetes

    trained, registered = tasks[1], tasks[4]
    for task in tasks:
        kubernetes.use_config_map_as_env(
            task,
            SETTINGS_CONFIG_MAP,
            {"MLFLOW_TRACKING_URI": "MLFLOW_TRACKING_URI", "RAY_ADDRESS": "RAY_ADDRESS"},
            optional=True,
        )
    kubernetes.mount_pvc(trained, pvc_name=SHARED_PVC, mount_path=SHARED_MOUNT)
    kubernetes.use_secret_as_env(
        trained, RAY_AUTH_SECRET, {RAY_AUTH_KEY: "RAY_AUTH_TOKEN"}, optional=True
    )
    # Ray's job client sends the token only in token mode (the RayCluster runs in it).
    trained.set_env_variable("RAY_AUTH_MODE", "token")
    kubernetes.use_secret_as_env(registered, HF_SECRET, {HF_KEY: "HF_TOKEN"}, optional=True)
