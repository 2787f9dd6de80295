"""The `digits` data source (docs/pipeline.md §1): scikit-learn's `load_digits()`, 1,797 handwritten digits of
1 x 8 x 8 pixels with values 0..16, scaled to [-1, 1] as value / 16 * 2 - 1.

The split is fixed and stratified and depends on no seed: the indices of class k (in `load_digits()` order) are
permuted by `torch.randperm(n_k, generator=torch.Generator().manual_seed(1000 + k))`; the first `n_k // 2` are
held out, the rest train. That gives 901 train and 896 held-out images (tests/test_data_sources.py pins
them). Each split keeps `load_digits()` order.
"""
from __future__ import annotations

from functools import lru_cache

import torch

from .base import Split, TensorDataSource

NUM_CLASSES = 10
SPLIT_SEED_BASE = 1000


@lru_cache(maxsize=1)
def load_digits_tensors() -> tuple[torch.Tensor, torch.Tensor]:
    """All 1,797 digits: images float32 (N, 1, 8, 8) in [-1, 1] and labels int64 (N,), in `load_digits()` order."""
    from sklearn.datasets import load_digits  # slow to import; only this source needs it

    digits = load_digits()
    images = torch.from_numpy(digits.images).to(torch.float32).div(16).mul(2).sub(1).unsqueeze(1)
    labels = torch.from_numpy(digits.target).to(torch.long)
    return images, labels


def heldout_mask(labels: torch.Tensor) -> torch.Tensor:
    """Boolean (N,): True for the held-out digits of the fixed stratified split."""
    mask = torch.zeros(labels.shape[0], dtype=torch.bool)
    for k in range(NUM_CLASSES):
        members = torch.nonzero(labels == k).flatten()
        order = torch.randperm(members.numel(), generator=torch.Generator().manual_seed(SPLIT_SEED_BASE + k))
        mask[members[order[: members.numel() // 2]]] = True
    return mask


def digits_split(split: Split) -> TensorDataSource:
    images, labels = load_digits_tensors()
    mask = heldout_mask(labels)
    keep = mask if split == "heldout" else ~mask
    return TensorDataSource(images[keep], labels[keep], NUM_CLASSES)
