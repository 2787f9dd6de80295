"""Stable Diffusion 3 / 3.5 folders (`StableDiffusion3Pipeline`): SD3Transformer2DModel, three text encoders
(CLIP-L and CLIP-G, both CLIPTextModelWithProjection, and T5), a 16-channel AutoencoderKL with a shift factor,
and a flow-matching scheduler (docs/adapters.md, docs/method.md "Flow-matching teachers").

Conditioning, as `StableDiffusion3Pipeline.encode_prompt` builds it (clip_skip None):
- each CLIP encoder: the penultimate hidden state (`hidden_states[-2]`) of the prompt padded to its tokenizer's
  `model_max_length` (77), and its pooled, projected output (`text_embeds`);
- `encoder_hidden_states` (B, 77 + max_sequence_length, T5 width): the two CLIP hidden states concatenated on the
  last axis, zero-padded to the T5 width, then concatenated with T5's last hidden state (the prompt padded to
  `max_sequence_length`, 256 as in the pipeline) on the sequence axis;
- `text_embeds` (B, P): the two pooled outputs concatenated (`pooled_projections`, P = 768 + 1280 for SD3).
Unconditional: the empty prompt's encoding (the pipeline's negative prompt default ""), used with CFG.

Latents: `(z - shift_factor) * scaling_factor` of the VAE's posterior (and back before decoding). The network
predicts the velocity v = eps - x0; the model timestep is sigma * T (`FlowMatchSchedule.model_timestep`).

`SD3TransformerNet` puts the transformer behind the roles' network interface: `net(x, t, cond)` with integer
timestep indices, `features` for the discriminator head (the image tokens after block `feature_block`, reshaped to
the latent grid of patches). Its state dict keys are `transformer.<diffusers SD3Transformer2DModel key>`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
from torch import nn
from torch.nn import functional as F
from transformers import CLIPTextModelWithProjection, CLIPTokenizer, T5EncoderModel, T5TokenizerFast

from ..flow_matching import FlowConfigError, FlowMatchSchedule, is_flow_config
from .base import (SCHEDULER_CONFIG, AdapterError, Conditioning, TeacherAdapter, check_components, family_step_tensors,
                   load_component, prompt_list, read_json_object)
from .registry import register

COMPONENTS = (
    ("transformer", "config.json", "the SD3Transformer2DModel"),
    ("text_encoder", "config.json", "the CLIP-L text encoder, with projection"),
    ("text_encoder_2", "config.json", "the CLIP-G text encoder, with projection"),
    ("text_encoder_3", "config.json", "the T5 text encoder"),
    ("tokenizer", "", "the CLIP-L tokenizer"),
    ("tokenizer_2", "", "the CLIP-G tokenizer"),
    ("tokenizer_3", "", "the T5 tokenizer"),
    ("vae", "config.json", "the AutoencoderKL"),
    ("scheduler", "scheduler_config.json", "the flow-matching scheduler"),
)
MAX_SEQUENCE_LENGTH = 256  # the pipeline's default T5 length


def read_flow_scheduler(folder: Path) -> tuple[dict[str, Any], FlowMatchSchedule]:
    """scheduler/scheduler_config.json, which must be a flow-matching one, and its schedule (static shift)."""
    path = folder / SCHEDULER_CONFIG
    raw = read_json_object(path)
    if not is_flow_config(raw):
        raise AdapterError(f"{path}: _class_name {raw.get('_class_name')!r} is not a flow-matching scheduler "
                           f"(a StableDiffusion3Pipeline folder has FlowMatchEulerDiscreteScheduler)")
    try:
        return raw, FlowMatchSchedule.from_config(raw, where=path)
    except FlowConfigError as e:
        raise AdapterError(str(e)) from None


def shifted_vae_encode(vae: nn.Module, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Images in [-1, 1] -> latents `(z - shift_factor) * scaling_factor`, float32 (the posterior mean, or a sample
    drawn with `generator`): the SD3 and Flux VAEs."""
    dist = vae.encode(images.to(device=vae.device, dtype=vae.dtype)).latent_dist
    z = (dist.mean if generator is None else dist.sample(generator)).float()
    return (z - float(vae.config.shift_factor or 0.0)) * float(vae.config.scaling_factor)


def shifted_vae_decode(vae: nn.Module, latents: torch.Tensor) -> torch.Tensor:
    """The inverse scaling `z = latents / scaling_factor + shift_factor`, then the decoder (float32, not clamped)."""
    z = latents.float() / float(vae.config.scaling_factor) + float(vae.config.shift_factor or 0.0)
    return vae.decode(z.to(device=vae.device, dtype=vae.dtype), return_dict=False)[0].float()


class _BlockReached(Exception):
    """Raised by the feature block's forward hook to stop `features` before the rest of the stack."""


class SD3TransformerNet(nn.Module):
    """An SD3Transformer2DModel behind the roles' network interface (the twin of UNet2DConditionNet)."""

    num_classes = None
    null_class = None
    text_conditioned = True

    def __init__(self, transformer: nn.Module, schedule: FlowMatchSchedule, feature_block: int | None = None) -> None:
        super().__init__()
        cfg = transformer.config
        if cfg.in_channels != cfg.out_channels:
            raise ValueError(f"in_channels {cfg.in_channels} differs from out_channels {cfg.out_channels}")
        if cfg.sample_size % cfg.patch_size:
            raise ValueError(f"sample_size {cfg.sample_size} is not divisible by patch_size {cfg.patch_size}")
        self.transformer = transformer
        self.schedule = schedule
        self.in_channels = int(cfg.in_channels)
        self.image_size = int(cfg.sample_size)  # the latent side
        self.cross_attention_dim = int(cfg.joint_attention_dim)  # the width of cond_hidden
        self.pooled_dim = int(cfg.pooled_projection_dim)
        self.step_tensors, self.dims = family_step_tensors("sd3", dict(cfg))  # what the roles read (families.json)
        blocks = len(transformer.transformer_blocks)
        # the discriminator reads the image tokens after the middle block (docs/method.md)
        self.feature_block = max(blocks // 2 - 1, 0) if feature_block is None else int(feature_block)
        if not 0 <= self.feature_block < blocks:
            raise ValueError(f"feature_block {self.feature_block} outside [0, {blocks})")
        self.feature_channels = int(cfg.num_attention_heads * cfg.attention_head_dim)
        self.feature_size = self.image_size // int(cfg.patch_size)

    @property
    def unet(self) -> nn.Module:
        """The denoiser (placement.enable_gradient_checkpointing and other callers look for `net.unet`)."""
        return self.transformer

    def _kwargs(self, x: torch.Tensor, t: torch.Tensor, cond: Any) -> dict[str, Any]:
        if not isinstance(cond, Conditioning) or cond.text_embeds is None:
            raise TypeError(f"an SD3 transformer needs a Conditioning with pooled embeddings, got {cond!r:.80}")
        if cond.batch_size != x.shape[0]:
            raise ValueError(f"the conditioning has {cond.batch_size} rows, x has {x.shape[0]}")
        dtype = next(self.transformer.parameters()).dtype
        return {"hidden_states": x, "timestep": self.schedule.model_timestep(t, x.device),
                "encoder_hidden_states": cond.encoder_hidden_states.to(dtype),
                "pooled_projections": cond.text_embeds.to(dtype), "return_dict": False}

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Conditioning | None = None) -> torch.Tensor:
        """The velocity prediction for latents x at timestep indices t."""
        return self.transformer(**self._kwargs(x, t, cond))[0]

    def features(self, x: torch.Tensor, t: torch.Tensor, cond: Conditioning | None = None) -> torch.Tensor:
        """The image tokens after block `feature_block` as (B, inner_dim, H / patch, W / patch), with their graph."""
        captured: list[torch.Tensor] = []

        def stop(module: nn.Module, args: Any, output: Any) -> None:
            captured.append(output[1])  # JointTransformerBlock returns (encoder_hidden_states, hidden_states)
            raise _BlockReached

        kwargs = self._kwargs(x, t, cond)
        handle = self.transformer.transformer_blocks[self.feature_block].register_forward_hook(stop)
        try:
            self.transformer(**kwargs)
        except _BlockReached:
            pass
        finally:
            handle.remove()
        tokens = captured[0]
        s = self.feature_size
        return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], s, s)


@register
class SD3Adapter(TeacherAdapter):
    family = "sd3"
    pipeline_classes = ("StableDiffusion3Pipeline",)

    def __init__(self, folder: Path, transformer: nn.Module, vae: nn.Module, scheduler_config: dict,
                 schedule: FlowMatchSchedule, device: torch.device, dtype: torch.dtype,
                 tokenizers: tuple[CLIPTokenizer, CLIPTokenizer, Any],
                 text_encoders: tuple[CLIPTextModelWithProjection, CLIPTextModelWithProjection, T5EncoderModel],
                 max_sequence_length: int = MAX_SEQUENCE_LENGTH) -> None:
        super().__init__(folder, transformer, vae, scheduler_config, device, dtype, schedule=schedule)
        self.tokenizers = tokenizers
        self.text_encoders = text_encoders
        self.max_sequence_length = int(max_sequence_length)
        cfg = transformer.config
        config = self.folder / "transformer" / "config.json"
        clip_width = sum(int(te.config.hidden_size) for te in text_encoders[:2])
        t5_width = int(text_encoders[2].config.d_model)
        if cfg.joint_attention_dim != t5_width:
            raise AdapterError(f"{config}: joint_attention_dim {cfg.joint_attention_dim} differs from the T5 "
                               f"encoder's d_model {t5_width}")
        if clip_width > t5_width:
            raise AdapterError(f"{self.folder}: the CLIP hidden sizes added up ({clip_width}) exceed the T5 width "
                               f"{t5_width}: the pipeline would crop them")
        pooled = sum(int(te.config.projection_dim) for te in text_encoders[:2])
        if cfg.pooled_projection_dim != pooled:
            raise AdapterError(f"{config}: pooled_projection_dim {cfg.pooled_projection_dim} differs from the CLIP "
                               f"projection dims added up ({pooled})")
        lengths = {int(t.model_max_length) for t in tokenizers[:2]}
        if len(lengths) != 1:
            raise AdapterError(f"{self.folder}: tokenizer/ and tokenizer_2/ differ in model_max_length ({lengths})")
        self.clip_length = lengths.pop()
        self._empty: Conditioning | None = None

    @property
    def transformer(self) -> nn.Module:
        return self.unet

    # --- loading ---

    @classmethod
    def load(cls, folder: str | Path, device: torch.device | str = "cpu",
             dtype: torch.dtype = torch.float32, unet: nn.Module | None = None) -> "SD3Adapter":
        folder = Path(folder).absolute()
        check_components(folder, cls.pipeline_classes[0], COMPONENTS)
        scheduler_config, schedule = read_flow_scheduler(folder)
        vae_config = read_json_object(folder / "vae" / "config.json")
        transformer = unet if unet is not None else cls.load_denoiser(folder, device, dtype)
        vae = load_component(AutoencoderKL.from_pretrained, folder, "vae", torch_dtype=cls.vae_dtype(vae_config, dtype))
        tokenizers = (load_component(CLIPTokenizer.from_pretrained, folder, "tokenizer"),
                      load_component(CLIPTokenizer.from_pretrained, folder, "tokenizer_2"),
                      load_component(T5TokenizerFast.from_pretrained, folder, "tokenizer_3"))
        text_encoders = (
            load_component(CLIPTextModelWithProjection.from_pretrained, folder, "text_encoder", dtype=dtype),
            load_component(CLIPTextModelWithProjection.from_pretrained, folder, "text_encoder_2", dtype=dtype),
            load_component(T5EncoderModel.from_pretrained, folder, "text_encoder_3", dtype=dtype))
        for m in (transformer, vae, *text_encoders):
            m.to(device).eval()
        for m in (vae, *text_encoders):
            m.requires_grad_(False)
        return cls(folder, transformer, vae, scheduler_config, schedule, torch.device(device), dtype, tokenizers,
                   text_encoders)

    @classmethod
    def load_denoiser(cls, folder: str | Path, device: torch.device | str = "cpu",
                      dtype: torch.dtype = torch.float32) -> nn.Module:
        transformer = load_component(SD3Transformer2DModel.from_pretrained, Path(folder).absolute(), "transformer",
                                     torch_dtype=dtype)
        return transformer.to(device)

    @classmethod
    def read_schedule(cls, folder: str | Path) -> FlowMatchSchedule:
        return read_flow_scheduler(Path(folder).absolute())[1]

    @classmethod
    def network(cls, denoiser: nn.Module, schedule: Any, **_: Any) -> nn.Module:
        return SD3TransformerNet(denoiser, schedule)

    # --- the transformer ---

    def predict(self, x_t: torch.Tensor, t: int | torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """The transformer's velocity for x_t at timestep indices t (fed sigma(t) * T)."""
        if cond.batch_size != x_t.shape[0]:
            raise ValueError(f"the conditioning has {cond.batch_size} rows, x_t has {x_t.shape[0]}")
        return self.predict_at(x_t, self.schedule.model_timestep(self.timesteps(t, x_t), x_t.device), cond)

    def predict_at(self, x_t: torch.Tensor, timestep: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """The velocity at a model timestep (sigma * T, float, (B,)) given directly: what the pipeline's sampler
        feeds at its inference sigmas, which need not lie on the training grid."""
        dtype = self.unet.dtype
        cond = cond.to(device=x_t.device, dtype=dtype)
        return self.unet(hidden_states=x_t.to(dtype), timestep=timestep.to(x_t.device),
                         encoder_hidden_states=cond.encoder_hidden_states, pooled_projections=cond.text_embeds,
                         return_dict=False)[0]

    def to_eps(self, out: torch.Tensor, x_t: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
        return self.schedule.velocity_to_eps(out, x_t, self.timesteps(t, x_t))

    # --- text ---

    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> Conditioning:
        prompts = prompt_list(prompts)
        hidden, pooled = [], []
        for tokenizer, encoder in zip(self.tokenizers[:2], self.text_encoders[:2]):
            ids = tokenizer(prompts, padding="max_length", max_length=self.clip_length, truncation=True,
                            return_tensors="pt").input_ids
            out = encoder(ids.to(encoder.device), output_hidden_states=True)
            hidden.append(out.hidden_states[-2])
            pooled.append(out[0])  # text_embeds (B, projection_dim)
        t5_ids = self.tokenizers[2](prompts, padding="max_length", max_length=self.max_sequence_length,
                                    truncation=True, add_special_tokens=True, return_tensors="pt").input_ids
        t5 = self.text_encoders[2](t5_ids.to(self.text_encoders[2].device))[0]
        clip = torch.cat(hidden, dim=-1).to(t5.dtype)
        clip = F.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
        dtype = self.unet.dtype
        return Conditioning(torch.cat([clip.to(t5.device), t5], dim=-2).to(device=self.device, dtype=dtype),
                            torch.cat(pooled, dim=-1).to(device=self.device, dtype=dtype))

    def uncond(self, batch: int) -> Conditioning:
        if self._empty is None:
            self._empty = self.encode_prompts([""])
        return self._empty.expand(batch)

    # --- sampling (flow_sampling.py) ---

    guidance_kind = "cfg"  # classifier-free guidance with the empty prompt

    def euler_sigmas(self, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The pipeline's inference grid: `set_timesteps(steps)` (model timesteps, then sigmas ending at 0)."""
        sched = FlowMatchEulerDiscreteScheduler.from_config(self.scheduler_config)
        sched.set_timesteps(steps)
        return sched.timesteps.float(), sched.sigmas.float()

    # --- the VAE ---

    def vae_encode(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return shifted_vae_encode(self.vae, images, generator)

    def vae_decode(self, latents: torch.Tensor) -> torch.Tensor:
        return shifted_vae_decode(self.vae, latents)

    def modules(self) -> dict[str, nn.Module]:
        return {"transformer": self.unet, "vae": self.vae, "text_encoder": self.text_encoders[0],
                "text_encoder_2": self.text_encoders[1], "text_encoder_3": self.text_encoders[2]}
