"""``companion.sample`` (noise to data) and ``companion.invert`` (data to noise) with any registered solver."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from . import grids
from . import parameterization as P
from . import solvers as S
from .interpolants import StochasticInterpolant
from .noise import NoiseSource
from .noise import resolve as resolve_noise
from .schedules import Schedule
from .solvers.base import Evaluator

__all__ = ["sample", "invert"]

#: Step counts below which ``lower_order_final`` lowers the last steps' orders, per compat mode.
_LOF = {None: 15, "dpm-solver": 10, "diffusers": 15}

Callback = Callable[[int, Tensor, Tensor, Tensor], "Tensor | None"]


def _solver(solver: str | S.Solver, options: dict[str, Any]) -> S.Solver:
    if isinstance(solver, S.Solver):
        if options:
            raise TypeError(
                f"solver options {sorted(options)} go to companion.solvers.build when solver is a built "
                f"solver ({solver!r})"
            )
        return solver
    return S.build(solver, **options)


def _check_common(x: Tensor, name: str, schedule: Schedule, compat: str | None, steps: int) -> None:
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() < 1:
        raise TypeError(f"{name} must be a floating-point tensor of shape (B, ...)")
    if not isinstance(schedule, Schedule):
        raise TypeError(f"schedule must be a companion.schedules.Schedule; got {type(schedule).__name__}")
    if compat not in _LOF:
        raise ValueError(f"compat must be one of {list(_LOF)}; got {compat!r}")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be a positive int; got {steps!r}")


def _check_mu(mu: Any, x: Tensor, name: str) -> Tensor:
    """``mu`` as a tensor on x's device and dtype that broadcasts to x's shape, finite everywhere."""
    if isinstance(mu, (int, float)) and not isinstance(mu, bool):
        mu = torch.tensor(float(mu))
    if not isinstance(mu, Tensor) or mu.is_complex() or mu.dtype == torch.bool:
        raise TypeError(f"mu must be a real tensor (or a number); got {type(mu).__name__}")
    try:
        shape = torch.broadcast_shapes(mu.shape, x.shape)
    except RuntimeError:
        shape = None
    if shape != x.shape:
        raise ValueError(
            f"mu must broadcast to the shape of {name} {tuple(x.shape)} (one mean per sample allowed); "
            f"got shape {tuple(mu.shape)}"
        )
    mu = mu.detach().to(device=x.device, dtype=x.dtype)
    if not bool(torch.isfinite(mu).all()):
        raise ValueError("mu must be finite everywhere; got NaN or infinite entries")
    return mu


def _shift(model, mu: Tensor, prediction: str, schedule: Schedule, x0_fn, callback):
    """The problem on y = x - mu: a mean-reverting process is a Gaussian one on y (alpha_t y_0 + sigma_t eps).

    The model sees x = y + mu and names what it returns about x; on y, eps, score and velocity
    (d/dt of alpha_t (x_0 - mu) + sigma_t eps) are unchanged, the data prediction is x_0 - mu and
    v = alpha eps - sigma x_0 becomes v + sigma_t mu. ``x0_fn`` and ``callback`` keep seeing x."""
    if prediction == "x0":

        def shifted(y, t):
            return model(y + mu, t) - mu
    elif prediction == "v":

        def shifted(y, t):
            sig = schedule.sigma(torch.as_tensor(t).to(torch.float64)).to(y.device, y.dtype)
            return model(y + mu, t) + sig.reshape(sig.shape + (1,) * (y.dim() - sig.dim())) * mu
    else:

        def shifted(y, t):
            return model(y + mu, t)

    fn = None if x0_fn is None else (lambda y0: x0_fn(y0 + mu) - mu)
    cb = None
    if callback is not None:

        def cb(i, t, y, denoised):
            out = callback(i, t, y + mu, None if denoised is None else denoised + mu)
            return out if not isinstance(out, Tensor) else out - mu

    return shifted, fn, cb


def _grid_builder(schedule, grid, steps, t_start, t_end, timesteps, rho):
    """(make_grid(n), steps, grid name or None): explicit ``timesteps`` ignore ``n``."""
    if timesteps is not None:
        ts = grids.check_timesteps(timesteps, schedule)
        return (lambda n: ts), ts.shape[0] - 1, None
    if grid not in grids.GRIDS:
        raise ValueError(f"unknown grid {grid!r}; available: {list(grids.GRIDS)}")

    @functools.lru_cache(maxsize=4)
    def make_grid(n: int) -> Tensor:
        return grids.get_grid(grid, schedule, n, t_start, t_end, rho)

    return make_grid, steps, grid


def sample(
    model: Callable[[Tensor, Tensor], Tensor],
    x_T: Tensor,
    *,
    schedule: Schedule,
    prediction: str = "eps",
    solver: str | S.Solver = "dpmsolver++",
    steps: int = 20,
    grid: str = "logsnr",
    t_start: float | Tensor | None = None,
    t_end: float | Tensor | None = None,
    timesteps: Tensor | None = None,
    rho: float = 7.0,
    lower_order_final: bool = True,
    denoise_to_zero: bool = False,
    compat: str | None = None,
    x0_fn: Callable[[Tensor], Tensor] | None = None,
    generator: torch.Generator | None = None,
    noise: NoiseSource | None = None,
    callback: Callback | None = None,
    mu: Tensor | float | None = None,
    **options: Any,
) -> Tensor:
    """Integrate from ``x_T`` at ``t_start`` down to ``t_end`` and return the sample.

    ``solver`` is a registered name (``companion.solvers.available()``), whose options (``order``,
    ``method``, ``variant``, ``eta``, ``corrector``, ...) go in ``options`` and are checked when the solver is
    built, or a solver built with ``companion.solvers.build``. ``order`` defaults to 2 where the solver has
    it. ``model(x, t)`` returns a ``prediction`` (eps | x0 | v | score | velocity, or diffusers' names);
    ``t`` reaches it as a tensor of shape (B,). ``steps`` counts model evaluations for singlestep and
    adaptive methods (as the official DPM-Solver) and steps for multistep ones. ``timesteps`` (1-D
    decreasing, or (N + 1, B) for one grid per sample) replaces ``grid``/``steps``/``t_start``/``t_end``,
    which may also be tensors of shape (B,).

    ``lower_order_final`` drops the last steps to orders ..., 2, 1 below 15 steps; ``compat`` picks a peer's
    final-step rules: ``"dpm-solver"`` (below 10 steps, the official code) or ``"diffusers"`` (below 15,
    and diffusers' per-scheduler rules). ``denoise_to_zero`` adds one evaluation that returns the data
    prediction at ``t_end`` (none when sigma(t_end) = 0). ``x0_fn`` corrects every data prediction
    (e.g. dynamic thresholding). Stochastic solvers draw their normals from ``noise`` (a
    :mod:`companion.noise` source: per-sample seeds, a Brownian path, injected noise) or else from
    ``generator`` (not batch-invariant).

    ``mu`` (a tensor broadcastable to ``x_T``, e.g. one degraded image per sample) runs a mean-reverting
    process towards mu (:class:`companion.schedules.MeanReverting`, IR-SDE): every solver then integrates
    y = x - mu and returns y + mu; ``prediction`` still names what the model returns about x itself (its
    ``x0`` is the clean x) and ``model``, ``x0_fn`` and ``callback`` see x.

    ``callback(i, t, x, denoised)`` runs after step i with the state ``x`` at time ``t`` (float64, shape
    () or (B,)) and the latest data prediction ``denoised``; if it returns a tensor (same shape, dtype and
    device as ``x``), that tensor replaces the state: inpainting, restoration constraints and latent edits
    are written this way. Multistep solvers keep their history of model outputs across a replacement.

    With ``schedule=`` a :class:`companion.interpolants.StochasticInterpolant`, ``x_T`` holds samples of the
    density at ``t_start`` (default 0, i.e. rho_0; ``t_start=1, t_end=0`` runs backward from rho_1),
    ``model(x, t)`` returns the pair (velocity b, score s), the grid is uniform in t (or ``timesteps``,
    monotone in [0, 1]) and the solver is ``"interpolant"``, whose ``diffusion`` eps(t) >= 0 picks the
    SDE (eps = 0: the transport ODE); see :func:`companion.solvers.interpolant.run_stochastic_interpolant`.
    """
    built = _solver(solver, options)
    if callback is not None and not callable(callback):
        raise TypeError(
            f"callback must be callable(i, t, x, denoised) or None (with a StochasticInterpolant schedule the "
            f"fourth argument is the drift b); got {type(callback).__name__}"
        )
    if isinstance(schedule, StochasticInterpolant):
        if mu is not None:
            raise ValueError(
                "mu= takes a diffusion Schedule (the process mean-reverts to mu); a StochasticInterpolant "
                "already names both end points: leave mu unset"
            )
        return _sample_interpolant(
            built,
            model,
            x_T,
            schedule,
            prediction,
            steps,
            grid,
            t_start,
            t_end,
            timesteps,
            generator,
            noise,
            callback,
        )
    prediction = P.canonical(prediction)
    _check_common(x_T, "x_T", schedule, compat, steps)
    if mu is not None:
        mu = _check_mu(mu, x_T, "x_T")
        model, x0_fn, callback = _shift(model, mu, prediction, schedule, x0_fn, callback)
        x_T = x_T - mu
    make_grid, steps, grid_name = _grid_builder(schedule, grid, steps, t_start, t_end, timesteps, rho)
    x = _run(
        built,
        model,
        x_T,
        schedule,
        prediction,
        steps,
        make_grid,
        grid_name,
        _LOF[compat] if lower_order_final else 0,
        compat,
        x0_fn,
        generator,
        noise,
        callback,
    )
    t_last = make_grid(steps)[-1]
    if denoise_to_zero and bool((schedule.sigma(t_last) > 0).all()):  # at sigma = 0, x is already clean
        ev = Evaluator(model, schedule, prediction, "x0", x, x0_fn)
        x = ev(x, ev.plan(t_last[None], x)[0])
    return x if mu is None else x + mu


def _sample_interpolant(
    built, model, x, si, prediction, steps, grid, t_start, t_end, timesteps, generator, noise, callback
) -> Tensor:
    if not isinstance(built, S.Interpolant):
        raise ValueError(
            f"schedule=StochasticInterpolant needs solver='interpolant' (with diffusion=eps); got {built.name!r}"
        )
    if prediction != "eps":
        raise ValueError(
            "with a StochasticInterpolant schedule the model returns the pair (b, s); leave prediction unset"
        )
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() < 1:
        raise TypeError("x_T must be a floating-point tensor of shape (B, ...)")
    if timesteps is not None:
        ts = torch.as_tensor(timesteps).detach().to("cpu", torch.float64)
        if ts.dim() != 1 or ts.shape[0] < 2:
            raise ValueError(f"timesteps must have shape (N + 1,) with N >= 1; got {tuple(ts.shape)}")
        d = ts[1:] - ts[:-1]
        if not (bool((d > 0).all()) or bool((d < 0).all())):
            raise ValueError(
                "timesteps must be strictly monotone (increasing: forward, decreasing: backward)"
            )
        si.check_t(ts, "timesteps")
    else:
        if grid not in ("logsnr", "time_uniform"):
            raise ValueError(
                f"a StochasticInterpolant takes grid='time_uniform' (the default) only; got {grid!r}"
            )
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
            raise ValueError(f"steps must be a positive int; got {steps!r}")
        a = 0.0 if t_start is None else t_start
        b = 1.0 if t_end is None else t_end
        si.check_t(a, "t_start")
        si.check_t(b, "t_end")
        if torch.as_tensor(a).dim() or torch.as_tensor(b).dim() or float(a) == float(b):
            raise ValueError(f"t_start and t_end must be distinct numbers; got {t_start!r}, {t_end!r}")
        ts = grids.time_uniform(float(a), float(b), steps)
    return S.interpolant.run_stochastic_interpolant(
        model, x, ts, built.diffusion, resolve_noise(noise, generator), callback
    )


def _run(
    built,
    model,
    x,
    schedule,
    prediction,
    steps,
    make_grid,
    grid_name,
    lof,
    compat,
    x0_fn,
    generator,
    noise,
    callback,
) -> Tensor:
    # Validates t_start / t_end before any model call; the grid most solvers use, so it is built once.
    first = make_grid(steps)
    if first.dim() == 2 and first.shape[1] != x.shape[0]:
        raise ValueError(f"per-sample times must have B = {x.shape[0]} columns; got {first.shape[1]}")
    prob = S.Problem(
        model=model,
        schedule=schedule,
        prediction=prediction,
        x=x,
        steps=steps,
        grid=make_grid,
        grid_name=grid_name,
        lower_order_final=lof,
        compat=compat,
        x0_fn=x0_fn,
        generator=generator,
        callback=callback,
        noise=resolve_noise(noise, generator),
    )
    return built(prob)


def invert(
    model: Callable[[Tensor, Tensor], Tensor],
    x_0: Tensor,
    *,
    schedule: Schedule,
    prediction: str = "eps",
    solver: str | S.Solver = "ddim",
    steps: int = 20,
    grid: str = "logsnr",
    t_start: float | Tensor | None = None,
    t_end: float | Tensor | None = None,
    timesteps: Tensor | None = None,
    rho: float = 7.0,
    x0_fn: Callable[[Tensor], Tensor] | None = None,
    callback: Callback | None = None,
    mu: Tensor | float | None = None,
    **options: Any,
) -> Tensor:
    """ODE encoding: the ``x_T`` at ``t_start`` that ``sample`` with the same arguments maps to ``x_0`` at
    ``t_end``, found by running the solver *up* the noise levels on the reversed grid (DDIM inversion for
    ``solver="ddim"``). The exponential integrators' coefficients hold for steps with h < 0, so any
    deterministic fixed-grid solver inverts (``solver.invertible``); the final orders are not lowered.
    The round trip ``sample(invert(x))`` returns ``x`` up to the solver's error in both directions.
    ``mu`` as in :func:`sample`.
    """
    prediction = P.canonical(prediction)
    built = _solver(solver, options)
    if not built.invertible:
        raise ValueError(
            f"solver {built.name!r} with these options cannot invert (stochastic, or adaptive step sizes); "
            "use a deterministic fixed-grid solver such as 'ddim', 'dpmsolver++' or 'unipc'"
        )
    _check_common(x_0, "x_0", schedule, None, steps)
    if mu is not None:
        mu = _check_mu(mu, x_0, "x_0")
        model, x0_fn, callback = _shift(model, mu, prediction, schedule, x0_fn, callback)
        x_0 = x_0 - mu
    make_grid, steps, _ = _grid_builder(schedule, grid, steps, t_start, t_end, timesteps, rho)
    up = make_grid(steps).flip(0)
    out = _run(
        built,
        model,
        x_0,
        schedule,
        prediction,
        steps,
        lambda n: up,
        None,
        0,
        None,
        x0_fn,
        None,
        None,
        callback,
    )
    return out if mu is None else out + mu
