"""What the roles share for text-to-image teachers (`data.source: prompts`, docs/adapters.md §6): which family the
teacher folder is (the family registry, families.json), loading its UNet behind `UNet2DConditionNet` and the text
step tensors of its registry entry. (Guidance with the family's unconditional input is guidance.guided.)

Step tensors (docs/protocol.md §4), all batch-major so that replicas split them, written by `generator.generate`
and read by every op that needs conditioning (none of those roles loads a text encoder):
the names, dtypes and shapes are the registry entry's `step_tensors`, e.g. `cond_hidden` float32 (B, L, D), the text
encoders' token embeddings (cross-attention input), and in a family with added conditions a pooled embedding and
time ids.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..config import Recipe
from ..families import text_families, text_pipelines_phrase
from ..store import TensorStore, need

if TYPE_CHECKING:  # the adapters import diffusers (seconds): only workers with a text-to-image teacher do
    from ..adapters.base import Conditioning



def text_family_names() -> list[str]:
    """The text-to-image families of the registry (families.json)."""
    return [f.name for f in text_families()]


def is_text_recipe(recipe: Recipe) -> bool:
    """Text-to-image distillation: the data is prompts (the teacher is then a folder of a text family)."""
    return recipe.data.source == "prompts"


def teacher_family(recipe: Recipe) -> str | None:
    """The registry family of a diffusers teacher folder; None for the built-in teacher."""
    if recipe.teacher.source != "diffusers" or not recipe.teacher.path:
        return None
    from ..adapters.registry import family_of

    return family_of(recipe.teacher.path)


def check_text_teacher(folder: str | Path, recipe: Recipe) -> str:
    """The teacher folder fits a text recipe: a text-to-image family whose scheduler config is the recipe's
    `diffusion`. Returns the family. A text-to-image folder with other data is refused too (check_family_fits)."""
    from ..adapters.base import read_scheduler_config
    from ..adapters.registry import family_of

    folder = Path(folder)
    family = family_of(folder)
    if family not in text_family_names():
        raise ValueError(f"teacher.path: {folder} is a {family} folder, but data.source prompts needs a "
                         f"{text_pipelines_phrase()} folder")
    from ..families import family as registry_family

    if registry_family(family).parametrisation == "flow":
        return family  # a flow-matching schedule: the recipe's DDPM `diffusion` does not describe it (flow_matching.py)
    cfg = read_scheduler_config(folder)
    want = dataclasses.asdict(recipe.diffusion)
    have = {k: cfg[k] for k in want}
    if any(have[k] != v and not (isinstance(v, float) and float(have[k]) == v) for k, v in want.items()):
        raise ValueError(f"{folder}: the teacher's diffusion config {have} differs from the recipe's {want}")
    return family


def check_family_fits(recipe: Recipe) -> None:
    """A class-label or unconditional recipe must not name a text-to-image teacher (one line with the fix)."""
    if is_text_recipe(recipe):
        return
    family = teacher_family(recipe)
    if family in text_family_names():
        raise ValueError(f"teacher.path: {recipe.teacher.path} is a text-to-image ({family}) pipeline: set "
                         f"data.source: prompts with data.prompts.file (data.source is {recipe.data.source!r})")


def load_text_unet(folder: str | Path, device: torch.device) -> torch.nn.Module:
    """The folder's denoiser alone (float32, on `device`): its UNet2DConditionModel, or a flow family's
    transformer (the adapter's `load_denoiser`): what the fake score trains."""
    from ..adapters.registry import families, family_of

    return families()[family_of(folder)].load_denoiser(folder, device, torch.float32)


def text_network(folder: str | Path, denoiser: torch.nn.Module, guidance: float | None = None) -> tuple[torch.nn.Module, Any]:
    """The denoiser behind the roles' network interface and the folder's schedule, both by its family's adapter
    (UNet2DConditionNet and NoiseSchedule; SD3TransformerNet and FlowMatchSchedule for a flow family).
    `guidance`: the scale a guidance-embedded transformer (Flux.1-dev) embeds; the others ignore it."""
    from ..adapters.registry import families, family_of

    adapter = families()[family_of(folder)]
    schedule = adapter.read_schedule(folder)
    return adapter.network(denoiser, schedule, folder=folder, guidance=guidance), schedule


# --- step tensors ------------------------------------------------------------------------------------------------

def store_conditioning(store: TensorStore, cond: Conditioning) -> None:
    """`cond` as the family's text step tensors (float32): each Conditioning field that is set goes to the step
    tensor of the registry entry whose `field` it is (one name per field across the text families)."""
    names = _tensor_for_field()
    for f in dataclasses.fields(cond):
        value = getattr(cond, f.name)
        if value is not None:
            store[names[f.name]] = value.float().contiguous()


def _tensor_for_field() -> dict[str, str]:
    out: dict[str, str] = {}
    for fam in text_families():
        for t in fam.step_tensors:
            if t.field is not None:
                if out.setdefault(t.field, t.name) != t.name:
                    raise ValueError(f"families.json: the Conditioning field {t.field} is step tensor {out[t.field]} in "
                                     f"one family and {t.name} in {fam.name}")
    return out


def _float_input(store: TensorStore, name: str, where: str, shape: tuple[int | None, ...]) -> torch.Tensor:
    v = need(store, name, where)
    if v.dtype != torch.float32:
        raise ValueError(f"{where}: {name!r} must be float32, got {str(v.dtype).removeprefix('torch.')}")
    if v.dim() != len(shape) or any(s is not None and s != n for s, n in zip(shape, v.shape)):
        want = ", ".join("?" if s is None else str(s) for s in shape)
        raise ValueError(f"{where}: {name!r} must have shape ({want}), got {list(v.shape)}")
    return v


def conditioning_input(store: TensorStore, where: str, batch: int, net: Any, device: torch.device) -> Conditioning:
    """The family's text step tensors for a UNet2DConditionNet `net` (`net.step_tensors`, sized by `net.dims`),
    checked, as a Conditioning."""
    from ..adapters.base import Conditioning

    fields: dict[str, torch.Tensor] = {}
    for t in net.step_tensors:
        shape = tuple(batch if s == "B" else s if isinstance(s, int) else net.dims.get(s) for s in t.shape)
        fields[t.field] = _float_input(store, t.name, where, shape)
    return Conditioning(**fields).to(device)
