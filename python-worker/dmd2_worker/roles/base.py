"""The interface between the worker server (server.py) and the roles it hosts.

The server owns sockets, framing, the tensor store and error replies; a role owns networks, optimizers and
the math. See docs/protocol.md §3-§4.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from ..config import Recipe
from ..store import TensorStore  # noqa: F401  (re-exported: part of the role interface)


@dataclass
class WorkerContext:
    """What every role of one worker process shares."""

    worker: str                      # the worker's name, e.g. "fake_score" or "all"
    recipe: Recipe                   # the parsed resolved recipe (config.py)
    run_dir: Path
    device: torch.device             # the role's device (server.py gives each role its own view of the context)
    roles: dict[str, "Role"] = field(default_factory=dict)  # all roles of this process, by name
    precision: str = "fp32"          # "bf16": network forward passes under bf16 autocast (placement.apply_precision)
    gradient_checkpointing: bool = False
    shard: Any = None                # placement.Shard of a replicated role, None for a single process
    strategy: str = "replicate"      # a replicated role's: "replicate" (all-reduce) or "fsdp" (sharded)

    @property
    def fsdp(self) -> bool:
        return self.shard is not None and self.strategy == "fsdp"

    @property
    def writes_files(self) -> bool:
        """Rank 0 of a replicated role (or the only process) writes checkpoints and samples."""
        return self.shard is None or self.shard.rank == 0



class Role(Protocol):
    name: str

    def setup(self, body: dict[str, Any], ctx: WorkerContext) -> dict[str, Any]:
        """Handle a `setup` request for this role; return the reply body."""

    def run_op(self, op: str, args: dict[str, Any], store: TensorStore, ctx: WorkerContext) -> dict[str, float]:
        """Run one op: read inputs from `store`, write outputs into it, return metrics.
        Raise KeyError-free, descriptive exceptions (they become error replies)."""

    def save(self, directory: Path) -> list[Path]:
        """Write this role's state (docs/protocol.md `save`); return the files written."""

    def restore(self, directory: Path) -> None:
        """Load what `save` wrote."""
