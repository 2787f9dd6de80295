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
