import matplotlib.image
import numpy as np
import pytest
import torch
from PIL import Image

from multivae.metrics.figures import (
    save_conditional_grid,
    save_embedding_plot,
    save_image_grid,
    save_reconstructions,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _check_png(path, directory):
    assert path.is_file() and path.stat().st_size > 0
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as image:
        width, height = image.size
    assert 100 <= width <= 3000 and 50 <= height <= 3000
    pixels = matplotlib.image.imread(path)
    assert pixels.shape[:2] == (height, width)
    # Something was drawn: not a blank canvas.
    assert pixels[..., :3].std() > 0.01
    # Only the final file is left: no temporary names.
    assert sorted(p.name for p in directory.iterdir()) == [path.name]
    return width, height


def _images(n, c=1, size=28, seed=0):
    return torch.rand(n, c, size, size, generator=torch.Generator().manual_seed(seed))


def test_image_grid_with_rows_of_different_sizes_and_channels(tmp_path):
    rows = [_images(6, c=1, size=28), _images(6, c=3, size=32, seed=1), _images(6, seed=2)]
    path = save_image_grid(rows, tmp_path / "grid.png", row_titles=["mnist", "svhn", "sample"])
    assert path == tmp_path / "grid.png"
    _check_png(path, tmp_path)


def test_more_rows_make_a_taller_grid(tmp_path):
    _, short = _check_png(save_image_grid([_images(5)], tmp_path / "a" / "one.png"), tmp_path / "a")
    path = save_image_grid([_images(5)] * 3, tmp_path / "b" / "three.png")
    _, tall = _check_png(path, tmp_path / "b")
    assert tall > 2 * short


def test_image_grid_rejects_mismatched_rows(tmp_path):
    with pytest.raises(ValueError, match="same positive number of samples"):
        save_image_grid([_images(4), _images(5)], tmp_path / "grid.png")
    with pytest.raises(ValueError, match="row titles"):
        save_image_grid([_images(4)], tmp_path / "grid.png", row_titles=["a", "b"])
    with pytest.raises(ValueError, match=r"\(N, 1 or 3, H, W\)"):
        save_image_grid([torch.rand(4, 10)], tmp_path / "grid.png")
    assert list(tmp_path.iterdir()) == []


def test_conditional_grid(tmp_path):
    path = save_conditional_grid(
        {"mnist": _images(8)},
        {"svhn": _images(8, c=3, size=32, seed=1), "text": _images(8, seed=2)},
        tmp_path / "conditional.png",
        title="given mnist",
    )
    _check_png(path, tmp_path)
    with pytest.raises(ValueError, match="same positive number of samples"):
        save_conditional_grid({"mnist": _images(8)}, {"svhn": _images(7)}, tmp_path / "x.png", "t")


def test_reconstructions(tmp_path):
    originals = _images(10)
    path = save_reconstructions(originals, originals.clamp(0.1, 0.9), tmp_path / "recon.png")
    _check_png(path, tmp_path)
    with pytest.raises(ValueError, match="shapes differ"):
        save_reconstructions(originals, originals[:5], tmp_path / "recon.png")


@pytest.mark.parametrize("method", ["pca", "tsne"])
def test_embedding_plot(tmp_path, method):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 20)
    latents = rng.normal(size=(60, 5)) + labels[:, None] * 4
    path = save_embedding_plot(latents, labels, tmp_path / f"{method}.png", method=method)
    _check_png(path, tmp_path)


def test_embedding_plot_without_labels_or_with_many_classes(tmp_path):
    latents = torch.randn(50, 2, generator=torch.Generator().manual_seed(0))
    _check_png(save_embedding_plot(latents, None, tmp_path / "a" / "plain.png"), tmp_path / "a")
    path = save_embedding_plot(latents, torch.arange(50), tmp_path / "b" / "many.png")
    _check_png(path, tmp_path / "b")
    with pytest.raises(ValueError, match="method"):
        save_embedding_plot(latents, None, tmp_path / "c.png", method="umap")


def test_dropout_rates_are_drawn_with_their_threshold(tmp_path):
    from multivae.metrics.figures import save_dropout_rates

    path = save_dropout_rates([0.05, 0.9, 0.19, 0.2], 0.2, tmp_path / "dropout.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match=r"expected rates in \[0, 1\]"):
        save_dropout_rates([0.1, 1.5], 0.2, tmp_path / "bad.png")
    with pytest.raises(ValueError, match="expected a list of rates"):
        save_dropout_rates([], 0.2, tmp_path / "empty.png")
