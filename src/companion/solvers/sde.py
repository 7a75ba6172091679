"""Reverse-SDE samplers with a score model: Euler-Maruyama, Langevin corrector, predictor-corrector.

The reverse-time SDE of  dx = f x dt + g dW  (Anderson 1982; Song et al. 2021, eq. 6) is

    dx = [f(t) x - g^2(t) grad log p_t(x)] dt + g(t) dW_bar,   t running from T down to 0.

``score_fn(x, t)`` gets ``x`` of shape (B, ...) and ``t`` of shape (B,) in the dtype of ``x``.
Coefficients are computed once in float64 for the whole grid and cast; the loops hold no host syncs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ..schedules import Schedule

__all__ = ["euler_maruyama", "langevin_corrector", "predictor_corrector", "forward_euler_maruyama"]

ScoreFn = Callable[[Tensor, Tensor], Tensor]


def _grid(timesteps, schedule: Schedule) -> Tensor:
    if not isinstance(schedule, Schedule):
        raise TypeError(f"schedule must be a companion.schedules.Schedule; got {type(schedule).__name__}")
    ts = torch.as_tensor(timesteps, dtype=torch.float64).detach().cpu()
    if ts.ndim != 1 or ts.numel() < 2:
        raise ValueError(f"timesteps must be a 1-D tensor of at least 2 times; got shape {tuple(ts.shape)}")
    if not bool((ts[1:] < ts[:-1]).all()):
        raise ValueError("timesteps must be strictly decreasing (from noise towards data)")
    schedule.check_t(ts, "timesteps")
    return ts


def _check_x(x) -> None:
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.ndim < 1:
        raise TypeError("x must be a floating-point tensor of shape (B, ...)")


def _noise(x: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)


def langevin_corrector(
    score_fn: ScoreFn,
    x: Tensor,
    t: float | Tensor,
    schedule: Schedule,
    *,
    snr: float = 0.16,
    n_steps: int = 1,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Langevin MCMC steps targeting p_t (Song et al. 2021, Algorithm 4 with alpha_i = 1).

    x <- x + e s + sqrt(2 e) z,  e = 2 (snr |z| / |s|)^2, with |z| and |s| the per-sample norms averaged
    over the batch, as in the official code. (Per-sample norms would give a sample near a mode, where
    s ~ 0, an unbounded step; in low dimension that happens often.) One score evaluation per step.
    Algorithm 5 (VP) also multiplies e by alpha_i = 1 - beta_i, a 1 - O(1/N) factor we leave out so
    that the corrector needs no discrete beta.
    """
    _check_x(x)
    if not isinstance(snr, (int, float)) or not snr > 0:
        raise ValueError(f"snr must be a positive number; got {snr!r}")
    if not isinstance(n_steps, int) or n_steps < 0:
        raise ValueError(f"n_steps must be a non-negative int; got {n_steps!r}")
    tt = torch.as_tensor(t, dtype=torch.float64)
    schedule.check_t(tt, "t")
    tb = tt.expand(x.shape[0]).to(x.device, x.dtype) if tt.ndim == 0 else tt.to(x.device, x.dtype)
    return _langevin(score_fn, x, tb, float(snr), n_steps, generator)


def _langevin(score_fn: ScoreFn, x: Tensor, tb: Tensor, snr: float, n_steps: int, generator) -> Tensor:
    for _ in range(n_steps):
        s = score_fn(x, tb)
        z = _noise(x, generator)
        ratio = z.flatten(1).norm(dim=1).mean() / s.flatten(1).norm(dim=1).mean()
        e = 2.0 * (snr * ratio) ** 2
        x = x + e * s + torch.sqrt(2.0 * e) * z
    return x


def predictor_corrector(
    score_fn: ScoreFn,
    x_T: Tensor,
    schedule: Schedule,
    timesteps,
    *,
    snr: float = 0.16,
    n_corrector_steps: int = 1,
    generator: torch.Generator | None = None,
    noise_last: bool = False,
) -> Tensor:
    """Predictor-corrector sampling (Song et al. 2021, Algorithm 1 with an Euler-Maruyama predictor).

    At each grid time t_i: ``n_corrector_steps`` Langevin steps at t_i, then one Euler-Maruyama step
    t_i -> t_{i+1}. NFE per step: 1 + n_corrector_steps. ``n_corrector_steps=0`` is plain Euler-Maruyama.
    The last predictor step adds no noise unless ``noise_last`` (it would only blur by g sqrt(h); the
    official sampler returns that step's mean too).
    """
    _check_x(x_T)
    ts = _grid(timesteps, schedule)
    if not isinstance(n_corrector_steps, int) or n_corrector_steps < 0:
        raise ValueError(f"n_corrector_steps must be a non-negative int; got {n_corrector_steps!r}")
    if n_corrector_steps and (not isinstance(snr, (int, float)) or not snr > 0):
        raise ValueError(f"snr must be a positive number; got {snr!r}")
    dt, dev, B = x_T.dtype, x_T.device, x_T.shape[0]
    h = ts[:-1] - ts[1:]
    # Reverse step over [t_{i+1}, t_i]: x <- x - (f x - g^2 s) h + g sqrt(h) z, coefficients at t_i.
    keep = (1.0 - h * schedule.f(ts[:-1])).to(dev, dt)
    drift = (schedule.g2(ts[:-1]) * h).to(dev, dt)
    noise = torch.sqrt(schedule.g2(ts[:-1]) * h).to(dev, dt)
    tgrid = ts.to(dev, dt)
    x = x_T
    n = h.numel()
    for i in range(n):
        tb = tgrid[i].expand(B)
        if n_corrector_steps:
            x = _langevin(score_fn, x, tb, float(snr), n_corrector_steps, generator)
        x = keep[i] * x + drift[i] * score_fn(x, tb)
        if i < n - 1 or noise_last:
            x = x + noise[i] * _noise(x, generator)
    return x


def euler_maruyama(
    score_fn: ScoreFn,
    x_T: Tensor,
    schedule: Schedule,
    timesteps,
    *,
    generator: torch.Generator | None = None,
    noise_last: bool = False,
) -> Tensor:
    """Euler-Maruyama on the reverse SDE (Song et al. 2021, eq. 6): weak order 1, 1 NFE per step.

    ``timesteps`` is decreasing, e.g. ``torch.linspace(1, 1e-3, N + 1)``. See :func:`predictor_corrector`
    for ``noise_last``.
    """
    return predictor_corrector(
        score_fn, x_T, schedule, timesteps, n_corrector_steps=0, generator=generator, noise_last=noise_last
    )


def forward_euler_maruyama(
    x_0: Tensor, schedule: Schedule, timesteps, *, generator: torch.Generator | None = None
) -> Tensor:
    """Euler-Maruyama on the forward SDE dx = f x dt + g dW over increasing ``timesteps``; x at the end.

    Used to check the closed-form marginals (alpha_t, sigma_t) against the SDE itself; 0 NFE.
    """
    _check_x(x_0)
    ts = _grid(torch.as_tensor(timesteps, dtype=torch.float64).flip(0), schedule).flip(0)
    h = ts[1:] - ts[:-1]
    keep = (1.0 + h * schedule.f(ts[:-1])).to(x_0.device, x_0.dtype)
    noise = torch.sqrt(schedule.g2(ts[:-1]) * h).to(x_0.device, x_0.dtype)
    x = x_0
    for i in range(h.numel()):
        x = keep[i] * x + noise[i] * _noise(x, generator)
    return x
