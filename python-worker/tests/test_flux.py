"""The Flux.1 adapter (adapters/flux.py) on tiny FluxPipeline folders (tests/pipelines.py build_flux), dev-like
(guidance embedding, dynamic shifting) and schnell-like: conditioning, packing and Euler sampling
(flow_sampling.py) against the stock pipeline."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import FluxPipeline

from dmd2_worker.adapters import family_of
from dmd2_worker.adapters.flux import FluxAdapter, pack, unpack
from dmd2_worker.flow_matching import FlowMatchSchedule, calculate_mu
from dmd2_worker.flow_sampling import flow_euler_sample

from pipelines import build_flux

PROMPTS = ["a cat on the mat", "the dog"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    work = tmp_path_factory.mktemp("flux")
    return {"dev": build_flux(work / "dev", work / "w-dev"),
            "schnell": build_flux(work / "schnell", work / "w-schnell", schnell=True)}


def test_registry_schedule_and_packing(folders):
    assert family_of(folders["dev"]) == family_of(folders["schnell"]) == "flux"
    dev = FluxAdapter.load(folders["dev"], latent_size=8)
    assert dev.latent_shape == (16, 8, 8) and dev.image_size == 16 and dev.guidance_kind == "embedded"
    # dynamic shifting: mu from the 4 x 4 = 16 image tokens
    assert isinstance(dev.schedule, FlowMatchSchedule)
    assert dev.schedule.mu == pytest.approx(calculate_mu(16, 256, 4096, 0.5, 1.15))
    schnell = FluxAdapter.load(folders["schnell"], latent_size=8)
    assert schnell.guidance_kind == "none" and schnell.schedule.mu is None and schnell.schedule.shift == 1.0
    x = torch.randn(2, 16, 8, 8)
    tokens = pack(x)
    assert tokens.shape == (2, 16, 64) and torch.equal(unpack(tokens, 8, 8), x)
    assert torch.equal(tokens[0, 0, :4], x[0, 0, :2, :2].flatten())  # a token is a 2x2 patch, channels first
    with pytest.raises(ValueError, match="Flux takes no unconditional input"):
        dev.uncond(1)


def test_conditioning_is_the_pipelines(folders):
    adapter = FluxAdapter.load(folders["dev"], latent_size=8)
    pipe = FluxPipeline.from_pretrained(folders["dev"], local_files_only=True)
    cond = adapter.encode_prompts(PROMPTS)
    with torch.no_grad():
        embeds, pooled, text_ids = pipe.encode_prompt(PROMPTS, None)
    assert cond.encoder_hidden_states.shape == (2, 512, 48) and cond.text_embeds.shape == (2, 16)
    assert torch.allclose(cond.encoder_hidden_states, embeds, atol=1e-6)
    assert torch.allclose(cond.text_embeds, pooled, atol=1e-6)
    assert float(text_ids.abs().max()) == 0.0


@pytest.mark.parametrize("variant,guidance", [("dev", 3.5), ("schnell", 0.0)])
def test_euler_sampling_matches_the_stock_pipeline(folders, variant, guidance):
    """The teacher matches stock diffusers: same model, seed, prompts and steps; dev with its embedded guidance."""
    adapter = FluxAdapter.load(folders[variant], latent_size=8)
    pipe = FluxPipeline.from_pretrained(folders[variant], local_files_only=True)
    ours = flow_euler_sample(adapter, PROMPTS, steps=6, guidance_scale=guidance, seed=4)
    packed = pipe(PROMPTS, num_inference_steps=6, guidance_scale=guidance, height=16, width=16,
                  output_type="latent", generator=torch.Generator().manual_seed(4)).images
    theirs = unpack(packed, 8, 8)  # the pipeline's latent output is packed
    assert ours.shape == theirs.shape == (2, 16, 8, 8)
    assert float((ours - theirs).abs().max()) < 1e-4, float((ours - theirs).abs().max())
    assert float(ours.abs().max()) > 0.1
    if variant == "dev":  # the embedded guidance matters: another scale gives other latents
        other = flow_euler_sample(adapter, PROMPTS, steps=6, guidance_scale=1.0, seed=4)
        assert float((other - ours).abs().max()) > 1e-3


# --- the roles on a Flux teacher ----------------------------------------------------------------------------------

def test_roles_embed_the_guidance_and_the_teacher_applies_no_cfg(folders, tmp_path):
    from dmd2_worker.adapters.flux import FluxTransformerNet
    from dmd2_worker.local_loop import build_roles
    from dmd2_worker.roles.base import TensorStore
    from test_sd3 import sd3_recipe

    adapter = FluxAdapter.load(folders["dev"])  # the latent side from the VAE's sample_size: 16 px / 2 = 8
    assert adapter.latent_shape == (16, 8, 8)
    recipe = sd3_recipe(tmp_path, folders["dev"], dmd__real_guidance_scale=3.5, gan__enabled=False,
                        data__prompts={"file": str(tmp_path / "prompts.txt"), "images": None})
    ctx, roles = build_roles(recipe)
    for name in ("teacher", "generator", "fake_score"):
        assert isinstance(roles[name].net, FluxTransformerNet), name
        assert roles[name].schedule.mu == pytest.approx(adapter.schedule.mu), name
    assert roles["generator"].net.guidance == roles["fake_score"].net.guidance == 3.5
    store = TensorStore()
    store.step = 0
    roles["generator"].run_op("generate", {"seed": 5, "batch_size": 2, "grad": False, "dmd": True}, store, ctx)
    assert store["cond_hidden"].shape == (2, 512, 48) and store["cond_pooled"].shape == (2, 16)
    g = torch.Generator().manual_seed(5)
    prompts = ["a cat", "the dog on a mat", "the cat"]
    index = torch.randint(0, 3, (2,), generator=g)
    k = int(torch.randint(0, 2, (1,), generator=g))
    z = torch.randn((2, 16, 8, 8), generator=g)
    cond = adapter.encode_prompts([prompts[i] for i in index.tolist()])
    with torch.no_grad():
        x0 = z - adapter.predict(z, 999, cond, guidance=3.5)  # sigma(999) = 1
        if k == 1:
            s = float(adapter.schedule.sigma_of(torch.tensor(499)))
            x = (1 - s) * x0 + s * torch.randn((2, 16, 8, 8), generator=g)
            x0 = x - s * adapter.predict(x, 499, cond, guidance=3.5)
    assert torch.allclose(store["x_gen"], x0, atol=1e-4)
    roles["teacher"].run_op("predict_x0", {"guidance_scale": 3.5}, store, ctx)
    x_t, t = store["x_t_dmd"], store["t_dmd"]
    sigma = adapter.schedule.sigma_of(t, x_t)
    with torch.no_grad():
        v = adapter.predict(x_t, t, cond, guidance=3.5)  # one conditional call, the scale embedded
    assert torch.allclose(store["x0_real"], x_t - sigma * v, atol=1e-4)
    roles["fake_score"].run_op("predict_x0", {}, store, ctx)
    assert torch.allclose(store["x0_fake"], x_t - sigma * v, atol=1e-4)  # starts as the teacher


def test_schnell_teacher_takes_no_guidance(folders, tmp_path):
    from dmd2_worker.local_loop import build_roles
    from dmd2_worker.roles.base import TensorStore
    from test_sd3 import sd3_recipe

    recipe = sd3_recipe(tmp_path, folders["schnell"], dmd__real_guidance_scale=1.0, gan__enabled=False)
    ctx, roles = build_roles(recipe)
    assert roles["generator"].net.guidance_embedded is False
    store = TensorStore()
    roles["generator"].run_op("generate", {"seed": 0, "batch_size": 2, "grad": False, "dmd": True}, store, ctx)
    roles["teacher"].run_op("predict_x0", {"guidance_scale": 1.0}, store, ctx)
    assert torch.isfinite(store["x0_real"]).all()
    with pytest.raises(ValueError, match=r"^teacher.predict_x0: this teacher takes no guidance \(Flux.1-schnell\): "
                                         r"guidance_scale must be 1 \(set dmd.real_guidance_scale: 1\), got 2.0$"):
        roles["teacher"].run_op("predict_x0", {"guidance_scale": 2.0}, store, ctx)
