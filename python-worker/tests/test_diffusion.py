"""diffusion.py: the schedule and the output -> x0 conversions against hand-computed values."""
from __future__ import annotations

import math

import pytest
import torch

from dmd2_worker.diffusion import NoiseSchedule, dmd_timestep_range, generator_timesteps


def hand_alpha_bar(betas: list[float]) -> list[float]:
    out, acc = [], 1.0
    for b in betas:
        acc *= 1.0 - b
        out.append(acc)
    return out


def test_scaled_linear_schedule_matches_hand_values():
    s = NoiseSchedule(1000, "scaled_linear", 0.00085, 0.012)
    assert s.betas.dtype == torch.float64 and s.alpha_bar.dtype == torch.float64
    lo, hi = math.sqrt(0.00085), math.sqrt(0.012)
    betas = [(lo + i * (hi - lo) / 999) ** 2 for i in range(1000)]
    ab = hand_alpha_bar(betas)
    assert s.betas[0].item() == pytest.approx(0.00085, rel=1e-12)
    assert s.betas[-1].item() == pytest.approx(0.012, rel=1e-12)
    assert s.alpha_bar[0].item() == pytest.approx(0.99915, rel=1e-12)
    assert s.alpha_bar[999].item() == pytest.approx(ab[999], rel=1e-9)
    assert s.alpha_bar[499].item() == pytest.approx(ab[499], rel=1e-9)
    # docs/method.md: 1/sqrt(alpha_bar[999]) ~ 14.6 for this schedule
    assert 1 / math.sqrt(s.alpha_bar[999].item()) == pytest.approx(14.6, abs=0.05)


def test_linear_schedule_matches_hand_values():
    s = NoiseSchedule(1000, "linear", 1e-4, 0.02)
    assert s.alpha_bar[0].item() == pytest.approx(1 - 1e-4, rel=1e-12)
    b1 = 1e-4 + (0.02 - 1e-4) / 999
    assert s.alpha_bar[1].item() == pytest.approx((1 - 1e-4) * (1 - b1), rel=1e-12)
    # docs/method.md: ~156x amplification at t = 999
    assert 1 / math.sqrt(s.alpha_bar[999].item()) == pytest.approx(157.41, abs=0.01)  # docs: "~156"


def small_schedule() -> NoiseSchedule:
    # T = 2, linear 0.36 .. 0.64: alpha_bar = [0.64, 0.64 * 0.36], so at t = 0 sqrt(a) = 0.8, sqrt(1-a) = 0.6
    return NoiseSchedule(2, "linear", 0.36, 0.64)


def test_add_noise_and_targets_hand_values():
    s = small_schedule()
    t = torch.tensor([0])
    x0 = torch.tensor([[1.0]])
    n = torch.tensor([[0.5]])
    assert s.add_noise(x0, t, n).item() == pytest.approx(0.8 * 1.0 + 0.6 * 0.5)  # 1.1
    assert s.denoising_target(x0, n, t, "epsilon").item() == pytest.approx(0.5)
    assert s.denoising_target(x0, n, t, "v_prediction").item() == pytest.approx(0.8 * 0.5 - 0.6 * 1.0)  # -0.2
    assert s.denoising_target(x0, n, t, "sample").item() == pytest.approx(1.0)
    t1 = torch.tensor([1])
    a1 = 0.64 * 0.36
    assert s.add_noise(x0, t1, n).item() == pytest.approx(math.sqrt(a1) + math.sqrt(1 - a1) * 0.5, rel=1e-6)


@pytest.mark.parametrize("kind,expected", [
    ("epsilon", (1.0 - 0.6 * 0.5) / 0.8),  # 0.875
    ("v_prediction", 0.8 * 1.0 - 0.6 * 0.5),  # 0.5
    ("sample", 0.5),
])
def test_to_x0_hand_values(kind, expected):
    s = small_schedule()
    x_t = torch.tensor([[1.0]])
    out = torch.tensor([[0.5]])
    x0 = s.to_x0(out, x_t, torch.tensor([0]), kind)
    assert x0.dtype == torch.float32
    assert x0.item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction", "sample"])
def test_target_inverts_to_x0(kind):
    s = NoiseSchedule(1000, "scaled_linear", 0.00085, 0.012, kind)
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(6, 1, 4, 4, generator=g) * 2 - 1
    n = torch.randn(6, 1, 4, 4, generator=g)
    t = torch.tensor([0, 1, 250, 500, 900, 999])
    x_t = s.add_noise(x0, t, n)
    rec = s.to_x0(s.denoising_target(x0, n, t), x_t, t)
    assert torch.allclose(rec, x0, atol=2e-5)
    assert s.to_x0(n.double(), x_t.double(), t).dtype == torch.float64


def test_bad_inputs():
    with pytest.raises(ValueError, match="beta_schedule"):
        NoiseSchedule(10, "cosine", 0.1, 0.2)
    s = small_schedule()
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        s.add_noise(torch.zeros(1, 1), torch.tensor([2]), torch.zeros(1, 1))
    with pytest.raises(ValueError, match="prediction_type"):
        s.to_x0(torch.zeros(1, 1), torch.zeros(1, 1), torch.tensor([0]), "score")


def test_generator_timesteps_default_rule():
    assert generator_timesteps(4, 999) == [999, 749, 499, 249]
    assert generator_timesteps(2, 999) == [999, 499]
    assert generator_timesteps(3, 999) == [999, 666, 333]
    assert generator_timesteps(1, 399) == [399]
    assert generator_timesteps(2, 996) == [996, 497]  # round half up, as JavaScript's Math.round: 498.5 -> 499


def test_dmd_timestep_range():
    assert dmd_timestep_range(0.02, 0.98, 1000) == (20, 980)
    assert dmd_timestep_range(0.0, 1.0, 1000) == (0, 999)  # round(1.0 T) = T is clamped to T - 1
