"""Stable Diffusion XL folders (`StableDiffusionXLPipeline`): UNet2DConditionModel with `addition_embed_type
"text_time"`, two CLIP text encoders (CLIPTextModel, CLIPTextModelWithProjection), AutoencoderKL
(docs/adapters.md).

Conditioning, as the pipeline builds it:
- `encoder_hidden_states` (B, 77, 768 + 1280): each encoder's penultimate hidden state (`hidden_states[-2]`, no
  final layer norm) of the prompt padded to its tokenizer's `model_max_length`, concatenated on the last axis;
- `text_embeds` (B, 1280): the second encoder's pooled, projected output (`text_embeds`);
- `time_ids` (B, 6): original (h, w) + crop (top, left) + target (h, w) in pixels, by default
  (S, S, 0, 0, S, S) with S = the UNet's sample_size x the VAE's scale factor (1024 for SDXL base).
Unconditional: zeros for `encoder_hidden_states` and `text_embeds`, the same `time_ids` (the pipeline's
`force_zeros_for_empty_prompt`, true in SDXL base's model_index.json and the DMD2 paper's choice); a folder
whose model_index.json sets it false gets the empty prompt's encoding instead, as its pipeline does.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from torch import nn
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from .base import (MODEL_INDEX, AdapterError, Conditioning, TeacherAdapter, check_components, load_component,
                   prompt_list, read_json_object, read_scheduler_config)
from .registry import register

COMPONENTS = (
    ("unet", "config.json", "the UNet2DConditionModel"),
    ("text_encoder", "config.json", "the first CLIP text encoder"),
    ("text_encoder_2", "config.json", "the second CLIP text encoder, with projection"),
    ("tokenizer", "", "the first CLIP tokenizer"),
    ("tokenizer_2", "", "the second CLIP tokenizer"),
    ("vae", "config.json", "the AutoencoderKL"),
    ("scheduler", "scheduler_config.json", "the noise schedule"),
)
TIME_IDS = 6  # original_size (2) + crops_coords_top_left (2) + target_size (2)

Size = tuple[int, int]


@register
class SDXLAdapter(TeacherAdapter):
    family = "sdxl"

    def __init__(self, folder: Path, unet: nn.Module, vae: nn.Module, scheduler_config: dict, device: torch.device,
                 dtype: torch.dtype, tokenizers: tuple[CLIPTokenizer, CLIPTokenizer],
                 text_encoders: tuple[CLIPTextModel, CLIPTextModelWithProjection],
                 force_zeros_for_empty_prompt: bool = True) -> None:
        super().__init__(folder, unet, vae, scheduler_config, device, dtype)
        self.tokenizers = tokenizers
        self.text_encoders = text_encoders
        self.force_zeros_for_empty_prompt = force_zeros_for_empty_prompt
        unet_config = self.folder / "unet" / "config.json"
        cfg = unet.config
        if cfg.addition_embed_type != "text_time":
            raise AdapterError(f"{unet_config}: addition_embed_type {cfg.addition_embed_type!r} is not an SDXL "
                               f"UNet's ('text_time')")
        hidden = sum(int(te.config.hidden_size) for te in text_encoders)
        if cfg.cross_attention_dim != hidden:
            raise AdapterError(f"{unet_config}: cross_attention_dim {cfg.cross_attention_dim} differs from the text "
                               f"encoders' hidden sizes added up ({hidden})")
        self.pooled_dim = int(text_encoders[1].config.projection_dim)
        expected = int(unet.add_embedding.linear_1.in_features)
        passed = int(cfg.addition_time_embed_dim) * TIME_IDS + self.pooled_dim
        if expected != passed:
            raise AdapterError(f"{unet_config}: the added embedding takes {expected} inputs but addition_time_embed_dim "
                               f"{cfg.addition_time_embed_dim} x {TIME_IDS} + projection_dim {self.pooled_dim} = {passed}")
        lengths = {int(t.model_max_length) for t in tokenizers}
        if len(lengths) != 1:
            raise AdapterError(f"{self.folder}: tokenizer/ and tokenizer_2/ differ in model_max_length ({lengths})")
        self.sequence_length = lengths.pop()
        self.hidden_size = hidden
        self._empty: Conditioning | None = None

    @classmethod
    def load(cls, folder: str | Path, device: torch.device | str = "cpu",
             dtype: torch.dtype = torch.float32, unet: nn.Module | None = None) -> "SDXLAdapter":
        folder = Path(folder).absolute()
        check_components(folder, cls.pipeline_classes[0], COMPONENTS)
        index = read_json_object(folder / MODEL_INDEX)
        scheduler_config = read_scheduler_config(folder)
        vae_config = read_json_object(folder / "vae" / "config.json")
        if unet is None:
            unet = load_component(UNet2DConditionModel.from_pretrained, folder, "unet", torch_dtype=dtype)
        vae = load_component(AutoencoderKL.from_pretrained, folder, "vae", torch_dtype=cls.vae_dtype(vae_config, dtype))
        tokenizers = (load_component(CLIPTokenizer.from_pretrained, folder, "tokenizer"),
                      load_component(CLIPTokenizer.from_pretrained, folder, "tokenizer_2"))
        text_encoders = (load_component(CLIPTextModel.from_pretrained, folder, "text_encoder", dtype=dtype),
                         load_component(CLIPTextModelWithProjection.from_pretrained, folder, "text_encoder_2",
                                        dtype=dtype))
        for m in (unet, vae, *text_encoders):
            m.to(device).eval()
        for m in (vae, *text_encoders):
            m.requires_grad_(False)
        zeros = index.get("force_zeros_for_empty_prompt", True)
        return cls(folder, unet, vae, scheduler_config, torch.device(device), dtype, tokenizers, text_encoders,
                   force_zeros_for_empty_prompt=bool(zeros))

    # --- time ids ---

    def time_ids(self, batch: int, original_size: Size | None = None, crops_coords_top_left: Size = (0, 0),
                 target_size: Size | None = None) -> torch.Tensor:
        """(batch, 6): original (h, w), crop (top, left), target (h, w); sizes default to the image size."""
        default = (self.image_size, self.image_size)
        ids = [*(original_size or default), *crops_coords_top_left, *(target_size or default)]
        if len(ids) != TIME_IDS:
            raise ValueError(f"time ids need 2 numbers each for original_size, crops_coords_top_left, target_size; "
                             f"got {ids}")
        return torch.tensor([ids], dtype=self.unet.dtype, device=self.device).expand(batch, TIME_IDS).contiguous()

    # --- text ---

    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str], original_size: Size | None = None,
                       crops_coords_top_left: Size = (0, 0), target_size: Size | None = None) -> Conditioning:
        prompts = prompt_list(prompts)
        hidden, pooled = [], None
        for tokenizer, encoder in zip(self.tokenizers, self.text_encoders):
            ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                            return_tensors="pt").input_ids
            out = encoder(ids.to(encoder.device), output_hidden_states=True)
            hidden.append(out.hidden_states[-2])
            pooled = out[0]  # CLIPTextModelWithProjection: text_embeds (B, projection_dim); the last encoder's wins
        dtype = self.unet.dtype
        return Conditioning(torch.cat(hidden, dim=-1).to(device=self.device, dtype=dtype),
                            pooled.to(device=self.device, dtype=dtype),
                            self.time_ids(len(prompts), original_size, crops_coords_top_left, target_size))

    def uncond(self, batch: int, original_size: Size | None = None, crops_coords_top_left: Size = (0, 0),
               target_size: Size | None = None) -> Conditioning:
        time_ids = self.time_ids(batch, original_size, crops_coords_top_left, target_size)
        if not self.force_zeros_for_empty_prompt:
            if self._empty is None:
                self._empty = self.encode_prompts([""])
            empty = self._empty.expand(batch)
            return Conditioning(empty.encoder_hidden_states, empty.text_embeds, time_ids)
        dtype = self.unet.dtype
        return Conditioning(
            torch.zeros(batch, self.sequence_length, self.hidden_size, dtype=dtype, device=self.device),
            torch.zeros(batch, self.pooled_dim, dtype=dtype, device=self.device),
            time_ids)

    def modules(self) -> dict[str, nn.Module]:
        return {**super().modules(), "text_encoder": self.text_encoders[0], "text_encoder_2": self.text_encoders[1]}
