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

OPTIM_FORMAT = 1


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


def save_module(path: str | Path, module: torch.nn.Module) -> Path:
    return save_tensors(path, module.state_dict())


def load_module(path: str | Path, module: torch.nn.Module) -> None:
    """Load weights into `module` strictly (missing or unexpected keys and shape mismatches are errors)."""
    state = load_tensors(path)
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


def save_optimizer(directory: str | Path, role: str, optimizer: torch.optim.Optimizer) -> list[Path]:
    """`<role>.optim.safetensors` (tensors as `state.<param index>.<key>`) and `<role>.optim.json` (the rest)."""
    directory = Path(directory)
    sd = optimizer.state_dict()
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
