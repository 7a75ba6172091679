"""2-D toy distributions, each drawn with an explicit generator (no global RNG state).

Scales follow the common convention of the flow-matching and score-matching literature: every set has
roughly unit-order spread, so the same VP schedule suits all of them.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = [
    "two_moons",
    "eight_gaussians",
    "nine_gaussians",
    "two_rings",
    "checkerboard",
    "swiss_roll",
    "sample_toy",
    "TOY_SETS",
]


def _check(n: int, generator: torch.Generator | None) -> torch.Generator:
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be a positive int; got {n!r}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None; got {type(generator).__name__}")
    return generator if generator is not None else torch.Generator().manual_seed(0)


def two_moons(n: int, generator: torch.Generator | None = None, noise: float = 0.05) -> Tensor:
    """Two interleaved half circles (as sklearn's ``make_moons``), centred and scaled by 2, plus noise."""
    g = _check(n, generator)
    u = torch.rand(n, generator=g, dtype=torch.float64) * math.pi
    upper = torch.rand(n, generator=g) < 0.5
    x = torch.where(upper, torch.cos(u), 1.0 - torch.cos(u))
    y = torch.where(upper, torch.sin(u), 0.5 - torch.sin(u))
    pts = torch.stack([x - 0.5, y - 0.25], dim=1) * 2.0
    return (pts + noise * 2.0 * torch.randn(n, 2, generator=g, dtype=torch.float64)).float()


def eight_gaussians(
    n: int, generator: torch.Generator | None = None, radius: float = 2.0, std: float = 0.1
) -> Tensor:
    """Eight equally weighted Gaussians with std ``std`` on a circle of radius ``radius``."""
    g = _check(n, generator)
    k = torch.randint(0, 8, (n,), generator=g).to(torch.float64)
    centres = radius * torch.stack([torch.cos(k * math.pi / 4), torch.sin(k * math.pi / 4)], dim=1)
    return (centres + std * torch.randn(n, 2, generator=g, dtype=torch.float64)).float()


#: Centres and std of :func:`nine_gaussians` (its exact law is a Gaussian mixture).
NINE_CENTRES = [(float(i), float(j)) for i in (-2, 0, 2) for j in (-2, 0, 2)]
NINE_STD = 0.2


def nine_gaussians(n: int, generator: torch.Generator | None = None) -> Tensor:
    """Nine equally weighted Gaussian blobs with std 0.2 on the grid {-2, 0, 2}^2."""
    g = _check(n, generator)
    k = torch.randint(0, 9, (n,), generator=g)
    centres = torch.tensor(NINE_CENTRES, dtype=torch.float64)[k]
    return (centres + NINE_STD * torch.randn(n, 2, generator=g, dtype=torch.float64)).float()


def two_rings(n: int, generator: torch.Generator | None = None, noise: float = 0.08) -> Tensor:
    """Two concentric circles of radii 1 and 2 with equal mass (sklearn's ``make_circles``, scaled), plus noise."""
    g = _check(n, generator)
    u = torch.rand(n, generator=g, dtype=torch.float64) * 2 * math.pi
    r = torch.where(torch.rand(n, generator=g) < 0.5, 1.0, 2.0).to(torch.float64)
    pts = r[:, None] * torch.stack([torch.cos(u), torch.sin(u)], dim=1)
    return (pts + noise * torch.randn(n, 2, generator=g, dtype=torch.float64)).float()


def checkerboard(n: int, generator: torch.Generator | None = None) -> Tensor:
    """Uniform on the 8 black squares of a 4x4 checkerboard on [-2, 2]^2."""
    g = _check(n, generator)
    x1 = torch.rand(n, generator=g, dtype=torch.float64) * 4 - 2
    x2 = torch.rand(n, generator=g, dtype=torch.float64) - torch.randint(0, 2, (n,), generator=g) * 2.0
    x2 = x2 + torch.floor(x1) % 2  # shift every other column so the squares alternate
    return torch.stack([x1, x2], dim=1).float()


def swiss_roll(n: int, generator: torch.Generator | None = None, noise: float = 0.25) -> Tensor:
    """The 2-D swiss roll (sklearn's ``make_swiss_roll`` projected on (x, z)), scaled by 1/5."""
    g = _check(n, generator)
    t = 1.5 * math.pi * (1 + 2 * torch.rand(n, generator=g, dtype=torch.float64))
    pts = torch.stack([t * torch.cos(t), t * torch.sin(t)], dim=1)
    return ((pts + noise * torch.randn(n, 2, generator=g, dtype=torch.float64)) / 5.0).float()


TOY_SETS: dict[str, Callable[..., Tensor]] = {
    "moons": two_moons,
    "8gaussians": eight_gaussians,
    "9gaussians": nine_gaussians,
    "rings": two_rings,
    "checkerboard": checkerboard,
    "swissroll": swiss_roll,
}


def sample_toy(name: str, n: int, generator: torch.Generator | None = None) -> Tensor:
    """``n`` float32 points of shape (n, 2) from the toy set ``name`` (one of :data:`TOY_SETS`)."""
    try:
        fn = TOY_SETS[name]
    except KeyError:
        raise ValueError(f"unknown toy data set {name!r}; available: {sorted(TOY_SETS)}") from None
    return fn(n, generator)
