"""The evaluation picture (docs/pipeline.md §4): one row of tiles per `picture.rows` entry, one column per class,
the row's label drawn at its left in Pillow's default font. Written to a temporary file and renamed."""
from __future__ import annotations

import os
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

from ..images import make_grid

TILE_PX = 48
MARGIN = 6
BACKGROUND = (255, 255, 255)
INK = (0, 0, 0)


def render_picture(rows: list[tuple[str, torch.Tensor]]) -> Image.Image:
    """`rows`: (label, images (columns, C, H, W) in [-1, 1]), the same number of columns in every row."""
    strips = [make_grid(images, nrow=images.shape[0], tile_px=TILE_PX).convert("RGB") for _, images in rows]
    font = ImageFont.load_default()
    boxes = [font.getbbox(label) for label, _ in rows]
    label_width = max(right for _, _, right, _ in boxes) + 2 * MARGIN
    canvas = Image.new("RGB", (label_width + max(s.width for s in strips), sum(s.height for s in strips)), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    top = 0
    for (label, _), strip, (_, box_top, _, box_bottom) in zip(rows, strips, boxes):
        canvas.paste(strip, (label_width, top))
        draw.text((MARGIN, top + (strip.height - box_bottom - box_top) // 2), label, fill=INK, font=font)
        top += strip.height
    return canvas


def write_picture(path: str | Path, rows: list[tuple[str, torch.Tensor]]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        render_picture(rows).save(tmp, format="PNG")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
