"""Feature extractors for the Fréchet distance (docs/pipeline.md §4, "Features").

An extractor maps images (N, C, H, W) in [-1, 1] to features (N, D) on the CPU and, when it can classify, the
predicted classes (N,): `classifier` (the project's CNN, see classifier.py), `torchscript` (a user's
`torch.jit.load` module, no classes) or `inception` (a local copy of the TorchScript Inception-v3 FID detector,
`inception-2015-12-05.pt`, no classes).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from ..config import DataConfig
from ..data import DataSource
from .classifier import load_or_train_classifier
from ..images import to_levels
from .spec import ClassifierFeatures, EvalInputError, InceptionFeatures, TorchscriptFeatures


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


def load_torchscript(path: str, device: torch.device) -> torch.jit.ScriptModule:
    """`torch.jit.load` (no pickle), with one-line errors naming features.path."""
    if not Path(path).is_file():
        raise EvalInputError("features.path", f"features.path: {path} does not exist")
    try:
        return torch.jit.load(path, map_location=device).eval()
    except RuntimeError as e:
        reason = " ".join(str(e).split())
        raise EvalInputError("features.path", f"features.path: {path} is not a TorchScript module: {reason}") from None


class TorchscriptExtractor:
    """A user's TorchScript module mapping images in [-1, 1] (B, C, H, W) to (B, D) features. Subclasses change how
    a batch is fed to the module (`_features`)."""

    name = "torchscript"

    def __init__(self, path: str, device: torch.device, batch_size: int) -> None:
        self.module = load_torchscript(path, device)
        self.path = path
        self.device = device
        self.batch_size = batch_size

    def _features(self, batch: torch.Tensor) -> object:
        return self.module(batch.to(self.device))

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, None]:
        features = []
        for batch in images.split(self.batch_size):
            f = self._features(batch)
            if not isinstance(f, torch.Tensor) or f.dim() != 2 or f.shape[0] != batch.shape[0]:
                got = tuple(f.shape) if isinstance(f, torch.Tensor) else type(f).__name__
                raise EvalInputError("features.path", f"features.path: {self.path} maps images of shape "
                                     f"{tuple(batch.shape)} to {got}, expected ({batch.shape[0]}, D)")
            features.append(f.to("cpu", torch.float32))
        return torch.cat(features), None


def inception_input(images: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] as the Inception FID detector takes them: uint8 RGB in [0, 255] (grey repeated to three
    channels); the detector resizes to 299x299 itself."""
    x = to_levels(images).to(torch.uint8)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    elif x.shape[1] != 3:
        raise EvalInputError("features.kind", f"features.kind: inception takes grey or RGB images, these have "
                             f"{x.shape[1]} channels: use features torchscript with your own extractor")
    return x.contiguous()


class InceptionExtractor(TorchscriptExtractor):
    """The TorchScript Inception-v3 FID detector (`inception-2015-12-05.pt`, as StyleGAN2-ADA and clean-fid use it),
    from a local file: `module(uint8 images, return_features=True)` gives 2048 pool features per image. Distances
    in this space are comparable with published FIDs only for natural images at their usual resolution; on 8x8
    digits they are a second opinion next to the classifier's."""

    name = "inception"

    def _features(self, batch: torch.Tensor) -> object:
        try:
            return self.module(inception_input(batch).to(self.device), return_features=True)
        except (RuntimeError, TypeError) as e:
            reason = " ".join(str(e).split())[:200]
            raise EvalInputError("features.path", f"features.path: {self.path} does not work as an Inception FID "
                                 f"detector (module(uint8 images, return_features=True)): {reason}; use the "
                                 f"inception-2015-12-05.pt file, or features torchscript for other modules") from None


FeatureExtractor = ClassifierExtractor | TorchscriptExtractor | InceptionExtractor


def build_feature_extractor(features: ClassifierFeatures | TorchscriptFeatures | InceptionFeatures, data: DataConfig,
                            train: DataSource, cache_dir: str | None, device: torch.device, batch_size: int,
                            log: Callable[[str], None]) -> FeatureExtractor:
    if isinstance(features, TorchscriptFeatures):
        return TorchscriptExtractor(features.path, device, batch_size)
    if isinstance(features, InceptionFeatures):
        return InceptionExtractor(features.path, device, batch_size)
    if train.num_classes is None:
        raise EvalInputError("features.kind", "features.kind: the classifier needs class labels and this data has "
                             "none (images directly in the folder): use class subfolders or features torchscript")
    return ClassifierExtractor(load_or_train_classifier(data, train, cache_dir, log), device, batch_size)
