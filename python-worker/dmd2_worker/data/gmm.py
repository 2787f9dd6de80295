"""The built-in data set: a mixture of Gaussians over 1 x S x S images, one component per class.

Class k has a fixed mean pattern (stripes, diagonals, a square, ...) with pixels at +-`AMPLITUDE` and isotropic
per-pixel standard deviation `std`; classes are equally likely. Because every quantity is Gaussian, the
posterior mean E[x0 | x_t] is known in closed form (`analytic_x0`), which gives the tests a ground truth.
"""
from __future__ import annotations

import torch

from ..config import GmmConfig
from ..diffusion import NoiseSchedule
from .base import DataSource, Split

AMPLITUDE = 0.8  # mean pixels are +-0.8, so samples with std 0.1 stay (almost always) inside [-1, 1]
MAX_CLASSES = 10
FIXED_DRAWS = 2000  # the size of `GmmDataSource.all()` (docs/pipeline.md §1)
FIXED_DRAW_SEEDS = {"train": 1000, "heldout": 1001}  # one fixed generator seed per split


def _pattern(k: int, size: int) -> torch.Tensor:
    """Boolean S x S mask of pattern k; coordinates are pixel centres in (0, 1), so patterns scale with S."""
    c = (torch.arange(size, dtype=torch.float64) + 0.5) / size
    v, u = torch.meshgrid(c, c, indexing="ij")  # v: row (down), u: column (right)
    if k == 0:  # horizontal stripes
        return torch.floor(v * 4) % 2 == 0
    if k == 1:  # vertical stripes
        return torch.floor(u * 4) % 2 == 0
    if k == 2:  # main diagonal band
        return (u - v).abs() < 0.25
    if k == 3:  # anti-diagonal band
        return (u + v - 1).abs() < 0.25
    if k == 4:  # centred square
        return torch.maximum((u - 0.5).abs(), (v - 0.5).abs()) < 0.25
    if k == 5:  # 2 x 2 checkerboard (quadrants)
        return (torch.floor(u * 2) + torch.floor(v * 2)) % 2 == 0
    if k == 6:  # plus sign
        return ((u - 0.5).abs() < 0.15) | ((v - 0.5).abs() < 0.15)
    if k == 7:  # frame (outer ring)
        return torch.maximum((u - 0.5).abs(), (v - 0.5).abs()) > 0.35
    if k == 8:  # left half
        return u < 0.5
    if k == 9:  # X (both diagonals)
        return ((u - v).abs() < 0.2) | ((u + v - 1).abs() < 0.2)
    raise ValueError(f"gmm: at most {MAX_CLASSES} classes, got class {k}")


def class_means(num_classes: int, image_size: int) -> torch.Tensor:
    """(K, 1, S, S) float32 means with pixels in {-AMPLITUDE, +AMPLITUDE}."""
    if not 1 <= num_classes <= MAX_CLASSES:
        raise ValueError(f"gmm: num_classes must be in 1..{MAX_CLASSES}, got {num_classes}")
    masks = torch.stack([_pattern(k, image_size) for k in range(num_classes)])
    return (masks.to(torch.float32) * 2 - 1).mul(AMPLITUDE).unsqueeze(1)


class GaussianMixture:
    def __init__(self, num_classes: int, image_size: int, std: float) -> None:
        self.num_classes = num_classes
        self.image_size = image_size
        self.std = float(std)
        self.means = class_means(num_classes, image_size)

    @classmethod
    def from_config(cls, cfg: GmmConfig) -> "GaussianMixture":
        return cls(cfg.num_classes, cfg.image_size, cfg.std)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (1, self.image_size, self.image_size)

    def sample_class(self, labels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """One sample per label (int64 (B,)); draws the noise from `generator` (CPU)."""
        labels = labels.to("cpu", torch.long)
        noise = torch.randn((labels.shape[0], *self.image_shape), generator=generator)
        return self.means[labels] + self.std * noise

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """n samples: draws labels (uniform), then noise. Returns (x float32 (n,1,S,S), labels int64 (n,))."""
        labels = torch.randint(0, self.num_classes, (n,), generator=generator)
        return self.sample_class(labels, generator), labels

    @torch.no_grad()
    def analytic_x0(
        self, x_t: torch.Tensor, t: torch.Tensor, schedule: NoiseSchedule, cond: torch.Tensor | None = None
    ) -> torch.Tensor:
        """E[x0 | x_t] (float64 maths, float32 result); restricted to class `cond` when given.

        With x_t = a x0 + b n and x0 | k ~ N(mu_k, s^2 I): x_t | k ~ N(a mu_k, (a^2 s^2 + b^2) I),
        E[x0 | x_t, k] = mu_k + a s^2 / (a^2 s^2 + b^2) (x_t - a mu_k), and the class posterior is a softmax of
        the Gaussian log-likelihoods (uniform prior).
        """
        x = x_t.detach().to("cpu", torch.float64)
        mu = self.means.to(torch.float64)  # (K, C, H, W)
        a, b = schedule.coefficients(t, x)  # (B, 1, 1, 1)
        var = a**2 * self.std**2 + b**2
        # per-class posterior means, (B, K, C, H, W)
        mean_k = mu[None] + (a * self.std**2 / var)[:, None] * (x[:, None] - a[:, None] * mu[None])
        if cond is not None:
            cond = cond.to("cpu", torch.long)
            out = mean_k[torch.arange(x.shape[0]), cond]
        else:
            sq = (x[:, None] - a[:, None] * mu[None]).pow(2).flatten(2).sum(-1)  # (B, K)
            w = torch.softmax(-sq / (2 * var.reshape(-1, 1)), dim=1)
            out = (w[:, :, None, None, None] * mean_k).sum(1)
        return out.to(device=x_t.device, dtype=torch.float32)

    def nearest_class(self, x: torch.Tensor) -> torch.Tensor:
        """Index of the nearest class mean (L2) for each image."""
        d = (x.detach().to("cpu", torch.float32)[:, None] - self.means[None]).pow(2).flatten(2).sum(-1)
        return d.argmin(dim=1)


class GmmDataSource(GaussianMixture, DataSource):
    """The `gmm` data source (docs/pipeline.md §1): `sample` draws fresh images in both splits; `all()` is
    FIXED_DRAWS images drawn from a generator seeded per split, so train and held-out are independent draws."""

    def __init__(self, cfg: GmmConfig, split: Split) -> None:
        super().__init__(cfg.num_classes, cfg.image_size, cfg.std)
        self.split = split

    def all(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.sample(FIXED_DRAWS, torch.Generator().manual_seed(FIXED_DRAW_SEEDS[self.split]))
