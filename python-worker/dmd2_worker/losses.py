"""The losses of DMD2 (docs/method.md). Equation numbers refer to Yin et al., arXiv 2405.14867."""
from __future__ import annotations

import torch
from torch.nn import functional as F

from .diffusion import NoiseSchedule


def dmd_gradient(x_gen: torch.Tensor, x0_real: torch.Tensor, x0_fake: torch.Tensor) -> torch.Tensor:
    """The distribution matching gradient (Eq. 2; DMD v1 Eq. 7-8), normalised per sample.

    p_real = x_gen - x0_real, p_fake = x_gen - x0_fake (the paper's names); weight_factor = mean over C, H, W of
    |p_real|; grad = nan_to_num((p_real - p_fake) / weight_factor) = (x0_fake - x0_real) / weight_factor.
    No gradient flows through it.
    """
    with torch.no_grad():
        x_gen = x_gen.detach().float()
        p_real = x_gen - x0_real.float()
        p_fake = x_gen - x0_fake.float()
        dims = tuple(range(1, x_gen.dim()))
        weight_factor = p_real.abs().mean(dim=dims, keepdim=True)
        grad = (p_real - p_fake) / weight_factor
        return torch.nan_to_num(grad)


def dmd_loss(x_gen: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """loss_dmd = 0.5 * mse(x_gen, (x_gen - grad).detach()), mean over all elements, so that
    d loss_dmd / d x_gen = grad / numel(x_gen)."""
    target = (x_gen - grad).detach()
    return 0.5 * F.mse_loss(x_gen.float(), target.float(), reduction="mean")


def fake_score_denoising_loss(
    net: torch.nn.Module,
    x0: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor,
    cond: torch.Tensor | None,
    schedule: NoiseSchedule,
) -> torch.Tensor:
    """The ordinary denoising loss (Sec. 4.2): mse(net(x_t, t, c), target), target = noise (epsilon),
    sqrt(a) n - sqrt(1-a) x0 (v_prediction) or x0 (sample). Also trains the built-in teacher."""
    x_t = schedule.add_noise(x0, t, noise)
    target = schedule.denoising_target(x0, noise, t)
    out = net(x_t, t, cond)
    return F.mse_loss(out.float(), target.float(), reduction="mean")


def gan_discriminator_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Non-saturating D loss (Eq. 3): mean softplus(D(fake)) + mean softplus(-D(real))."""
    return F.softplus(logits_fake.float()).mean() + F.softplus(-logits_real.float()).mean()


def gan_generator_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """Non-saturating G loss (Eq. 3): mean softplus(-D(G(z)))."""
    return F.softplus(-logits_fake.float()).mean()
