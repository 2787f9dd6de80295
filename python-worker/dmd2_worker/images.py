"""PNG output for (N, C, H, W) image tensors in [-1, 1] (Pillow). Small images are upscaled with nearest
neighbour so that each tile is about `tile_px` pixels wide."""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .storage_faults import storage_faults_named


def to_levels(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> the 8-bit levels 0..255 (float): clamped, then rounded; NaN stays NaN."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round()


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] -> (N, H, W, C) uint8."""
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"expected images (N, 1 or 3, H, W), got shape {tuple(x.shape)}")
    x = to_levels(x.detach().to("cpu", torch.float32)).to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def as_saved(x: torch.Tensor) -> torch.Tensor:
    """What a PNG of `x` holds (`to_uint8`: clamped to [-1, 1], 8 bits), back as float32 in [-1, 1], same
    shape: what dmd2 eval scores, so that a number describes the images a user gets. NaN stays NaN."""
    return to_levels(x.detach().float()) / 127.5 - 1


def _scale(size: int, tile_px: int) -> int:
    return max(1, tile_px // size)


def _pil(arr: np.ndarray, scale: int) -> Image.Image:
    h, w, c = arr.shape
    img = Image.fromarray(np.ascontiguousarray(arr[:, :, 0])) if c == 1 else Image.fromarray(np.ascontiguousarray(arr))
    if scale > 1:
        img = img.resize((w * scale, h * scale), Image.NEAREST)
    return img


def _save(img: Image.Image, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with storage_faults_named(path):  # PIL's OSError, named with the file (issue 20)
            img.save(tmp, format="PNG")
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def save_images(x: torch.Tensor, directory: str | Path, tile_px: int = 64) -> list[Path]:
    """Write image i to `directory/<i>.png`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    arr = to_uint8(x)
    scale = _scale(arr.shape[1], tile_px)
    paths = []
    for i in range(arr.shape[0]):
        p = directory / f"{i}.png"
        _save(_pil(arr[i], scale), p)
        paths.append(p)
    return paths


def make_grid(x: torch.Tensor, nrow: int | None = None, tile_px: int = 64, pad: int = 2) -> Image.Image:
    """One image with the tiles in rows of `nrow` (default: about square), `pad` pixels of mid-grey between."""
    arr = to_uint8(x)
    n, h, w, c = arr.shape
    scale = _scale(h, tile_px)
    nrow = nrow or max(1, math.ceil(math.sqrt(n)))
    rows = max(1, math.ceil(n / nrow))
    th, tw = h * scale, w * scale
    mode = "L" if c == 1 else "RGB"
    fill = 128 if c == 1 else (128, 128, 128)
    grid = Image.new(mode, (nrow * (tw + pad) + pad, rows * (th + pad) + pad), fill)
    for i in range(n):
        r, col = divmod(i, nrow)
        grid.paste(_pil(arr[i], scale), (pad + col * (tw + pad), pad + r * (th + pad)))
    return grid


def save_grid(x: torch.Tensor, path: str | Path, nrow: int | None = None, tile_px: int = 64) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _save(make_grid(x, nrow=nrow, tile_px=tile_px), path)
    return path
