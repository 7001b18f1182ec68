"""Per-modality classifiers that judge the class of real and generated samples.

Coherence metrics ask whether a generated modality shows the class of the sample it was generated
from; a classifier trained on the real data of that modality answers. :func:`train_classifiers`
trains one :class:`ModalityClassifier` per modality on a labelled dataset and writes the set as a
folder (``classifiers.safetensors`` + ``classifiers.json``, no pickle), which
:meth:`ClassifierSet.load` reads back. By default the folder is ``DATA-classifiers``, beside the
dataset (:func:`default_classifier_dir`).

* :mod:`~multivae.metrics.classifiers.architectures`: the architectures, by the modality's kind
  and shape;
* :mod:`~multivae.metrics.classifiers.classifier_set`: a set of classifiers, applied, saved and
  loaded;
* :mod:`~multivae.metrics.classifiers.training`: training a set on a dataset.
"""

from multivae.metrics.classifiers.architectures import (
    ARCHITECTURES,
    DEFAULT_OPTIONS,
    ClassifierError,
    ModalityClassifier,
    default_architecture,
)
from multivae.metrics.classifiers.classifier_set import FORMAT_VERSION, ClassifierSet
from multivae.metrics.classifiers.training import default_classifier_dir, train_classifiers

__all__ = [
    "ARCHITECTURES",
    "DEFAULT_OPTIONS",
    "FORMAT_VERSION",
    "ClassifierError",
    "ClassifierSet",
    "ModalityClassifier",
    "default_architecture",
    "default_classifier_dir",
    "train_classifiers",
]
