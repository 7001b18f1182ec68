"""Model commands: ``list-models``."""

from __future__ import annotations

import argparse
from dataclasses import asdict
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from multivae.models.base import Capabilities


def _capability_flags(capabilities: Capabilities) -> str:
    flags = [name.replace("_", "-") for name, value in asdict(capabilities).items() if value]
    return " ".join(flags) if flags else "-"


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``list-models``."""
    list_parser = commands.add_parser(
        "list-models",
        help="list the registered models and their capabilities",
        description="Print one registered model per line with the capabilities it declares "
        "(missing-modalities, private-latents, multi-stage, importance-sampled).",
    )
    list_parser.set_defaults(func=list_models)


def list_models(args: argparse.Namespace) -> None:
    """``multivae list-models``: one model per line with its declared capabilities."""
    from multivae.factory import get_model_class
    from multivae.factory import list_models as registered

    for name in registered():
        flags = _capability_flags(get_model_class(name).declared_capabilities)
        print(f"{name:<12} {flags}")
