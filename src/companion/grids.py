"""Time grids for the solvers: decreasing float64 tensors of times t_0 = t_start > ... > t_N = t_end.

Every grid is a tensor of shape (N + 1,) or, when ``t_start``/``t_end`` are tensors of shape (B,),
(N + 1, B): one grid per sample. Spacings (Lu et al. 2022, sec. 3.3; Karras et al. 2022, eq. 5):

* ``logsnr``         uniform in lambda = log(alpha / sigma) (DPM-Solver's recommended grid);
* ``time_uniform``   uniform in t;
* ``time_quadratic`` uniform in sqrt(t);
* ``karras``/``edm`` uniform in sigma_hat^(1/rho), sigma_hat = sigma/alpha = exp(-lambda) (rho = 7);
* ``linspace``/``leading``/``trailing``: diffusers' integer timestep spacings for a :class:`VPDiscrete`
  schedule (:func:`discrete`), step n sitting at t = (n + 1)/N as in the official DPM-Solver.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .schedules import Schedule, VPDiscrete

__all__ = [
    "GRIDS",
    "time_uniform",
    "time_quadratic",
    "logsnr",
    "karras",
    "discrete",
    "get_grid",
    "check_timesteps",
]

GRIDS = ("logsnr", "time_uniform", "time_quadratic", "karras", "edm", "linspace", "leading", "trailing")


def _f64(v: float | Tensor) -> Tensor:
    return torch.as_tensor(v, dtype=torch.float64).cpu()


def _lerp_grid(a: Tensor, b: Tensor, steps: int) -> Tensor:
    """steps + 1 points from a to b (inclusive), shape (steps + 1, *a.shape); endpoints exact."""
    w = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64).reshape((-1,) + (1,) * a.dim())
    g = a + w * (b - a)
    g[0], g[-1] = a, b
    return g


def _pin_ends(t: Tensor, t_start: Tensor, t_end: Tensor) -> Tensor:
    # A round trip through t_of_lambda moves the ends by an ulp; the caller asked for those exact times.
    t[0], t[-1] = t_start, t_end
    return t


def time_uniform(t_start: float | Tensor, t_end: float | Tensor, steps: int) -> Tensor:
    return _lerp_grid(_f64(t_start), _f64(t_end), steps)


def time_quadratic(t_start: float | Tensor, t_end: float | Tensor, steps: int) -> Tensor:
    """Uniform in sqrt(t) (the official DPM-Solver's ``time_quadratic``, for discrete-time models)."""
    a, b = _f64(t_start), _f64(t_end)
    return _pin_ends(_lerp_grid(a.sqrt(), b.sqrt(), steps) ** 2, a, b)


def logsnr(schedule: Schedule, t_start: float | Tensor, t_end: float | Tensor, steps: int) -> Tensor:
    """Uniform in lambda between lambda(t_start) and lambda(t_end); both must be finite."""
    a, b = _f64(t_start), _f64(t_end)
    la, lb = schedule.lambda_(a), schedule.lambda_(b)
    if not bool(torch.isfinite(la).all() & torch.isfinite(lb).all()):
        raise ValueError(
            "grid='logsnr' needs a finite log-SNR at t_start and t_end (sigma > 0 and alpha > 0); "
            "use t_end > 0 (with denoise_to_zero=True for a final clean step) or another grid"
        )
    return _pin_ends(schedule.t_of_lambda(_lerp_grid(la, lb, steps)), a, b)


def karras(
    schedule: Schedule, t_start: float | Tensor, t_end: float | Tensor, steps: int, rho: float = 7.0
) -> Tensor:
    """Karras et al. (2022, eq. 5): uniform in sigma_hat^(1/rho), sigma_hat = sigma/alpha = exp(-lambda)."""
    if not (isinstance(rho, (int, float)) and rho > 0):
        raise ValueError(f"rho must be a positive number; got {rho!r}")
    a, b = _f64(t_start), _f64(t_end)
    sa, sb = torch.exp(-schedule.lambda_(a)), torch.exp(-schedule.lambda_(b))
    s = _lerp_grid(sa ** (1.0 / rho), sb ** (1.0 / rho), steps) ** rho
    return _pin_ends(schedule.t_of_lambda(-torch.log(s)), a, b)


def discrete(
    schedule: VPDiscrete,
    steps: int,
    spacing: str = "linspace",
    steps_offset: int = 0,
    final: str = "zero",
) -> Tensor:
    """diffusers' ``DPMSolverMultistepScheduler`` timesteps for a discrete schedule, as times t.

    Integer timestep n maps to t = (n + 1)/N. The last point is t = 0 (alpha = 1, ``final="zero"``) or
    t = 1/N (the first training step, ``final="sigma_min"``).
    """
    if not isinstance(schedule, VPDiscrete):
        raise TypeError(f"spacing {spacing!r} needs a VPDiscrete schedule; got {type(schedule).__name__}")
    n_train = schedule.N
    if spacing == "linspace":
        ks = torch.linspace(0, n_train - 1, steps + 1, dtype=torch.float64).round().flip(0)[:-1]
    elif spacing == "leading":
        ratio = n_train // (steps + 1)
        ks = (torch.arange(0, steps + 1, dtype=torch.float64) * ratio).round().flip(0)[:-1] + steps_offset
    elif spacing == "trailing":
        ks = torch.arange(n_train, 0, -n_train / steps, dtype=torch.float64).round() - 1
    else:
        raise ValueError(f"spacing must be one of 'linspace', 'leading', 'trailing'; got {spacing!r}")
    if final not in ("zero", "sigma_min"):
        raise ValueError(f"final must be 'zero' or 'sigma_min'; got {final!r}")
    t = (ks + 1.0) / n_train
    last = torch.tensor([0.0 if final == "zero" else 1.0 / n_train], dtype=torch.float64)
    return torch.cat([t, last])


def get_grid(
    name: str,
    schedule: Schedule,
    steps: int,
    t_start: float | Tensor | None = None,
    t_end: float | Tensor | None = None,
    rho: float = 7.0,
) -> Tensor:
    """The grid called ``name`` (one of :data:`GRIDS`) with ``steps`` intervals."""
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be a positive int; got {steps!r}")
    if name in ("linspace", "leading", "trailing"):
        return discrete(schedule, steps, name)
    t_start = schedule.t_max if t_start is None else t_start
    t_end = schedule.t_min if t_end is None else t_end
    schedule.check_t(t_start, "t_start")
    schedule.check_t(t_end, "t_end")
    if not bool((_f64(t_start) > _f64(t_end)).all()):
        raise ValueError(f"t_start must exceed t_end; got t_start={t_start!r}, t_end={t_end!r}")
    if name == "logsnr":
        return logsnr(schedule, t_start, t_end, steps)
    if name == "time_uniform":
        return time_uniform(t_start, t_end, steps)
    if name == "time_quadratic":
        return time_quadratic(t_start, t_end, steps)
    if name in ("karras", "edm"):
        return karras(schedule, t_start, t_end, steps, rho)
    raise ValueError(f"unknown grid {name!r}; available: {list(GRIDS)}")


def check_timesteps(timesteps: Tensor, schedule: Schedule | None = None) -> Tensor:
    """Validate an explicit grid (shape (N + 1,) or (N + 1, B), strictly decreasing); return it in float64."""
    if not isinstance(timesteps, Tensor):
        timesteps = torch.as_tensor(timesteps)
    t = timesteps.detach().to(device="cpu", dtype=torch.float64)
    if t.dim() not in (1, 2) or t.shape[0] < 2:
        raise ValueError(
            f"timesteps must have shape (N + 1,) or (N + 1, B) with N >= 1; got {tuple(t.shape)}"
        )
    if not bool(torch.isfinite(t).all()):
        raise ValueError("timesteps must be finite")
    if not bool((t[1:] < t[:-1]).all()):
        raise ValueError(
            "timesteps must be strictly decreasing (from t_start down to t_end), without repeats"
        )
    if schedule is not None:
        schedule.check_t(t, "timesteps")
    return t
