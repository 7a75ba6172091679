"""Conformance of every registered solver, generated from ``companion.solvers.available()``.

No solver name is written here. The generator functions below (:func:`configurations`, :func:`order_cases`,
:func:`bad_option_cases`, ...) read the registry when the module is collected, and every test is a thin
wrapper over a ``check_*`` function, so a solver is covered as soon as it registers
(``test_a_new_solver_is_covered`` registers a throwaway one and runs the checks on it).

Configurations of a solver: each declared order with default options; then, one at a time, every other
value of each enumerable option (``choice`` and ``flag``) at the highest order, falling back to a lower
order where the solver's own rules refuse the combination (the fallback is in the test id), or skipped
with the refusal as the reason where no order is accepted; then the extra configurations the class
declares in ``conformance: ClassVar[tuple[dict, ...]]``. On each:

* the order check it declares (``Solver.order_check``) is consistent, and where it has a nominal order, the
  fitted log-log slope (float64, VP linear, logSNR grid t = 1 -> 1e-3, ``lower_order_final=False``) lies
  within its tolerance over its step window: ``"ode"`` against a DOP853 reference of the probability-flow
  ODE on a 2-D and a 16-D Gaussian mixture, ``"strong"`` against the exact solution of the solver's
  :meth:`Solver.sde_diffusion` SDE on Gaussian data driven by the same :class:`BrownianPath`;
* every prediction type of the same exact model gives the same sample to 1e-10;
* every value an option declares invalid, and an unknown option, raise an error naming the option;
* the output is finite at 1 to 50 steps;
* stochastic ones are deterministic per seed and batch-invariant bit for bit.

The fitted orders go to the ``report`` fixture of tests/conftest.py (section "fitted order (conformance)").
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import math
import re
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from helpers import fitted_order, gaussian_path_solution, reference
from torch import Tensor

import companion as cp
from companion.noise import BrownianPath, PerSampleNoise
from companion.parameterization import PREDICTIONS, convert
from companion.solvers.registry import Option, OrderCheck, Solver, choice

VP = cp.schedules.VPLinear()
T_START, T_END = 1.0, 1e-3
#: (d, spread, var_lo, var_hi) of the random mixtures of the ODE order fits
MIXTURES = {"2d": (2, 1.0, 0.2, 0.5), "16d": (16, 0.5, 0.2, 0.6)}
ODE_BATCH = 16
#: strong order: data N(MU, C0 I); (d, batch) per dimension (the same number of elements in each)
MU, C0 = 0.3, 0.25
STRONG = {"2d": (2, 128), "16d": (16, 16)}
N_FINE_MIN = 5120  # Brownian path resolution: the lcm of the step window, refined to at least this
DIMS = {"ode": tuple(MIXTURES), "strong": tuple(STRONG)}
PRED_STEPS, PRED_BATCH, PRED_TOL = 10, 8, 1e-10
FINITE_STEPS = (1, 2, 3, 5, 8, 13, 21, 34, 50)
SEEDS = [7, 1, 99, 5, 123456789, 0, 31]
UNKNOWN = "no_such_option"
SECTION = "fitted order (conformance)"


# --- configurations --------------------------------------------------------------------------------------
def _fmt(v: Any) -> str:
    return getattr(v, "__name__", type(v).__name__) if callable(v) else str(v)


@dataclass(frozen=True)
class Config:
    """One configuration of a registered solver. ``note``: why it is not the one asked for (an order
    fallback); ``skip``: non-empty when the solver's own rules refused every order (the refusal)."""

    name: str
    options: tuple[tuple[str, Any], ...]
    note: str = ""
    skip: str = ""

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.options)

    def build(self) -> Solver:
        return cp.solvers.build(self.name, **self.kwargs)

    @property
    def id(self) -> str:
        s = f"{self.name}(" + ",".join(f"{k}={_fmt(v)}" for k, v in self.options) + ")"
        return s + (f"[{self.note}]" if self.note else "") + ("[refused]" if self.skip else "")

    @property
    def is_default(self) -> bool:
        """Default options at one of its orders."""
        return [k for k, _ in self.options] == ["order"]


def choice_values(opt: Option) -> tuple[Any, ...] | None:
    """The values of an enumerable option (``choice`` or ``flag``), else None; each must be allowed."""
    if opt.values is not None:
        assert all(opt.check_type(v) and opt.check_value(v) for v in opt.values), opt.allowed
    return opt.values


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b


def _attempt(name: str, request: dict[str, Any], orders: list[int]) -> Config:
    """The configuration ``request`` at the first of ``orders`` the solver accepts; a ValueError from
    building (the solver's cross-option rules) moves on to the next order and is recorded."""
    cls = cp.solvers.get(name)
    rest = tuple((k, v) for k, v in request.items() if k != "order")
    allowed = cls.options()
    if any(k not in allowed or not (allowed[k].check_type(v) and allowed[k].check_value(v)) for k, v in rest):
        # Not the solver's rules: a bad declared configuration. Keep it so that its test fails loudly.
        return Config(name, (("order", orders[0]),) + rest)
    refused = []
    for o in orders:
        try:
            cls(order=o, **dict(rest))
        except ValueError as e:
            refused.append(f"order={o}: {e}")
            continue
        fallback = f"order={orders[0]} refused" if o != orders[0] else ""
        return Config(name, (("order", o),) + rest, note=fallback)
    return Config(name, (("order", orders[0]),) + rest, skip="; ".join(refused))


@functools.cache
def _configurations(name: str, cls: type) -> tuple[Config, ...]:
    orders = list(cls.orders())
    top_down = sorted(orders, reverse=True)
    defaults = cls.defaults()
    found = [_attempt(name, {"order": o}, [o]) for o in orders]
    for opt_name, opt in cls.options().items():
        if opt_name == "order":
            continue
        for v in choice_values(opt) or ():
            if not _same(v, defaults[opt_name]):
                found.append(_attempt(name, {opt_name: v}, top_down))
    for extra in getattr(cls, "conformance", ()):
        extra = dict(extra)
        found.append(_attempt(name, extra, [extra["order"]] if "order" in extra else top_down))
    out, seen = [], []
    for c in found:  # one configuration per distinct solver (a fallback may land on an earlier one)
        key = c.id if c.skip else _try_build(c)
        if key not in seen:
            seen.append(key)
            out.append(c)
    return tuple(out)


def _try_build(c: Config):
    try:
        return c.build()
    except (TypeError, ValueError) as e:
        return f"{c.id}: {e}"


def configurations(name: str | None = None) -> list[Config]:
    """The configurations of solver ``name``, or of every registered solver."""
    names = cp.solvers.available() if name is None else [name]
    return [c for n in names for c in _configurations(n, cp.solvers.get(n))]


def _param(c: Config, *rest, id_suffix: str = ""):
    marks = (
        [pytest.mark.skip(reason=f"{c.id}: refused by the solver's own rules: {c.skip}")] if c.skip else []
    )
    return pytest.param(c, *rest, id=c.id + id_suffix, marks=marks)


def configuration_cases() -> list:
    return [_param(c) for c in configurations()]


def _runnable() -> list[Config]:
    return [c for c in configurations() if not c.skip]


def order_cases() -> list:
    """(configuration, dimension) for every configuration with a nominal order."""
    out = []
    for c in _runnable():
        oc = _try_build(c)
        if isinstance(oc, Solver) and oc.order_check().nominal is not None:
            out += [_param(c, dim, id_suffix=f"-{dim}") for dim in DIMS[oc.order_check().kind]]
    return out


def stochastic_cases() -> list:
    return [_param(c) for c in _runnable() if getattr(_try_build(c), "stochastic", False)]


def bad_option_cases() -> list:
    """(solver, option, value) for every value each option declares invalid, and an unknown option."""
    out = []
    for name in cp.solvers.available():
        for opt_name, opt in cp.solvers.get(name).options().items():
            out += [pytest.param(name, opt_name, v, id=f"{name}-{opt_name}={v!r}") for v in opt.invalid]
        out.append(pytest.param(name, UNKNOWN, 1, id=f"{name}-{UNKNOWN}"))
    return out


# --- models and references -------------------------------------------------------------------------------
def _models(gm) -> dict[str, Any]:
    """The same exact mixture model in every prediction type."""
    eps = gm.model(VP, "eps")
    out = {p: gm.model(VP, p) for p in ("eps", "x0", "score")}
    for p in ("v", "velocity"):
        out[p] = lambda x, t, p=p: convert(eps(x, t), x, "eps", p, VP, t)
    assert set(out) == set(PREDICTIONS)
    return out


@functools.cache
def ode_problem(dim: str):
    """(eps model, x_T, DOP853 reference at T_END) on the mixture ``dim`` (cached per worker)."""
    gm = cp.targets.random_mixture(*MIXTURES[dim])
    x = torch.randn(
        ODE_BATCH, MIXTURES[dim][0], dtype=torch.float64, generator=torch.Generator().manual_seed(1)
    )
    model = gm.model(VP, "eps")
    return model, x, reference(model, VP, x, T_START, T_END)


@functools.cache
def strong_problem(dim: str, n_fine: int):
    """(eps model, x_T, Brownian path on a logSNR grid of n_fine steps) for data N(MU, C0 I)."""
    d, batch = STRONG[dim]
    tgt = cp.targets.Gaussian(torch.full((d,), MU, dtype=torch.float64), C0)
    x_T = tgt.sample_t(batch, T_START, VP, generator=torch.Generator().manual_seed(0))
    path = BrownianPath(range(batch), cp.grids.logsnr(VP, T_START, T_END, n_fine))
    return tgt.model(VP, "eps"), x_T, path


_PATHS: dict = {}


def _path_reference(dim: str, n_fine: int, eps_fn) -> Tensor:
    """:func:`helpers.gaussian_path_solution`, cached by the values of eps(t) on the path (sde_diffusion makes new lambdas)."""
    _, x_T, path = strong_problem(dim, n_fine)
    t = path.times
    key = (dim, n_fine, hashlib.sha1(eps_fn((t[:-1] + t[1:]) / 2).numpy().tobytes()).hexdigest())
    if key not in _PATHS:
        _PATHS[key] = gaussian_path_solution(VP, path, x_T, eps_fn, MU, C0)
    return _PATHS[key]


def _fine_steps(steps: tuple[int, ...]) -> int:
    n = math.lcm(*steps)
    assert n <= 50_000, f"strong-order window {steps}: the path would need {n} fine steps"
    return n * math.ceil(N_FINE_MIN / n)


# --- checks (each test calls one; test_a_new_solver_is_covered calls them on a throwaway solver) ----------
def check_configuration(c: Config) -> None:
    s = c.build()
    assert isinstance(s, Solver) and s.name == c.name
    oc = s.order_check()
    assert isinstance(oc, OrderCheck)
    if oc.nominal is None:
        assert oc.reason.strip(), f"{c.id}: an order that is not checked needs a reason"
    else:
        assert oc.nominal > 0 and oc.tolerance > 0 and len(oc.steps) >= 3, oc
        assert (oc.kind == "strong") == s.stochastic, (
            f"{c.id}: {oc.kind!r} order check, stochastic={s.stochastic}"
        )
    t = torch.linspace(T_END, T_START, 17, dtype=torch.float64)
    eps = s.sde_diffusion(VP)
    if s.stochastic:
        assert eps is not None, f"{c.id}: a stochastic solver names the SDE it converges to"
        assert not s.invertible, f"{c.id}: a stochastic solver cannot be inverted"
    if eps is not None:
        e = eps(t)
        assert bool(torch.isfinite(e).all() and (e >= 0).all()), (c.id, e)
        assert bool((e > 0).any()) == s.stochastic, f"{c.id}: eps(t) = 0 is the probability-flow ODE"


def check_predictions(c: Config) -> float:
    """Every prediction type of the same exact model gives the same sample (to PRED_TOL); returns the
    largest difference from the eps run."""
    s = c.build()
    gm = cp.targets.random_mixture(*MIXTURES["2d"])
    x = torch.randn(PRED_BATCH, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    models = _models(gm)
    kw = {"noise": PerSampleNoise(range(PRED_BATCH))} if s.stochastic else {}
    out = {
        p: cp.sample(
            m, x, schedule=VP, prediction=p, solver=s, steps=PRED_STEPS, t_start=T_START, t_end=T_END, **kw
        )
        for p, m in models.items()
    }
    worst = 0.0
    for p, y in out.items():
        assert bool(torch.isfinite(y).all()), (c.id, p)
        diff = float((y - out["eps"]).abs().max())
        assert diff <= PRED_TOL, f"{c.id}: prediction {p!r} differs from 'eps' by {diff:.2e}"
        worst = max(worst, diff)
    return worst


def order_errors(
    c: Config, dim: str, window: tuple[int, ...] | None = None
) -> tuple[tuple[int, ...], list[float]]:
    """(steps, RMS errors) over the configuration's declared window (or ``window``): against the PF-ODE
    reference ("ode") or the exact path solution of its SDE ("strong")."""
    s = c.build()
    oc = s.order_check()
    steps = oc.steps if window is None else window
    errs = []
    if oc.kind == "ode":
        model, x, ref = ode_problem(dim)
        kw = {}
    else:
        n_fine = _fine_steps(oc.steps)
        model, x, path = strong_problem(dim, n_fine)
        ref = _path_reference(dim, n_fine, s.sde_diffusion(VP))
        kw = {"noise": path}
    for n in steps:
        out = cp.sample(
            model,
            x,
            schedule=VP,
            solver=s,
            steps=n,
            t_start=T_START,
            t_end=T_END,
            lower_order_final=False,
            **kw,
        )
        errs.append(float((out - ref).square().mean().sqrt()))
    return steps, errs


def check_order(c: Config, dim: str, record=None) -> float:
    """The fitted order lies within the declared tolerance of the nominal one (``record(key, order)`` first,
    if given); returns it."""
    oc = c.build().order_check()
    steps, errs = order_errors(c, dim)
    p = fitted_order(steps, errs)
    if record is not None:
        record(f"{c.id} {dim} ({oc.kind}, nominal {oc.nominal:g})", p)
    assert abs(p - oc.nominal) <= oc.tolerance, (
        f"{c.id} {dim}: fitted {oc.kind} order {p:.2f}, nominal {oc.nominal} +- {oc.tolerance} over {steps} "
        f"(errors {', '.join(f'{e:.2e}' for e in errs)})"
    )
    return p


def check_bad_option(name: str, opt_name: str, value: Any) -> None:
    """Building with the value, directly or through companion.sample, raises an error naming the option."""
    named = rf"\b{re.escape(opt_name)}\b"
    with pytest.raises((TypeError, ValueError), match=named):
        cp.solvers.build(name, **{opt_name: value})
    with pytest.raises((TypeError, ValueError), match=named):
        cp.sample(
            lambda x, t: x,
            torch.zeros(2, 2),
            schedule=VP,
            solver=name,
            steps=3,
            t_end=T_END,
            **{opt_name: value},
        )


def check_finite(c: Config) -> list[str]:
    """Finite output of the right shape at every step count in FINITE_STEPS, with and without
    lower_order_final. Default configurations run at every count; others may refuse a step count with a
    ValueError that names ``steps`` (returned)."""
    s = c.build()
    gm = cp.targets.random_mixture(*MIXTURES["2d"])
    x = torch.randn(PRED_BATCH, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    kw = {"noise": PerSampleNoise(range(PRED_BATCH))} if s.stochastic else {}
    refused = []
    for n in FINITE_STEPS:
        for lof in (True, False):
            try:
                y = cp.sample(
                    gm.model(VP, "eps"), x, schedule=VP, solver=s, steps=n, t_start=T_START, t_end=T_END,
                    lower_order_final=lof, **kw,
                )  # fmt: skip
            except ValueError as e:
                if c.is_default or "steps" not in str(e):
                    raise
                refused.append(f"steps={n}: {e}")
                continue
            assert y.shape == x.shape and bool(torch.isfinite(y).all()), (c.id, n, lof)
    return refused


def check_stochastic(c: Config) -> None:
    """Same seeds -> bit-identical output, other seeds -> another output, and sample i of a batch equals
    the same seed run alone (bit for bit)."""
    s = c.build()
    model = cp.targets.random_mixture(*MIXTURES["2d"]).model(VP, "eps")

    def run(seeds):
        noise = PerSampleNoise(seeds)
        x_T = noise.randn(2, dtype=torch.float64)
        return cp.sample(
            model, x_T, schedule=VP, solver=s, steps=12, t_start=T_START, t_end=T_END, noise=noise
        )

    out = run(SEEDS)
    assert torch.equal(out, run(list(SEEDS))), c.id
    assert not torch.equal(out, run([s_ + 1000 for s_ in SEEDS])), c.id
    for i, seed in enumerate(SEEDS):
        assert torch.equal(out[i], run([seed])[0]), (c.id, i)


# --- tests -----------------------------------------------------------------------------------------------
@pytest.fixture
def record(report):
    """``record(key, value)``: a fitted order for the end-of-run summary (tests/conftest.py)."""
    return lambda key, value: report(SECTION, key, value)


pytestmark = pytest.mark.usefixtures("one_thread")


def test_registry_is_not_empty_and_every_solver_has_configurations():
    names = cp.solvers.available()
    assert names
    for name in names:
        cls = cp.solvers.get(name)
        assert cls.name == name and cls.doc, name
        assert cls.orders(), name
        assert [c.kwargs["order"] for c in configurations(name) if c.is_default] == list(cls.orders()), name


def test_options_declare_invalid_values_and_do_not_shadow_sample_arguments():
    own = set(inspect.signature(cp.sample).parameters)
    for name in cp.solvers.available():
        for opt_name, opt in cp.solvers.get(name).options().items():
            assert opt.invalid, f"{name}.{opt_name} declares no invalid values to test"
            assert opt_name not in own, f"{name}.{opt_name} is also an argument of companion.sample"


@pytest.mark.parametrize("c", configuration_cases())
def test_configuration(c):
    check_configuration(c)


@pytest.mark.parametrize("c", [_param(c) for c in configurations()])
def test_prediction_types_agree(c):
    check_predictions(c)


@pytest.mark.parametrize("c,dim", order_cases())
def test_order(c, dim, record):
    check_order(c, dim, record)


def window_cases() -> list:
    """Configurations whose order check declares a step window other than the default one."""
    out = []
    for c in _runnable():
        oc = c.build().order_check()
        if oc.nominal is not None and oc.steps != OrderCheck.DEFAULT_STEPS[oc.kind]:
            out.append(_param(c))
    return out


@pytest.mark.parametrize("c", window_cases())
def test_a_declared_window_is_needed(c, record):
    """The control of a declared window: over the default window the same fit misses the nominal order by
    more than the tolerance on at least one mixture, so the declaration is not a way around a real miss
    (when it stops missing, drop the declaration)."""
    oc = c.build().order_check()
    default = OrderCheck.DEFAULT_STEPS[oc.kind]
    fits = {}
    for dim in DIMS[oc.kind]:
        fits[dim] = fitted_order(*order_errors(c, dim, default))
        record(f"{c.id} {dim} over the default window (declared {oc.steps})", fits[dim])
    assert max(abs(p - oc.nominal) for p in fits.values()) > oc.tolerance, (c.id, fits, oc.reason)


@pytest.mark.parametrize("name,opt_name,value", bad_option_cases())
def test_bad_option_is_refused_by_name(name, opt_name, value):
    check_bad_option(name, opt_name, value)


@pytest.mark.parametrize("c", [_param(c) for c in configurations()])
def test_finite_output_at_few_to_many_steps(c):
    check_finite(c)


@pytest.mark.parametrize("c", stochastic_cases())
def test_stochastic_is_seeded_and_batch_invariant(c):
    check_stochastic(c)


DUMMY = "conformance-dummy"


def test_a_new_solver_is_covered():
    """A solver registered with no other edit gets configurations, order/bad-option/finite cases, and
    passes the checks; the generators read the registry when they are called."""

    class Dummy(Solver):
        order: int = choice(1, (1,), "first order only")

        def __call__(self, prob):
            return cp.solvers.DDIM()(prob)

    assert DUMMY not in cp.solvers.available()
    cp.solvers.register(DUMMY, "a throwaway DDIM for the conformance tests")(Dummy)
    try:
        assert DUMMY in cp.solvers.available()
        mine = [c for c in configurations() if c.name == DUMMY]
        assert [c.options for c in mine] == [(("order", 1),)]
        (c,) = mine

        def ids(cases):
            return [p.id for p in cases if p.values[0] == c or p.values[0] == DUMMY]

        assert ids(configuration_cases()) == [c.id]
        assert ids(order_cases()) == [f"{c.id}-2d", f"{c.id}-16d"]
        assert ids(bad_option_cases()) == [
            f"{DUMMY}-order='bogus'",
            f"{DUMMY}-order=99",
            f"{DUMMY}-{UNKNOWN}",
        ]
        assert ids(stochastic_cases()) == []
        check_configuration(c)
        check_predictions(c)
        check_finite(c)
        for dim in DIMS["ode"]:
            check_order(c, dim)
        for p in bad_option_cases():
            if p.values[0] == DUMMY:
                check_bad_option(*p.values)
    finally:
        cp.solvers.registry._unregister(DUMMY)
    assert DUMMY not in cp.solvers.available()


def test_refused_combinations_fall_back_or_are_skipped_with_the_reason():
    """A value the solver's own rules refuse at the highest order is taken at a lower order (noted in the
    id); one refused at every order becomes a skipped case whose reason is the refusal, never dropped."""

    class Rules(Solver):
        order: int = choice(2, (1, 2), "order")
        mode: str = choice("a", ("a", "b", "c"), "b needs order 1; c is refused")

        def validate(self) -> None:
            if self.mode == "b" and self.order != 1:
                self.fail(f"mode 'b' needs order=1; got order={self.order}")
            if self.mode == "c":
                self.fail("mode 'c' is refused at every order")

        def __call__(self, prob):
            return cp.solvers.DDIM()(prob)

    name = DUMMY + "-rules"
    cp.solvers.register(name, "a throwaway solver with cross-option rules")(Rules)
    try:
        got = [(c.options, c.note, c.skip) for c in configurations(name)]
        assert got[:3] == [
            ((("order", 1),), "", ""),
            ((("order", 2),), "", ""),
            ((("order", 1), ("mode", "b")), "order=2 refused", ""),
        ]
        (opts, note, skip) = got[3]
        assert len(got) == 4 and opts == (("order", 2), ("mode", "c")) and note == ""
        assert "order=2: solver" in skip and "order=1: solver" in skip and "mode 'c' is refused" in skip
        cases = {p.id: p for p in configuration_cases() if p.values[0].name == name}
        assert list(cases) == [f"{name}(order=1)", f"{name}(order=2)", f"{name}(order=1,mode=b)[order=2 refused]",
                               f"{name}(order=2,mode=c)[refused]"]  # fmt: skip
        (mark,) = cases[f"{name}(order=2,mode=c)[refused]"].marks
        assert mark.name == "skip" and "mode 'c' is refused" in mark.kwargs["reason"]
        assert not [p for p in order_cases() if p.values[0].skip]
    finally:
        cp.solvers.registry._unregister(name)
