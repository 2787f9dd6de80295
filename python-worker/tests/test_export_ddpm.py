"""dmd2 export of an unconditional UNet2DModel student: the stock `DDPMPipeline` on the export (its own __call__, no
loop written by hand) gives dmd2's own student sampling for the same seed, when the student's timesteps are the
default ones from 999, which `num_inference_steps` alone selects in the exported LCMScheduler. (Class-conditional
students and other timesteps: DDPMPipeline takes neither class labels nor timesteps; test_export.py and
test/export.test.ts check the model card's scheduler loop for those.)"""
from __future__ import annotations


import numpy as np
import pytest
import torch
from diffusers import DDPMPipeline, LCMScheduler, UNet2DModel

from conftest import make_tiny_recipe
from dmd2_worker.config import DiffusionConfig
from dmd2_worker.diffusion import NoiseSchedule
from dmd2_worker.export import export
from dmd2_worker.models.unet2d import teacher_unet_config
from dmd2_worker.roles.common import x0_function
from dmd2_worker.sampling import sample_generator
from dmd2_worker.teacher_folder import write_teacher_folder
from dmd2_worker.teacher_training import load_network
from export_runs import perturb, write_run

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("prediction_type, clip_sample", [("epsilon", False), ("v_prediction", False),
                                                          ("epsilon", True)])
def test_unconditional_student_in_the_stock_ddpm_pipeline(tmp_path, prediction_type, clip_sample):
    torch.manual_seed(0)
    diffusion = DiffusionConfig(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                                beta_end=0.012, prediction_type=prediction_type)
    cfg = teacher_unet_config(image_shape=(3, 8, 8), block_out_channels=[8, 16], layers_per_block=1,
                              norm_num_groups=8, num_classes=None)
    teacher = write_teacher_folder(tmp_path / "teacher", UNet2DModel(**cfg), diffusion, None, {}, {})
    student, _ = load_network(teacher)
    perturb(student, 0.05, seed=1)
    timesteps = [999, 749, 499, 249]
    recipe = make_tiny_recipe(tmp_path / "run", teacher__source="diffusers", teacher__path=str(teacher),
                              generator__steps=4, generator__timesteps=timesteps, generator__conditioning_timestep=999,
                              generator__clip_sample=clip_sample)
    run, checkpoint = write_run(recipe, student)
    out = tmp_path / "export"
    export({"run_dir": str(run), "checkpoint": str(checkpoint), "out": str(out), "lora": False}, lambda m: None)

    pipe = DDPMPipeline.from_pretrained(out)
    assert isinstance(pipe.scheduler, LCMScheduler)
    images = pipe(batch_size=3, generator=torch.Generator().manual_seed(4), num_inference_steps=4,
                  output_type="np").images
    assert pipe.scheduler.timesteps.tolist() == timesteps
    schedule = NoiseSchedule.from_config(diffusion)
    g = torch.Generator().manual_seed(4)
    z = torch.randn(3, 3, 8, 8, generator=g)
    with torch.no_grad():
        ours = sample_generator(x0_function(student, schedule, clip_sample), z, None, timesteps, schedule, g)
        if clip_sample:  # the clamp between the steps matters here: without it the images differ
            g2 = torch.Generator().manual_seed(4)
            z2 = torch.randn(3, 3, 8, 8, generator=g2)
            unclamped = sample_generator(x0_function(student, schedule), z2, None, timesteps, schedule, g2)
            assert not torch.allclose(unclamped.clamp(-1, 1), ours, atol=1e-2)
    # DDPMPipeline's output: (x / 2 + 0.5) clamped to [0, 1], channels last
    want = (ours / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    assert images.shape == want.shape
    assert np.allclose(images, want, atol=1e-5), float(np.abs(images - want).max())
    assert 0.05 < float(want.std())  # not a blank image


def test_an_interrupted_export_leaves_nothing(tmp_path):
    """SIGTERM (the CLI's Ctrl-C) while the folder is being written: no `out`, no temporary folder beside it."""
    import os
    import signal

    from dmd2_worker.export import stop_on_sigterm

    diffusion = DiffusionConfig(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                                beta_end=0.012, prediction_type="epsilon")
    cfg = teacher_unet_config(image_shape=(1, 8, 8), block_out_channels=[8, 16], layers_per_block=1,
                              norm_num_groups=8, num_classes=None)
    teacher = write_teacher_folder(tmp_path / "teacher", UNet2DModel(**cfg), diffusion, None, {}, {})
    student, _ = load_network(teacher)
    recipe = make_tiny_recipe(tmp_path / "run", teacher__source="diffusers", teacher__path=str(teacher))
    run, checkpoint = write_run(recipe, student)
    out = tmp_path / "exports" / "x"
    seen: list[str] = []

    def log(message: str) -> None:
        seen.append(message)
        if message.startswith("writing the student's UNet"):  # the teacher's files are already copied
            os.kill(os.getpid(), signal.SIGTERM)

    old = signal.getsignal(signal.SIGTERM)
    stop_on_sigterm()
    try:
        with pytest.raises(KeyboardInterrupt):
            export({"run_dir": str(run), "checkpoint": str(checkpoint), "out": str(out), "lora": False}, log)
    finally:
        signal.signal(signal.SIGTERM, old)
    assert any(m.startswith("writing the student's UNet") for m in seen)
    assert list((tmp_path / "exports").iterdir()) == []
