"""The SD3 adapter (adapters/sd3.py) on a tiny StableDiffusion3Pipeline folder (tests/pipelines.py build_sd3):
its conditioning and its Euler sampler (flow_sampling.py) against the stock pipeline, the VAE's shift and scale,
and the transformer behind the roles' network interface."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusion3Pipeline

from dmd2_worker.adapters import AdapterError, family_of, load_adapter
from dmd2_worker.adapters.sd3 import SD3Adapter, SD3TransformerNet
from dmd2_worker.flow_matching import FlowMatchSchedule
from dmd2_worker.flow_sampling import flow_euler_sample

from pipelines import build_sd3

PROMPTS = ["a cat on the mat", "the dog"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("sd3")
    return build_sd3(work / "sd3", work / "work")


@pytest.fixture(scope="module")
def adapter(folder) -> SD3Adapter:
    return load_adapter(folder)


@pytest.fixture(scope="module")
def pipe(folder) -> StableDiffusion3Pipeline:
    return StableDiffusion3Pipeline.from_pretrained(folder, local_files_only=True)


def test_registry_picks_sd3_and_its_flow_schedule(folder, adapter):
    assert family_of(folder) == "sd3"
    assert isinstance(adapter, SD3Adapter)
    assert isinstance(adapter.schedule, FlowMatchSchedule) and adapter.schedule.shift == 3.0
    assert adapter.prediction_type == "flow"
    assert adapter.latent_shape == (16, 8, 8) and adapter.image_size == 16


def test_conditioning_is_the_pipelines_and_uncond_is_the_empty_prompt(adapter, pipe):
    cond = adapter.encode_prompts(PROMPTS)
    with torch.no_grad():  # as the pipeline's __call__ runs it (autograd picks other T5 kernels, ~5e-6 apart)
        embeds, neg, pooled, neg_pooled = pipe.encode_prompt(PROMPTS, None, None, do_classifier_free_guidance=True)
    assert cond.encoder_hidden_states.shape == (2, 16 + 256, 48)  # CLIP (16 + 24, padded to 48) then T5
    assert torch.allclose(cond.encoder_hidden_states, embeds, atol=1e-6)
    assert torch.allclose(cond.text_embeds, pooled, atol=1e-6)
    assert cond.time_ids is None
    un = adapter.uncond(2)
    assert torch.allclose(un.encoder_hidden_states, neg, atol=1e-6)
    assert torch.allclose(un.text_embeds, neg_pooled, atol=1e-6)
    # the CLIP part is zero-padded from 40 to the T5 width 48
    assert float(cond.encoder_hidden_states[:, :16, 40:].abs().max()) == 0.0


@pytest.mark.parametrize("guidance_scale", [1.0, 4.5])
def test_euler_sampling_matches_the_stock_pipeline(adapter, pipe, guidance_scale):
    """The teacher matches stock diffusers: same model, seed, prompts, steps and guidance, output_type latent."""
    ours = flow_euler_sample(adapter, PROMPTS, steps=12, guidance_scale=guidance_scale, seed=3)
    theirs = pipe(PROMPTS, num_inference_steps=12, guidance_scale=guidance_scale, height=16, width=16,
                  output_type="latent", generator=torch.Generator().manual_seed(3)).images
    assert ours.shape == theirs.shape == (2, 16, 8, 8)
    assert float((ours - theirs).abs().max()) < 1e-4, float((ours - theirs).abs().max())
    assert float(ours.abs().max()) > 0.1


def test_vae_uses_the_shift_and_scaling_factor(adapter):
    images = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    lat = adapter.vae_encode(images)
    cfg = adapter.vae.config
    z = adapter.vae.encode(images).latent_dist.mean
    assert torch.allclose(lat, (z - cfg.shift_factor) * cfg.scaling_factor, atol=1e-6)
    decoded = adapter.vae_decode(lat)
    assert torch.allclose(decoded, adapter.vae.decode(z).sample, atol=1e-5)


def test_transformer_net_is_the_adapters_prediction_and_has_features(adapter):
    net = SD3TransformerNet(adapter.transformer, adapter.schedule)
    cond = adapter.encode_prompts(PROMPTS)
    x = torch.randn(2, 16, 8, 8, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([999, 300])
    with torch.no_grad():
        assert torch.allclose(net(x, t, cond), adapter.predict(x, t, cond), atol=1e-6)
        # index t is fed as sigma(t) * T
        direct = adapter.transformer(hidden_states=x, timestep=adapter.schedule.model_timestep(t),
                                     encoder_hidden_states=cond.encoder_hidden_states,
                                     pooled_projections=cond.text_embeds, return_dict=False)[0]
        assert torch.allclose(net(x, t, cond), direct, atol=1e-6)
    feats = net.features(x, t, cond)
    assert feats.shape == (2, net.feature_channels, net.feature_size, net.feature_size) == (2, 32, 4, 4)
    assert feats.requires_grad
    assert [k.split(".")[0] for k in net.state_dict()] == ["transformer"] * len(net.state_dict())


def test_a_non_flow_scheduler_is_one_line(folder, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    path = bad / "scheduler" / "scheduler_config.json"
    path.write_text(json.dumps({"_class_name": "DDIMScheduler"}))
    with pytest.raises(AdapterError, match=r"scheduler_config.json: _class_name 'DDIMScheduler' is not a flow-matching"):
        load_adapter(bad)
    path.write_text(json.dumps({"_class_name": "FlowMatchEulerDiscreteScheduler", "use_karras_sigmas": True}))
    with pytest.raises(AdapterError, match=r"use_karras_sigmas True is not supported"):
        load_adapter(bad)


# --- the roles on an SD3 teacher (flow matching through the schedule's methods) ----------------------------------

def sd3_recipe(tmp_path: Path, folder: Path, **overrides):
    from conftest import make_tiny_recipe
    from pipelines import write_images

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\nthe dog on a mat\nthe cat\n")
    images = write_images(tmp_path / "images", 5, size=20)
    values = dict(data__source="prompts", data__prompts={"file": str(prompts), "images": str(images)},
                  teacher__source="diffusers", teacher__path=str(folder), train__batch_size=4,
                  generator__lr=1e-3, fake_score__lr=1e-3, optim__warmup_steps=0, dmd__real_guidance_scale=4.5)
    values.update(overrides)
    return make_tiny_recipe(tmp_path / "run", **values)


def test_roles_use_the_flow_schedule_and_the_teacher_guides_the_velocity(folder, adapter, tmp_path):
    from dmd2_worker.local_loop import build_roles
    from dmd2_worker.roles.base import TensorStore

    recipe = sd3_recipe(tmp_path, folder)  # generator steps [999, 499] (the tiny recipe's)
    ctx, roles = build_roles(recipe)
    for name in ("teacher", "generator", "fake_score"):
        assert isinstance(roles[name].schedule, FlowMatchSchedule), name
        assert isinstance(roles[name].net, SD3TransformerNet), name
    store = TensorStore()
    store.step = 0
    roles["generator"].run_op("generate", {"seed": 7, "batch_size": 4, "grad": False, "dmd": True}, store, ctx)
    assert store["cond_hidden"].shape == (4, 16 + 256, 48) and store["cond_pooled"].shape == (4, 40)
    assert "cond_time_ids" not in store
    # the draws, in the generator's order: prompts, k, z, one re-noise per step before k, t_dmd, noise
    g = torch.Generator().manual_seed(7)
    prompts = ["a cat", "the dog on a mat", "the cat"]
    index = torch.randint(0, 3, (4,), generator=g)
    k = int(torch.randint(0, 2, (1,), generator=g))
    z = torch.randn((4, 16, 8, 8), generator=g)
    cond = adapter.encode_prompts([prompts[i] for i in index.tolist()])
    s = adapter.schedule
    with torch.no_grad():
        x0 = z - adapter.predict(z, 999, cond)  # one step from pure noise: sigma(999) = 1, x0 = x - v
        x = z
        if k == 1:  # backward simulation: re-noise in flow form to sigma(499) = 0.75, then step 1
            n1 = torch.randn((4, 16, 8, 8), generator=g)
            x = 0.25 * x0 + 0.75 * n1
            x0 = x - 0.75 * adapter.predict(x, 499, cond)
    assert torch.allclose(store["x_gen"], x0, atol=1e-4)
    lo, hi = 20, 980  # dmd.min_t 0.02, max_t 0.98 of T = 1000
    t_dmd = torch.randint(lo, hi + 1, (4,), generator=g)
    noise = torch.randn((4, 16, 8, 8), generator=g)
    assert torch.equal(store["t_dmd"], t_dmd)
    sigma = s.sigma_of(t_dmd, noise)
    assert torch.allclose(store["x_t_dmd"], (1 - sigma) * store["x_gen"] + sigma * noise, atol=1e-6)

    roles["teacher"].run_op("predict_x0", {"guidance_scale": 4.5}, store, ctx)
    x_t = store["x_t_dmd"]
    with torch.no_grad():
        v_c = adapter.predict(x_t, t_dmd, cond)
        v_u = adapter.predict(x_t, t_dmd, adapter.uncond(4))
    assert torch.allclose(store["x0_real"], x_t - sigma * (v_u + 4.5 * (v_c - v_u)), atol=1e-4)
    roles["fake_score"].run_op("predict_x0", {}, store, ctx)
    assert torch.allclose(store["x0_fake"], x_t - sigma * v_c, atol=1e-4)  # starts as the teacher, unguided


def test_sd3_training_steps_and_two_step_sampling(folder, adapter, tmp_path):
    import math

    from safetensors.torch import load_file

    from dmd2_worker.local_loop import build_roles, train_step
    from dmd2_worker.roles.base import TensorStore

    recipe = sd3_recipe(tmp_path, folder, ttur__ratio=2)
    ctx, roles = build_roles(recipe)
    before = {k: v.clone() for k, v in roles["generator"].net.state_dict().items()}
    metrics: dict[str, float] = {}
    for step in range(3):
        metrics.update(train_step(step, recipe, ctx))
    assert all(math.isfinite(v) for v in metrics.values()), metrics
    assert metrics["fake_score.loss_gan_d"] > 0 and metrics["discriminator.loss_gan_g"] > 0
    gen = roles["generator"]
    assert max(float((v - before[k]).abs().max()) for k, v in gen.net.state_dict().items()) > 1e-5

    # the 2-step sampler: x0 = x - v at sigma 1, re-noise to sigma(499) = 0.75 with fresh noise, x0 = x - 0.75 v
    out = tmp_path / "samples"
    store = TensorStore()
    gen.run_op("sample", {"seed": 0, "n": 2, "steps": 2, "classes": None, "out_dir": str(out),
                          "prompts": ["a cat", "the dog"]}, store, ctx)
    g = torch.Generator().manual_seed(0)
    z = torch.randn((2, 16, 8, 8), generator=g)
    cond = adapter.encode_prompts(["a cat", "the dog"])
    with torch.no_grad():
        x0 = z - gen.net(z, torch.full((2,), 999), cond)
        x = 0.25 * x0 + 0.75 * torch.randn((2, 16, 8, 8), generator=g)
        x0 = x - 0.75 * gen.net(x, torch.full((2,), 499), cond)
    saved = load_file(str(out / "samples.safetensors"))
    assert torch.allclose(saved["latents"], x0, atol=1e-4)
    assert store["samples"].shape == (2, 3, 16, 16) and float(store["samples"].abs().max()) <= 1.0
    assert torch.allclose(saved["samples"], adapter.vae_decode(x0).clamp(-1, 1), atol=1e-4)


SD3_LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj"]


def test_a_lora_student_of_sd3_trains_only_its_adapters(folder, tmp_path):
    """With the joint-attention projections as targets (lora.DEFAULT_TARGET_MODULES name UNet modules such as
    proj_in, which an SD3 transformer lacks: the family registry is to give SD3 its own defaults)."""
    import math

    from dmd2_worker.local_loop import build_roles, train_step
    from dmd2_worker.roles.common import network_state

    recipe = sd3_recipe(tmp_path, folder, ttur__ratio=1,
                        generator__lora={"rank": 4, "alpha": 8, "target_modules": SD3_LORA_TARGETS})
    ctx, roles = build_roles(recipe)
    gen = roles["generator"]
    base = {k: v.clone() for k, v in gen.net.state_dict().items() if "lora_" not in k}
    trained = sum(p.numel() for p in gen.trained())
    assert 0 < trained < sum(p.numel() for p in gen.net.parameters()) // 10
    for step in range(2):
        metrics = train_step(step, recipe, ctx)
    assert all(math.isfinite(v) for v in metrics.values()), metrics
    assert all(torch.equal(v, base[k]) for k, v in gen.net.state_dict().items() if "lora_" not in k)
    saved = network_state(gen.net)
    assert saved and all("lora_" in k for k in saved)
    assert any(float(v.abs().max()) > 0 for k, v in saved.items() if "lora_B" in k)  # B starts at 0 and moved


def test_an_sd3_lora_student_needs_no_target_modules(folder, tmp_path):
    """generator.lora.target_modules null: the family's registry lora_targets (the joint-attention projections),
    looked up by the resolved teacher.family; the UNet default would match no module of the transformer."""
    from dmd2_worker.config import lora_spec
    from dmd2_worker.families import registry
    from dmd2_worker.local_loop import build_roles, train_step

    recipe = sd3_recipe(tmp_path, folder, ttur__ratio=1, teacher__family="sd3",
                        teacher__conditioning=["cond_hidden", "cond_pooled"], generator__lora={"rank": 4})
    spec = lora_spec(recipe)
    assert list(spec.target_modules) == list(registry().family("sd3").lora_targets) != list(registry().default_lora_targets)
    ctx, roles = build_roles(recipe)
    gen = roles["generator"]
    assert 0 < sum(p.numel() for p in gen.trained()) < sum(p.numel() for p in gen.net.parameters()) // 10
    train_step(0, recipe, ctx)
