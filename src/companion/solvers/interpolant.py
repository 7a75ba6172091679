"""The stochastic-interpolant family of reverse-time SDEs (Albergo, Boffi & Vanden-Eijnden 2023): one
diffusion coefficient eps(t) >= 0 picks an SDE with the marginals of the probability-flow ODE."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor

from ..noise import NoiseSource
from .base import Points
from .problem import Problem
from .registry import Option, OrderCheck, Solver, choice, option, register
from .reverse_sde import grid_points, run_noisy

__all__ = ["Interpolant", "interpolant_coefs", "run_stochastic_interpolant"]

_DIFFUSION = Option(
    "a finite number >= 0 or a callable t -> eps(t) >= 0 (float64 times)",
    lambda v: callable(v) or (isinstance(v, (int, float)) and not isinstance(v, bool)),
    lambda v: callable(v) or (v >= 0 and v != float("inf")),
    ("1.0", -1.0, float("nan")),
)


_GL = [torch.as_tensor(v, dtype=torch.float64) for v in np.polynomial.legendre.leggauss(48)]


def _diffusion_integral(schedule, diffusion, s: Points, t: Points) -> Tensor:
    """G = int_t^s eps(u) / sigma(u)^2 du over the step s -> t (t < s), by 48-point Gauss-Legendre in
    lambda, where the integrand eps / (sigma^2 |d lambda/dt|) is smooth (for VP near t = 0 it tends to
    eps / (beta sigma^2 / (2 sigma^2)) ~ 2 eps / beta_min). Infinite lambda_t (sigma_t = 0): G = inf."""
    finite = torch.isfinite(t.lam)
    lt = torch.where(finite, t.lam, s.lam)
    x, w = _GL
    shape = (-1,) + (1,) * s.lam.dim()
    lam = (s.lam + lt) / 2 + (lt - s.lam) / 2 * x.reshape(shape)
    u = schedule.t_of_lambda(lam)
    eps = diffusion(u) if callable(diffusion) else torch.full_like(u, float(diffusion))
    if not bool(((eps >= 0) & torch.isfinite(eps)).all()):  # once, before the loop
        raise ValueError("diffusion(t) must return finite values >= 0 on the sampling interval")
    rho = eps / (schedule.sigma(u) ** 2 * -schedule.d_lambda(u))
    G = ((lt - s.lam) / 2 * (w.reshape(shape) * rho).sum(0)).clamp_min(0.0)
    return torch.where(finite, G, torch.full_like(G, float("inf")))


def interpolant_coefs(schedule, pts: Points, diffusion) -> tuple[Tensor, Tensor, Tensor]:
    """One step of the eps-family SDE solved exactly with x0 held at x0(x_s, s) (data prediction).

    With G = int_t^s eps / sigma^2 du (>= 0), the linear part is exact, Phi(t, s) = (sigma_t/sigma_s) e^{-G};
    the x0 and noise integrals close (d/dl e^{l - G(l)} and d/dl e^{-2G(l)} are their integrands in
    lambda), giving  x_t = a x_s + (alpha_t - a alpha_s) x0_s + sigma_t sqrt(1 - e^{-2G}) z,
    a = (sigma_t/sigma_s) e^{-G}. eps = 0: DDIM; eps = g^2/2 (G = h): SDE-DPM-Solver++(1) / DDPM."""
    s, t = pts[:-1], pts[1:]
    G = _diffusion_integral(schedule, diffusion, s, t)
    a = t.sigma / s.sigma * torch.exp(-G)
    return a, t.alpha - a * s.alpha, t.sigma * torch.sqrt(-torch.expm1(-2.0 * G))


@register("interpolant", "stochastic-interpolant SDE family with diffusion eps(t) >= 0 (eps = 0: the PF-ODE)")
class Interpolant(Solver):
    """The stochastic-interpolant family (Albergo, Boffi & Vanden-Eijnden 2023, Sec. 2, backward SDE):
    for any diffusion eps(t) >= 0 (a number, or a callable of float64 times), in reverse time

        dx = [b(x, t) - eps(t) grad log p_t(x)] dt + sqrt(2 eps(t)) dW_bar,  b = f x - (g^2/2) grad log p_t

    has the marginals p_t of the probability-flow ODE (eps = 0); eps = g^2/2 is the reverse SDE.
    Solved by :func:`interpolant_coefs` (exponential integrator, data prediction held per step): exact for
    point masses, 1 NFE per step, strong order 1, weak order 1.

    With ``schedule=`` a :class:`companion.interpolants.StochasticInterpolant` (two arbitrary endpoint
    densities), ``companion.sample`` runs :func:`run_stochastic_interpolant` instead: the model returns the
    pair (b, s) and the same ``diffusion`` eps(t) picks the forward or backward SDE (or the ODE)."""

    #: extra configurations the conformance tests run (tests/solvers/test_conformance.py): eps = 0 (the
    #: probability-flow ODE, i.e. DDIM) and a small constant diffusion
    conformance: ClassVar[tuple[dict, ...]] = ({"diffusion": 0.0}, {"diffusion": 0.05})

    order: int = choice(1, (1,), "first order only")
    diffusion: float | Callable[[Tensor], Tensor] = option(1.0, _DIFFUSION)

    @property
    def stochastic(self) -> bool:
        return callable(self.diffusion) or self.diffusion > 0

    @property
    def invertible(self) -> bool:
        return False

    def sde_diffusion(self, schedule):
        d = self.diffusion
        return d if callable(d) else (lambda t: torch.full_like(t, float(d)))

    def order_check(self) -> OrderCheck:
        return OrderCheck(1.0, kind="strong" if self.stochastic else "ode")

    def __call__(self, prob: Problem) -> Tensor:
        pts = grid_points(prob)
        a, b, std = interpolant_coefs(prob.schedule, pts, self.diffusion)
        return run_noisy(prob, "x0", pts, [1] * len(a), a, b[:, None], std)


def _diffusion_values(diffusion, times: Tensor) -> list[float]:
    eps = diffusion(times) if callable(diffusion) else torch.full_like(times, float(diffusion))
    eps = torch.as_tensor(eps, dtype=torch.float64).detach().cpu()
    if eps.shape != times.shape or not bool(((eps >= 0) & torch.isfinite(eps)).all()):
        raise ValueError(
            "diffusion(t) must return finite values >= 0, one per time, on the sampling interval"
        )
    return eps.tolist()


def run_stochastic_interpolant(
    model: Callable[[Tensor, Tensor], tuple[Tensor, Tensor] | Tensor],
    x: Tensor,
    times: Tensor,
    diffusion: float | Callable[[Tensor], Tensor],
    noise: NoiseSource,
    callback: Callable[[int, Tensor, Tensor, Tensor], Tensor | None] | None = None,
) -> Tensor:
    """Euler-Maruyama for the stochastic-interpolant SDEs (Albergo, Boffi & Vanden-Eijnden 2023, Sec. 2.3):
    on an increasing grid the forward SDE dX = (b + eps s) dt + sqrt(2 eps) dW (rho_0 -> rho_1), on a
    decreasing one the backward SDE, whose drift in the direction of travel is -(b - eps s); eps = 0 is the
    transport ODE dX = b dt. One step, dt = t_{i+1} - t_i of either sign and eps = eps(t_i):

        x_{i+1} = x_i + b(x_i, t_i) dt + eps |dt| s(x_i, t_i) + sqrt(2 eps |dt|) z_i .

    ``model(x, t)`` (t of shape (B,)) returns (b, s), or b alone where eps = 0 on the whole grid.
    1 NFE per step; strong and weak order 1 (additive noise); the ODE is Euler's method (order 1)."""
    B = x.shape[0]
    eps = _diffusion_values(diffusion, times[:-1])
    dts = (times[1:] - times[:-1]).tolist()
    need_score = any(e > 0 for e in eps)
    draw = noise.stream(times, x) if need_score else None
    t_dev = times.to(x.device, x.dtype)
    for i, (dt, e) in enumerate(zip(dts, eps, strict=True)):
        out = model(x, t_dev[i].expand(B))
        if isinstance(out, tuple):
            b, s = out
        elif need_score:
            raise TypeError("model must return the pair (b, s) when diffusion > 0 somewhere on the grid")
        else:
            b, s = out, None
        x = x + dt * b
        if e > 0:
            x = x + (e * abs(dt)) * s + math.sqrt(2 * e * abs(dt)) * draw(i)
        if callback is not None:
            new = callback(i, times[i + 1], x, b)
            if new is not None:
                if not isinstance(new, Tensor) or new.shape != x.shape or new.dtype != x.dtype:
                    raise ValueError("callback must return None or a tensor like x")
                x = new
    return x
