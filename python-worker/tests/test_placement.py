"""placement.py: sharded random draws, bf16 autocast, gradient checkpointing, devices; a replicated generator's
ranks together produce exactly the single process's batch."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from dmd2_worker.local_loop import build_roles
from dmd2_worker.models.tiny_unet import TinyUNet, default_arch_config
from dmd2_worker.placement import (Shard, apply_precision, available_devices, device_for, enable_gradient_checkpointing,
                                   randint_rows, randn_rows, shard_from_env)
from dmd2_worker.roles.base import TensorStore


def test_sharded_draws_are_the_rows_of_the_whole_batch():
    whole = randn_rows((6, 2, 3), torch.Generator().manual_seed(5), torch.device("cpu"), None)
    parts = [randn_rows((3, 2, 3), torch.Generator().manual_seed(5), torch.device("cpu"), Shard(r, 2)) for r in range(2)]
    assert torch.equal(torch.cat(parts), whole)
    ints = randint_rows(0, 100, 8, torch.Generator().manual_seed(1), torch.device("cpu"), None)
    parts = [randint_rows(0, 100, 2, torch.Generator().manual_seed(1), torch.device("cpu"), Shard(r, 4)) for r in range(4)]
    assert torch.equal(torch.cat(parts), ints)
    with pytest.raises(ValueError, match="batch size 7 does not split over 2 replicas"):
        Shard(0, 2).local_batch(7, "op")


def test_shard_from_env():
    assert shard_from_env({}) is None
    assert shard_from_env({"WORLD_SIZE": "1", "RANK": "0"}) is None
    assert shard_from_env({"WORLD_SIZE": "3", "RANK": "2"}) == Shard(2, 3)
    with pytest.raises(RuntimeError, match="RANK='5' is not a rank of WORLD_SIZE=3"):
        shard_from_env({"WORLD_SIZE": "3", "RANK": "5"})


def _net(seed: int = 0) -> TinyUNet:
    torch.manual_seed(seed)
    return TinyUNet(default_arch_config(channels=16, image_size=8, num_classes=4))


def _inputs():
    g = torch.Generator().manual_seed(3)
    return torch.randn((4, 1, 8, 8), generator=g), torch.tensor([10, 500, 900, 999]), torch.tensor([0, 1, 2, 4])


def test_bf16_runs_the_network_in_bf16_and_returns_float32():
    ref, net = _net(), _net()
    apply_precision(net, torch.device("cpu"), "bf16")
    seen = []
    net.conv_in.register_forward_hook(lambda m, a, out: seen.append(out.dtype))
    x, t, c = _inputs()
    assert net(x, t, c).dtype == torch.float32
    assert seen == [torch.bfloat16]
    out = net.features(x, t, c)  # (the output layer starts at zero; the features do not)
    assert out.dtype == torch.float32
    want = ref.features(x, t, c)
    assert not torch.equal(out, want)
    assert torch.allclose(out, want, atol=0.05 * float(want.detach().abs().max()))
    assert set(net.state_dict()) == set(ref.state_dict())  # weights untouched, still float32
    assert all(p.dtype == torch.float32 for p in net.parameters())
    assert apply_precision(_net(), torch.device("cpu"), "fp32") is not None
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        apply_precision(_net(), torch.device("cpu"), "fp8")


def test_gradient_checkpointing_gives_the_same_output_and_gradients():
    a, b = _net(), _net()
    enable_gradient_checkpointing(b)
    x, t, c = _inputs()
    for net in (a, b):
        net(x, t, c).square().mean().backward()
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(pa.grad, pb.grad, atol=1e-6), name
    with pytest.raises(ValueError, match="does not support gradient checkpointing"):
        enable_gradient_checkpointing(torch.nn.Linear(2, 2))


def test_devices():
    assert available_devices()[0] == "cpu"
    assert device_for("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match=r"roles.teacher.device 'cuda:1', but torch .* has no CUDA"):
            device_for("cuda:1", "roles.teacher.device")


def test_generator_ranks_together_make_the_single_process_batch(tiny_recipe, teacher_dir):
    ctx, roles = build_roles(tiny_recipe)
    args = {"seed": 21, "batch_size": 8, "grad": False, "dmd": True}
    whole = TensorStore()
    whole.step = 5
    roles["generator"].run_op("generate", args, whole, ctx)
    parts = []
    for rank in range(2):
        s = TensorStore()
        s.step = 5
        roles["generator"].run_op("generate", args, s, dataclasses.replace(ctx, shard=Shard(rank, 2)))
        parts.append(s)
    for name in ("cond", "x_gen", "t_dmd", "x_t_dmd"):
        assert parts[0][name].shape[0] == 4
        assert torch.allclose(torch.cat([p[name] for p in parts]), whole[name], atol=1e-6), name
