"""The per-worker tensor store of docs/protocol.md §4: name -> tensor, plus the step the current ops belong to."""
from __future__ import annotations

import torch


class TensorStore(dict[str, torch.Tensor]):
    """name -> tensor; the server clears it when an op of another step arrives and sets `step` before each op."""

    step: int | None = None
