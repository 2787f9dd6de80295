"""The per-worker tensor store of docs/protocol.md §4: name -> tensor, plus the step the current ops belong to."""
from __future__ import annotations

import torch


class TensorStore(dict[str, torch.Tensor]):
    """name -> tensor; the server clears it when an op of another step arrives and sets `step` before each op."""

    step: int | None = None


def need(store: TensorStore, name: str, where: str) -> torch.Tensor:
    """The tensor `name` of the store, or one ValueError line naming the op (`where`) and what the store has."""
    if name not in store:
        have = ", ".join(map(repr, sorted(store))) or "nothing"
        raise ValueError(
            f"{where}: input tensor {name!r} is not in the tensor store (it has: {have}); attach it to the request "
            f"or run the op that produces it earlier in the same step"
        )
    value = store[name]
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"{where}: store entry {name!r} is a {type(value).__name__}, not a tensor")
    return value
