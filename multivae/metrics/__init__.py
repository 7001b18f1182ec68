"""Evaluation metrics and their figures.

:func:`evaluate` (``multivae evaluate``) computes them all for a model and a dataset. The parts:
likelihoods (:func:`joint_nll`, :func:`conditional_nll`, :func:`likelihood_report`),
coherences judged by per-modality classifiers (:func:`train_classifiers`, :class:`ClassifierSet`,
:func:`cross_modal_coherence`, :func:`joint_coherence`), FID through torchmetrics with a
pluggable feature network (:func:`fid`, :class:`InceptionFeatures`, :class:`ClassifierFeatures`),
reconstruction
(:func:`mse`, :func:`ssim`), latent clustering and linear probes (:func:`clustering_scores`,
:func:`linear_probe_accuracy`) and figures.
"""

from multivae.metrics.classifiers import (
    ClassifierError,
    ClassifierSet,
    ModalityClassifier,
    default_classifier_dir,
    train_classifiers,
)
from multivae.metrics.coherence import CoherenceResult, cross_modal_coherence, joint_coherence
from multivae.metrics.evaluate import EvaluationConfig, check_compatible, evaluate
from multivae.metrics.fid import (
    ClassifierFeatures,
    FeatureExtractor,
    InceptionFeatures,
    fid,
    fid_from_features,
    fid_metric_name,
)
from multivae.metrics.figures import (
    save_conditional_grid,
    save_embedding_plot,
    save_image_grid,
    save_reconstructions,
)
from multivae.metrics.latents import clustering_scores, linear_probe_accuracy
from multivae.metrics.likelihood import conditional_nll, joint_nll, likelihood_report
from multivae.metrics.reconstruction import mse, ssim

__all__ = [
    "ClassifierError",
    "ClassifierFeatures",
    "ClassifierSet",
    "CoherenceResult",
    "EvaluationConfig",
    "FeatureExtractor",
    "InceptionFeatures",
    "ModalityClassifier",
    "check_compatible",
    "clustering_scores",
    "conditional_nll",
    "cross_modal_coherence",
    "default_classifier_dir",
    "evaluate",
    "fid",
    "fid_from_features",
    "fid_metric_name",
    "joint_coherence",
    "joint_nll",
    "likelihood_report",
    "linear_probe_accuracy",
    "mse",
    "save_conditional_grid",
    "save_embedding_plot",
    "save_image_grid",
    "save_reconstructions",
    "ssim",
    "train_classifiers",
]
