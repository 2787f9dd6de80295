"""generator.ema_decay: the EMA of the generator's weights moves by (1 - decay) of the gap after each update,
sampling uses it, checkpoints hold it beside the raw weights and restore brings both back."""
from __future__ import annotations

import dataclasses

import torch
from safetensors.torch import load_file

from dmd2_worker.local_loop import build_roles, train_step
from dmd2_worker.roles.base import TensorStore


def _recipe(tiny_recipe, decay: float):
    return dataclasses.replace(tiny_recipe, generator=dataclasses.replace(tiny_recipe.generator, ema_decay=decay))


def test_ema_follows_the_weights_and_sampling_uses_it(tiny_recipe, teacher_dir, tmp_path):
    recipe = _recipe(tiny_recipe, 0.75)
    ctx, roles = build_roles(recipe)
    gen = roles["generator"]
    before = [p.detach().clone() for p in gen.net.parameters()]
    train_step(0, recipe, ctx)  # step 0 is a generator step
    after = [p.detach().clone() for p in gen.net.parameters()]
    assert any(not torch.equal(a, b) for a, b in zip(after, before)), "the generator did not train"
    for e, a, b in zip(gen.ema, after, before):
        assert torch.allclose(e, 0.75 * b + 0.25 * a, atol=1e-7)

    def sample(out):
        s = TensorStore()
        s.step = 1
        gen.run_op("sample", {"seed": 3, "n": 4, "steps": 1, "classes": None, "out_dir": str(out)}, s, ctx)
        return s["samples"]

    with_ema = sample(tmp_path / "a")
    assert all(torch.equal(p, a) for p, a in zip(gen.net.parameters(), after)), "sampling left the EMA weights in"
    with torch.no_grad():
        for p, e in zip(gen.net.parameters(), gen.ema):
            p.copy_(e)
    gen.ema = None  # sampling with the EMA's values as the raw weights must give the same images
    assert torch.allclose(sample(tmp_path / "b"), with_ema, atol=1e-6)


def test_ema_is_saved_and_restored(tiny_recipe, teacher_dir, tmp_path):
    recipe = _recipe(tiny_recipe, 0.9)
    ctx, roles = build_roles(recipe)
    gen = roles["generator"]
    train_step(0, recipe, ctx)
    files = {p.name for p in gen.save(tmp_path)}
    assert {"generator.safetensors", "generator.ema.safetensors"} <= files
    ema_file = load_file(tmp_path / "generator.ema.safetensors")
    raw_file = load_file(tmp_path / "generator.safetensors")
    names = [n for n, _ in gen.net.named_parameters()]
    for n, e, p in zip(names, gen.ema, gen.net.parameters()):
        assert torch.equal(ema_file[n], e) and torch.equal(raw_file[n], p.detach())

    ctx2, roles2 = build_roles(recipe)
    roles2["generator"].restore(tmp_path)
    for a, b in zip(roles2["generator"].ema, gen.ema):
        assert torch.equal(a, b)
    for a, b in zip(roles2["generator"].net.parameters(), gen.net.parameters()):
        assert torch.equal(a, b)


def test_no_ema_by_default(tiny_recipe, teacher_dir, tmp_path):
    ctx, roles = build_roles(tiny_recipe)
    assert roles["generator"].ema is None
    assert {p.name for p in roles["generator"].save(tmp_path)} == {"generator.safetensors", "generator.optim.safetensors", "generator.optim.json"}
