"""sampling.py: backward simulation returns G's own re-noised sample; DDIM and guidance."""
from __future__ import annotations

import torch

from dmd2_worker.diffusion import NoiseSchedule
from dmd2_worker.sampling import backward_simulation, ddim_sample, ddim_timesteps, guided_output, sample_generator

SCHEDULE = NoiseSchedule(1000, "scaled_linear", 0.00085, 0.012)
TAUS = [999, 749, 499, 249]


class ToyG:
    """A deterministic toy generator: x0 = 0.5 x + t / 1000 (+ cond); records its calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[torch.Tensor, int]] = []

    def __call__(self, x, t, cond):
        assert t.dtype == torch.long and t.shape == (x.shape[0],)
        self.calls.append((x.clone(), int(t[0])))
        out = 0.5 * x + t.float().reshape(-1, 1, 1, 1) / 1000
        return out if cond is None else out + cond.float().reshape(-1, 1, 1, 1)


def test_backward_simulation_is_gs_own_renoised_sample():
    z = torch.randn(3, 1, 2, 2, generator=torch.Generator().manual_seed(5))
    cond = torch.tensor([0, 1, 2])
    for k in range(4):
        G = ToyG()
        x_k = backward_simulation(G, z, cond, TAUS, k, SCHEDULE, torch.Generator().manual_seed(11))
        # the same loop by hand, with the same noise draws
        ref_g = torch.Generator().manual_seed(11)
        x = z
        for i in range(k):
            x0 = 0.5 * x + TAUS[i] / 1000 + cond.float().reshape(-1, 1, 1, 1)
            n = torch.randn(x.shape, generator=ref_g)
            a = SCHEDULE.alpha_bar[TAUS[i + 1]]
            x = (a.sqrt() * x0.double() + (1 - a).sqrt() * n.double()).float()
        assert torch.allclose(x_k, x, atol=1e-6), k
        assert [t for _, t in G.calls] == TAUS[:k]  # G ran at steps 0..k-1 only
        assert not x_k.requires_grad


def test_k_zero_is_the_noise_itself_and_draws_nothing():
    z = torch.randn(2, 1, 2, 2)
    g = torch.Generator().manual_seed(3)
    state = g.get_state()
    assert backward_simulation(ToyG(), z, None, TAUS, 0, SCHEDULE, g) is z
    assert torch.equal(g.get_state(), state)


def test_sample_generator_is_backward_simulation_then_the_last_step():
    z = torch.randn(2, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    out = sample_generator(ToyG(), z, None, TAUS, SCHEDULE, torch.Generator().manual_seed(4))
    x_last = backward_simulation(ToyG(), z, None, TAUS, 3, SCHEDULE, torch.Generator().manual_seed(4))
    assert torch.allclose(out, 0.5 * x_last + TAUS[-1] / 1000)
    # one step: G(z, tau_0)
    assert torch.allclose(sample_generator(ToyG(), z, None, [999], SCHEDULE, None), 0.5 * z + 0.999)


class PointMassEps(torch.nn.Module):
    """The exact epsilon-denoiser of a point mass at x_star (cond shifts x_star by cond)."""

    def __init__(self, x_star: torch.Tensor) -> None:
        super().__init__()
        self.x_star = x_star

    def forward(self, x, t, cond):
        sa, s1 = SCHEDULE.coefficients(t, x)
        target = self.x_star if cond is None else self.x_star + cond.float().reshape(-1, 1, 1, 1)
        return (x - sa * target) / s1


def test_ddim_with_an_exact_denoiser_lands_on_the_point():
    x_star = torch.tensor([0.3, -0.7, 0.1, 0.9]).reshape(1, 1, 2, 2)
    z = torch.randn(5, 1, 2, 2, generator=torch.Generator().manual_seed(2))
    for steps in (1, 4, 50):
        out = ddim_sample(PointMassEps(x_star), z, None, SCHEDULE, steps)
        assert torch.allclose(out, x_star.expand_as(out), atol=1e-4), steps
    assert ddim_timesteps(50, 1000)[:3] == [999, 979, 959] and ddim_timesteps(50, 1000)[-1] == 19


def test_classifier_free_guidance_combines_outputs():
    class ByClass(torch.nn.Module):
        def forward(self, x, t, cond):
            return torch.where(cond.reshape(-1, 1, 1, 1) == 4, torch.full_like(x, 1.0), torch.full_like(x, 3.0))

    x = torch.zeros(2, 1, 2, 2)
    t = torch.tensor([10, 10])
    cond = torch.tensor([0, 1])
    out = guided_output(ByClass(), x, t, cond, 2.0, null_class=4)
    assert torch.allclose(out, torch.full_like(x, 1.0 + 2.0 * (3.0 - 1.0)))  # uncond + s (cond - uncond) = 5
    assert torch.allclose(guided_output(ByClass(), x, t, cond, 1.0, 4), torch.full_like(x, 3.0))


def test_ddim_with_clip_sample_is_diffusers_ddim_scheduler():
    """clip_sample: x0 clamped at every step, the model's noise direction kept: diffusers' DDIMScheduler with
    clip_sample (trailing spacing, set_alpha_to_one, so its last sample is the last clamped x0)."""
    from diffusers import DDIMScheduler

    class Overshooting(torch.nn.Module):  # eps that leaves x0 well beyond [-1, 1] at most steps
        def forward(self, x, t, cond):
            return 0.3 * x + 0.5 * torch.sin(t.float() / 100).reshape(-1, 1, 1, 1)

    model = Overshooting()
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                              beta_end=0.012, prediction_type="epsilon", clip_sample=True, clip_sample_range=1.0,
                              set_alpha_to_one=True, timestep_spacing="trailing")
    scheduler.set_timesteps(10)
    assert scheduler.timesteps.tolist() == ddim_timesteps(10, 1000)
    z = 2 * torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(5))
    x = z
    for t in scheduler.timesteps:
        x = scheduler.step(model(x, t.reshape(1).expand(3), None), t, x).prev_sample
    ours = ddim_sample(model, z, None, SCHEDULE, 10, clip_sample=1.0)
    assert torch.allclose(ours, x, atol=1e-5)
    assert not torch.allclose(ddim_sample(model, z, None, SCHEDULE, 10), x, atol=1e-2)  # the clamp mattered
