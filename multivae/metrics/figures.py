"""Evaluation figures written as PNG files: image grids and latent embeddings.

Figures are plain :class:`matplotlib.figure.Figure` objects drawn by the Agg canvas, so nothing
here touches pyplot's global state or needs a display, and nothing is ever shown. Each file is
written under a temporary name in the target folder and renamed into place with ``os.replace``,
so a reader never sees a half-written image. Images are expected in ``[0, 1]`` (values outside
are clipped) with 1 or 3 channels; non-image modalities are for the caller to skip.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from numpy.typing import NDArray
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE
from torchvision.utils import make_grid

from multivae.metrics.latents import ArrayLike, as_numpy

DPI = 100
"""Resolution of the written PNGs, in pixels per inch."""
TILE_INCHES = 0.9
"""Largest width of one image of a grid, in inches."""
MAX_GRID_INCHES = 16.0
"""Largest width of the images of one grid row together, in inches."""
MAX_LEGEND_CLASSES = 20
"""Embedding plots with more classes show a colour bar instead of a legend."""
TSNE_PERPLEXITY = 30.0
"""t-SNE perplexity, lowered for small sets (it must stay below the number of points)."""


def _write_png(figure: Figure, path: str | os.PathLike[str]) -> Path:
    """Render ``figure`` to ``path`` as a PNG, atomically (temporary name, then rename)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex[:12]}")
    try:
        figure.savefig(temporary, format="png", dpi=DPI, bbox_inches="tight")
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)
    return target


def _new_figure(width: float, height: float) -> Figure:
    """A figure of the given size in inches, attached to an Agg canvas."""
    figure = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(figure)
    return figure


def _row_image(row: torch.Tensor, what: str) -> NDArray[np.float32]:
    """One row of images ``(N, C, H, W)`` as an ``(H', W', 3)`` array for ``imshow``."""
    if row.ndim != 4 or row.shape[1] not in (1, 3):
        raise ValueError(
            f"{what}: expected images of shape (N, 1 or 3, H, W), found {tuple(row.shape)}"
        )
    images = row.detach().to("cpu", torch.float32).clamp(0.0, 1.0)
    grid: torch.Tensor = make_grid(images, nrow=images.shape[0], padding=2, pad_value=1.0)
    return grid.permute(1, 2, 0).numpy()


def _save_rows(
    rows: Sequence[torch.Tensor],
    row_titles: Sequence[str] | None,
    path: str | os.PathLike[str],
    title: str | None,
    what: str,
) -> Path:
    """Draw rows of images (one axes per row, the row title on its left) and write the PNG."""
    if not rows:
        raise ValueError(f"{what}: no rows of images to draw")
    if row_titles is not None and len(row_titles) != len(rows):
        raise ValueError(f"{what}: {len(rows)} rows but {len(row_titles)} row titles")
    counts = [row.shape[0] if row.ndim > 0 else 0 for row in rows]
    if len(set(counts)) != 1 or counts[0] == 0:
        raise ValueError(
            f"{what}: every row needs the same positive number of samples, found {counts}"
        )
    images = [_row_image(row, what) for row in rows]
    samples = counts[0]
    tile = min(TILE_INCHES, MAX_GRID_INCHES / samples)
    # Each row's height follows its images' aspect ratio (rows may hold different sizes).
    heights = [tile * row.shape[2] / row.shape[3] for row in rows]
    figure = _new_figure(samples * tile + 1.5, sum(heights) + (0.5 if title else 0.1))
    axes = figure.subplots(len(rows), 1, squeeze=False, gridspec_kw={"height_ratios": heights})
    for index, (axis, image) in enumerate(zip(axes[:, 0], images, strict=True)):
        axis.imshow(image, interpolation="nearest")
        axis.set_xticks([])
        axis.set_yticks([])
        if row_titles is not None:
            axis.set_ylabel(row_titles[index], rotation=0, ha="right", va="center")
    if title:
        figure.suptitle(title)
    return _write_png(figure, path)


def save_image_grid(
    rows: Sequence[torch.Tensor],
    path: str | os.PathLike[str],
    row_titles: Sequence[str] | None = None,
    title: str | None = None,
) -> Path:
    """Write rows of images as one grid, e.g. conditioning images then generated ones.

    Args:
        rows: Image batches ``(N, C, H, W)`` with the same ``N``; sizes and channel counts (1 or
            3) may differ between rows.
        path: The PNG to write.
        row_titles: One label per row, drawn on its left.
        title: Figure title.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: On an empty list, rows with different numbers of samples, non-image rows, or
            a wrong number of row titles.
    """
    return _save_rows(rows, row_titles, path, title, "save_image_grid")


def save_conditional_grid(
    cond_images: Mapping[str, torch.Tensor],
    generated: Mapping[str, torch.Tensor],
    path: str | os.PathLike[str],
    title: str,
) -> Path:
    """Write conditional generations: one column per sample, one row per modality.

    The rows are the conditioning modalities (labelled ``given <name>``), then the generated ones
    (labelled ``generated <name>``).

    Args:
        cond_images: Conditioning images by modality, each ``(N, C, H, W)``; may be empty for
            unconditional samples.
        generated: Generated images by modality, each ``(N, C, H, W)``.
        path: The PNG to write.
        title: Figure title, e.g. which subset conditions the generations.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: When there are no rows, or the rows differ in their number of samples.
    """
    rows = [*cond_images.values(), *generated.values()]
    titles = [f"given {name}" for name in cond_images] + [f"generated {name}" for name in generated]
    return _save_rows(rows, titles, path, title, "save_conditional_grid")


def save_reconstructions(
    originals: torch.Tensor,
    reconstructions: torch.Tensor,
    path: str | os.PathLike[str],
    title: str | None = None,
) -> Path:
    """Write originals above their reconstructions, one column per sample.

    Args:
        originals: Images ``(N, C, H, W)``.
        reconstructions: Images of the same shape.
        path: The PNG to write.
        title: Figure title.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: When the shapes differ or are not image batches.
    """
    if originals.shape != reconstructions.shape:
        raise ValueError(
            f"save_reconstructions: shapes differ, {tuple(originals.shape)} and "
            f"{tuple(reconstructions.shape)}"
        )
    return _save_rows(
        [originals, reconstructions],
        ["original", "reconstruction"],
        path,
        title,
        "save_reconstructions",
    )


def _embed(points: NDArray[np.float64], method: str, seed: int) -> NDArray[np.float64]:
    """A 2-D embedding ``(N, 2)`` of ``(N, D)`` points by PCA or t-SNE."""
    if points.shape[1] == 1:
        # Nothing to reduce: the line itself, drawn flat.
        return np.column_stack([points[:, 0], np.zeros(points.shape[0])])
    if method == "pca":
        return np.asarray(PCA(n_components=2, random_state=seed).fit_transform(points))
    if method == "tsne":
        perplexity = min(TSNE_PERPLEXITY, max(1.0, (points.shape[0] - 1) / 3))
        embedding = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed)
        return np.asarray(embedding.fit_transform(points))
    raise ValueError(f"save_embedding_plot: method must be 'pca' or 'tsne', found {method!r}")


def save_embedding_plot(
    latents: ArrayLike,
    labels: ArrayLike | None,
    path: str | os.PathLike[str],
    method: Literal["pca", "tsne"] = "pca",
    seed: int = 0,
    title: str | None = None,
) -> Path:
    """Write a 2-D embedding of the latents as a scatter plot coloured by label.

    Args:
        latents: Array of shape ``(N, D)``, ``N >= 3``.
        labels: Labels of shape ``(N,)``, or ``None`` for a single colour. Up to 20 classes get a
            legend; more get a colour bar over the sorted classes.
        path: The PNG to write.
        method: ``pca`` (fast, linear) or ``tsne`` (slower, local structure).
        seed: Seed of the embedding.
        title: Axes title; the method's name when ``None``.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: On malformed shapes, fewer than three points, non-finite latents, or an
            unknown method.
    """
    points = as_numpy(latents).astype(np.float64)
    if points.ndim != 2 or points.shape[0] < 3 or points.shape[1] < 1:
        raise ValueError(
            f"save_embedding_plot: expected latents of shape (N, D) with N >= 3, found "
            f"{points.shape}"
        )
    if not np.isfinite(points).all():
        raise ValueError("save_embedding_plot: latents contain NaN or infinite values")
    classes = None if labels is None else as_numpy(labels)
    if classes is not None and classes.shape != (points.shape[0],):
        raise ValueError(
            f"save_embedding_plot: expected labels of shape ({points.shape[0]},), found "
            f"{classes.shape}"
        )
    embedding = _embed(points, method, seed)
    figure = _new_figure(7.0, 5.5)
    axis = figure.subplots()
    if classes is None:
        axis.scatter(embedding[:, 0], embedding[:, 1], s=8)
    else:
        names, codes = np.unique(classes, return_inverse=True)
        if len(names) <= MAX_LEGEND_CLASSES:
            palette = colormaps["tab10" if len(names) <= 10 else "tab20"]
            for code, name in enumerate(names):
                chosen = codes == code
                axis.scatter(
                    embedding[chosen, 0],
                    embedding[chosen, 1],
                    s=8,
                    color=palette(code),
                    label=str(name),
                )
            axis.legend(
                title="label",
                loc="upper left",
                bbox_to_anchor=(1.01, 1.0),
                fontsize=8,
                markerscale=2,
            )
        else:
            scatter = axis.scatter(embedding[:, 0], embedding[:, 1], s=8, c=codes, cmap="viridis")
            figure.colorbar(scatter, ax=axis, label="label (sorted index)")
    axis.set_xlabel(f"{method} 1")
    axis.set_ylabel(f"{method} 2")
    axis.set_title(title if title is not None else f"latents ({method})")
    return _write_png(figure, path)


def save_dropout_rates(
    rates: Sequence[float], threshold: float, path: str | os.PathLike[str]
) -> Path:
    """Write a bar chart of each latent dimension's dropout rate, with the pruning threshold.

    Bars at or above ``threshold`` (the dimensions a sparse model drops at inference) are grey,
    the kept ones blue; the title counts the kept dimensions.

    Args:
        rates: Dropout rate ``p`` of every latent dimension, each in ``[0, 1]``.
        threshold: The rate from which a dimension is dropped.
        path: The PNG to write.

    Raises:
        ValueError: For no rates, or a rate or threshold outside ``[0, 1]``.
    """
    values = np.asarray(rates, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(
            f"save_dropout_rates: expected a list of rates, found shape {values.shape}"
        )
    if not (np.isfinite(values).all() and (values >= 0).all() and (values <= 1).all()):
        raise ValueError("save_dropout_rates: expected rates in [0, 1]")
    if not 0 <= threshold <= 1:
        raise ValueError(f"save_dropout_rates: expected a threshold in [0, 1], found {threshold}")
    kept = values < threshold
    figure = _new_figure(max(4.0, 0.35 * values.size + 1.5), 3.5)
    axis = figure.subplots()
    colours = np.where(kept, "tab:blue", "tab:grey")
    axis.bar(np.arange(values.size), values, color=colours)
    axis.axhline(threshold, color="tab:red", linestyle="--", linewidth=1, label="threshold")
    axis.set_ylim(0.0, 1.0)
    axis.set_xlabel("latent dimension")
    axis.set_ylabel("dropout rate")
    axis.set_title(f"{int(kept.sum())} of {values.size} dimensions kept")
    axis.legend(loc="upper right")
    return _write_png(figure, path)
