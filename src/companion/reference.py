"""Float64 reference solutions of the probability-flow ODE and its exact likelihood.

The probability-flow ODE (Song et al. 2021, eq. 13) of  dx = f(t) x dt + g(t) dW  is

    dx/dt = f(t) x - g^2(t)/2 grad log p_t(x).

:func:`solve_pf_ode` integrates it in the half log-SNR lambda for u = x / alpha, where it reads
du/dlambda = -e^{-lambda} eps(x, t(lambda))  (Lu et al. 2022, eq. 3.4 before the Taylor expansion):
for Gaussian targets the right-hand side depends on t only through (alpha, sigma), hence only on lambda,
so the integrand is smooth even for piecewise schedules. scipy's DOP853 (order 8, adaptive) does the work.

:func:`pf_ode_log_likelihood` integrates the ODE in t jointly with the instantaneous change of variables
(Chen et al. 2018; Song et al. 2021, eq. 39):

    log p_0(x_0) = log p_T(x_T) + int_0^T div F(x_t, t) dt,   div F = d f(t) - g^2(t)/2 tr grad^2 log p_t,

with the divergence exact (closed form for targets, autograd otherwise) or estimated by Hutchinson's
trace estimator  E_v[v^T grad F v]  with probes fixed along each trajectory (Grathwohl et al. 2019).
These are reference tools (host loops, numpy round trips), not fast samplers. scipy is imported when an
integrator runs, so ``import companion`` stays free of it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from . import parameterization as P
from .schedules import Schedule
from .targets import GaussianMixture

__all__ = ["solve_pf_ode", "pf_ode_log_likelihood", "pf_ode_divergence", "LogLikelihood"]

Model = Callable[[Tensor, Tensor], Tensor]
_PREDICTIONS = ("eps", "x0", "score")


def _check_schedule(schedule) -> None:
    if not isinstance(schedule, Schedule):
        raise TypeError(f"schedule must be a companion.schedules.Schedule; got {type(schedule).__name__}")


def _converted(model, schedule: Schedule, prediction: str, dst: str) -> Model:
    """A ``dst`` callable (score | eps) from a target or from a model with the given prediction."""
    if isinstance(model, GaussianMixture):
        return model.model(schedule, dst)
    if not callable(model):
        raise TypeError(
            f"model must be a GaussianMixture or a callable (x, t) -> prediction; got {type(model)}"
        )
    if prediction not in _PREDICTIONS:
        raise ValueError(f"prediction must be one of {_PREDICTIONS}; got {prediction!r}")
    if prediction == dst:
        return model
    return lambda x, t: P.convert(model(x, t), x, prediction, dst, schedule, t)


def _score_fn(model, schedule: Schedule, prediction: str) -> Model:
    return _converted(model, schedule, prediction, "score")


def _eps_fn(model, schedule: Schedule, prediction: str) -> Model:
    return _converted(model, schedule, prediction, "eps")


def _time(value, name: str, schedule: Schedule) -> float:
    if isinstance(value, Tensor):
        if value.ndim != 0:
            raise ValueError(f"{name} must be a number or a 0-d tensor; got shape {tuple(value.shape)}")
        value = float(value)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"{name} must be a real number; got {type(value).__name__}")
    schedule.check_t(value, name)
    return float(value)


def _check_x(x, name: str = "x") -> Tensor:
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.ndim < 2:
        raise ValueError(f"{name} must be a floating-point tensor of shape (B, ...)")
    return x


def solve_pf_ode(
    model,
    x: Tensor,
    schedule: Schedule,
    t_start: float,
    t_end: float,
    *,
    prediction: str = "eps",
    rtol: float = 1e-10,
    atol: float = 1e-10,
) -> Tensor:
    """Integrate the PF-ODE from ``t_start`` to ``t_end`` (either direction) with DOP853 in float64.

    ``model`` is a :class:`~companion.targets.GaussianMixture` or a callable ``(x, t) -> prediction``.
    Both ends need sigma > 0 (lambda finite). Returns x at ``t_end`` with the dtype of ``x``.
    """
    _check_schedule(schedule)
    x = _check_x(x)
    t0, t1 = _time(t_start, "t_start", schedule), _time(t_end, "t_end", schedule)
    lam0, lam1 = (float(schedule.lambda_(t)) for t in (t0, t1))
    if not (math.isfinite(lam0) and math.isfinite(lam1)):
        raise ValueError("t_start and t_end need sigma(t) > 0 and alpha(t) > 0 (finite log-SNR)")
    eps_fn = _eps_fn(model, schedule, prediction)
    shape, B = x.shape, x.shape[0]
    x64 = x.detach().to(torch.float64)
    if t0 == t1:
        return x.clone()

    def rhs(lam: float, u: np.ndarray) -> np.ndarray:
        lt = torch.tensor(lam, dtype=torch.float64)
        t = schedule.t_of_lambda(lt)
        xt = schedule.alpha(t) * torch.from_numpy(u).to(x64.device).view(shape)
        with torch.no_grad():
            e = eps_fn(xt, t.expand(B).to(x64.device))
        return _finite((-torch.exp(-lt) * e.to(torch.float64)).reshape(-1).cpu().numpy(), lam)

    u0 = (x64 / schedule.alpha(torch.tensor(t0, dtype=torch.float64))).reshape(-1).cpu().numpy()
    from scipy.integrate import solve_ivp

    sol = solve_ivp(rhs, (lam0, lam1), u0, method="DOP853", rtol=rtol, atol=atol)
    if not sol.success:
        raise RuntimeError(f"solve_pf_ode: DOP853 failed: {sol.message}")
    u1 = torch.from_numpy(sol.y[:, -1]).view(shape)
    return (schedule.alpha(torch.tensor(t1, dtype=torch.float64)) * u1).to(x.device, x.dtype)


def _finite(out: np.ndarray, at: float) -> np.ndarray:
    # A NaN right-hand side makes DOP853 shrink its step forever instead of failing.
    if not np.isfinite(out).all():
        raise FloatingPointError(
            f"the PF-ODE right-hand side is not finite at {at!r} (eps and x0 predictions give no score "
            "where sigma = 0: start at t_eps > 0)"
        )
    return out


def _autograd_trace(score: Model, x: Tensor, t: Tensor, probes: Tensor | None) -> Tensor:
    """tr grad score (probes None) or v^T grad score v for each probe v (P, B, ...) -> (B,) or (B, P)."""
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        s = score(xg, t)
        if probes is None:
            sf = s.reshape(x.shape[0], -1)
            d = sf.shape[1]
            tr = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
            for i in range(d):
                (gi,) = torch.autograd.grad(sf[:, i].sum(), xg, retain_graph=i < d - 1)
                tr = tr + gi.reshape(x.shape[0], -1)[:, i]
            return tr
        out = []
        for p in range(probes.shape[0]):
            (hv,) = torch.autograd.grad((s * probes[p]).sum(), xg, retain_graph=p < probes.shape[0] - 1)
            out.append((hv * probes[p]).reshape(x.shape[0], -1).sum(-1))
        return torch.stack(out, -1)


def _score_trace(
    model, schedule: Schedule, prediction: str
) -> Callable[[Tensor, Tensor, Tensor | None], Tensor]:
    """(x, t, probes) -> exact tr grad^2 log p_t (B,) or per-probe v^T grad^2 log p_t v (B, P)."""
    if isinstance(model, GaussianMixture):

        def exact(x: Tensor, t: Tensor, probes: Tensor | None) -> Tensor:
            xf = model._flat(x)
            st = model._stats(xf, schedule.alpha(t), schedule.sigma(t))
            if probes is None:
                return model._laplacian(st)
            vs = [model._hvp(st, model._flat(v, "probe")) for v in probes]
            return torch.stack([(hv * model._flat(v)).sum(-1) for hv, v in zip(vs, probes, strict=True)], -1)

        return exact
    score = _score_fn(model, schedule, prediction)
    return lambda x, t, probes: _autograd_trace(score, x, t, probes)


def _probes(n: int, shape, kind: str, generator: torch.Generator | None, dtype) -> Tensor:
    if kind == "rademacher":
        return torch.randint(0, 2, (n, *shape), generator=generator).to(dtype) * 2 - 1
    if kind == "gaussian":
        return torch.randn((n, *shape), generator=generator, dtype=dtype)
    raise ValueError(f"probe must be 'rademacher' or 'gaussian'; got {kind!r}")


def pf_ode_divergence(
    model,
    x: Tensor,
    t: float,
    schedule: Schedule,
    *,
    method: str = "exact",
    n_probes: int = 1,
    probe: str = "rademacher",
    generator: torch.Generator | None = None,
    prediction: str = "score",
) -> tuple[Tensor, Tensor | None]:
    """div_x of the PF-ODE field F = f x - g^2/2 score at (x, t): (estimate (B,), standard error or None).

    ``method="exact"`` (closed form for targets, d autograd passes otherwise) or ``"hutchinson"``:
    the mean of v^T grad F v over ``n_probes`` Rademacher or Gaussian probes, with its standard error.
    """
    _check_schedule(schedule)
    x = _check_x(x)
    tf = _time(t, "t", schedule)
    tt = torch.full((x.shape[0],), tf, dtype=torch.float64)
    d = math.prod(x.shape[1:])
    f, g2 = float(schedule.f(tf)), float(schedule.g2(tf))
    trace = _score_trace(model, schedule, prediction)
    if method == "exact":
        return d * f - 0.5 * g2 * trace(x, tt, None), None
    if method != "hutchinson":
        raise ValueError(f"method must be 'exact' or 'hutchinson'; got {method!r}")
    if not isinstance(n_probes, int) or n_probes < 2:
        raise ValueError(f"n_probes must be an int >= 2 for a standard error; got {n_probes!r}")
    v = _probes(n_probes, x.shape, probe, generator, x.dtype)
    # v^T (f I) v = f |v|^2, which is d f for Rademacher probes and random for Gaussian ones.
    est = f * (v * v).reshape(n_probes, x.shape[0], -1).sum(-1).T - 0.5 * g2 * trace(x, tt, v)  # (B, P)
    return est.mean(-1), est.std(-1) / math.sqrt(n_probes)


@dataclass
class LogLikelihood:
    """Result of :func:`pf_ode_log_likelihood`; all tensors have shape (B,) except ``x_T``."""

    log_prob: Tensor  #: log p_{t_eps}(x) through the PF-ODE (the mean over probes for Hutchinson)
    stderr: Tensor | None  #: standard error over the probes (Hutchinson with n_probes >= 2)
    prior_log_prob: Tensor  #: log of the prior at x_T
    delta: Tensor  #: int div F dt
    x_T: Tensor  #: the ODE's end point
    nfe: int  #: right-hand-side evaluations


def pf_ode_log_likelihood(
    model,
    x: Tensor,
    schedule: Schedule,
    *,
    t_eps: float = 0.0,
    T: float | None = None,
    prior: str = "exact",
    divergence: str = "exact",
    n_probes: int = 1,
    probe: str = "rademacher",
    generator: torch.Generator | None = None,
    prediction: str = "score",
    rtol: float = 1e-10,
    atol: float = 1e-10,
) -> LogLikelihood:
    """log p_{t_eps}(x) by the instantaneous change of variables along the PF-ODE, t_eps -> T.

    ``prior="exact"`` evaluates the target's own log p_T (needs a GaussianMixture); ``"normal"`` uses
    N(0, sigma_T^2 I) (Song et al.'s N(0, I) for VP, N(0, sigma_max^2 I) for VE). ``divergence`` is
    ``"exact"`` or ``"hutchinson"`` with ``n_probes`` probes drawn once from ``generator`` and held fixed
    along each trajectory. Integrates in t, so t_eps = 0 is allowed whenever p_0 has a smooth score.
    """
    _check_schedule(schedule)
    x = _check_x(x)
    t0 = _time(t_eps, "t_eps", schedule)
    t1 = _time(schedule.t_max if T is None else T, "T", schedule)
    if t1 <= t0:
        raise ValueError(f"T must exceed t_eps; got t_eps={t0}, T={t1}")
    if prior not in ("exact", "normal"):
        raise ValueError(f"prior must be 'exact' or 'normal'; got {prior!r}")
    if prior == "exact" and not isinstance(model, GaussianMixture):
        raise ValueError("prior='exact' needs a GaussianMixture target (its log p_T); use prior='normal'")
    if divergence not in ("exact", "hutchinson"):
        raise ValueError(f"divergence must be 'exact' or 'hutchinson'; got {divergence!r}")
    if not isinstance(n_probes, int) or n_probes < 1:
        raise ValueError(f"n_probes must be a positive int; got {n_probes!r}")
    score = _score_fn(model, schedule, prediction)
    trace = _score_trace(model, schedule, prediction)
    shape, B = x.shape, x.shape[0]
    d = math.prod(shape[1:])
    x64 = x.detach().to(torch.float64)
    P = n_probes if divergence == "hutchinson" else 0
    v = _probes(P, shape, probe, generator, torch.float64) if P else None
    vnorm2 = (v * v).reshape(P, B, -1).sum(-1).T if P else None  # (B, P)
    n_x = B * d
    nfe = 0

    def rhs(t: float, y: np.ndarray) -> np.ndarray:
        nonlocal nfe
        nfe += 1
        tt = torch.tensor(t, dtype=torch.float64)
        f, g2 = schedule.f(tt), schedule.g2(tt)
        xt = torch.from_numpy(y[:n_x]).view(shape)
        tb = tt.expand(B)
        with torch.no_grad():
            dx = f * xt - 0.5 * g2 * score(xt, tb)
        if P:
            div = f * vnorm2 - 0.5 * g2 * trace(xt, tb, v)
        else:
            div = (d * f - 0.5 * g2 * trace(xt, tb, None))[:, None]
        return _finite(np.concatenate([dx.reshape(-1).numpy(), div.detach().reshape(-1).numpy()]), t)

    y0 = np.concatenate([x64.reshape(-1).cpu().numpy(), np.zeros(B * max(P, 1))])
    from scipy.integrate import solve_ivp

    sol = solve_ivp(rhs, (t0, t1), y0, method="DOP853", rtol=rtol, atol=atol)
    if not sol.success:
        raise RuntimeError(f"pf_ode_log_likelihood: DOP853 failed: {sol.message}")
    yT = torch.from_numpy(sol.y[:, -1])
    xT = yT[:n_x].view(shape)
    delta = yT[n_x:].view(B, max(P, 1))
    if prior == "exact":
        lp_T = model.log_prob(xT, t1, schedule)
    else:
        sT = float(schedule.sigma(t1))
        lp_T = (
            -0.5 * (xT.reshape(B, -1) ** 2).sum(-1) / sT**2
            - d * math.log(sT)
            - 0.5 * d * math.log(2 * math.pi)
        )
    est = lp_T[:, None] + delta
    stderr = est.std(-1) / math.sqrt(P) if P >= 2 else None
    return LogLikelihood(est.mean(-1), stderr, lp_T, delta.mean(-1), xT.to(x.dtype), nfe)
