"""Compiling the pipeline: KFP IR YAML of the cluster pipeline, the same file every time.

``python -m pipelines compile`` writes ``pipeline.yaml`` by default; ``submit`` compiles into a
scratch folder before it uploads.
"""

from __future__ import annotations

import ast
import os
import re
import tempfile
from pathlib import Path
from typing import Any

COMPILE_COMMAND = "python -m pipelines compile"


def compile_pipeline(
    path: str | os.PathLike[str], platform: str = "kubernetes", train_gpus: int = 0
) -> Path:
    """Compile the pipeline to KFP IR YAML at ``path`` (``train_gpus``: see build_pipeline).

    ``path`` follows the one output rule (:func:`multivae.io.claim_output`): a new file, or
    one this command wrote (KFP's ``# PIPELINE DEFINITION`` header), replaced atomically; never
    another file, a folder, nor a place inside a dataset or another command's output.
    """
    from kfp import compiler

    from multivae.io import atomic_write_text, claim_output
    from pipelines.pipeline import build_pipeline

    path = claim_output(path, "compiled pipeline", COMPILE_COMMAND, option="--out")
    with tempfile.TemporaryDirectory() as scratch:
        package = Path(scratch) / path.name
        compiler.Compiler().compile(build_pipeline(platform, train_gpus), package_path=str(package))
        atomic_write_text(path, _stable_header(package.read_text()))
    return path


_DEFAULT_COMMENT = re.compile(r"^(#\s+\w+: dict \[Default: )(\{.*\})(\])$")


def _stable_header(text: str) -> str:
    """The compiled YAML with the mappings of its header comment in sorted key order.

    KFP lists each parameter's default in a comment at the top of the file, writing mappings in
    the order of the protobuf ``Struct`` they were stored in, which changes from one process to
    the next; sorting them makes compiling twice give the same file.
    """
    lines = []
    for line in text.split("\n"):
        match = _DEFAULT_COMMENT.match(line)
        if match:
            value = ast.literal_eval(match.group(2))
            line = f"{match.group(1)}{_sorted_repr(value)}{match.group(3)}"
        lines.append(line)
    return "\n".join(lines)


def _sorted_repr(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k!r}: {_sorted_repr(value[k])}" for k in sorted(value)) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_sorted_repr(v) for v in value) + "]"
    return repr(value)
