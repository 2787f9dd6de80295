"""The Fréchet distance between Gaussians fitted to two feature sets (docs/pipeline.md §4), in float64:
`|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2))`.

`tr (S1 S2)^(1/2)` equals `tr (S1^(1/2) S2 S1^(1/2))^(1/2)` (the two matrices are similar), and the latter is
symmetric positive semi-definite, so both square roots come from symmetric eigen-decompositions; eigenvalues
that rounding makes slightly negative are clipped to 0.
"""
from __future__ import annotations

import torch


def fit_gaussian(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean (D,), unbiased covariance (D, D)) of features (N, D), N >= 2, in float64."""
    if features.dim() != 2 or features.shape[0] < 2:
        raise ValueError(f"need features of shape (N >= 2, D), got {tuple(features.shape)}")
    x = features.detach().to("cpu", torch.float64)
    mean = x.mean(0)
    centred = x - mean
    return mean, centred.T @ centred / (x.shape[0] - 1)


def _symmetric(matrix: torch.Tensor) -> torch.Tensor:
    return (matrix + matrix.T) / 2


def sqrtm_psd(matrix: torch.Tensor) -> torch.Tensor:
    """The symmetric square root of a symmetric positive semi-definite matrix."""
    values, vectors = torch.linalg.eigh(_symmetric(matrix))
    return (vectors * values.clamp(min=0).sqrt()) @ vectors.T


def frechet_distance(mu1: torch.Tensor, sigma1: torch.Tensor, mu2: torch.Tensor, sigma2: torch.Tensor) -> float:
    mu1, sigma1, mu2, sigma2 = (t.to("cpu", torch.float64) for t in (mu1, sigma1, mu2, sigma2))
    root1 = sqrtm_psd(sigma1)
    cross = torch.linalg.eigvalsh(_symmetric(root1 @ sigma2 @ root1)).clamp(min=0).sqrt().sum()
    distance = (mu1 - mu2).pow(2).sum() + torch.trace(sigma1) + torch.trace(sigma2) - 2 * cross
    return float(distance)


def feature_distance(features1: torch.Tensor, features2: torch.Tensor) -> float | None:
    """The Fréchet distance between Gaussians fitted to two feature sets (N1, D) and (N2, D); None when a feature
    is not finite (e.g. a diverged model's samples)."""
    if not (torch.isfinite(features1).all() and torch.isfinite(features2).all()):
        return None
    return frechet_distance(*fit_gaussian(features1), *fit_gaussian(features2))
