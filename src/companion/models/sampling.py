"""The sampler the training cards use: ``companion.sample`` when present, else a stopgap DPM-Solver++(2M).

The stopgap exists only so this branch can score its models before the solvers land; it is the
multistep second-order data-prediction update of Lu et al. (2022b, "DPM-Solver++", Alg. 2) on a grid
uniform in lambda, with a first-order first step. One model evaluation per step.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ..schedules import Schedule

__all__ = ["to_x0", "logsnr_grid", "dpmsolverpp_2m", "sample"]

Fn = Callable[[Tensor, Tensor], Tensor]


def to_x0(out: Tensor, x: Tensor, alpha: Tensor, sigma: Tensor, prediction: str) -> Tensor:
    """x0 from an eps (x0 = (x - sigma eps)/alpha), v (x0 = alpha x - sigma v) or x0 prediction."""
    if prediction == "eps":
        return (x - sigma * out) / alpha
    if prediction == "v":
        return alpha * x - sigma * out
    if prediction == "x0":
        return out
    raise ValueError(f"prediction must be 'eps', 'v' or 'x0'; got {prediction!r}")


def logsnr_grid(schedule: Schedule, steps: int, t_start: float, t_end: float) -> Tensor:
    """``steps + 1`` float64 times from ``t_start`` to ``t_end``, uniform in lambda."""
    lam = torch.linspace(
        float(schedule.lambda_(t_start)), float(schedule.lambda_(t_end)), steps + 1, dtype=torch.float64
    )
    t = schedule.t_of_lambda(lam)
    t[0], t[-1] = t_start, t_end
    return t


def dpmsolverpp_2m(fn: Fn, x: Tensor, schedule: Schedule, prediction: str, timesteps: Tensor) -> Tensor:
    """DPM-Solver++(2M) from ``timesteps[0]`` to ``timesteps[-1]`` (decreasing, float64)."""
    ts = timesteps.to(torch.float64)
    la, sig = schedule.log_alpha(ts), schedule.sigma(ts)
    alpha, lam = la.exp(), la - sig.log()
    x0_prev, h_prev = None, None
    for i in range(ts.numel() - 1):
        a_s, s_s = alpha[i].to(x.dtype), sig[i].to(x.dtype)
        x0 = to_x0(fn(x, ts[i].to(x.dtype)), x, a_s, s_s, prediction)
        h = lam[i + 1] - lam[i]
        if x0_prev is None:
            d = x0
        else:
            r = h_prev / h
            d = (1 + 0.5 / r).to(x.dtype) * x0 - (0.5 / r).to(x.dtype) * x0_prev
        x = (sig[i + 1] / sig[i]).to(x.dtype) * x - (alpha[i + 1] * torch.expm1(-h)).to(x.dtype) * d
        x0_prev, h_prev = x0, h
    return x


def sample(
    fn: Fn, x: Tensor, schedule: Schedule, prediction: str, steps: int = 25, t_end: float = 1e-3
) -> Tensor:
    """Sample ``fn`` from ``x`` at t = 1 with DPM-Solver++(2M), ``steps`` steps on a log-SNR grid."""
    import companion

    if hasattr(companion, "sample"):
        return companion.sample(
            fn,
            x,
            schedule=schedule,
            prediction=prediction,
            solver="dpmsolver++",
            order=2,
            method="multistep",
            steps=steps,
            grid="logsnr",
            t_start=1.0,
            t_end=t_end,
        )
    return dpmsolverpp_2m(fn, x, schedule, prediction, logsnr_grid(schedule, steps, 1.0, t_end))
