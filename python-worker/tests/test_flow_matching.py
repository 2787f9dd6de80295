"""The flow-matching schedule (flow_matching.py, docs/method.md "Flow-matching teachers"): conversions, the
shifted sigmas against diffusers' FlowMatchEulerDiscreteScheduler, and the DMD and fake-score losses on it."""
from __future__ import annotations

import math

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from dmd2_worker.flow_matching import FlowConfigError, FlowMatchSchedule, calculate_mu
from dmd2_worker.losses import dmd_gradient, dmd_loss, fake_score_denoising_loss
from dmd2_worker.sampling import backward_simulation, sample_generator

SD3 = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 3.0}
FLUX = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 3.0,
        "use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 1.15, "base_image_seq_len": 256,
        "max_image_seq_len": 4096}


def test_x0_from_velocity_and_back():
    s = FlowMatchSchedule.from_config(SD3)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(3, 4, 5, 5, generator=g)
    eps = torch.randn(3, 4, 5, 5, generator=g)
    t = torch.tensor([0, 500, 999])
    x_t = s.add_noise(x0, t, eps)
    sigma = s.sigma_of(t, x0)
    assert torch.allclose(x_t, (1 - sigma) * x0 + sigma * eps)
    v = eps - x0  # what a perfect network predicts
    assert torch.allclose(s.to_x0(v, x_t, t), x0, atol=1e-5)
    assert torch.allclose(s.to_eps(x0, x_t, t), eps, atol=1e-4)
    assert torch.allclose(s.velocity_to_eps(v, x_t, t), eps, atol=1e-5)
    assert torch.equal(s.denoising_target(x0, eps, t), eps - x0)
    # the conversion is float32 even for bfloat16 network outputs; float64 stays float64
    assert s.to_x0(v.bfloat16(), x_t, t).dtype == torch.float32
    assert s.to_x0(v.double(), x_t.double(), t).dtype == torch.float64
    # index T-1 is pure noise: x0 = x_t - v
    assert float(s.sigma_of(torch.tensor(999))) == 1.0
    with pytest.raises(ValueError, match=r"timesteps must lie in \[0, 1000\)"):
        s.add_noise(x0, torch.tensor([0, 1, 1000]), eps)


def test_static_shift_sigmas_are_diffusers_training_sigmas():
    ours = FlowMatchSchedule.from_config(SD3)
    sched = FlowMatchEulerDiscreteScheduler.from_config(SD3)
    theirs = sched.sigmas.double().flip(0)  # diffusers lists them from sigma = 1 down
    assert theirs.shape == (1000,)
    assert torch.allclose(ours.sigmas, theirs, atol=1e-6, rtol=0)
    # the model timestep is sigma * T, the scheduler's training timesteps
    idx = torch.tensor([0, 1, 500, 998, 999])
    assert torch.allclose(ours.model_timestep(idx), sched.timesteps.flip(0)[idx], atol=1e-3)
    # by hand: shift 3 at index 499 (s = 0.5): 3 * 0.5 / (1 + 2 * 0.5) = 0.75
    assert float(ours.sigma_of(torch.tensor(499))) == pytest.approx(0.75)
    # shift 1 is the plain grid (t + 1) / T
    plain = FlowMatchSchedule.from_config({**SD3, "shift": 1.0})
    assert torch.allclose(plain.sigmas, torch.arange(1, 1001, dtype=torch.float64) / 1000)


@pytest.mark.parametrize("seq_len", [16, 256, 1024, 4096])
def test_dynamic_shift_sigmas_match_diffusers(seq_len):
    ours = FlowMatchSchedule.from_config(FLUX, image_seq_len=seq_len)
    mu = calculate_mu(seq_len, 256, 4096, 0.5, 1.15)
    assert ours.mu == pytest.approx(mu)
    sched = FlowMatchEulerDiscreteScheduler.from_config(FLUX)
    # with dynamic shifting the constructed grid is unshifted; the pipelines shift with time_shift(mu, 1, sigma)
    grid = sched.sigmas.flip(0)
    assert torch.allclose(ours.sigmas, sched.time_shift(mu, 1.0, grid).double(), atol=1e-6, rtol=0)
    # the same sigmas set_timesteps gives when handed our unshifted grid and mu (Flux's pipeline passes mu)
    sched.set_timesteps(sigmas=grid.flip(0)[::100].numpy(), mu=mu)
    assert torch.allclose(sched.sigmas[:-1].double(), ours.sigmas.flip(0)[::100], atol=1e-6, rtol=0)
    # by hand at s = 0.5: e^mu / (e^mu + 1)
    assert float(ours.sigma_of(torch.tensor(499))) == pytest.approx(math.exp(mu) / (math.exp(mu) + 1))


def test_config_errors_are_one_line_with_the_key():
    with pytest.raises(FlowConfigError, match=r"^sched.json: use_dynamic_shifting needs the image's token count"):
        FlowMatchSchedule.from_config(FLUX, where="sched.json")
    with pytest.raises(FlowConfigError, match=r"^sched.json: use_karras_sigmas True is not supported .*\(set it to false\)$"):
        FlowMatchSchedule.from_config({**SD3, "use_karras_sigmas": True}, where="sched.json")
    with pytest.raises(FlowConfigError, match=r"shift_terminal 0.1 is not supported .*\(set it to null\)"):
        FlowMatchSchedule.from_config({**SD3, "shift_terminal": 0.1})
    with pytest.raises(FlowConfigError, match=r"shift must be a positive number, got 0"):
        FlowMatchSchedule.from_config({**SD3, "shift": 0})
    # defaults fill what a config leaves out (diffusers' shift 1.0, T 1000)
    assert FlowMatchSchedule.from_config({"_class_name": "FlowMatchEulerDiscreteScheduler"}).num_train_timesteps == 1000


def test_dmd_gradient_on_flow_x0_estimates_by_hand():
    """The teacher and fake score give velocities; both become x0 = x_t - sigma v and the DMD gradient is
    (x0_fake - x0_real) / mean|x_gen - x0_real|, computed here by hand on 1x1x2x1 tensors."""
    s = FlowMatchSchedule.from_config(SD3)
    t = torch.tensor([499])  # sigma 0.75
    x_gen = torch.tensor([[[[1.0], [-2.0]]]])
    noise = torch.tensor([[[[0.5], [1.0]]]])
    x_t = s.add_noise(x_gen, t, noise)  # 0.25 x + 0.75 n = [0.625, 0.25]
    assert torch.allclose(x_t.flatten(), torch.tensor([0.625, 0.25]))
    v_real = torch.tensor([[[[0.1], [0.3]]]])
    v_fake = torch.tensor([[[[-0.3], [0.7]]]])
    x0_real = s.to_x0(v_real, x_t, t)  # [0.625 - 0.075, 0.25 - 0.225] = [0.55, 0.025]
    x0_fake = s.to_x0(v_fake, x_t, t)  # [0.625 + 0.225, 0.25 - 0.525] = [0.85, -0.275]
    assert torch.allclose(x0_real.flatten(), torch.tensor([0.55, 0.025]))
    assert torch.allclose(x0_fake.flatten(), torch.tensor([0.85, -0.275]))
    # weight = mean(|1 - 0.55|, |-2 - 0.025|) = (0.45 + 2.025) / 2 = 1.2375
    grad = dmd_gradient(x_gen, x0_real, x0_fake)
    assert torch.allclose(grad.flatten(), torch.tensor([0.3, -0.3]) / 1.2375)
    # d loss / d x_gen = grad / numel
    x = x_gen.clone().requires_grad_(True)
    dmd_loss(x, grad).backward()
    assert torch.allclose(x.grad.flatten(), torch.tensor([0.3, -0.3]) / 1.2375 / 2)


class _ConstNet(torch.nn.Module):
    """net(x, t, c) = a * x: a linear 'velocity' whose loss is computed by hand below."""

    def __init__(self, a: float) -> None:
        super().__init__()
        self.a = a

    def forward(self, x, t, cond):
        return self.a * x


def test_fake_score_flow_matching_loss_by_hand():
    s = FlowMatchSchedule.from_config(SD3)
    t = torch.tensor([499, 999])  # sigma 0.75 and 1
    x0 = torch.tensor([[[[2.0]]], [[[-1.0]]]])
    noise = torch.tensor([[[[1.0]]], [[[3.0]]]])
    # x_t = [0.25 * 2 + 0.75 * 1, 0 * -1 + 1 * 3] = [1.25, 3]; out = 0.5 x_t = [0.625, 1.5];
    # target = noise - x0 = [-1, 4]; mse = ((0.625 + 1)^2 + (1.5 - 4)^2) / 2
    loss = fake_score_denoising_loss(_ConstNet(0.5), x0, t, noise, None, s)
    assert float(loss) == pytest.approx(((1.625) ** 2 + 2.5 ** 2) / 2)


def test_generator_steps_renoise_in_flow_form():
    """Backward simulation and sampling call only the schedule: one step from sigma = 1, then
    x <- (1 - sigma_next) x0 + sigma_next n."""
    s = FlowMatchSchedule.from_config(SD3)
    z = torch.randn(2, 1, 2, 2, generator=torch.Generator().manual_seed(1))
    seen = []

    def G(x, t, c):
        seen.append(int(t[0]))
        return torch.full_like(x, 0.5)

    x = backward_simulation(G, z, None, [999, 499], 1, s, torch.Generator().manual_seed(7))
    n = torch.randn(z.shape, generator=torch.Generator().manual_seed(7))
    assert torch.allclose(x, 0.25 * 0.5 + 0.75 * n)
    seen.clear()
    out = sample_generator(G, z, None, [999, 499], s, torch.Generator().manual_seed(7))
    assert seen == [999, 499] and torch.equal(out, torch.full_like(z, 0.5))
