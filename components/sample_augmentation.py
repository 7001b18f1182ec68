"""sample-augmentation: a latent sampler fitted on the train latents, a synthetic dataset."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Model, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def sample_augmentation(
    model: Input[Model],
    data: Input[Dataset],
    classifiers: Input[Model],
    sampler: str,
    n_synthetic: int,
    seed: int,
    mlflow_uri: str,
    parent_run_id: str,
    synthetic: Output[Dataset],
    fitted_sampler: Output[Artifact],
) -> None:
    """Fit the sampler and write the synthetic dataset.

    ``n_synthetic`` generated samples, every modality present, labelled by the dataset's
    ``classifiers``, provenance in the metadata; the fitted sampler is saved too.
    """
    import os

    from multivae.workflow import augment_step

    os.makedirs(fitted_sampler.path, exist_ok=True)
    summary = augment_step(
        model.path,
        data.path,
        synthetic.path,
        sampler=sampler,
        n=n_synthetic,
        seed=seed,
        sampler_dir=None if sampler == "prior" else fitted_sampler.path,
        classifiers=classifiers.path,
        tracking_uri=mlflow_uri,
        parent_run_id=parent_run_id,
    )
    synthetic.metadata["rows"] = summary["splits"]["train"]["rows"]
    fitted_sampler.metadata["kind"] = sampler
