"""train: one run or a sweep, here, on Ray Train, or on an existing Ray cluster."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def train(
    data: Input[Dataset],
    model_name: str,
    model_config: dict,
    training: dict,
    sweep: str,
    train_mode: str,
    num_workers: int,
    ray_address: str,
    shared_dir: str,
    namespace: str,
    ray_cluster: str,
    ray_auth_secret: str,
    image: str,
    mlflow_uri: str,
    parent_run_id: str,
    model: Output[Model],
) -> str:
    """Train ``model_name`` on the dataset; the model folder is the Model artifact.

    ``train_mode``: ``local`` (this pod), ``ray`` (Ray Train workers on a local Ray instance),
    ``ray-job`` (Ray Job Submission to ``ray_address``) or ``rayjob`` (a KubeRay RayJob on
    ``ray_cluster``); the last two stage the data on ``shared_dir``, a volume this step and the
    Ray cluster share. A non-empty ``sweep`` (a sweep file's text) runs a Ray Tune + Optuna
    sweep and keeps its best trial. Returns the MLflow run id of the trained model.
    """
    from multivae.workflow import train_step

    record = train_step(
        data.path,
        model.path,
        model=model_name,
        model_config=model_config,
        training=training,
        sweep=sweep,
        mode=train_mode,
        num_workers=num_workers,
        ray_address=ray_address,
        shared_dir=shared_dir,
        namespace=namespace,
        image=image,
        ray_cluster=ray_cluster,
        ray_auth_secret=ray_auth_secret,
        tracking_uri=mlflow_uri,
        parent_run_id=parent_run_id,
    )
    model.metadata["model"] = model_name
    model.metadata["mlflow_run_id"] = record["mlflow_run_id"]
    return str(record["mlflow_run_id"])
