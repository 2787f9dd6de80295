"""Checkpoint files (docs/protocol.md `save` / `restore`): safetensors for tensors, JSON for the rest.

Never pickle, never torch.load. Every file is written to a temporary name in the same folder, fsynced and
renamed, so a reader sees either the old file or the complete new one.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .storage_faults import storage_faults_named

OPTIM_FORMAT = 1
# the average of the generator's weights (generator.ema_decay > 0) beside its raw generator.safetensors
EMA_FILE = "generator.ema.safetensors"


def _tmp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor]) -> Path:
    """Write `tensors` (name -> tensor) as safetensors, atomically."""
    path = Path(path)
    tmp = _tmp_path(path)
    data = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    try:
        with storage_faults_named(path):  # a full disk: OSError(ENOSPC), not safetensors' own error
            save_file(data, str(tmp))
            _fsync(tmp)
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    return load_file(str(path), device="cpu")


def write_json(path: str | Path, obj: Any) -> Path:
    """Write `obj` as JSON, atomically."""
    path = Path(path)
    tmp = _tmp_path(path)
    try:
        with storage_faults_named(path):
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(obj, f, indent=1, sort_keys=True)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _is_dtensor(value: Any) -> bool:
    return hasattr(value, "full_tensor") and hasattr(value, "placements")


def full_tensor(value: Any) -> Any:
    """A sharded (FSDP) tensor gathered whole; anything else as it is. Gathering is a collective: every rank of the
    group must call it, in the same order."""
    return value.full_tensor() if _is_dtensor(value) else value


def like(full: torch.Tensor, current: Any) -> Any:
    """`full` laid out as `current`: sharded the same way when `current` is a sharded (FSDP) tensor (every rank
    holds the whole tensor, so no communication), else `full` itself."""
    if not _is_dtensor(current):
        return full
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(full.to(current.device), current.device_mesh, current.placements, src_data_rank=None)


def module_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The module's state dict with every tensor whole (see full_tensor)."""
    return {k: full_tensor(v) for k, v in module.state_dict().items()}


def save_module(path: str | Path, module: torch.nn.Module) -> Path:
    return save_tensors(path, module_state(module))


def load_module(path: str | Path, module: torch.nn.Module) -> None:
    """Load weights into `module` strictly (missing or unexpected keys and shape mismatches are errors). A sharded
    (FSDP) module takes the whole tensors of the file and keeps its own shards."""
    state = load_tensors(path)
    current = module.state_dict()
    state = {k: like(v, current[k]) if k in current else v for k, v in state.items()}
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(f"{path}: weights do not fit the network: {e}") from None


# --- optimizer state ---------------------------------------------------------------------------------------------

def _encode(value: Any) -> Any:
    """JSON-encode the non-tensor parts of an optimizer state dict; tuples are tagged so they come back as tuples."""
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v) for v in value]}
    if isinstance(value, list):
        return [_encode(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _encode(v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"optimizer state value of type {type(value).__name__} cannot be saved as JSON")


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"__tuple__"}:
            return tuple(_decode(v) for v in value["__tuple__"])
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


def optimizer_state(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """optimizer.state_dict() with every tensor whole (a collective for a sharded optimizer, see full_tensor)."""
    sd = optimizer.state_dict()
    return {"state": {i: {k: full_tensor(v) for k, v in e.items()} for i, e in sd["state"].items()},
            "param_groups": sd["param_groups"]}


def save_optimizer(directory: str | Path, role: str, optimizer: torch.optim.Optimizer | dict[str, Any]) -> list[Path]:
    """`<role>.optim.safetensors` (tensors as `state.<param index>.<key>`) and `<role>.optim.json` (the rest).
    `optimizer` may be an optimizer_state() already gathered."""
    directory = Path(directory)
    sd = optimizer if isinstance(optimizer, dict) else optimizer_state(optimizer)
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, entry in sd["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{idx}.{key}"] = value
            else:
                scalars.setdefault(str(idx), {})[key] = _encode(value)
    meta = {"format": OPTIM_FORMAT, "param_groups": _encode(sd["param_groups"]), "state": scalars}
    return [
        save_tensors(directory / f"{role}.optim.safetensors", tensors),
        write_json(directory / f"{role}.optim.json", meta),
    ]


def load_optimizer(directory: str | Path, role: str, optimizer: torch.optim.Optimizer) -> None:
    directory = Path(directory)
    tensors = load_tensors(directory / f"{role}.optim.safetensors")
    meta = read_json(directory / f"{role}.optim.json")
    if meta.get("format") != OPTIM_FORMAT:
        raise ValueError(f"{directory / f'{role}.optim.json'}: unsupported format {meta.get('format')!r}")
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        prefix, idx, key = name.split(".", 2)
        if prefix != "state":
            raise ValueError(f"{role}.optim.safetensors: unexpected tensor name {name!r}")
        state.setdefault(int(idx), {})[key] = value
    for idx, entry in meta["state"].items():
        state.setdefault(int(idx), {}).update(_decode(entry))
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for idx, entry in state.items():  # a sharded (FSDP) parameter's moments are sharded like it
        if 0 <= idx < len(params) and _is_dtensor(params[idx]):
            for key, value in entry.items():
                if isinstance(value, torch.Tensor) and tuple(value.shape) == tuple(params[idx].shape):
                    entry[key] = like(value, params[idx])
    sd = {"state": state, "param_groups": _decode(meta["param_groups"])}
    try:
        optimizer.load_state_dict(sd)
    except ValueError as e:
        raise ValueError(f"{role}: optimizer state in {directory} does not fit this optimizer: {e}") from None


# --- file digests ------------------------------------------------------------------------------------------------

def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def describe_files(paths: list[Path]) -> list[dict[str, Any]]:
    """The `save` reply's `files` entries: name, size in bytes and sha256 of each file."""
    return [{"name": Path(p).name, "bytes": Path(p).stat().st_size, "sha256": file_sha256(p)} for p in paths]
