"""dmd2 export of an SDXL student (a tiny SDXL-like pipeline built from configs, its UNet perturbed as a stand-in for
training, written as a generator checkpoint with `unet.<diffusers key>` keys): the stock StableDiffusionXLPipeline
on the export gives dmd2's own student sampling (sampling.sample_generator with the adapter's conditioning: pooled
embeddings and time ids) for the same seed and prompts, at the paper's 4 steps by `num_inference_steps=4` alone and
at 1 step from 399 by `timesteps=[399]`. SD-1.5-like and UNet2DModel students: test_export.py."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import LCMScheduler, StableDiffusionXLPipeline

from conftest import make_tiny_recipe
from dmd2_worker.adapters import load_adapter
from dmd2_worker.diffusion import NoiseSchedule
from dmd2_worker.export import export
from dmd2_worker.models.unet2d_condition import UNet2DConditionNet
from dmd2_worker.roles.common import x0_function
from dmd2_worker.sampling import sample_generator
from export_runs import perturb, write_run
from pipelines import build_sdxl

pytestmark = pytest.mark.usefixtures("one_torch_thread")
PROMPTS = ["a cat", "the dog on a mat"]


def exported_student(tmp_path: Path, folder: Path, student: UNet2DConditionNet, timesteps: list[int]) -> Path:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\n")
    recipe = make_tiny_recipe(tmp_path / f"run-{len(timesteps)}", data__source="prompts",
                              data__prompts={"file": str(prompts), "images": None}, gan__enabled=False,
                              teacher__source="diffusers", teacher__path=str(folder),
                              generator__steps=len(timesteps), generator__timesteps=timesteps,
                              generator__conditioning_timestep=timesteps[0])
    run, checkpoint = write_run(recipe, student)
    out = tmp_path / f"export-{len(timesteps)}"
    result = export({"run_dir": str(run), "checkpoint": str(checkpoint), "out": str(out), "lora": False},
                    lambda m: None)
    assert result["family"] == "sdxl" and result["timesteps"] == timesteps
    assert json.loads((out / "dmd2_student.json").read_text())["timesteps"] == timesteps
    return out


def test_sdxl_student_in_the_stock_pipeline(tmp_path):
    folder = build_sdxl(tmp_path / "sdxl", tmp_path / "work")
    adapter = load_adapter(folder)
    student = UNet2DConditionNet(adapter.unet)
    perturb(student, 0.02, seed=1)
    schedule = NoiseSchedule(1000, "scaled_linear", 0.00085, 0.012, adapter.prediction_type)
    cond = adapter.encode_prompts(PROMPTS)
    C, H, W = adapter.latent_shape
    size = adapter.image_size

    for timesteps, call in [([999, 749, 499, 249], {"num_inference_steps": 4}), ([399], {"timesteps": [399]})]:
        out = exported_student(tmp_path, folder, student, timesteps)
        pipe = StableDiffusionXLPipeline.from_pretrained(out)
        assert isinstance(pipe.scheduler, LCMScheduler)
        with torch.no_grad():
            latents = pipe(PROMPTS, guidance_scale=1.0, output_type="latent", height=size, width=size,
                           generator=torch.Generator().manual_seed(9), **call).images
        assert pipe.scheduler.timesteps.tolist() == timesteps
        g = torch.Generator().manual_seed(9)
        z = torch.randn(len(PROMPTS), C, H, W, generator=g)
        with torch.no_grad():
            ours = sample_generator(x0_function(student, schedule), z, cond, timesteps, schedule, g)
        assert latents.shape == ours.shape
        assert torch.allclose(latents, ours, atol=1e-4), (timesteps, float((latents - ours).abs().max()))
        assert float((ours - z).abs().max()) > 0.1
