"""What the roles share: op dispatch (with the fault hook), argument and store checking, network loading."""
from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path
from typing import Any, Callable

import torch

from .faults import check_fault
from .base import TensorStore, WorkerContext
from ..checkpoint import load_module, load_optimizer, module_state, optimizer_state, save_optimizer, save_tensors
from ..config import Recipe
from ..data import build_data_source
from ..diffusion import NoiseSchedule
from ..store import need  # noqa: F401  (re-exported: the roles read their inputs with it)
from ..placement import Shard, apply_fsdp, apply_precision, enable_gradient_checkpointing, randint_rows, randn_rows
from ..teacher_training import load_network
from .text import check_family_fits, check_text_teacher, conditioning_input, is_text_recipe, load_text_unet

OpHandler = Callable[["Args", TensorStore, WorkerContext, "int | None"], dict[str, float]]


def op_step(args: dict[str, Any], store: Any) -> int | None:
    """The training step an op belongs to: `store.step` when the server sets it (TensorStore attribute), else
    `args["step"]`, else None (unknown)."""
    step = getattr(store, "step", None)
    if step is None and isinstance(args, dict):
        step = args.get("step")
    return int(step) if isinstance(step, int) and not isinstance(step, bool) else None


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Args:
    """Typed access to an op's `args`; every problem is a ValueError naming the op and the argument."""

    def __init__(self, args: dict[str, Any], where: str, allowed: set[str]) -> None:
        if not isinstance(args, dict):
            raise ValueError(f"{where}: args must be an object, got {type(args).__name__}")
        unknown = set(args) - allowed - {"step"}
        if unknown:
            raise ValueError(f"{where}: unknown args {sorted(unknown)} (expected {sorted(allowed)})")
        self._args = args
        self.where = where

    def _get(self, name: str) -> Any:
        if name not in self._args:
            raise ValueError(f"{self.where}: missing arg {name!r}")
        return self._args[name]

    def optional(self, name: str) -> Any:
        """An optional arg's raw value (None when absent); the caller checks it."""
        return self._args.get(name)

    def int(self, name: str, minimum: int | None = None) -> int:
        v = self._get(name)
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"{self.where}: arg {name!r} must be an integer, got {v!r}")
        if minimum is not None and v < minimum:
            raise ValueError(f"{self.where}: arg {name!r} must be >= {minimum}, got {v}")
        return v

    def number(self, name: str, minimum: float | None = None) -> float:
        v = self._get(name)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"{self.where}: arg {name!r} must be a finite number, got {v!r}")
        if minimum is not None and v < minimum:
            raise ValueError(f"{self.where}: arg {name!r} must be >= {minimum}, got {v}")
        return float(v)

    def bool(self, name: str) -> bool:
        v = self._get(name)
        if not isinstance(v, bool):
            raise ValueError(f"{self.where}: arg {name!r} must be true or false, got {v!r}")
        return v

    def str(self, name: str) -> str:
        v = self._get(name)
        if not isinstance(v, str) or not v:
            raise ValueError(f"{self.where}: arg {name!r} must be a non-empty string, got {v!r}")
        return v

    def int_list_or_none(self, name: str) -> list[int] | None:
        v = self._get(name)
        if v is None:
            return None
        if not isinstance(v, list) or any(isinstance(i, bool) or not isinstance(i, int) for i in v):
            raise ValueError(f"{self.where}: arg {name!r} must be a list of integers or null, got {v!r}")
        return list(v)


def seeded_generator(seed: int) -> torch.Generator:
    """The op's random source: a CPU generator (docs/protocol.md §4); tensors are moved to the device after."""
    if not 0 <= seed < 2**63:
        raise ValueError(f"seed must be a non-negative 64-bit integer, got {seed}")
    return torch.Generator(device="cpu").manual_seed(seed)


def randn(shape: tuple[int, ...], g: torch.Generator, device: torch.device, shard: Shard | None = None) -> torch.Tensor:
    """Standard normal of `shape`; with `shard`, `shape` is this rank's rows of a batch drawn whole (placement.py)."""
    return randn_rows(shape, g, device, shard)


def randint(low: int, high: int, n: int, g: torch.Generator, device: torch.device, shard: Shard | None = None) -> torch.Tensor:
    """n int64 values uniform in [low, high) (this rank's n of n * world drawn, with `shard`)."""
    return randint_rows(low, high, n, g, device, shard)


def image_input(store: TensorStore, name: str, where: str, image_shape: tuple[int, ...], device: torch.device,
                batch: int | None = None) -> torch.Tensor:
    x = need(store, name, where)
    if x.dtype != torch.float32:
        raise ValueError(f"{where}: {name!r} must be float32, got {str(x.dtype).removeprefix('torch.')}")
    if x.dim() != 1 + len(image_shape) or tuple(x.shape[1:]) != tuple(image_shape):
        raise ValueError(f"{where}: {name!r} must have shape (B, {', '.join(map(str, image_shape))}), got {list(x.shape)}")
    if batch is not None and x.shape[0] != batch:
        raise ValueError(f"{where}: {name!r} has batch size {x.shape[0]}, expected {batch}")
    return x.to(device)


def index_input(store: TensorStore, name: str, where: str, batch: int, low: int, high: int,
                device: torch.device) -> torch.Tensor:
    """An int64 (B,) tensor with values in [low, high)."""
    v = need(store, name, where)
    if v.dtype != torch.int64:
        raise ValueError(f"{where}: {name!r} must be int64, got {str(v.dtype).removeprefix('torch.')}")
    if tuple(v.shape) != (batch,):
        raise ValueError(f"{where}: {name!r} must have shape [{batch}], got {list(v.shape)}")
    if v.numel() and (int(v.min()) < low or int(v.max()) >= high):
        raise ValueError(f"{where}: {name!r} values must lie in [{low}, {high}), got {int(v.min())}..{int(v.max())}")
    return v.to(device)


def cond_input(store: TensorStore, where: str, batch: int, num_classes: int | None,
               device: torch.device) -> torch.Tensor | None:
    """`cond` (class labels, the null class allowed) when the network is conditional; None otherwise."""
    if num_classes is None:
        return None
    return index_input(store, "cond", where, batch, 0, num_classes + 1, device)


def net_cond_input(store: TensorStore, where: str, batch: int, net: Any, device: torch.device) -> Any:
    """What `net` is conditioned on, from the store: a Conditioning built from the text step tensors for a
    text-to-image UNet (roles/text.py), else the class labels `cond` (or None when unconditional)."""
    if getattr(net, "text_conditioned", False):
        return conditioning_input(store, where, batch, net, device)
    return cond_input(store, where, batch, net.num_classes, device)


def param_count(*modules: torch.nn.Module) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


def load_student_network(teacher_dir: Any, ctx: WorkerContext, where: str,
                         unet: torch.nn.Module | None = None, lora: Any = None) -> tuple[torch.nn.Module, NoiseSchedule]:
    """Build a trainable copy of the teacher from `teacher_dir` (generator, fake score) and its schedule. With
    text-to-image data the network is a UNet2DConditionNet around `unet` (the folder's UNet, loaded by the caller)
    or around a UNet loaded here. With `lora` (a lora.LoraSpec) only LoRA adapters on the frozen copy train."""
    if not isinstance(teacher_dir, str) or not teacher_dir:
        raise ValueError(f"{where}: setup needs 'teacher_dir' (the folder the teacher's setup replied with)")
    schedule = None
    if is_text_recipe(ctx.recipe):
        from .text import text_network  # imports diffusers: only for such a teacher

        check_text_teacher(teacher_dir, ctx.recipe)
        # the family's network and schedule (a flow family's transformer and FlowMatchSchedule, adapters/sd3.py)
        # (a guidance-embedded transformer, Flux.1-dev, embeds the teacher's guidance scale in every role)
        net, schedule = text_network(teacher_dir, unet if unet is not None else load_text_unet(teacher_dir, ctx.device),
                                     guidance=ctx.recipe.dmd.real_guidance_scale)
        net = net.to(device=ctx.device, dtype=torch.float32)
    else:
        check_family_fits(ctx.recipe)
        net, config = load_network(Path(teacher_dir), ctx.device)
        check_teacher_fits(config, ctx.recipe, teacher_dir)
    net.requires_grad_(True)
    net.train()
    if lora is not None:
        from ..lora import apply_lora  # imports peft: only for LoRA students

        apply_lora(net, lora, seed=ctx.recipe.seed)  # before checkpointing, FSDP and precision (docs/adapters.md §7)
    if ctx.gradient_checkpointing:
        enable_gradient_checkpointing(net)
    if ctx.fsdp:
        apply_fsdp(net)  # before the optimizer is built: it must see the sharded parameters
    apply_precision(net, ctx.device, ctx.precision)
    return net, schedule if schedule is not None else NoiseSchedule.from_config(ctx.recipe.diffusion)


def check_teacher_fits(config: dict[str, Any], recipe: Recipe, where: Any) -> None:
    """The teacher (its load_network config) has the recipe's diffusion config and the data's classes and shape."""
    want = dataclasses.asdict(recipe.diffusion)
    if config["diffusion"] != want:
        raise ValueError(f"{where}: the teacher's diffusion config {config['diffusion']} differs from the recipe's {want}")
    data = build_data_source(recipe.data, "train")
    if config["num_classes"] != data.num_classes:
        raise ValueError(f"{where}: the teacher has num_classes {config['num_classes']}, the recipe's data "
                         f"({recipe.data.source}) has {data.num_classes}")
    if tuple(config["image_shape"]) != tuple(data.image_shape):
        raise ValueError(f"{where}: the teacher makes images of shape {list(config['image_shape'])}, the recipe's "
                         f"data ({recipe.data.source}) has {list(data.image_shape)}")


def x0_function(net: torch.nn.Module, schedule: NoiseSchedule, clip_sample: bool = False) -> Callable:
    """`G(x, t, c)`: the network converted to an x0 estimate (float32); clamped to [-1, 1] with `clip_sample`
    (generator.clip_sample: a hard clamp, so pixels beyond the range get no gradient)."""
    def G(x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        x0 = schedule.to_x0(net(x, t, cond), x, t)
        return x0.clamp(-1.0, 1.0) if clip_sample else x0
    return G


class RoleBase:
    """Dispatches `run_op` to `op_<name>` methods, after the fault hook and the set-up check."""

    name = ""
    OP_ARGS: dict[str, set[str]] = {}  # op -> allowed args

    def __init__(self) -> None:
        self.ready = False
        self.inject_nan = False  # set per op by the DMD2_FAULT hook (":nan")

    def run_op(self, op: str, args: dict[str, Any], store: TensorStore, ctx: WorkerContext) -> dict[str, float]:
        step = op_step(args, store)
        self.inject_nan = check_fault(self.name, op, step) == "nan"
        if op not in self.OP_ARGS:
            raise ValueError(f"role {self.name!r} has no op {op!r} (its ops: {', '.join(self.OP_ARGS)})")
        where = f"{self.name}.{op}"
        if not self.ready:
            raise RuntimeError(f"{where}: role {self.name!r} is not set up (send 'setup' first)")
        handler: OpHandler = getattr(self, f"op_{op}")
        return handler(Args(args, where, self.OP_ARGS[op]), store, ctx, step)

    def require_ready(self, what: str) -> None:
        if not self.ready:
            raise RuntimeError(f"{self.name}.{what}: role {self.name!r} is not set up")


def network_state(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    """What a checkpoint keeps of a trained network: its LoRA adapters only when it has them (lora.lora_state),
    else its whole state dict. A collective when sharded."""
    from ..lora import has_lora, lora_state

    return lora_state(net) if has_lora(net) else module_state(net)


def load_network_state(path: Path, net: torch.nn.Module) -> None:
    """Load a file `network_state` wrote: adapters into a LoRA network, else the whole state dict (strict)."""
    from ..checkpoint import load_tensors
    from ..lora import has_lora, load_lora_state

    if has_lora(net):
        load_lora_state(net, load_tensors(path), where=str(path))
    else:
        load_module(path, net)


class TrainedNetworkState:
    """save/restore for a role that trains `self.net` with `self.optimizer` (docs/protocol.md `save`):
    `<name>.safetensors` plus `<name>.optim.safetensors` / `<name>.optim.json`. Mixed into RoleBase subclasses."""

    def save(self, directory: Path) -> list[Path]:
        """Every rank of a replicated role calls this (gathering sharded state is a collective); only the one
        with `writes_files` (rank 0) writes."""
        self.require_ready("save")
        directory = Path(directory)
        weights, optim = network_state(self.net), optimizer_state(self.optimizer)
        if not getattr(self, "writes_files", True):
            return []
        return [save_tensors(directory / f"{self.name}.safetensors", weights),
                *save_optimizer(directory, self.name, optim)]

    def restore(self, directory: Path) -> None:
        self.require_ready("restore")
        directory = Path(directory)
        load_network_state(directory / f"{self.name}.safetensors", self.net)
        load_optimizer(directory, self.name, self.optimizer)
