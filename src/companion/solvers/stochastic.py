"""Stochastic samplers: Euler-Maruyama, ancestral (DDPM / DDIM eta), SDE-DPM-Solver++ 1/2M/3M,
predictor-corrector, and the stochastic-interpolant family.

All of them integrate, from t_start down to t_end, a member of one family of reverse-time SDEs whose
marginals are the forward process's p_t (Song et al. 2021, eq. 6 and 13; Albergo, Boffi & Vanden-Eijnden
2023, arXiv 2303.08797, Sec. 2: the backward SDE with drift b_B = b - eps s, b the probability-flow velocity;
equation number not checked here, the statement is re-derived from the Fokker-Planck equation in the book):

    dx = [f(t) x - (g^2(t)/2 + eps(t)) grad log p_t(x)] dt + sqrt(2 eps(t)) dW_bar,   eps(t) >= 0,

eps = 0 being the probability-flow ODE and eps = g^2/2 the reverse SDE. Brownian coupling: a step from
t_i to t_{i+1} uses the normal z_i = (W(t_i) - W(t_{i+1})) / sqrt(t_i - t_{i+1}) of a :mod:`companion.noise`
source, in the schedule's time t.

Strong orders (the noise is additive: g, eps depend on t only). A scheme whose drift has local error
O(dt^2) and whose noise term is c_i z_i with c_i^2 the exact variance of the step's Ito integral
int phi(u) dW (or phi(t_i) dt^{1/2}) has local error int (phi - c_i/sqrt(dt)) dW of variance
O(phi'^2 dt^3), independent across steps, so the global strong error is O(dt): strong order 1 for
Euler-Maruyama (Kloeden & Platen 1992, Ch. 10: with additive noise it coincides with Milstein's scheme),
ancestral / DDIM(eta), SDE-DPM-Solver++ of every order (the higher orders improve the drift only) and the
interpolant integrator. Higher strong order would need int u dW, which an increment does not carry.
The predictor-corrector sampler is not pathwise convergent (strong order 0): its Langevin corrector
moves the state with noise that is independent of the SDE's Brownian path, by steps that do not shrink
with dt; it is weakly accurate only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from . import Entry, register
from . import multistep as ms
from .base import Points, kernel, lincomb, rows
from .problem import Problem

__all__ = [
    "EulerMaruyama",
    "Ancestral",
    "ancestral_coefs",
    "SDEDPMSolverPP",
    "PredictorCorrector",
    "Interpolant",
    "em_coefs",
    "sde_dpm_coefs",
    "interpolant_coefs",
]


def _grid(prob: Problem) -> Points:
    return prob.points(prob.grid(prob.steps))


def _run(prob: Problem, pred: str, pts: Points, orders: list[int], A, B, std) -> Tensor:
    """The shared multistep loop x_{i+1} = A_i x_i + sum_j B_ij m_{i-j} + std_i z_i (multistep.run)."""
    draw = prob.noise_stream(pts.t, prob.x)
    return ms.run(
        prob.evaluator(pred), prob.x, pts, orders, A, B, noise=std, draw=draw, callback=prob.callback
    )


# --- Euler-Maruyama ------------------------------------------------------------------------------
def em_coefs(schedule, pts: Points, final_noise: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Euler-Maruyama on the reverse SDE in t with the noise prediction (score = -eps/sigma):
    x_{i+1} = (1 - f_i dt) x_i - (g_i^2 dt / sigma_i) eps_i + g_i sqrt(dt) z_i, dt = t_i - t_{i+1}."""
    t0, t1 = pts.t[:-1], pts.t[1:]
    dt = t0 - t1
    g2 = schedule.g2(t0)
    A = 1.0 - schedule.f(t0) * dt
    B = -g2 * dt / pts.sigma[:-1]
    std = torch.sqrt(g2 * dt)
    if not final_noise:
        std[-1] = 0.0
    return A, B[:, None], std


@dataclass(frozen=True)
class EulerMaruyama:
    """Euler-Maruyama on the reverse SDE dx = [f x - g^2 grad log p_t] dt + g dW_bar (Song et al. 2021,
    eq. 6). 1 NFE per step; strong order 1 (additive noise), weak order 1.
    ``final_noise=False`` (default) returns the last step's mean, as Song et al.'s code (``denoise``): the
    last increment g sqrt(dt) is noise the sampler has no step left to remove."""

    final_noise: bool = False
    order: int = 1

    def __call__(self, prob: Problem) -> Tensor:
        pts = _grid(prob)
        A, B, std = em_coefs(prob.schedule, pts, self.final_noise)
        return _run(prob, "eps", pts, [1] * len(A), A, B, std)


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
        raise ValueError(f"variant 'large' (DDPM's sigma^2 = beta) needs eta = 1; got eta={eta!r}")
    a, b, std = ms.ddim_noise_coefs(pts, eta)
    if variance == "large":
        s, t = pts[:-1], pts[1:]
        cov = s.sigma**2 / (s.alpha**2 + s.sigma**2)
        std = torch.where(t.sigma > 0, torch.sqrt(std**2 + b**2 * cov), torch.zeros_like(std))
    return a, b, std


@dataclass(frozen=True)
class Ancestral:
    """Ancestral sampling: DDPM (Ho et al. 2020, eq. 6-7: the posterior q(x_t | x_s, x0) at the predicted x0)
    on any grid, and DDIM's eta family (Song et al. 2021a, eq. 12 and 16) for 0 <= eta <= 1:
    x_t = a x_s + (alpha_t - a alpha_s) x0 + std z, std = eta sigma_t sqrt(1 - e^{-2h}),
    a = sqrt(sigma_t^2 - std^2)/sigma_s. eta = 1 is DDPM and SDE-DPM-Solver++(1). ``variance="large"``
    (``cp.sample(..., variant="large")``) is DDPM's other variance, exact for standard normal data
    (:func:`ancestral_coefs`, which also checks it). 1 NFE per step;
    strong order 1 for eta = 1 (to the reverse SDE), weak order 1."""

    eta: float = 1.0
    order: int = 1
    variance: str = "small"

    def __call__(self, prob: Problem) -> Tensor:
        pts = _grid(prob)
        a, b, std = ancestral_coefs(pts, self.eta, self.variance)
        return _run(prob, "x0", pts, [1] * len(a), a, b[:, None], std)


# --- SDE-DPM-Solver++ ----------------------------------------------------------------------------
def sde_dpm_coefs(pts: Points, orders: list[int], variant: str) -> tuple[Tensor, Tensor, Tensor]:
    """A, B, std of SDE-DPM-Solver++ multistep (Lu et al. 2022b, arXiv 2211.01095, Sec. 5; equation numbers
    not checked here). The reverse SDE's exact solution in data prediction (variation of constants in
    lambda, re-derived),

        x_t = (sigma_t/sigma_s) e^{-h} x_s + alpha_t int_0^h 2 e^{-2(h - u)} x0(lambda_s + u) du
              + sigma_t sqrt(1 - e^{-2h}) z,

    whose kernel is the ODE's (k = -1) at the doubled step 2h with the same relative nodes, so the
    Lagrange weights are ``lagrange_weights(r, 2h, -1)``. Order 1: alpha_t (1 - e^{-2h}) x0_s.
    2M ``midpoint``: alpha_t (1 - e^{-2h}) (D0 + D1/2), D1 = (m_i - m_{i-1})/r (Lu et al. 2022b, Alg. 2's
    analogue, diffusers' sde-dpmsolver++ midpoint); ``heun``: the exact Lagrange weights (diffusers' heun).
    3M: exact Lagrange weights, or ``legacy``: E3(2h) on D2 where the expansion needs 2 E3(2h)
    (k-diffusion's ``sample_dpmpp_3m_sde`` at eta = 1, the same slip as the ODE's legacy 3M)."""
    n, K = len(orders), max(orders)
    A = torch.zeros_like(pts.lam[:n])
    B = torch.zeros((n, K) + tuple(pts.lam.shape[1:]), dtype=torch.float64)
    for i, p in enumerate(orders):
        s, t = pts[i], pts[i + 1]
        h = t.lam - s.lam
        # e^{-h} sigma_t / sigma_s -> 0 when t is clean data (sigma_t = 0, h = inf): the step denoises.
        A[i] = t.sigma / s.sigma * torch.exp(-h)
        if p == 1:
            B[i, 0] = -t.alpha * torch.expm1(-2.0 * h)
            continue
        _, r = ms._nodes(pts, i, p)
        for j, w in enumerate(ms.dpm_weights(r, 2.0 * h, kernel("x0"), variant)):
            B[i, j] = t.alpha * w
    std = pts.sigma[1:] * torch.sqrt(-torch.expm1(-2.0 * (pts.lam[1:] - pts.lam[:-1])))
    return A, B, std


@dataclass(frozen=True)
class SDEDPMSolverPP:
    """SDE-DPM-Solver++ (Lu et al. 2022b, Sec. 5), multistep orders 1, 2M, 3M; 1 NFE per step.

    Strong order 1 at every order (the noise term limits it; see the module docstring); the order-k drift
    has local error O(h^{k+1}) in lambda. Warm-up and ``lower_order_final`` as DPM-Solver++ multistep.
    """

    order: int = 2
    variant: str = "midpoint"

    def __call__(self, prob: Problem) -> Tensor:
        pts = _grid(prob)
        orders = ms.step_orders(pts.t.shape[0] - 1, self.order, pts.lam, prob.lower_order_final)
        A, B, std = sde_dpm_coefs(pts, orders, self.variant)
        return _run(prob, "x0", pts, orders, A, B, std)


# --- the stochastic-interpolant family -----------------------------------------------------------
_GL = [torch.as_tensor(v, dtype=torch.float64) for v in np.polynomial.legendre.leggauss(48)]


def _diffusion_integral(schedule, diffusion, s: Points, t: Points) -> Tensor:
    """G = int_t^s eps(u) / sigma(u)^2 du over the step s -> t (t < s), by 48-point Gauss-Legendre in
    lambda, where the integrand eps / (sigma^2 |d lambda/dt|) is smooth (for VP near t = 0 it tends to
    eps / (beta sigma^2 / (2 sigma^2)) ~ 2 eps / beta_min). Infinite lambda_t (sigma_t = 0): G = inf."""
    finite = torch.isfinite(t.lam)
    lt = torch.where(finite, t.lam, s.lam)
    x, w = _GL
    shape = (-1,) + (1,) * s.lam.dim()
    lam = (s.lam + lt) / 2 + (lt - s.lam) / 2 * x.reshape(shape)
    u = schedule.t_of_lambda(lam)
    eps = diffusion(u) if callable(diffusion) else torch.full_like(u, float(diffusion))
    if not bool(((eps >= 0) & torch.isfinite(eps)).all()):  # once, before the loop
        raise ValueError("diffusion(t) must return finite values >= 0 on the sampling interval")
    rho = eps / (schedule.sigma(u) ** 2 * -schedule.d_lambda(u))
    G = ((lt - s.lam) / 2 * (w.reshape(shape) * rho).sum(0)).clamp_min(0.0)
    return torch.where(finite, G, torch.full_like(G, float("inf")))


def interpolant_coefs(schedule, pts: Points, diffusion) -> tuple[Tensor, Tensor, Tensor]:
    """One step of the eps-family SDE solved exactly with x0 held at x0(x_s, s) (data prediction).

    With G = int_t^s eps / sigma^2 du (>= 0), the linear part is exact, Phi(t, s) = (sigma_t/sigma_s) e^{-G};
    the x0 and noise integrals close (d/dl e^{l - G(l)} and d/dl e^{-2G(l)} are their integrands in
    lambda), giving  x_t = a x_s + (alpha_t - a alpha_s) x0_s + sigma_t sqrt(1 - e^{-2G}) z,
    a = (sigma_t/sigma_s) e^{-G}. eps = 0: DDIM; eps = g^2/2 (G = h): SDE-DPM-Solver++(1) / DDPM."""
    s, t = pts[:-1], pts[1:]
    G = _diffusion_integral(schedule, diffusion, s, t)
    a = t.sigma / s.sigma * torch.exp(-G)
    return a, t.alpha - a * s.alpha, t.sigma * torch.sqrt(-torch.expm1(-2.0 * G))


@dataclass(frozen=True)
class Interpolant:
    """The stochastic-interpolant family (Albergo, Boffi & Vanden-Eijnden 2023, Sec. 2, backward SDE):
    for any diffusion eps(t) >= 0 (a number, or a callable of float64 times), in reverse time

        dx = [b(x, t) - eps(t) grad log p_t(x)] dt + sqrt(2 eps(t)) dW_bar,  b = f x - (g^2/2) grad log p_t

    has the marginals p_t of the probability-flow ODE (eps = 0); eps = g^2/2 is the reverse SDE.
    Solved by :func:`interpolant_coefs` (exponential integrator, data prediction held per step): exact for
    point masses, 1 NFE per step, strong order 1, weak order 1."""

    diffusion: float | Callable[[Tensor], Tensor] = 1.0
    order: int = 1

    def __call__(self, prob: Problem) -> Tensor:
        pts = _grid(prob)
        a, b, std = interpolant_coefs(prob.schedule, pts, self.diffusion)
        return _run(prob, "x0", pts, [1] * len(a), a, b[:, None], std)


# --- predictor-corrector -------------------------------------------------------------------------
@dataclass(frozen=True)
class PredictorCorrector:
    """Predictor-corrector sampling (Song et al. 2021, Alg. 1 and 4-5), VP and VE alike.

    Each step: ``corrector_steps`` Langevin moves at t_i,  x <- x + e s + sqrt(2 e) z  with score s, then the
    predictor step t_i -> t_{i+1}: ``euler-maruyama`` or ``ancestral``. Song et al. take
    e = 2 a_i (snr |z| / |s|)^2 with norms averaged over the batch (a_i = 1 - beta_i for VP, 1 for VE);
    since |z|^2 ~ d and |s|^2 ~ d / sigma_t^2 on noised data we use e = 2 a_i snr^2 sigma_t^2 with
    a_i = (alpha_{t_i}/alpha_{t_{i+1}})^2: batch-invariant (no batch statistics), and free of the blow-up
    of per-sample norms where one sample's |s| nearly vanishes (likely in low dimension).
    1 + corrector_steps NFE per step. Weakly accurate; strong order 0 (the corrector's noise is not the
    SDE's Brownian path). ``final_noise=False`` returns the last predictor step's mean (Song's ``denoise``).
    """

    snr: float = 0.16
    corrector_steps: int = 1
    predictor: str = "euler-maruyama"
    final_noise: bool = False
    order: int = 1

    def __call__(self, prob: Problem) -> Tensor:
        pts = _grid(prob)
        n = pts.t.shape[0] - 1
        x = prob.x
        if self.predictor == "euler-maruyama":
            pred, (A, B, std) = "eps", em_coefs(prob.schedule, pts, self.final_noise)
            B = B[:, 0]
        else:
            pred, (A, B, std) = "x0", ms.ddim_noise_coefs(pts, 1.0)
            if not self.final_noise:
                std = std.clone()
                std[-1] = 0.0
        ev = prob.evaluator(pred)
        score = prob.evaluator("eps")  # the score is -eps/sigma
        plan, splan = ev.plan(pts.t[:-1], x), score.plan(pts.t[:-1], x)
        a_, b_, s_ = rows(A, x), rows(B, x), rows(std, x)
        inv_sigma = rows(-1.0 / pts.sigma[:-1], x)
        step = 2.0 * (pts.alpha[:-1] / pts.alpha[1:]) ** 2 * self.snr**2 * pts.sigma[:-1] ** 2
        e_, noise_ = rows(step, x), rows(torch.sqrt(2.0 * step), x)
        draw = prob.noise_stream(pts.t, x)
        for i in range(n):
            for j in range(self.corrector_steps):
                s = score(x, splan[i])  # eps; the score is -eps / sigma_i
                x = lincomb([(1.0, x), (e_[i] * inv_sigma[i], s), (noise_[i], draw(i, 1 + j))])
            m = ev(x, plan[i])
            x = lincomb([(a_[i], x), (b_[i], m), (s_[i], draw(i))])
            if prob.callback is not None:
                prob.callback(i, x)
        return x


# --- registry ------------------------------------------------------------------------------------
def _check_eta(eta) -> float:
    if not isinstance(eta, (int, float)) or isinstance(eta, bool) or not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must be a number in [0, 1]; got {eta!r}")
    return float(eta)


def _check_diffusion(diffusion):
    if callable(diffusion):
        return diffusion
    if isinstance(diffusion, (int, float)) and not isinstance(diffusion, bool) and diffusion >= 0:
        return float(diffusion)
    raise ValueError(f"diffusion must be a number >= 0 or a callable t -> eps(t) >= 0; got {diffusion!r}")


def _check_pc(snr, corrector_steps, predictor) -> None:
    if not isinstance(snr, (int, float)) or isinstance(snr, bool) or not snr > 0:
        raise ValueError(f"snr must be a positive number; got {snr!r}")
    if not isinstance(corrector_steps, int) or isinstance(corrector_steps, bool) or corrector_steps < 0:
        raise ValueError(f"corrector_steps must be an int >= 0; got {corrector_steps!r}")
    if predictor not in ("euler-maruyama", "ancestral"):
        raise ValueError(f"predictor must be 'euler-maruyama' or 'ancestral'; got {predictor!r}")


def _pc(
    order, method, variant, snr=0.16, corrector_steps=1, predictor="euler-maruyama", final_noise=False, **_
):
    _check_pc(snr, corrector_steps, predictor)
    return PredictorCorrector(float(snr), corrector_steps, predictor, bool(final_noise))


register(
    Entry(
        "euler-maruyama",
        lambda order, method, variant, final_noise=False, **_: EulerMaruyama(bool(final_noise)),
        orders=(1,),
        stochastic=True,
        doc="Euler-Maruyama on the reverse SDE; strong order 1 (additive noise)",
        options=("final_noise",),
    )
)
register(
    Entry(
        "ancestral",
        lambda order, method, variant, eta=1.0, **_: Ancestral(_check_eta(eta), variance=variant or "small"),
        orders=(1,),
        variants=(None, "small", "large"),
        stochastic=True,
        doc="ancestral / DDPM posterior sampling (eta = 1), DDIM eta family; variant 'large': DDPM's "
        "sigma^2 = beta, exact for standard normal data",
        options=("eta",),
    )
)
register(
    Entry(
        "sde-dpmsolver++",
        lambda order, method, variant, **_: SDEDPMSolverPP(order, {None: "midpoint"}.get(variant, variant)),
        variants=(None, "midpoint", "heun", "legacy"),
        stochastic=True,
        doc="SDE-DPM-Solver++ multistep 1, 2M (midpoint | heun), 3M (exact | legacy)",
    )
)
register(
    Entry(
        "pc",
        _pc,
        orders=(1,),
        stochastic=True,
        doc="predictor-corrector: Langevin corrector (snr) + Euler-Maruyama or ancestral predictor",
        options=("snr", "corrector_steps", "predictor", "final_noise"),
    )
)
register(
    Entry(
        "interpolant",
        lambda order, method, variant, diffusion=1.0, **_: Interpolant(_check_diffusion(diffusion)),
        orders=(1,),
        stochastic=True,
        doc="stochastic-interpolant SDE family with diffusion eps(t) >= 0 (eps = 0: the PF-ODE)",
        options=("diffusion",),
    )
)
