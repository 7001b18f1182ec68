"""Multimodal VAEs for partially observed data."""

from multivae.data import Batch, DatasetSchema, ModalitySpec, MultimodalDataset, make_dataloader
from multivae.factory import create_model, get_model_class, list_models, load_model
from multivae.registry import register_model

__all__ = [
    "Batch",
    "DatasetSchema",
    "ModalitySpec",
    "MultimodalDataset",
    "create_model",
    "get_model_class",
    "list_models",
    "load_model",
    "make_dataloader",
    "register_model",
]
