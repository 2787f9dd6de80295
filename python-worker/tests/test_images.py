"""images.py: PNG files and grids."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from dmd2_worker.images import as_saved, make_grid, save_grid, save_images, to_uint8


def test_pngs_and_grid(tmp_path):
    x = torch.zeros(5, 1, 8, 8)
    x[0] = -1.0
    x[1] = 1.0
    paths = save_images(x, tmp_path / "images")
    assert [p.name for p in paths] == [f"{i}.png" for i in range(5)]
    img = Image.open(paths[0])
    assert img.size == (64, 64) and img.mode == "L"  # nearest-upscaled 8x
    assert np.asarray(img).max() == 0
    assert np.asarray(Image.open(paths[1])).min() == 255
    grid = make_grid(x, nrow=3, pad=2)
    assert grid.size == (3 * 66 + 2, 2 * 66 + 2)
    assert save_grid(x, tmp_path / "grid.png").is_file()
    rgb = make_grid(torch.zeros(2, 3, 16, 16))
    assert rgb.mode == "RGB" and rgb.size == (2 * 66 + 2, 66 + 2)
    assert not list(tmp_path.glob("**/.*tmp*"))


def test_as_saved_is_what_the_png_holds():
    x = torch.tensor([-3.0, -1.0, -0.999, -0.5, 0.0, 0.3, 1.0, 1.7, float("nan")]).view(1, 1, 1, 9)
    saved = as_saved(x)
    assert saved.dtype == torch.float32 and saved.shape == x.shape
    expected_levels = [0, 0, 0, 64, 128, 166, 255, 255]  # clamped, (v + 1) * 127.5 rounded
    assert (saved[0, 0, 0, :8] + 1).mul(127.5).round().tolist() == expected_levels
    assert torch.isnan(saved[0, 0, 0, 8])  # a diverged sample stays visible as such
    torch.manual_seed(0)
    y = 1.5 * torch.randn(4, 3, 5, 5)
    png = torch.from_numpy(to_uint8(y)).permute(0, 3, 1, 2).float()
    assert torch.equal(as_saved(y), png / 127.5 - 1)
