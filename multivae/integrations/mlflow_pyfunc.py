"""A multivae model folder as an MLflow pyfunc model, logged as "models from code".

:func:`multivae.integrations.mlflow.register_model` logs this file as the model's code, with the
model folder as the artifact ``model_dir``. MLflow executes the file when it loads the model
(``set_model`` at the bottom hands it the wrapper) and ``load_context`` reads the folder with
:func:`multivae.load_model`: safetensors and JSON, nothing pickled. Loading needs ``multivae``
installed.

``predict`` takes the observed modalities, as a mapping ``name -> array`` or as a DataFrame with
one column per modality and one sample per cell (an array, nested lists, or the sample
flattened), and returns conditional generations: ``name -> array (N, *shape)`` of likelihood
means (class indices for categorical modalities), for the modalities named by the param ``gen``
(all by default). The model's signature says so
(:func:`multivae.integrations.mlflow.model_signature`): every modality an optional input
column, every generated one an output tensor. Through ``mlflow.pyfunc.load_model``, MLflow
checks an input against it and hands ``predict`` a mapping as a DataFrame of one sample per
row::

    model = mlflow.pyfunc.load_model("models:/my-model/1")
    model.predict({"view0": x0}, params={"gen": ["view1"]})  # {"view1": array (N, 8)}
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import mlflow.models
import numpy as np
import pandas as pd  # type: ignore[import-untyped]
import torch
from mlflow.pyfunc.model import PythonModel, PythonModelContext

from multivae.data.batch import Batch
from multivae.factory import load_model
from multivae.models.base import MultimodalVAE
from multivae.names import PYFUNC_MODEL_ARTIFACT


def _columns(model_input: object) -> dict[str, np.ndarray[Any, Any]]:
    """``name -> array (N, ...)`` from a mapping of arrays or a DataFrame of samples."""
    if isinstance(model_input, Mapping):
        return {str(name): np.asarray(values) for name, values in model_input.items()}
    if isinstance(model_input, pd.DataFrame):
        return {
            str(name): np.stack([np.asarray(cell) for cell in model_input[name]])
            for name in model_input.columns
        }
    raise TypeError(
        "expected a mapping of modality name -> array, or a DataFrame with a column per "
        f"modality, found {type(model_input).__name__}"
    )


def observed_batch(model: MultimodalVAE, observed: Mapping[str, np.ndarray[Any, Any]]) -> Batch:
    """A batch where the ``observed`` modalities are present and the others absent (zeros)."""
    unknown = sorted(set(observed) - set(model.modalities))
    if not observed or unknown:
        raise ValueError(
            f"{model.name}: expected observed modalities among {list(model.modalities)}, "
            f"found {sorted(observed)}"
        )
    sizes = {len(values) for values in observed.values()}
    if len(sizes) != 1:
        raise ValueError(f"expected the same number of samples in every modality, found {sizes}")
    (size,) = sizes
    data, mask = {}, {}
    for name in model.modalities:
        spec = model.config.modalities[name]
        dtype = torch.long if spec.likelihood == "categorical" else torch.float32
        shape = (size, *spec.shape)
        if name in observed:
            data[name] = torch.as_tensor(observed[name].reshape(shape), dtype=dtype)
        else:
            data[name] = torch.zeros(shape, dtype=dtype)
        mask[name] = torch.full((size,), name in observed)
    return Batch(data=data, mask=mask)


class MultimodalVAEModel(PythonModel):
    """Conditional generation with a multivae model folder."""

    model: MultimodalVAE

    def load_context(self, context: PythonModelContext) -> None:
        """Load the model folder logged as the artifact ``model_dir``."""
        self.model = load_model(context.artifacts[PYFUNC_MODEL_ARTIFACT])

    # MLflow leaves a DataFrame annotation of ``model_input`` alone (no schema inferred from
    # it, no warning; it warns about any other annotation but ``list[...]``): the signature's
    # input schema is what inputs are checked against. A mapping of arrays is accepted as well.
    def predict(
        self,
        context: PythonModelContext,
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> dict[str, np.ndarray[Any, Any]]:
        """Generate the modalities ``params["gen"]`` (all by default) from the observed ones."""
        observed = _columns(model_input)
        gen = (params or {}).get("gen") or None
        outputs = self.model.predict(observed_batch(self.model, observed), list(observed), gen)
        return {name: values.cpu().numpy() for name, values in outputs.items()}


mlflow.models.set_model(MultimodalVAEModel())
