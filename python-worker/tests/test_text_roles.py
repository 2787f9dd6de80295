"""Text-to-image distillation in the roles (docs/adapters.md §6): the prompts and captions files, the latent cache,
UNet2DConditionNet's state-dict layout and interface, and the roles with tiny SD-1.5-like and SDXL-like pipelines
(tests/pipelines.py) as teachers: the text step tensors, guidance with the family's unconditional input, whole-batch
prompt draws for replicas, training steps and sampling."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import make_tiny_recipe
from dmd2_worker.adapters import Conditioning, load_adapter
from dmd2_worker.latent_cache import latent_cache, load_image
from dmd2_worker.local_loop import build_roles, train_step
from dmd2_worker.models.unet2d_condition import UNet2DConditionNet
from dmd2_worker.placement import Shard
from dmd2_worker.prompts import PromptsError, read_captions, read_prompts_file
from dmd2_worker.roles.base import TensorStore
from pipelines import MAX_LEN, build_sd15, build_sdxl, write_images

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPTS = "# training prompts\na cat\n\n  the dog on a mat  \n#a comment\nthe cat\n"


# --- prompts and captions files --------------------------------------------------------------------------------

def test_prompts_file_skips_blank_lines_and_comments(tmp_path):
    f = tmp_path / "p.txt"
    f.write_bytes(b"\xef\xbb\xbf" + PROMPTS.replace("\n", "\r\n").encode())  # a BOM and Windows line ends
    assert read_prompts_file(f) == ["a cat", "the dog on a mat", "the cat"]


def test_prompts_file_errors_name_the_key_and_the_file(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing here\n\n   \n")
    with pytest.raises(PromptsError, match=rf"^data\.prompts\.file: {empty} holds no prompts \(one prompt a line"):
        read_prompts_file(empty)
    with pytest.raises(PromptsError, match=rf"^data\.prompts\.file: {tmp_path / 'nope.txt'} does not exist"):
        read_prompts_file(tmp_path / "nope.txt")
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("a cat\ncaf\xe9\n".encode("latin-1"))
    with pytest.raises(PromptsError, match=r"latin1.txt:2: not UTF-8 \(save the file as UTF-8\)$"):
        read_prompts_file(latin)
    assert PromptsError.__mro__[1].__name__ == "DataSourceError"


def test_captions(tmp_path):
    f = tmp_path / "captions.txt"
    f.write_text("# name<TAB>caption\na.png\ta red cat\n\nb.png\t\n")
    assert read_captions(f, ["a.png", "b.png", "c.png"]) == {"a.png": "a red cat", "b.png": ""}
    f.write_text("a.png a red cat\n")
    with pytest.raises(PromptsError, match=r"captions.txt:1: expected '<file name><TAB><caption>'"):
        read_captions(f, ["a.png"])
    f.write_text("a.png\tone\nz.png\ttwo\n")
    with pytest.raises(PromptsError, match=r"captions.txt:2: 'z.png' is not an image of the folder"):
        read_captions(f, ["a.png"])
    f.write_text("a.png\tone\na.png\ttwo\n")
    with pytest.raises(PromptsError, match=r"captions.txt:2: 'a.png' has a caption already"):
        read_captions(f, ["a.png"])


# --- pipelines and recipes ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pipelines(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("t2i")
    return {"sd15": build_sd15(root / "sd15", root / "work-sd15"), "sdxl": build_sdxl(root / "sdxl", root / "work-sdxl")}


def text_recipe(tmp_path: Path, folder: Path, images: Path | None = None, **overrides):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(PROMPTS)
    if images is None:
        images = write_images(tmp_path / "images", 5, size=20)
    values = dict(data__source="prompts", data__prompts={"file": str(prompts), "images": str(images)},
                  teacher__source="diffusers", teacher__path=str(folder), train__batch_size=4,
                  generator__lr=1e-3, fake_score__lr=1e-3, optim__warmup_steps=0)
    values.update(overrides)
    return make_tiny_recipe(tmp_path / "run", **values)


# --- the network -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_unet2d_condition_net_state_dict_and_interface(pipelines, family):
    adapter = load_adapter(pipelines[family])
    net = UNet2DConditionNet(adapter.unet)
    own = adapter.unet.state_dict()
    assert set(net.state_dict()) == {f"unet.{k}" for k in own}  # dmd2 export strips "unet."
    assert (net.in_channels, net.image_size, net.family == "sdxl") == (4, 8, family == "sdxl")
    assert (net.feature_channels, net.feature_size) == (64, 4)
    cond = adapter.encode_prompts(["a cat", "the dog"])
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([999, 500])
    assert torch.equal(net(x, t, cond), adapter.predict(x, t, cond))
    assert net.features(x, t, cond).shape == (2, 64, 4, 4)
    with pytest.raises(TypeError, match="needs a Conditioning, got Tensor"):
        net(x, t, torch.zeros(2, dtype=torch.long))


# --- the latent cache ---------------------------------------------------------------------------------------------

def test_latent_cache_is_made_once_reused_and_remade_when_the_folder_changes(pipelines, tmp_path):
    folder = pipelines["sd15"]
    images = write_images(tmp_path / "images", 3, size=20)
    run = tmp_path / "run"
    made = []

    def make():
        made.append(1)
        return load_adapter(folder)

    logs: list[str] = []
    cache = latent_cache(run, images, folder, 16, make, logs.append)
    assert cache.built and len(made) == 1 and len(cache) == 3
    assert cache.latents.shape == (3, 4, 8, 8) and cache.latents.dtype == torch.float32
    assert any("3/3 images encoded" in line for line in logs)
    # the posterior mean of each image, centre-cropped and resized to the teacher's 16x16, scaled
    adapter = load_adapter(folder)
    pixels = torch.from_numpy(load_image(images / "1.png", 16).copy()).permute(2, 0, 1)[None].float() / 127.5 - 1
    assert torch.allclose(cache.latents[1:2], adapter.vae_encode(pixels), atol=1e-5)
    # captions: "0.png" and "1.png" have one each (tests/pipelines.py), the last image the empty prompt
    want = adapter.encode_prompts(["a cat", "the dog", ""])
    got = cache.captions.rows(cache.caption)
    assert torch.allclose(got.encoder_hidden_states, want.encoder_hidden_states, atol=1e-6)
    index = json.loads((run / "latents" / "index.json").read_text())
    assert index["num_images"] == 3 and index["num_captions"] == 3
    assert [f[0] for f in index["key"]["files"]] == ["0.png", "1.png", "2.png"]

    again = latent_cache(run, images, folder, 16, make, logs.append)
    assert not again.built and len(made) == 1 and torch.equal(again.latents, cache.latents)

    write_images(images, 1, size=20, seed=9, captions=False)  # 0.png replaced (the index records size and mtime)
    os.utime(images / "0.png", ns=(time.time_ns(), time.time_ns() + 10**9))
    remade = latent_cache(run, images, folder, 16, make, logs.append)
    assert remade.built and len(made) == 2 and not torch.equal(remade.latents[0], cache.latents[0])
    assert torch.equal(remade.latents[1:], cache.latents[1:])

    (images / "captions.txt").write_text("2.png\ta mat\n")  # captions change: remade, the others get ""
    remade = latent_cache(run, images, folder, 16, make, logs.append)
    assert remade.built and len(made) == 3 and remade.captions.batch_size == 2
    write_images(tmp_path / "more", 4, size=20)
    (images / "3.png").write_bytes((tmp_path / "more" / "3.png").read_bytes())  # an image added
    remade = latent_cache(run, images, folder, 16, make, logs.append)
    assert remade.built and len(remade) == 4
    assert not list(run.glob(".latents.*"))  # no temporary folder left behind


def test_latent_cache_errors_name_the_key(pipelines, tmp_path):
    (tmp_path / "none").mkdir()
    with pytest.raises(PromptsError, match=r"^data\.prompts\.images: .*none holds no images"):
        latent_cache(tmp_path / "run", tmp_path / "none", pipelines["sd15"], 16, lambda: None, print)
    bad = write_images(tmp_path / "bad", 2, size=20)
    (bad / "1.png").write_bytes(b"not a png")
    with pytest.raises(PromptsError, match=r"^data\.prompts\.images: .*1.png: cannot read image"):
        latent_cache(tmp_path / "run", bad, pipelines["sd15"], 16, lambda: load_adapter(pipelines["sd15"]), print)


# --- the roles ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_generate_writes_the_text_step_tensors_and_the_teacher_guides_with_uncond(pipelines, tmp_path, family):
    recipe = text_recipe(tmp_path, pipelines[family], dmd__real_guidance_scale=1.75)
    ctx, roles = build_roles(recipe)
    store = TensorStore()
    store.step = 0
    roles["generator"].run_op("generate", {"seed": 7, "batch_size": 4, "grad": False, "dmd": True}, store, ctx)
    width = 32 if family == "sd15" else 80
    assert "cond" not in store
    assert store["cond_hidden"].shape == (4, MAX_LEN, width) and store["cond_hidden"].dtype == torch.float32
    assert store["x_gen"].shape == store["x_t_dmd"].shape == (4, 4, 8, 8)  # latents
    if family == "sdxl":
        assert store["cond_pooled"].shape == (4, 24) and store["cond_time_ids"].shape == (4, 6)
        assert store["cond_time_ids"][0].tolist() == [16, 16, 0, 0, 16, 16]
    else:
        assert "cond_pooled" not in store and "cond_time_ids" not in store
    # the prompts: drawn uniformly from the file with the op's seed (first draw), encoded once
    prompts = ["a cat", "the dog on a mat", "the cat"]
    index = torch.randint(0, 3, (4,), generator=torch.Generator().manual_seed(7))
    adapter = load_adapter(pipelines[family])
    want = adapter.encode_prompts([prompts[i] for i in index.tolist()])
    assert torch.allclose(store["cond_hidden"], want.encoder_hidden_states, atol=1e-6)

    roles["teacher"].run_op("predict_x0", {"guidance_scale": 1.75}, store, ctx)
    x_t, t = store["x_t_dmd"], store["t_dmd"]
    with torch.no_grad():
        out_c = adapter.predict(x_t, t, want)
        out_u = adapter.predict(x_t, t, adapter.uncond(4))
    expected = adapter.to_x0(out_u + 1.75 * (out_c - out_u), x_t, t)
    assert torch.allclose(store["x0_real"], expected, atol=1e-5)
    roles["fake_score"].run_op("predict_x0", {}, store, ctx)
    assert torch.allclose(store["x0_fake"], adapter.to_x0(out_c, x_t, t), atol=1e-5)  # starts as the teacher, unguided


def test_replicas_draw_the_whole_batch_of_prompts_and_keep_their_rows(pipelines, tmp_path):
    recipe = text_recipe(tmp_path, pipelines["sd15"])
    ctx, roles = build_roles(recipe)
    args = {"seed": 11, "batch_size": 4, "grad": False, "dmd": True}
    whole = TensorStore()
    roles["generator"].run_op("generate", args, whole, ctx)
    for rank in range(2):
        part = TensorStore()
        roles["generator"].run_op("generate", args, part, dataclasses.replace(ctx, shard=Shard(rank, 2)))
        for name in ("cond_hidden", "x_gen", "t_dmd", "x_t_dmd"):
            # to rounding: a random UNet's x0 at t=999 is ~20 in size, and batch size changes the summation order
            want = whole[name][rank * 2:(rank + 1) * 2].float()
            assert torch.allclose(part[name].float(), want, rtol=1e-4, atol=1e-4), name


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_training_steps_move_the_generator_and_sample_decodes_pixels(pipelines, tmp_path, family):
    recipe = text_recipe(tmp_path, pipelines[family], dmd__real_guidance_scale=2.0, ttur__ratio=2)
    ctx, roles = build_roles(recipe)
    assert (Path(recipe.run_dir) / "latents" / "index.json").is_file()
    before = {k: v.clone() for k, v in roles["generator"].net.state_dict().items()}
    fake_before = {k: v.clone() for k, v in roles["fake_score"].net.state_dict().items()}
    metrics: dict[str, float] = {}
    for step in range(3):
        metrics.update(train_step(step, recipe, ctx))
    assert all(math.isfinite(v) for v in metrics.values()), metrics
    assert metrics["fake_score.loss_gan_d"] > 0 and metrics["discriminator.loss_gan_g"] > 0
    moved = max(float((v - before[k]).abs().max()) for k, v in roles["generator"].net.state_dict().items())
    assert moved > 1e-5
    assert any(not torch.equal(v, fake_before[k]) for k, v in roles["fake_score"].net.state_dict().items())

    out = tmp_path / "samples"
    store = TensorStore()
    roles["generator"].run_op("sample", {"seed": 0, "n": 3, "steps": 1, "classes": None, "out_dir": str(out),
                                         "prompts": ["a cat", "the dog"]}, store, ctx)
    assert store["samples"].shape == (3, 3, 16, 16)  # VAE-decoded pixels
    assert float(store["samples"].abs().max()) <= 1.0
    assert (out / "prompts.txt").read_text().splitlines() == ["a cat", "the dog", "a cat"]
    saved = load_file(str(out / "samples.safetensors"))
    assert saved["latents"].shape == (3, 4, 8, 8) and saved["labels"].tolist() == [0, 1, 0]
    assert len(list((out / "images").glob("*.png"))) == 3
    store = TensorStore()  # no prompts: the recipe's prompts file, in order
    roles["generator"].run_op("sample", {"seed": 0, "n": 2, "steps": 1, "classes": None, "out_dir": str(out)}, store, ctx)
    assert (out / "prompts.txt").read_text().splitlines() == ["a cat", "the dog on a mat"]
    with pytest.raises(ValueError, match="conditioned on text: give 'prompts', not 'classes'"):
        roles["generator"].run_op("sample", {"seed": 0, "n": 2, "steps": 1, "classes": [1], "out_dir": str(out)},
                                  TensorStore(), ctx)


def test_text_recipe_checks(pipelines, tmp_path):
    from dmd2_worker.config import RecipeError

    with pytest.raises(RecipeError, match=r"data\.prompts\.images: required when gan\.enabled is true"):
        text_recipe(tmp_path, pipelines["sd15"], data__prompts={"file": "p.txt", "images": None})
    with pytest.raises(RecipeError, match=r"data\.prompts\.file: required when data\.source is 'prompts'"):
        text_recipe(tmp_path, pipelines["sd15"], data__prompts={"file": None, "images": None}, gan__enabled=False)
    # a text-to-image teacher with class-label data, and prompts with a UNet2DModel teacher: one line each
    recipe = make_tiny_recipe(tmp_path / "r1", teacher__source="diffusers", teacher__path=str(pipelines["sd15"]))
    with pytest.raises(ValueError, match=r"is a text-to-image \(sd15\) pipeline: set data.source: prompts"):
        build_roles(recipe)
    ctx, roles = build_roles(text_recipe(tmp_path, pipelines["sdxl"], gan__enabled=False))
    assert roles["fake_score"].latents is None and not (Path(ctx.run_dir) / "latents").exists()
