"""checkpoint.py: safetensors + JSON, atomic, exact round trips of weights and optimizer state."""
from __future__ import annotations

import hashlib
import json
import struct

import pytest
import torch

from dmd2_worker.checkpoint import (describe_files, file_sha256, load_module, load_optimizer, load_tensors,
                                    save_module, save_optimizer, save_tensors)
from dmd2_worker.config import OptimConfig
from dmd2_worker.optim import build_adamw, clip_grad_norm, set_lr, warmup_lr


def make_net(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.SiLU(), torch.nn.Linear(4, 2))


def make_opt(net: torch.nn.Module, head: torch.nn.Module) -> torch.optim.Optimizer:
    opt = build_adamw(net.parameters(), 1e-2, OptimConfig(betas=[0.9, 0.99], weight_decay=0.01, warmup_steps=0,
                                                          grad_clip=10.0))
    opt.add_param_group({"params": list(head.parameters()), "lr": 1e-2})
    return opt


def train(net, head, opt, steps: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for i in range(steps):
        x = torch.randn(8, 3, generator=g)
        loss = (head(net(x)) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        set_lr(opt, 1e-2 * (i + 1) / steps)
        opt.step()


def test_tensors_round_trip_atomically(tmp_path):
    t = {"a": torch.randn(2, 3), "b": torch.arange(5), "scalar": torch.tensor(3.5)}
    path = save_tensors(tmp_path / "x.safetensors", t)
    back = load_tensors(path)
    assert set(back) == set(t) and all(torch.equal(back[k], t[k]) for k in t)
    assert [p.name for p in tmp_path.iterdir()] == ["x.safetensors"]  # no temporary left behind
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])  # safetensors: u64 header length + JSON header, never a pickle
    assert json.loads(raw[8:8 + n])["a"]["shape"] == [2, 3]
    assert file_sha256(path) == hashlib.sha256(raw).hexdigest()
    assert describe_files([path]) == [{"name": "x.safetensors", "bytes": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}]


def test_module_and_optimizer_restore_exactly(tmp_path):
    net, head = make_net(0), torch.nn.Linear(2, 1)
    opt = make_opt(net, head)
    train(net, head, opt, 3, seed=1)
    files = [save_module(tmp_path / "net.safetensors", net), *save_optimizer(tmp_path, "role", opt)]
    assert sorted(p.name for p in files) == ["net.safetensors", "role.optim.json", "role.optim.safetensors"]
    names = set(load_tensors(tmp_path / "role.optim.safetensors"))
    assert "state.0.exp_avg" in names and "state.5.exp_avg_sq" in names and "state.0.step" in names

    net2, head2 = make_net(7), torch.nn.Linear(2, 1)
    opt2 = make_opt(net2, head2)
    load_module(tmp_path / "net.safetensors", net2)
    head2.load_state_dict(head.state_dict())
    load_optimizer(tmp_path, "role", opt2)
    for a, b in zip(net.state_dict().values(), net2.state_dict().values()):
        assert torch.equal(a, b)
    sd, sd2 = opt.state_dict(), opt2.state_dict()
    assert sd["param_groups"] == sd2["param_groups"]  # betas come back as a tuple, lr exactly
    assert sd["state"].keys() == sd2["state"].keys()
    for i in sd["state"]:
        for k, v in sd["state"][i].items():
            assert torch.equal(v, sd2["state"][i][k]) and v.dtype == sd2["state"][i][k].dtype, (i, k)
    # and training on gives identical weights
    train(net, head, opt, 2, seed=5)
    train(net2, head2, opt2, 2, seed=5)
    for a, b in zip(list(net.parameters()) + list(head.parameters()), list(net2.parameters()) + list(head2.parameters())):
        assert torch.equal(a, b)


def test_optimizer_state_must_fit(tmp_path):
    net, head = make_net(0), torch.nn.Linear(2, 1)
    opt = make_opt(net, head)
    train(net, head, opt, 1, seed=1)
    save_optimizer(tmp_path, "role", opt)
    lonely = build_adamw(make_net(1).parameters(), 1e-2, OptimConfig([0.9, 0.99], 0.0, 0, 1.0))
    with pytest.raises(ValueError, match="does not fit"):
        load_optimizer(tmp_path, "role", lonely)
    with pytest.raises(FileNotFoundError):
        load_optimizer(tmp_path / "missing", "role", opt)
    with pytest.raises(ValueError, match="do not fit"):
        load_module(tmp_path / "role.optim.safetensors", net)


def test_warmup_and_clipping():
    assert warmup_lr(1e-3, 0, 20) == pytest.approx(5e-5)
    assert warmup_lr(1e-3, 19, 20) == pytest.approx(1e-3)
    assert warmup_lr(1e-3, 500, 20) == pytest.approx(1e-3)
    assert warmup_lr(1e-3, 0, 0) == 1e-3
    p = torch.nn.Parameter(torch.zeros(4))
    p.grad = torch.tensor([3.0, 4.0, 0.0, 0.0])
    assert clip_grad_norm([p], 1.0) == pytest.approx(5.0)
    assert p.grad.norm().item() == pytest.approx(1.0, rel=1e-5)
