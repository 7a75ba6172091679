"""The Gaussian score approximation and analytical teleportation (Wang & Vastola 2024, arXiv 2412.09726).

For Gaussian data N(mu, Sigma), Sigma = U diag(lambda) U^T, and a schedule x_t = alpha_t x_0 + sigma_t eps, the
score is -(alpha_t^2 Sigma + sigma_t^2 I)^{-1} (x - alpha_t mu) and the probability-flow ODE is solved in closed
form, per eigendirection (the paper's eq. for x(sigma) in the EDM convention alpha = 1, here for any schedule):

    x_t = alpha_t mu + sum_k sqrt((alpha_t^2 lambda_k + sigma_t^2) / (alpha_s^2 lambda_k + sigma_s^2))
                       u_k u_k^T (x_s - alpha_s mu),

which off the span of Sigma (lambda_k = 0) is the factor sigma_t / sigma_s, exactly
(:meth:`companion.targets.GaussianMixture.flow_map`). A learned score is close to the Gaussian score of
its training data at high noise, so the sampler's first steps can be replaced by this formula:
*analytical teleportation* (:func:`teleport`) starts any registered solver at an intermediate time from the
closed-form state. :func:`explained_variance` measures how much of a model's prediction the Gaussian part
explains at a given noise level.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from . import grids
from . import parameterization as P
from .sampling import sample
from .schedules import Schedule
from .targets import Gaussian, GaussianMixture

__all__ = ["fit", "trajectory", "teleport", "explained_variance"]


def fit(data: Tensor) -> GaussianMixture:
    """The Gaussian N(mean, covariance) of ``data`` (N, ...) flattened to (N, d), float64 (the maximum
    likelihood covariance, divided by N); rank-deficient covariances are allowed (digits have constant pixels)."""
    if not isinstance(data, Tensor) or not data.is_floating_point() or data.dim() < 2 or data.shape[0] < 2:
        raise ValueError("data must be a floating-point tensor of shape (N >= 2, ...)")
    x = data.reshape(data.shape[0], -1).to(torch.float64)
    mu = x.mean(0)
    xc = x - mu
    cov = xc.T @ xc / x.shape[0]
    return Gaussian(mu, (cov + cov.T) / 2, allow_singular=True)


def _single(gaussian: GaussianMixture) -> GaussianMixture:
    if not isinstance(gaussian, GaussianMixture) or gaussian.n_components != 1:
        raise TypeError("gaussian must be a companion.targets.GaussianMixture with one component (see fit)")
    return gaussian


def trajectory(gaussian: GaussianMixture, x: Tensor, times: Tensor, schedule: Schedule) -> Tensor:
    """The closed-form probability-flow ODE trajectory of ``gaussian`` from ``x`` at ``times[0]`` through
    ``times`` (1-D float64, any order): a tensor (len(times), *x.shape), its first entry ``x``."""
    g = _single(gaussian)
    ts = torch.as_tensor(times, dtype=torch.float64)
    if ts.dim() != 1 or ts.shape[0] < 1:
        raise ValueError(f"times must be a 1-D tensor; got shape {tuple(ts.shape)}")
    return torch.stack([x] + [g.flow_map(x, ts[0], t, schedule) for t in ts[1:]])


def teleport(
    model: Callable[[Tensor, Tensor], Tensor],
    x_T: Tensor,
    gaussian: GaussianMixture,
    *,
    schedule: Schedule,
    skip: int,
    steps: int = 20,
    grid: str = "logsnr",
    t_start: float | None = None,
    t_end: float | None = None,
    timesteps: Tensor | None = None,
    rho: float = 7.0,
    **kwargs: Any,
) -> Tensor:
    """``companion.sample`` with its first ``skip`` steps replaced by the Gaussian closed form (analytical
    teleportation, Wang & Vastola 2024, Sec. 5): x at grid[skip] is the exact PF-ODE image of ``x_T`` under
    ``gaussian``, and the solver runs the remaining grid grid[skip:] (as explicit ``timesteps``). ``skip=0``
    is ``companion.sample`` with the same arguments, bit for bit. The model calls saved are those of the
    skipped steps (per step: 1 for multistep and Euler-type solvers, 2 for Heun, ...). Every other argument
    (``solver``, ``order``, ``prediction``, ``generator``, ...) goes to ``companion.sample``."""
    g = _single(gaussian)
    if not isinstance(skip, int) or isinstance(skip, bool) or skip < 0:
        raise ValueError(f"skip must be an int >= 0; got {skip!r}")
    common = dict(schedule=schedule, **kwargs)
    if skip == 0:
        return sample(
            model,
            x_T,
            steps=steps,
            grid=grid,
            t_start=t_start,
            t_end=t_end,
            timesteps=timesteps,
            rho=rho,
            **common,
        )
    if timesteps is not None:
        ts = grids.check_timesteps(timesteps, schedule)
    else:
        ts = grids.get_grid(grid, schedule, steps, t_start, t_end, rho)
    if ts.dim() != 1:
        raise ValueError("teleport needs one grid for the batch (1-D timesteps)")
    if skip >= ts.shape[0] - 1:
        raise ValueError(f"skip must be below the number of steps ({ts.shape[0] - 1}); got {skip}")
    x = g.flow_map(x_T, ts[0], ts[skip], schedule).to(x_T.dtype)
    return sample(model, x, timesteps=ts[skip:], **common)


@torch.no_grad()
def explained_variance(
    model: Callable[[Tensor, Tensor], Tensor],
    gaussian: GaussianMixture,
    data: Tensor,
    t: float,
    schedule: Schedule,
    *,
    prediction: str = "eps",
    generator: torch.Generator | None = None,
    batch: int = 1024,
) -> tuple[float, float]:
    """How much of a model's score the Gaussian score of ``gaussian`` explains at time ``t``, on
    x_t = alpha_t x_0 + sigma_t z with x_0 from ``data`` (N, ...):

        EV = 1 - E|eps_model - eps_gauss|^2 / E|eps_model - E eps_model|^2,

    with eps = -sigma_t * score (the same ratio for scores, since sigma_t is common). Returns
    (EV, E|eps_model - eps_gauss|^2 / E|eps_model|^2)."""
    g = _single(gaussian)
    ref = g.model(schedule, "eps")
    tt = torch.as_tensor(t, dtype=torch.float64)
    schedule.check_t(tt)
    a, s = schedule.alpha(tt), schedule.sigma(tt)
    err = tot = sq = 0.0
    sums = None
    n = 0
    for i in range(0, data.shape[0], batch):
        x0 = data[i : i + batch]
        z = torch.randn(x0.shape, generator=generator, dtype=torch.float64).to(x0.device)
        x = (a * x0.to(torch.float64) + s * z).to(x0.dtype)
        tb = tt.to(x.device, x.dtype).expand(x.shape[0])
        out = P.convert(model(x, tb), x, P.canonical(prediction), "eps", schedule, tb).to(torch.float64)
        e_g = ref(x.to(torch.float64), tt.expand(x.shape[0]).to(x.device)).to(torch.float64)
        err += float((out - e_g).pow(2).sum())
        sq += float(out.pow(2).sum())
        sums = out.sum(0) if sums is None else sums + out.sum(0)
        n += x.shape[0]
    tot = sq - float(sums.pow(2).sum()) / n
    return 1.0 - err / tot, err / sq
