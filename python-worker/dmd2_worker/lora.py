"""LoRA students: low-rank adapters (peft) on the diffusers UNet of a generator or fake score network, the base
weights frozen (docs/adapters.md "LoRA students").

A LoRA layer adds `scale * B(A(x))` to a Linear or Conv2d layer's output, with A: in -> rank (for a convolution,
A has the layer's kernel, stride and padding; B is 1x1), B: rank -> out, and `scale = alpha / rank`. B starts at
zero, so a freshly adapted network computes exactly what its base does. Per adapted layer that is
`rank * (in * kh * kw + out)` trainable numbers; AdamW keeps two more of each, so optimizer memory shrinks by the
ratio of LoRA to full parameters: for the tiny test UNet2DConditionModel, 32,384 LoRA parameters at rank 4 on
to_q/to_k/to_v/to_out.0/conv1 vs 792,964 in the UNet (4.1%); for SD 1.5's 859.5M-parameter UNet at the default
below, 58.5M (6.8%), so AdamW's fp32 moments take 0.44 GiB instead of 6.4 GiB (tests/test_lora.py prints both).

    spec = LoraSpec(rank=64, alpha=64, target_modules=["to_q", "to_k", "to_v", "to_out.0"])
    apply_lora(net, spec)                     # net.unet gets the adapters; only they require grad
    optimizer = AdamW(trainable_parameters(net), ...)
    save_tensors(path, lora_state(net))       # checkpoints: the adapters only
    load_lora_state(net, load_tensors(path))  # into a net that had apply_lora with the same spec
    export_lora(net, folder / LORA_WEIGHT_NAME)   # pipeline.load_lora_weights(folder, weight_name=LORA_WEIGHT_NAME)
    unet = merge_lora(net)                    # a plain UNet with the adapters merged in (a full-UNet export)

`target_modules` are module-name suffixes, matched as peft matches a list: a module `down_blocks.0.attentions.0.
transformer_blocks.0.attn1.to_q` is adapted by "to_q" or "attn1.to_q" (the name equals the target or ends with
"." + target). Every target must match at least one Linear or Conv2d module of the UNet.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn

from .families import registry
from .checkpoint import full_tensor, like

ADAPTER = "default"                                  # the peft adapter name; part of the lora_state keys
LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # diffusers' default LoRA file name
_LORA_MARKERS = (".lora_A.", ".lora_B.")
_ADAPTABLE = (nn.Linear, nn.Conv2d)

# The default for SD-family (UNet2DConditionModel) students: rank 64, alpha 64 (scale 1), on every attention
# projection, the transformer blocks' in/out projections and feed-forward layers, and the ResNet blocks' 3x3
# convolutions. Neither the DMD2 paper nor docs/DESIGN.md fixes these; this is the project's choice (6.8% of
# SD 1.5's UNet, 7.5% of SDXL's, see docs/adapters.md "LoRA students").
DEFAULT_RANK = 64
DEFAULT_TARGET_MODULES = registry().default_lora_targets  # families.json's default_lora_targets
# suffixes suggested first when a target matches nothing
_USUAL_SUFFIXES = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
                   "conv1", "conv2", "conv_shortcut", "time_emb_proj")


@dataclasses.dataclass(frozen=True)
class LoraSpec:
    """`generator.lora` of a recipe: the adapters' rank, alpha (scale = alpha / rank) and target module suffixes.
    Invalid values raise a one-line ValueError naming `<where>.<key>`."""

    rank: int
    alpha: float
    target_modules: tuple[str, ...]
    where: str = dataclasses.field(default="generator.lora", compare=False, repr=False)

    def __post_init__(self) -> None:
        w = self.where
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"{w}.rank: must be an integer >= 1, got {self.rank!r}")
        a = self.alpha
        if isinstance(a, bool) or not isinstance(a, (int, float)) or not math.isfinite(a) or a <= 0:
            raise ValueError(f"{w}.alpha: must be a number > 0, got {a!r}")
        targets = self.target_modules
        if isinstance(targets, str) or not isinstance(targets, (list, tuple)) or not targets:
            raise ValueError(f"{w}.target_modules: must be a non-empty list of module-name suffixes (e.g. "
                             f"[to_q, to_k, to_v, to_out.0]), got {targets!r}")
        for t in targets:
            if not isinstance(t, str) or not t or t != t.strip() or t.startswith(".") or t.endswith("."):
                raise ValueError(f"{w}.target_modules: each entry must be a module-name suffix such as to_q or "
                                 f"to_out.0, got {t!r}")
        if len(set(targets)) != len(targets):
            raise ValueError(f"{w}.target_modules: {sorted(t for t in set(targets) if targets.count(t) > 1)} "
                             f"listed more than once")
        object.__setattr__(self, "target_modules", tuple(targets))
        object.__setattr__(self, "alpha", float(a))

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    @classmethod
    def parse(cls, obj: Any, where: str = "generator.lora") -> LoraSpec | None:
        """A recipe's `lora` object: null (the whole UNet trains) or {rank, alpha, target_modules}; rank defaults to
        64, alpha to the rank, target_modules to DEFAULT_TARGET_MODULES."""
        if obj is None:
            return None
        if not isinstance(obj, dict):
            raise ValueError(f"{where}: must be null or an object {{rank, alpha, target_modules}}, got {obj!r}")
        unknown = sorted(set(obj) - {"rank", "alpha", "target_modules"})
        if unknown:
            raise ValueError(f"{where}.{unknown[0]}: unknown key (expected rank, alpha, target_modules)")
        rank = obj.get("rank", DEFAULT_RANK)
        return cls(rank=rank, alpha=obj.get("alpha", rank), where=where,
                   target_modules=obj.get("target_modules", list(DEFAULT_TARGET_MODULES)))

    def to_dict(self) -> dict[str, Any]:
        return {"rank": self.rank, "alpha": self.alpha, "target_modules": list(self.target_modules)}


# --- applying ------------------------------------------------------------------------------------------------------

def _unet_of(net: nn.Module) -> nn.Module:
    unet = getattr(net, "unet", None)
    if not isinstance(unet, nn.Module):
        raise TypeError(f"{type(net).__name__} has no diffusers UNet as .unet (LoRA adapts UNet2DNet and "
                        f"UNet2DConditionNet networks)")
    return unet


def _matches(name: str, target: str) -> bool:
    """peft's rule for a list of target modules."""
    return name == target or name.endswith("." + target)


def _suffix(name: str) -> str:
    """The name a user would write for a module: its last part, with the parent's for a list index (to_out.0)."""
    parts = name.split(".")
    return ".".join(parts[-2:]) if parts[-1].isdigit() and len(parts) > 1 else parts[-1]


def adaptable_suffixes(unet: nn.Module) -> list[str]:
    """The suffixes of the UNet's Linear and Conv2d modules, the usual LoRA targets first."""
    found = {_suffix(n) for n, m in unet.named_modules() if n and isinstance(m, _ADAPTABLE)}
    for n, m in unet.named_modules():  # ff.net.0.proj / ff.net.2 are written with their parents
        if isinstance(m, _ADAPTABLE):
            found.update(s for s in _USUAL_SUFFIXES if _matches(n, s))
    usual = [s for s in _USUAL_SUFFIXES if s in found]
    return usual + sorted(found - set(usual))


def check_targets(unet: nn.Module, spec: LoraSpec) -> None:
    """Every target matches at least one module of `unet`, and only Linear / Conv2d modules."""
    modules = [(n, m) for n, m in unet.named_modules() if n]
    for target in spec.target_modules:
        hits = [(n, m) for n, m in modules if _matches(n, target)]
        if not hits:
            some = ", ".join(adaptable_suffixes(unet)[:12])
            raise ValueError(f"{spec.where}.target_modules: {target!r} matches no module of the "
                             f"{type(unet).__name__} (targets are module-name suffixes; this one has e.g. {some})")
        bad = sorted({type(m).__name__ for _, m in hits if not isinstance(m, _ADAPTABLE)})
        if bad:
            raise ValueError(f"{spec.where}.target_modules: {target!r} matches {'/'.join(bad)} modules (e.g. "
                             f"{next(n for n, m in hits if not isinstance(m, _ADAPTABLE))}); LoRA adapts Linear "
                             f"and Conv2d modules only")


def _lora_layers(unet: nn.Module) -> list[tuple[str, nn.Module]]:
    from peft.tuners.lora import LoraLayer

    return [(n, m) for n, m in unet.named_modules() if isinstance(m, LoraLayer)]


def has_lora(net: nn.Module) -> bool:
    unet = getattr(net, "unet", None)
    return isinstance(unet, nn.Module) and bool(_lora_layers(unet))


def apply_lora(net: nn.Module, spec: LoraSpec, seed: int = 0) -> nn.Module:
    """Freeze every parameter of `net` and add LoRA adapters to `net.unet`'s target modules (in place; returns
    `net`). Only the adapters require grad. B is zero, so the output equals the base network's; A is drawn
    (kaiming-uniform, as peft does) from a CPU generator seeded with `seed`, so every replica and device gets the
    same adapters and the global random state is left alone. Call it before FSDP sharding and before building the
    optimizer (over `trainable_parameters(net)`)."""
    from peft import LoraConfig, inject_adapter_in_model

    unet = _unet_of(net)
    if _lora_layers(unet):
        raise ValueError(f"{spec.where}: the network already has LoRA adapters")
    check_targets(unet, spec)
    net.requires_grad_(False)
    config = LoraConfig(r=spec.rank, lora_alpha=spec.alpha, target_modules=list(spec.target_modules),
                        lora_dropout=0.0, bias="none", init_lora_weights=True)
    with torch.random.fork_rng(devices=[]):  # peft's own init draws from the global generator: keep it untouched
        if hasattr(unet, "add_adapter"):  # diffusers' PeftAdapterMixin (UNet2DConditionModel): it also records
            unet.add_adapter(config, adapter_name=ADAPTER)  # the adapter as diffusers' own loaders do
        else:  # UNet2DModel has no mixin: peft directly
            inject_adapter_in_model(config, unet, adapter_name=ADAPTER)
    g = torch.Generator(device="cpu").manual_seed(seed)
    with torch.no_grad():
        for name, layer in _lora_layers(unet):
            a, b = layer.lora_A[ADAPTER].weight, layer.lora_B[ADAPTER].weight
            draw = torch.empty(a.shape, dtype=torch.float32)
            nn.init.kaiming_uniform_(draw, a=math.sqrt(5), generator=g)
            a.copy_(draw)
            b.zero_()
    for name, p in net.named_parameters():
        p.requires_grad_(any(m in f".{name}" for m in _LORA_MARKERS))
    return net


def trainable_parameters(net: nn.Module) -> list[nn.Parameter]:
    """The parameters the optimizer gets: the adapters after apply_lora, everything otherwise."""
    return [p for p in net.parameters() if p.requires_grad]


# --- checkpoints ---------------------------------------------------------------------------------------------------

def _is_lora_key(key: str) -> bool:
    return any(m in f".{key}" for m in _LORA_MARKERS)


def lora_state(net: nn.Module) -> dict[str, torch.Tensor]:
    """The adapters' weights only, under `net`'s own state-dict keys (e.g. `unet.down_blocks.0.attentions.0.
    transformer_blocks.0.attn1.to_q.lora_A.default.weight`): the same in every process that applied the same spec
    to the same UNet. What `generator.safetensors` holds in a LoRA run. Sharded (FSDP) tensors are gathered (a
    collective: every rank calls it)."""
    _unet_of(net)
    state = {k: full_tensor(v) for k, v in net.state_dict().items() if _is_lora_key(k)}
    if not state:
        raise ValueError("the network has no LoRA adapters (apply_lora first)")
    return state


def load_lora_state(net: nn.Module, tensors: dict[str, torch.Tensor], where: str = "LoRA state") -> None:
    """Load `lora_state` tensors into a network that had apply_lora with the same spec; strict: a missing or
    unexpected key or a wrong shape is a ValueError naming `where` (e.g. the file). The base weights are not
    touched."""
    current = {k: v for k, v in net.state_dict().items() if _is_lora_key(k)}
    if not current:
        raise ValueError(f"{where}: the network has no LoRA adapters (apply_lora first)")
    missing, unexpected = sorted(set(current) - set(tensors)), sorted(set(tensors) - set(current))
    if missing or unexpected:
        parts = [f"{len(missing)} missing (e.g. {missing[0]})" if missing else "",
                 f"{len(unexpected)} unexpected (e.g. {unexpected[0]})" if unexpected else ""]
        raise ValueError(f"{where}: LoRA keys do not fit the network: {', '.join(p for p in parts if p)}; was it "
                         f"saved with another lora spec or UNet?")
    for k, v in tensors.items():
        if tuple(v.shape) != tuple(current[k].shape):
            raise ValueError(f"{where}: {k} has shape {list(v.shape)}, the network's is {list(current[k].shape)} "
                             f"(another lora rank?)")
    net.load_state_dict({k: like(v, current[k]) for k, v in tensors.items()}, strict=False)


# --- export --------------------------------------------------------------------------------------------------------

def _scale(layer: nn.Module) -> float:
    return float(layer.scaling[ADAPTER])


def diffusers_lora_state(net: nn.Module) -> dict[str, torch.Tensor]:
    """The adapters as a diffusers pipeline LoRA file holds them: peft's key layout (get_peft_model_state_dict:
    `<module>.lora_A.weight` / `.lora_B.weight`, no adapter name) under the pipeline's `unet.` prefix, which is what
    diffusers' own UNet `save_lora_adapter` writes and `load_lora_weights` reads without any key conversion. The
    scale alpha / rank is folded into lora_B, so a loader that assumes alpha = rank (diffusers does when the file
    has no adapter metadata, as do most other tools) computes the same network."""
    from peft import get_peft_model_state_dict

    unet = _unet_of(net)
    layers = _lora_layers(unet)
    if not layers:
        raise ValueError("the network has no LoRA adapters (apply_lora first)")
    state = get_peft_model_state_dict(unet, adapter_name=ADAPTER)
    out: dict[str, torch.Tensor] = {}
    for name, layer in layers:
        a, b = state.pop(f"{name}.lora_A.weight"), state.pop(f"{name}.lora_B.weight")
        out[f"unet.{name}.lora_A.weight"] = full_tensor(a).detach().to("cpu", torch.float32).contiguous()
        out[f"unet.{name}.lora_B.weight"] = (full_tensor(b).detach().to("cpu", torch.float32) * _scale(layer)).contiguous()
    if state:
        raise ValueError(f"unexpected adapter tensors {sorted(state)[:3]} (only LoRA A/B weights are exported)")
    return out


def export_lora(net: nn.Module, path: str | Path, spec: LoraSpec | None = None) -> Path:
    """Write the adapters as a safetensors file that a diffusers StableDiffusionPipeline / StableDiffusionXLPipeline
    loads with `pipeline.load_lora_weights(path.parent, weight_name=path.name)` (see diffusers_lora_state). float32;
    the spec, when given, goes into the file's metadata (`dmd2.lora`) for the record. A UNet2DModel (DDPMPipeline)
    has no LoRA loader in diffusers: export its merged UNet (merge_lora) instead."""
    from safetensors.torch import save_file

    unet = _unet_of(net)
    if not hasattr(unet, "load_lora_adapter"):
        raise ValueError(f"a {type(unet).__name__} cannot load LoRA files in diffusers; export the merged UNet "
                         f"(merge_lora) instead")
    tensors = diffusers_lora_state(net)
    metadata = {"format": "pt"}
    if spec is not None:
        metadata["dmd2.lora"] = json.dumps({**spec.to_dict(), "scale_folded_into_lora_B": True})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


@torch.no_grad()
def merge_lora(net: nn.Module) -> nn.Module:
    """A new plain diffusers UNet (same class and config as `net.unet`, no peft layers, in eval mode, on the same
    device and dtype) whose weights are the base weights plus each adapter's `scale * B @ A`; `net` is unchanged
    and can go on training. Its state dict has the stock diffusers keys, for `save_pretrained` into a pipeline
    folder."""
    unet = _unet_of(net)
    layers = _lora_layers(unet)
    if not layers:
        raise ValueError("the network has no LoRA adapters (apply_lora first)")
    state = {k.replace(".base_layer.", "."): full_tensor(v).detach().clone()
             for k, v in unet.state_dict().items() if not _is_lora_key(k)}
    for name, layer in layers:
        key = f"{name}.weight"
        state[key] = (state[key].float() + full_tensor(layer.get_delta_weight(ADAPTER)).float()).to(state[key].dtype)
    first = next(iter(state.values()))
    plain = type(unet).from_config(unet.config)
    try:
        plain.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(f"merged weights do not fit a fresh {type(unet).__name__}: {e}") from None
    plain.to(device=first.device)
    if first.dtype != next(plain.parameters()).dtype:
        plain.to(dtype=first.dtype)
    return plain.eval()


def count_parameters(params: Iterable[nn.Parameter]) -> int:
    return sum(p.numel() for p in params)


def expected_lora_parameters(unet: nn.Module, spec: LoraSpec) -> int:
    """rank * (in * kh * kw + out) over the modules the spec adapts (Linear: kh = kw = 1), computed from the base
    UNet without adapting it: what apply_lora will make trainable."""
    total = 0
    for name, m in unet.named_modules():
        if name and any(_matches(name, t) for t in spec.target_modules) and isinstance(m, _ADAPTABLE):
            if isinstance(m, nn.Linear):
                total += spec.rank * (m.in_features + m.out_features)
            else:
                kh, kw = m.kernel_size
                total += spec.rank * (m.in_channels * kh * kw + m.out_channels)
    return total
