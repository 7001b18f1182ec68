"""Data augmentation and imputation with a trained model, written as multivae datasets.

* :func:`sample_dataset` generates a fully synthetic dataset: ``n`` samples of every modality
  decoded from latents drawn from the model's prior or from a sampler fitted on encoded data
  (see :mod:`multivae.samplers`). Every presence flag is true.
* :func:`impute_dataset` copies a dataset and fills each sample's missing modalities with what
  the model generates from that sample's observed ones. Observed values are copied unchanged,
  every presence flag becomes true, and a ``<name>__imputed`` column per modality marks the
  generated cells (the schema sets ``imputed``; see :mod:`multivae.data.schema`).

Both write through :class:`~multivae.data.SplitWriter` in chunks, so memory stays bounded, and
build the output folder under a temporary name that replaces ``out_dir`` only when every split is
complete. Generated values are clamped to the value range the dataset declares and cast to its
dtype, so the output passes the same validation as any dataset. The dataset's description
records where the data came from under ``extra["provenance"]``: the operation, the model's name,
folder and ``model_fingerprint`` (:func:`multivae.model_folder.model_fingerprint`; ``None`` for
a model that was never loaded from or saved to a folder), the sampler with what it was fitted on
or the method and the source's ``source_fingerprint``, the seed, the sizes, the creation time
and the library version. The same inputs and seed give the same data.

:func:`sample_command` and :func:`impute_command` load a model folder and check that a dataset
matches its modalities before calling these; the ``multivae sample`` and ``multivae impute``
commands call them.
"""

from multivae.augment.common import PROVENANCE_KEY, check_model_matches, schema_from_model
from multivae.augment.imputation import IMPUTATION_METHODS, impute_command, impute_dataset
from multivae.augment.sampling import sample_command, sample_dataset

__all__ = [
    "IMPUTATION_METHODS",
    "PROVENANCE_KEY",
    "check_model_matches",
    "impute_command",
    "impute_dataset",
    "sample_command",
    "sample_dataset",
    "schema_from_model",
]
