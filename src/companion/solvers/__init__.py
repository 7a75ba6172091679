"""Solvers and their registry.

``available()`` lists the names ``companion.sample(..., solver=name)`` accepts; ``build(name, **options)``
returns the solver object (a frozen dataclass whose fields are its options, each checked when it is
built), which ``companion.sample(..., solver=<object>)`` also accepts. One module per family:

* exponential integrators of the probability-flow ODE: :mod:`.ddim`, :mod:`.dpm_solver` (with its
  :mod:`.singlestep` and :mod:`.adaptive` methods), :mod:`.deis`, :mod:`.unipc` (and :mod:`.dc_solver` on
  top of it), :mod:`.usf` (per-step plans, S^3); their shared multistep
  engine :mod:`.multistep` and maths :mod:`.base`;
* Runge-Kutta and pseudo-numerical baselines: :mod:`.rk` (Euler, Heun), :mod:`.pndm`;
* reverse-time SDEs (:mod:`.reverse_sde`): :mod:`.euler_maruyama`, :mod:`.ancestral`,
  :mod:`.sde_dpm_solver`, :mod:`.predictor_corrector`, :mod:`.interpolant`;
* mean-reverting diffusion: :mod:`.mrs` (the MR Sampler, ODE and SDE);
* momentum on Adams-Bashforth: :mod:`.momentum` (heavy ball, GHVB); the time-shift option of DDIM,
  ancestral and the momentum solvers: :mod:`.time_shift`.

Each family module registers its solvers with ``@register`` next to their definition (:mod:`.registry`).
"""

from __future__ import annotations

from . import (
    adaptive,
    ancestral,
    base,
    dc_solver,
    ddim,
    deis,
    dpm_solver,
    dpm_solver_v3,
    euler_maruyama,
    interpolant,
    momentum,
    mrs,
    multistep,
    pndm,
    predictor_corrector,
    reverse_sde,
    rk,
    sde_dpm_solver,
    singlestep,
    time_shift,
    unipc,
    usf,
)
from .ancestral import Ancestral
from .base import phi
from .dc_solver import DCSolver
from .ddim import DDIM
from .deis import DEIS
from .dpm_solver import DPMSolver, DPMSolverPP
from .dpm_solver_v3 import DPMSolverV3, ModelStatistics
from .euler_maruyama import EulerMaruyama, forward_euler_maruyama
from .interpolant import Interpolant
from .momentum import GHVB, PLMSHeavyBall
from .mrs import MRS, MRSSDE
from .pndm import PNDM
from .predictor_corrector import PredictorCorrector
from .problem import Problem
from .registry import Option, OrderCheck, Solver, available, build, get, register
from .rk import Euler, Heun
from .sde_dpm_solver import SDEDPMSolverPP
from .time_shift import TimeShift
from .unipc import UniPC
from .usf import USF

__all__ = [
    "Ancestral",
    "DCSolver",
    "DDIM",
    "DEIS",
    "DPMSolver",
    "DPMSolverPP",
    "DPMSolverV3",
    "Euler",
    "GHVB",
    "EulerMaruyama",
    "Heun",
    "Interpolant",
    "MRS",
    "MRSSDE",
    "ModelStatistics",
    "Option",
    "OrderCheck",
    "PLMSHeavyBall",
    "PNDM",
    "PredictorCorrector",
    "Problem",
    "SDEDPMSolverPP",
    "Solver",
    "TimeShift",
    "UniPC",
    "USF",
    "adaptive",
    "ancestral",
    "available",
    "base",
    "build",
    "dc_solver",
    "ddim",
    "deis",
    "dpm_solver",
    "dpm_solver_v3",
    "euler_maruyama",
    "forward_euler_maruyama",
    "get",
    "interpolant",
    "momentum",
    "mrs",
    "multistep",
    "phi",
    "pndm",
    "predictor_corrector",
    "register",
    "reverse_sde",
    "rk",
    "sde_dpm_solver",
    "singlestep",
    "time_shift",
    "unipc",
    "usf",
]
