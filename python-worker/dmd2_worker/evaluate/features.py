"""Feature extractors for the Fréchet distance (docs/pipeline.md §4, "Features").

An extractor maps images (N, C, H, W) in [-1, 1] to features (N, D) on the CPU and, when it can classify, the
predicted classes (N,): `classifier` (the project's CNN, see classifier.py) or `torchscript` (a user's
`torch.jit.load` module, no classes).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from ..config import DataConfig
from ..data import DataSource
from .classifier import load_or_train_classifier
from .spec import ClassifierFeatures, EvalInputError, TorchscriptFeatures


class ClassifierExtractor:
    name = "classifier"

    def __init__(self, net: torch.nn.Module, device: torch.device, batch_size: int) -> None:
        self.net = net.to(device)
        self.device = device
        self.batch_size = batch_size

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        features, predictions = [], []
        for batch in images.split(self.batch_size):
            f = self.net.features(batch.to(self.device))
            features.append(f.cpu())
            predictions.append(self.net.head(f).argmax(1).cpu())
        return torch.cat(features), torch.cat(predictions)


class TorchscriptExtractor:
    name = "torchscript"

    def __init__(self, path: str, device: torch.device, batch_size: int) -> None:
        if not Path(path).is_file():
            raise EvalInputError("features.path", f"features.path: {path} does not exist")
        try:
            self.module = torch.jit.load(path, map_location=device).eval()
        except RuntimeError as e:
            reason = " ".join(str(e).split())
            raise EvalInputError("features.path",
                                 f"features.path: {path} is not a TorchScript module: {reason}") from None
        self.path = path
        self.device = device
        self.batch_size = batch_size

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, None]:
        features = []
        for batch in images.split(self.batch_size):
            f = self.module(batch.to(self.device))
            if not isinstance(f, torch.Tensor) or f.dim() != 2 or f.shape[0] != batch.shape[0]:
                got = tuple(f.shape) if isinstance(f, torch.Tensor) else type(f).__name__
                raise EvalInputError("features.path", f"features.path: {self.path} maps images of shape "
                                     f"{tuple(batch.shape)} to {got}, expected ({batch.shape[0]}, D)")
            features.append(f.to("cpu", torch.float32))
        return torch.cat(features), None


FeatureExtractor = ClassifierExtractor | TorchscriptExtractor


def build_feature_extractor(features: ClassifierFeatures | TorchscriptFeatures, data: DataConfig, train: DataSource,
                            cache_dir: str | None, device: torch.device, batch_size: int,
                            log: Callable[[str], None]) -> FeatureExtractor:
    if isinstance(features, TorchscriptFeatures):
        return TorchscriptExtractor(features.path, device, batch_size)
    if train.num_classes is None:
        raise EvalInputError("features.kind", "features.kind: the classifier needs class labels and this data has "
                             "none (images directly in the folder): use class subfolders or features torchscript")
    return ClassifierExtractor(load_or_train_classifier(data, train, cache_dir, log), device, batch_size)
