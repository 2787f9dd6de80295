"""The evaluation itself (docs/pipeline.md §4): `n` samples per (model, steps), their Fréchet distance to the
held-out split in feature space, class accuracy, images/s, the noise floor and the picture.

Samples: labels `i mod K` (class-balanced; none for an unconditional model); the initial noise of all `n`
samples comes first from a generator seeded with `seed` (draw r of `repeats`: `seed + r`), so every model and
step count starts from the same noise; a student's re-noise draws continue from that generator batch by batch.
The timing covers the samples after one untimed warm-up batch. With `repeats` > 1 the row's FD is the mean of the
draws' FDs (each draw's in `fd_draws`, their standard deviation in `fd_sd`), its accuracy that of all samples.

Each row also has `fd_train`: the same distance to the whole train split, the images the teacher (and the GAN) learnt
from. A model far closer to the train split than to the held-out one reproduces its training images' statistics
rather than the data's: its held-out FD then says in which direction its small remaining error points, not how
well it models the data (docs/pipeline.md §4).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..data import DataSource, build_data_source
from ..images import as_saved
from .features import build_feature_extractor
from .frechet import feature_distance
from .models import Sampler, StudentSampler, load_sampler
from .picture import write_picture
from .spec import REAL_ROW, EvalInputError, EvalSpec

UNCONDITIONAL_COLUMNS = 8  # picture columns when there are no classes and `picture.classes` is null

Progress = Callable[[str], None]


@dataclass
class Generated:
    images: torch.Tensor  # (n, C, H, W) on the CPU
    labels: torch.Tensor | None
    seconds: float


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def generate(sampler: Sampler, steps: int, spec: EvalSpec, device: torch.device, draw: int = 0) -> Generated:
    """Draw `draw` (0-based) of `n` samples: noise from seed `spec.seed + draw`."""
    n, batch = spec.n, spec.batch_size
    generator = torch.Generator().manual_seed(spec.seed + draw)
    z = torch.randn((n, *sampler.image_shape), generator=generator)
    labels = torch.arange(n) % sampler.num_classes if sampler.num_classes is not None else None

    def run(start: int, stop: int, g: torch.Generator) -> torch.Tensor:
        cond = labels[start:stop].to(device) if labels is not None else None
        return sampler.sample(z[start:stop].to(device), cond, steps, g).cpu()

    run(0, min(batch, n), torch.Generator().manual_seed(spec.seed + draw))  # warm-up, untimed
    _synchronize(device)
    began = time.perf_counter()
    images = torch.cat([run(start, min(start + batch, n), generator) for start in range(0, n, batch)])
    _synchronize(device)
    seconds = time.perf_counter() - began
    return Generated(as_saved(images), labels, seconds)


def _mean(values: list[float | None]) -> float | None:
    """The mean; None when any is None (a diverged draw, or no accuracy)."""
    if any(v is None for v in values):
        return None
    return sum(values) / len(values)  # type: ignore[arg-type]


def _sd(values: list[float | None]) -> float | None:
    """The sample standard deviation (n - 1); None when any is None."""
    mean = _mean(values)
    if mean is None or len(values) < 2:
        return None
    return (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5  # type: ignore[operator]


def accuracy(predictions: torch.Tensor | None, labels: torch.Tensor | None) -> float | None:
    """The share of `predictions` equal to `labels`; None when either is missing."""
    if predictions is None or labels is None:
        return None
    return float((predictions == labels).to(torch.float64).mean())


def noise_floor(train_features: torch.Tensor, heldout_features: torch.Tensor, seed: int) -> float | None:
    """The distance between a seeded train subset of the held-out split's size and the held-out split, from the
    features of the whole train split (rows in the split's order)."""
    count = min(len(train_features), len(heldout_features))
    subset = torch.randperm(len(train_features), generator=torch.Generator().manual_seed(seed))[:count]
    return feature_distance(train_features[subset], heldout_features)


def _check_fits(samplers: list[Sampler], spec: EvalSpec, heldout: DataSource) -> None:
    for i, (model, sampler) in enumerate(zip(spec.models, samplers)):
        if tuple(sampler.image_shape) != tuple(heldout.image_shape):
            raise EvalInputError(f"models[{i}]", f"models[{i}]: {model.label!r} makes images of shape "
                                 f"{tuple(sampler.image_shape)}, the data's are {tuple(heldout.image_shape)}")
        k = sampler.num_classes
        if k is not None and heldout.num_classes is not None and k != heldout.num_classes:
            raise EvalInputError(f"models[{i}]", f"models[{i}]: {model.label!r} has {k} classes, the data has "
                                 f"{heldout.num_classes}")


def describe(label: str, steps: int) -> str:
    return f"{label}, {steps} step{'' if steps == 1 else 's'}"


def _picture_classes(spec: EvalSpec, heldout: DataSource) -> list[int]:
    """The picture's columns: classes, or for data without classes as many columns as `picture.classes` lists."""
    assert spec.picture is not None
    classes = spec.picture.classes
    if heldout.num_classes is None:
        columns = list(classes) if classes is not None else list(range(UNCONDITIONAL_COLUMNS))
        needed = len(columns)
    else:
        columns = list(classes) if classes is not None else list(range(heldout.num_classes))
        if max(columns) >= heldout.num_classes:
            raise EvalInputError("picture.classes", f"picture.classes: the data has classes "
                                 f"0..{heldout.num_classes - 1}, got {columns}")
        needed = max(columns) + 1
    if spec.n < needed:
        raise EvalInputError("picture.classes", f"picture.classes: {needed} samples are needed for the picture's "
                             f"columns, n is {spec.n}")
    return columns


def _real_tiles(heldout: DataSource, columns: list[int]) -> torch.Tensor:
    """The first held-out image of each class (the first images when there are no classes)."""
    images, labels = heldout.all()
    if labels is None:
        return images[: len(columns)]
    return torch.stack([images[torch.nonzero(labels == c).flatten()[0]] for c in columns])


def _sample_tiles(generated: Generated, columns: list[int], by_class: bool) -> torch.Tensor:
    """By class, sample c (label c, as labels are i mod K); otherwise the first samples."""
    if by_class and generated.labels is not None:
        return generated.images[columns]
    return generated.images[: len(columns)]


def evaluate(spec: EvalSpec, progress: Progress) -> dict[str, Any]:
    """Run the evaluation; returns the `result` event (without printing it)."""
    device = torch.device(spec.device)
    train = build_data_source(spec.data, "train")
    heldout = build_data_source(spec.data, "heldout")
    samplers = [load_sampler(model, i, device) for i, model in enumerate(spec.models)]
    _check_fits(samplers, spec, heldout)
    columns = _picture_classes(spec, heldout) if spec.picture is not None else []
    extract = build_feature_extractor(spec.features, spec.data, train, spec.cache_dir, device, spec.batch_size,
                                      progress)

    heldout_images, heldout_labels = heldout.all()
    heldout_images = as_saved(heldout_images)
    heldout_features, heldout_predictions = extract(heldout_images)
    train_features, _ = extract(as_saved(train.all()[0]))  # for the noise floor and each row's fd_train
    floor = noise_floor(train_features, heldout_features, spec.seed)
    progress(f"held-out split: {len(heldout_images)} images, noise floor {floor}")

    rows: list[dict[str, Any]] = []
    tiles: dict[tuple[str, int], torch.Tensor] = {}
    for model, sampler in zip(spec.models, samplers):
        for steps in model.steps:
            draws = "" if spec.repeats == 1 else f" x {spec.repeats} draws"
            progress(f"{describe(model.label, steps)}: sampling {spec.n} images{draws}")
            fds: list[float | None] = []
            fds_train: list[float | None] = []
            correct: list[float | None] = []
            seconds = 0.0
            for draw in range(spec.repeats):
                generated = generate(sampler, steps, spec, device, draw)
                features, predictions = extract(generated.images)
                fds.append(feature_distance(features, heldout_features))
                fds_train.append(feature_distance(features, train_features))
                correct.append(accuracy(predictions, generated.labels))
                seconds += generated.seconds
                if draw == 0 and columns:
                    tiles[(model.label, steps)] = _sample_tiles(generated, columns, heldout.num_classes is not None)
            row = {"label": model.label, "kind": model.kind, "steps": steps, "fd": _mean(fds),
                   "fd_sd": _sd(fds), "fd_draws": fds, "fd_train": _mean(fds_train),
                   "accuracy": _mean(correct), "images_per_s": spec.n * spec.repeats / seconds, "seconds": seconds}
            if isinstance(sampler, StudentSampler):  # which weights were scored
                row["checkpoint"] = str(sampler.checkpoint)
                row["weights"] = sampler.weights
            rows.append(row)
            sd = "" if row["fd_sd"] is None else f" (sd {row['fd_sd']:.3f} over {spec.repeats} draws)"
            progress(f"{describe(model.label, steps)}: fd {row['fd']}{sd} (to the train split {row['fd_train']}), "
                     f"{row['images_per_s']:.1f} images/s")

    if spec.picture is not None:
        picture_rows = [(REAL_ROW, _real_tiles(heldout, columns)) if row.steps is None
                        else (describe(row.label, row.steps), tiles[(row.label, row.steps)])
                        for row in spec.picture.rows]
        progress(f"picture: {write_picture(spec.picture.path, picture_rows)}")

    return {"event": "result", "noise_floor": floor, "train_images": len(train_features),
            "heldout_accuracy": accuracy(heldout_predictions, heldout_labels),
            "features": extract.name, "n": spec.n, "repeats": spec.repeats, "rows": rows}
