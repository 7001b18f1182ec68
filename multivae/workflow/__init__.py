"""The pipeline's steps as library calls: what each Kubeflow component runs.

``preprocess -> train -> evaluate -> sample-augmentation -> register``. Each step reads and
writes plain folders, so the components in ``components/`` only map KFP artifacts to paths and
call these functions (and the steps run, and are tested, without KFP):

* :func:`preprocess_step`: checks every pipeline parameter first (a bad model name or missing
  rate fails here, before any work), writes the validated Parquet splits of a built-in dataset
  or of a converter source, trains the per-modality classifiers that judge coherence into
  their own folder (the ``classifiers`` artifact), and opens the pipeline's parent MLflow run;
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

One module per step (``preprocess``, ``train``, ``evaluate``, ``sample_augmentation``,
``register``), beside what they share: ``parameters`` (:func:`check_parameters`), ``tracking``
(the steps' MLflow runs) and ``artifacts`` (the model folder in a Model artifact, figures as
HTML).
"""

from multivae.workflow.artifacts import figures_html
from multivae.workflow.evaluate import evaluate_step
from multivae.workflow.parameters import (
    SAMPLER_KINDS,
    STEPS,
    TRAIN_MODES,
    check_parameters,
    integral,
)
from multivae.workflow.preprocess import preprocess_step
from multivae.workflow.register import register_step
from multivae.workflow.sample_augmentation import augment_step
from multivae.workflow.tracking import (
    EXPERIMENT,
    STEP_TAG,
    scalar_metrics,
    step_run,
    tracking_uri_for,
)
from multivae.workflow.train import train_step

__all__ = [
    "EXPERIMENT",
    "SAMPLER_KINDS",
    "STEPS",
    "STEP_TAG",
    "TRAIN_MODES",
    "augment_step",
    "check_parameters",
    "evaluate_step",
    "figures_html",
    "integral",
    "preprocess_step",
    "register_step",
    "scalar_metrics",
    "step_run",
    "tracking_uri_for",
    "train_step",
]
