"""The sample-augmentation step: a latent sampler fitted, a synthetic dataset written."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from multivae.names import CLASSIFIERS_CONFIG_FILE, SYNTHETIC_SUMMARY_ARTIFACT
from multivae.workflow.artifacts import model_folder_in
from multivae.workflow.tracking import log_metrics, step_run, tracking_uri_for


def augment_step(
    model_dir: str | os.PathLike[str],
    data: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    sampler: str = "gmm",
    n: int = 1000,
    seed: int = 0,
    sampler_dir: str | os.PathLike[str] | None = None,
    classifiers: str | os.PathLike[str] | None = None,
    tracking_uri: str = "",
    parent_run_id: str = "",
) -> dict[str, Any]:
    """Fit ``sampler`` on the train latents and write ``n`` synthetic samples to ``out``.

    The output is labelled by the classifiers in ``classifiers`` (the preprocess step's; by
    default the dataset's own, beside it) when there are some. The fitted sampler saved in
    ``sampler_dir`` and the dataset's provenance record the model and the data by
    fingerprint. Returns the synthetic dataset's summary (validated).

    Raises:
        ValueError: When the dataset's own classifiers (``classifiers`` not given) were trained
            on other data (by fingerprint), as :func:`multivae.metrics.evaluate` refuses them.
    """
    from multivae.augment import sample_dataset
    from multivae.data.fingerprint import dataset_fingerprint
    from multivae.data.summary import summarize
    from multivae.factory import load_model
    from multivae.metrics.classifiers import ClassifierSet, default_classifier_dir

    model = load_model(model_folder_in(model_dir))
    classifier_dir = Path(classifiers) if classifiers else default_classifier_dir(data)
    has_set = (classifier_dir / CLASSIFIERS_CONFIG_FILE).is_file()
    label_with = ClassifierSet.load(classifier_dir) if has_set else None
    if label_with is not None and classifiers is None:
        trained_on = label_with.dataset.get("fingerprint")
        expected = dataset_fingerprint(data)
        if trained_on is not None and trained_on != expected:
            raise ValueError(
                f"{classifier_dir}: expected the classifiers of {data} (fingerprint {expected}), "
                f"found ones trained on other data (fingerprint {trained_on}); retrain them "
                f"with `multivae train-classifiers {data} --overwrite`, or name a folder"
            )
    out = Path(out)
    tracking_uri = tracking_uri_for(tracking_uri, out.parent)
    params = {"sampler": sampler, "n": n, "seed": seed}
    with step_run(tracking_uri, parent_run_id, "sample-augmentation", params) as (client, run_id):
        sample_dataset(
            model,
            n,
            out,
            sampler=sampler,
            fit_data=None if sampler == "prior" else data,
            seed=seed,
            progress=False,
            model_path=model_folder_in(model_dir),
            label_with=label_with,
            save_sampler=None if sampler == "prior" or sampler_dir is None else sampler_dir,
        )
        summary = summarize(out, validate=True)
        client.log_dict(run_id, summary, SYNTHETIC_SUMMARY_ARTIFACT)
        log_metrics(client, run_id, {"samples": float(n)})
    return summary
