"""roles/: every op of docs/protocol.md §4 on the tiny recipe: names, shapes, dtypes, RNG order, errors, state."""
from __future__ import annotations

import dataclasses

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dmd2_worker.diffusion import dmd_timestep_range
from dmd2_worker.local_loop import build_roles
from dmd2_worker.losses import gan_generator_loss
from dmd2_worker.roles import ROLE_CLASSES, check_fault, make_role
from dmd2_worker.roles.base import TensorStore, WorkerContext

B = 8
IMG = (1, 8, 8)


@pytest.fixture
def setup(tiny_recipe, teacher_dir):
    ctx, roles = build_roles(tiny_recipe)
    return ctx, roles


def store_at(step: int, **tensors) -> TensorStore:
    s = TensorStore(tensors)
    s.step = step
    return s


def generate(ctx, roles, store, seed=11, grad=True, dmd=True, batch=B):
    return roles["generator"].run_op("generate", {"seed": seed, "batch_size": batch, "grad": grad, "dmd": dmd}, store, ctx)


def test_registry():
    assert set(ROLE_CLASSES) == {"teacher", "generator", "fake_score", "discriminator"}
    assert make_role("fake_score").name == "fake_score"
    with pytest.raises(ValueError, match="unknown role 'critic'"):
        make_role("critic")


def test_setup_replies(tiny_recipe, teacher_dir):
    ctx = WorkerContext(worker="all", recipe=tiny_recipe, run_dir=Path(tiny_recipe.run_dir), device=torch.device("cpu"))
    for name in ("teacher", "generator", "fake_score", "discriminator"):
        ctx.roles[name] = make_role(name)
    with pytest.raises(ValueError, match="fake_score role set up first"):
        ctx.roles["discriminator"].setup({"role": "discriminator", "teacher_dir": None}, ctx)
    rt = ctx.roles["teacher"].setup({"role": "teacher", "teacher_dir": None}, ctx)
    assert rt["teacher_dir"] == str(ctx.run_dir / "teacher") and rt["params"] > 0
    with pytest.raises(ValueError, match="teacher_dir"):
        ctx.roles["generator"].setup({"role": "generator", "teacher_dir": None}, ctx)
    rg = ctx.roles["generator"].setup({"role": "generator", "teacher_dir": rt["teacher_dir"]}, ctx)
    rf = ctx.roles["fake_score"].setup({"role": "fake_score", "teacher_dir": rt["teacher_dir"]}, ctx)
    rd = ctx.roles["discriminator"].setup({"role": "discriminator", "teacher_dir": None}, ctx)
    assert rg["params"] == rf["params"] == rt["params"]
    assert 0 < rd["params"] < rf["params"]
    groups = ctx.roles["fake_score"].optimizer.param_groups
    assert len(groups) == 2 and groups[1]["params"] == list(ctx.roles["discriminator"].head.parameters())
    with pytest.raises(ValueError, match="already set up"):
        ctx.roles["discriminator"].setup({"role": "discriminator", "teacher_dir": None}, ctx)


def test_generate_outputs_and_rng_order(setup):
    ctx, roles = setup
    store = store_at(0)
    metrics = generate(ctx, roles, store, seed=11)
    assert set(metrics) == {"gen_k"}
    assert set(store) == {"cond", "x_gen", "t_dmd", "x_t_dmd"}
    assert store["cond"].dtype == torch.int64 and store["cond"].shape == (B,)
    assert store["x_gen"].dtype == torch.float32 and store["x_gen"].shape == (B, *IMG)
    assert not store["x_gen"].requires_grad
    assert store["t_dmd"].dtype == torch.int64 and store["t_dmd"].shape == (B,)
    lo, hi = dmd_timestep_range(0.02, 0.98, 1000)
    assert lo <= int(store["t_dmd"].min()) and int(store["t_dmd"].max()) <= hi
    assert store["x_t_dmd"].dtype == torch.float32 and store["x_t_dmd"].shape == (B, *IMG)

    # the documented draw order: cond, k, z, re-noise noise per step before k, then t_dmd, noise
    gen = roles["generator"]
    g = torch.Generator().manual_seed(11)
    cond = torch.randint(0, 4, (B,), generator=g)
    k = int(torch.randint(0, 2, (1,), generator=g))
    assert metrics["gen_k"] == float(k)
    x = torch.randn(B, *IMG, generator=g)
    taus = [999, 499]
    with torch.no_grad():
        for i in range(k):
            x0 = gen.G(x, torch.full((B,), taus[i]), cond)
            x = gen.schedule.add_noise(x0, torch.full((B,), taus[i + 1]), torch.randn(B, *IMG, generator=g))
        x_gen = gen.G(x, torch.full((B,), taus[k]), cond)
    t_dmd = torch.randint(lo, hi + 1, (B,), generator=g)
    x_t = gen.schedule.add_noise(x_gen, t_dmd, torch.randn(B, *IMG, generator=g))
    assert torch.equal(store["cond"], cond)
    assert torch.allclose(store["x_gen"], x_gen, atol=1e-6)
    assert torch.equal(store["t_dmd"], t_dmd)
    assert torch.allclose(store["x_t_dmd"], x_t, atol=1e-6)


def test_generate_draws_both_steps_and_without_dmd_only_cond_and_x_gen(setup):
    ctx, roles = setup
    ks = set()
    for seed in range(12):
        store = store_at(seed)
        ks.add(generate(ctx, roles, store, seed=seed, grad=False, dmd=False)["gen_k"])
        assert set(store) == {"cond", "x_gen"}
    assert ks == {0.0, 1.0}
    assert roles["generator"].graph is None


def test_generate_last_step_only_trains_the_final_output(setup):
    """generator.last_step_only: every generate runs all N steps (k = N - 1) and the draws after k stay as they
    were, so x_gen is the seed's k = N - 1 output whatever k the seed draws."""
    ctx, roles = setup
    gen = roles["generator"]
    full = {}
    for seed in range(12):  # with the default, k varies: keep the stores of the seeds that drew k = 1
        store = store_at(seed)
        if generate(ctx, roles, store, seed=seed, grad=False, dmd=False)["gen_k"] == 1.0:
            full[seed] = store["x_gen"]
    assert full and len(full) < 12
    gen.recipe = dataclasses.replace(gen.recipe, generator=dataclasses.replace(gen.recipe.generator, last_step_only=True))
    try:
        for seed in range(12):
            store = store_at(seed)
            assert generate(ctx, roles, store, seed=seed, grad=False, dmd=False)["gen_k"] == 1.0
            if seed in full:
                assert torch.equal(store["x_gen"], full[seed])
    finally:
        gen.recipe = ctx.recipe


def test_backprop_through_chain_reaches_the_earlier_steps(setup):
    """generator.backprop_through_chain: x_gen's graph reaches back through the backward simulation, so the
    parameter gradient is that of the whole unrolled chain; without it the earlier step's x0 is a constant (DMD2's
    stop-gradient). Both match a hand-unrolled computation with the documented draws; x_gen is the same either way."""
    ctx, roles = setup
    gen = roles["generator"]
    params = [p for p in gen.net.parameters() if p.requires_grad]

    def by_hand(through_chain: bool):
        g = torch.Generator().manual_seed(11)
        cond = torch.randint(0, 4, (B,), generator=g)
        torch.randint(0, 2, (1,), generator=g)  # k: drawn, then N - 1 (last_step_only)
        z = torch.randn(B, *IMG, generator=g)
        x0 = gen.G(z, torch.full((B,), 999), cond)
        if not through_chain:
            x0 = x0.detach()
        x = gen.schedule.add_noise(x0, torch.full((B,), 499), torch.randn(B, *IMG, generator=g))
        x_gen = gen.G(x, torch.full((B,), 499), cond)
        return x_gen, torch.autograd.grad(x_gen.square().sum(), params)

    results = {}
    try:
        for through_chain in (False, True):
            gen.recipe = dataclasses.replace(gen.recipe, generator=dataclasses.replace(
                gen.recipe.generator, last_step_only=True, backprop_through_chain=through_chain))
            store = store_at(0)
            assert generate(ctx, roles, store, seed=11, grad=True, dmd=False)["gen_k"] == 1.0
            x_gen = gen.graph[0]
            grads = torch.autograd.grad(x_gen.square().sum(), params)
            want_x, want_grads = by_hand(through_chain)
            assert torch.allclose(x_gen, want_x, atol=1e-6)
            for got, want in zip(grads, want_grads):
                assert torch.allclose(got, want, rtol=1e-4, atol=1e-6)
            results[through_chain] = (x_gen.detach(), grads)
            # without grad (the fake score's steps) no graph is kept either way
            generate(ctx, roles, store_at(0), seed=11, grad=False, dmd=False)
            assert gen.graph is None
    finally:
        gen.recipe = ctx.recipe
    assert torch.equal(results[False][0], results[True][0])
    differ = sum(not torch.allclose(a, b, rtol=1e-3, atol=1e-7) for a, b in zip(results[False][1], results[True][1]))
    assert differ > len(params) // 2  # the first step's contribution reaches (nearly) every parameter


def test_clip_sample_clamps_the_generators_output_in_training_and_sampling(tiny_recipe, teacher_dir):
    """generator.clip_sample: the generator's x0 is clamped to [-1, 1] (x_gen, and every step of the chain); pixels
    clamped there get no gradient, the others the plain generator's; dmd2 eval's student sampler clamps too."""
    from dmd2_worker.evaluate.models import StudentSampler

    recipe = dataclasses.replace(tiny_recipe, generator=dataclasses.replace(tiny_recipe.generator, clip_sample=True))
    ctx, roles = build_roles(recipe)
    plain_ctx, plain_roles = build_roles(tiny_recipe)
    gen, plain = roles["generator"], plain_roles["generator"]
    for net in (gen.net, plain.net):  # the same output, partly beyond the data's range, in both
        with torch.no_grad():
            net.conv_out.bias.fill_(0.5)
    store = store_at(0)
    generate(ctx, roles, store, grad=True, dmd=False)
    assert store["x_gen"].abs().max() == 1

    g = torch.Generator().manual_seed(3)
    x, t, cond = 0.8 * torch.randn(B, *IMG, generator=g), torch.full((B,), 100), torch.arange(B) % 4
    clipped, raw = gen.G(x, t, cond), plain.G(x, t, cond)
    assert torch.equal(clipped.detach(), raw.detach().clamp(-1, 1))
    outside = raw.detach().abs() > 1
    assert 0 < outside.float().mean() < 1  # the case being tested
    w, w_plain = gen.net.conv_out.weight, plain.net.conv_out.weight
    g_out, = torch.autograd.grad((clipped * outside).sum(), w, retain_graph=True)
    assert torch.count_nonzero(g_out) == 0
    g_in, = torch.autograd.grad((clipped * ~outside).sum(), w)
    g_in_plain, = torch.autograd.grad((raw * ~outside).sum(), w_plain)
    assert torch.count_nonzero(g_in) > 0 and torch.allclose(g_in, g_in_plain, rtol=1e-4, atol=1e-7)

    z = torch.randn(4, *IMG, generator=torch.Generator().manual_seed(0))
    for steps in (1, len(recipe.generator.timesteps)):
        x = StudentSampler(gen.net, gen.schedule, recipe.generator).sample(z, cond[:4], steps, torch.Generator().manual_seed(1))
        assert x.abs().max() == 1
    x = StudentSampler(plain.net, plain.schedule, tiny_recipe.generator).sample(z, cond[:4], 1, torch.Generator().manual_seed(1))
    assert x.abs().max() > 1


def test_predict_x0_teacher_and_fake_score(setup):
    ctx, roles = setup
    store = store_at(0)
    generate(ctx, roles, store)
    assert roles["teacher"].run_op("predict_x0", {"guidance_scale": 1.0}, store, ctx) == {}
    assert roles["fake_score"].run_op("predict_x0", {}, store, ctx) == {}
    for name in ("x0_real", "x0_fake"):
        assert store[name].dtype == torch.float32 and store[name].shape == (B, *IMG) and not store[name].requires_grad
    # the fake score starts as a copy of the teacher
    assert torch.allclose(store["x0_real"], store["x0_fake"], atol=1e-5)
    # classifier-free guidance: uncond + s (cond - uncond)
    teacher = roles["teacher"]
    x_t, t, c = store["x_t_dmd"], store["t_dmd"], store["cond"]
    with torch.no_grad():
        oc = teacher.net(x_t, t, c)
        ou = teacher.net(x_t, t, torch.full_like(c, 4))
        expected = teacher.schedule.to_x0(ou + 2.5 * (oc - ou), x_t, t)
    teacher.run_op("predict_x0", {"guidance_scale": 2.5}, store, ctx)
    assert torch.allclose(store["x0_real"], expected, atol=1e-4)


def test_generator_gan_grad_is_an_input_gradient_only(setup):
    ctx, roles = setup
    store = store_at(0)
    generate(ctx, roles, store, grad=False)
    disc, fake = roles["discriminator"], roles["fake_score"]
    m = disc.run_op("generator_gan_grad", {"seed": 5, "weight": 0.5}, store, ctx)
    assert set(m) == {"loss_gan_g", "d_fake_g"}
    gg = store["gan_grad"]
    assert gg.dtype == torch.float32 and gg.shape == (B, *IMG) and gg.abs().sum() > 0
    assert all(p.grad is None for p in list(fake.net.parameters()) + list(disc.head.parameters()))
    # the same gradient by hand, with the documented draws (t, then noise)
    g = torch.Generator().manual_seed(5)
    t = torch.randint(0, 1000, (B,), generator=g)
    x = store["x_gen"].clone().requires_grad_(True)
    x_t = fake.schedule.add_noise(x, t, torch.randn(B, *IMG, generator=g))
    logits = disc.head(fake.net.features(x_t, t, store["cond"]))
    assert m["loss_gan_g"] == pytest.approx(gan_generator_loss(logits).item(), rel=1e-5)
    assert m["d_fake_g"] == pytest.approx(logits.mean().item(), rel=1e-4, abs=1e-6)
    (ref,) = torch.autograd.grad(0.5 * gan_generator_loss(logits), x)
    assert torch.allclose(gg, ref, atol=1e-7)
    disc.run_op("generator_gan_grad", {"seed": 5, "weight": 1.0}, store, ctx)
    assert torch.allclose(store["gan_grad"], 2 * gg, atol=1e-7)


def test_generator_update_one_backward_with_gan_grad(setup):
    ctx, roles = setup
    gen = roles["generator"]
    store = store_at(0)
    generate(ctx, roles, store)
    x_gen_graph = gen.graph[0]
    # x0_real == x0_fake: the DMD gradient is 0, so the parameter gradient is exactly gan_grad pulled back
    store["x0_real"] = store["x_gen"] + 0.1
    store["x0_fake"] = store["x_gen"] + 0.1
    store["gan_grad"] = torch.full((B, *IMG), 1e-3)
    (ref,) = torch.autograd.grad(x_gen_graph, [gen.net.conv_out.weight], store["gan_grad"], retain_graph=True)
    before = [p.detach().clone() for p in gen.net.parameters()]
    m = gen.run_op("update", {"lr": 1e-4, "dmd_weight": 1.0}, store, ctx)
    assert set(m) == {"loss_dmd", "dmd_grad_norm", "gen_grad_norm", "skipped_nonfinite"}
    assert m["skipped_nonfinite"] == 0.0
    assert m["loss_dmd"] == 0.0 and m["dmd_grad_norm"] == 0.0 and m["gen_grad_norm"] > 0
    assert torch.allclose(gen.net.conv_out.weight.grad, ref, rtol=1e-5, atol=1e-9)
    assert any(not torch.equal(a, b) for a, b in zip(before, gen.net.parameters()))
    assert gen.optimizer.param_groups[0]["lr"] == 1e-4
    assert gen.graph is None
    with pytest.raises(ValueError, match="no generator graph"):
        gen.run_op("update", {"lr": 1e-4, "dmd_weight": 1.0}, store, ctx)


def test_generator_update_dmd_gradient_flows(setup):
    ctx, roles = setup
    gen = roles["generator"]
    store = store_at(5)
    generate(ctx, roles, store)
    store["x0_real"] = store["x_gen"] - 0.2
    store["x0_fake"] = store["x_gen"] + 0.2
    m = gen.run_op("update", {"lr": 1e-4, "dmd_weight": 2.0}, store, ctx)
    # p_real = 0.2 everywhere: weight_factor 0.2, grad = 0.4 / 0.2 = 2 per pixel; loss = 0.5 * 4 = 2
    assert m["loss_dmd"] == pytest.approx(2.0, rel=1e-5)
    assert m["dmd_grad_norm"] == pytest.approx(2.0 * (B * 64) ** 0.5, rel=1e-5)


def test_generator_update_errors(setup):
    ctx, roles = setup
    gen = roles["generator"]
    store = store_at(0)
    generate(ctx, roles, store)
    store["x0_real"] = store["x_gen"].clone()
    with pytest.raises(ValueError, match="'x0_fake' is not in the tensor store"):
        gen.run_op("update", {"lr": 1e-4, "dmd_weight": 1.0}, store, ctx)
    store["x0_fake"] = store["x_gen"].double()
    with pytest.raises(ValueError, match="'x0_fake' must be float32"):
        gen.run_op("update", {"lr": 1e-4, "dmd_weight": 1.0}, store, ctx)
    with pytest.raises(ValueError, match="missing arg 'dmd_weight'"):
        gen.run_op("update", {"lr": 1e-4}, store, ctx)
    with pytest.raises(ValueError, match="unknown args"):
        gen.run_op("update", {"lr": 1e-4, "dmd_weight": 1.0, "weight": 2}, store, ctx)
    store["x0_fake"] = store["x_gen"].clone()
    other = store_at(1, **dict(store))
    with pytest.raises(ValueError, match="from step 0, this is step 1"):
        gen.run_op("update", {"lr": 1e-4, "dmd_weight": 1.0}, other, ctx)
    with pytest.raises(ValueError, match="has no op 'fly'"):
        gen.run_op("fly", {}, store, ctx)


def test_fake_score_update(setup):
    ctx, roles = setup
    fake, disc = roles["fake_score"], roles["discriminator"]
    store = store_at(0)
    generate(ctx, roles, store, grad=False, dmd=False)
    head_before = [p.detach().clone() for p in disc.head.parameters()]
    net_before = fake.net.conv_in.weight.detach().clone()
    m = fake.run_op("update", {"seed": 3, "lr": 1e-3, "gan_weight": 0.0}, store, ctx)
    assert set(m) == {"loss_fake", "loss_gan_d", "d_real", "d_fake", "skipped_nonfinite_fake"}
    assert m["skipped_nonfinite_fake"] == 0.0
    assert m["loss_fake"] > 0 and m["loss_gan_d"] == 0.0
    assert not torch.equal(net_before, fake.net.conv_in.weight)
    assert all(torch.equal(a, b) for a, b in zip(head_before, disc.head.parameters()))  # no D loss, head untouched
    m = fake.run_op("update", {"seed": 4, "lr": 1e-3, "gan_weight": 0.01}, store, ctx)
    assert m["loss_gan_d"] > 0 and m["d_real"] != 0.0 and m["d_fake"] != 0.0
    assert any(not torch.equal(a, b) for a, b in zip(head_before, disc.head.parameters()))
    assert fake.optimizer.param_groups[1]["lr"] == 1e-3
    assert fake.updates == 2


def test_fake_score_update_needs_a_discriminator_for_gan(tiny_recipe, teacher_dir):
    from dmd2_worker.config import parse_recipe, recipe_to_dict
    obj = recipe_to_dict(tiny_recipe)
    obj["gan"]["enabled"] = False
    ctx, roles = build_roles(parse_recipe(obj))
    assert "discriminator" not in roles
    store = store_at(0)
    generate(ctx, roles, store, grad=False, dmd=False)
    with pytest.raises(ValueError, match="no discriminator"):
        roles["fake_score"].run_op("update", {"seed": 3, "lr": 1e-3, "gan_weight": 0.01}, store, ctx)


def test_sample_writes_images_grid_and_tensors(setup, tmp_path):
    ctx, roles = setup
    for steps, classes, labels in ((2, None, [0, 1, 2, 3, 0, 1]), (1, [3, 1], [3, 1, 3, 1, 3, 1])):
        out = tmp_path / f"s{steps}"
        store = store_at(0)
        assert roles["generator"].run_op("sample", {"seed": 1, "n": 6, "steps": steps, "classes": classes,
                                                    "out_dir": str(out)}, store, ctx) == {}
        assert store["samples"].shape == (6, *IMG) and store["samples"].dtype == torch.float32
        assert store["labels"].tolist() == labels and store["labels"].dtype == torch.int64
        assert sorted(p.name for p in (out / "images").iterdir()) == sorted(f"{i}.png" for i in range(6))
        assert (out / "grid.png").is_file()
        saved = load_file(str(out / "samples.safetensors"))
        assert torch.equal(saved["samples"], store["samples"]) and torch.equal(saved["labels"], store["labels"])
    # seeded: the same call gives the same samples
    a, b = store_at(0), store_at(0)
    for s in (a, b):
        roles["generator"].run_op("sample", {"seed": 9, "n": 4, "steps": 2, "classes": None, "out_dir": str(tmp_path / "r")}, s, ctx)
    assert torch.equal(a["samples"], b["samples"])
    with pytest.raises(ValueError, match="outside"):
        roles["generator"].run_op("sample", {"seed": 1, "n": 2, "steps": 1, "classes": [7], "out_dir": str(tmp_path)}, store_at(0), ctx)


def test_save_and_restore_are_exact(setup, tmp_path):
    ctx, roles = setup
    from dmd2_worker.local_loop import train_step
    for s in range(3):
        train_step(s, ctx.recipe, ctx)
    files = [p for name in ("teacher", "generator", "fake_score", "discriminator") for p in roles[name].save(tmp_path)]
    assert sorted(p.name for p in files) == sorted([
        "generator.safetensors", "generator.optim.safetensors", "generator.optim.json",
        "fake_score.safetensors", "fake_score.optim.safetensors", "fake_score.optim.json",
        "discriminator.safetensors"])

    def snapshot():
        nets = {n: {k: v.clone() for k, v in m.state_dict().items()} for n, m in
                (("g", roles["generator"].net), ("f", roles["fake_score"].net), ("d", roles["discriminator"].head))}
        opts = {n: roles[n].optimizer.state_dict() for n in ("generator", "fake_score")}
        opts = {n: ({i: {k: v.clone() for k, v in st.items()} for i, st in sd["state"].items()},
                    [dict(g) for g in sd["param_groups"]]) for n, sd in opts.items()}
        return nets, opts

    saved = snapshot()
    for s in range(3, 6):
        train_step(s, ctx.recipe, ctx)
    for name in ("teacher", "generator", "fake_score", "discriminator"):
        roles[name].restore(tmp_path)
    now = snapshot()
    for n in saved[0]:
        for k in saved[0][n]:
            assert torch.equal(saved[0][n][k], now[0][n][k]), (n, k)
    for n in saved[1]:
        assert saved[1][n][1] == now[1][n][1]
        for i in saved[1][n][0]:
            for k, v in saved[1][n][0][i].items():
                assert torch.equal(v, now[1][n][0][i][k]), (n, i, k)


def test_ops_before_setup_and_bad_inputs(setup):
    ctx, roles = setup
    fresh = make_role("teacher")
    with pytest.raises(RuntimeError, match="not set up"):
        fresh.run_op("predict_x0", {"guidance_scale": 1.0}, store_at(0), ctx)
    store = store_at(0)
    generate(ctx, roles, store)
    store["t_dmd"] = store["t_dmd"].to(torch.int32)
    with pytest.raises(ValueError, match="'t_dmd' must be int64"):
        roles["teacher"].run_op("predict_x0", {"guidance_scale": 1.0}, store, ctx)
    store["t_dmd"] = torch.full((B,), 1000)
    with pytest.raises(ValueError, match=r"'t_dmd' values must lie in \[0, 1000\)"):
        roles["fake_score"].run_op("predict_x0", {}, store, ctx)
    with pytest.raises(ValueError, match="must be a finite number"):
        roles["teacher"].run_op("predict_x0", {"guidance_scale": "2"}, store, ctx)


def test_fault_injection(setup, monkeypatch):
    ctx, roles = setup
    monkeypatch.setenv("DMD2_FAULT", "fake_score.update:3")
    store = store_at(2)
    generate(ctx, roles, store, grad=False, dmd=False)
    roles["fake_score"].run_op("update", {"seed": 1, "lr": 1e-4, "gan_weight": 0.0}, store, ctx)  # other step: runs
    store = store_at(3)
    generate(ctx, roles, store, grad=False, dmd=False)
    with pytest.raises(RuntimeError, match="injected fault"):
        roles["fake_score"].run_op("update", {"seed": 1, "lr": 1e-4, "gan_weight": 0.0}, store, ctx)
    check_fault("generator", "update", 3)  # other op: nothing
    monkeypatch.setenv("DMD2_FAULT", "nonsense")
    with pytest.raises(ValueError, match="DMD2_FAULT"):
        check_fault("generator", "update", 3)


def test_fault_injection_exit():
    code = "from dmd2_worker.roles import check_fault; check_fault('generator', 'generate', 1); " \
           "check_fault('generator', 'generate', 2); print('not reached')"
    env = dict(os.environ, DMD2_FAULT="generator.generate:2:exit")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 3 and "not reached" not in r.stdout
    assert "injected fault" in r.stderr
