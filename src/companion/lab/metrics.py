"""Sample-quality metrics used by the chapters and tests.

MMD (Gretton et al. 2012) with the Gaussian kernel k(a, b) = exp(-|a - b|^2 / (2 h^2)). The unbiased
estimator drops the diagonal terms, so it is centred on the true MMD^2 and can be negative when the two
laws agree; compare it with :func:`mmd2_noise_floor`, the same estimator between independent samples of
one law.

Wasserstein-2 between sample sets (:func:`w2_squared`), returned squared, as W2^2 = min over couplings of
E|X - Y|^2: ``"exact"`` solves the discrete optimal-transport problem between the two empirical laws
with POT's network simplex (Bonneel et al. 2011; exact, O(n^2) memory, up to :data:`W2_EXACT_MAX`
points, about 25 s at that size on one core); ``"histogram"`` bins both sets on a regular grid and solves
the exact problem between the histograms with bin centres as atoms (Deveney et al.'s variant; error of
order the bin width, any n); ``"sliced"`` averages the closed-form 1-D W2^2 of random projections (Rabin
et al. 2011; a lower bound of W2^2 up to its Monte Carlo error, any n and d).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = [
    "median_bandwidth",
    "mmd2",
    "mmd2_noise_floor",
    "binned_kl",
    "w2_squared",
    "W2_EXACT_MAX",
    "W2_METHODS",
]

#: The largest sample set :func:`w2_squared` solves exactly (the cost matrix has n * m float64 entries).
W2_EXACT_MAX = 10_000
W2_METHODS = ("exact", "histogram", "sliced")


def _2d(x: Tensor, name: str) -> Tensor:
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.ndim < 2 or x.shape[0] < 2:
        raise ValueError(f"{name} must be a floating-point tensor of shape (n >= 2, ...)")
    return x.detach().reshape(x.shape[0], -1).to(torch.float64)


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


def _ot():
    try:
        import ot
    except ImportError as e:  # pragma: no cover - the ``ot`` extra is missing
        raise ImportError("w2_squared needs POT: pip install 'companion[ot]'") from e
    return ot


def _w2_exact(a: Tensor, b: Tensor, wa: Tensor | None = None, wb: Tensor | None = None) -> float:
    ot = _ot()
    an, bn = a.numpy(), b.numpy()
    wa_ = (torch.full((a.shape[0],), 1.0 / a.shape[0], dtype=torch.float64) if wa is None else wa).numpy()
    wb_ = (torch.full((b.shape[0],), 1.0 / b.shape[0], dtype=torch.float64) if wb is None else wb).numpy()
    cost = ot.dist(an, bn)  # squared Euclidean
    return float(ot.emd2(wa_, wb_, cost, numItermax=10**8))


def _w2_histogram(a: Tensor, b: Tensor, bins: int, lim: float) -> float:
    if a.shape[1] != 2:
        raise ValueError(f"method='histogram' is for 2-D samples; got event size {a.shape[1]}")
    if not isinstance(bins, int) or isinstance(bins, bool) or bins < 2:
        raise ValueError(f"bins must be an int >= 2; got {bins!r}")
    if not lim > 0:
        raise ValueError(f"lim must be positive; got {lim!r}")
    width = 2 * lim / bins

    def hist(z: Tensor) -> Tensor:
        # Points outside [-lim, lim]^2 go to the edge bins, so no mass is lost.
        idx = ((z + lim) / width).floor().clamp(0, bins - 1).long()
        flat = idx[:, 0] * bins + idx[:, 1]
        return torch.bincount(flat, minlength=bins * bins).to(torch.float64) / z.shape[0]

    ha, hb = hist(a), hist(b)
    centres = -lim + width * (torch.arange(bins, dtype=torch.float64) + 0.5)
    grid = torch.cartesian_prod(centres, centres)
    ka, kb = ha > 0, hb > 0
    return _w2_exact(grid[ka], grid[kb], ha[ka], hb[kb])


def _w2_sliced(a: Tensor, b: Tensor, projections: int, generator: torch.Generator | None) -> float:
    if not isinstance(projections, int) or isinstance(projections, bool) or projections < 1:
        raise ValueError(f"projections must be a positive int; got {projections!r}")
    if generator is None:
        raise ValueError("method='sliced' needs generator= (a torch.Generator for the projections)")
    d = a.shape[1]
    theta = torch.randn(d, projections, generator=generator, dtype=torch.float64)
    theta = theta / theta.norm(dim=0, keepdim=True)
    pa, pb = (a @ theta).sort(0).values, (b @ theta).sort(0).values
    if a.shape[0] != b.shape[0]:  # match quantiles at the midpoints of the finer set's cells
        n = max(a.shape[0], b.shape[0])
        q = (torch.arange(n, dtype=torch.float64) + 0.5) / n
        pa = pa[(q * a.shape[0]).long()]
        pb = pb[(q * b.shape[0]).long()]
    return float((pa - pb).square().mean())


def w2_squared(
    x: Tensor,
    y: Tensor,
    method: str = "exact",
    *,
    bins: int = 64,
    lim: float = 4.0,
    projections: int = 256,
    generator: torch.Generator | None = None,
) -> float:
    """W2^2 between the empirical laws of x (n, ...) and y (m, ...); see the module's docstring.

    ``method``: ``"exact"`` (n, m <= :data:`W2_EXACT_MAX`), ``"histogram"`` (2-D; ``bins`` x ``bins`` cells
    on [-lim, lim]^2, points outside counted in the edge cells) or ``"sliced"`` (``projections`` random
    directions from ``generator``).
    """
    xf, yf = _2d(x, "x"), _2d(y, "y")
    if xf.shape[1] != yf.shape[1]:
        raise ValueError(f"x and y must have the same event size; got {xf.shape[1]} and {yf.shape[1]}")
    if method not in W2_METHODS:
        raise ValueError(f"method must be one of {W2_METHODS}; got {method!r}")
    xf, yf = xf.cpu(), yf.cpu()
    if method == "exact":
        n = max(xf.shape[0], yf.shape[0])
        if n > W2_EXACT_MAX:
            raise ValueError(
                f"method='exact' takes at most {W2_EXACT_MAX} points per set (O(n^2) memory); got {n}: "
                "use method='histogram' (2-D) or 'sliced'"
            )
        return _w2_exact(xf, yf)
    if method == "histogram":
        return _w2_histogram(xf, yf, bins, float(lim))
    return _w2_sliced(xf, yf, projections, generator)
