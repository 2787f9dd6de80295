"""The evaluation classifier (docs/pipeline.md §4, "Features"): a small CNN trained on the data source's `train`
split. Its 64-number global-average-pooled last conv layer (the penultimate layer) is the feature space of the
Fréchet distance; its argmax is the predicted class.

Training is deterministic on the CPU: fixed initial weights (CLASSIFIER_SEED) and a seeded permutation of the
train split per epoch, TRAIN_STEPS AdamW steps with cosine decay. The result is cached under
`<cache_dir or $DMD2_CACHE or ~/.cache/dmd2>/classifiers/<key>/` (config.json + model.safetensors, written to a
temporary folder and renamed), `<key>` the sha256 of CLASSIFIER_FORMAT, the data config and the train split's
pixels and labels, so a cache hit is exactly what training would produce.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torch.nn import functional as F

from ..checkpoint import load_module, read_json
from ..config import DataConfig
from ..data import DataSource
from ..teacher_training import cache_root, is_teacher_dir, write_teacher_dir

CLASSIFIER_FORMAT = 1  # bump whenever a change here would change the trained weights
FEATURE_DIM = 64
WIDTH = 32
TRAIN_STEPS = 1000
BATCH_SIZE = 128
LR = 3e-3
WEIGHT_DECAY = 1e-4
CLASSIFIER_SEED = 4242


class FeatureClassifier(nn.Module):
    """Three 3x3 convs (widths WIDTH, 2 WIDTH, FEATURE_DIM) with ReLU and a 2x2 average pool between, a global
    average pool to FEATURE_DIM numbers, and a linear layer to the classes."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, WIDTH, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
            nn.Conv2d(WIDTH, 2 * WIDTH, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
            nn.Conv2d(2 * WIDTH, FEATURE_DIM, 3, padding=1), nn.ReLU(),
        )
        self.head = nn.Linear(FEATURE_DIM, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) in [-1, 1] -> (B, FEATURE_DIM)."""
        return self.body(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def classifier_cache_key(cfg: DataConfig, train: DataSource) -> str:
    images, labels = train.all()
    digest = hashlib.sha256()
    ident = {"format": CLASSIFIER_FORMAT, "data": dataclasses.asdict(cfg)}
    digest.update(json.dumps(ident, sort_keys=True, separators=(",", ":")).encode())
    digest.update(images.numpy().tobytes())
    digest.update(labels.numpy().tobytes())
    return digest.hexdigest()


def _lr_at(step: int) -> float:
    return LR * 0.5 * (1 + math.cos(math.pi * step / TRAIN_STEPS))


def _batches(count: int, generator: torch.Generator):
    """Endless minibatch indices: a fresh seeded permutation of the whole split per epoch."""
    while True:
        order = torch.randperm(count, generator=generator)
        for start in range(0, count, BATCH_SIZE):
            yield order[start:start + BATCH_SIZE]


def train_classifier(train: DataSource) -> tuple[FeatureClassifier, dict[str, Any]]:
    """Train on the whole train split on the CPU with one thread (the same weights whatever the caller's thread
    count, and no oversubscription on a busy machine). Returns the network (eval mode) and how it went."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(train)
    finally:
        torch.set_num_threads(threads)


def _train(train: DataSource) -> tuple[FeatureClassifier, dict[str, Any]]:
    images, labels = train.all()
    if labels is None or train.num_classes is None:
        raise ValueError("the feature classifier needs class labels")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(CLASSIFIER_SEED)
        net = FeatureClassifier(images.shape[1], train.num_classes)
    generator = torch.Generator().manual_seed(CLASSIFIER_SEED)
    optimizer = torch.optim.AdamW(net.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    start = time.perf_counter()
    net.train()
    batches = _batches(len(labels), generator)
    for step in range(TRAIN_STEPS):
        index = next(batches)
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step)
        loss = F.cross_entropy(net(images[index]), labels[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    net.eval()
    with torch.no_grad():
        train_accuracy = float((net(images).argmax(1) == labels).float().mean())
    info = {"format": CLASSIFIER_FORMAT, "steps": TRAIN_STEPS, "train_images": len(labels),
            "train_accuracy": train_accuracy, "seconds": time.perf_counter() - start, "torch": torch.__version__}
    return net, info


def _config(net: FeatureClassifier) -> dict[str, Any]:
    return {"format": CLASSIFIER_FORMAT, "in_channels": net.in_channels, "num_classes": net.num_classes,
            "feature_dim": FEATURE_DIM}


def load_or_train_classifier(cfg: DataConfig, train: DataSource, cache_dir: str | Path | None,
                             log: Callable[[str], None]) -> FeatureClassifier:
    """The cached classifier for this data, trained (and cached) on a miss. Returned on the CPU in eval mode."""
    root = Path(cache_dir) if cache_dir else cache_root()
    directory = root / "classifiers" / classifier_cache_key(cfg, train)
    if is_teacher_dir(directory):
        config = read_json(directory / "config.json")
        net = FeatureClassifier(config["in_channels"], config["num_classes"])
        load_module(directory / "model.safetensors", net)
        log(f"feature classifier: loaded from {directory}")
        return net.eval()
    log(f"feature classifier: training on {len(train.all()[0])} train images (cached afterwards)")
    net, info = train_classifier(train)
    write_teacher_dir(directory, net, _config(net), info)
    log(f"feature classifier: train accuracy {info['train_accuracy']:.4f} after {info['seconds']:.1f} s, "
        f"saved to {directory}")
    return net
