"""Which adapter reads a folder (docs/adapters.md): the family registry (families.json, families.py) maps
model_index.json's `_class_name` to a family, and names the module that holds its adapter.

A text-to-image family's adapter is a `TeacherAdapter` subclass decorated with `@register`, in the module its registry
entry names (`adapter.python`); `families()` imports those modules once. The registry entry, not the class, says which
pipeline classes a family reads: `register` takes them from there.
"""
from __future__ import annotations

import importlib
from pathlib import Path

import torch

from ..families import FamilyRegistryError, registry
from .base import MODEL_INDEX, AdapterError, TeacherAdapter, read_json_object

_FAMILIES: dict[str, type[TeacherAdapter]] = {}
_loaded = False


def _backbone_family(class_name: str) -> str:
    for fam in registry().families.values():
        if fam.backbone_class == class_name and not fam.is_text:
            return fam.name
    raise FamilyRegistryError(f"no family with a {class_name} backbone in the family registry")


# Folders the adapters do not read: UNet2DModel teachers keep their own path (teacher_folder.load_teacher_folder).
UNET2D_FAMILY = _backbone_family("UNet2DModel")


def register(cls: type[TeacherAdapter]) -> type[TeacherAdapter]:
    """Class decorator: `cls.family` (a text family of the registry) reads the folders whose model_index.json names
    one of the registry entry's pipeline classes (set on the class as `pipeline_classes`)."""
    fams = registry().families
    if cls.family not in fams or not fams[cls.family].is_text:
        raise FamilyRegistryError(f"adapter {cls.__name__}: family {cls.family!r} is not a text family of the registry "
                                  f"(add its entry to families.json)")
    if cls.family in _FAMILIES and _FAMILIES[cls.family] is not cls:
        raise ValueError(f"adapter family {cls.family!r} is registered twice")
    cls.pipeline_classes = fams[cls.family].pipeline_classes
    _FAMILIES[cls.family] = cls
    return cls


def families() -> dict[str, type[TeacherAdapter]]:
    """Every text family's adapter class (importing the modules the registry names the first time)."""
    global _loaded
    if not _loaded:
        for fam in registry().text_families():
            importlib.import_module(fam.adapter_module)
            if fam.name not in _FAMILIES:
                raise FamilyRegistryError(f"{fam.adapter_module} registers no adapter for the family {fam.name!r} "
                                          f"(its TeacherAdapter subclass needs family = {fam.name!r} and @register)")
        _loaded = True
    return dict(_FAMILIES)


def _supported() -> str:
    return ", ".join(f"{p} ({name})" for p, name in sorted((p, f.name) for f in registry().families.values()
                                                            for p in f.pipeline_classes))


def family_of(folder: str | Path) -> str:
    """The family name of a pipeline folder, by model_index.json's `_class_name` (a folder without one: the family
    whose backbone config it has, among those the registry lets go without). Anything else is one AdapterError line
    naming the folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise AdapterError(f"{folder}: not a folder")
    index_path = folder / MODEL_INDEX
    if not index_path.exists():
        for fam in registry().without_model_index():
            config = folder / fam.backbone_subfolder / "config.json"
            if config.is_file() and fam.matches_backbone(read_json_object(config).get("_class_name", fam.backbone_class),
                                                         read_json_object(config)):
                return fam.name
        raise AdapterError(f"{folder}: missing {MODEL_INDEX} (a diffusers pipeline folder, written by "
                           f"save_pretrained, names its pipeline class there)")
    name = read_json_object(index_path).get("_class_name")
    fam = registry().for_pipeline(name)
    if fam is None:
        raise AdapterError(f"{index_path}: pipeline {name!r} is not supported (supported: {_supported()})")
    return fam.name


def load_adapter(folder: str | Path, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32, unet: torch.nn.Module | None = None) -> TeacherAdapter:
    """The folder behind its family's adapter, on `device` in `dtype` (with `unet`, a UNet already loaded from the
    folder, instead of loading another)."""
    family = family_of(folder)
    fam = registry().family(family)
    if not fam.is_text:
        raise AdapterError(f"{folder}: a {fam.backbone_class} ({', '.join(fam.pipeline_classes)}) folder is read by "
                           f"teacher_folder.load_teacher_folder, not by a text-to-image adapter")
    return families()[family].load(folder, device=device, dtype=dtype, unet=unet)
