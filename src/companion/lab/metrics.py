"""Sample-quality metrics used by the chapters and tests.

MMD (Gretton et al. 2012) with the Gaussian kernel k(a, b) = exp(-|a - b|^2 / (2 h^2)). The unbiased
estimator drops the diagonal terms, so it is centred on the true MMD^2 and can be negative when the two
laws agree; compare it with :func:`mmd2_noise_floor`, the same estimator between independent samples of
one law.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["median_bandwidth", "mmd2", "mmd2_noise_floor", "binned_kl"]


def _2d(x: Tensor, name: str) -> Tensor:
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.ndim < 2 or x.shape[0] < 2:
        raise ValueError(f"{name} must be a floating-point tensor of shape (n >= 2, ...)")
    return x.reshape(x.shape[0], -1).to(torch.float64)


def median_bandwidth(y: Tensor, max_points: int = 1000) -> float:
    """The median heuristic: the median pairwise distance within the first ``max_points`` points of y."""
    yf = _2d(y, "y")[:max_points]
    d = torch.cdist(yf, yf)
    iu = torch.triu_indices(yf.shape[0], yf.shape[0], 1)
    return float(d[iu[0], iu[1]].median())


def _kernel_sum(a: Tensor, b: Tensor, h: float, chunk: int = 2048) -> Tensor:
    total = torch.zeros((), dtype=torch.float64)
    for i in range(0, a.shape[0], chunk):
        d2 = torch.cdist(a[i : i + chunk], b).square()
        total = total + torch.exp(-d2 / (2.0 * h * h)).sum()
    return total


def mmd2(x: Tensor, y: Tensor, bandwidth: float | None = None) -> float:
    """Unbiased MMD^2 of samples x (n, ...) and y (m, ...); bandwidth: the median rule on y by default."""
    xf, yf = _2d(x, "x"), _2d(y, "y")
    if xf.shape[1] != yf.shape[1]:
        raise ValueError(f"x and y must have the same event size; got {xf.shape[1]} and {yf.shape[1]}")
    h = median_bandwidth(yf) if bandwidth is None else float(bandwidth)
    if not h > 0:
        raise ValueError(f"bandwidth must be positive; got {bandwidth!r}")
    n, m = xf.shape[0], yf.shape[0]
    # k(a, a) = 1, so removing the diagonal subtracts n (resp. m) from the full sums.
    kxx = (_kernel_sum(xf, xf, h) - n) / (n * (n - 1))
    kyy = (_kernel_sum(yf, yf, h) - m) / (m * (m - 1))
    kxy = _kernel_sum(xf, yf, h) / (n * m)
    return float(kxx + kyy - 2.0 * kxy)


def mmd2_noise_floor(
    sample: Callable[[int, torch.Generator], Tensor],
    n: int,
    reps: int,
    generator: torch.Generator,
    bandwidth: float,
) -> Tensor:
    """MMD^2 between ``reps`` pairs of independent exact sample sets of size n: the estimator's noise."""
    out = [mmd2(sample(n, generator), sample(n, generator), bandwidth) for _ in range(reps)]
    return torch.tensor(out, dtype=torch.float64)


def binned_kl(x: Tensor, cdf: Callable[[Tensor], Tensor], edges: Tensor) -> tuple[float, float]:
    """KL(q || p) of 1-D samples ``x`` ~ q against a law p given by its exact ``cdf``, on the bins ``edges``
    (the two outer bins extend to -inf and +inf): sum_b q_b log(q_b / p_b) with q_b the empirical bin
    frequencies and p_b exact bin masses. Returns (estimate, bias floor (B - 1) / (2 n)), the leading bias
    of the plug-in estimator when q = p (B non-empty bins). Coarser than the bins, it cannot see structure."""
    xf = _2d(x, "x")
    if xf.shape[1] != 1:
        raise ValueError(f"x must hold 1-D samples; got event size {xf.shape[1]}")
    e = torch.as_tensor(edges, dtype=torch.float64)
    if e.ndim != 1 or e.shape[0] < 2 or not bool((e[1:] > e[:-1]).all()):
        raise ValueError("edges must be a strictly increasing 1-D tensor with at least 2 entries")
    n = xf.shape[0]
    idx = torch.bucketize(xf[:, 0], e[1:-1])
    q = torch.bincount(idx, minlength=e.shape[0] - 1).to(torch.float64) / n
    c = cdf(e[1:-1]).to(torch.float64)
    p = torch.diff(torch.cat([torch.zeros(1, dtype=torch.float64), c, torch.ones(1, dtype=torch.float64)]))
    m = q > 0
    return float((q[m] * torch.log(q[m] / p[m])).sum()), float((int(m.sum()) - 1) / (2 * n))
