"""What a UNet2DConditionModel call needs besides `x_t` and `t` (the adapters make it, models/unet2d_condition.py
takes it). Its own module so that models/ need not import adapters/ (test/import-cycles.test.ts)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch


@dataclass(frozen=True)
class Conditioning:
    """What a UNet2DConditionModel call needs besides `x_t` and `t`, one row per sample.

    `encoder_hidden_states` (B, L, D): the text encoders' token embeddings (cross-attention input).
    `text_embeds` (B, P) and `time_ids` (B, 6): SDXL's added conditions (`added_cond_kwargs`): the pooled,
    projected embedding of the second text encoder and (original h, w, crop top, left, target h, w).
    """

    encoder_hidden_states: torch.Tensor
    text_embeds: torch.Tensor | None = None
    time_ids: torch.Tensor | None = None

    @property
    def batch_size(self) -> int:
        return int(self.encoder_hidden_states.shape[0])

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> "Conditioning":
        """A Conditioning with `fn` applied to every tensor that is set."""
        return Conditioning(**{f.name: (None if v is None else fn(v))
                               for f in dataclasses.fields(self) for v in [getattr(self, f.name)]})

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "Conditioning":
        return self.map(lambda v: v.to(device=device, dtype=dtype))

    def rows(self, index: torch.Tensor | slice | Sequence[int]) -> "Conditioning":
        """The rows `index` of every tensor (a sub-batch or a permutation)."""
        return self.map(lambda v: v[index])

    def expand(self, batch: int) -> "Conditioning":
        """A one-row Conditioning repeated to `batch` rows."""
        if self.batch_size != 1:
            raise ValueError(f"expand needs a one-row Conditioning, got {self.batch_size} rows")
        return self.map(lambda v: v.expand(batch, *v.shape[1:]).contiguous())

    @staticmethod
    def cat(parts: Sequence["Conditioning"]) -> "Conditioning":
        """Row-wise concatenation; every part must set the same fields."""
        if not parts:
            raise ValueError("Conditioning.cat needs at least one part")
        out: dict[str, torch.Tensor | None] = {}
        for f in dataclasses.fields(Conditioning):
            values = [getattr(p, f.name) for p in parts]
            if all(v is None for v in values):
                out[f.name] = None
            elif any(v is None for v in values):
                raise ValueError(f"Conditioning.cat: {f.name} is set in some parts and not in others")
            else:
                out[f.name] = torch.cat(values)
        return Conditioning(**out)

    def unet_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of `UNet2DConditionModel.forward` this conditioning stands for."""
        kwargs: dict[str, Any] = {"encoder_hidden_states": self.encoder_hidden_states}
        added = {k: v for k, v in (("text_embeds", self.text_embeds), ("time_ids", self.time_ids)) if v is not None}
        if added:
            kwargs["added_cond_kwargs"] = added
        return kwargs
