"""Flux.1 folders (`FluxPipeline`, dev and schnell): FluxTransformer2DModel on packed 2x2 latent patches, a CLIP
text encoder (pooled) and T5, a 16-channel AutoencoderKL with a shift factor, and a flow-matching scheduler with
resolution-dependent (dynamic) shifting (docs/method.md "Flow-matching teachers").

Conditioning, as `FluxPipeline.encode_prompt` builds it:
- `encoder_hidden_states` (B, max_sequence_length, T5 width): T5's last hidden state, the prompt padded to
  `max_sequence_length` (512, the pipeline's default);
- `text_embeds` (B, CLIP width): the CLIP text model's `pooler_output` (the prompt padded to 77);
- the text ids are zeros (L, 3); the image ids are (0, row, column) of each 2x2 patch of the latent grid.

Latents stay unpacked, (B, 16, H, W), everywhere outside the transformer call: `predict` packs them into
(B, H/2 * W/2, 64) tokens and unpacks the velocity. The transformer takes sigma itself as its timestep (the
pipeline feeds `t / 1000`; the model multiplies by 1000 inside), and `mu` of the dynamic shift comes from the
image token count H/2 * W/2.

Guidance: Flux.1-dev (`guidance_embeds: true`) is guidance-distilled: no classifier-free guidance, the guidance
scale goes in through its guidance embedding (`guidance_kind` "embedded"); Flux.1-schnell has no guidance
embedding and takes none ("none"). There is no unconditional input.

`FluxTransformerNet` puts the transformer behind the roles' network interface: unpacked latents and integer
timestep indices in, and for a guidance-embedded transformer the guidance scale it embeds (every role of a Flux.1-dev
run embeds `dmd.real_guidance_scale`: the teacher, and the generator and fake score that start from it; no CFG).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
from torch import nn
from transformers import CLIPTextModel, CLIPTokenizer, T5EncoderModel, T5TokenizerFast

from ..flow_matching import FlowConfigError, FlowMatchSchedule, is_flow_config
from .base import (SCHEDULER_CONFIG, AdapterError, Conditioning, TeacherAdapter, check_components, family_step_tensors,
                   load_component, prompt_list, read_json_object)
from .registry import register
from .sd3 import shifted_vae_decode, shifted_vae_encode

COMPONENTS = (
    ("transformer", "config.json", "the FluxTransformer2DModel"),
    ("text_encoder", "config.json", "the CLIP text encoder"),
    ("text_encoder_2", "config.json", "the T5 text encoder"),
    ("tokenizer", "", "the CLIP tokenizer"),
    ("tokenizer_2", "", "the T5 tokenizer"),
    ("vae", "config.json", "the AutoencoderKL"),
    ("scheduler", "scheduler_config.json", "the flow-matching scheduler"),
)
MAX_SEQUENCE_LENGTH = 512  # the pipeline's default T5 length


def pack(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H/2 * W/2, 4 C): each 2x2 patch one token, channels-major within the token."""
    B, C, H, W = latents.shape
    x = latents.view(B, C, H // 2, 2, W // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(B, (H // 2) * (W // 2), C * 4)


def unpack(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The inverse of `pack` for an (H, W) latent grid."""
    B, _, D = tokens.shape
    x = tokens.view(B, height // 2, width // 2, D // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(B, D // 4, height, width)


def image_ids(height: int, width: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(H/2 * W/2, 3): (0, row, column) of each packed patch."""
    ids = torch.zeros(height // 2, width // 2, 3)
    ids[..., 1] += torch.arange(height // 2)[:, None]
    ids[..., 2] += torch.arange(width // 2)[None, :]
    return ids.reshape(-1, 3).to(device=device, dtype=dtype)


def default_latent_size(vae_config: dict[str, Any]) -> int:
    """The pipeline's default latent side: the VAE's sample_size (1024 px for Flux) over its scale factor."""
    blocks = vae_config.get("block_out_channels", [128, 256, 512, 512])
    size = vae_config.get("sample_size", 1024)
    size = size[0] if isinstance(size, (list, tuple)) else size
    return int(size) // 2 ** (len(blocks) - 1)


class _BlockReached(Exception):
    """Raised by the feature block's forward hook to stop `features` before the rest of the stack."""


class FluxTransformerNet(nn.Module):
    """A FluxTransformer2DModel behind the roles' network interface (unpacked latents, integer timestep indices)."""

    num_classes = None
    null_class = None
    text_conditioned = True

    def __init__(self, transformer: nn.Module, schedule: FlowMatchSchedule, latent_size: int,
                 guidance: float | None = None) -> None:
        super().__init__()
        cfg = transformer.config
        self.transformer = transformer
        self.schedule = schedule
        self.in_channels = int(cfg.in_channels) // 4
        self.image_size = int(latent_size)
        self.cross_attention_dim = int(cfg.joint_attention_dim)
        self.pooled_dim = int(cfg.pooled_projection_dim)
        self.step_tensors, self.dims = family_step_tensors("flux", dict(cfg))  # what the roles read (families.json)
        self.guidance_embedded = bool(cfg.guidance_embeds)
        self.guidance = guidance  # what `forward` embeds when not given one (guidance-embedded transformers)
        blocks = len(transformer.transformer_blocks)
        self.feature_block = max(blocks // 2 - 1, 0)  # the image tokens after the middle double-stream block
        self.feature_channels = int(cfg.num_attention_heads * cfg.attention_head_dim)
        self.feature_size = self.image_size // 2

    @property
    def unet(self) -> nn.Module:
        return self.transformer

    def _kwargs(self, x: torch.Tensor, t: torch.Tensor, cond: Any, guidance: float | None) -> dict[str, Any]:
        if not isinstance(cond, Conditioning) or cond.text_embeds is None:
            raise TypeError(f"a Flux transformer needs a Conditioning with pooled embeddings, got {cond!r:.80}")
        if cond.batch_size != x.shape[0]:
            raise ValueError(f"the conditioning has {cond.batch_size} rows, x has {x.shape[0]}")
        g = self.guidance if guidance is None else guidance
        if self.guidance_embedded and g is None:
            raise ValueError("this Flux transformer embeds a guidance scale: none was given")
        dtype = next(self.transformer.parameters()).dtype
        B, _, H, W = x.shape
        sigma = self.schedule.model_timestep(t, x.device) / self.schedule.num_train_timesteps
        return {"hidden_states": pack(x), "timestep": sigma,
                "guidance": torch.full((B,), float(g), device=x.device) if self.guidance_embedded else None,
                "pooled_projections": cond.text_embeds.to(dtype), "encoder_hidden_states": cond.encoder_hidden_states.to(dtype),
                "txt_ids": torch.zeros(cond.encoder_hidden_states.shape[1], 3, device=x.device, dtype=dtype),
                "img_ids": image_ids(H, W, x.device, dtype), "return_dict": False}

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Conditioning | None = None,
                guidance: float | None = None) -> torch.Tensor:
        """The velocity for unpacked latents x at timestep indices t (embedding `guidance`, else `self.guidance`)."""
        H, W = x.shape[-2:]
        return unpack(self.transformer(**self._kwargs(x, t, cond, guidance))[0], H, W)

    def features(self, x: torch.Tensor, t: torch.Tensor, cond: Conditioning | None = None) -> torch.Tensor:
        """The image tokens after double-stream block `feature_block`, (B, inner_dim, H / 2, W / 2), with their graph."""
        captured: list[torch.Tensor] = []

        def stop(module: nn.Module, args: Any, output: Any) -> None:
            captured.append(output[1])  # FluxTransformerBlock returns (encoder_hidden_states, hidden_states)
            raise _BlockReached

        kwargs = self._kwargs(x, t, cond, None)
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
class FluxAdapter(TeacherAdapter):
    family = "flux"
    pipeline_classes = ("FluxPipeline",)

    def __init__(self, folder: Path, transformer: nn.Module, vae: nn.Module, scheduler_config: dict,
                 device: torch.device, dtype: torch.dtype, tokenizers: tuple[CLIPTokenizer, Any],
                 text_encoders: tuple[CLIPTextModel, T5EncoderModel], latent_size: int | None = None,
                 max_sequence_length: int = MAX_SEQUENCE_LENGTH) -> None:
        # not TeacherAdapter.__init__: a Flux transformer has no sample_size and takes 4x the latent channels
        self.folder = Path(folder)
        self.unet = transformer
        self.vae = vae
        self.scheduler_config = scheduler_config
        self.device = torch.device(device)
        self.dtype = dtype
        config = self.folder / "transformer" / "config.json"
        cfg = transformer.config
        channels = int(vae.config.latent_channels)
        if latent_size is None:
            latent_size = default_latent_size(dict(vae.config))
        if cfg.in_channels != 4 * channels:
            raise AdapterError(f"{config}: in_channels {cfg.in_channels} is not 4 x the VAE's latent_channels "
                               f"{channels} (2x2 packed patches)")
        if latent_size % 2:
            raise AdapterError(f"{self.folder}: the latent side {latent_size} must be even (2x2 packed patches)")
        self.latent_shape = (channels, int(latent_size), int(latent_size))
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.image_size = int(latent_size) * self.vae_scale_factor
        path = self.folder / SCHEDULER_CONFIG
        try:
            self.schedule = FlowMatchSchedule.from_config(scheduler_config, self.image_seq_len, where=path)
        except FlowConfigError as e:
            raise AdapterError(str(e)) from None
        self.tokenizers = tokenizers
        self.text_encoders = text_encoders
        self.max_sequence_length = int(max_sequence_length)
        self.guidance_kind = "embedded" if cfg.guidance_embeds else "none"
        if cfg.joint_attention_dim != text_encoders[1].config.d_model:
            raise AdapterError(f"{config}: joint_attention_dim {cfg.joint_attention_dim} differs from the T5 "
                               f"encoder's d_model {text_encoders[1].config.d_model}")
        if cfg.pooled_projection_dim != text_encoders[0].config.hidden_size:
            raise AdapterError(f"{config}: pooled_projection_dim {cfg.pooled_projection_dim} differs from the CLIP "
                               f"encoder's hidden_size {text_encoders[0].config.hidden_size}")

    @property
    def transformer(self) -> nn.Module:
        return self.unet

    @property
    def image_seq_len(self) -> int:
        """The image token count, which sets the dynamic shift's mu."""
        return (self.latent_shape[1] // 2) * (self.latent_shape[2] // 2)

    # --- loading ---

    @classmethod
    def load(cls, folder: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
             unet: nn.Module | None = None, latent_size: int | None = None) -> "FluxAdapter":
        folder = Path(folder).absolute()
        check_components(folder, cls.pipeline_classes[0], COMPONENTS)
        raw = read_json_object(folder / SCHEDULER_CONFIG)
        if not is_flow_config(raw):
            raise AdapterError(f"{folder / SCHEDULER_CONFIG}: _class_name {raw.get('_class_name')!r} is not a "
                               f"flow-matching scheduler (a FluxPipeline folder has FlowMatchEulerDiscreteScheduler)")
        vae_config = read_json_object(folder / "vae" / "config.json")
        transformer = unet if unet is not None else cls.load_denoiser(folder, device, dtype)
        vae = load_component(AutoencoderKL.from_pretrained, folder, "vae", torch_dtype=cls.vae_dtype(vae_config, dtype))
        tokenizers = (load_component(CLIPTokenizer.from_pretrained, folder, "tokenizer"),
                      load_component(T5TokenizerFast.from_pretrained, folder, "tokenizer_2"))
        text_encoders = (load_component(CLIPTextModel.from_pretrained, folder, "text_encoder", dtype=dtype),
                         load_component(T5EncoderModel.from_pretrained, folder, "text_encoder_2", dtype=dtype))
        for m in (transformer, vae, *text_encoders):
            m.to(device).eval()
        for m in (vae, *text_encoders):
            m.requires_grad_(False)
        return cls(folder, transformer, vae, raw, torch.device(device), dtype, tokenizers, text_encoders,
                   latent_size=latent_size)

    @classmethod
    def load_denoiser(cls, folder: str | Path, device: torch.device | str = "cpu",
                      dtype: torch.dtype = torch.float32) -> nn.Module:
        transformer = load_component(FluxTransformer2DModel.from_pretrained, Path(folder).absolute(), "transformer",
                                     torch_dtype=dtype)
        return transformer.to(device)

    @classmethod
    def read_schedule(cls, folder: str | Path) -> FlowMatchSchedule:
        """The schedule at the pipeline's default resolution (mu from its image token count)."""
        folder = Path(folder).absolute()
        raw = read_json_object(folder / SCHEDULER_CONFIG)
        side = default_latent_size(read_json_object(folder / "vae" / "config.json"))
        try:
            return FlowMatchSchedule.from_config(raw, (side // 2) ** 2, where=folder / SCHEDULER_CONFIG)
        except FlowConfigError as e:
            raise AdapterError(str(e)) from None

    @classmethod
    def network(cls, denoiser: nn.Module, schedule: Any, folder: str | Path | None = None,
                guidance: float | None = None) -> nn.Module:
        """FluxTransformerNet at the pipeline's default latent side; `guidance`: what it embeds by default."""
        if folder is None:
            raise ValueError("FluxAdapter.network needs the folder (its VAE config sets the latent side)")
        side = default_latent_size(read_json_object(Path(folder) / "vae" / "config.json"))
        return FluxTransformerNet(denoiser, schedule, side, guidance)

    # --- the transformer ---

    def predict(self, x_t: torch.Tensor, t: int | torch.Tensor, cond: Conditioning,
                guidance: float | None = None) -> torch.Tensor:
        """The velocity for unpacked latents x_t at timestep indices t (fed sigma(t)); `guidance` is the embedded
        guidance scale (Flux.1-dev; required there, refused for schnell)."""
        sigma = self.schedule.model_timestep(self.timesteps(t, x_t), x_t.device) / self.num_train_timesteps
        return self._call(x_t, sigma, cond, guidance)

    def predict_at(self, x_t: torch.Tensor, timestep: torch.Tensor, cond: Conditioning,
                   guidance: float | None = None) -> torch.Tensor:
        """The velocity at a model timestep (sigma * T, as the scheduler lists it)."""
        return self._call(x_t, timestep.float() / self.num_train_timesteps, cond, guidance)

    def _call(self, x_t: torch.Tensor, sigma: torch.Tensor, cond: Conditioning, guidance: float | None) -> torch.Tensor:
        if cond.batch_size != x_t.shape[0]:
            raise ValueError(f"the conditioning has {cond.batch_size} rows, x_t has {x_t.shape[0]}")
        if (guidance is None) == (self.guidance_kind == "embedded"):
            raise ValueError(f"{self.folder}: this Flux transformer {'needs' if guidance is None else 'takes no'} an "
                             f"embedded guidance scale (guidance_embeds is {self.guidance_kind == 'embedded'})")
        dtype = self.unet.dtype
        B, _, H, W = x_t.shape
        cond = cond.to(device=x_t.device, dtype=dtype)
        g = None if guidance is None else torch.full((B,), float(guidance), device=x_t.device, dtype=torch.float32)
        out = self.unet(hidden_states=pack(x_t.to(dtype)), timestep=sigma.to(x_t.device, dtype), guidance=g,
                        pooled_projections=cond.text_embeds, encoder_hidden_states=cond.encoder_hidden_states,
                        txt_ids=torch.zeros(cond.encoder_hidden_states.shape[1], 3, device=x_t.device, dtype=dtype),
                        img_ids=image_ids(H, W, x_t.device, dtype), return_dict=False)[0]
        return unpack(out, H, W)

    def to_eps(self, out: torch.Tensor, x_t: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
        return self.schedule.velocity_to_eps(out, x_t, self.timesteps(t, x_t))

    def euler_sigmas(self, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The pipeline's grid: sigmas linspace(1, 1/N, N) shifted with mu, then 0; model timesteps sigma * T."""
        sched = FlowMatchEulerDiscreteScheduler.from_config(self.scheduler_config)
        mu = self.schedule.mu
        sigmas = np.linspace(1.0, 1 / steps, steps)
        if mu is None:
            sched.set_timesteps(sigmas=sigmas)
        else:
            sched.set_timesteps(sigmas=sigmas, mu=mu)
        return sched.timesteps.float(), sched.sigmas.float()

    # --- text ---

    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> Conditioning:
        prompts = prompt_list(prompts)
        clip_tok, t5_tok = self.tokenizers
        clip, t5 = self.text_encoders
        ids = clip_tok(prompts, padding="max_length", max_length=clip_tok.model_max_length, truncation=True,
                       return_tensors="pt").input_ids
        pooled = clip(ids.to(clip.device), output_hidden_states=False).pooler_output
        t5_ids = t5_tok(prompts, padding="max_length", max_length=self.max_sequence_length, truncation=True,
                        return_tensors="pt").input_ids
        hidden = t5(t5_ids.to(t5.device), output_hidden_states=False)[0]
        dtype = self.unet.dtype
        return Conditioning(hidden.to(device=self.device, dtype=dtype), pooled.to(device=self.device, dtype=dtype))

    def uncond(self, batch: int) -> Conditioning:
        raise ValueError(f"{self.folder}: Flux takes no unconditional input (Flux.1-dev's guidance is embedded, "
                         f"schnell has none)")

    # --- the VAE ---

    def vae_encode(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return shifted_vae_encode(self.vae, images, generator)

    def vae_decode(self, latents: torch.Tensor) -> torch.Tensor:
        return shifted_vae_decode(self.vae, latents)

    def modules(self) -> dict[str, nn.Module]:
        return {"transformer": self.unet, "vae": self.vae, "text_encoder": self.text_encoders[0],
                "text_encoder_2": self.text_encoders[1]}
