"""models/: the tiny UNet and the discriminator head."""
from __future__ import annotations

import json
import time

import pytest
import torch

from dmd2_worker.models.discriminator_head import DiscriminatorHead
from dmd2_worker.models.tiny_unet import TinyUNet, default_arch_config


def test_unet_shapes_conditional_and_unconditional():
    cfg = default_arch_config(channels=16, image_size=8, num_classes=4)
    assert json.loads(json.dumps(cfg)) == cfg  # JSON-able
    net = TinyUNet(cfg)
    x = torch.randn(5, 1, 8, 8)
    t = torch.tensor([0, 1, 500, 998, 999])
    cond = torch.tensor([0, 1, 2, 3, 4])  # 4 = the null class
    assert net(x, t, cond).shape == (5, 1, 8, 8)
    f = net.features(x, t, cond)
    assert f.shape == (5, 32, 2, 2) and (net.feature_channels, net.feature_size) == (32, 2)
    assert net.null_class == 4
    unc = TinyUNet(default_arch_config(channels=8, image_size=12, num_classes=None))
    assert unc(torch.randn(2, 1, 12, 12), t[:2], None).shape == (2, 1, 12, 12)
    assert unc.features(torch.randn(2, 1, 12, 12), t[:2]).shape == (2, 16, 3, 3)


def test_unet_rejects_bad_configs():
    with pytest.raises(ValueError, match="not divisible"):
        TinyUNet(default_arch_config(channels=8, image_size=6, num_classes=2))
    with pytest.raises(ValueError, match="unknown keys"):
        TinyUNet({**default_arch_config(channels=8, image_size=8, num_classes=2), "depth": 3})


def test_unet_is_conditioned_on_t_and_class():
    torch.manual_seed(0)
    net = TinyUNet(default_arch_config(channels=8, image_size=8, num_classes=3))
    for p in net.parameters():  # the output layers start at zero: perturb them so the output depends on inputs
        torch.nn.init.normal_(p, std=0.1)
    x = torch.randn(2, 1, 8, 8)
    a = net(x, torch.tensor([10, 10]), torch.tensor([0, 0]))
    assert not torch.allclose(a, net(x, torch.tensor([900, 900]), torch.tensor([0, 0])))
    assert not torch.allclose(a, net(x, torch.tensor([10, 10]), torch.tensor([1, 1])))


@pytest.mark.parametrize("size", [1, 2, 3, 4, 8])
def test_discriminator_head_reduces_to_one_logit(size):
    head = DiscriminatorHead(32, size)
    out = head(torch.randn(3, 32, size, size))
    assert out.shape == (3,)
    convs = [m for m in head.blocks if isinstance(m, torch.nn.Conv2d)]
    assert all(c.kernel_size == (4, 4) and c.stride == (2, 2) and c.padding == (1, 1) for c in convs)
    assert head.to_logit.kernel_size == (1, 1)
    assert len(convs) == {1: 0, 2: 1, 3: 1, 4: 2, 8: 3}[size]


def test_unet_is_fast_enough():
    """Batch 32 of 8x8, forward + backward: a few ms on 2 cores (loose bound: the CPU is shared)."""
    net = TinyUNet(default_arch_config(channels=16, image_size=8, num_classes=4))
    x, t, c = torch.randn(32, 1, 8, 8), torch.randint(0, 1000, (32,)), torch.randint(0, 5, (32,))
    times = []
    for _ in range(15):
        start = time.perf_counter()
        net(x, t, c).square().mean().backward()
        times.append(time.perf_counter() - start)
    assert sorted(times)[len(times) // 2] < 0.05
