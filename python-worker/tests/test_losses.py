"""losses.py on tiny hand-made tensors (docs/method.md)."""
from __future__ import annotations

import math

import pytest
import torch

from dmd2_worker.diffusion import NoiseSchedule
from dmd2_worker.losses import (dmd_gradient, dmd_loss, fake_score_denoising_loss, gan_discriminator_loss,
                                gan_generator_loss)


def t(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32).reshape(len(values), 1, 1, -1)


def test_dmd_gradient_hand_values():
    # sample 0: p_real = [1, 1], weight_factor 1, grad = x0_fake - x0_real = [0.5, 1.0]
    # sample 1: p_real = [2, -2], weight_factor 2, grad = ([2, 0] - [1, 1]) / 2 = [0.5, -0.5]
    x_gen = t([[1.0, 2.0], [3.0, -1.0]])
    x0_real = t([[0.0, 1.0], [1.0, 1.0]])
    x0_fake = t([[0.5, 2.0], [2.0, 0.0]])
    grad = dmd_gradient(x_gen, x0_real, x0_fake)
    assert torch.allclose(grad, t([[0.5, 1.0], [0.5, -0.5]]))
    assert not grad.requires_grad


def test_dmd_loss_value_and_gradient():
    x_gen = t([[1.0, 2.0], [3.0, -1.0]]).requires_grad_(True)
    grad = t([[0.5, 1.0], [0.5, -0.5]])
    loss = dmd_loss(x_gen, grad)
    # 0.5 * mean(grad^2) = 0.5 * (0.25 + 1 + 0.25 + 0.25) / 4 = 0.21875
    assert loss.item() == pytest.approx(0.21875)
    (dx,) = torch.autograd.grad(loss, x_gen)
    assert torch.allclose(dx, grad / x_gen.numel())  # d loss / d x_gen = grad / numel


def test_dmd_gradient_nan_to_num():
    x = t([[1.0, 1.0]])
    # x_gen == x0_real == x0_fake: 0 / 0 -> 0
    assert torch.equal(dmd_gradient(x, x, x), torch.zeros_like(x))
    # weight_factor 0 but a difference: finite (inf -> the largest float)
    g = dmd_gradient(x, x, t([[2.0, 1.0]]))
    assert torch.isfinite(g).all() and g[0, 0, 0, 0] > 1e30 and g[0, 0, 0, 1] == 0


def test_gan_losses_hand_values():
    real = torch.tensor([0.0, 2.0])
    fake = torch.tensor([0.0, -1.0])
    ln2, sp_m1, sp_m2, sp_1 = math.log(2), math.log1p(math.exp(-1)), math.log1p(math.exp(-2)), math.log1p(math.e)
    # L_D = mean softplus(fake) + mean softplus(-real) = (ln2 + ln(1+e^-1))/2 + (ln2 + ln(1+e^-2))/2 = 0.913242...
    assert gan_discriminator_loss(real, fake).item() == pytest.approx((ln2 + sp_m1) / 2 + (ln2 + sp_m2) / 2, rel=1e-6)
    assert gan_discriminator_loss(real, fake).item() == pytest.approx(0.9132420, rel=1e-6)
    # L_G = mean softplus(-fake) = (ln2 + ln(1+e))/2 = 1.003204...
    assert gan_generator_loss(fake).item() == pytest.approx((ln2 + sp_1) / 2, rel=1e-6)
    assert gan_generator_loss(fake).item() == pytest.approx(1.0032044, rel=1e-6)


class Constant(torch.nn.Module):
    def __init__(self, value: torch.Tensor | None) -> None:
        super().__init__()
        self.value = value

    def forward(self, x, t, cond):
        return torch.zeros_like(x) if self.value is None else self.value


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction", "sample"])
def test_fake_score_denoising_loss(kind):
    s = NoiseSchedule(1000, "scaled_linear", 0.00085, 0.012, kind)
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(4, 1, 2, 2, generator=g)
    n = torch.randn(4, 1, 2, 2, generator=g)
    steps = torch.tensor([3, 300, 600, 999])
    target = s.denoising_target(x0, n, steps)
    assert fake_score_denoising_loss(Constant(target), x0, steps, n, None, s).item() == 0.0
    zero = fake_score_denoising_loss(Constant(None), x0, steps, n, None, s).item()
    assert zero == pytest.approx(target.pow(2).mean().item(), rel=1e-6)
