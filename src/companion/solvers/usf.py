"""USF (Liu et al. 2024, "A Unified Sampling Framework for Solver Searching of Diffusion Probabilistic
Models", S^3): one exponential-integrator step whose decisions are taken per step.

Every step i (from t_i to t_{i+1}) is a :class:`Step`: its Taylor ``order`` p (how many of the latest model
evaluations m_i, m_{i-1}, ... it uses), its ``pred`` (integrate the data prediction x0, k = -1, or the noise
prediction eps, k = +1), its ``predictor`` weights and its ``corrector``:

    x_{i+1} = a x_i + c sum_{j<p} w_j m_{i-j}      (see :mod:`.base`: a, c from the step's pred)

* ``lagrange``: w_j integrate the interpolating polynomial through the p points exactly (the Taylor
  expansion with divided differences, USF's "Difference_k"; DPM-Solver(++) ``variant="heun"`` at order 2,
  the correct 3M at order 3);
* ``bh1`` / ``bh2``: UniPC's UniP-p weights with B(h) = h or e^h - 1 (Zhao et al. 2023, eq. 8); ``bh2``
  at order 2 is DPM-Solver++(2M)'s midpoint rule (Lu et al. 2022b, Alg. 2). Order 1 is DDIM for all three.
* ``corrector`` None, ``bh1`` or ``bh2``: UniC (0 extra NFE) re-solves step i with the evaluation at the
  predicted x_{i+1}, which is kept in the history (the pseudo corrector of USF); never on the last step.

The history keeps both predictions of each evaluation when the plan mixes them (converted once, in
float64 coefficients), so a step may integrate x0 after a step that integrated eps. Not in this space
(USF's paper has them): singlestep starting points, a choice of which past points enter a difference,
the (1 + c h) scaling of the first derivative, the implicit (+1 NFE) corrector and the analytic first step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from .. import parameterization as P
from . import multistep as ms
from .base import Points, base_coefs, first_order, kernel, lagrange_weights, lincomb, rows
from .problem import Problem
from .registry import Option, OrderCheck, Solver, choice, option, register
from .unipc import unipc_weights

__all__ = [
    "Step",
    "USF",
    "as_plan",
    "uniform_plan",
    "plan_nfe",
    "ORDERS",
    "PREDS",
    "PREDICTORS",
    "CORRECTORS",
]

ORDERS = (1, 2, 3)
PREDS = ("x0", "eps")
PREDICTORS = ("lagrange", "bh1", "bh2")
CORRECTORS = (None, "bh1", "bh2")


@dataclass(frozen=True)
class Step:
    """The decisions of one step of a USF plan (see the module docstring)."""

    order: int = 2
    pred: str = "x0"
    predictor: str = "lagrange"
    corrector: str | None = None

    def __post_init__(self) -> None:
        checks = (("order", ORDERS), ("pred", PREDS), ("predictor", PREDICTORS), ("corrector", CORRECTORS))
        for name, allowed in checks:
            v = getattr(self, name)
            if not any(type(v) is type(a) and v == a for a in allowed):
                raise ValueError(f"{name}={v!r} is not allowed; allowed: {list(allowed)}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _step(entry: Any, i: int) -> Step:
    if isinstance(entry, Step):
        return entry
    if not isinstance(entry, Mapping):
        raise TypeError(f"plan[{i}] must be a Step or a dict of Step fields; got {type(entry).__name__}")
    unknown = sorted(set(entry) - {"order", "pred", "predictor", "corrector"})
    if unknown:
        raise ValueError(
            f"plan[{i}] has unknown field(s) {unknown}; allowed: order, pred, predictor, corrector"
        )
    try:
        return Step(**entry)
    except ValueError as e:
        raise ValueError(f"plan[{i}]: {e}") from None


def as_plan(plan: Any) -> tuple[Step, ...]:
    """A plan as a tuple of :class:`Step` (from Steps or dicts), checked: step i may use at most i + 1
    evaluations (order <= i + 1). Errors name ``plan[i]``."""
    if isinstance(plan, (str, bytes, Mapping)) or not isinstance(plan, Sequence):
        raise TypeError(f"plan must be a sequence of Steps or dicts; got {type(plan).__name__}")
    if len(plan) == 0:
        raise ValueError("plan must have at least one step; got an empty plan")
    steps = tuple(_step(e, i) for i, e in enumerate(plan))
    for i, s in enumerate(steps):
        if s.order > i + 1:
            raise ValueError(
                f"plan[{i}]: order {s.order} needs {s.order} model evaluations, but step {i} has only {i + 1}"
            )
    return steps


def uniform_plan(
    steps: int, order: int = 2, pred: str = "x0", predictor: str = "lagrange", corrector: str | None = None
) -> tuple[Step, ...]:
    """The plan of a plain multistep run: orders 1, 2, ..., then ``order``, the rest fixed."""
    return tuple(Step(min(order, i + 1), pred, predictor, corrector) for i in range(steps))


def plan_nfe(plan: Sequence[Step]) -> int:
    """Model evaluations of a plan: one per step (the pseudo corrector reuses the next step's)."""
    return len(plan)


def _plan_ok(v: Any) -> bool:
    if v is None:
        return True
    try:
        as_plan(v)
    except (TypeError, ValueError):
        return False
    return True


_PLAN = Option(
    "None (a uniform plan from order/pred/predictor/corrector) or a sequence of Steps or dicts with fields "
    "order in (1, 2, 3) <= index + 1, pred in ('x0', 'eps'), predictor in ('lagrange', 'bh1', 'bh2'), "
    "corrector in (None, 'bh1', 'bh2')",
    lambda v: v is None or (isinstance(v, Sequence) and not isinstance(v, (str, bytes))),
    _plan_ok,
    ("bogus", ({"order": 3},), ({"order": 1, "pred": "v"},)),
    "the per-step decisions (one Step per step of the grid)",
)


def _coefs(pts: Points, i: int, st: Step, last: bool) -> tuple[Tensor, list[Tensor], Tensor | None, list]:
    """Float64 (a, [b_j], ac, [bc_j]) of step i: x_{i+1} = a x_i + sum_j b_j m_{i-j}; the corrector
    x_{i+1} = ac x_i + sum_j bc_j m_{i-j} + bc_p m_{i+1} (None on the last step or without one)."""
    ix = torch.tensor([i])
    s, t = pts[ix], pts[ix + 1]
    k, p = kernel(st.pred), st.order
    finite = bool(torch.isfinite(s.lam).all() & torch.isfinite(t.lam).all())
    if p == 1 or not finite:  # an infinite log-SNR end: first order, as the multistep engine
        a, b = first_order(st.pred, s, t)
        B = [b]
    else:
        h, r = ms.nodes(pts, ix, p)
        a, c = base_coefs(st.pred, s, t)
        w = (
            lagrange_weights(r, h, k)
            if st.predictor == "lagrange"
            else unipc_weights(r, h, k, st.predictor, False)
        )
        B = [c * wj for wj in w]
    if st.corrector is None or last or not finite:
        return a[0], [b[0] for b in B], None, []
    h, r = ms.nodes(pts, ix, p)
    ac, c = base_coefs(st.pred, s, t)
    wc = unipc_weights(r, h, k, st.corrector, True)
    return a[0], [b[0] for b in B], ac[0], [(c * w)[0] for w in wc]


@register("usf", "USF/S^3: a per-step plan of order, prediction, predictor weights and UniC corrector")
class USF(Solver):
    """The USF solver (Liu et al. 2024): a multistep exponential integrator whose order, prediction type
    (x0 or eps), predictor weights and pseudo corrector are chosen per step by ``plan`` (one :class:`Step`
    or dict per step of the grid; see the module docstring); 1 NFE per step. Without ``plan`` it runs the
    uniform plan of ``order``/``pred``/``predictor``/``corrector`` with the problem's ``lower_order_final``,
    like DPM-Solver(++) multistep. Run a found schedule with
    ``companion.sample(model, x_T, timesteps=grid, solver="usf", plan=plan)``."""

    STEPS_ASYMPTOTIC: ClassVar[tuple[int, ...]] = (160, 320, 640)

    order: int = choice(2, ORDERS, "the order of a uniform plan (warm-up and final steps may be lower)")
    pred: str = choice("x0", PREDS, "a uniform plan's prediction: data (x0) or noise (eps)")
    predictor: str = choice("lagrange", PREDICTORS, "a uniform plan's predictor weights")
    corrector: str | None = choice(None, CORRECTORS, "a uniform plan's UniC corrector")
    plan: Any = option(None, _PLAN)

    def validate(self) -> None:
        if self.plan is not None:
            object.__setattr__(self, "plan", as_plan(self.plan))

    def order_check(self) -> OrderCheck:
        if self.plan is not None:
            return OrderCheck(None, reason="an explicit plan fixes the number of steps")
        nominal = float(self.order + (self.corrector is not None))
        if self.corrector is not None and self.order == 3 and self.pred == "x0":
            return OrderCheck(
                nominal,
                steps=self.STEPS_ASYMPTOTIC,
                reason="UniC-corrected order 3 in data prediction is pre-asymptotic over 20-320 steps, "
                "as UniPC-3 and corrected DPM-Solver++ 3M (docs/findings/unipc3_order.md)",
            )
        return OrderCheck(nominal)

    def steps_of(self, prob: Problem, n: int, lam: Tensor) -> tuple[Step, ...]:
        if self.plan is not None:
            if len(self.plan) != n:
                raise ValueError(f"plan has {len(self.plan)} steps but the grid has {n} (steps/timesteps)")
            return self.plan
        orders = ms.step_orders(n, self.order, lam, prob.lower_order_final)
        return tuple(Step(p, self.pred, self.predictor, self.corrector) for p in orders)

    def __call__(self, prob: Problem) -> Tensor:
        t = prob.grid(prob.steps)
        pts = prob.points(t)
        n = pts.t.shape[0] - 1
        plan = self.steps_of(prob, n, pts.lam)
        preds = sorted({s.pred for s in plan})
        x = prob.x
        ev = prob.evaluator(preds[0] if len(preds) == 1 else "x0")
        points = ev.plan(pts.t[:-1], x)
        hook = prob.step_hook(ev, torch.as_tensor(t, dtype=torch.float64))
        conv = None
        if len(preds) == 2:  # eps = (x - alpha x0)/sigma at each evaluation time
            cx, co = P.coefficients("x0", "eps", pts.alpha[:-1], pts.sigma[:-1])
            conv = (rows(cx, x), rows(co, x))
        coefs = [_coefs(pts, i, st, i == n - 1) for i, st in enumerate(plan)]

        def as_rows(v):
            return rows(torch.stack(v) if isinstance(v, list) else v.unsqueeze(0), x)

        hist: list[dict[str, Tensor]] = []  # newest first; each evaluation in the predictions it is used as
        x_prev: Tensor | None = None
        for i, st in enumerate(plan):
            m = ev(x, points[i])
            entry = {preds[0] if len(preds) == 1 else "x0": m}
            if conv is not None:
                entry["eps"] = lincomb([(conv[0][i], x), (conv[1][i], m)])
            if i > 0 and coefs[i - 1][2] is not None:
                prev = plan[i - 1]
                _, _, ac, bc = coefs[i - 1]
                ac_r, bc_r = as_rows(ac)[0], as_rows(bc)
                terms = [(ac_r, x_prev)] + [(bc_r[j], h[prev.pred]) for j, h in enumerate(hist[: prev.order])]
                x = lincomb(terms + [(bc_r[prev.order], entry[prev.pred])])
            hist = [entry] + hist[:2]
            a, b, _, _ = coefs[i]
            a_r, b_r = as_rows(a)[0], as_rows(b)
            x_prev = x
            x = lincomb([(a_r, x)] + [(b_r[j], h[st.pred]) for j, h in enumerate(hist[: len(b)])])
            if hook is not None:
                x = hook(i, x)
        return x
