"""local_loop.py: the single-process baseline. A real quality check against the GMM's ground truth, and the
per-role routing of docs/protocol.md §4 (three stores, tensors passed as bytes) ending with the same weights."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dmd2_worker.data.gmm import GaussianMixture
from dmd2_worker.local_loop import build_roles, run_local, run_phases
from dmd2_worker.roles import make_role
from dmd2_worker.roles.base import TensorStore, WorkerContext
from dmd2_worker.step_plan import gan_generator_weight, generator_updates_before, is_generator_step, plan_step


def fd_to_class_gaussian(x: torch.Tensor, mu: torch.Tensor, sigma: float) -> float:
    """Frechet distance between the samples' Gaussian fit and the true class Gaussian N(mu, sigma^2 I):
    |m - mu|^2 + sum_i (sqrt(lambda_i) - sigma)^2 over the eigenvalues of the sample covariance."""
    x = x.flatten(1).double()
    m = x.mean(0)
    xc = x - m
    lam = torch.linalg.eigvalsh(xc.T @ xc / (x.shape[0] - 1)).clamp(min=0)
    return float((m - mu.flatten().double()).pow(2).sum() + (lam.sqrt() - sigma).pow(2).sum())


def quality(ctx, roles, steps: int, out: Path) -> dict[str, float]:
    gmm = GaussianMixture.from_config(ctx.recipe.data.gmm)
    store = TensorStore()
    roles["generator"].run_op("sample", {"seed": 77, "n": 1024, "steps": steps, "classes": None, "out_dir": str(out)},
                              store, ctx)
    x, y = store["samples"], store["labels"]
    dist = (x - gmm.means[y]).flatten(1).pow(2).mean(1).sqrt().mean().item()  # rms distance to the own class mean
    fd = np.mean([fd_to_class_gaussian(x[y == k], gmm.means[k], gmm.std) for k in range(gmm.num_classes)])
    acc = (gmm.nearest_class(x) == y).float().mean().item()
    return {"dist": dist, "fd": float(fd), "acc": acc}


def test_schedule_helpers():
    assert [s for s in range(12) if is_generator_step(s, 5)] == [0, 5, 10]
    assert [generator_updates_before(s, 5) for s in (0, 5, 10)] == [0, 1, 2]
    assert gan_generator_weight(0, 0.003, 10) == 0.0
    assert gan_generator_weight(5, 0.003, 10) == pytest.approx(0.0015)
    assert gan_generator_weight(50, 0.003, 10) == 0.003
    assert gan_generator_weight(0, 0.003, 0) == 0.003


def test_distillation_improves_the_one_step_generator(tiny_recipe, teacher_dir, tmp_path):
    """200 steps of the tiny recipe (train.steps): G starts as the teacher, whose 1-step sample misses the data by
    ~0.19 rms (the epsilon error at t = 999, amplified ~15x); distillation must pull it towards the true class
    Gaussians (N(mu_k, 0.1^2 I)) while every sample stays with its class."""
    ctx, roles = build_roles(tiny_recipe)
    init = {n: quality(ctx, roles, n, tmp_path / f"init{n}") for n in (1, 2)}
    roles = run_local(tiny_recipe)
    final = {n: quality(ctx, roles, n, tmp_path / f"final{n}") for n in (1, 2)}
    report = f"init {init}\nfinal {final}"
    for n in (1, 2):
        assert final[n]["acc"] >= 0.95, report
    assert final[1]["fd"] < 0.6 * init[1]["fd"], report
    assert final[1]["dist"] < 0.8 * init[1]["dist"], report
    assert final[2]["dist"] < 0.15, report  # 2-step samples stay near their class mean (data: 0.1)


def _wire(t: torch.Tensor) -> torch.Tensor:
    """A tensor as it arrives from another process: its raw bytes, re-read."""
    arr = t.detach().cpu().contiguous().numpy()
    return torch.from_numpy(np.frombuffer(arr.tobytes(), dtype=arr.dtype).reshape(arr.shape).copy())


def run_per_role(recipe, steps: int, threads: int) -> dict:
    """The coordinator's per_role placement, in one process: three workers with their own contexts and tensor
    stores (cleared at each step), running the production step plan; a tensor produced in one worker and consumed
    in another travels as bytes."""
    home = {"teacher": "teacher", "generator": "generator", "fake_score": "fake_score", "discriminator": "fake_score"}
    ctxs = {w: WorkerContext(worker=w, recipe=recipe, run_dir=Path(recipe.run_dir), device=torch.device("cpu"))
            for w in ("teacher", "generator", "fake_score")}
    for role, w in home.items():
        ctxs[w].roles[role] = make_role(role)
    tdir = ctxs["teacher"].roles["teacher"].setup({"role": "teacher", "teacher_dir": None}, ctxs["teacher"])["teacher_dir"]
    for role in ("generator", "fake_score", "discriminator"):
        ctxs[home[role]].roles[role].setup({"role": role, "teacher_dir": tdir}, ctxs[home[role]])
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for s in range(steps):
            run_phases(s, plan_step(s, recipe), {role: ctxs[w] for role, w in home.items()}, carry=_wire)
    finally:
        torch.set_num_threads(old)
    return {"generator": ctxs["generator"].roles["generator"].net, "fake_score": ctxs["fake_score"].roles["fake_score"].net,
            "discriminator": ctxs["fake_score"].roles["discriminator"].head}


def max_abs_diff(a: torch.nn.Module, b: torch.nn.Module) -> float:
    return max((x - y).abs().max().item() for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_per_role_routing_matches_the_local_loop(tiny_recipe, teacher_dir):
    local = run_local(tiny_recipe, steps=12)
    nets = {"generator": local["generator"].net, "fake_score": local["fake_score"].net, "discriminator": local["discriminator"].head}
    same_threads = run_per_role(tiny_recipe, 12, threads=torch.get_num_threads())
    for role, net in nets.items():
        assert max_abs_diff(net, same_threads[role]) == 0.0, role
    one_thread = run_per_role(tiny_recipe, 12, threads=1)  # as per_role runs on 2 cores: 1 thread per worker
    for role, net in nets.items():
        assert max_abs_diff(net, one_thread[role]) < 1e-4, role
    teacher = local["teacher"].net
    assert max_abs_diff(teacher, nets["generator"]) > 0 and max_abs_diff(teacher, nets["fake_score"]) > 0  # it trained
