"""Sana folders (`SanaPipeline`): SanaTransformer2DModel, the Gemma text encoder (Gemma2Model), the DC-AE VAE
(AutoencoderDC) and a flow-matching scheduler (docs/adapters.md, docs/method.md "Flow-matching teachers").

Conditioning, as `SanaPipeline.encode_prompt` builds it (clean_caption False):
- each prompt lower-cased and stripped, prefixed with the pipeline's default complex human instruction (its lines
  joined by newlines), tokenized right-padded to `num_chi_prompt_tokens + max_sequence_length - 2` (300 as in the
  pipeline); Gemma's last hidden state with the tokenizer's attention mask; then the rows `select_index` = the
  first token and the last `max_sequence_length - 1`: `encoder_hidden_states` (B, 300, Gemma width) and the
  attention mask (B, 300);
- unconditional: the empty prompt, without the instruction, padded to 300 (the pipeline's negative prompt ""), used
  with CFG.
The attention mask rides in `Conditioning.text_embeds` (float 0/1, (B, max_sequence_length)): Sana has no pooled
embedding, so the slot (and the `cond_pooled` step tensor, docs/protocol.md) carries what the transformer's
`encoder_attention_mask` takes instead.

Latents: `z * scaling_factor` of the DC-AE's latent (no shift, no posterior: the encoder is deterministic), and
back before decoding. The network predicts the velocity v = eps - x0; the model timestep is
sigma * T * timestep_scale (the transformer config's; 1 for Sana).

Schedule: a FlowMatchEulerDiscreteScheduler config, or the DPMSolverMultistepScheduler config Sana's folders ship
(`prediction_type` flow_prediction, `use_flow_sigmas`), read as the flow schedule with `shift = flow_shift` (the
same training sigmas). The teacher's Euler sampler (flow_sampling.py) runs FlowMatchEulerDiscreteScheduler's grid
built with that shift: what the stock pipeline gives with that scheduler swapped in (a DPM-Solver sample differs).

`SanaTransformerNet` puts the transformer behind the roles' network interface; its `features` are the image tokens
after block `feature_block` (default: the middle block, index blocks // 2 - 1), reshaped to the latent grid.
"""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Sequence

import torch
from diffusers import AutoencoderDC, FlowMatchEulerDiscreteScheduler, SanaPipeline, SanaTransformer2DModel
from torch import nn
from transformers import AutoTokenizer, Gemma2Model

from ..flow_matching import FlowConfigError, FlowMatchSchedule, is_flow_config
from .base import (SCHEDULER_CONFIG, AdapterError, Conditioning, TeacherAdapter, check_components, family_step_tensors,
                   load_component, prompt_list, read_json_object)
from .registry import register

COMPONENTS = (
    ("transformer", "config.json", "the SanaTransformer2DModel"),
    ("text_encoder", "config.json", "the Gemma text encoder"),
    ("tokenizer", "", "the Gemma tokenizer"),
    ("vae", "config.json", "the AutoencoderDC"),
    ("scheduler", "scheduler_config.json", "the flow-matching scheduler"),
)
MAX_SEQUENCE_LENGTH = 300  # the pipeline's default
# the pipeline's own default instruction (SanaPipeline.__call__'s complex_human_instruction), read, not copied
COMPLEX_HUMAN_INSTRUCTION: list[str] = list(
    inspect.signature(SanaPipeline.__call__).parameters["complex_human_instruction"].default)


def flow_config(raw: dict[str, Any], path: Path) -> dict[str, Any]:
    """A FlowMatchEulerDiscreteScheduler config for `raw`: itself, or the DPM-Solver flow config Sana folders ship
    translated (num_train_timesteps, shift = flow_shift). Anything else is one AdapterError line."""
    if is_flow_config(raw):
        return raw
    if raw.get("_class_name") == "DPMSolverMultistepScheduler" and raw.get("prediction_type") == "flow_prediction":
        if not raw.get("use_flow_sigmas"):
            raise AdapterError(f"{path}: prediction_type flow_prediction without use_flow_sigmas true is not "
                               f"supported (set use_flow_sigmas to true)")
        return {"_class_name": "FlowMatchEulerDiscreteScheduler",
                "num_train_timesteps": raw.get("num_train_timesteps", 1000), "shift": raw.get("flow_shift", 1.0)}
    raise AdapterError(f"{path}: _class_name {raw.get('_class_name')!r} is not a flow-matching scheduler (a "
                       f"SanaPipeline folder has FlowMatchEulerDiscreteScheduler, or DPMSolverMultistepScheduler "
                       f"with prediction_type flow_prediction)")


def read_sana_scheduler(folder: Path) -> tuple[dict[str, Any], FlowMatchSchedule]:
    """The folder's scheduler as a FlowMatchEulerDiscreteScheduler config, and its flow schedule (static shift)."""
    path = folder / SCHEDULER_CONFIG
    cfg = flow_config(read_json_object(path), path)
    try:
        return cfg, FlowMatchSchedule.from_config(cfg, where=path)
    except FlowConfigError as e:
        raise AdapterError(str(e)) from None


class _BlockReached(Exception):
    """Raised by the feature block's forward hook to stop `features` before the rest of the stack."""


class SanaTransformerNet(nn.Module):
    """A SanaTransformer2DModel behind the roles' network interface (the twin of SD3TransformerNet)."""

    num_classes = None
    null_class = None
    text_conditioned = True
    sdxl = False  # no time ids

    def __init__(self, transformer: nn.Module, schedule: FlowMatchSchedule, feature_block: int | None = None,
                 max_sequence_length: int = MAX_SEQUENCE_LENGTH) -> None:
        super().__init__()
        cfg = transformer.config
        if cfg.in_channels != cfg.out_channels:
            raise ValueError(f"in_channels {cfg.in_channels} differs from out_channels {cfg.out_channels} "
                             f"(a learned-sigma Sana is not supported)")
        if cfg.sample_size % cfg.patch_size:
            raise ValueError(f"sample_size {cfg.sample_size} is not divisible by patch_size {cfg.patch_size}")
        self.transformer = transformer
        self.schedule = schedule
        self.in_channels = int(cfg.in_channels)
        self.image_size = int(cfg.sample_size)  # the latent side
        self.cross_attention_dim = int(cfg.caption_channels)  # the Gemma width of cond_hidden
        self.pooled_dim = int(max_sequence_length)  # cond_pooled carries the text attention mask (B, L)
        self.step_tensors, self.dims = family_step_tensors("sana", dict(cfg))  # what the roles read (families.json)
        self.dims["seq_len"] = int(max_sequence_length)  # cond_hidden's rows and the mask's length
        self.timestep_scale = float(cfg.timestep_scale)
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
            raise TypeError(f"a Sana transformer needs a Conditioning with the text attention mask, got {cond!r:.80}")
        if cond.batch_size != x.shape[0]:
            raise ValueError(f"the conditioning has {cond.batch_size} rows, x has {x.shape[0]}")
        dtype = next(self.transformer.parameters()).dtype
        return {"hidden_states": x.to(dtype),
                "timestep": self.schedule.model_timestep(t, x.device) * self.timestep_scale,
                "encoder_hidden_states": cond.encoder_hidden_states.to(dtype),
                "encoder_attention_mask": cond.text_embeds.to(x.device), "return_dict": False}

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Conditioning | None = None) -> torch.Tensor:
        """The velocity prediction for latents x at timestep indices t."""
        return self.transformer(**self._kwargs(x, t, cond))[0]

    def features(self, x: torch.Tensor, t: torch.Tensor, cond: Conditioning | None = None) -> torch.Tensor:
        """The image tokens after block `feature_block` as (B, inner_dim, H / patch, W / patch), with their graph."""
        captured: list[torch.Tensor] = []

        def stop(module: nn.Module, args: Any, output: Any) -> None:
            captured.append(output)  # SanaTransformerBlock returns the image tokens (B, N, inner_dim)
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
class SanaAdapter(TeacherAdapter):
    family = "sana"
    pipeline_classes = ("SanaPipeline",)
    guidance_kind = "cfg"  # classifier-free guidance with the empty prompt

    def __init__(self, folder: Path, transformer: nn.Module, vae: nn.Module, scheduler_config: dict,
                 schedule: FlowMatchSchedule, device: torch.device, dtype: torch.dtype, tokenizer: Any,
                 text_encoder: Gemma2Model, max_sequence_length: int = MAX_SEQUENCE_LENGTH) -> None:
        # TeacherAdapter reads the VAE's scale factor from block_out_channels; the DC-AE names it encoder_...
        super().__init__(folder, transformer, vae, scheduler_config, device, dtype, schedule=schedule)
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self.max_sequence_length = int(max_sequence_length)
        cfg = transformer.config
        if cfg.caption_channels != text_encoder.config.hidden_size:
            raise AdapterError(f"{self.folder / 'transformer' / 'config.json'}: caption_channels "
                               f"{cfg.caption_channels} differs from the Gemma encoder's hidden_size "
                               f"{text_encoder.config.hidden_size}")
        if cfg.guidance_embeds:
            raise AdapterError(f"{self.folder / 'transformer' / 'config.json'}: guidance_embeds true (Sana-Sprint) "
                               f"is not supported (a SanaPipeline teacher with CFG is)")
        self._empty: Conditioning | None = None

    @property
    def transformer(self) -> nn.Module:
        return self.unet

    # --- loading ---

    @classmethod
    def load(cls, folder: str | Path, device: torch.device | str = "cpu",
             dtype: torch.dtype = torch.float32, unet: nn.Module | None = None) -> "SanaAdapter":
        folder = Path(folder).absolute()
        check_components(folder, cls.pipeline_classes[0], COMPONENTS)
        scheduler_config, schedule = read_sana_scheduler(folder)
        vae_config = read_json_object(folder / "vae" / "config.json")
        transformer = unet if unet is not None else cls.load_denoiser(folder, device, dtype)
        vae = load_component(AutoencoderDC.from_pretrained, folder, "vae", torch_dtype=cls.vae_dtype(vae_config, dtype))
        tokenizer = load_component(AutoTokenizer.from_pretrained, folder, "tokenizer")
        text_encoder = load_component(Gemma2Model.from_pretrained, folder, "text_encoder", dtype=dtype)
        for m in (transformer, vae, text_encoder):
            m.to(device).eval()
        for m in (vae, text_encoder):
            m.requires_grad_(False)
        return cls(folder, transformer, vae, scheduler_config, schedule, torch.device(device), dtype, tokenizer,
                   text_encoder)

    @classmethod
    def load_denoiser(cls, folder: str | Path, device: torch.device | str = "cpu",
                      dtype: torch.dtype = torch.float32) -> nn.Module:
        transformer = load_component(SanaTransformer2DModel.from_pretrained, Path(folder).absolute(), "transformer",
                                     torch_dtype=dtype)
        return transformer.to(device)

    @classmethod
    def read_schedule(cls, folder: str | Path) -> FlowMatchSchedule:
        return read_sana_scheduler(Path(folder).absolute())[1]

    @classmethod
    def network(cls, denoiser: nn.Module, schedule: Any, **_: Any) -> nn.Module:
        return SanaTransformerNet(denoiser, schedule)

    # --- the transformer ---

    def predict(self, x_t: torch.Tensor, t: int | torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """The transformer's velocity for x_t at timestep indices t (fed sigma(t) * T)."""
        if cond.batch_size != x_t.shape[0]:
            raise ValueError(f"the conditioning has {cond.batch_size} rows, x_t has {x_t.shape[0]}")
        return self.predict_at(x_t, self.schedule.model_timestep(self.timesteps(t, x_t), x_t.device), cond)

    def predict_at(self, x_t: torch.Tensor, timestep: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """The velocity at a scheduler timestep (sigma * T, float, (B,)) given directly, scaled by the
        transformer's timestep_scale as the pipeline does."""
        dtype = self.unet.dtype
        hidden = cond.encoder_hidden_states.to(device=x_t.device, dtype=dtype)
        mask = cond.text_embeds.to(x_t.device)
        return self.unet(x_t.to(dtype), encoder_hidden_states=hidden, encoder_attention_mask=mask,
                         timestep=timestep.to(x_t.device) * float(self.unet.config.timestep_scale),
                         return_dict=False)[0]

    def to_eps(self, out: torch.Tensor, x_t: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
        return self.schedule.velocity_to_eps(out, x_t, self.timesteps(t, x_t))

    # --- text ---

    def _gemma(self, prompts: list[str], instruction: list[str] | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Gemma's last hidden state and the attention mask of the (instruction-prefixed) prompts, right-padded."""
        self.tokenizer.padding_side = "right"
        texts = [p.lower().strip() for p in prompts]
        length = self.max_sequence_length
        if instruction:
            chi = "\n".join(instruction)
            texts = [chi + p for p in texts]
            length = len(self.tokenizer.encode(chi)) + self.max_sequence_length - 2
        tokens = self.tokenizer(texts, padding="max_length", max_length=length, truncation=True,
                                add_special_tokens=True, return_tensors="pt")
        device = self.text_encoder.device
        mask = tokens.attention_mask.to(device)
        hidden = self.text_encoder(tokens.input_ids.to(device), attention_mask=mask)[0]
        return hidden, mask

    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> Conditioning:
        hidden, mask = self._gemma(prompt_list(prompts), COMPLEX_HUMAN_INSTRUCTION)
        select = [0] + list(range(-self.max_sequence_length + 1, 0))  # the first token and the last L - 1
        return Conditioning(hidden[:, select].to(device=self.device, dtype=self.unet.dtype),
                            mask[:, select].to(device=self.device, dtype=torch.float32))

    def uncond(self, batch: int) -> Conditioning:
        if self._empty is None:
            with torch.no_grad():
                hidden, mask = self._gemma([""], None)
            self._empty = Conditioning(hidden.to(device=self.device, dtype=self.unet.dtype),
                                       mask.to(device=self.device, dtype=torch.float32))
        return self._empty.expand(batch)

    # --- sampling (flow_sampling.py) ---

    def euler_sigmas(self, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        """FlowMatchEulerDiscreteScheduler's `set_timesteps(steps)` with the folder's shift (model timesteps, then
        sigmas ending at 0)."""
        sched = FlowMatchEulerDiscreteScheduler.from_config(self.scheduler_config)
        sched.set_timesteps(steps)
        return sched.timesteps.float(), sched.sigmas.float()

    # --- the VAE (DC-AE: scaling_factor, no shift) ---

    def vae_encode(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Images in [-1, 1] -> `z * scaling_factor`, float32 (the DC-AE's encoder is deterministic: `generator`
        draws nothing)."""
        z = self.vae.encode(images.to(device=self.vae.device, dtype=self.vae.dtype)).latent.float()
        return z * float(self.vae.config.scaling_factor)

    def vae_decode(self, latents: torch.Tensor) -> torch.Tensor:
        z = latents.float() / float(self.vae.config.scaling_factor)
        return self.vae.decode(z.to(device=self.vae.device, dtype=self.vae.dtype), return_dict=False)[0].float()

    def modules(self) -> dict[str, nn.Module]:
        return {"transformer": self.unet, "vae": self.vae, "text_encoder": self.text_encoder}
