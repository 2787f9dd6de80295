"""The evaluation spec the CLI writes for `python -m dmd2_worker.evaluate <spec.json>` (docs/pipeline.md §4),
parsed strictly: unknown, missing and mistyped keys are errors, reported together, each starting with its key.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from ..config import DataConfig, _parse, _parse_dataclass
from ..job import JobInputError

REAL_ROW = "real"  # the picture row of held-out images


# Bad input to the evaluation (exit status 2): the jobs' input error (job.py), `key` the spec key to fix or None
EvalInputError = JobInputError


@dataclass
class ClassifierFeatures:
    kind: Literal["classifier"]


@dataclass
class TorchscriptFeatures:
    kind: Literal["torchscript"]
    path: str


@dataclass
class InceptionFeatures:
    """A TorchScript Inception-v3 FID detector in the format of `inception-2015-12-05.pt` (the file StyleGAN2-ADA's
    and clean-fid's FID use): called as `module(images, return_features=True)` on uint8 RGB (N, 3, H, W) in
    [0, 255], it resizes internally and returns (N, 2048) pool features."""
    kind: Literal["inception"]
    path: str


@dataclass
class TeacherModel:
    label: str
    kind: Literal["teacher"]
    path: str
    steps: list[int]
    guidance_scale: float


@dataclass
class StudentModel:
    label: str
    kind: Literal["student"]
    run_dir: str
    steps: list[int]
    # the checkpoint folder to score (absolute, or relative to run_dir); None: the run's newest complete one
    checkpoint: str | None = None
    # "ema": the average of the weights when the run kept one (generator.ema_decay > 0; what dmd2 sample uses),
    # else the raw weights; "raw": the raw weights (an error when the checkpoint has none)
    weights: Literal["ema", "raw"] = "ema"


@dataclass
class PictureRow:
    label: str
    steps: int | None  # None: the real (held-out) row


@dataclass
class PictureSpec:
    path: str
    rows: list[PictureRow]
    classes: list[int] | None


@dataclass
class EvalSpec:
    data: DataConfig
    n: int
    seed: int
    # draws of n samples per (model, steps), with seeds seed, seed + 1, ...: the FD reported is their mean (the
    # FD of n = 5,000 digits moves by ~0.17 between draws, as much as the differences a comparison looks for)
    repeats: int
    batch_size: int
    device: str
    torch_threads: int | None
    features: ClassifierFeatures | TorchscriptFeatures | InceptionFeatures
    cache_dir: str | None
    models: list[TeacherModel | StudentModel]
    picture: PictureSpec | None


# The top level's keys with a fixed type; `features`, `models` and `picture` are parsed by kind or by hand.
_TYPED_KEYS: dict[str, Any] = {"data": DataConfig, "n": int, "seed": int, "repeats": int, "batch_size": int, "device": str,
                               "torch_threads": int | None, "cache_dir": str | None}
_TOP_KEYS = [*_TYPED_KEYS, "features", "models", "picture"]
_PICTURE_KEYS = ["path", "rows", "classes"]


def _check_keys(obj: dict, allowed: list[str], path: str, problems: list[str]) -> bool:
    """Report unknown and missing keys of `obj`; True when every allowed key is present."""
    prefix = f"{path}." if path else ""
    problems.extend(f"{prefix}{key}: unknown key" for key in obj if key not in allowed)
    missing = [key for key in allowed if key not in obj]
    problems.extend(f"{prefix}{key}: missing key" for key in missing)
    return not missing


def _by_kind(obj: Any, kinds: dict[str, type], path: str, problems: list[str]) -> Any:
    if not isinstance(obj, dict):
        problems.append(f"{path}: expected object, got {type(obj).__name__}")
        return None
    kind = obj.get("kind")
    if kind not in kinds:
        problems.append(f"{path}.kind: expected one of {', '.join(map(repr, kinds))}, got {kind!r}")
        return None
    return _parse_dataclass(obj, kinds[kind], path, problems)


def _picture_row(row: list, path: str, problems: list[str]) -> PictureRow | None:
    if row == [REAL_ROW]:
        return PictureRow(REAL_ROW, None)
    if len(row) == 2 and isinstance(row[0], str) and isinstance(row[1], int) and not isinstance(row[1], bool):
        return PictureRow(row[0], row[1])
    problems.append(f"{path}: expected [{REAL_ROW!r}] or [model label, steps], got {row!r}")
    return None


def _check_values(spec: EvalSpec, problems: list[str]) -> None:
    if spec.n < 2:
        problems.append(f"n: must be >= 2 (a covariance needs two samples), got {spec.n}")
    if spec.batch_size < 1:
        problems.append(f"batch_size: must be >= 1, got {spec.batch_size}")
    if spec.repeats < 1:
        problems.append(f"repeats: must be >= 1, got {spec.repeats}")
    if spec.seed < 0:
        problems.append(f"seed: must be >= 0, got {spec.seed}")
    if spec.torch_threads is not None and spec.torch_threads < 1:
        problems.append(f"torch_threads: must be >= 1 or null, got {spec.torch_threads}")
    if not spec.models:
        problems.append("models: give at least one model")
    labels = [m.label for m in spec.models]
    for i, model in enumerate(spec.models):
        if model.label == REAL_ROW:
            problems.append(f"models[{i}].label: {REAL_ROW!r} names the picture's held-out row: use another label")
        elif model.label in labels[:i]:
            problems.append(f"models[{i}].label: {model.label!r} is used by more than one model")
        if not model.steps or any(s < 1 for s in model.steps):
            problems.append(f"models[{i}].steps: need at least one entry, each >= 1, got {model.steps}")
        if isinstance(model, TeacherModel) and not math.isfinite(model.guidance_scale):
            problems.append(f"models[{i}].guidance_scale: must be a finite number, got {model.guidance_scale}")
    if spec.picture is not None:
        evaluated = {(m.label, s) for m in spec.models for s in m.steps}
        for i, row in enumerate(spec.picture.rows):
            if row.steps is not None and (row.label, row.steps) not in evaluated:
                problems.append(f"picture.rows[{i}]: {row.label!r} at {row.steps} steps is not among the models "
                                f"and steps evaluated")
        if not spec.picture.rows:
            problems.append("picture.rows: give at least one row")
        classes = spec.picture.classes
        if classes is not None and (not classes or any(c < 0 for c in classes)):
            problems.append(f"picture.classes: need at least one class, each >= 0 (or null: all), got {classes}")


def _parse_picture(obj: Any, problems: list[str]) -> PictureSpec | None:
    if obj is None:
        return None
    if not isinstance(obj, dict):
        problems.append(f"picture: expected object or null, got {type(obj).__name__}")
        return None
    if not _check_keys(obj, _PICTURE_KEYS, "picture", problems):
        return None
    path = _parse(obj["path"], str, "picture.path", problems)
    classes = _parse(obj["classes"], list[int] | None, "picture.classes", problems)
    if not isinstance(obj["rows"], list) or not all(isinstance(row, list) for row in obj["rows"]):
        problems.append(f"picture.rows: expected a list of lists, got {obj['rows']!r}")
        return None
    rows = [_picture_row(row, f"picture.rows[{i}]", problems) for i, row in enumerate(obj["rows"])]
    return PictureSpec(path, rows, classes)


def parse_eval_spec(obj: Any) -> EvalSpec:
    """Parse the spec (a JSON object). Raises EvalInputError listing every problem; its key is the first one's."""
    problems: list[str] = []
    if not isinstance(obj, dict):
        raise EvalInputError(None, f"spec: expected object, got {type(obj).__name__}")
    if not _check_keys(obj, _TOP_KEYS, "", problems):
        raise _error(problems)
    typed = {key: _parse(obj[key], tp, key, problems) for key, tp in _TYPED_KEYS.items()}
    features = _by_kind(obj["features"], {"classifier": ClassifierFeatures, "torchscript": TorchscriptFeatures,
                                               "inception": InceptionFeatures},
                        "features", problems)
    models = []
    if isinstance(obj["models"], list):
        models = [_by_kind(model, {"teacher": TeacherModel, "student": StudentModel}, f"models[{i}]", problems)
                  for i, model in enumerate(obj["models"])]
    else:
        problems.append(f"models: expected a list, got {type(obj['models']).__name__}")
    picture = _parse_picture(obj["picture"], problems)
    if problems:
        raise _error(problems)
    spec = EvalSpec(features=features, models=models, picture=picture, **typed)
    _check_values(spec, problems)
    if problems:
        raise _error(problems)
    return spec


def _error(problems: list[str]) -> EvalInputError:
    return EvalInputError(problems[0].split(":", 1)[0], "; ".join(problems))
