"""What the steps' artifacts hold: the model folder in a Model artifact, figures as HTML."""

from __future__ import annotations

import base64
import html
import os
from pathlib import Path

from multivae.names import MODEL_CONFIG_FILE, MODEL_FOLDER


def model_folder_in(path: str | os.PathLike[str]) -> Path:
    """The model folder of a Model artifact (its ``model/``), or ``path`` when it is one."""
    folder = Path(path)
    inner = folder / MODEL_FOLDER
    return inner if (inner / MODEL_CONFIG_FILE).is_file() else folder


def figures_html(folder: str | os.PathLike[str], title: str) -> str:
    """A self-contained HTML page of every PNG in ``folder`` (for KFP's HTML artifact)."""
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    for path in sorted(Path(folder).glob("*.png")):
        encoded = base64.b64encode(path.read_bytes()).decode()
        parts.append(
            f"<figure><img alt='{html.escape(path.stem)}' src='data:image/png;base64,{encoded}'>"
            f"<figcaption>{html.escape(path.stem)}</figcaption></figure>"
        )
    parts.append("</body></html>")
    return "\n".join(parts)
