"""What every data source is (docs/pipeline.md §1, "Interface"): the splits, the DataSource interface, the
in-memory TensorDataSource, and DataSourceError. The sources (gmm.py, digits.py, folder.py) build on it;
`dmd2_worker.data` picks one for a recipe.
"""
from __future__ import annotations

from typing import Literal

import torch

Split = Literal["train", "heldout"]
SPLITS: tuple[Split, ...] = ("train", "heldout")


class DataSourceError(ValueError):
    """The data source cannot be built; `key` is the recipe key to fix (e.g. `data.folder.path`)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


class DataSource:
    """A split of a data source (docs/pipeline.md §1, "Interface").

    num_classes: None for unconditional data. image_shape: (C, H, W). Images are float32 in [-1, 1], labels int64.
    """

    num_classes: int | None
    image_shape: tuple[int, int, int]

    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
        """n images drawn uniformly with replacement, (n, C, H, W), and their labels (n,) or None."""
        raise NotImplementedError

    def all(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The whole split in a fixed order."""
        raise NotImplementedError


class TensorDataSource(DataSource):
    """A split held in memory: `images` (N, C, H, W) float32 and `labels` (N,) int64 or None."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor | None, num_classes: int | None) -> None:
        if images.dim() != 4 or images.shape[0] == 0:
            raise ValueError(f"expected a non-empty (N, C, H, W) image tensor, got shape {tuple(images.shape)}")
        if labels is not None and tuple(labels.shape) != (images.shape[0],):
            raise ValueError(f"labels of shape {tuple(labels.shape)} do not fit {images.shape[0]} images")
        self.images = images.to(torch.float32).contiguous()
        self.labels = None if labels is None else labels.to(torch.long).contiguous()
        self.num_classes = num_classes
        self.image_shape = tuple(int(s) for s in images.shape[1:])  # type: ignore[assignment]

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
        index = torch.randint(0, len(self), (n,), generator=generator)
        return self.images[index], None if self.labels is None else self.labels[index]

    def all(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.images.clone(), None if self.labels is None else self.labels.clone()
