"""The Sana adapter (adapters/sana.py) on a tiny SanaPipeline folder (tests/pipelines.py build_sana): its
conditioning and its Euler sampler (flow_sampling.py) against the stock pipeline, the DC-AE's scaling, the
DPM-Solver flow config real Sana folders ship, and the transformer behind the roles' network interface."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, SanaPipeline

from dmd2_worker.adapters import AdapterError, family_of, load_adapter
from dmd2_worker.adapters.sana import COMPLEX_HUMAN_INSTRUCTION, SanaAdapter, SanaTransformerNet
from dmd2_worker.flow_matching import FlowMatchSchedule
from dmd2_worker.flow_sampling import flow_euler_sample

from pipelines import build_sana

PROMPTS = ["a cat on the mat", "the dog"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("sana")
    return build_sana(work / "sana", work / "work")


@pytest.fixture(scope="module")
def adapter(folder) -> SanaAdapter:
    return load_adapter(folder)


@pytest.fixture(scope="module")
def pipe(folder) -> SanaPipeline:
    return SanaPipeline.from_pretrained(folder, local_files_only=True)


def test_registry_picks_sana_and_its_flow_schedule(folder, adapter):
    assert family_of(folder) == "sana"
    assert isinstance(adapter, SanaAdapter)
    assert isinstance(adapter.schedule, FlowMatchSchedule) and adapter.schedule.shift == 3.0
    assert adapter.prediction_type == "flow"
    assert adapter.latent_shape == (4, 16, 16) and adapter.image_size == 32


def test_conditioning_is_the_pipelines_and_uncond_is_the_empty_prompt(adapter, pipe):
    cond = adapter.encode_prompts(PROMPTS)
    with torch.no_grad():  # what __call__ passes: its default complex human instruction
        embeds, mask, neg, neg_mask = pipe.encode_prompt(PROMPTS, True,
                                                         complex_human_instruction=COMPLEX_HUMAN_INSTRUCTION)
    assert cond.encoder_hidden_states.shape == (2, 300, 16) and cond.text_embeds.shape == (2, 300)
    assert torch.allclose(cond.encoder_hidden_states, embeds, atol=1e-6)
    assert torch.equal(cond.text_embeds, mask.float())  # the attention mask rides in the pooled slot
    assert 0 < float(cond.text_embeds.sum()) < cond.text_embeds.numel()  # padding is masked
    assert cond.time_ids is None
    un = adapter.uncond(2)
    assert torch.allclose(un.encoder_hidden_states, neg, atol=1e-6)
    assert torch.equal(un.text_embeds, neg_mask.float())


@pytest.mark.parametrize("guidance_scale", [1.0, 4.5])
def test_euler_sampling_matches_the_stock_pipeline(adapter, pipe, guidance_scale):
    """The teacher matches stock diffusers: same model, seed, prompts, steps and guidance, output_type latent."""
    ours = flow_euler_sample(adapter, PROMPTS, steps=12, guidance_scale=guidance_scale, seed=3)
    theirs = pipe(PROMPTS, num_inference_steps=12, guidance_scale=guidance_scale, height=32, width=32,
                  use_resolution_binning=False, output_type="latent",
                  generator=torch.Generator().manual_seed(3)).images
    assert ours.shape == theirs.shape == (2, 4, 16, 16)
    assert float((ours - theirs).abs().max()) < 1e-4, float((ours - theirs).abs().max())
    assert float(ours.abs().max()) > 0.1


def test_a_dpm_solver_flow_folder_samples_as_the_pipeline_with_flow_euler(folder, tmp_path):
    """Sana's own folders ship DPMSolverMultistepScheduler (flow_prediction, flow_shift): the adapter reads it as
    the flow schedule with shift = flow_shift, and its Euler sampler is the stock pipeline with a
    FlowMatchEulerDiscreteScheduler of that shift swapped in."""
    dpm = tmp_path / "dpm"
    shutil.copytree(folder, dpm)
    (dpm / "scheduler" / "scheduler_config.json").write_text(json.dumps(
        {"_class_name": "DPMSolverMultistepScheduler", "prediction_type": "flow_prediction", "use_flow_sigmas": True,
         "flow_shift": 2.5, "num_train_timesteps": 1000, "solver_order": 2, "algorithm_type": "dpmsolver++"}))
    adapter = load_adapter(dpm)
    assert adapter.schedule.shift == 2.5
    pipe = SanaPipeline.from_pretrained(dpm, local_files_only=True)
    pipe.scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=2.5)
    ours = flow_euler_sample(adapter, PROMPTS[:1], steps=6, guidance_scale=3.0, seed=1)
    theirs = pipe(PROMPTS[:1], num_inference_steps=6, guidance_scale=3.0, height=32, width=32,
                  use_resolution_binning=False, output_type="latent",
                  generator=torch.Generator().manual_seed(1)).images
    assert float((ours - theirs).abs().max()) < 1e-4


def test_vae_uses_the_scaling_factor_and_no_shift(adapter):
    images = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    lat = adapter.vae_encode(images)
    z = adapter.vae.encode(images).latent
    assert torch.allclose(lat, z * adapter.vae.config.scaling_factor, atol=1e-6)
    assert torch.allclose(adapter.vae_decode(lat), adapter.vae.decode(z).sample, atol=1e-5)


def test_transformer_net_is_the_adapters_prediction_and_has_features(adapter):
    net = SanaTransformerNet(adapter.transformer, adapter.schedule)
    assert net.feature_block == 0  # 2 blocks: the middle one, blocks // 2 - 1
    cond = adapter.encode_prompts(PROMPTS)
    x = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([999, 300])
    with torch.no_grad():
        assert torch.allclose(net(x, t, cond), adapter.predict(x, t, cond), atol=1e-6)
        direct = adapter.transformer(x, encoder_hidden_states=cond.encoder_hidden_states,
                                     encoder_attention_mask=cond.text_embeds,
                                     timestep=adapter.schedule.model_timestep(t), return_dict=False)[0]
        assert torch.allclose(net(x, t, cond), direct, atol=1e-6)
        unmasked = adapter.transformer(x, encoder_hidden_states=cond.encoder_hidden_states,
                                       timestep=adapter.schedule.model_timestep(t), return_dict=False)[0]
        assert float((unmasked - direct).abs().max()) > 1e-4  # the mask matters
    feats = net.features(x, t, cond)
    assert feats.shape == (2, net.feature_channels, net.feature_size, net.feature_size) == (2, 16, 16, 16)
    assert feats.requires_grad
    assert [k.split(".")[0] for k in net.state_dict()] == ["transformer"] * len(net.state_dict())


def test_a_non_flow_scheduler_is_one_line(folder, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    path = bad / "scheduler" / "scheduler_config.json"
    path.write_text(json.dumps({"_class_name": "DDIMScheduler"}))
    with pytest.raises(AdapterError, match=r"scheduler_config.json: _class_name 'DDIMScheduler' is not a flow-matching"):
        load_adapter(bad)
    path.write_text(json.dumps({"_class_name": "DPMSolverMultistepScheduler", "prediction_type": "flow_prediction"}))
    with pytest.raises(AdapterError, match=r"without use_flow_sigmas true"):
        load_adapter(bad)


# --- the roles on a Sana teacher -----------------------------------------------------------------------------------

def sana_recipe(tmp_path: Path, folder: Path, **overrides):
    from conftest import make_tiny_recipe
    from pipelines import write_images

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\nthe dog on a mat\nthe cat\n")
    images = write_images(tmp_path / "images", 5, size=40)
    values = dict(data__source="prompts", data__prompts={"file": str(prompts), "images": str(images)},
                  teacher__source="diffusers", teacher__path=str(folder), train__batch_size=4,
                  generator__lr=1e-3, fake_score__lr=1e-3, optim__warmup_steps=0, dmd__real_guidance_scale=4.5)
    values.update(overrides)
    return make_tiny_recipe(tmp_path / "run", **values)


def test_roles_use_the_flow_schedule_and_the_teacher_guides_the_velocity(folder, adapter, tmp_path):
    from dmd2_worker.local_loop import build_roles
    from dmd2_worker.roles.base import TensorStore

    recipe = sana_recipe(tmp_path, folder)  # generator steps [999, 499] (the tiny recipe's)
    ctx, roles = build_roles(recipe)
    for name in ("teacher", "generator", "fake_score"):
        assert isinstance(roles[name].schedule, FlowMatchSchedule), name
        assert isinstance(roles[name].net, SanaTransformerNet), name
    store = TensorStore()
    store.step = 0
    roles["generator"].run_op("generate", {"seed": 7, "batch_size": 4, "grad": False, "dmd": True}, store, ctx)
    assert store["cond_hidden"].shape == (4, 300, 16) and store["cond_pooled"].shape == (4, 300)
    assert "cond_time_ids" not in store
    # the draws, in the generator's order: prompts, k, z, one re-noise per step before k, t_dmd, noise
    g = torch.Generator().manual_seed(7)
    prompts = ["a cat", "the dog on a mat", "the cat"]
    index = torch.randint(0, 3, (4,), generator=g)
    k = int(torch.randint(0, 2, (1,), generator=g))
    z = torch.randn((4, 4, 16, 16), generator=g)
    cond = adapter.encode_prompts([prompts[i] for i in index.tolist()])
    assert torch.equal(store["cond_pooled"], cond.text_embeds)  # the attention mask
    s = adapter.schedule
    with torch.no_grad():
        x0 = z - adapter.predict(z, 999, cond)  # one step from pure noise: sigma(999) = 1, x0 = x - v
        if k == 1:  # backward simulation: re-noise in flow form to sigma(499) = 0.75, then step 1
            n1 = torch.randn((4, 4, 16, 16), generator=g)
            x = 0.25 * x0 + 0.75 * n1
            x0 = x - 0.75 * adapter.predict(x, 499, cond)
    assert torch.allclose(store["x_gen"], x0, atol=1e-4)
    t_dmd = torch.randint(20, 981, (4,), generator=g)  # dmd.min_t 0.02, max_t 0.98 of T = 1000
    noise = torch.randn((4, 4, 16, 16), generator=g)
    assert torch.equal(store["t_dmd"], t_dmd)
    sigma = s.sigma_of(t_dmd, noise)
    assert torch.allclose(store["x_t_dmd"], (1 - sigma) * store["x_gen"] + sigma * noise, atol=1e-6)

    roles["teacher"].run_op("predict_x0", {"guidance_scale": 4.5}, store, ctx)
    x_t = store["x_t_dmd"]
    with torch.no_grad():
        v_c = adapter.predict(x_t, t_dmd, cond)
        v_u = adapter.predict(x_t, t_dmd, adapter.uncond(4))
    assert store["x0_real"].dtype == torch.float32  # the DMD x0 = x_t - sigma v in float32
    assert torch.allclose(store["x0_real"], x_t - sigma * (v_u + 4.5 * (v_c - v_u)), atol=1e-4)
    roles["fake_score"].run_op("predict_x0", {}, store, ctx)
    assert torch.allclose(store["x0_fake"], x_t - sigma * v_c, atol=1e-4)  # starts as the teacher, unguided


def test_sana_training_steps_and_two_step_sampling(folder, adapter, tmp_path):
    """A 2-step backward simulation by hand: x0 = x - v at sigma 1, re-noise to sigma(499) = 0.75 with fresh
    noise, x0 = x - 0.75 v; training steps (DMD, fake score, GAN on the middle block's tokens) move the weights."""
    import math

    from safetensors.torch import load_file

    from dmd2_worker.local_loop import build_roles, train_step
    from dmd2_worker.roles.base import TensorStore

    recipe = sana_recipe(tmp_path, folder, ttur__ratio=2)
    ctx, roles = build_roles(recipe)
    before = {k: v.clone() for k, v in roles["generator"].net.state_dict().items()}
    metrics: dict[str, float] = {}
    for step in range(3):
        metrics.update(train_step(step, recipe, ctx))
    assert all(math.isfinite(v) for v in metrics.values()), metrics
    assert metrics["fake_score.loss_gan_d"] > 0 and metrics["discriminator.loss_gan_g"] > 0
    gen = roles["generator"]
    assert max(float((v - before[k]).abs().max()) for k, v in gen.net.state_dict().items()) > 1e-5

    out = tmp_path / "samples"
    store = TensorStore()
    gen.run_op("sample", {"seed": 0, "n": 2, "steps": 2, "classes": None, "out_dir": str(out),
                          "prompts": ["a cat", "the dog"]}, store, ctx)
    g = torch.Generator().manual_seed(0)
    z = torch.randn((2, 4, 16, 16), generator=g)
    cond = adapter.encode_prompts(["a cat", "the dog"])
    with torch.no_grad():
        x0 = z - gen.net(z, torch.full((2,), 999), cond)
        x = 0.25 * x0 + 0.75 * torch.randn((2, 4, 16, 16), generator=g)
        x0 = x - 0.75 * gen.net(x, torch.full((2,), 499), cond)
    saved = load_file(str(out / "samples.safetensors"))
    assert torch.allclose(saved["latents"], x0, atol=1e-4)
    assert store["samples"].shape == (2, 3, 32, 32) and float(store["samples"].abs().max()) <= 1.0


SANA_LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]  # self- and cross-attention projections


def test_a_lora_student_of_sana_trains_only_its_adapters(folder, tmp_path):
    import math

    from dmd2_worker.local_loop import build_roles, train_step
    from dmd2_worker.roles.common import network_state

    recipe = sana_recipe(tmp_path, folder, ttur__ratio=1,
                         generator__lora={"rank": 4, "alpha": 8, "target_modules": SANA_LORA_TARGETS})
    ctx, roles = build_roles(recipe)
    gen = roles["generator"]
    base = {k: v.clone() for k, v in gen.net.state_dict().items() if "lora_" not in k}
    trained = sum(p.numel() for p in gen.trained())
    assert 0 < trained < sum(p.numel() for p in gen.net.parameters()) // 4
    for step in range(2):
        metrics = train_step(step, recipe, ctx)
    assert all(math.isfinite(v) for v in metrics.values()), metrics
    assert all(torch.equal(v, base[k]) for k, v in gen.net.state_dict().items() if "lora_" not in k)
    saved = network_state(gen.net)
    assert saved and all("lora_" in k for k in saved)
    assert any(float(v.abs().max()) > 0 for k, v in saved.items() if "lora_B" in k)
