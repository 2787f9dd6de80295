"""images.py: PNG files and grids."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from dmd2_worker.images import make_grid, save_grid, save_images


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
