"""generator.lora (docs/adapters.md §7) wired into the generator role: only the adapters train (the frozen copy of
the teacher stays bit for bit), the optimizer and the EMA see only them, checkpoints hold only them and restore
brings the same sampler back; the recipe's LoRA keys are checked."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import make_tiny_recipe
from dmd2_worker.config import RecipeError, lora_spec, parse_recipe, recipe_to_dict
from dmd2_worker.local_loop import build_roles, train_step
from dmd2_worker.roles.base import TensorStore
from pipelines import build_sd15, write_images

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LORA = {"rank": 4, "alpha": 8, "target_modules": ["to_q", "to_k", "to_v", "to_out.0", "conv1"]}


@pytest.fixture(scope="module")
def sd15(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lora-sd15")
    return build_sd15(root / "sd15", root / "work")


def lora_recipe(tmp_path: Path, folder: Path, **overrides):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\nthe dog on a mat\n")
    values = dict(data__source="prompts",
                  data__prompts={"file": str(prompts), "images": str(write_images(tmp_path / "images", 4, size=20))},
                  teacher__source="diffusers", teacher__path=str(folder), train__batch_size=2, generator__lr=1e-2,
                  fake_score__lr=1e-3, optim__warmup_steps=0, ttur__ratio=2, generator__lora=dict(LORA),
                  generator__ema_decay=0.5)
    values.update(overrides)
    return make_tiny_recipe(tmp_path / "run", **values)


def sample(gen, ctx, out: Path) -> torch.Tensor:
    store = TensorStore()
    gen.run_op("sample", {"seed": 1, "n": 2, "steps": 1, "classes": None, "out_dir": str(out),
                          "prompts": ["a cat", "the dog"]}, store, ctx)
    return store["samples"]


def test_only_the_adapters_train_and_checkpoints_hold_only_them(sd15, tmp_path):
    recipe = lora_recipe(tmp_path, sd15)
    ctx, roles = build_roles(recipe)
    gen = roles["generator"]
    named = dict(gen.net.named_parameters())
    trained = {n for n, p in named.items() if p.requires_grad}
    assert trained and all(".lora_A." in n or ".lora_B." in n for n in trained)
    optimized = {id(p) for group in gen.optimizer.param_groups for p in group["params"]}
    assert optimized == {id(named[n]) for n in trained}
    assert len(gen.ema) == len(trained)
    base = {n: p.detach().clone() for n, p in named.items() if n not in trained}

    metrics: dict[str, float] = {}
    for step in range(3):  # ttur 2: steps 0 and 2 update the generator
        metrics.update(train_step(step, recipe, ctx))
    assert all(math.isfinite(v) for v in metrics.values()), metrics
    assert all(torch.equal(p.detach(), base[n]) for n, p in gen.net.named_parameters() if n in base), \
        "a frozen base weight changed"
    b_moved = max(float(p.detach().abs().max()) for n, p in gen.net.named_parameters() if ".lora_B." in n)
    assert b_moved > 1e-4, "lora_B starts at zero and must have moved"

    (tmp_path / "ckpt").mkdir()
    files = {p.name for p in gen.save(tmp_path / "ckpt")}
    assert {"generator.safetensors", "generator.ema.safetensors"} <= files
    for name in ("generator.safetensors", "generator.ema.safetensors"):
        saved = load_file(str(tmp_path / "ckpt" / name))
        assert set(saved) == trained, name
    with_ema = sample(gen, ctx, tmp_path / "a")

    ctx2, roles2 = build_roles(recipe)  # a fresh LoRA student from the teacher, then the checkpoint
    roles2["generator"].restore(tmp_path / "ckpt")
    assert torch.allclose(sample(roles2["generator"], ctx2, tmp_path / "b"), with_ema, atol=1e-5)
    for e, f in zip(roles2["generator"].ema, gen.ema):
        assert torch.equal(e, f)


def test_the_whole_network_trains_without_lora(sd15, tmp_path):
    recipe = lora_recipe(tmp_path, sd15, generator__lora={"rank": None, "alpha": None, "target_modules": None})
    assert lora_spec(recipe) is None
    ctx, roles = build_roles(recipe)
    gen = roles["generator"]
    assert all(p.requires_grad for p in gen.net.parameters())
    assert not any(".lora_" in n for n, _ in gen.net.named_parameters())


def test_lora_recipe_keys_are_checked(tmp_path, sd15):
    obj = recipe_to_dict(lora_recipe(tmp_path, sd15))

    def problems(lora=None, **top):
        o = {**obj, "generator": {**obj["generator"], "lora": lora}, **top}
        with pytest.raises(RecipeError) as e:
            parse_recipe(o)
        return e.value.problems

    assert problems({"rank": 0, "alpha": None, "target_modules": None}) == [
        "generator.lora.rank: must be an integer >= 1, got 0"]
    assert problems({"rank": None, "alpha": 4.0, "target_modules": None}) == [
        "generator.lora.rank: required when generator.lora.alpha or target_modules is set (e.g. rank: 64)"]
    assert problems(dict(LORA), teacher={**obj["teacher"], "source": "builtin", "path": None})[-1].startswith(
        "generator.lora: LoRA adapts a diffusers UNet")
    spec = lora_spec(parse_recipe(obj))
    assert (spec.rank, spec.alpha, spec.target_modules) == (4, 8.0, ("to_q", "to_k", "to_v", "to_out.0", "conv1"))
