"""adapters/: tiny SD-1.5-like and SDXL-like pipelines built from configs (pipelines.py: random weights, a CLIP
tokenizer whose vocab.json / merges.txt are written there), saved with save_pretrained and read back through the adapters
(docs/adapters.md): DDIM sampling against diffusers' own pipelines, the conditioning and unconditional rules,
the VAE scaling, and the one-line errors."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from diffusers import DDIMScheduler, DDPMPipeline, StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DModel

from dmd2_worker.adapters import (AdapterError, Conditioning, UNET2D_FAMILY, ddim_sample, families, family_of,
                                  guided, load_adapter)
from dmd2_worker.adapters.sd15 import SD15Adapter
from dmd2_worker.adapters.sdxl import SDXLAdapter
from pipelines import MAX_LEN, build_sd15, build_sdxl, with_prediction_type

PROMPTS = ["a cat", "the dog on a mat"]
PREDICTION_TYPES = ("epsilon", "v_prediction")


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[tuple[str, str], Path]:
    """{(family, prediction_type): folder}; the v_prediction folders are the same weights with another schedule
    config (random weights predict whatever they are read as)."""
    root = tmp_path_factory.mktemp("pipelines")
    base = {"sd15": build_sd15(root / "sd15", root / "work-sd15"),
            "sdxl": build_sdxl(root / "sdxl", root / "work-sdxl")}
    out = {(f, "epsilon"): p for f, p in base.items()}
    for f, p in base.items():
        out[(f, "v_prediction")] = with_prediction_type(p, root / f"{f}-v", "v_prediction")
    return out


@pytest.fixture(scope="module")
def adapters(folders) -> dict[tuple[str, str], object]:
    return {key: load_adapter(folder) for key, folder in folders.items()}


def diffusers_pipeline(family: str, folder: Path):
    scheduler = DDIMScheduler.from_pretrained(folder, subfolder="scheduler", clip_sample=False)
    cls = StableDiffusionPipeline if family == "sd15" else StableDiffusionXLPipeline
    pipe = cls.from_pretrained(folder, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# --- the registry --------------------------------------------------------------------------------------------

def test_registry_picks_the_family(folders, adapters):
    assert {"sd15", "sdxl"} <= set(families())
    assert family_of(folders[("sd15", "epsilon")]) == "sd15"
    assert family_of(folders[("sdxl", "epsilon")]) == "sdxl"
    assert type(adapters[("sd15", "epsilon")]) is SD15Adapter
    assert type(adapters[("sdxl", "v_prediction")]) is SDXLAdapter
    for (family, kind), adapter in adapters.items():
        assert adapter.prediction_type == kind
        assert adapter.latent_shape == (4, 8, 8) and adapter.vae_scale_factor == 2 and adapter.image_size == 16
        assert adapter.num_train_timesteps == 1000


# --- sampling against diffusers ------------------------------------------------------------------------------

@pytest.mark.parametrize("family", ["sd15", "sdxl"])
@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_ddim_sampling_matches_the_diffusers_pipeline(folders, adapters, family, prediction_type):
    folder, adapter = folders[(family, prediction_type)], adapters[(family, prediction_type)]
    pipe = diffusers_pipeline(family, folder)
    for steps, scale, seed in ((4, 3.0, 7), (3, 1.0, 8)):
        ref = pipe(prompt=PROMPTS, num_inference_steps=steps, guidance_scale=scale, output_type="latent",
                   generator=torch.Generator().manual_seed(seed)).images
        ours = ddim_sample(adapter, PROMPTS, steps=steps, guidance_scale=scale, seed=seed)
        assert ours.shape == ref.shape == (2, 4, 8, 8)
        torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)
        if scale != 1.0:  # guidance changes the result (the comparison above is not between two unguided runs)
            unguided = ddim_sample(adapter, PROMPTS, steps=steps, guidance_scale=1.0, seed=seed)
            assert (ours - unguided).abs().max() > 1e-2
    if prediction_type == "epsilon":  # the decoded images too ("pt": (x / 2 + 0.5) clamped to [0, 1])
        ref = pipe(prompt=PROMPTS[:1], num_inference_steps=2, guidance_scale=2.0, output_type="pt",
                   generator=torch.Generator().manual_seed(3)).images
        ours = ddim_sample(adapter, PROMPTS[:1], steps=2, guidance_scale=2.0, seed=3, decode=True)
        assert ours.shape == ref.shape == (1, 3, 16, 16)
        torch.testing.assert_close((ours / 2 + 0.5).clamp(0, 1), ref, rtol=1e-4, atol=1e-4)


# --- conditioning rules --------------------------------------------------------------------------------------

def test_sd15_conditioning_is_the_pipelines_and_uncond_is_the_empty_prompt(folders, adapters):
    adapter = adapters[("sd15", "epsilon")]
    pipe = diffusers_pipeline("sd15", folders[("sd15", "epsilon")])
    with torch.no_grad():
        pos, neg = pipe.encode_prompt(PROMPTS, torch.device("cpu"), 1, True)
    cond, uncond = adapter.encode_prompts(PROMPTS), adapter.uncond(2)
    assert cond.text_embeds is None and cond.time_ids is None
    assert cond.encoder_hidden_states.shape == (2, MAX_LEN, 32)
    torch.testing.assert_close(cond.encoder_hidden_states, pos)
    torch.testing.assert_close(uncond.encoder_hidden_states, neg)
    empty = adapter.encode_prompts(["", ""]).encoder_hidden_states
    torch.testing.assert_close(uncond.encoder_hidden_states, empty)
    assert uncond.encoder_hidden_states.abs().sum() > 0  # the empty prompt's encoding is not zeros
    assert not torch.allclose(cond.encoder_hidden_states[0], cond.encoder_hidden_states[1])


def test_sdxl_conditioning_is_the_pipelines_and_uncond_is_zeros(folders, adapters):
    adapter = adapters[("sdxl", "epsilon")]
    pipe = diffusers_pipeline("sdxl", folders[("sdxl", "epsilon")])
    with torch.no_grad():
        pos, neg, pooled, neg_pooled = pipe.encode_prompt(PROMPTS, device=torch.device("cpu"),
                                                          num_images_per_prompt=1, do_classifier_free_guidance=True)
    cond, uncond = adapter.encode_prompts(PROMPTS), adapter.uncond(2)
    assert cond.encoder_hidden_states.shape == (2, MAX_LEN, 32 + 48)
    assert cond.text_embeds.shape == (2, 24) and cond.time_ids.shape == (2, 6)
    torch.testing.assert_close(cond.encoder_hidden_states, pos)
    torch.testing.assert_close(cond.text_embeds, pooled)
    time_ids = pipe._get_add_time_ids((16, 16), (0, 0), (16, 16), dtype=torch.float32, text_encoder_projection_dim=24)
    torch.testing.assert_close(cond.time_ids, time_ids.expand(2, 6))
    assert cond.time_ids[0].tolist() == [16, 16, 0, 0, 16, 16]
    # unconditional: zeros (force_zeros_for_empty_prompt, the DMD2 paper's choice), the same time ids
    assert torch.count_nonzero(uncond.encoder_hidden_states) == 0 and torch.count_nonzero(uncond.text_embeds) == 0
    torch.testing.assert_close(uncond.encoder_hidden_states, neg)
    torch.testing.assert_close(uncond.text_embeds, neg_pooled)
    assert uncond.encoder_hidden_states.shape == cond.encoder_hidden_states.shape
    torch.testing.assert_close(uncond.time_ids, cond.time_ids)
    custom = adapter.encode_prompts(PROMPTS[:1], original_size=(32, 24), crops_coords_top_left=(2, 4))
    assert custom.time_ids[0].tolist() == [32, 24, 2, 4, 16, 16]


def test_sdxl_without_force_zeros_uses_the_empty_prompt(folders, tmp_path):
    folder = Path(shutil.copytree(folders[("sdxl", "epsilon")], tmp_path / "sdxl"))
    index = json.loads((folder / "model_index.json").read_text())
    index["force_zeros_for_empty_prompt"] = False
    (folder / "model_index.json").write_text(json.dumps(index))
    adapter = load_adapter(folder)
    uncond, empty = adapter.uncond(2), adapter.encode_prompts(["", ""])
    torch.testing.assert_close(uncond.encoder_hidden_states, empty.encoder_hidden_states)
    torch.testing.assert_close(uncond.text_embeds, empty.text_embeds)
    assert torch.count_nonzero(uncond.encoder_hidden_states) > 0


def test_guided_predict_and_to_x0(adapters):
    adapter = adapters[("sdxl", "v_prediction")]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, *adapter.latent_shape, generator=g)
    t = torch.tensor([900, 100])
    cond, uncond = adapter.encode_prompts(PROMPTS), adapter.uncond(2)
    with torch.no_grad():
        out_c, out_u = adapter.predict(x, t, cond), adapter.predict(x, t, uncond)
        torch.testing.assert_close(guided(adapter, x, t, cond, uncond, 1.0), out_c)
        torch.testing.assert_close(guided(adapter, x, t, cond, uncond, 4.0), out_u + 4.0 * (out_c - out_u),
                                   rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(adapter.predict(x, 500, cond), adapter.predict(x, torch.tensor([500, 500]), cond))
    # v-prediction: x0 = sqrt(a) x_t - sqrt(1-a) v, eps = sqrt(a) v + sqrt(1-a) x_t; x_t = sqrt(a) x0 + sqrt(1-a) eps
    x0, eps = adapter.to_x0(out_c, x, t), adapter.to_eps(out_c, x, t)
    torch.testing.assert_close(adapter.schedule.add_noise(x0, t, eps), x, rtol=1e-4, atol=1e-5)


def test_conditioning_rows_cat_expand():
    c = Conditioning(torch.arange(12.).view(3, 2, 2), torch.arange(6.).view(3, 2), torch.ones(3, 6))
    assert c.batch_size == 3
    both = Conditioning.cat([c, c.rows([2])])
    assert both.batch_size == 4 and torch.equal(both.text_embeds[3], c.text_embeds[2])
    assert c.rows(slice(0, 1)).expand(5).encoder_hidden_states.shape == (5, 2, 2)
    assert set(c.unet_kwargs()) == {"encoder_hidden_states", "added_cond_kwargs"}
    assert set(Conditioning(torch.zeros(1, 2, 2)).unet_kwargs()) == {"encoder_hidden_states"}
    with pytest.raises(ValueError, match="text_embeds"):
        Conditioning.cat([c, Conditioning(torch.zeros(1, 2, 2))])


# --- the VAE -------------------------------------------------------------------------------------------------

def test_vae_encode_decode_use_the_scaling_factor(adapters):
    adapter = adapters[("sd15", "epsilon")]
    sf = adapter.vae.config.scaling_factor
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        latents = adapter.vae_encode(images)
        assert latents.shape == (2, *adapter.latent_shape) and latents.dtype == torch.float32
        torch.testing.assert_close(latents, adapter.vae.encode(images).latent_dist.mean * sf)
        sampled = adapter.vae_encode(images, generator=torch.Generator().manual_seed(1))
        assert sampled.shape == latents.shape and not torch.equal(sampled, latents)
        decoded = adapter.vae_decode(latents)
        assert decoded.shape == images.shape
        torch.testing.assert_close(decoded, adapter.vae.decode(latents / sf).sample)


# --- errors --------------------------------------------------------------------------------------------------

def copy_without(folder: Path, tmp_path: Path, part: str) -> Path:
    out = Path(shutil.copytree(folder, tmp_path / "pipe"))
    target = out / part
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    return out


def error_of(folder: Path) -> str:
    with pytest.raises(AdapterError) as info:
        load_adapter(folder)
    msg = str(info.value)
    assert "\n" not in msg, msg
    return msg


@pytest.mark.parametrize("family,part", [("sd15", "unet"), ("sd15", "text_encoder"), ("sdxl", "text_encoder_2"),
                                         ("sdxl", "tokenizer_2"), ("sdxl", "vae")])
def test_missing_component_is_one_line_naming_folder_and_part(folders, tmp_path, family, part):
    folder = copy_without(folders[(family, "epsilon")], tmp_path, part)
    msg = error_of(folder)
    assert msg.startswith(f"{folder}: missing {part}/"), msg


def test_missing_weights_and_bad_scheduler_are_one_line(folders, tmp_path):
    folder = copy_without(folders[("sd15", "epsilon")], tmp_path, "unet/diffusion_pytorch_model.safetensors")
    msg = error_of(folder)
    assert msg.startswith(f"{folder / 'unet'}: cannot load UNet2DConditionModel"), msg
    shutil.rmtree(folder)
    # a pipeline saved with variant="fp16" (what a hub download with variant= gives): said so, with the fix
    folder = Path(shutil.copytree(folders[("sd15", "epsilon")], tmp_path / "fp16"))
    (folder / "unet" / "diffusion_pytorch_model.safetensors").rename(folder / "unet" / "diffusion_pytorch_model.fp16.safetensors")
    assert error_of(folder).startswith(f"{folder / 'unet'}: cannot load UNet2DConditionModel: only variant weights "
                                       f"are there (diffusion_pytorch_model.fp16.safetensors); dmd2 loads the default "
                                       f"files: save the pipeline again without variant=")
    shutil.rmtree(folder)
    folder = with_prediction_type(folders[("sd15", "epsilon")], tmp_path / "pipe", "flow")
    assert error_of(folder) == (f"{folder / 'scheduler/scheduler_config.json'}: prediction_type 'flow' is not "
                                f"supported (supported: 'epsilon', 'v_prediction', 'sample')")


def test_unsupported_family_and_non_pipeline_folders(folders, tmp_path):
    # (this used StableDiffusion3Pipeline until adapters/sd3.py made it supported; any unsupported name does)
    folder = Path(shutil.copytree(folders[("sd15", "epsilon")], tmp_path / "kandinsky"))
    index = json.loads((folder / "model_index.json").read_text())
    index["_class_name"] = "KandinskyPipeline"
    (folder / "model_index.json").write_text(json.dumps(index))
    msg = error_of(folder)
    assert msg.startswith(f"{folder / 'model_index.json'}: pipeline 'KandinskyPipeline' is not supported"), msg
    assert "StableDiffusionPipeline (sd15)" in msg and "StableDiffusionXLPipeline (sdxl)" in msg
    assert "StableDiffusion3Pipeline (sd3)" in msg

    empty = tmp_path / "empty"
    empty.mkdir()
    assert error_of(empty).startswith(f"{empty}: missing model_index.json")
    assert error_of(tmp_path / "nowhere") == f"{tmp_path / 'nowhere'}: not a folder"

    # a DDPMPipeline (UNet2DModel) folder is the unet2d family, read by teacher_folder.load_teacher_folder
    ddpm = tmp_path / "ddpm"
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
                       norm_num_groups=4, down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2)
    DDPMPipeline(unet=unet, scheduler=DDIMScheduler()).save_pretrained(ddpm)
    assert family_of(ddpm) == UNET2D_FAMILY
    assert "teacher_folder.load_teacher_folder" in error_of(ddpm)
