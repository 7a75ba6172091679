"""Parity with diffusers' schedulers (a test-only peer) on the discrete 1000-step linear-beta schedule.

Both sides see the same model: an analytic, nonlinear eps of (x, alpha, sigma) (a two-component mixture,
elementwise), fed diffusers' own sigma at each call, and the same time points (diffusers' sigmas mapped to
t through our VPDiscrete built from the scheduler's alphas_cumprod). Tolerance 1e-5 (max abs).

diffusers keeps its sigma grid in float32 and computes step coefficients from it; we hand it the same grid
values as float64 (``sigmas.double()`` after ``set_timesteps``) so that the comparison measures the
algorithms, not float32 coefficient rounding (which alone reaches 1.5e-5 for DEIS-3 at 20 steps, where
its log-rho integrals cancel; with float64 sigmas the two agree to 6e-11).
"""

from __future__ import annotations

import math

import pytest
import torch

import companion as cp
from companion.adapters import diffusers as adapter

diffusers = pytest.importorskip("diffusers")

TOL = 1e-5
MAXIMA: dict[str, float] = {}


@pytest.fixture(autouse=True)
def _report_parity(report):
    """Every comparison a test makes goes to the end-of-run summary (the worst per scheduler is kept)."""
    MAXIMA.clear()
    yield
    for name, diff in MAXIMA.items():
        report("parity max |ours - diffusers|", name, diff)


def eps_model(x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Exact eps of the elementwise mixture 0.6 N(-0.7, 0.2^2) + 0.4 N(0.9, 0.3^2) (float64)."""
    a = alpha.reshape(-1, *([1] * (x.dim() - 1))).to(torch.float64)
    s = sigma.reshape(-1, *([1] * (x.dim() - 1))).to(torch.float64)
    x = x.to(torch.float64)
    logits, num = [], []
    for w, m, v in ((0.6, -0.7, 0.04), (0.4, 0.9, 0.09)):
        c = a**2 * v + s**2
        logits.append(math.log(w) - 0.5 * (x - a * m) ** 2 / c - 0.5 * torch.log(c))
        num.append((x - a * m) / c)
    g = torch.softmax(torch.stack(logits), 0)
    return s * (g * torch.stack(num)).sum(0)


def ours_model(schedule):
    def f(x, t):
        return eps_model(x, schedule.alpha(t.double()), schedule.sigma(t.double()))

    return f


def vp_of_sigma(sig: torch.Tensor):
    sig = sig.to(torch.float64)
    alpha = 1.0 / torch.sqrt(1.0 + sig**2)
    return alpha, sig * alpha


def t_of_sigma(schedule, sigmas: torch.Tensor) -> torch.Tensor:
    return adapter.times_from_sigmas(sigmas, schedule)


def x_init(shape=(4, 3, 5)):
    return torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def run_sigma_scheduler(sch, n, x_vp, vp_state: bool):
    """Drive a sigma-based scheduler (DPM, UniPC, DEIS, Euler, Heun); return the final VP sample."""
    sch.set_timesteps(n, device="cpu")
    sch.sigmas = sch.sigmas.to(torch.float64)
    alpha0 = vp_of_sigma(sch.sigmas[0])[0]
    x = x_vp.clone() if vp_state else x_vp / alpha0
    for t in sch.timesteps:
        xin = sch.scale_model_input(x, t)
        sig = sch.sigmas[sch.step_index if sch.step_index is not None else 0]
        alpha, sigma = vp_of_sigma(sig)
        xin_vp = xin if vp_state else x * alpha
        out = eps_model(xin_vp, alpha.expand(x.shape[0]), sigma.expand(x.shape[0]))
        x = sch.step(out, t, x).prev_sample
    return x


def record(name: str, diff: float) -> None:
    MAXIMA[name] = max(MAXIMA.get(name, 0.0), diff)
    assert diff <= TOL, f"{name}: max abs difference {diff:.3g} > {TOL}"


def ours(schedule, x, t_grid, **kw):
    return cp.sample(ours_model(schedule), x, schedule=schedule, prediction="eps", timesteps=t_grid, **kw)


def sched_of(sch):
    return adapter.schedule_from_scheduler(sch)


def unique_sigma_grid(sch):
    """diffusers' sigma grid of a run (set_timesteps already called), as our times, with a repeated sigma
    (a zero-length step, the identity) taken out."""
    return t_of_sigma(sched_of(sch), torch.unique_consecutive(sch.sigmas))


STEPS = (5, 10, 20)


def compare(name: str, sch, n: int, **kw) -> None:
    """Run the scheduler and companion.sample on its sigma grid (VP state); record the difference."""
    x = x_init()
    ref = run_sigma_scheduler(sch, n, x, vp_state=True)
    got = ours(sched_of(sch), x, unique_sigma_grid(sch), compat="diffusers", **kw)
    record(name, (got - ref).abs().max().item())


@pytest.mark.parametrize("n", STEPS)
@pytest.mark.parametrize("karras", [False, True])
@pytest.mark.parametrize(
    "order,solver_type,variant",
    [(1, "midpoint", None), (2, "midpoint", None), (2, "heun", "heun"), (3, "midpoint", "legacy")],
)
def test_dpmsolver_multistep(n, karras, order, solver_type, variant):
    cfg = dict(beta_schedule="linear", solver_order=order, solver_type=solver_type, use_karras_sigmas=karras)
    name = f"DPMSolverMultistep(order={order}, {solver_type}{', karras' if karras else ''})"
    sch = diffusers.DPMSolverMultistepScheduler(**cfg)
    compare(name, sch, n, solver="dpmsolver++", order=order, **({"variant": variant} if variant else {}))


@pytest.mark.parametrize("n", (6, 10, 21))
@pytest.mark.parametrize("karras", [False, True])
@pytest.mark.parametrize("order", [1, 2, 3])
def test_dpmsolver_singlestep(n, karras, order):
    cfg = dict(beta_schedule="linear", solver_order=order, use_karras_sigmas=karras)
    sch = diffusers.DPMSolverSinglestepScheduler(**cfg)
    name = f"DPMSolverSinglestep(order={order}{', karras' if karras else ''})"
    compare(name, sch, n, solver="dpmsolver++", order=order, method="singlestep")


@pytest.mark.parametrize("n", STEPS)
@pytest.mark.parametrize("karras", [False, True])
@pytest.mark.parametrize("order", [1, 2, 3])
def test_deis(n, karras, order):
    sch = diffusers.DEISMultistepScheduler(
        beta_schedule="linear", solver_order=order, use_karras_sigmas=karras
    )
    if karras:
        # diffusers repeats the last Karras sigma: a zero-length final step, one wasted model call. That step
        # is the identity, so ours on the grid without the repeat is the same algorithm -- except where
        # diffusers' lower_order_final (below 15 steps) lowers the order of the zero-length step and of the
        # last real one instead of the last two real steps.
        sch.set_timesteps(n)
        assert sch.sigmas[-1] == sch.sigmas[-2]
        if order > 1 and n < 15:
            pytest.skip(
                "DEISMultistepScheduler with Karras sigmas ends with a zero-length step (diffusers bug), and "
                "below 15 steps its lower-order final steps then fall on other steps than on a real grid"
            )
    name = f"DEISMultistep(order={order}{', karras, repeated last sigma' if karras else ''})"
    compare(name, sch, n, solver="deis", order=order, variant="logrho")


@pytest.mark.parametrize("n", STEPS)
@pytest.mark.parametrize("karras", [False, True])
@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("bh", ["bh1", "bh2"])
def test_unipc(n, karras, order, bh):
    # diffusers' bh1 ends in NaN with final_sigmas_type="zero" (B(h) = hh = -inf times a zero residual
    # on the last step), so bh1 is compared on the sigma_min ending; ours is finite on both.
    final = "sigma_min" if bh == "bh1" else "zero"
    if bh == "bh1" and karras:
        pytest.skip(
            "diffusers: bh1 needs final_sigmas_type='sigma_min', which with Karras sigmas repeats the "
            "last sigma (a zero-length step); that step spends a model call on a UniC correction of the last "
            "real step, so diffusers runs another algorithm there (3.8e-3 to 1.9 from ours on the grid "
            "without the repeat)"
        )
    cfg = dict(solver_order=order, solver_type=bh, use_karras_sigmas=karras, final_sigmas_type=final)
    sch = diffusers.UniPCMultistepScheduler(beta_schedule="linear", **cfg)
    name = f"UniPCMultistep({bh}, order={order}{', karras' if karras else ''})"
    compare(name, sch, n, solver="unipc", order=order, variant=bh)


@pytest.mark.parametrize("n", STEPS)
@pytest.mark.parametrize("karras", [False, True])
@pytest.mark.parametrize("heun", [False, True])
def test_euler_heun(n, karras, heun):
    cls = diffusers.HeunDiscreteScheduler if heun else diffusers.EulerDiscreteScheduler
    sch = cls(beta_schedule="linear", use_karras_sigmas=karras)
    x = x_init()
    ref = run_sigma_scheduler(sch, n, x, vp_state=False)  # VE state x / alpha; alpha = 1 at sigma = 0
    sched = sched_of(sch)
    sig = sch.sigmas if not heun else torch.cat([sch.sigmas[:1], sch.sigmas[1::2]])
    got = ours(
        sched,
        x,
        t_of_sigma(sched, sig),
        solver="heun" if heun else "euler",
        order=2 if heun else 1,
        variable="rho",
    )
    name = f"{'HeunDiscrete' if heun else 'EulerDiscrete'}{'(karras)' if karras else ''}"
    record(name, (got - ref).abs().max().item())


def run_ddpm_style(sch, n, x, eta=None):
    """Drive DDIM / PNDM (integer timesteps; the model is evaluated at alphas_cumprod[t])."""
    sch.set_timesteps(n, device="cpu")
    for t in sch.timesteps:
        ac = sch.alphas_cumprod[t].to(torch.float64)
        out = eps_model(x, ac.sqrt().expand(x.shape[0]), (1 - ac).sqrt().expand(x.shape[0]))
        x = (sch.step(out, t, x, eta=eta) if eta is not None else sch.step(out, t, x)).prev_sample
    return x


def ddpm_grid(sch, ts) -> torch.Tensor:
    return adapter.times_from_timesteps(ts, sched_of(sch), final=0.0)


@pytest.mark.parametrize("n", STEPS)
def test_ddim(n):
    sch = diffusers.DDIMScheduler(beta_schedule="linear", clip_sample=False)
    x = x_init()
    ref = run_ddpm_style(sch, n, x, eta=0.0)
    got = ours(sched_of(sch), x, ddpm_grid(sch, sch.timesteps), solver="ddim", order=1)
    record("DDIM", (got - ref).abs().max().item())


@pytest.mark.parametrize("n", STEPS)
@pytest.mark.parametrize("prk", [False, True], ids=["plms", "pndm"])
def test_pndm(n, prk):
    sch = diffusers.PNDMScheduler(beta_schedule="linear", skip_prk_steps=not prk, set_alpha_to_one=True)
    x = x_init()
    ref = run_ddpm_style(sch, n, x)
    sch.set_timesteps(n, device="cpu")
    t = ddpm_grid(sch, sch._timesteps[::-1].copy())
    got = ours(sched_of(sch), x, t, solver="pndm", variant="pndm" if prk else "plms")
    record(f"PNDM ({'PRK start' if prk else 'PLMS'})", (got - ref).abs().max().item())


def test_discrete_grids_equal_diffusers_timesteps():
    for spacing in ("linspace", "leading", "trailing"):
        sch = diffusers.DPMSolverMultistepScheduler(beta_schedule="linear", timestep_spacing=spacing)
        for n in (7, 20, 50):
            sch.set_timesteps(n)
            t = cp.grids.discrete(sched_of(sch), n, spacing)
            ks = (t[:-1] * 1000 - 1).round().to(torch.int64)
            assert torch.equal(ks, sch.timesteps), (spacing, n)
