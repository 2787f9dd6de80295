"""Teacher adapters for diffusers text-to-image pipeline folders (docs/adapters.md).

    adapter = load_adapter(folder, device="cuda", dtype=torch.float16)   # family from model_index.json
    cond = adapter.encode_prompts(["a cat"]); uncond = adapter.uncond(1)
    out = guided(adapter, x_t, t, cond, uncond, scale)                   # raw UNet output, guided
    x0 = adapter.to_x0(out, x_t, t)
    latents = ddim_sample(adapter, ["a cat"], steps=25, guidance_scale=7.5, seed=0)

Importing this package does not import transformers; `family_of` and `load_adapter` import the family modules
(and so transformers) on first use.
"""
from .base import AdapterError, Conditioning, TeacherAdapter, guided
from .registry import UNET2D_FAMILY, families, family_of, load_adapter, register
from .sampling import ddim_sample, ddim_schedule, initial_noise

__all__ = ["AdapterError", "Conditioning", "TeacherAdapter", "guided", "UNET2D_FAMILY", "families", "family_of",
           "load_adapter", "register", "ddim_sample", "ddim_schedule", "initial_noise"]
