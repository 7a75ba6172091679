"""Solvers and their registry.

``available()`` lists the names ``companion.sample(..., solver=name)`` accepts. An entry declares the
orders, methods and variants it supports; ``build`` turns the user's options into a frozen solver object
(``order`` is an attribute). New families (SDE solvers, MRS) register themselves the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from . import sde  # forward-SDE simulation; the reverse-SDE samplers are registry entries (stochastic.py)
from .exponential import DDIM, DEIS, DPMSolver, UniPC
from .pndm import PNDM
from .problem import Problem
from .rk import RK

__all__ = ["Entry", "register", "available", "get", "Problem", "DDIM", "DPMSolver", "DEIS", "UniPC", "sde"]


@dataclass(frozen=True)
class Entry:
    name: str
    build: Callable[..., Callable[[Problem], object]]
    orders: tuple[int, ...] = (1, 2, 3)
    methods: tuple[str, ...] = ("multistep",)
    variants: tuple[str | None, ...] = (None,)
    stochastic: bool = False
    doc: str = ""
    options: tuple[str, ...] = field(default_factory=tuple)
    #: the order ``sample`` uses when none is given (2 where supported)
    default_order: int | None = None

    def __post_init__(self):
        if self.default_order is None:
            object.__setattr__(self, "default_order", 2 if 2 in self.orders else self.orders[0])


_REGISTRY: dict[str, Entry] = {}


def register(entry: Entry) -> Entry:
    _REGISTRY[entry.name] = entry
    return entry


def available() -> list[str]:
    """The registered solver names."""
    return sorted(_REGISTRY)


def get(name: str) -> Entry:
    if not isinstance(name, str):
        raise TypeError(f"solver must be a str; got {type(name).__name__}")
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown solver {name!r}; available: {available()}") from None


_DPM_METHODS = ("multistep", "singlestep", "singlestep_fixed", "adaptive")
_DPM_VARIANTS = (None, "midpoint", "heun", "taylor", "dpmsolver", "legacy")


def _dpm_variant(v: str | None) -> str:
    return {None: "midpoint", "dpmsolver": "midpoint", "taylor": "heun"}.get(v, v)


def _dpm(pred: str):
    def build(order, method, variant, corrector=None, atol=0.0078, rtol=0.05, **_):
        return DPMSolver(pred, order, method, _dpm_variant(variant), corrector, atol, rtol)

    return build


register(
    Entry(
        "ddim",
        lambda order, method, variant, eta=0.0, **_: DDIM(float(eta)),
        orders=(1,),
        doc="DDIM (eta >= 0); eta = 0 is DPM-Solver++(1)",
        options=("eta",),
    )
)
for _name, _pred, _what in (("dpmsolver", "eps", "noise"), ("dpmsolver++", "x0", "data")):
    register(
        Entry(
            _name,
            _dpm(_pred),
            methods=_DPM_METHODS,
            variants=_DPM_VARIANTS,
            doc=f"{_name}: {_what} prediction; multistep, singlestep(_fixed), adaptive",
            options=("corrector", "atol", "rtol"),
        )
    )
register(
    Entry(
        "deis",
        lambda order, method, variant, corrector=None, **_: DEIS(order, variant or "tab", corrector),
        variants=(None, "tab", "logrho"),
        doc="DEIS tAB / log-rho AB",
        options=("corrector",),
    )
)
register(
    Entry(
        "unipc",
        lambda order, method, variant, pred="x0", corrector=True, **_: UniPC(
            order, variant or "bh2", pred, corrector
        ),
        variants=(None, "bh1", "bh2"),
        doc="UniPC (UniP + UniC)",
        options=("pred", "corrector"),
    )
)

for _name, _heun in (("euler", False), ("heun", True)):
    register(
        Entry(
            _name,
            lambda order, method, variant, _heun=_heun, **_: RK(_heun, variant or "t"),
            orders=(2,) if _heun else (1,),
            variants=(None, "t", "rho"),
            doc=f"{_name.capitalize()} ({1 + _heun} NFE per step) on the PF-ODE in t (variant 't') or on "
            "x/alpha in sigma/alpha ('rho'; Euler there is DDIM)",
        )
    )
register(
    Entry(
        "pndm",
        lambda order, method, variant, **_: PNDM(order, variant or "plms"),
        orders=(1, 2, 3, 4),
        default_order=4,
        variants=(None, "plms", "pndm"),
        doc="PNDM: PLMS (NFE = steps + 1) or, variant 'pndm', pseudo-RK start then PLMS (NFE = steps + 9)",
    )
)

# --- stochastic solvers (registered by the SDE work; see stochastic.py and companion.noise) ---
from . import stochastic  # noqa: E402, F401
