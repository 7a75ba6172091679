"""Ancestral sampling: DDPM's posterior steps (both of its variances) and DDIM's eta family."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from .base import Points
from .ddim import ddim_noise_coefs
from .problem import Problem
from .registry import OrderCheck, Solver, choice, number, register
from .reverse_sde import grid_points, run_noisy
from .time_shift import shifted_first_order, time_shift_option

__all__ = ["Ancestral", "ancestral_coefs"]


def ancestral_coefs(pts: Points, eta: float, variance: str = "small") -> tuple[Tensor, Tensor, Tensor]:
    """a, b, std of the ancestral step x_t = a x_s + b x0 + std z from s to the next (cleaner) time t.

    ``"small"``: DDIM's eta family (:func:`multistep.ddim_noise_coefs`); at eta = 1 the posterior
    q(x_t | x_s, x0) at the predicted x0, variance sigma_t^2 (1 - e^{-2h}) (Ho et al. 2020's beta-tilde).
    Holding x0 at its mean drops b^2 Cov[x0 | x_s], b = alpha_t (1 - e^{-2h}), from the step's true
    variance: a first-order deficit (chapter 1, ``prop-ancestral-deficit``).
    ``"large"`` (eta = 1): adds that term back for standard normal data, whose Cov[x0 | x_s] is
    sigma_s^2 / (alpha_s^2 + sigma_s^2) I, so the step is exact in law for x0 ~ N(0, I); on a VP schedule the
    variance is then the forward step's 1 - alpha_s^2/alpha_t^2, Ho et al. 2020's sigma^2 = beta (diffusers'
    ``variance_type="fixed_large"``). The step onto clean data (sigma_t = 0) returns the mean, as theirs.
    """
    if variance not in ("small", "large"):
        raise ValueError(f"variance must be 'small' or 'large'; got {variance!r}")
    if variance == "large" and eta != 1.0:
        raise ValueError(f"variance 'large' (DDPM's sigma^2 = beta) needs eta = 1; got eta={eta!r}")
    a, b, std = ddim_noise_coefs(pts, eta)
    if variance == "large":
        s, t = pts[:-1], pts[1:]
        cov = s.sigma**2 / (s.alpha**2 + s.sigma**2)
        std = torch.where(t.sigma > 0, torch.sqrt(std**2 + b**2 * cov), torch.zeros_like(std))
    return a, b, std


@register(
    "ancestral",
    "ancestral / DDPM posterior sampling (eta = 1), DDIM's eta family; variance 'large': "
    "DDPM's sigma^2 = beta, exact for standard normal data",
)
class Ancestral(Solver):
    """Ancestral sampling: DDPM (Ho et al. 2020, eq. 6-7: the posterior q(x_t | x_s, x0) at the predicted x0)
    on any grid, and DDIM's eta family (Song et al. 2021a, eq. 12 and 16) for 0 <= eta <= 1:
    x_t = a x_s + (alpha_t - a alpha_s) x0 + std z, std = eta sigma_t sqrt(1 - e^{-2h}),
    a = sqrt(sigma_t^2 - std^2)/sigma_s. eta = 1 is DDPM and SDE-DPM-Solver++(1). ``variance="large"``
    (``cp.sample(..., variance="large")``) is DDPM's other variance, exact for standard normal data
    (:func:`ancestral_coefs`, which also checks it). 1 NFE per step;
    strong order 1 for eta = 1 (to the reverse SDE), weak order 1."""

    #: extra configurations the conformance tests run (tests/solvers/test_conformance.py): the deterministic
    #: end of the eta family (DDIM) and a partial eta
    conformance: ClassVar[tuple[dict, ...]] = ({"eta": 0.0}, {"eta": 0.5})

    order: int = choice(1, (1,), "first order only")
    eta: float = number(1.0, 0.0, 1.0, doc="the fraction of the posterior standard deviation injected")
    variance: str = choice(
        "small", ("small", "large"), "DDPM's beta-tilde (small) or beta (large, eta = 1 only)"
    )
    time_shift: object = time_shift_option()

    def validate(self) -> None:
        if self.variance == "large" and self.eta != 1.0:
            self.fail(f"variance 'large' (DDPM's sigma^2 = beta) needs eta = 1; got eta={self.eta!r}")

    @property
    def stochastic(self) -> bool:
        return self.eta > 0

    @property
    def invertible(self) -> bool:
        return False

    def sde_diffusion(self, schedule):
        eta2 = self.eta**2
        return lambda t: eta2 * schedule.g2(t) / 2

    def order_check(self) -> OrderCheck:
        return OrderCheck(1.0, kind="strong" if self.eta > 0 else "ode")

    def __call__(self, prob: Problem) -> Tensor:
        if self.time_shift is not None and self.time_shift.active:
            return shifted_first_order(
                prob,
                self.time_shift,
                lambda pts: ancestral_coefs(pts, self.eta, self.variance),
                self.eta > 0,
            )
        pts = grid_points(prob)
        a, b, std = ancestral_coefs(pts, self.eta, self.variance)
        return run_noisy(prob, "x0", pts, [1] * len(a), a, b[:, None], std)
