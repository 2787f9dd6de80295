"""The roles against a diffusers teacher folder (docs/pipeline.md §2, `teacher.source: diffusers`), with digits and
an unlabelled image folder as data: the GAN's real batch comes from the data source's train split."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from diffusers import UNet2DModel
from PIL import Image

from conftest import make_tiny_recipe
from dmd2_worker.config import DiffusionConfig
from dmd2_worker.local_loop import build_roles, train_step
from dmd2_worker.models.unet2d import UNet2DNet, teacher_unet_config
from dmd2_worker.roles.base import TensorStore
from dmd2_worker.teacher_folder import write_teacher_folder

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def write_teacher(out: Path, num_classes: int | None, recipe_diffusion: DiffusionConfig, size: int = 8) -> Path:
    torch.manual_seed(0)
    unet = UNet2DModel(**teacher_unet_config(image_shape=(1, size, size), block_out_channels=[8, 16],
                                             layers_per_block=1, norm_num_groups=4, num_classes=num_classes))
    return write_teacher_folder(out, unet, recipe_diffusion, num_classes, {}, {})


def diffusers_recipe(tmp_path: Path, teacher: Path, **overrides):
    return make_tiny_recipe(tmp_path / "run", teacher__source="diffusers", teacher__path=str(teacher), **overrides)


def image_folder(path: Path, n: int = 4) -> Path:
    path.mkdir()
    for i in range(n):
        Image.fromarray((torch.rand(8, 8) * 255).to(torch.uint8).numpy()).save(path / f"{i}.png")
    return path


def check_training_steps(recipe) -> dict[str, float]:
    ctx, roles = build_roles(recipe)
    assert isinstance(roles["teacher"].net, UNet2DNet) and isinstance(roles["fake_score"].net, UNet2DNet)
    assert not (Path(recipe.run_dir) / "teacher").exists()  # read in place, not copied into the run
    store = TensorStore()
    store.step = 0
    roles["generator"].run_op("generate", {"seed": 1, "batch_size": 6, "grad": False, "dmd": True}, store, ctx)
    roles["teacher"].run_op("predict_x0", {"guidance_scale": 1.0}, store, ctx)
    roles["fake_score"].run_op("predict_x0", {}, store, ctx)
    assert store["x0_real"].shape == (6, 1, 8, 8)
    assert torch.allclose(store["x0_real"], store["x0_fake"], atol=1e-5)  # the fake score starts as the teacher
    metrics = {}
    for step in range(2):  # step 0: generator + GAN; step 1: fake score (+ discriminator) only
        metrics.update(train_step(step, recipe, ctx))
    assert all(math.isfinite(v) for v in metrics.values()), metrics
    assert metrics["fake_score.loss_gan_d"] > 0 and metrics["discriminator.loss_gan_g"] > 0
    return metrics


def test_training_steps_with_digits_and_a_class_conditional_teacher(tmp_path):
    recipe = diffusers_recipe(tmp_path, tmp_path / "t", data__source="digits", dmd__real_guidance_scale=2.0)
    write_teacher(tmp_path / "t", 10, recipe.diffusion)
    check_training_steps(recipe)


def test_training_steps_with_unlabelled_images_and_an_unconditional_teacher(tmp_path):
    folder = image_folder(tmp_path / "images")
    recipe = diffusers_recipe(tmp_path, tmp_path / "t", data__source="folder", data__folder__path=str(folder))
    write_teacher(tmp_path / "t", None, recipe.diffusion)
    check_training_steps(recipe)


def test_the_teacher_must_fit_the_data_and_the_recipe(tmp_path):
    recipe = diffusers_recipe(tmp_path, tmp_path / "t10")  # gmm data: 4 classes
    write_teacher(tmp_path / "t10", 10, recipe.diffusion)
    with pytest.raises(ValueError, match=r"the teacher has num_classes 10, the recipe's data \(gmm\) has 4"):
        build_roles(recipe)
    write_teacher(tmp_path / "t16", 4, recipe.diffusion, size=16)
    with pytest.raises(ValueError, match=r"images of shape \[1, 16, 16\], the recipe's data \(gmm\) has \[1, 8, 8\]"):
        build_roles(diffusers_recipe(tmp_path, tmp_path / "t16"))
    other = DiffusionConfig(**{**recipe.diffusion.__dict__, "prediction_type": "v_prediction"})
    write_teacher(tmp_path / "tv", 4, other)
    with pytest.raises(ValueError, match="diffusion config"):
        build_roles(diffusers_recipe(tmp_path, tmp_path / "tv"))


def test_a_teacher_without_null_class_needs_guidance_1(tmp_path):
    recipe = diffusers_recipe(tmp_path, tmp_path / "t", dmd__real_guidance_scale=1.5)
    out = write_teacher(tmp_path / "t", 3, recipe.diffusion)  # 4 class embeddings ...
    (out / "dmd2_teacher.json").unlink()  # ... all of them classes: no null class
    with pytest.raises(ValueError, match="no null class .* dmd.real_guidance_scale must be 1, got 1.5"):
        build_roles(recipe)
    ctx, roles = build_roles(diffusers_recipe(tmp_path, out))
    assert roles["teacher"].net.num_classes == 4 and roles["teacher"].net.null_class is None


def test_the_builtin_teacher_trains_on_gmm_only(tmp_path):
    with pytest.raises(ValueError, match="teacher.source builtin trains on data.source gmm only; train a teacher with "
                                         "dmd2 train-teacher and set teacher.source: diffusers"):
        build_roles(make_tiny_recipe(tmp_path / "run", data__source="digits"))
