"""evaluate: every metric of the model on the test split, to KFP Metrics and MLflow."""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Model, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def evaluate(
    model: Input[Model],
    data: Input[Dataset],
    classifiers: Input[Model],
    evaluation: dict,
    mlflow_uri: str,
    parent_run_id: str,
    train_run_id: str,
    metrics: Output[Metrics],
    report: Output[Artifact],
    figures: Output[HTML],
) -> None:
    """Likelihoods, coherences, FID, reconstruction, latent clustering and probes, figures.

    Coherences are judged by ``classifiers`` (the preprocess step's).

    ``report`` is the folder with ``metrics.json`` and ``figures/``; ``metrics`` holds the
    headline scalars for the KFP UI; ``figures`` is an HTML page of every figure.
    """
    from multivae.workflow import evaluate_step, figures_html, scalar_metrics

    result = evaluate_step(
        model.path,
        data.path,
        report.path,
        evaluation=evaluation,
        classifiers=classifiers.path,
        tracking_uri=mlflow_uri,
        parent_run_id=parent_run_id,
        train_run_id=train_run_id,
    )
    for key, value in scalar_metrics(result).items():
        if (
            key in ("coherence.mean", "likelihood.joint.mean")
            or key.startswith(("coherence.per_size.", "latents.clustering."))
            or key.endswith(".joint_coherence")
        ):
            metrics.log_metric(key, value)
    # The scalars also as a file at the artifact's URI: KFP keeps them in the metadata only,
    # and a cached step whose output file is missing is not taken from the cache.
    import json

    with open(metrics.path, "w") as handle:
        json.dump(dict(metrics.metadata), handle, indent=2, sort_keys=True)
    with open(figures.path, "w") as handle:
        handle.write(figures_html(f"{report.path}/figures", "multivae evaluation"))
