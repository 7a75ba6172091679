"""The IR-SDE baselines of the MR Sampler paper (Li et al. 2025, arXiv 2502.07856), as its code runs them.

IR-SDE (Luo et al. 2023) samples with ``reverse_posterior`` (posterior sampling) or ``reverse_sde``
(Euler-Maruyama) over ``num_steps`` timesteps ``int(t)`` for t in ``linspace(1, T, num_steps)``, visited in
reverse. Each visit at timestep n uses one-step coefficients, n -> n - 1 (``exp(-theta_n dt)`` and a single
``dt``), whatever the gap to the next visited timestep: below T steps the trajectory skips most of the
forward process's time, and the sample keeps noise it never removed. ``stride="paper"`` reproduces that;
``stride="exact"`` (posterior only) uses the coefficients of q(x_m | x_n, x_0) for the actual stride n -> m
(the next visited timestep, 0 after the last), the baseline a fair comparison needs. That strided posterior
step equals MRS-SDE-1 in data form (:mod:`companion.solvers.mrs`).

Times reach the model as t = n / T (the :meth:`companion.schedules.MeanReverting.irsde` schedule's time).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from . import parameterization as P
from .noise import NoiseSource
from .noise import resolve as resolve_noise
from .sampling import _check_mu, _shift
from .schedules import MeanReverting

__all__ = ["irsde_timesteps", "irsde_sample"]


def irsde_timesteps(T: int, steps: int) -> list[int]:
    """IR-SDE's visited timesteps, in the order visited: int(t) for t in reversed(linspace(1, T, steps))."""
    return [int(t) for t in reversed(np.linspace(1, T, steps, dtype=float).tolist())]


def irsde_sample(
    model: Callable[[Tensor, Tensor], Tensor],
    x_T: Tensor,
    mu: Tensor,
    *,
    schedule: MeanReverting,
    steps: int,
    method: str = "posterior",
    stride: str = "paper",
    prediction: str = "eps",
    noise: NoiseSource | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """IR-SDE's ``reverse_posterior`` (``method="posterior"``) or ``reverse_sde`` (``"euler"``) from x_T,
    ``steps`` model calls, on the discrete tables of ``schedule`` (``MeanReverting.irsde``). ``stride``:
    ``"paper"`` (one-step coefficients at every visit, as the code) or ``"exact"`` (posterior only: the
    coefficients of the actual stride). The step normals come from ``noise`` (or ``generator``) on the
    grid of visited times followed by the last target."""
    if not isinstance(schedule, MeanReverting) or schedule.T is None:
        raise TypeError("schedule must be a discrete MeanReverting (MeanReverting.irsde(...))")
    if method not in ("posterior", "euler"):
        raise ValueError(f"method must be 'posterior' or 'euler'; got {method!r}")
    if stride not in ("paper", "exact"):
        raise ValueError(f"stride must be 'paper' or 'exact'; got {stride!r}")
    if method == "euler" and stride == "exact":
        raise ValueError(
            "stride='exact' is the strided posterior; method 'euler' runs as the paper's code only"
        )
    T = schedule.T
    if not isinstance(steps, int) or isinstance(steps, bool) or not 1 <= steps <= T:
        raise ValueError(f"steps must be an int in [1, T = {T}]; got {steps!r}")
    if not isinstance(x_T, Tensor) or not x_T.is_floating_point() or x_T.dim() < 1:
        raise TypeError("x_T must be a floating-point tensor of shape (B, ...)")
    prediction = P.canonical(prediction)
    mu = _check_mu(mu, x_T, "x_T")
    shifted, _, _ = _shift(model, mu, prediction, schedule, None, None)
    ns = irsde_timesteps(T, steps)
    targets = [n - 1 for n in ns] if stride == "paper" else ns[1:] + [0]
    knots = torch.tensor(ns + [targets[-1]], dtype=torch.float64) / T
    draw = resolve_noise(noise, generator).stream(knots, x_T)
    t_dtype = torch.float64 if x_T.dtype == torch.float64 else torch.float32
    B = x_T.shape[0]
    s_inf = schedule.sigma_inf
    dt = float(schedule.dt)
    y = x_T - mu
    for i, (n, m) in enumerate(zip(ns, targets, strict=True)):
        t = torch.full((B,), n / T, dtype=t_dtype, device=x_T.device)
        eps = P.convert(shifted(y, t), y, prediction, "eps", schedule, n / T)
        a_s = float(schedule.alpha(torch.tensor(n / T, dtype=torch.float64)))
        sig_s = float(schedule.sigma(torch.tensor(n / T, dtype=torch.float64)))
        z = draw(i)
        if method == "euler":
            theta = float(schedule.thetas[n].double())
            g2 = 2.0 * s_inf**2 * theta  # IR-SDE's sigmas[n]^2
            # x <- x - (theta (mu - x) - g^2 score) dt - g sqrt(dt) z, score = -eps / sigma_bar
            y = (1.0 + theta * dt) * y - (g2 * dt / sig_s) * eps - (g2 * dt) ** 0.5 * z
            continue
        a_t = float(schedule.alpha(torch.tensor(m / T, dtype=torch.float64)))
        A, Bc, C = a_s / a_t, a_s, a_t
        y0 = (y - sig_s * eps) / a_s
        c1 = A * (1 - C**2) / (1 - Bc**2)
        c2 = C * (1 - A**2) / (1 - Bc**2)
        var = max((1 - A**2) * (1 - C**2) / (1 - Bc**2), 1e-20 * dt)  # IR-SDE clamps the log-variance
        y = c1 * y + c2 * y0 + (s_inf * var**0.5) * z
    return y + mu
