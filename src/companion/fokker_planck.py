"""The Fokker-Planck residual of a log-density under the forward SDE of a :class:`~companion.schedules.Schedule`.

The forward SDE ``dx = f(t) x dt + g(t) dW`` in R^d moves a density p_t by the Fokker-Planck equation
``d_t p = -div(f x p) + g^2 / 2 lap p``. Written for ``u = log p_t`` (divide by p) it reads

    d_t u = -d f - f x . grad u + g^2 / 2 (lap u + |grad u|^2),

so the residual

    R = d_t u + d f + f x . grad u - g^2 / 2 (lap u + |grad u|^2)

vanishes for the true log-density, for every x and t (Deveney et al. 2025, the log-density Fokker-Planck
equation; their Ornstein-Uhlenbeck case is f = -1, g = 1). It is blind to the score only through an
additive c(t): ``u + c(t)`` has residual ``c'(t)``.

Derivatives come from autograd. The Laplacian is exact (d backward passes) up to
:data:`EXACT_MAX_DIM` dimensions; above, Hutchinson's estimator ``z^T (grad^2 u) z`` with Rademacher
probes z drawn from an explicit generator (unbiased; Hutchinson 1989).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .schedules import Schedule

__all__ = ["residual", "laplacian", "EXACT_MAX_DIM"]

#: Largest event size for which :func:`residual` computes the Laplacian exactly (one backward pass per
#: coordinate); above it, Hutchinson's estimator with ``probes`` Rademacher vectors.
EXACT_MAX_DIM = 16


def _check(x: Tensor, t: Tensor | float, schedule: Schedule) -> tuple[Tensor, Tensor]:
    if not isinstance(schedule, Schedule):
        raise TypeError(f"schedule must be a companion Schedule; got {type(schedule).__name__}")
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.ndim < 2:
        raise ValueError("x must be a floating-point tensor of shape (B, ...)")
    tt = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    if tt.ndim == 0:
        tt = tt.expand(x.shape[0])
    if tt.shape != (x.shape[0],):
        raise ValueError(f"t must be 0-d or of shape ({x.shape[0]},); got {tuple(tt.shape)}")
    schedule.check_t(tt.detach(), "t")
    return x, tt


def laplacian(
    grad_u: Tensor,
    x: Tensor,
    *,
    exact: bool,
    probes: int = 1,
    generator: torch.Generator | None = None,
    create_graph: bool = False,
) -> Tensor:
    """tr grad^2 u of shape (B,), from ``grad_u = grad_x u`` (built with ``create_graph=True``).

    ``exact``: one backward pass per coordinate; else Hutchinson's mean of ``z^T H z`` over ``probes``
    Rademacher vectors z drawn from ``generator``.
    """
    b = x.shape[0]
    gf = grad_u.reshape(b, -1)
    d = gf.shape[1]
    if exact:
        out = torch.zeros(b, dtype=x.dtype, device=x.device)
        for i in range(d):
            (h,) = torch.autograd.grad(gf[:, i].sum(), x, create_graph=create_graph, retain_graph=True)
            out = out + h.reshape(b, -1)[:, i]
        return out
    if not isinstance(probes, int) or isinstance(probes, bool) or probes < 1:
        raise ValueError(f"probes must be a positive int; got {probes!r}")
    gdev = generator.device if generator is not None else torch.device("cpu")
    out = torch.zeros(b, dtype=x.dtype, device=x.device)
    for _ in range(probes):
        z = torch.randint(0, 2, (b, d), generator=generator, device=gdev).to(x.device, x.dtype) * 2 - 1
        (hz,) = torch.autograd.grad((gf * z).sum(), x, create_graph=create_graph, retain_graph=True)
        out = out + (hz.reshape(b, -1) * z).sum(1)
    return out / probes


def residual(
    log_density: Callable[[Tensor, Tensor], Tensor],
    schedule: Schedule,
    x: Tensor,
    t: Tensor | float,
    *,
    exact: bool | None = None,
    probes: int = 1,
    generator: torch.Generator | None = None,
    create_graph: bool = False,
) -> Tensor:
    """The log-density Fokker-Planck residual R(x, t) of ``u = log_density(x, t)``, shape (B,).

    ``x``: (B, ...) with d = prod(...) per sample; ``t``: 0-d or (B,). ``log_density(x, t)`` must return
    shape (B,) and be differentiable in both arguments (``t`` is passed as a (B,) tensor).
    ``exact``: the exact Laplacian (default when d <= :data:`EXACT_MAX_DIM`) or Hutchinson's estimator
    with ``probes`` Rademacher probes from ``generator``. ``create_graph=True`` keeps the graph, so that
    a training loss can backpropagate through R.
    """
    x, tt = _check(x, t, schedule)
    if not callable(log_density):
        raise TypeError(f"log_density must be callable (x, t) -> (B,); got {type(log_density).__name__}")
    d = x[0].numel()
    exact = d <= EXACT_MAX_DIM if exact is None else exact
    if not isinstance(exact, bool):
        raise TypeError(f"exact must be True, False or None; got {exact!r}")
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        tg = tt.detach().requires_grad_(True)
        u = log_density(xg, tg)
        if u.shape != (x.shape[0],):
            raise ValueError(f"log_density must return shape ({x.shape[0]},); got {tuple(u.shape)}")
        grad_x, grad_t = torch.autograd.grad(u.sum(), (xg, tg), create_graph=True)
        lap = laplacian(
            grad_x, xg, exact=exact, probes=probes, generator=generator, create_graph=create_graph
        )
        # Coefficients in float64 from the detached times, cast to the sample dtype.
        t64 = tt.detach().to(torch.float64)
        f = schedule.f(t64).to(x.dtype)
        g2 = schedule.g2(t64).to(x.dtype)
        gf = grad_x.reshape(x.shape[0], -1)
        xf = xg.reshape(x.shape[0], -1)
        r = grad_t + d * f + f * (xf * gf).sum(1) - 0.5 * g2 * (lap + gf.square().sum(1))
    return r if create_graph else r.detach()
