"""dmd2 export (dmd2_worker/export.py): the exported student, loaded by stock diffusers code with the exported
LCMScheduler at the student's timesteps, reproduces the project's own student sampling (what `dmd2 sample` runs:
sampling.sample_generator on the generator's x0 function) for the same seed — a UNet2DModel student in diffusers'
documented scheduler loop and an SD-1.5-like student in the stock StableDiffusionPipeline. Also: what the folder
holds, LoRA students (merged for a full export, the adapters alone with lora), and the one-line errors."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from diffusers import LCMScheduler, StableDiffusionPipeline, UNet2DModel

from conftest import make_tiny_recipe
from dmd2_worker.adapters import load_adapter
from dmd2_worker.checkpoint import write_json
from dmd2_worker.config import DiffusionConfig, recipe_to_dict
from dmd2_worker.diffusion import NoiseSchedule
from dmd2_worker.export import ExportError, export
from dmd2_worker.models.unet2d import teacher_unet_config
from dmd2_worker.models.unet2d_condition import UNet2DConditionNet
from dmd2_worker.roles.common import x0_function
from dmd2_worker.sampling import sample_generator
from dmd2_worker.teacher_folder import write_teacher_folder
from dmd2_worker.teacher_training import load_network
from export_runs import perturb, write_run
from pipelines import build_sd15

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_unet2d_student_in_the_stock_scheduler_loop(tmp_path):
    torch.manual_seed(0)
    diffusion = DiffusionConfig(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                                beta_end=0.012, prediction_type="epsilon")
    cfg = teacher_unet_config(image_shape=(1, 8, 8), block_out_channels=[8, 16], layers_per_block=1,
                              norm_num_groups=8, num_classes=3)
    teacher = write_teacher_folder(tmp_path / "teacher", UNet2DModel(**cfg), diffusion, 3, {}, {})
    recipe = make_tiny_recipe(tmp_path / "run", teacher__source="diffusers", teacher__path=str(teacher),
                              generator__steps=4, generator__timesteps=[599, 449, 299, 149],
                              generator__conditioning_timestep=599)
    student, _ = load_network(teacher)
    perturb(student, 0.02, seed=1)
    run, checkpoint = write_run(recipe, student, step=4, ema=True)
    out = tmp_path / "export"
    result = export({"run_dir": str(run), "checkpoint": str(checkpoint), "out": str(out), "lora": False}, print)
    assert result["timesteps"] == [599, 449, 299, 149] and result["ema"] is True
    assert {"unet/config.json", "scheduler/scheduler_config.json", "model_index.json", "README.md",
            "dmd2_student.json"} <= set(result["files"])
    assert json.loads((out / "model_index.json").read_text())["scheduler"] == ["diffusers", "LCMScheduler"]
    assert json.loads((teacher / "model_index.json").read_text())["scheduler"] == ["diffusers", "DDPMScheduler"]
    assert "[599, 449, 299, 149]" in (out / "README.md").read_text()
    assert not list(tmp_path.glob(".export.partial-*"))

    # the stock diffusers loop, as the model card writes it
    unet = UNet2DModel.from_pretrained(out, subfolder="unet")
    scheduler = LCMScheduler.from_pretrained(out, subfolder="scheduler")
    scheduler.set_timesteps(timesteps=result["timesteps"])
    labels = torch.arange(6) % 3
    g = torch.Generator().manual_seed(7)
    x = torch.randn(6, 1, 8, 8, generator=g)
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.step(unet(x, t, class_labels=labels).sample, t, x, generator=g).prev_sample
    # dmd2's own sampler on the same weights and seed
    g = torch.Generator().manual_seed(7)
    z = torch.randn(6, 1, 8, 8, generator=g)
    with torch.no_grad():
        ours = sample_generator(x0_function(student, NoiseSchedule.from_config(diffusion)), z, labels,
                                [599, 449, 299, 149], NoiseSchedule.from_config(diffusion), g)
    assert torch.allclose(x, ours, atol=1e-5), float((x - ours).abs().max())
    assert float((ours - z).abs().max()) > 0.1  # it sampled something


def test_sd15_student_in_the_stock_pipeline(tmp_path):
    folder = build_sd15(tmp_path / "sd15", tmp_path / "work")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\n")
    recipe = make_tiny_recipe(tmp_path / "run", data__source="prompts",
                              data__prompts={"file": str(prompts), "images": None}, gan__enabled=False,
                              teacher__source="diffusers", teacher__path=str(folder))
    adapter = load_adapter(folder)
    student = UNet2DConditionNet(adapter.unet)
    perturb(student, 0.02, seed=1)
    run, checkpoint = write_run(recipe, student, step=4)
    out = tmp_path / "export"
    result = export({"run_dir": str(run), "checkpoint": str(checkpoint), "out": str(out), "lora": False}, print)
    timesteps = result["timesteps"]
    assert timesteps == list(recipe.generator.timesteps)

    pipe = StableDiffusionPipeline.from_pretrained(out, safety_checker=None, requires_safety_checker=False)
    assert isinstance(pipe.scheduler, LCMScheduler)
    with torch.no_grad():
        latents = pipe(["a cat", "the dog"], timesteps=timesteps, guidance_scale=1.0, output_type="latent",
                       generator=torch.Generator().manual_seed(3), height=16, width=16).images
    schedule = NoiseSchedule.from_config(recipe.diffusion)
    g = torch.Generator().manual_seed(3)
    z = torch.randn(2, 4, 8, 8, generator=g)
    with torch.no_grad():
        ours = sample_generator(x0_function(student, schedule), z, adapter.encode_prompts(["a cat", "the dog"]),
                                timesteps, schedule, g)
    assert latents.shape == ours.shape
    assert torch.allclose(latents, ours, atol=1e-4), float((latents - ours).abs().max())
    # the teacher's folder is untouched and the export's other components are the teacher's
    assert (folder / "scheduler" / "scheduler_config.json").read_text() != (out / "scheduler" / "scheduler_config.json").read_text()
    assert (out / "vae" / "diffusion_pytorch_model.safetensors").read_bytes() == \
        (folder / "vae" / "diffusion_pytorch_model.safetensors").read_bytes()


def test_lora_student_full_and_adapter_exports_and_errors(tmp_path):
    from dmd2_worker.lora import LORA_WEIGHT_NAME, apply_lora
    from dmd2_worker.config import lora_spec

    folder = build_sd15(tmp_path / "sd15", tmp_path / "work")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\n")
    lora = {"rank": 2, "alpha": 4, "target_modules": ["to_q", "to_v"]}
    recipe = make_tiny_recipe(tmp_path / "run", data__source="prompts",
                              data__prompts={"file": str(prompts), "images": None}, gan__enabled=False,
                              teacher__source="diffusers", teacher__path=str(folder), generator__lora=lora)
    student = UNet2DConditionNet(load_adapter(folder).unet)
    apply_lora(student, lora_spec(recipe), seed=recipe.seed)
    with torch.no_grad():
        for n, p in student.named_parameters():
            if ".lora_B." in n:
                p.normal_(0, 0.05)
    run, checkpoint = write_run(recipe, student, step=4)
    spec = {"run_dir": str(run), "checkpoint": str(checkpoint), "lora": True}
    only = export({**spec, "out": str(tmp_path / "lora")}, print)
    assert sorted(only["files"]) == sorted(["README.md", LORA_WEIGHT_NAME, "dmd2_student.json"])
    full = export({**spec, "lora": False, "out": str(tmp_path / "full")}, print)
    assert "unet/config.json" in full["files"]
    # the full export's UNet is the LoRA student with the adapters merged in; the base pipeline + the LoRA file too
    x, t = torch.randn(1, 4, 8, 8), torch.tensor([500])
    cond = load_adapter(folder).encode_prompts(["a cat"])
    with torch.no_grad():
        want = student(x, t, cond)
        merged = StableDiffusionPipeline.from_pretrained(tmp_path / "full", safety_checker=None,
                                                         requires_safety_checker=False).unet
        assert torch.allclose(merged(x, t, **cond.unet_kwargs()).sample, want, atol=1e-5)
        base = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
        base.load_lora_weights(tmp_path / "lora", weight_name=LORA_WEIGHT_NAME)
        assert torch.allclose(base.unet(x, t, **cond.unet_kwargs()).sample, want, atol=1e-5)

    # --lora on a run that trained the whole network; a teacher folder that went away
    plain = dataclasses.replace(recipe, run_dir=str(tmp_path / "run2"),
                                generator=dataclasses.replace(recipe.generator, lora=type(recipe.generator.lora)()))
    run2, checkpoint2 = write_run(plain, UNet2DConditionNet(load_adapter(folder).unet), step=4)
    with pytest.raises(ExportError, match=r"^--lora: .*run2 trained the whole network"):
        export({"run_dir": str(run2), "checkpoint": str(checkpoint2), "out": str(tmp_path / "x"), "lora": True}, print)
    gone = dataclasses.replace(plain, teacher=dataclasses.replace(plain.teacher, path=str(tmp_path / "moved")))
    write_json(run2 / "recipe.resolved.json", recipe_to_dict(gone))
    with pytest.raises(ExportError, match=r"the run's teacher folder .*moved does not exist"):
        export({"run_dir": str(run2), "checkpoint": str(checkpoint2), "out": str(tmp_path / "x"), "lora": False}, print)
    assert not (tmp_path / "x").exists()
