"""preprocess: parameters checked, the dataset written and validated, classifiers trained."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Markdown, Model, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def preprocess(
    dataset: str,
    missing_rate: float,
    seed: int,
    dataset_params: dict,
    source: dict,
    classifier_epochs: int,
    model_name: str,
    model_config: dict,
    training: dict,
    sweep: str,
    train_mode: str,
    sampler: str,
    n_synthetic: int,
    mlflow_uri: str,
    run_name: str,
    data: Output[Dataset],
    classifiers: Output[Model],
    summary: Output[Markdown],
) -> NamedTuple("Outputs", [("parent_run_id", str), ("tracking_uri", str)]):
    """Check every pipeline parameter, then write the validated Parquet splits.

    ``classifiers`` holds the judges of coherence, trained on ``data`` (none when
    ``classifier_epochs`` is 0 or the dataset has no labels).

    The first step: a bad parameter (unknown model, missing rate outside [0, 1), bad sweep)
    fails here with the parameter named. Opens the pipeline's parent MLflow run.
    """
    import json
    from collections import namedtuple

    from multivae.data.summary import format_summary
    from multivae.workflow import preprocess_step

    result = preprocess_step(
        data.path,
        dataset=dataset,
        missing_rate=missing_rate,
        seed=seed,
        dataset_params=dataset_params,
        source=source,
        classifier_epochs=classifier_epochs,
        classifiers_out=classifiers.path,
        tracking_uri=mlflow_uri,
        run_name=run_name,
        parameters={
            "model": model_name,
            "model_config": model_config,
            "training": training,
            "sweep": sweep,
            "train_mode": train_mode,
            "sampler": sampler,
            "n_synthetic": n_synthetic,
            "dataset": dataset,
            "missing_rate": missing_rate,
        },
    )
    data.metadata["name"] = result["name"]
    data.metadata["splits"] = {k: v["rows"] for k, v in result["splits"].items()}
    classifiers.metadata["test_accuracy"] = result["classifier_test_accuracy"]
    with open(summary.path, "w") as handle:
        handle.write(f"# Dataset `{result['name']}`\n\n```\n{format_summary(result)}\n```\n\n")
        handle.write("Classifier test accuracy (judges of coherence):\n\n```json\n")
        handle.write(json.dumps(result["classifier_test_accuracy"], indent=2) + "\n```\n")
    outputs = namedtuple("Outputs", ["parent_run_id", "tracking_uri"])
    return outputs(result["mlflow_parent_run_id"], result["tracking_uri"])
