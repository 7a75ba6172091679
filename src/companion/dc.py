"""DC-Solver's ratios: the greedy search against a reference trajectory and the cascade polynomial regression
(Zhao et al. 2024, arXiv 2409.03755, Sec. 3.3-3.4; the official ``find_optim_ratio`` and
``cascade_polynomial_regression``).

* :func:`reference_states` integrates a few noises accurately and keeps the states at the sampling grid's
  times (the "ground truth" trajectory; the official code runs a 200-step sampler).
* :func:`search_ratios` walks the DC-Solver loop of :mod:`companion.solvers.dc_solver` step by step; at
  step i (i >= ``dc_order``) it fits rho_i by AdamW on the squared distance between the state after the
  predictor of step i and the corrector that follows it (which costs one model call, differentiated
  through) and the reference state at t_{i+1}, then keeps rho_i and moves on. One model forward and
  backward per iteration; ``iters`` x (steps - dc_order) in all.
* :class:`CPR` predicts ratios for an unseen step count and guidance scale: rho(i) = sum_k c_k x^k with
  x = (i + 1)/NFE, each c_k quadratic in g = guidance/12 whose coefficients are quadratic in n = NFE/50
  (36 numbers, linear in them: fitted by least squares).

The ratios go to ``companion.sample(..., solver="dc-solver", ratios=...)``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .sampling import sample
from .schedules import Schedule
from .solvers.base import lincomb
from .solvers.dc_solver import DCSolver, compensation_weights, dc_tables
from .solvers.problem import Problem

__all__ = ["reference_states", "search_ratios", "SearchResult", "CPR"]


def _grid(timesteps) -> Tensor:
    t = torch.as_tensor(timesteps, dtype=torch.float64)
    if t.dim() != 1 or t.shape[0] < 2 or not bool((t[1:] < t[:-1]).all()):
        raise ValueError("timesteps must be a 1-D decreasing grid of at least 2 times")
    return t


def reference_states(
    model: Callable[[Tensor, Tensor], Tensor],
    x_T: Tensor,
    *,
    schedule: Schedule,
    timesteps,
    prediction: str = "eps",
    method: str = "dop853",
    fine: int = 20,
    rtol: float = 1e-9,
) -> Tensor:
    """States (len(timesteps), *x_T.shape) of the probability-flow ODE from ``x_T`` at ``timesteps[0]``, at
    every time of ``timesteps``: ``method="dop853"`` (scipy, float64, segment by segment; exact targets) or
    ``"fine"`` (``fine`` steps of DPM-Solver++(3M) per segment; a network)."""
    if method not in ("dop853", "fine"):
        raise ValueError(f"method must be 'dop853' or 'fine'; got {method!r}")
    if not isinstance(fine, int) or isinstance(fine, bool) or fine < 1:
        raise ValueError(f"fine must be a positive int; got {fine!r}")
    t = _grid(timesteps)
    out = [x_T.detach()]
    x = x_T.detach()
    for i in range(t.shape[0] - 1):
        with torch.no_grad():
            if method == "dop853":
                from .reference import solve_pf_ode

                x = solve_pf_ode(
                    model,
                    x,
                    schedule,
                    float(t[i]),
                    float(t[i + 1]),
                    prediction=prediction,
                    rtol=rtol,
                    atol=rtol,
                )
            else:
                x = sample(
                    model,
                    x,
                    schedule=schedule,
                    prediction=prediction,
                    solver="dpmsolver++",
                    order=3,
                    steps=fine,
                    t_start=float(t[i]),
                    t_end=float(t[i + 1]),
                    grid="logsnr",
                )
        out.append(x)
    return torch.stack(out)


@dataclass
class SearchResult:
    """The searched ratios and what the search cost: ``loss_before``/``loss_after`` per step (mean squared
    distance to the reference after that step at rho = 1 and at the found rho; NaN where not searched),
    model ``calls`` (forward passes, each searched one also differentiated) and wall ``seconds``."""

    ratios: list[float]
    loss_before: list[float]
    loss_after: list[float]
    calls: int
    seconds: float
    options: dict = field(default_factory=dict)


def search_ratios(
    model: Callable[[Tensor, Tensor], Tensor],
    x_T: Tensor,
    reference: Tensor,
    *,
    schedule: Schedule,
    timesteps,
    prediction: str = "eps",
    order: int = 2,
    variant: str = "bh2",
    pred: str = "x0",
    dc_order: int = 2,
    iters: int = 20,
    lr: float = 0.1,
    init: float = 1.0,
    lower_order_final: bool = True,
    progress: bool = True,
) -> SearchResult:
    """Greedy per-step search of DC-Solver's ratios (official ``find_optim_ratio``: AdamW, lr 0.1, from
    rho = 1) so that the state after each step matches ``reference`` (from :func:`reference_states` on the
    same ``timesteps``). The solver options are those of ``solver="dc-solver"``; gradients flow through
    ``model``."""
    t = _grid(timesteps)
    n = t.shape[0] - 1
    if not isinstance(iters, int) or isinstance(iters, bool) or iters < 1:
        raise ValueError(f"iters must be a positive int; got {iters!r}")
    if not (isinstance(lr, int | float) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a positive finite number; got {lr!r}")
    if reference.shape != (n + 1,) + tuple(x_T.shape):
        raise ValueError(
            f"reference must have shape {(n + 1,) + tuple(x_T.shape)} (one state per grid time); "
            f"got {tuple(reference.shape)}"
        )
    solver = DCSolver(order=order, variant=variant, pred=pred, dc_order=dc_order)
    prob = Problem(
        model,
        schedule,
        prediction,
        x_T.detach(),
        n,
        lambda _n: t,
        None,
        math.inf if lower_order_final else 0,
        None,
    )
    ev, orders, prep, _, _ = dc_tables(prob, solver)
    K = len(prep.b)
    keep = max(K, dc_order + 1)
    from tqdm.auto import tqdm

    t0, calls0 = time.perf_counter(), ev.calls
    ratios, before, after = [1.0] * n, [math.nan] * n, [math.nan] * n
    hist: list[Tensor] = []
    x, x_prev = x_T.detach(), x_T.detach()
    corr = prep.ac is not None

    def advance(x: Tensor, hist: list[Tensor], i: int) -> Tensor:
        """The state after step i: its predictor, then the corrector that the next model call allows."""
        xp = lincomb([(prep.a[i], x)] + [(prep.b[j][i], hist[j]) for j in range(orders[i])])
        if not corr or i == n - 1:
            return xp
        m_next = ev(xp, prep.plan[i + 1])
        terms = [(prep.ac[i], x)] + [(prep.bc[j][i], hist[j]) for j in range(orders[i])]
        return lincomb(terms + [(prep.bc[K][i], m_next)])

    bar = tqdm(range(n), desc="dc ratio search", disable=not progress, leave=False)
    for i in bar:
        with torch.no_grad():
            m = ev(x, prep.plan[i])
            if corr and i > 0:
                p = orders[i - 1]
                terms = [(prep.ac[i - 1], x_prev)] + [(prep.bc[j][i - 1], hist[j]) for j in range(p)]
                x = lincomb(terms + [(prep.bc[K][i - 1], m)])
        hist = [m] + hist[: keep - 1]
        if i >= dc_order:
            target = reference[i + 1].to(x.dtype)
            nodes = [t[i - j] for j in range(dc_order + 1)]
            rho = torch.nn.Parameter(torch.tensor(float(init), dtype=torch.float64))
            opt = torch.optim.AdamW([rho], lr=lr)

            def loss_at(r: Tensor, x=x, hist=hist, i=i, nodes=nodes, target=target) -> Tensor:
                w = compensation_weights(nodes, t[i - 1], t[i], r)
                mc = sum(wj.to(x.dtype) * hj for wj, hj in zip(w, hist, strict=False))
                return torch.mean((advance(x, [mc] + hist[1:], i) - target) ** 2)

            with torch.no_grad():
                before[i] = float(loss_at(torch.tensor(1.0, dtype=torch.float64)))
            for _ in range(iters):
                opt.zero_grad()
                loss = loss_at(rho)
                loss.backward()
                opt.step()
            ratios[i] = float(rho.detach())
            with torch.no_grad():
                w = compensation_weights(nodes, t[i - 1], t[i], torch.tensor(ratios[i], dtype=torch.float64))
                hist[0] = lincomb([(float(wj), hj) for wj, hj in zip(w, hist, strict=False)])
                after[i] = float(torch.mean((advance(x, hist, i) - target) ** 2))
            bar.set_postfix(rho=f"{ratios[i]:.3f}")
        x_prev = x
        with torch.no_grad():
            x = lincomb([(prep.a[i], x)] + [(prep.b[j][i], hist[j]) for j in range(orders[i])])
    opts = dict(order=order, variant=variant, pred=pred, dc_order=dc_order, iters=iters, lr=lr)
    return SearchResult(ratios, before, after, ev.calls - calls0, time.perf_counter() - t0, opts)


def _features(nfe: int, guidance: float, steps: Sequence[int]) -> np.ndarray:
    """Rows (len(steps), 36): x^k g^(2-a) n^(2-b) for k < 4, a, b < 3 (x = (i + 1)/NFE, g = guidance/12,
    n = NFE/50), the order of the official coefficient array reshaped to (4, 3, 3)."""
    x = (np.asarray(steps, dtype=np.float64) + 1.0) / nfe
    g, n = guidance / 12.0, nfe / 50.0
    xk = np.stack([x**k for k in range(4)], -1)  # (S, 4)
    ga = np.array([g**2, g, 1.0])
    nb = np.array([n**2, n, 1.0])
    return (xk[:, :, None, None] * ga[None, None, :, None] * nb[None, None, None, :]).reshape(len(x), 36)


@dataclass(frozen=True)
class CPR:
    """Cascade polynomial regression of DC-Solver's ratios over (NFE, guidance): ``coef`` holds the 36
    numbers (shape (4, 3, 3), as the official ``cpr_coeffs`` reshaped), ``first`` the leading steps whose
    ratio is 1 (``dc_order``)."""

    coef: tuple[float, ...]
    first: int = 2

    def __post_init__(self) -> None:
        c = tuple(float(v) for v in np.asarray(self.coef, dtype=np.float64).reshape(-1))
        if len(c) != 36 or not all(math.isfinite(v) for v in c):
            raise ValueError(f"coef must hold 36 finite numbers; got {len(c)}")
        if not isinstance(self.first, int) or isinstance(self.first, bool) or self.first < 0:
            raise ValueError(f"first must be an int >= 0; got {self.first!r}")
        object.__setattr__(self, "coef", c)

    @classmethod
    def fit(cls, table: Mapping[tuple[int, float], Sequence[float]], first: int = 2) -> CPR:
        """Least-squares fit to searched ratios ``table[(nfe, guidance)]`` (one per step; the first
        ``first`` steps are left out: their ratio is 1 by construction)."""
        rows, ys = [], []
        for (nfe, w), r in table.items():
            if len(r) != nfe:
                raise ValueError(f"table[({nfe}, {w})] must hold {nfe} ratios; got {len(r)}")
            steps = list(range(first, nfe))
            rows.append(_features(nfe, float(w), steps))
            ys.append(np.asarray(r, dtype=np.float64)[first:])
        if not rows:
            raise ValueError("table is empty")
        A, y = np.concatenate(rows), np.concatenate(ys)
        coef, *_ = np.linalg.lstsq(A, y, rcond=None)
        return cls(tuple(coef), first)

    def predict(self, nfe: int, guidance: float) -> list[float]:
        """Ratios for ``nfe`` steps at ``guidance``, ready for ``solver="dc-solver", ratios=...``."""
        if not isinstance(nfe, int) or isinstance(nfe, bool) or nfe < 1:
            raise ValueError(f"nfe must be a positive int; got {nfe!r}")
        if not (isinstance(guidance, int | float) and math.isfinite(guidance)):
            raise ValueError(f"guidance must be a finite number; got {guidance!r}")
        steps = list(range(self.first, nfe))
        r = _features(nfe, float(guidance), steps) @ np.asarray(self.coef) if steps else np.zeros(0)
        return [1.0] * min(self.first, nfe) + [float(v) for v in r]

    def to_dict(self) -> dict:
        return {"coef": list(self.coef), "first": self.first}

    @classmethod
    def from_dict(cls, d: Mapping) -> CPR:
        return cls(tuple(d["coef"]), int(d.get("first", 2)))


def save_json(path: str | Path, payload: dict) -> None:
    """Write ``payload`` (ratios, CPR coefficients, how they were made) as compact, sorted JSON."""
    Path(path).write_text(json.dumps(payload, indent=1, sort_keys=True) + "\n")
