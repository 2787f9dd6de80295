"""Which adapter reads a folder: model_index.json's `_class_name` picks the family (docs/adapters.md).

Families register themselves with `@register`; `families()` imports every module of this package once, so a new
family is one new file.
"""
from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

import torch

from .base import MODEL_INDEX, AdapterError, TeacherAdapter, read_json_object

_FAMILIES: dict[str, type[TeacherAdapter]] = {}
_PIPELINES: dict[str, str] = {}
_NOT_FAMILY_MODULES = {"base", "registry", "sampling"}
_loaded = False

# Folders the adapters do not read: UNet2DModel teachers keep their own path (teacher_folder.load_teacher_folder).
UNET2D_FAMILY = "unet2d"
UNET2D_PIPELINES = ("DDPMPipeline",)


def register(cls: type[TeacherAdapter]) -> type[TeacherAdapter]:
    """Class decorator: `cls.family` reads the folders whose model_index.json names one of `cls.pipeline_classes`."""
    if cls.family in _FAMILIES and _FAMILIES[cls.family] is not cls:
        raise ValueError(f"adapter family {cls.family!r} is registered twice")
    _FAMILIES[cls.family] = cls
    for name in cls.pipeline_classes:
        _PIPELINES[name] = cls.family
    return cls


def families() -> dict[str, type[TeacherAdapter]]:
    """Every registered family (importing this package's modules the first time)."""
    global _loaded
    if not _loaded:
        for info in pkgutil.iter_modules([str(Path(__file__).parent)]):
            if info.name not in _NOT_FAMILY_MODULES and not info.name.startswith("_"):
                importlib.import_module(f"{__package__}.{info.name}")
        _loaded = True
    return dict(_FAMILIES)


def _supported() -> str:
    fams = families()
    parts = [f"{p} ({f})" for p, f in sorted(_PIPELINES.items()) if f in fams]
    parts += [f"{p} ({UNET2D_FAMILY})" for p in UNET2D_PIPELINES]
    return ", ".join(parts)


def family_of(folder: str | Path) -> str:
    """The family name of a pipeline folder: a registered family, or "unet2d" for a DDPMPipeline / UNet2DModel
    folder. Anything else is one AdapterError line naming the folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise AdapterError(f"{folder}: not a folder")
    index_path = folder / MODEL_INDEX
    if not index_path.exists():
        unet_config = folder / "unet" / "config.json"
        if unet_config.is_file() and read_json_object(unet_config).get("_class_name", "UNet2DModel") == "UNet2DModel":
            return UNET2D_FAMILY
        raise AdapterError(f"{folder}: missing {MODEL_INDEX} (a diffusers pipeline folder, written by "
                           f"save_pretrained, names its pipeline class there)")
    name = read_json_object(index_path).get("_class_name")
    if name in UNET2D_PIPELINES:
        return UNET2D_FAMILY
    families()
    if name not in _PIPELINES:
        raise AdapterError(f"{index_path}: pipeline {name!r} is not supported (supported: {_supported()})")
    return _PIPELINES[name]


def load_adapter(folder: str | Path, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32, unet: torch.nn.Module | None = None) -> TeacherAdapter:
    """The folder behind its family's adapter, on `device` in `dtype` (with `unet`, a UNet already loaded from the
    folder, instead of loading another)."""
    family = family_of(folder)
    if family == UNET2D_FAMILY:
        raise AdapterError(f"{folder}: a UNet2DModel (DDPMPipeline) folder is read by "
                           f"teacher_folder.load_teacher_folder, not by a text-to-image adapter")
    return families()[family].load(folder, device=device, dtype=dtype, unet=unet)
