"""Where a role's work runs (docs/recipe.md "Placement", docs/protocol.md §1): devices, precision, gradient
checkpointing, TF32, and the replicas of a data-parallel role.

A replicated role runs as `world` worker processes, ranks of one torch.distributed process group (gloo on CPU,
NCCL on CUDA) that the coordinator sets up the way torchrun would (MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE in
each worker's environment). Every rank gets the same op with the same arguments (the whole batch's size and
seed); it draws the whole batch's random numbers and keeps its own rows (`Shard`), so N ranks with batch B/N see
exactly the numbers one process with batch B would. Gradients are averaged over the group with one all-reduce
before clipping; that is the reduction DistributedDataParallel performs, done explicitly because the fake score
runs two forward passes (denoising and discriminator) into one backward, which DDP's hooks do not allow.
"""
from __future__ import annotations

import functools
import os
import sys
from dataclasses import dataclass
from typing import Any, Iterable

import torch

RANK_ENV = "RANK"
WORLD_ENV = "WORLD_SIZE"


def device_for(name: str, where: str = "recipe device") -> torch.device:
    """`name` as a torch.device, checked against what this interpreter's torch can do."""
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"{where} {name!r}, but torch {torch.__version__} in {sys.executable} has no CUDA "
                               f"(set device: cpu, or point DMD2_PYTHON at a CUDA build of torch)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise RuntimeError(f"{where} {name!r}, but only {torch.cuda.device_count()} CUDA device(s) are visible")
    return device


def available_devices() -> list[str]:
    """What this process can place work on: "cpu", then "cuda:0".. in index order."""
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return ["cpu", *(f"cuda:{i}" for i in range(n))]


def cuda_names() -> list[str]:
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return [torch.cuda.get_device_name(i) for i in range(n)]


def set_tf32(enabled: bool) -> None:
    """TF32 for CUDA matmuls and convolutions (process-wide: the recipe's top-level `tf32`)."""
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled


# --- precision and memory ----------------------------------------------------------------------------------------

def _to_float32(out: Any) -> Any:
    if isinstance(out, torch.Tensor):
        return out.float() if out.is_floating_point() else out
    if isinstance(out, tuple):
        return tuple(_to_float32(o) for o in out)
    return out


def apply_precision(net: torch.nn.Module, device: torch.device, precision: str) -> torch.nn.Module:
    """With "bf16", `net`'s forward and `features` run under bf16 autocast and return float32: weights, optimizer
    state and everything outside the network stay float32 (the losses, the DMD gradient, the schedule's math).
    "fp32" leaves `net` as it is."""
    if precision == "fp32":
        return net
    if precision != "bf16":
        raise ValueError(f"unknown precision {precision!r} (expected fp32 or bf16)")
    for name in ("forward", "features"):
        method = getattr(net, name, None)
        if method is None:
            continue

        def wrapped(*args: Any, _method: Any = method, **kwargs: Any) -> Any:
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
                return _to_float32(_method(*args, **kwargs))

        functools.update_wrapper(wrapped, method)
        setattr(net, name, wrapped)  # an instance attribute: state_dict and the class are untouched
    return net


def enable_gradient_checkpointing(net: torch.nn.Module) -> None:
    """Recompute activations in the backward pass instead of keeping them (less memory, about a third more
    compute). The built-in TinyUNet and diffusers' UNets both support it."""
    inner = getattr(net, "unet", None)
    if inner is not None and hasattr(inner, "enable_gradient_checkpointing"):
        inner.enable_gradient_checkpointing()
    elif hasattr(net, "gradient_checkpointing"):
        net.gradient_checkpointing = True
    else:
        raise ValueError(f"{type(net).__name__} does not support gradient checkpointing")


# --- replicas ------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Shard:
    """This process's part of a replicated role: rank `rank` of `world`, owning rows [rank * n, (rank + 1) * n)
    of every batch of n * world rows."""

    rank: int
    world: int

    def rows(self, local: int) -> slice:
        return slice(self.rank * local, (self.rank + 1) * local)

    def local_batch(self, batch: int, where: str) -> int:
        if batch % self.world:
            raise ValueError(f"{where}: batch size {batch} does not split over {self.world} replicas")
        return batch // self.world


def shard_from_env(env: dict[str, str] | None = None) -> Shard | None:
    """RANK / WORLD_SIZE as the coordinator (or torchrun) sets them; None for a single process."""
    env = os.environ if env is None else env
    world = int(env.get(WORLD_ENV, "1") or "1")
    if world <= 1:
        return None
    rank = int(env.get(RANK_ENV, "-1"))
    if not 0 <= rank < world:
        raise RuntimeError(f"{RANK_ENV}={env.get(RANK_ENV)!r} is not a rank of {WORLD_ENV}={world}")
    return Shard(rank, world)


def init_process_group(shard: Shard, backend: str, device: torch.device, timeout_s: float = 120.0) -> None:
    """Join the role's process group (MASTER_ADDR/MASTER_PORT from the environment; blocks until every rank is
    there)."""
    import datetime

    import torch.distributed as dist

    if dist.is_initialized():
        return
    if backend == "nccl":
        if device.type != "cuda":
            raise RuntimeError(f"backend nccl needs a CUDA device, this rank's is {device}")
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend, rank=shard.rank, world_size=shard.world, init_method="env://",
                            timeout=datetime.timedelta(seconds=timeout_s))


def apply_fsdp(net: torch.nn.Module) -> torch.nn.Module:
    """`roles.<role>.strategy: fsdp`: shard `net`'s parameters, gradients and optimizer state over the role's
    process group with PyTorch's FSDP2 (`fully_shard`): each block of the outermost module lists (a UNet's down and
    up blocks) is a unit, the rest the root's. `features` (the discriminator's backbone pass) is registered as a
    forward method so that it gathers the parameters too. Gradients come out reduced and averaged over the group."""
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    def wrap_blocks(module: torch.nn.Module) -> None:
        for child in module.children():
            if isinstance(child, torch.nn.ModuleList):
                for block in child:
                    if any(True for _ in block.parameters()):
                        fully_shard(block)
            else:
                wrap_blocks(child)

    wrap_blocks(net)
    fully_shard(net)
    if hasattr(net, "features"):
        register_fsdp_forward_method(net, "features")
    return net


def is_sharded(p: torch.Tensor) -> bool:
    return hasattr(p, "full_tensor") and hasattr(p, "placements")


def all_reduce_gradients(params: Iterable[torch.nn.Parameter], shard: Shard | None) -> None:
    """Average the gradients of `params` over the group (one flat all-reduce; absent gradients count as zero).
    Sharded (FSDP) parameters are skipped: FSDP has reduced theirs already."""
    if shard is None:
        return
    import torch.distributed as dist

    params = [p for p in params if not is_sharded(p)]
    if not params:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= shard.world
    offset = 0
    for p in params:  # back into the gradients in place (a new one only where there was none)
        n = p.numel()
        averaged = flat[offset:offset + n].view_as(p)
        if p.grad is None:
            p.grad = averaged.clone()
        else:
            p.grad.copy_(averaged)
        offset += n


def all_reduce_sum(value: torch.Tensor, shard: Shard | None) -> torch.Tensor:
    """The sum of `value` over the group (a copy; `value` itself when not replicated)."""
    if shard is None:
        return value
    import torch.distributed as dist

    out = value.detach().clone()
    dist.all_reduce(out)
    return out


# --- random draws of a whole batch, this rank's rows ---------------------------------------------------------------

def randn_rows(shape: tuple[int, ...], g: torch.Generator, device: torch.device, shard: Shard | None) -> torch.Tensor:
    """Standard normal of `shape` (this rank's rows): draws the whole batch's (shape[0] * world rows) so the
    numbers match one process drawing the whole batch."""
    if shard is None:
        return torch.randn(shape, generator=g, dtype=torch.float32).to(device)
    full = torch.randn((shape[0] * shard.world, *shape[1:]), generator=g, dtype=torch.float32)
    return full[shard.rows(shape[0])].to(device)


def randint_rows(low: int, high: int, n: int, g: torch.Generator, device: torch.device, shard: Shard | None) -> torch.Tensor:
    if shard is None:
        return torch.randint(low, high, (n,), generator=g, dtype=torch.long).to(device)
    full = torch.randint(low, high, (n * shard.world,), generator=g, dtype=torch.long)
    return full[shard.rows(n)].to(device)
