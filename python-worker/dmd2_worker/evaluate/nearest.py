"""How close samples come to the images a model learnt from: for each sample, the pixel (L2) distance to its nearest
train-split image and to its nearest held-out image (scripts/nearest_train.py; docs/bench/quality.md).

A model that generalises makes samples about as far from the train split as held-out images are (on digits:
held-out images lie 2.22 on average from their nearest train image); one that reproduces its training images makes
samples nearer to a train image than to any held-out one, more often than a new image of the data would be.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

COPY_DISTANCE = 1.0  # a sample this close to an image (L2 over pixels in [-1, 1]) is counted as a near-copy of it


@dataclass
class Nearest:
    to_train: float  # mean distance of a sample to its nearest train image
    to_heldout: float  # mean distance to its nearest held-out image
    closer_to_train: float  # share of samples whose nearest train image is nearer than their nearest held-out one
    train_copies: float  # share of samples within COPY_DISTANCE of a train image


def nearest_distances(samples: torch.Tensor, train: torch.Tensor, heldout: torch.Tensor,
                      batch: int = 1000, leave_one_out: bool = False) -> Nearest:
    """Samples (N, ...) against train (M, ...) and held-out (K, ...) images of the same shape, in float64.
    `leave_one_out`: the samples ARE the held-out images, each compared with the other held-out ones (the reference
    a model that makes new images of the data would match)."""
    if samples.shape[1:] != train.shape[1:] or samples.shape[1:] != heldout.shape[1:]:
        raise ValueError(f"shapes differ: samples {tuple(samples.shape[1:])}, train {tuple(train.shape[1:])}, "
                         f"held-out {tuple(heldout.shape[1:])}")
    if leave_one_out and samples.shape != heldout.shape:
        raise ValueError("leave_one_out: the samples must be the held-out images")
    flat = lambda x: x.detach().to("cpu", torch.float64).flatten(1)  # noqa: E731
    s = flat(samples)

    def nearest(images: torch.Tensor, skip_self: bool) -> torch.Tensor:
        """Each sample's distance to its nearest row of `images` (with skip_self, sample i never to row i)."""
        ref = flat(images)
        mins = []
        for i in range(0, len(s), batch):
            d = torch.cdist(s[i:i + batch], ref)
            if skip_self:
                rows = torch.arange(d.shape[0])
                d[rows, rows + i] = float("inf")
            mins.append(d.min(1).values)
        return torch.cat(mins)

    to_train, to_heldout = nearest(train, False), nearest(heldout, leave_one_out)
    return Nearest(float(to_train.mean()), float(to_heldout.mean()), float((to_train < to_heldout).double().mean()),
                   float((to_train < COPY_DISTANCE).double().mean()))
