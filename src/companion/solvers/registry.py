"""The solver registry: a solver is a frozen dataclass whose fields are its options.

Each field is declared once, with :func:`choice`, :func:`number`, :func:`integer`, :func:`flag` or
:func:`option`, and carries what it allows; building the solver (``DDIM(eta=0.5)``, ``build("ddim", ...)``
or ``companion.sample(..., solver="ddim", ...)``) checks every field and the solver's own cross-option
rules (:meth:`Solver.validate`), and raises ``TypeError`` (wrong type, unknown option) or ``ValueError``
(value not allowed) naming the solver, the option, the value and what is allowed. There is no fallback: a
value that is not allowed never runs.

``@register("name")`` adds a class to the registry; every solver, deterministic or stochastic, registers
the same way, and the conformance tests (``tests/solvers/test_conformance.py``) run over
:func:`available`, so a new solver is checked as soon as it registers. What those tests need from a
solver it declares here too: :meth:`Solver.order_check` (its nominal convergence order, with the
tolerance and step window and, where they differ from the defaults, why), :attr:`Solver.stochastic`,
:meth:`Solver.sde_diffusion` (the SDE a stochastic solver converges to) and :attr:`Solver.invertible`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import Tensor

from .problem import Problem

__all__ = [
    "Option",
    "OrderCheck",
    "Solver",
    "choice",
    "number",
    "integer",
    "flag",
    "option",
    "register",
    "available",
    "get",
    "build",
]


@dataclass(frozen=True)
class Option:
    """What one option allows. ``check(value)`` returns the value or raises; ``invalid`` lists values it must
    reject (the conformance tests try each one); ``values`` enumerates the allowed values of a choice or a
    flag (None for a range or a callable)."""

    allowed: str
    check_type: Callable[[Any], bool]
    check_value: Callable[[Any], bool]
    invalid: tuple[Any, ...]
    doc: str = ""
    values: tuple[Any, ...] | None = None

    def check(self, solver: str, name: str, value: Any) -> Any:
        if not self.check_type(value):
            raise TypeError(
                f"solver {solver!r}: option {name}={value!r} has type {type(value).__name__}; allowed: {self.allowed}"
            )
        if not self.check_value(value):
            raise ValueError(
                f"solver {solver!r}: option {name}={value!r} is not allowed; allowed: {self.allowed}"
            )
        return value


def _is_real(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _field(default: Any, opt: Option):
    return field(default=default, metadata={"option": opt})


def choice(default: Any, values: Sequence[Any], doc: str = ""):
    """One of ``values`` (compared by type and value: ``True`` is not ``1``, ``2.0`` is not ``2``)."""
    values = tuple(values)
    types = {type(v) for v in values}
    bad = tuple(v for v in ("bogus", 99, 2.5, True) if v not in values or type(v) not in types)
    opt = Option(
        f"one of {list(values)}",
        lambda v: type(v) in types,
        lambda v: any(type(v) is type(w) and v == w for w in values),
        bad[:2],
        doc,
        values,
    )
    return _field(default, opt)


def number(
    default: float | None,
    lo: float | None = None,
    hi: float | None = None,
    *,
    lo_open: bool = False,
    optional: bool = False,
    doc: str = "",
):
    """A finite real number in [lo, hi] (``lo_open``: lo excluded); ``optional``: None also allowed."""
    span = f"{'(' if lo_open else '['}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}]"
    allowed = f"a finite number in {span}" + (" or None" if optional else "")

    def ok(v: Any) -> bool:
        if v is None:
            return True
        if not math.isfinite(v):
            return False
        if lo is not None and (v < lo or (lo_open and v == lo)):
            return False
        return hi is None or v <= hi

    invalid = (
        ["1.0", float("nan")]
        + ([lo - 1.0] if lo is not None else [])
        + ([hi + 1.0] if hi is not None else [])
    )
    if lo_open and lo is not None:
        invalid.append(lo)
    opt = Option(allowed, lambda v: _is_real(v) or (optional and v is None), ok, tuple(invalid), doc)
    return _field(default, opt)


def integer(default: int, lo: int, doc: str = ""):
    """An int >= ``lo`` (not a bool, not a float)."""
    opt = Option(
        f"an int >= {lo}",
        lambda v: isinstance(v, int) and not isinstance(v, bool),
        lambda v: v >= lo,
        (1.5, lo - 1),
        doc,
    )
    return _field(default, opt)


def flag(default: bool, doc: str = ""):
    """True or False (not 0/1, not a string)."""
    opt = Option(
        "True or False", lambda v: isinstance(v, bool), lambda v: True, ("yes", 1), doc, (True, False)
    )
    return _field(default, opt)


def option(default: Any, opt: Option):
    """An option with a hand-written :class:`Option` (e.g. a number or a callable)."""
    return _field(default, opt)


@dataclass(frozen=True)
class OrderCheck:
    """The convergence a solver declares, which the conformance tests fit on log-log slopes in float64.

    ``kind`` is ``"ode"`` (error against a float64 reference of the probability-flow ODE over ``steps``
    steps) or ``"strong"`` (pathwise error against the exact solution of :meth:`Solver.sde_diffusion`'s SDE
    driven by the same Brownian path). ``nominal=None`` declares that the order is not checked, and
    ``reason`` says why; a ``tolerance`` above 0.3 or a ``steps`` window other than the default needs a
    ``reason`` too (e.g. a pre-asymptotic window).
    """

    nominal: float | None
    kind: str = "ode"
    tolerance: float = 0.3
    steps: tuple[int, ...] = (20, 40, 80, 160, 320)
    reason: str = ""

    DEFAULT_STEPS: ClassVar[dict[str, tuple[int, ...]]] = {
        "ode": (20, 40, 80, 160, 320),
        "strong": (40, 80, 160, 320),
    }

    def __post_init__(self):
        if self.kind not in ("ode", "strong"):
            raise ValueError(f"kind must be 'ode' or 'strong'; got {self.kind!r}")
        if self.kind == "strong" and self.steps == self.DEFAULT_STEPS["ode"]:
            object.__setattr__(self, "steps", self.DEFAULT_STEPS["strong"])
        unusual = self.tolerance > 0.3 or self.steps != self.DEFAULT_STEPS[self.kind]
        if (self.nominal is None or unusual) and not self.reason:
            raise ValueError(
                "an order check without a nominal order, or with a wider tolerance or another window, needs a reason"
            )


class Solver:
    """Base of every registered solver (subclasses are frozen dataclasses).

    ``__call__(problem) -> x`` runs the solver on a :class:`~companion.solvers.problem.Problem`;
    ``companion.sample`` builds the problem. Subclasses declare their options as dataclass fields (every
    solver has ``order``) and may add cross-option rules in :meth:`validate`.
    """

    name: ClassVar[str] = ""
    doc: ClassVar[str] = ""
    order: int

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            opt = f.metadata.get("option")
            if opt is None:
                raise TypeError(
                    f"{type(self).__name__}.{f.name}: every field of a solver must be a declared option"
                )
            opt.check(self.name or type(self).__name__, f.name, getattr(self, f.name))
        self.validate()

    def validate(self) -> None:
        """Cross-option rules; raise ``ValueError`` naming the options."""

    def fail(self, message: str) -> None:
        raise ValueError(f"solver {self.name!r}: {message}")

    @classmethod
    def options(cls) -> dict[str, Option]:
        """The declared options, by name."""
        return {f.name: f.metadata["option"] for f in dataclasses.fields(cls)}

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        return {f.name: f.default for f in dataclasses.fields(cls)}

    @classmethod
    def orders(cls) -> tuple[int, ...]:
        return tuple(cls.options()["order"].values)

    @property
    def stochastic(self) -> bool:
        """Whether the solver draws noise (then it takes ``noise=`` or ``generator=``)."""
        return False

    @property
    def invertible(self) -> bool:
        """Whether ``companion.invert`` may run it up the noise levels (deterministic fixed-grid solvers)."""
        return not self.stochastic

    def sde_diffusion(self, schedule) -> Callable[[Tensor], Tensor] | None:
        """eps(t) of the reverse-time SDE dx = [f x - (g^2/2 + eps) score] dt + sqrt(2 eps) dW_bar that the
        solver converges to (None: the probability-flow ODE, eps = 0)."""
        return None

    def order_check(self) -> OrderCheck:
        """The convergence order this configuration must show (see :class:`OrderCheck`)."""
        return OrderCheck(float(self.order))

    def __call__(self, prob: Problem) -> Tensor:  # pragma: no cover - every subclass defines it
        raise NotImplementedError


_REGISTRY: dict[str, type[Solver]] = {}


def register(name: str, doc: str):
    """Class decorator: make a frozen dataclass of it and register it as ``name``."""

    def deco(cls: type) -> type[Solver]:
        if not issubclass(cls, Solver):
            raise TypeError(f"{cls.__name__} must subclass companion.solvers.Solver")
        if name in _REGISTRY:
            raise ValueError(f"solver {name!r} is already registered ({_REGISTRY[name].__name__})")
        cls.name, cls.doc = name, doc
        out = dataclass(frozen=True)(cls)
        if "order" not in out.options() or out.options()["order"].values is None:
            raise TypeError(f"{cls.__name__} must declare the option 'order' as a choice of orders")
        _REGISTRY[name] = out
        return out

    return deco


def available() -> list[str]:
    """The registered solver names."""
    return sorted(_REGISTRY)


def get(name: str) -> type[Solver]:
    """The solver class registered as ``name``."""
    if not isinstance(name, str):
        raise TypeError(
            f"solver must be a registered name (str) or a built solver; got {type(name).__name__}"
        )
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown solver {name!r}; available: {available()}") from None


def build(name: str, **options: Any) -> Solver:
    """The solver ``name`` with ``options`` (each checked; unknown names raise ``TypeError``)."""
    cls = get(name)
    allowed = cls.options()
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise TypeError(f"unknown option(s) {unknown} for solver {name!r}; allowed: {sorted(allowed)}")
    return cls(**options)


def _unregister(name: str) -> None:
    """Remove a solver (tests that register a throwaway solver clean up with it)."""
    _REGISTRY.pop(name, None)
