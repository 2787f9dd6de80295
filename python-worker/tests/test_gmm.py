"""data/gmm.py: distinct deterministic class means, sampling, and the closed-form posterior mean."""
from __future__ import annotations

import itertools

import pytest
import torch

from dmd2_worker.data.gmm import AMPLITUDE, GaussianMixture, class_means
from dmd2_worker.diffusion import NoiseSchedule

SCHEDULE = NoiseSchedule(1000, "scaled_linear", 0.00085, 0.012)


@pytest.mark.parametrize("size", [4, 8, 12, 16, 32])
def test_means_are_distinct_and_in_range(size):
    mu = class_means(10, size)
    assert mu.shape == (10, 1, size, size)
    assert mu.abs().max() <= 1.0
    assert torch.allclose(mu.abs(), torch.full_like(mu, AMPLITUDE))
    assert torch.equal(mu, class_means(10, size))  # deterministic
    for a, b in itertools.combinations(range(10), 2):
        frac = (mu[a] != mu[b]).float().mean().item()  # fraction of pixels that differ
        assert frac >= 0.12, (size, a, b, frac)


def test_sampling_is_seeded_and_has_the_right_moments():
    gmm = GaussianMixture(4, 8, 0.1)
    x, y = gmm.sample(4000, torch.Generator().manual_seed(0))
    x2, y2 = gmm.sample(4000, torch.Generator().manual_seed(0))
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert x.shape == (4000, 1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert set(y.unique().tolist()) == {0, 1, 2, 3}
    dev = x - gmm.means[y]
    assert dev.std().item() == pytest.approx(0.1, rel=0.03)
    assert dev.mean().abs().item() < 0.005
    assert (gmm.nearest_class(x) == y).all()
    xk = gmm.sample_class(torch.full((10,), 2), torch.Generator().manual_seed(1))
    assert (gmm.nearest_class(xk) == 2).all()


def test_analytic_x0_class_restricted_hand_formula():
    gmm = GaussianMixture(3, 4, 0.2)
    t = torch.tensor([400, 400])
    a = SCHEDULE.alpha_bar[400].sqrt().item()
    b = (1 - SCHEDULE.alpha_bar[400]).sqrt().item()
    x_t = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(3))
    cond = torch.tensor([1, 2])
    mu = gmm.means[cond]
    expected = mu + (a * 0.04 / (a * a * 0.04 + b * b)) * (x_t - a * mu)
    assert torch.allclose(gmm.analytic_x0(x_t, t, SCHEDULE, cond), expected, atol=1e-6)


def test_analytic_x0_mixture_limits_and_optimality():
    gmm = GaussianMixture(4, 8, 0.1)
    g = torch.Generator().manual_seed(4)
    x0, y = gmm.sample(2000, g)
    # low noise (std sqrt(1 - 0.99915) = 0.029): the posterior mean is within the noise of the sample itself
    t0 = torch.zeros(2000, dtype=torch.long)
    n = torch.randn(x0.shape, generator=g)
    x_t = SCHEDULE.add_noise(x0, t0, n)
    assert (gmm.analytic_x0(x_t, t0, SCHEDULE) - x0).pow(2).mean().sqrt() < 0.029
    # moderate noise: better (lower MSE) than the class-blind and the naive estimators, and the class-aware
    # posterior mean is better still
    t = torch.full((2000,), 500)
    x_t = SCHEDULE.add_noise(x0, t, n)
    mse = lambda e: (e - x0).pow(2).mean().item()  # noqa: E731
    post = mse(gmm.analytic_x0(x_t, t, SCHEDULE))
    naive = mse(x_t / SCHEDULE.alpha_bar[500].sqrt().float())
    blind = mse(gmm.means.mean(0, keepdim=True).expand_as(x0))
    assert post < 0.5 * naive and post < 0.5 * blind
    assert mse(gmm.analytic_x0(x_t, t, SCHEDULE, y)) <= post + 1e-6
