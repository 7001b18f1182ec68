"""Checkpoints: tensors and plain containers, written atomically, read without unpickling code.

A checkpoint is one ``torch.save`` file holding only tensors, numbers, strings, ``None`` and
lists, tuples and dicts of them, so ``torch.load(weights_only=True)`` reads it back and nothing
in it can run code. It is written to a temporary file in the same folder, flushed to disk and
renamed over the previous checkpoint with ``os.replace``: a crash at any moment leaves either
the old or the new checkpoint, never a truncated one.
"""

from __future__ import annotations

import os
import pickle
import random
import uuid
from pathlib import Path
from typing import Any

import torch

# Re-exported: the training loop and its callers name the checkpoint through this module.
from multivae.names import CHECKPOINT_FILE as CHECKPOINT_FILE

FORMAT_VERSION = 1


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write ``state`` to ``path`` atomically (temporary file, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:12]}")
    try:
        with open(temporary, "wb") as handle:
            torch.save({"format_version": FORMAT_VERSION, **state}, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (tensors on the CPU).

    Raises:
        FileNotFoundError: When there is no file at ``path``.
        ValueError: When the file is not a readable checkpoint of this format.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint to resume from")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise ValueError(
            f"{path}: not a readable checkpoint: it holds objects other than tensors, numbers, "
            "strings and containers of them, which are refused (nothing is unpickled)"
        ) from None
    except (RuntimeError, EOFError) as error:
        first_line = str(error).splitlines()[0] if str(error) else "the file ends early"
        raise ValueError(
            f"{path}: not a readable checkpoint ({type(error).__name__}: {first_line})"
        ) from None
    version = loaded.get("format_version") if isinstance(loaded, dict) else None
    if version != FORMAT_VERSION:
        raise ValueError(
            f"{path}: expected a checkpoint of format_version {FORMAT_VERSION}, found {version}"
        )
    state: dict[str, Any] = loaded
    return state


def capture_rng_state() -> dict[str, Any]:
    """The states of the random generators training draws from: torch (CPU, CUDA) and Python.

    The CUDA states are included when CUDA is in use (initialized) in this process. NumPy's
    legacy global generator is not captured: the project draws from explicit generators only.
    """
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    torch.set_rng_state(state["torch"])
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])
