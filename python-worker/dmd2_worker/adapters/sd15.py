"""Stable Diffusion 1.x / 2.x folders (`StableDiffusionPipeline`): UNet2DConditionModel, one CLIP text encoder,
AutoencoderKL (docs/adapters.md).

Conditioning: `encoder_hidden_states` = the text encoder's last hidden state (after its final layer norm) of the
prompt tokenized to `tokenizer.model_max_length` (77) with padding; no attention mask unless the text encoder's
config sets `use_attention_mask`. Unconditional: the empty prompt's encoding (what the pipeline uses when no
negative prompt is given).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from torch import nn
from transformers import CLIPTextModel, CLIPTokenizer

from .base import (AdapterError, Conditioning, TeacherAdapter, check_components, load_component,
                   prompt_list, read_json_object, read_scheduler_config)
from .registry import register

COMPONENTS = (
    ("unet", "config.json", "the UNet2DConditionModel"),
    ("text_encoder", "config.json", "the CLIP text encoder"),
    ("tokenizer", "", "the CLIP tokenizer"),
    ("vae", "config.json", "the AutoencoderKL"),
    ("scheduler", "scheduler_config.json", "the noise schedule"),
)


@register
class SD15Adapter(TeacherAdapter):
    family = "sd15"

    def __init__(self, folder: Path, unet: nn.Module, vae: nn.Module, scheduler_config: dict, device: torch.device,
                 dtype: torch.dtype, tokenizer: CLIPTokenizer, text_encoder: CLIPTextModel) -> None:
        super().__init__(folder, unet, vae, scheduler_config, device, dtype)
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        if unet.config.addition_embed_type is not None:
            raise AdapterError(f"{self.folder / 'unet/config.json'}: addition_embed_type "
                               f"{unet.config.addition_embed_type!r} is not a StableDiffusionPipeline UNet's (null)")
        hidden = text_encoder.config.hidden_size
        if unet.config.cross_attention_dim != hidden:
            raise AdapterError(f"{self.folder / 'unet/config.json'}: cross_attention_dim "
                               f"{unet.config.cross_attention_dim} differs from the text encoder's hidden_size {hidden}")
        self._empty: Conditioning | None = None

    @classmethod
    def load(cls, folder: str | Path, device: torch.device | str = "cpu",
             dtype: torch.dtype = torch.float32, unet: nn.Module | None = None) -> "SD15Adapter":
        folder = Path(folder).absolute()
        check_components(folder, cls.pipeline_classes[0], COMPONENTS)
        scheduler_config = read_scheduler_config(folder)
        vae_config = read_json_object(folder / "vae" / "config.json")
        if unet is None:
            unet = load_component(UNet2DConditionModel.from_pretrained, folder, "unet", torch_dtype=dtype)
        vae = load_component(AutoencoderKL.from_pretrained, folder, "vae",
                             torch_dtype=cls.vae_dtype(vae_config, dtype))
        tokenizer = load_component(CLIPTokenizer.from_pretrained, folder, "tokenizer")
        text_encoder = load_component(CLIPTextModel.from_pretrained, folder, "text_encoder", dtype=dtype)
        for m in (unet, vae, text_encoder):
            m.to(device).eval()
        vae.requires_grad_(False)
        text_encoder.requires_grad_(False)
        return cls(folder, unet, vae, scheduler_config, torch.device(device), dtype, tokenizer, text_encoder)

    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> Conditioning:
        prompts = prompt_list(prompts)
        tok = self.tokenizer(prompts, padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt")
        mask = None
        if getattr(self.text_encoder.config, "use_attention_mask", False):
            mask = tok.attention_mask.to(self.text_encoder.device)
        hidden = self.text_encoder(tok.input_ids.to(self.text_encoder.device), attention_mask=mask)[0]
        return Conditioning(hidden.to(device=self.device, dtype=self.unet.dtype))

    def uncond(self, batch: int) -> Conditioning:
        if self._empty is None:
            self._empty = self.encode_prompts([""])
        return self._empty.expand(batch)

    def modules(self) -> dict[str, nn.Module]:
        return {**super().modules(), "text_encoder": self.text_encoder}
