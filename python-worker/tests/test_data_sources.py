"""Data sources (docs/pipeline.md §1): the digits split, the gmm source, folder layouts and folder errors."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dmd2_worker.config import DataConfig, FolderConfig, GmmConfig, PromptsConfig
from dmd2_worker.data import DataSourceError, build_data_source
from dmd2_worker.data.digits import heldout_mask, load_digits_tensors
from dmd2_worker.data.gmm import GaussianMixture


def data_config(source: str, path: str | None = None, channels: int = 1) -> DataConfig:
    return DataConfig(source=source, gmm=GmmConfig(num_classes=4, image_size=8, std=0.1),
                      folder=FolderConfig(path=path, channels=channels), prompts=PromptsConfig(file=None, images=None))


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- digits ----------------------------------------------------------------------------------------------------

def test_digits_split_counts_are_pinned():
    train = build_data_source(data_config("digits"), "train")
    heldout = build_data_source(data_config("digits"), "heldout")
    _, train_labels = train.all()
    _, heldout_labels = heldout.all()
    assert (len(train_labels), len(heldout_labels)) == (901, 896)
    assert torch.bincount(heldout_labels).tolist() == [89, 91, 88, 91, 90, 91, 90, 89, 87, 90]
    assert torch.bincount(train_labels).tolist() == [89, 91, 89, 92, 91, 91, 91, 90, 87, 90]
    assert (train.num_classes, heldout.num_classes) == (10, 10)
    assert train.image_shape == heldout.image_shape == (1, 8, 8)


def test_digits_split_is_fixed_and_partitions_the_data():
    _, labels = load_digits_tensors()
    mask = heldout_mask(labels)
    assert torch.equal(mask, heldout_mask(labels))
    # the first held-out indices pin the per-class permutations (seeds 1000 + k)
    assert torch.nonzero(mask).flatten()[:8].tolist() == [2, 3, 4, 5, 6, 8, 10, 11]
    images, _ = load_digits_tensors()
    train_images, _ = build_data_source(data_config("digits"), "train").all()
    heldout_images, _ = build_data_source(data_config("digits"), "heldout").all()
    assert torch.equal(heldout_images, images[mask])
    assert torch.equal(train_images, images[~mask])


def test_digits_values_are_scaled_to_minus_one_one():
    images, labels = build_data_source(data_config("digits"), "train").all()
    assert images.dtype == torch.float32 and labels.dtype == torch.int64
    assert images.min().item() == -1.0 and images.max().item() == 1.0
    # value / 16 * 2 - 1: the 17 grey levels 0..16 map to multiples of 1/8 minus 1
    assert torch.equal((images + 1) * 8, ((images + 1) * 8).round())


def test_sample_draws_only_from_the_generator():
    source = build_data_source(data_config("digits"), "heldout")
    x1, y1 = source.sample(64, seeded(5))
    x2, y2 = source.sample(64, seeded(5))
    x3, _ = source.sample(64, seeded(6))
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.equal(x1, x3)
    assert x1.shape == (64, 1, 8, 8) and y1.shape == (64,)
    everything, labels = source.all()
    for image, label in zip(x1[:8], y1[:8]):  # every draw is an image of the split, with its label
        match = (everything == image).flatten(1).all(1)
        assert match.any() and label in labels[match]


# --- gmm -------------------------------------------------------------------------------------------------------

def test_gmm_source_samples_like_the_mixture_and_has_fixed_splits():
    cfg = data_config("gmm")
    train = build_data_source(cfg, "train")
    x, y = train.sample(16, seeded(3))
    x_ref, y_ref = GaussianMixture.from_config(cfg.gmm).sample(16, seeded(3))
    assert torch.equal(x, x_ref) and torch.equal(y, y_ref)
    train_all, _ = train.all()
    heldout_all, _ = build_data_source(cfg, "heldout").all()
    assert train_all.shape == heldout_all.shape == (2000, 1, 8, 8)
    assert torch.equal(train_all, build_data_source(cfg, "train").all()[0])
    assert not torch.equal(train_all, heldout_all)


# --- folder ----------------------------------------------------------------------------------------------------

def write_png(path: Path, value: int, size: tuple[int, int] = (8, 8), mode: str = "L") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    colour = value if mode == "L" else (value, 0, 255 - value)
    Image.new(mode, size, colour).save(path)


def test_folder_with_class_subfolders_holds_out_every_tenth_file(tmp_path: Path):
    for c, name in enumerate(["cat", "ant"]):  # labels follow sorted names: ant = 0, cat = 1
        for i in range(20):
            write_png(tmp_path / name / f"{i:02d}.png", value=10 * i + c)
    (tmp_path / "notes.txt").write_text("ignored")
    (tmp_path / "ant" / ".hidden.png").write_bytes(b"ignored")
    cfg = data_config("folder", str(tmp_path))
    train = build_data_source(cfg, "train")
    heldout = build_data_source(cfg, "heldout")
    assert (train.num_classes, train.image_shape) == (2, (1, 8, 8))
    x, y = heldout.all()
    assert y.tolist() == [0, 0, 1, 1]
    pixel_values = ((x[:, 0, 0, 0] + 1) / 2 * 255).round().tolist()
    assert pixel_values == [91, 191, 90, 190]  # files 09 and 19 of ant (c = 1), then of cat (c = 0)
    x_train, y_train = train.all()
    assert torch.bincount(y_train).tolist() == [18, 18]
    assert x_train.min().item() == -1.0  # cat/00.png has value 0


def test_flat_folder_is_unconditional_rgb(tmp_path: Path):
    for i in range(5):
        write_png(tmp_path / f"img{i}.{'bmp' if i == 4 else 'png'}", value=255, size=(4, 4), mode="RGB")
    source = build_data_source(data_config("folder", str(tmp_path), channels=3), "train")
    x, y = source.all()
    assert y is None and source.num_classes is None
    assert x.shape == (5, 3, 4, 4) and source.image_shape == (3, 4, 4)
    assert torch.equal(x[:, :, 0, 0], torch.tensor([1.0, -1.0, -1.0]).expand(5, 3))  # (255, 0, 0)
    images, labels = source.sample(3, seeded(0))
    assert images.shape == (3, 3, 4, 4) and labels is None
    with pytest.raises(DataSourceError, match="holds out no images for evaluation"):
        build_data_source(data_config("folder", str(tmp_path), channels=3), "heldout")


def folder_error(tmp_path: Path, channels: int = 1) -> DataSourceError:
    with pytest.raises(DataSourceError) as info:
        build_data_source(data_config("folder", str(tmp_path), channels), "train")
    assert "\n" not in str(info.value)
    return info.value


def test_folder_errors_missing_and_empty(tmp_path: Path):
    error = folder_error(tmp_path / "nope")
    assert error.key == "data.folder.path"
    assert str(error) == f"data.folder.path: {tmp_path / 'nope'} does not exist: give a folder of images"
    (tmp_path / "readme.txt").write_text("no images here")
    error = folder_error(tmp_path)
    assert str(error) == f"data.folder.path: {tmp_path} holds no images (.png, .jpg, .jpeg, .bmp, .webp)"


def test_folder_error_unreadable_file(tmp_path: Path):
    write_png(tmp_path / "a.png", 0)
    (tmp_path / "b.png").write_bytes(b"not a png")
    error = folder_error(tmp_path)
    assert error.key == "data.folder.path"
    assert str(error).startswith(f"{tmp_path / 'b.png'}: cannot read image: ")


def test_folder_error_mixed_sizes(tmp_path: Path):
    write_png(tmp_path / "a.png", 0, size=(8, 8))
    write_png(tmp_path / "b.png", 0, size=(16, 16))
    assert str(folder_error(tmp_path)) == (
        f"{tmp_path / 'b.png'} is 16x16 but {tmp_path / 'a.png'} is 8x8: resize the folder to one size")


@pytest.mark.parametrize("size", [(8, 4), (6, 6)])
def test_folder_error_non_square_or_not_multiple_of_4(tmp_path: Path, size: tuple[int, int]):
    write_png(tmp_path / "a.png", 0, size=size)
    assert str(folder_error(tmp_path)) == (
        f"{tmp_path / 'a.png'} is {size[0]}x{size[1]}: images must be square with a side that is a multiple of 4 "
        f"(e.g. 8x8 or 32x32): resize the folder")


def test_folder_error_mixed_layout(tmp_path: Path):
    write_png(tmp_path / "loose.png", 0)
    write_png(tmp_path / "one" / "a.png", 0)
    assert str(folder_error(tmp_path)) == (
        f"data.folder.path: {tmp_path} mixes images (loose.png, ...) with subfolders (one): put every image into a "
        f"class subfolder, or remove the subfolders")


def test_folder_error_empty_class_subfolder(tmp_path: Path):
    write_png(tmp_path / "one" / "a.png", 0)
    (tmp_path / "two").mkdir()
    message = str(folder_error(tmp_path))
    assert message.startswith(f"data.folder.path: class subfolder {tmp_path / 'two'} holds no images")


def test_folder_errors_in_the_config(tmp_path: Path):
    write_png(tmp_path / "a.png", 0)
    assert folder_error(tmp_path, channels=2).key == "data.folder.channels"
    with pytest.raises(DataSourceError, match="required when data.source is 'folder'") as info:
        build_data_source(data_config("folder", None), "train")
    assert info.value.key == "data.folder.path"
