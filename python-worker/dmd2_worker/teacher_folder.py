"""The diffusers teacher folder (docs/pipeline.md §2): written by `dmd2 train-teacher`, read by
`teacher.source: diffusers`, loadable by `diffusers.DDPMPipeline.from_pretrained`.

```
model_index.json                       DDPMPipeline = UNet2DModel + DDPMScheduler
unet/config.json                       UNet2DModel.save_pretrained
unet/diffusion_pytorch_model.safetensors
scheduler/scheduler_config.json        the diffusion config (DDPMScheduler)
dmd2_teacher.json                      optional: num_classes, null_class, data, train
```

A folder is read as one when it has model_index.json or unet/ (teacher_training.is_diffusers_teacher_dir).
Reading checks everything the roles rely on and reports each problem as one line naming the file (and key).
Weights are read only from safetensors.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Any

import diffusers
import torch
from diffusers import DDPMScheduler, UNet2DModel
from safetensors import SafetensorError
from safetensors.torch import load_file

from .checkpoint import write_json
from .config import DiffusionConfig
from .diffusion import PREDICTION_TYPES
from .models.unet2d import UNet2DNet

MODEL_INDEX = "model_index.json"
UNET_CONFIG = "unet/config.json"
UNET_WEIGHTS = "unet/diffusion_pytorch_model.safetensors"
SCHEDULER_CONFIG = "scheduler/scheduler_config.json"
TEACHER_INFO = "dmd2_teacher.json"
TEACHER_INFO_FORMAT = 1
ARCH_NAME = "diffusers.UNet2DModel"  # the "arch" of the config dict load_teacher_folder returns

BETA_SCHEDULES = ("linear", "scaled_linear")  # NoiseSchedule's (and diffusers') names


class TeacherFolderError(ValueError):
    """A teacher folder that cannot be used; the message is one line naming the file."""

# --- writing -----------------------------------------------------------------------------------------------------

def scheduler_for(diffusion: DiffusionConfig) -> DDPMScheduler:
    """clip_sample false (DDPMScheduler's default is true): DDIM on the digits teacher scores better without the
    per-step clamp (FD at 50 steps 1.73 vs 2.11, dmd2 eval --n 5000), and the teacher is the baseline a student is
    compared with, so it samples its best way; its final images are clamped when saved either way."""
    return DDPMScheduler(num_train_timesteps=diffusion.num_train_timesteps, beta_schedule=diffusion.beta_schedule,
                         beta_start=diffusion.beta_start, beta_end=diffusion.beta_end,
                         prediction_type=diffusion.prediction_type, clip_sample=False)


def write_teacher_folder(out: str | Path, unet: UNet2DModel, diffusion: DiffusionConfig, num_classes: int | None,
                         data: dict[str, Any], train: dict[str, Any], replace: bool = False) -> Path:
    """Write the folder into `<out>.tmp-<pid>`, then rename it to `out` (replacing an existing `out` only when
    `replace`). `num_classes` K means `unet` has K + 1 class embeddings, the last the null class."""
    out = Path(out).absolute()
    if out.exists() and not replace:
        raise FileExistsError(f"{out} exists")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    old = out.with_name(f"{out.name}.old-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        write_json(tmp / MODEL_INDEX, {"_class_name": "DDPMPipeline", "_diffusers_version": diffusers.__version__,
                                       "unet": ["diffusers", "UNet2DModel"],
                                       "scheduler": ["diffusers", "DDPMScheduler"]})
        unet.save_pretrained(tmp / "unet", safe_serialization=True)
        scheduler_for(diffusion).save_pretrained(tmp / "scheduler")
        write_json(tmp / TEACHER_INFO, {"format": TEACHER_INFO_FORMAT, "num_classes": num_classes,
                                        "null_class": num_classes, "data": data, "train": train})
        if out.exists():
            os.rename(out, old)
        os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return out


# --- reading -----------------------------------------------------------------------------------------------------

def read_json_object(path: Path, error: type[Exception] | None = None) -> dict[str, Any]:
    """The JSON object in `path`; a missing, unreadable or non-object file raises `error` (default
    TeacherFolderError) with one line naming the file."""
    error = error or TeacherFolderError
    if not path.is_file():
        raise error(f"{path}: missing")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise error(f"{path}: not valid JSON: {' '.join(str(e).split())}") from None
    if not isinstance(obj, dict):
        raise error(f"{path}: expected a JSON object, got {type(obj).__name__}")
    return obj




def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_schedule_values(path: Path, cfg: dict[str, Any], raw: dict[str, Any],
                          error: type[Exception] | None = None) -> None:
    """The scheduler-config values NoiseSchedule supports: `cfg` holds the diffusion keys (defaults filled in),
    `raw` the file as read. Raises `error` (default TeacherFolderError) with one line naming the file."""
    error = error or TeacherFolderError
    T = cfg["num_train_timesteps"]
    if not _is_int(T) or T < 2:
        raise error(f"{path}: num_train_timesteps must be an integer >= 2, got {T!r}")
    if cfg["beta_schedule"] not in BETA_SCHEDULES:
        raise error(f"{path}: beta_schedule {cfg['beta_schedule']!r} is not supported "
                    f"(supported: {', '.join(map(repr, BETA_SCHEDULES))})")
    if cfg["prediction_type"] not in PREDICTION_TYPES:
        raise error(f"{path}: prediction_type {cfg['prediction_type']!r} is not supported "
                    f"(supported: {', '.join(map(repr, PREDICTION_TYPES))})")
    b0, b1 = cfg["beta_start"], cfg["beta_end"]
    if not (_is_number(b0) and _is_number(b1) and 0 < b0 < b1 < 1):
        raise error(f"{path}: beta_start, beta_end: need numbers with 0 < beta_start < beta_end < 1, got {b0!r}, {b1!r}")
    if raw.get("trained_betas") is not None:
        raise error(f"{path}: trained_betas is not supported (set it to null and use beta_schedule)")
    if raw.get("rescale_betas_zero_snr"):
        raise error(f"{path}: rescale_betas_zero_snr is not supported (set it to false)")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def read_diffusion_config(path: Path) -> dict[str, Any]:
    """The diffusion config (dataclasses.asdict(DiffusionConfig) form) in a scheduler_config.json; every key of
    it must be there (as the CLI requires)."""
    raw = read_json_object(path)
    missing = [f.name for f in dataclasses.fields(DiffusionConfig) if f.name not in raw]
    if missing:
        raise TeacherFolderError(f"{path}: missing {', '.join(missing)}")
    d = {f.name: raw[f.name] for f in dataclasses.fields(DiffusionConfig)}
    check_schedule_values(path, d, raw)
    b0, b1 = d["beta_start"], d["beta_end"]
    d["beta_start"], d["beta_end"] = float(b0), float(b1)
    return d


def clip_sample_range(directory: Path) -> float | None:
    """The scheduler config's clip_sample_range when its clip_sample is true (diffusers' DDPM and DDIM schedulers
    then clamp each step's x0 to it), else None; a missing key counts as false."""
    path = Path(directory) / SCHEDULER_CONFIG
    raw = read_json_object(path)
    if raw.get("clip_sample") is not True:
        return None
    r = raw.get("clip_sample_range", 1.0)
    if not _is_number(r) or r <= 0:
        raise TeacherFolderError(f"{path}: clip_sample_range must be a positive number, got {r!r}")
    return float(r)


def read_class_layout(directory: Path, unet_config: dict[str, Any]) -> tuple[int | None, int | None]:
    """(num_classes, null_class) from dmd2_teacher.json, else from the UNet (num_class_embeds, no null class)."""
    path = directory / TEACHER_INFO
    if not path.exists():
        return unet_config.get("num_class_embeds"), None
    info = read_json_object(path)
    if info.get("format") != TEACHER_INFO_FORMAT:
        raise TeacherFolderError(f"{path}: format {info.get('format')!r} is not supported "
                                 f"(this worker reads {TEACHER_INFO_FORMAT})")
    k, null = info.get("num_classes"), info.get("null_class")
    if k is not None and (not _is_int(k) or k < 1):
        raise TeacherFolderError(f"{path}: num_classes must be a positive integer or null, got {k!r}")
    if null is not None and null != k:
        raise TeacherFolderError(f"{path}: null_class must equal num_classes ({k!r}) or be null, got {null!r}")
    return k, null


# the weight files from_pretrained reads without `variant=` (diffusers models, transformers models), single or sharded
_DEFAULT_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin", "model.safetensors",
                    "pytorch_model.bin")


def variant_only_weights(directory: Path) -> list[str]:
    """Weight files of a `variant=` save (`diffusion_pytorch_model.fp16.safetensors`, `model.fp16.safetensors`, their
    shards' indexes) in a component folder that has none of the default ones: what `from_pretrained` without a
    variant cannot load. Empty when the default weights are there, or when there are no variant files either."""
    if not directory.is_dir():
        return []
    names = {p.name for p in directory.iterdir()}
    if any(n in names or f"{n}.index.json" in names for n in _DEFAULT_WEIGHTS):
        return []
    stems = tuple(d.split(".")[0] + "." for d in _DEFAULT_WEIGHTS)
    return sorted(n for n in names if n.startswith(stems) and n.endswith((".safetensors", ".bin", ".index.json")))


def _weights_path(directory: Path) -> Path:
    path = directory / UNET_WEIGHTS
    if path.is_file():
        return path
    if (directory / "unet" / "diffusion_pytorch_model.bin").is_file():
        raise TeacherFolderError(f"{path}: missing; this worker reads only safetensors weights (convert "
                                 f"diffusion_pytorch_model.bin with UNet2DModel.save_pretrained(safe_serialization=True))")
    variants = variant_only_weights(directory / "unet")
    if variants:
        raise TeacherFolderError(f"{path}: missing; only variant weights are there ({', '.join(variants)}): save the "
                                 f"UNet again without variant= (UNet2DModel.from_pretrained(folder, subfolder='unet', "
                                 f"variant=...).save_pretrained(folder / 'unet'))")
    raise TeacherFolderError(f"{path}: missing")


def _load_weights(unet: UNet2DModel, path: Path) -> None:
    try:
        state = load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as e:
        raise TeacherFolderError(f"{path}: cannot read safetensors: {e}") from None
    own = unet.state_dict()
    missing = sorted(own.keys() - state.keys())
    unexpected = sorted(state.keys() - own.keys())
    reshaped = sorted(k for k in own.keys() & state.keys() if own[k].shape != state[k].shape)
    if missing or unexpected or reshaped:
        parts = [f"{len(names)} {what} (first: {names[0]})" for what, names in
                 (("missing", missing), ("unexpected", unexpected), ("of another shape", reshaped)) if names]
        raise TeacherFolderError(f"{path}: the weights do not fit {UNET_CONFIG}: {', '.join(parts)}")
    unet.load_state_dict(state)


def load_teacher_folder(directory: str | Path, device: torch.device | str = "cpu") -> tuple[UNet2DNet, dict[str, Any]]:
    """The folder's UNet behind the roles' interface (float32, on `device`) and its config dict:
    {"arch": "diffusers.UNet2DModel", "diffusion": {...}, "num_classes": K | None, "image_shape": [C, H, W]}."""
    directory = Path(directory)
    if (directory / MODEL_INDEX).exists():
        index = read_json_object(directory / MODEL_INDEX)
        if index.get("unet") != ["diffusers", "UNet2DModel"]:
            raise TeacherFolderError(f"{directory / MODEL_INDEX}: unet must be ['diffusers', 'UNet2DModel'], "
                                     f"got {index.get('unet')!r}")
    config_path = directory / UNET_CONFIG
    unet_config = read_json_object(config_path)
    if unet_config.get("_class_name", "UNet2DModel") != "UNet2DModel":
        raise TeacherFolderError(f"{config_path}: _class_name must be 'UNet2DModel', got {unet_config['_class_name']!r}")
    weights = _weights_path(directory)
    diffusion = read_diffusion_config(directory / SCHEDULER_CONFIG)
    num_classes, null_class = read_class_layout(directory, unet_config)
    try:
        unet = UNet2DModel.from_config(unet_config)
        net = UNet2DNet(unet, num_classes, null_class)
    except (ValueError, TypeError, KeyError) as e:
        raise TeacherFolderError(f"{config_path}: {' '.join(str(e).split())}") from None
    _load_weights(unet, weights)
    config = {"arch": ARCH_NAME, "diffusion": diffusion, "num_classes": num_classes,
              "image_shape": [net.in_channels, net.image_size, net.image_size]}
    return net.to(device=device, dtype=torch.float32), config
