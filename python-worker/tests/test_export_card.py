"""The model card (README.md) `dmd2 export` writes: its Python block, run as it stands (with `<this folder>` replaced
by the export's path), gives what dmd2's own student sampling gives for its seed (0), classes and prompt: a
class-conditional UNet2DModel student on off-default timesteps (the loop), an unconditional one on the default
timesteps from 999 (the loop, and the card's DDPMPipeline call), an SD-1.5-like student on default and off-default
timesteps (`num_inference_steps=` / `timesteps=`), and a LoRA student's adapters on the teacher's pipeline."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import UNet2DModel

from conftest import make_tiny_recipe
from dmd2_worker.adapters import load_adapter
from dmd2_worker.config import DiffusionConfig, lora_spec
from dmd2_worker.diffusion import NoiseSchedule
from dmd2_worker.export import default_timesteps, export
from dmd2_worker.models.unet2d import teacher_unet_config
from dmd2_worker.models.unet2d_condition import UNet2DConditionNet
from dmd2_worker.roles.common import x0_function
from dmd2_worker.sampling import sample_generator
from dmd2_worker.teacher_folder import write_teacher_folder
from dmd2_worker.teacher_training import load_network
from export_runs import perturb, write_run
from pipelines import build_sd15

pytestmark = pytest.mark.usefixtures("one_torch_thread")
DIFFUSION = DiffusionConfig(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                            beta_end=0.012, prediction_type="epsilon")


def export_run(tmp_path: Path, name: str, net: torch.nn.Module, lora: bool = False, **recipe) -> tuple[Path, str]:
    """A run folder with `net` as its generator checkpoint, exported; (the export, its card)."""
    run, checkpoint = write_run(make_tiny_recipe(tmp_path / f"run-{name}", **recipe), net)
    out = tmp_path / f"export-{name}"
    export({"run_dir": str(run), "checkpoint": str(checkpoint), "out": str(out), "lora": lora}, lambda m: None)
    return out, (out / "README.md").read_text()


def run_card(card: str, out: Path) -> dict:
    """Executes the card's ```python block with `<this folder>` = `out`; its variables."""
    blocks = re.findall(r"```python\n(.*?)```", card, flags=re.S)
    assert len(blocks) == 1, card
    namespace: dict = {}
    exec(compile(blocks[0].replace("<this folder>", str(out)), "README.md", "exec"), namespace)  # noqa: S102
    return namespace


def unet_teacher(tmp_path: Path, name: str, num_classes: int | None) -> Path:
    torch.manual_seed(0)
    cfg = teacher_unet_config(image_shape=(1, 8, 8), block_out_channels=[8, 16], layers_per_block=1,
                              norm_num_groups=8, num_classes=num_classes)
    return write_teacher_folder(tmp_path / name, UNet2DModel(**cfg), DIFFUSION, num_classes, {}, {})


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """Images in about [-1, 1], (B, C, H, W), as the pipelines' PIL output: (x / 2 + 0.5) clamped, x 255, rounded."""
    return ((images / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)


def test_card_of_a_class_conditional_unet2d_student(tmp_path):
    teacher = unet_teacher(tmp_path, "teacher3", 3)
    (teacher / "README.md").write_text("# the teacher\nlicense: be nice\n")
    (teacher / "extra" / "scheduler").mkdir(parents=True)  # only the top level's scheduler/ is replaced
    (teacher / "extra" / "scheduler" / "README.md").write_text("kept")
    student, _ = load_network(teacher)
    perturb(student, 0.03, seed=2)
    ts = [599, 449, 299, 149]
    out, card = export_run(tmp_path, "classes", student, teacher__source="diffusers", teacher__path=str(teacher),
                           generator__steps=4, generator__timesteps=ts, generator__conditioning_timestep=599)
    assert "timesteps [599, 449, 299, 149]" in card and "torch.arange(16) % 3" in card and "DDPMPipeline" not in card
    assert (out / "TEACHER_README.md").read_text() == "# the teacher\nlicense: be nice\n"
    assert "license and terms apply to this student too: [TEACHER_README.md]" in card
    assert (out / "extra" / "scheduler" / "README.md").read_text() == "kept"
    assert (teacher / "README.md").read_text() == "# the teacher\nlicense: be nice\n"
    images = run_card(card, out)["images"]
    schedule = NoiseSchedule.from_config(DIFFUSION)
    g = torch.Generator().manual_seed(0)
    z = torch.randn(16, 1, 8, 8, generator=g)
    with torch.no_grad():
        ours = sample_generator(x0_function(student, schedule), z, torch.arange(16) % 3, ts, schedule, g)
    assert torch.allclose(images, (ours.clamp(-1, 1) + 1) / 2, atol=1e-5)


def test_card_of_an_unconditional_unet2d_student(tmp_path):
    teacher = unet_teacher(tmp_path, "teacher", None)
    student, _ = load_network(teacher)
    perturb(student, 0.03, seed=2)
    ts = [999, 499]
    assert default_timesteps(2, 1000) == ts
    out, card = export_run(tmp_path, "uncond", student, teacher__source="diffusers", teacher__path=str(teacher),
                           generator__steps=2, generator__timesteps=ts, generator__conditioning_timestep=999)
    assert "class_labels" not in card and "TEACHER_README" not in card
    images = run_card(card, out)["images"]
    schedule = NoiseSchedule.from_config(DIFFUSION)
    g = torch.Generator().manual_seed(0)
    z = torch.randn(16, 1, 8, 8, generator=g)
    with torch.no_grad():
        ours = sample_generator(x0_function(student, schedule), z, None, ts, schedule, g)
    want = (ours.clamp(-1, 1) + 1) / 2
    assert torch.allclose(images, want, atol=1e-5)
    # the card's one-line stock pipeline call
    call = re.search(r"`(DDPMPipeline\.from_pretrained\(.*?\))`", card).group(1)
    from diffusers import DDPMPipeline  # noqa: F401  (the call's name)

    result = eval(call.replace("<this folder>", str(out)), {"DDPMPipeline": DDPMPipeline, "torch": torch})  # noqa: S307
    assert np.allclose(np.asarray(result.images[0]), to_uint8(ours[:1])[0, :, :, 0], atol=1)


@pytest.fixture(scope="module")
def sd15(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("sd15")
    return build_sd15(tmp / "sd15", tmp / "work")


@pytest.mark.parametrize("ts", [[999, 499], [599, 299]])
def test_card_of_an_sd15_student(tmp_path, sd15, ts, recwarn):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\n")
    adapter = load_adapter(sd15)
    student = UNet2DConditionNet(adapter.unet)
    perturb(student, 0.02, seed=2)
    out, card = export_run(tmp_path, "sd15", student, data__source="prompts",
                           data__prompts={"file": str(prompts), "images": None}, gan__enabled=False,
                           teacher__source="diffusers", teacher__path=str(sd15), generator__steps=2,
                           generator__timesteps=ts, generator__conditioning_timestep=ts[0])
    assert ("num_inference_steps=2" in card) == (ts == [999, 499])
    image = run_card(card, out)["image"]
    want = dmd2_cat_image(adapter, student, ts)
    got = np.asarray(image)
    assert got.shape == want.shape
    assert not [w for w in recwarn if "steps_offset" in str(w.message)]  # the exported config is not "outdated"
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1


def dmd2_cat_image(adapter, student, ts):
    """What dmd2's own sampler makes of the card's prompt and seed 0 at timesteps `ts`: uint8 (H, W, 3)."""
    schedule = NoiseSchedule.from_config(DIFFUSION)
    C, H, W = adapter.latent_shape
    g = torch.Generator().manual_seed(0)
    z = torch.randn(1, C, H, W, generator=g)
    with torch.no_grad():
        latents = sample_generator(x0_function(student, schedule), z, adapter.encode_prompts(["a photo of a cat"]),
                                   ts, schedule, g)
        return to_uint8(adapter.vae_decode(latents))[0]


def test_card_of_a_lora_student(tmp_path, sd15):
    from dmd2_worker.lora import apply_lora

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\n")
    lora = {"rank": 2, "alpha": 4, "target_modules": ["to_q", "to_v", "conv1"]}
    recipe = dict(data__source="prompts", data__prompts={"file": str(prompts), "images": None}, gan__enabled=False,
                  teacher__source="diffusers", teacher__path=str(sd15), generator__lora=lora)
    adapter = load_adapter(sd15)
    student = UNet2DConditionNet(adapter.unet)
    apply_lora(student, lora_spec(make_tiny_recipe(tmp_path / "r", **recipe)), seed=0)
    perturb(student, 0.05, seed=2, only=".lora_B.")
    out, card = export_run(tmp_path, "lora", student, lora=True, **recipe)
    image = run_card(card, out)["image"]
    want = dmd2_cat_image(adapter, student, [999, 499])  # the tiny recipe's timesteps
    assert np.abs(np.asarray(image).astype(int) - want.astype(int)).max() <= 1
