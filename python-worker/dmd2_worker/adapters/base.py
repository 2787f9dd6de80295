"""The teacher adapter interface (docs/adapters.md): one class per diffusers pipeline family, all behind
`TeacherAdapter`, so that the roles never look at which text encoders, pooled embeddings or added time ids a
family needs.

An adapter holds the folder's UNet, VAE, text encoder(s) and tokenizer(s) and its noise schedule (a
`NoiseSchedule` built from `scheduler/scheduler_config.json`). What a UNet call needs besides `x_t` and `t` is a
`Conditioning`; `encode_prompts` makes one from text and `uncond` makes the family's unconditional one.

A family is one entry in the family registry (families.json) and one file that defines a `TeacherAdapter` subclass
decorated with `@register` (registry.py imports the module the entry names; docs/adapters.md, "Adding a family").
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping, Sequence

import torch
from torch import nn

from ..conditioning import Conditioning
from ..diffusion import NoiseSchedule
from ..guidance import guided as guided_output
from ..teacher_folder import (TeacherFolderError, check_schedule_values, read_json_object as _read_json_object,
                              variant_only_weights)

MODEL_INDEX = "model_index.json"
SCHEDULER_CONFIG = "scheduler/scheduler_config.json"

# The defaults diffusers' DDPM/DDIM/PNDM/Euler schedulers share, for keys a scheduler_config.json leaves out.
SCHEDULER_DEFAULTS: dict[str, Any] = {"num_train_timesteps": 1000, "beta_schedule": "linear",
                                      "beta_start": 0.0001, "beta_end": 0.02, "prediction_type": "epsilon"}


class AdapterError(TeacherFolderError):
    """A pipeline folder that cannot be used; the message is one line naming the folder (or file) and the problem."""


def one_line(err: BaseException, limit: int = 300) -> str:
    """An exception's message squeezed onto one line (diffusers' and transformers' messages span several)."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --- conditioning ------------------------------------------------------------------------------------------------

# Conditioning lives in conditioning.py (the networks in models/ take it too); re-exported from here.


# --- folder reading ----------------------------------------------------------------------------------------------

def read_json_object(path: Path) -> dict[str, Any]:
    return _read_json_object(path, AdapterError)


def read_scheduler_config(folder: Path) -> dict[str, Any]:
    """scheduler/scheduler_config.json as a dict, the keys the schedule needs filled in with diffusers' defaults
    and checked (what `NoiseSchedule` supports)."""
    path = folder / SCHEDULER_CONFIG
    raw = read_json_object(path)
    cfg = {**SCHEDULER_DEFAULTS, **{k: v for k, v in raw.items() if v is not None or k not in SCHEDULER_DEFAULTS}}
    check_schedule_values(path, cfg, raw, AdapterError)
    return cfg


def schedule_from_config(cfg: dict[str, Any]) -> NoiseSchedule:
    return NoiseSchedule(cfg["num_train_timesteps"], cfg["beta_schedule"], float(cfg["beta_start"]),
                         float(cfg["beta_end"]), cfg["prediction_type"])


def check_components(folder: Path, pipeline: str, components: Sequence[tuple[str, str, str]]) -> None:
    """Each (subfolder, file, what) must be there: one line naming the folder and the first missing part."""
    for sub, file, what in components:
        if not (folder / sub).is_dir():
            need = ", ".join(f"{s}/" for s, _, _ in components)
            raise AdapterError(f"{folder}: missing {sub}/ ({what}); a {pipeline} folder needs {need}")
        if file and not (folder / sub / file).is_file():
            raise AdapterError(f"{folder / sub / file}: missing ({what})")


def load_component(loader: Callable[..., Any], folder: Path, sub: str, **kwargs: Any) -> Any:
    """`loader(folder, subfolder=sub, local_files_only=True, **kwargs)` with any failure as one AdapterError line
    (a folder saved with `variant=`, whose weights the default load cannot find, is said so with the fix)."""
    try:
        return loader(str(folder), subfolder=sub, local_files_only=True, **kwargs)
    except Exception as e:  # diffusers/transformers raise OSError, ValueError, EnvironmentError, KeyError, ...
        name = getattr(loader, "__self__", None)
        name = getattr(name, "__name__", sub)
        variants = variant_only_weights(folder / sub)
        if variants:
            raise AdapterError(f"{folder / sub}: cannot load {name}: only variant weights are there "
                               f"({', '.join(variants)}); dmd2 loads the default files: save the pipeline again "
                               f"without variant= (DiffusionPipeline.from_pretrained(folder, variant=...)"
                               f".save_pretrained(new_folder)) or fetch the non-variant files") from None
        raise AdapterError(f"{folder / sub}: cannot load {name}: {one_line(e)}") from None


def prompt_list(prompts: Sequence[str]) -> list[str]:
    """`encode_prompts`' argument checked: a non-empty list of strings (one string is refused, not split)."""
    if isinstance(prompts, str):
        raise TypeError("encode_prompts takes a list of prompts, not one string")
    prompts = list(prompts)
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise ValueError("encode_prompts needs a non-empty list of strings")
    return prompts


# --- the adapter -------------------------------------------------------------------------------------------------

def family_step_tensors(name: str, cfg: Mapping[str, Any]) -> tuple[tuple[Any, ...], dict[str, int | None]]:
    """A family's conditioning step tensors (families.json) and the dims its backbone config `cfg` sizes: what a
    network wrapper exposes as `step_tensors` / `dims` for roles/text.py conditioning_input."""
    from ..families import family

    fam = family(name)
    return fam.step_tensors, {n: d.from_config(cfg) for n, d in fam.dims.items() if d.config is not None}


class TeacherAdapter(ABC):
    """A diffusers text-to-image pipeline folder behind one interface (docs/adapters.md).

    Subclasses set `family` (the name in the registry; `@register` sets `pipeline_classes`, the model_index.json
    `_class_name`s the registry entry reads) and implement `load`, `encode_prompts` and `uncond`. Everything else is shared.
    """

    family: ClassVar[str]
    pipeline_classes: ClassVar[tuple[str, ...]]

    def __init__(self, folder: Path, unet: nn.Module, vae: nn.Module, scheduler_config: dict[str, Any],
                 device: torch.device, dtype: torch.dtype, schedule: Any = None) -> None:
        self.folder = Path(folder)
        self.unet = unet  # the denoiser: a UNet, or a flow family's transformer (adapters/sd3.py)
        self.vae = vae
        self.scheduler_config = scheduler_config
        # `schedule`: a family's own (flow_matching.FlowMatchSchedule for flow-matching teachers)
        self.schedule = schedule_from_config(scheduler_config) if schedule is None else schedule
        self.device = torch.device(device)
        self.dtype = dtype
        cfg = unet.config
        size = cfg.sample_size
        if isinstance(size, (list, tuple)):
            if len(size) != 2 or size[0] != size[1]:
                raise AdapterError(f"{self.folder / 'unet/config.json'}: sample_size must be square, got {size!r}")
            size = size[0]
        if cfg.in_channels != cfg.out_channels:
            raise AdapterError(f"{self.folder / 'unet/config.json'}: in_channels {cfg.in_channels} differs from "
                               f"out_channels {cfg.out_channels}")
        if vae.config.latent_channels != cfg.in_channels:
            raise AdapterError(f"{self.folder / 'vae/config.json'}: latent_channels {vae.config.latent_channels} "
                               f"differs from the UNet's in_channels {cfg.in_channels}")
        self.latent_shape: tuple[int, int, int] = (int(cfg.in_channels), int(size), int(size))
        # AutoencoderKL names its widths block_out_channels, the DC-AE (Sana) encoder_block_out_channels
        blocks = getattr(vae.config, "block_out_channels", None) or vae.config.encoder_block_out_channels
        self.vae_scale_factor: int = 2 ** (len(blocks) - 1)
        self.image_size: int = int(size) * self.vae_scale_factor

    # --- loading ---

    @classmethod
    @abstractmethod
    def load(cls, folder: str | Path, device: torch.device | str = "cpu",
             dtype: torch.dtype = torch.float32, unet: nn.Module | None = None) -> "TeacherAdapter":
        """Read the folder (checked first: one AdapterError line for what is missing), on `device` in `dtype`.
        `unet`: a UNet already loaded from the folder's unet/ (a role's own copy), used instead of loading another."""

    # --- what the roles load (roles/text.py): the denoiser alone, its schedule, the network around it ---
    # (flow-matching families override all three, adapters/sd3.py)

    @classmethod
    def load_denoiser(cls, folder: str | Path, device: torch.device | str = "cpu",
                      dtype: torch.dtype = torch.float32) -> nn.Module:
        """The folder's backbone alone (the family's backbone class from its subfolder, families.json), on `device`:
        what the generator and fake score train."""
        import diffusers

        from ..families import family

        fam = family(cls.family)
        backbone = getattr(diffusers, fam.backbone_class)
        unet = load_component(backbone.from_pretrained, Path(folder).absolute(), fam.backbone_subfolder, torch_dtype=dtype)
        return unet.to(device)

    @classmethod
    def read_schedule(cls, folder: str | Path) -> Any:
        """The folder's noise schedule (the roles' `schedule`)."""
        return schedule_from_config(read_scheduler_config(Path(folder)))

    @classmethod
    def network(cls, denoiser: nn.Module, schedule: Any, **_: Any) -> nn.Module:
        """The denoiser behind the roles' network interface (`net(x, t, cond)`, `features`). Keywords a family may
        use: `folder`, `guidance` (the scale a guidance-embedded transformer embeds, adapters/flux.py)."""
        from ..models.unet2d_condition import UNet2DConditionNet

        return UNet2DConditionNet(denoiser)

    @staticmethod
    def vae_dtype(vae_config: dict[str, Any], dtype: torch.dtype) -> torch.dtype:
        """The VAE runs in float32 when asked for float16 and its config says `force_upcast` (diffusers' default:
        the SD and SDXL VAEs overflow in float16)."""
        return torch.float32 if dtype == torch.float16 and vae_config.get("force_upcast", True) else dtype

    # --- text ---

    @abstractmethod
    def encode_prompts(self, prompts: Sequence[str]) -> Conditioning:
        """One Conditioning row per prompt, on the adapter's device in its dtype."""

    @abstractmethod
    def uncond(self, batch: int) -> Conditioning:
        """The family's unconditional Conditioning (classifier-free guidance), `batch` rows."""

    # --- the UNet and the schedule ---

    @property
    def prediction_type(self) -> str:
        return self.schedule.prediction_type

    @property
    def num_train_timesteps(self) -> int:
        return self.schedule.num_train_timesteps

    def timesteps(self, t: int | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """`t` (an int, a 0-d or a (B,) tensor) as an int64 (B,) tensor on `like`'s device."""
        t = torch.as_tensor(t, dtype=torch.long)
        if t.dim() == 0:
            t = t.expand(like.shape[0])
        return t.to(like.device)

    def predict(self, x_t: torch.Tensor, t: int | torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """The UNet's raw output (epsilon, v or x0 by `prediction_type`) for `x_t` at timesteps `t`."""
        if cond.batch_size != x_t.shape[0]:
            raise ValueError(f"the conditioning has {cond.batch_size} rows, x_t has {x_t.shape[0]}")
        dtype = self.unet.dtype
        cond = cond.to(device=x_t.device, dtype=dtype)
        return self.unet(x_t.to(dtype), self.timesteps(t, x_t), **cond.unet_kwargs(), return_dict=False)[0]

    def to_x0(self, out: torch.Tensor, x_t: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
        """A raw output as an x0 estimate (float32), by the folder's prediction type."""
        return self.schedule.to_x0(out, x_t, self.timesteps(t, x_t))

    def to_eps(self, out: torch.Tensor, x_t: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
        """A raw output as a noise estimate (float32): epsilon as is, `sqrt(a) v + sqrt(1-a) x_t` for v, and
        `(x_t - sqrt(a) x0) / sqrt(1-a)` for sample (the formulas diffusers' DDIM step uses)."""
        t = self.timesteps(t, x_t)
        kind = self.prediction_type
        dtype = torch.float64 if out.dtype == torch.float64 else torch.float32
        out, x_t = out.to(dtype), x_t.to(dtype)
        if kind == "epsilon":
            return out
        sqrt_a, sqrt_1ma = self.schedule.coefficients(t, out)
        if kind == "v_prediction":
            return sqrt_a * out + sqrt_1ma * x_t
        return (x_t - sqrt_a * out) / sqrt_1ma

    def predict_x0(self, x_t: torch.Tensor, t: int | torch.Tensor, cond: Conditioning) -> torch.Tensor:
        return self.to_x0(self.predict(x_t, t, cond), x_t, t)

    # --- the VAE ---

    def _latent_stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        cfg = self.vae.config
        mean, std = getattr(cfg, "latents_mean", None), getattr(cfg, "latents_std", None)
        if mean is None or std is None:
            return None
        shape = (1, len(mean), 1, 1)
        return (torch.tensor(mean).view(shape).to(like.device, like.dtype),
                torch.tensor(std).view(shape).to(like.device, like.dtype))

    def vae_encode(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Images in [-1, 1], (B, 3, image_size, image_size) -> the UNet's latents (scaled by the VAE's
        scaling_factor, and normalised by latents_mean/std where the config has them), float32. The posterior's
        mean, or a sample drawn with `generator` when given."""
        vae_dtype = self.vae.dtype
        dist = self.vae.encode(images.to(device=self.vae.device, dtype=vae_dtype)).latent_dist
        z = (dist.mean if generator is None else dist.sample(generator)).float()
        sf = float(self.vae.config.scaling_factor)
        stats = self._latent_stats(z)
        return z * sf if stats is None else (z - stats[0]) * sf / stats[1]

    def vae_decode(self, latents: torch.Tensor) -> torch.Tensor:
        """The inverse of `vae_encode`'s scaling, then the decoder: images (float32), about [-1, 1], not clamped."""
        z = latents.float()
        sf = float(self.vae.config.scaling_factor)
        stats = self._latent_stats(z)
        z = z / sf if stats is None else z * stats[1] / sf + stats[0]
        return self.vae.decode(z.to(device=self.vae.device, dtype=self.vae.dtype), return_dict=False)[0].float()

    # --- misc ---

    def modules(self) -> dict[str, nn.Module]:
        """Every torch module the adapter holds, by its subfolder name."""
        return {"unet": self.unet, "vae": self.vae}

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(folder={str(self.folder)!r}, prediction_type={self.prediction_type!r}, "
                f"latent_shape={self.latent_shape}, device={self.device}, dtype={self.dtype})")


def guided(adapter: TeacherAdapter, x_t: torch.Tensor, t: int | torch.Tensor, cond: Conditioning,
           uncond: Conditioning | None, scale: float) -> torch.Tensor:
    """Classifier-free guidance on the adapter's raw output (guidance.guided: `out_u + scale (out_c - out_u)`, one
    batched UNet call). `scale == 1` or no `uncond`: the conditional output."""
    return guided_output(adapter.predict, x_t, adapter.timesteps(t, x_t), cond, uncond, scale)
