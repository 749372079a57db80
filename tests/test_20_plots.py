"""The notebooks' two figures: a grid of images in [-1, 1] and 2-D samples over the data (lessons 3 and 20)."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pytest
import torch

from diffmath.plots import image_grid, samples_over_data


def test_image_grid_places_every_image_in_its_cell():
    """Five 3x4 images, two per row, pad 1: a 3 x 2 grid of cells on a white canvas; the value -1 maps to black, +1
    to white, and image k sits at row k // 2, column k % 2."""
    imgs = torch.linspace(-1, 1, 5).reshape(5, 1, 1, 1).expand(5, 3, 3, 4).clone()
    ax = image_grid(imgs, nrow=2, labels=["a", "b", "c"])
    canvas = ax.get_images()[0].get_array()
    assert canvas.shape == (3 * 4 + 1, 2 * 5 + 1, 3)
    for k in range(5):
        i, j = divmod(k, 2)
        cell = canvas[1 + 4 * i : 4 + 4 * i, 1 + 5 * j : 5 + 5 * j]
        assert abs(float(cell.mean()) - (k / 4)) < 1e-6
    assert float(canvas[-4:-1, 6:10].min()) == 1.0, "the empty sixth cell stays white"
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a", "b", "c"]
    plt.close("all")


def test_image_grid_of_one_channel_and_samples_over_data():
    ax = image_grid(torch.zeros(4, 1, 8, 8), title="grey")
    assert ax.get_images()[0].get_array().shape == (2 * 9 + 1, 2 * 9 + 1) and ax.get_title() == "grey"
    ax = samples_over_data(torch.randn(50, 2), torch.randn(80, 2), limit=3.0)
    assert ax.get_xlim() == (-3.0, 3.0) and len(ax.collections) == 2
    plt.close("all")


def test_plot_bad_input():
    with pytest.raises(ValueError, match="C = 1 or 3"):
        image_grid(torch.zeros(2, 2, 4, 4))
    with pytest.raises(TypeError, match="floating"):
        image_grid(torch.zeros(2, 3, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="nrow"):
        image_grid(torch.zeros(2, 3, 4, 4), nrow=0)
    with pytest.raises(ValueError, match=r"\(B, 2\)"):
        samples_over_data(torch.zeros(5, 3))
