"""The names of the files and folders the library writes, in one place.

Every module that writes or reads one of these imports its name from here, so that a run folder,
a model folder or a pipeline artifact is described once.
"""

# A training run's output folder (``RunConfig.output_dir``).
RUN_CONFIG_FILE = "run.yaml"
"""The resolved run config: every modality filled in, so the file alone reproduces the run."""
CHECKPOINT_FILE = "checkpoint.pt"
MODEL_FOLDER = "model"
METRICS_FILE = "metrics.json"
"""A run's training metrics, or an evaluation's metrics."""
MLFLOW_RUN_FILE = "mlflow_run.json"
"""``{"tracking_uri", "experiment_id", "run_id"}`` of the run's MLflow run."""
RAY_STORAGE_FOLDER = "ray"
"""Default Ray Train storage (checkpoints, worker logs) inside the run's ``output_dir``."""

# A model folder.
MODEL_CONFIG_FILE = "config.json"
MODEL_WEIGHTS_FILE = "model.safetensors"
MODEL_CARD_FILE = "README.md"

# A sweep's output folder.
TRIALS_FOLDER = "trials"
BEST_FOLDER = "best"
BEST_FILE = "best.json"
SWEEP_FILE = "sweep.yaml"

# A dataset's classifiers (beside it, never inside), and an evaluation's figures.
CLASSIFIERS_SUFFIX = "-classifiers"
"""``multivae train-classifiers DATA`` writes to ``DATA-classifiers`` beside the dataset."""
CLASSIFIERS_CONFIG_FILE = "classifiers.json"
CLASSIFIERS_WEIGHTS_FILE = "classifiers.safetensors"
EVALUATION_FOLDER = "evaluation"
"""Where ``multivae evaluate`` writes by default, beside the model folder."""
FIGURES_FOLDER = "figures"
LATENTS_FIGURE = "latents.png"
DROPOUT_FIGURE = "dropout_rates.png"
"""A sparse model's dropout rate per latent dimension, with its threshold (``evaluate``)."""
RECONSTRUCTIONS_FIGURE = "reconstructions.png"


def samples_figure(sampler: str) -> str:
    """The figure of samples generated through the latent sampler of kind ``sampler``."""
    return f"samples-{sampler}.png"


def conditional_figure(condition: tuple[str, ...] | list[str]) -> str:
    """The figure of generations conditioned on the modalities ``condition``."""
    return f"conditional-{'+'.join(condition)}.png"


# A latent sampler's folder, and a joint sampler's.
SAMPLER_CONFIG_FILE = "sampler.json"
SAMPLER_WEIGHTS_FILE = "sampler.safetensors"
JOINT_SAMPLER_FILE = "joint.json"
SHARED_SAMPLER_FOLDER = "shared"
PRIVATE_SAMPLERS_FOLDER = "private"

# MLflow: the local store, and the registered pyfunc model.
MLFLOW_DATABASE_FILE = "mlflow.db"
MLFLOW_ARTIFACTS_FOLDER = "mlartifacts"
"""Artifact root of experiments created in a local SQLite store, next to the database file."""
PYFUNC_MODEL_ARTIFACT = "model_dir"
"""Name of the model folder among the pyfunc model's artifacts (``context.artifacts``)."""

# The pipeline's artifacts.
SUMMARY_FILE = "summary.json"
"""The preprocess step's dataset summary, in the dataset artifact."""
TRAIN_RECORD_FILE = "train.json"
SYNTHETIC_SUMMARY_ARTIFACT = "synthetic_summary.json"
REGISTER_RECORD_ARTIFACT = "register.json"
STAGING_FOLDER = "pipeline-runs"
"""Inside the shared folder of ``ray-job`` and ``rayjob`` training: one folder per run."""

# What a command writes into each output folder it creates (multivae.io.claim_output).
OUTPUT_MARKER_FILE = ".multivae-output.json"
RUN_KIND = "run"
"""The kind of output ``multivae train`` writes (:data:`multivae.io.OUTPUT_KINDS`)."""
TRAIN_COMMAND = "multivae train"
SWEEP_KIND = "sweep"
TUNE_COMMAND = "multivae tune"
