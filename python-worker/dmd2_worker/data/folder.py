"""The `folder` data source (docs/pipeline.md §1): C x S x S images from a folder of PNG/JPEG/BMP/WebP files.

Layout: either class subfolders (labels = subfolder names, sorted) or images directly in the folder (no labels).
Files are read in sorted name order; hidden entries and files with other suffixes are ignored. Pixels are
value / 255 * 2 - 1, converted to grayscale (`channels` 1) or RGB (`channels` 3).

Split: when every class has at least MIN_PER_CLASS_FOR_HELDOUT images, every HELDOUT_EVERY-th file of each class
(the 10th, 20th, ... in sorted order) is held out; otherwise nothing is held out and asking for the `heldout`
split is an error.

Every problem is a one-line DataSourceError naming the file or folder and the fix.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .base import DataSourceError, Split, TensorDataSource
from ..config import FolderConfig

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
HELDOUT_EVERY = 10
MIN_PER_CLASS_FOR_HELDOUT = 20
PATH_KEY = "data.folder.path"


def _fail(message: str) -> DataSourceError:
    return DataSourceError(PATH_KEY, message)


def _visible(path: Path) -> bool:
    return not path.name.startswith(".")


def _image_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir()
                  if _visible(p) and p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def scan_folder(root: Path) -> tuple[list[str] | None, list[list[Path]]]:
    """(class names or None, image files per class); the flat layout is one group without a name."""
    if not root.exists():
        raise _fail(f"{PATH_KEY}: {root} does not exist: give a folder of images")
    if not root.is_dir():
        raise _fail(f"{PATH_KEY}: {root} is not a folder: give a folder of images")
    top_images = _image_files(root)
    subfolders = sorted(p for p in root.iterdir() if _visible(p) and p.is_dir())
    if not subfolders:
        if not top_images:
            raise _fail(f"{PATH_KEY}: {root} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        return None, [top_images]
    if top_images:
        names = ", ".join(p.name for p in subfolders)
        raise _fail(f"{PATH_KEY}: {root} mixes images ({top_images[0].name}, ...) with subfolders ({names}): "
                    f"put every image into a class subfolder, or remove the subfolders")
    groups = [_image_files(sub) for sub in subfolders]
    for sub, files in zip(subfolders, groups):
        if not files:
            raise _fail(f"{PATH_KEY}: class subfolder {sub} holds no images ({', '.join(IMAGE_SUFFIXES)}): "
                        f"add images or remove it")
    return [p.name for p in subfolders], groups


def read_image(path: Path, channels: int) -> np.ndarray:
    """(H, W, channels) uint8 pixels of one file."""
    try:
        with Image.open(path) as image:
            image.load()
            converted = image.convert("L" if channels == 1 else "RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        reason = " ".join(str(e).split()) or type(e).__name__
        raise _fail(f"{path}: cannot read image: {reason}") from None
    pixels = np.asarray(converted, dtype=np.uint8)
    return pixels[:, :, None] if pixels.ndim == 2 else pixels


def _check_sizes(files: list[Path], pixels: list[np.ndarray]) -> None:
    first_h, first_w = pixels[0].shape[:2]
    if first_h != first_w or first_h % 4:
        raise _fail(f"{files[0]} is {first_w}x{first_h}: images must be square with a side that is a multiple of 4 "
                    f"(e.g. 8x8 or 32x32): resize the folder")
    for path, image in zip(files, pixels):
        h, w = image.shape[:2]
        if (h, w) != (first_h, first_w):
            raise _fail(f"{path} is {w}x{h} but {files[0]} is {first_w}x{first_h}: resize the folder to one size")


def _is_heldout(position: int) -> bool:
    """Every HELDOUT_EVERY-th file of a class (positions 9, 19, ... in sorted order)."""
    return position % HELDOUT_EVERY == HELDOUT_EVERY - 1


def folder_split(cfg: FolderConfig, split: Split) -> TensorDataSource:
    """The `split` of the folder `cfg.path` (relative paths: to the current directory)."""
    if not cfg.path:
        raise _fail(f"{PATH_KEY}: required when data.source is 'folder'")
    if cfg.channels not in (1, 3):
        raise DataSourceError("data.folder.channels",
                              f"data.folder.channels: must be 1 (grayscale) or 3 (RGB), got {cfg.channels}")
    root = Path(cfg.path).expanduser().resolve()
    classes, groups = scan_folder(root)
    files = [path for group in groups for path in group]
    pixels = [read_image(path, cfg.channels) for path in files]
    _check_sizes(files, pixels)

    sizes = [len(group) for group in groups]
    holds_out = min(sizes) >= MIN_PER_CLASS_FOR_HELDOUT
    if split == "heldout" and not holds_out:
        smallest = min(sizes)
        which = f"class {classes[sizes.index(smallest)]!r} has" if classes else "it has"
        raise _fail(f"{PATH_KEY}: {root} holds out no images for evaluation ({which} {smallest} images, fewer "
                    f"than {MIN_PER_CLASS_FOR_HELDOUT}): add images")
    chosen: list[np.ndarray] = []
    labels: list[int] = []
    remaining = iter(pixels)
    for label, size in enumerate(sizes):
        for position in range(size):
            image = next(remaining)
            if (holds_out and _is_heldout(position)) == (split == "heldout"):
                chosen.append(image)
                labels.append(label)
    images = torch.from_numpy(np.stack(chosen)).permute(0, 3, 1, 2).to(torch.float32).div(255).mul(2).sub(1)
    if classes is None:
        return TensorDataSource(images, None, None)
    return TensorDataSource(images, torch.tensor(labels, dtype=torch.long), len(classes))
