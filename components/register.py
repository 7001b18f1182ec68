"""register: the Hub folder with its model card, pushed to the Hub, registered in MLflow."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Markdown, Model, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def register(
    model: Input[Model],
    report: Input[Artifact],
    data: Input[Dataset],
    hub_repo: str,
    dry_run: bool,
    registered_name: str,
    mlflow_uri: str,
    parent_run_id: str,
    train_run_id: str,
    hub_model: Output[Model],
    card: Output[Markdown],
) -> str:
    """Publish the evaluated model: Hub folder, Hub push, MLflow registry.

    Writes the exact folder pushed to ``hub_repo`` (``hub_model``), pushes it unless
    ``dry_run`` (the token comes from ``HF_TOKEN``), registers the trained model in the MLflow
    model registry and ends the pipeline's MLflow run. Returns the registered version.
    """
    import json

    from multivae.names import METRICS_FILE, MODEL_CARD_FILE, SUMMARY_FILE
    from multivae.workflow import register_step

    with open(f"{report.path}/{METRICS_FILE}") as handle:
        metrics = json.load(handle)
    with open(f"{data.path}/{SUMMARY_FILE}") as handle:
        summary = json.load(handle)
    record = register_step(
        model.path,
        metrics,
        summary,
        hub_model.path,
        hub_repo=hub_repo,
        dry_run=dry_run,
        registered_name=registered_name,
        tracking_uri=mlflow_uri,
        parent_run_id=parent_run_id,
        train_run_id=train_run_id,
    )
    hub_model.metadata.update({k: v for k, v in record.items() if v is not None})
    with open(f"{hub_model.path}/{MODEL_CARD_FILE}") as source, open(card.path, "w") as target:
        target.write(source.read())
    return str(record["registered_version"] or "")
