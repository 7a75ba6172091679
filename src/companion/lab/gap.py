"""The ODE-SDE gap of a learned score: paired samplers, the Fokker-Planck residual, and the W2 stability bound.

With a score s that is not the score of its own SDE marginals q_t, the reverse SDE and the probability-flow
ODE (both driven by s, both from the same prior) transport different laws. Their velocities differ by
``delta_t = 1/2 g^2 (grad log q_t - s)`` (the SDE's marginals move with f x - g^2 s + 1/2 g^2 grad log q_t),
and a Gronwall argument for two flows (e.g. Kwon et al. 2022, Thm 1; Deveney et al. 2025, Sec. 3) gives

    W2(p^ODE_t0, q_t0) <= int_t0^T exp(int_t0^t L_s ds) ||delta_t||_{L^2(q_t)} dt,

where L_t is a one-sided Lipschitz constant of the reverse-time ODE drift -(f x - 1/2 g^2 s): with
s = grad u, L_t = sup_x lambda_max(-f I + 1/2 g^2 grad^2 u). :func:`bound` evaluates both factors on
samples: L_t as the largest Hessian eigenvalue over the SDE's and the ODE's samples (a lower estimate of
the sup), and ||delta_t|| with grad log q_t from a Gaussian kernel density estimate of the SDE's samples
(the kernel centres and the evaluation points are disjoint halves).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..sampling import sample as cp_sample
from ..schedules import Schedule

__all__ = ["sample_pair", "kde_score", "hessian_max_eig", "bound", "residual_stats", "evaluate"]


def sample_pair(
    model: Callable[[Tensor, Tensor], Tensor],
    x_T: Tensor,
    schedule: Schedule,
    *,
    steps: int,
    generator: torch.Generator,
    t_end: float = 1e-3,
    prediction: str = "eps",
    keep: int = 0,
) -> dict[str, Any]:
    """The probability-flow ODE and the reverse SDE from the same ``x_T``, by their first-order exponential
    integrators (DDIM with eta = 0 and eta = 1, the latter the reverse SDE's ancestral step; Song et al.
    2021a), ``steps`` steps on the log-SNR grid from t = 1 to ``t_end``. (Euler in t is unstable here:
    near t = 0 its step times 1/sigma^2 exceeds 2 unless the grid has thousands of steps.) ``keep`` > 0 also returns ``keep + 1`` states of each
    along the way (``"times"``, ``"ode_path"``, ``"sde_path"``, lists from t = 1 down to t_end)."""
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator; got {type(generator).__name__}")
    every = max(1, steps // keep) if keep else 0
    out: dict[str, Any] = {}
    for name, extra in (("ode", {"eta": 0.0}), ("sde", {"eta": 1.0, "generator": generator})):
        path: list[Tensor] = [x_T.clone()]
        times: list[float] = [1.0]

        def cb(i: int, t: Tensor, x: Tensor, denoised: Tensor, path=path, times=times) -> None:
            if every and (i + 1) % every == 0:
                path.append(x.detach().clone())
                times.append(float(t.reshape(-1)[0]))

        out[name] = cp_sample(
            model,
            x_T,
            schedule=schedule,
            prediction=prediction,
            solver="ddim",
            steps=steps,
            grid="logsnr",
            t_start=1.0,
            t_end=t_end,
            callback=cb if every else None,
            **extra,
        )
        if every:
            out[f"{name}_path"], out["times"] = path, times
    return out


def kde_score(centres: Tensor, x: Tensor, h: float) -> Tensor:
    """grad log of the Gaussian kernel density estimate (bandwidth h) of ``centres``, at ``x``: (m, d)."""
    if not h > 0:
        raise ValueError(f"h must be positive; got {h!r}")
    d2 = torch.cdist(x, centres).square()
    w = torch.softmax(-d2 / (2 * h * h), dim=1)
    return (w @ centres - x) / (h * h)


def hessian_max_eig(potential: Callable[[Tensor, Tensor], Tensor], x: Tensor, t: float) -> Tensor:
    """The largest eigenvalue of grad^2_x u(x, t) at each row of x (exact Hessian; small d)."""
    b, d = x.shape
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        tt = torch.full((b,), t, dtype=x.dtype)
        (g,) = torch.autograd.grad(potential(xg, tt).sum(), xg, create_graph=True)
        rows = [torch.autograd.grad(g[:, i].sum(), xg, retain_graph=True)[0] for i in range(d)]
    hess = torch.stack(rows, dim=1).detach().double()
    return torch.linalg.eigvalsh(0.5 * (hess + hess.transpose(1, 2)))[:, -1]


def bound(
    potential: Callable[[Tensor, Tensor], Tensor],
    score: Callable[[Tensor, Tensor], Tensor],
    schedule: Schedule,
    times: list[float],
    sde_path: list[Tensor],
    ode_path: list[Tensor],
    *,
    bandwidth: Callable[[float], float],
) -> dict[str, Any]:
    """The right-hand side of the W2 bound at the last of ``times`` (decreasing, from t = 1), by the
    trapezoidal rule over the recorded states. ``bandwidth(t)``: the KDE bandwidth at time t.

    Returns ``rhs``, and per time ``delta`` (||delta_t||_{L^2(q_t)}), ``lipschitz`` (L_t) and ``weight``
    (exp int L)."""
    ts = torch.tensor(times, dtype=torch.float64)
    delta, lip = [], []
    for t, xs, xo in zip(times, sde_path, ode_path, strict=True):
        n = xs.shape[0] // 2
        pts = xs[n:]
        ks = kde_score(xs[:n].double(), pts.double(), bandwidth(t))
        s = score(pts, torch.full((pts.shape[0],), t, dtype=pts.dtype)).detach().double()
        g2 = float(schedule.g2(torch.tensor(t, dtype=torch.float64)))
        f = float(schedule.f(torch.tensor(t, dtype=torch.float64)))
        delta.append(0.5 * g2 * math.sqrt(float((ks - s).square().sum(1).mean())))
        lam = hessian_max_eig(potential, torch.cat([xs, xo]), t).max()
        lip.append(-f + 0.5 * g2 * float(lam))
    dl, ll = torch.tensor(delta), torch.tensor(lip)
    # int_{t0}^{t} L ds for every recorded t (times decrease, so integrate from the end)
    dt = ts[:-1] - ts[1:]
    seg = 0.5 * (ll[:-1] + ll[1:]) * dt
    cum = torch.cat(
        [torch.flip(torch.cumsum(torch.flip(seg, [0]), 0), [0]), torch.zeros(1, dtype=torch.float64)]
    )
    weight = torch.exp(cum)
    integrand = weight * dl
    rhs = float((0.5 * (integrand[:-1] + integrand[1:]) * dt).sum())
    return {"rhs": rhs, "times": times, "delta": delta, "lipschitz": lip, "weight": weight.tolist()}


def residual_stats(
    penalty: Callable[[Tensor, Tensor], Tensor],
    box: float,
    generator: torch.Generator,
    n_t: int = 32,
    n_x: int = 256,
) -> dict[str, float]:
    """The mean |sigma^2 R| on a grid of ``n_t`` times (uniform in [1e-3, 1]) times ``n_x`` uniform points of
    [-box, box]^2, and the same with each time's mean over x removed (blind to the additive c(t))."""
    t = torch.linspace(1e-3, 1.0, n_t).repeat_interleave(n_x)
    x = (2 * torch.rand(n_t * n_x, 2, generator=generator) - 1) * box
    r = penalty(x, t).reshape(n_t, n_x).double()
    centred = r - r.mean(1, keepdim=True)
    return {"mean_abs": float(r.abs().mean()), "mean_abs_centred": float(centred.abs().mean())}


def evaluate(
    net: torch.nn.Module,
    truth: Tensor,
    schedule: Schedule,
    *,
    n: int,
    steps: int,
    generator: torch.Generator,
    w2: Callable[[Tensor, Tensor], float],
    keep: int = 20,
    bound_points: int = 4000,
    bandwidth_factor: float = 0.5,
    box: float = 4.0,
) -> dict[str, Any]:
    """Everything the chapter measures for one potential network (a ``PotentialMLP``): the paired ODE and SDE
    samples from ``n`` common starting points, W2^2 (``w2``) of each to ``truth`` and to each other, the
    residual statistics and, when ``keep`` > 0, the bound on ``keep + 1`` recorded times (on the first
    ``bound_points`` paths, KDE bandwidth ``bandwidth_factor * sigma_t``; else ``"bound"`` is None)."""
    from .train import fp_penalty

    x_T = torch.randn(n, truth.shape[1], generator=generator)
    out = sample_pair(net, x_T, schedule, steps=steps, generator=generator, keep=keep)
    res = residual_stats(lambda x, t: fp_penalty(net, x, t), box, generator)
    m = bound_points

    def score(x: Tensor, t: Tensor) -> Tensor:
        return -net(x, t) / net.sigma(t)[:, None]

    b = (
        None
        if not keep
        else bound(
            net.potential,
            score,
            schedule,
            out["times"],
            [p[:m] for p in out["sde_path"]],
            [p[:m] for p in out["ode_path"]],
            bandwidth=lambda t: (
                bandwidth_factor * float(schedule.sigma(torch.tensor(t, dtype=torch.float64)))
            ),
        )
    )
    return {
        "ode": out["ode"],
        "sde": out["sde"],
        "ode_path": out.get("ode_path"),
        "sde_path": out.get("sde_path"),
        "times": out.get("times"),
        "ode_truth": w2(out["ode"], truth),
        "sde_truth": w2(out["sde"], truth),
        "ode_sde": w2(out["ode"], out["sde"]),
        "residual": res["mean_abs"],
        "residual_centred": res["mean_abs_centred"],
        "bound": b,
    }
