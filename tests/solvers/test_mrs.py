"""The MR Sampler (companion.solvers.mrs), the mean-reverting schedule and ``mu=`` (issue 15).

The reference for exactness is a *transcription* of the official update formulas (grrrute/mr-sampler,
``universal-image-restoration/utils/sampler.py``, class MRSampler: ``step_ode_1st/2nd/3rd``,
``step_sde_1st/2nd``, ``convert_model_output`` and the ``sampling`` loop; and ``utils/sde_utils.py``,
IRSDE ``_initialize``, ``reverse_posterior``, ``reverse_sde``), written below as plain per-step
formulas on x (not on y = x - mu): they share no code with the package.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import fitted_order, reference

import companion as cp
from companion.mean_reverting import irsde_sample, irsde_timesteps
from companion.noise import InjectedNoise
from companion.schedules import MeanReverting

D = 3
MU = torch.tensor([0.4, -0.3, 0.2], dtype=torch.float64)
GM = cp.targets.random_mixture(D, 0.6, 0.03, 0.08, seed=3)  # the law of y_0 = x_0 - mu
TOL = 1e-10


def x_model(schedule, mu, prediction):
    """The exact model about x for a mean-reverting process towards mu with y_0 ~ GM."""
    eps = GM.model(schedule, "eps")

    def f(x, t):
        y = x - mu
        e = eps(y, t)
        t64 = torch.as_tensor(t, dtype=torch.float64)
        a = schedule.alpha(t64).reshape(-1, 1)
        s = schedule.sigma(t64).reshape(-1, 1)
        x0 = (y - s * e) / a + mu
        if prediction == "eps":
            return e
        if prediction == "x0":
            return x0
        if prediction == "v":
            return a * e - s * x0
        if prediction == "score":
            return -e / s
        if prediction == "velocity":
            da = a * schedule.d_log_alpha(t64).reshape(-1, 1)
            ds = s * schedule.d_log_sigma(t64).reshape(-1, 1)
            return da * (x0 - mu) + ds * e
        raise AssertionError(prediction)

    return f


def prior(schedule, n=16, seed=0, mu=MU):
    g = torch.Generator().manual_seed(seed)
    return mu + float(schedule.sigma(torch.tensor(1.0, dtype=torch.float64))) * torch.randn(
        n, D, generator=g, dtype=torch.float64
    )


# --- the schedule ---------------------------------------------------------------------------------


def test_continuous_schedule_closed_forms():
    s = MeanReverting(sigma_inf=0.5)
    t = torch.linspace(1e-3, 1.0, 41, dtype=torch.float64)
    theta = s.theta(t)
    # alpha = exp(-int theta), by the trapezoid rule on a fine grid
    tf = torch.linspace(0.0, 1.0, 200001, dtype=torch.float64)
    integ = torch.cumulative_trapezoid(s.theta(tf), tf)
    la = torch.cat([torch.zeros(1, dtype=torch.float64), -integ])
    idx = (t * 200000).round().long()
    assert torch.allclose(s.log_alpha(t), la[idx], atol=1e-9)
    assert torch.allclose(s.sigma(t) ** 2, 0.25 * (1 - s.alpha(t) ** 2), rtol=1e-13)
    assert torch.allclose(s.g2(t), 2 * 0.25 * theta, rtol=1e-13)  # g^2 = 2 sigma_inf^2 theta
    # the generic g^2 = d sigma^2/dt - 2 f sigma^2 agrees
    generic = 2 * s.sigma(t) ** 2 * s.d_log_sigma(t) - 2 * s.f(t) * s.sigma(t) ** 2
    assert torch.allclose(generic, s.g2(t), rtol=1e-10)
    assert torch.allclose(s.t_of_lambda(s.lambda_(t)), t, atol=1e-12)
    d = MeanReverting.irsde(sigma_inf=0.5)
    td = torch.linspace(0.0, 1.0, 57, dtype=torch.float64)
    assert torch.allclose(d.t_of_lambda(d.lambda_(td)), td, atol=1e-12)


def _irsde_tables(max_sigma, T, schedule, eps):
    """Transcription of IRSDE._initialize (sde_utils.py) and MRSampler's alpha/sigma arrays."""
    max_sigma = max_sigma / 255 if max_sigma >= 1 else max_sigma
    if schedule == "cosine":
        timesteps = T + 2
        steps = timesteps + 1
        x = torch.linspace(0, timesteps, steps, dtype=torch.float32)
        alphas_cumprod = torch.cos(((x / timesteps) + 0.008) / (1 + 0.008) * math.pi * 0.5) ** 2
        alphas_cumprod = alphas_cumprod / alphas_cumprod[0]
        thetas = 1 - alphas_cumprod[1:-1]
    elif schedule == "linear":
        timesteps = T + 1
        scale = 1000 / timesteps
        thetas = torch.linspace(scale * 0.0001, scale * 0.02, timesteps, dtype=torch.float32)
    else:
        thetas = torch.ones(T + 1, dtype=torch.float32)
    thetas_cumsum = torch.cumsum(thetas, dim=0)
    dt = -1 / thetas_cumsum[-1] * math.log(eps)
    sigma_bars = torch.sqrt(max_sigma**2 * (1 - torch.exp(-2 * thetas_cumsum * dt)))
    alpha = torch.exp(-thetas_cumsum * dt)
    return thetas, thetas_cumsum, dt, sigma_bars, alpha


@pytest.mark.parametrize("theta", ["cosine", "linear", "constant"])
@pytest.mark.parametrize("T,eps,max_sigma", [(100, 0.005, 50), (37, 0.01, 0.5)])
def test_irsde_tables_are_reproduced(theta, T, eps, max_sigma):
    s = MeanReverting.irsde(sigma_inf=max_sigma, T=T, theta=theta, eps=eps)
    th, cs, dt, sb, al = _irsde_tables(max_sigma, T, theta, eps)
    assert torch.equal(s.thetas, th) and torch.equal(s.thetas_cumsum, cs) and torch.equal(s.dt, dt)
    assert torch.equal(s.sigma_bars, sb) and torch.equal(s.alphas, al)
    n = torch.arange(T + 1, dtype=torch.float64)
    # the schedule's float64 alpha and sigma at the knots t = n / T equal the float32 tables to rounding
    assert torch.allclose(s.alpha(n / T), al.double(), rtol=1e-6, atol=0)
    assert torch.allclose(s.sigma(n / T), sb.double(), rtol=1e-4, atol=1e-7)  # float32 cancels in 1 - e^{-2x}
    assert abs(float(s.alpha(1.0)) - eps) < 1e-6 * eps
    assert s.sigma_inf == (max_sigma / 255 if max_sigma >= 1 else max_sigma)


def test_schedule_rejects_bad_arguments():
    with pytest.raises(ValueError, match="sigma_inf"):
        MeanReverting(sigma_inf=-1.0)
    with pytest.raises(ValueError, match="theta"):
        MeanReverting.irsde(theta="quadratic")
    with pytest.raises(ValueError, match="T"):
        MeanReverting.irsde(T=1)
    with pytest.raises(ValueError, match="eps"):
        MeanReverting.irsde(eps=1.5)


# --- mu= ------------------------------------------------------------------------------------------


def test_mu_of_wrong_shape_or_non_finite_raises():
    s = MeanReverting()
    x = prior(s, 4)
    model = x_model(s, MU, "eps")
    kw = dict(schedule=s, steps=5, t_end=1e-3)
    with pytest.raises(ValueError, match="mu must broadcast"):
        cp.sample(model, x, mu=torch.zeros(5, D, dtype=torch.float64), **kw)
    with pytest.raises(ValueError, match="mu must broadcast"):
        cp.sample(model, x, mu=torch.zeros(2, 4, D, dtype=torch.float64), **kw)
    bad = MU.clone()
    bad[1] = float("nan")
    with pytest.raises(ValueError, match="mu must be finite"):
        cp.sample(model, x, mu=bad, **kw)
    bad[1] = float("inf")
    with pytest.raises(ValueError, match="mu must be finite"):
        cp.sample(model, x, mu=bad, **kw)
    with pytest.raises(TypeError, match="mu"):
        cp.sample(model, x, mu="zero", **kw)


@pytest.mark.parametrize(
    "solver,opts", [("dpmsolver++", {}), ("unipc", {"order": 3}), ("heun", {}), ("mrs", {})]
)
def test_every_prediction_type_gives_the_same_sample_with_mu(solver, opts):
    s = MeanReverting()
    x = prior(s, 8)
    mu = MU + 0.1 * torch.arange(8, dtype=torch.float64)[:, None]  # one mu per sample
    outs = {
        p: cp.sample(
            x_model(s, mu, p), x, schedule=s, prediction=p, solver=solver, steps=8, t_end=1e-3, mu=mu, **opts
        )
        for p in ("eps", "x0", "v", "score", "velocity")
    }
    for p, o in outs.items():
        assert (o - outs["eps"]).abs().max() < TOL, p


def test_mu_shift_is_the_y_problem_plus_mu_and_callbacks_see_x():
    s = MeanReverting()
    x = prior(s, 8)
    seen = []
    out = cp.sample(
        x_model(s, MU, "x0"),
        x,
        schedule=s,
        prediction="x0",
        steps=6,
        t_end=1e-3,
        mu=MU,
        callback=lambda i, t, xx, den: seen.append(den.clone()),
    )
    y = cp.sample(GM.model(s, "x0"), x - MU, schedule=s, prediction="x0", steps=6, t_end=1e-3)
    assert (out - (y + MU)).abs().max() < TOL
    # the last denoised is the data prediction about x (near mu + y_0), not about y
    assert (seen[-1] - out).abs().max() < 0.05


# --- MRS is DPM-Solver(++) on y ---------------------------------------------------------------------


@pytest.mark.parametrize("pred,peer", [("x0", "dpmsolver++"), ("eps", "dpmsolver")])
@pytest.mark.parametrize("order,variant", [(1, "taylor"), (2, "taylor"), (3, "taylor")])
@pytest.mark.parametrize("grid", ["logsnr", "time_uniform"])
def test_mrs_equals_dpmsolver_on_y_plus_mu(pred, peer, order, variant, grid):
    s = MeanReverting()
    x = prior(s, 16)
    kw = dict(schedule=s, steps=12, t_end=1e-3, grid=grid)
    mrs = cp.sample(
        x_model(s, MU, "eps"), x, solver="mrs", order=order, pred=pred, variant=variant, mu=MU, **kw
    )
    # the Taylor second-order term is the exact linear weights (DPM-Solver's "heun"); the legacy order 3 is
    # checked against the official formulas below (its warm-up 2nd-order step is Taylor, not DPM's midpoint)
    pv = "heun" if order > 1 else "midpoint"
    dpm = cp.sample(GM.model(s, "eps"), x - MU, solver=peer, order=order, variant=pv, **kw) + MU
    assert (mrs - dpm).abs().max() < TOL


# --- a transcription of the official MRSampler --------------------------------------------------------


def official_mrs(
    out_fn,
    x_T,
    mu,
    ts,
    alphas,
    sigmas,
    lambdas,
    solver_type,
    parameterization,
    order,
    fit_target,
    noises,
    sigma_infty,
):
    """MRSampler.sampling / step_* / convert_model_output, transcribed (no thresholding, no
    denoise_last). ``out_fn(x, i)`` is the network output at timesteps[i]; arrays indexed like the
    official self.alphas/self.sigmas/self.lambdas."""
    qbuffer = [None] * order
    k = {"z": 0}

    def convert(score, xti, i):
        if parameterization == "data":
            if fit_target == "noise":
                output = (xti - sigmas[i] * score) / alphas[i]
                output -= (1 - alphas[i]) / alphas[i] * mu
            elif fit_target == "data":
                output = score
            else:  # velocity
                output = alphas[i] * xti - sigmas[i] / sigma_infty * score + (1 - alphas[i]) * mu
        else:
            if fit_target == "noise":
                output = score
            elif fit_target == "data":
                output = (xti - mu - (score - mu) * alphas[i]) / sigmas[i]
            else:
                output = (score * alphas[i] + (xti - mu) * sigmas[i] / sigma_infty) / sigma_infty
        return output

    def push(o):
        for j in reversed(range(order)):
            qbuffer[j] = o if j == 0 else qbuffer[j - 1]

    def step(x, i, o):
        push(convert(out_fn(x, i - 1), x, i - 1))
        hi = lambdas[i] - lambdas[i - 1]
        if solver_type == "ode":
            if o == 1:
                if parameterization == "data":
                    xt = sigmas[i] / sigmas[i - 1] * x - alphas[i] * (math.exp(-hi) - 1) * qbuffer[0]
                    xt += mu * (
                        1 - sigmas[i] / sigmas[i - 1] + sigmas[i] / sigmas[i - 1] * alphas[i - 1] - alphas[i]
                    )
                else:
                    xt = alphas[i] / alphas[i - 1] * x - sigmas[i] * (math.exp(hi) - 1) * qbuffer[0]
                    xt += mu * (1 - alphas[i] / alphas[i - 1])
                return xt
            if o == 2:
                r = (lambdas[i - 1] - lambdas[i - 2]) / hi
                D1 = (qbuffer[0] - qbuffer[1]) / r
                if parameterization == "data":
                    phi1 = math.exp(-hi) - 1
                    phi2 = phi1 / hi + 1
                    D = phi1 * qbuffer[0] - phi2 * D1
                    xt = sigmas[i] / sigmas[i - 1] * x - alphas[i] * D
                    xt += mu * (
                        1 - sigmas[i] / sigmas[i - 1] + sigmas[i] / sigmas[i - 1] * alphas[i - 1] - alphas[i]
                    )
                else:
                    phi1 = math.exp(hi) - 1
                    phi2 = phi1 / hi - 1
                    D = phi1 * qbuffer[0] + phi2 * D1
                    xt = alphas[i] / alphas[i - 1] * x - sigmas[i] * D
                    xt += mu * (1 - alphas[i] / alphas[i - 1])
                return xt
            hi_1 = lambdas[i - 1] - lambdas[i - 2]
            hi_2 = lambdas[i - 2] - lambdas[i - 3]
            ri, ri_1 = hi_1 / hi, hi_2 / hi
            D1_0 = (qbuffer[0] - qbuffer[1]) / ri
            D1_1 = (qbuffer[1] - qbuffer[2]) / ri_1
            D1 = D1_0 + (D1_0 - D1_1) * ri / (ri + ri_1)
            D2 = (D1_0 - D1_1) / (ri + ri_1)
            if parameterization == "data":
                phi1 = math.exp(-hi) - 1
                phi2 = phi1 / hi + 1
                phi3 = phi2 / hi - 0.5
                D = phi1 * qbuffer[0] - phi2 * D1 + phi3 * D2
                xt = sigmas[i] / sigmas[i - 1] * x - alphas[i] * D
                xt += mu * (
                    1 - sigmas[i] / sigmas[i - 1] + sigmas[i] / sigmas[i - 1] * alphas[i - 1] - alphas[i]
                )
            else:
                phi1 = math.exp(hi) - 1
                phi2 = phi1 / hi - 1
                phi3 = phi2 / hi - 0.5
                D = phi1 * qbuffer[0] + phi2 * D1 + phi3 * D2
                xt = alphas[i] / alphas[i - 1] * x - sigmas[i] * D
                xt += mu * (1 - alphas[i] / alphas[i - 1])
            return xt
        noise = noises[k["z"]]
        k["z"] += 1
        if o == 1:
            if parameterization == "data":
                phi1 = 1 - math.exp(-2 * hi)
                xt = (
                    sigmas[i] / sigmas[i - 1] * math.exp(-hi) * x
                    + alphas[i] * phi1 * qbuffer[0]
                    + sigmas[i] * math.sqrt(phi1) * noise
                )
                xt += mu * (1 - alphas[i] / alphas[i - 1] * math.exp(-2 * hi) - alphas[i] * phi1)
            else:
                xt = (
                    alphas[i] / alphas[i - 1] * x
                    - 2 * sigmas[i] * (math.exp(hi) - 1) * qbuffer[0]
                    + sigmas[i] * math.sqrt(math.exp(2 * hi) - 1) * noise
                )
                xt += mu * (1 - alphas[i] / alphas[i - 1])
            return xt
        r = (lambdas[i - 1] - lambdas[i - 2]) / hi
        D1 = (qbuffer[0] - qbuffer[1]) / r
        if parameterization == "data":
            phi1 = 1 - math.exp(-2 * hi)
            phi2 = 1 - phi1 / 2 / hi
            xt = (
                sigmas[i] / sigmas[i - 1] * math.exp(-hi) * x
                + alphas[i] * phi1 * qbuffer[0]
                + alphas[i] * phi2 * D1
                + sigmas[i] * math.sqrt(phi1) * noise
            )
            xt += mu * (1 - alphas[i] / alphas[i - 1] * math.exp(-2 * hi) - alphas[i] * phi1)
        else:
            phi1 = math.exp(hi) - 1
            phi2 = phi1 / hi - 1
            xt = (
                alphas[i] / alphas[i - 1] * x
                - 2 * sigmas[i] * phi1 * qbuffer[0]
                - 2 * sigmas[i] * phi2 * D1
                + sigmas[i] * math.sqrt(math.exp(2 * hi) - 1) * noise
            )
            xt += mu * (1 - alphas[i] / alphas[i - 1])
        return xt

    M = len(ts) - 1
    x = x_T
    for i in range(1, order):
        x = step(x, i, i)
    for i in range(order, M):
        x = step(x, i, min(order, M - i) if M < 10 else order)
    return step(x, M, order)


def _official_run(s, solver_type, parameterization, order, fit_target, M, variant="taylor"):
    x = prior(s, 8, seed=5)
    ts = torch.linspace(1.0, 0.0, M + 1, dtype=torch.float64)  # the official "linspace" timesteps / T
    al, sg, lam = s.alpha(ts).tolist(), s.sigma(ts).tolist(), s.lambda_(ts).tolist()
    g = torch.Generator().manual_seed(11)
    noises = [torch.randn(x.shape, generator=g, dtype=torch.float64) for _ in range(M)]
    pred_x = {"data": "x0", "noise": "eps"}[fit_target]
    model = x_model(s, MU, pred_x)
    out_fn = lambda xx, i: model(xx, torch.full((xx.shape[0],), float(ts[i]), dtype=torch.float64))  # noqa: E731
    ref = official_mrs(
        out_fn, x, MU, ts, al, sg, lam, solver_type, parameterization, order, fit_target, noises, s.sigma_inf
    )
    solver = "mrs" if solver_type == "ode" else "mrs-sde"
    opts = {"order": order, "pred": {"data": "x0", "noise": "eps"}[parameterization]}
    if solver == "mrs":
        opts["variant"] = variant
    ours = cp.sample(
        model,
        x,
        schedule=s,
        prediction=pred_x,
        solver=solver,
        timesteps=ts,
        mu=MU,
        lower_order_final=False,
        noise=InjectedNoise(noises),
        **opts,
    )
    return ours, ref


@pytest.mark.parametrize("theta", ["cosine", "linear"])
@pytest.mark.parametrize("fit_target", ["data", "noise"])
@pytest.mark.parametrize("parameterization", ["data", "noise"])
@pytest.mark.parametrize("solver_type,order", [("ode", 1), ("ode", 2), ("ode", 3), ("sde", 1), ("sde", 2)])
def test_mrs_matches_the_official_update_formulas(theta, fit_target, parameterization, solver_type, order):
    s = MeanReverting.irsde(sigma_inf=0.5, T=100, theta=theta, eps=0.005)
    variant = "legacy" if order == 3 else "taylor"
    ours, ref = _official_run(s, solver_type, parameterization, order, fit_target, M=20, variant=variant)
    assert torch.isfinite(ref).all()
    assert (ours - ref).abs().max() < TOL


# --- MRS-SDE-1 (data) is the strided posterior step ------------------------------------------------------


@pytest.mark.parametrize("steps", [5, 10, 20, 100])
def test_mrs_sde1_data_is_the_strided_posterior(steps):
    s = MeanReverting.irsde(sigma_inf=0.5, T=100)
    x = prior(s, 8, seed=2)
    g = torch.Generator().manual_seed(4)
    noises = [torch.randn(x.shape, generator=g, dtype=torch.float64) for _ in range(steps)]
    model = x_model(s, MU, "eps")
    post = irsde_sample(model, x, MU, schedule=s, steps=steps, stride="exact", noise=InjectedNoise(noises))
    ns = irsde_timesteps(100, steps)
    ts = torch.tensor(ns + [0], dtype=torch.float64) / 100
    mrs = cp.sample(
        model,
        x,
        schedule=s,
        solver="mrs-sde",
        order=1,
        pred="x0",
        timesteps=ts,
        mu=MU,
        noise=InjectedNoise(noises),
    )
    assert (post - mrs).abs().max() < TOL
    # and it is ancestral sampling (eta = 1) on y
    anc = cp.sample(
        model, x, schedule=s, solver="ancestral", timesteps=ts, mu=MU, noise=InjectedNoise(noises)
    )
    assert (anc - mrs).abs().max() < TOL


# --- the paper's baselines, transcribed --------------------------------------------------------------


def official_irsde(eps_fn, x_T, mu, s, N, method, noises):
    """IRSDE.reverse_posterior / reverse_sde (sde_utils.py), transcribed with float64 tables."""
    T = s.T
    th = s.thetas.double()
    dt = float(s.dt)
    cum_a = lambda n: float(s.alpha(torch.tensor(n / T, dtype=torch.float64)))  # exp(-thetas_cumsum[n] dt)  # noqa: E731
    sig_bar = lambda n: float(s.sigma(torch.tensor(n / T, dtype=torch.float64)))  # noqa: E731
    timesteps = np.linspace(1, T, N, dtype=float).tolist()
    x = x_T.clone()
    for k, t in enumerate(reversed(timesteps)):
        t = int(t)
        noise = eps_fn(x, t)
        if method == "posterior":
            x0 = (x - mu - sig_bar(t) * noise) / cum_a(t) + mu  # get_init_state_from_noise
            A = cum_a(t) / cum_a(t - 1)  # exp(-thetas[t] dt), from the same float64 knots
            B, C = cum_a(t), cum_a(t - 1)
            mean = A * (1 - C**2) / (1 - B**2) * (x - mu) + C * (1 - A**2) / (1 - B**2) * (x0 - mu) + mu
            var = (1 - A**2) * (1 - C**2) / (1 - B**2)
            std = math.exp(0.5 * math.log(max(var, 1e-20 * dt))) * s.sigma_inf
            x = mean + std * noises[k]
        else:
            score = -noise / sig_bar(t)
            sig_t = math.sqrt(s.sigma_inf**2 * 2 * float(th[t]))
            drift = (float(th[t]) * (mu - x) - sig_t**2 * score) * dt
            x = x - drift - sig_t * (noises[k] * math.sqrt(dt))
    return x


@pytest.mark.parametrize("method", ["posterior", "euler"])
@pytest.mark.parametrize("N", [7, 10, 100])
def test_paper_baselines_match_the_transcription(method, N):
    s = MeanReverting.irsde(sigma_inf=0.5, T=100)
    x = prior(s, 8, seed=9)
    g = torch.Generator().manual_seed(6)
    noises = [torch.randn(x.shape, generator=g, dtype=torch.float64) for _ in range(N)]
    model = x_model(s, MU, "eps")
    eps_fn = lambda xx, n: model(xx, torch.full((xx.shape[0],), n / 100, dtype=torch.float64))  # noqa: E731
    ref = official_irsde(eps_fn, x, MU, s, N, method, noises)
    ours = irsde_sample(model, x, MU, schedule=s, steps=N, method=method, noise=InjectedNoise(noises))
    assert (ours - ref).abs().max() < TOL


def test_baselines_reject_bad_arguments():
    s = MeanReverting.irsde()
    x = prior(s, 2)
    m = x_model(s, MU, "eps")
    with pytest.raises(TypeError, match="schedule"):
        irsde_sample(m, x, MU, schedule=MeanReverting(), steps=5)
    with pytest.raises(ValueError, match="steps"):
        irsde_sample(m, x, MU, schedule=s, steps=101)
    with pytest.raises(ValueError, match="stride"):
        irsde_sample(m, x, MU, schedule=s, steps=5, method="euler", stride="exact")


# --- orders on the continuous schedule -------------------------------------------------------------------


def mrs_errors(order, variant, pred, steps_list, d=D):
    s = MeanReverting(sigma_inf=0.5)
    x = prior(s, 16, seed=1)
    ref = reference(GM.model(s, "eps"), s, x - MU, 1.0, 1e-3) + MU
    errs = []
    for n in steps_list:
        out = cp.sample(
            x_model(s, MU, "eps"),
            x,
            schedule=s,
            solver="mrs",
            order=order,
            pred=pred,
            variant=variant,
            steps=n,
            t_end=1e-3,
            mu=MU,
            lower_order_final=False,
        )
        errs.append(float((out - ref).abs().max()))
    return errs


@pytest.mark.parametrize("pred", ["x0", "eps"])
@pytest.mark.parametrize("order,variant,nominal", [(1, "taylor", 1), (2, "taylor", 2), (3, "taylor", 3)])
def test_mrs_ode_fitted_orders(order, variant, nominal, pred, report):
    steps = [40, 80, 160, 320]
    p = fitted_order(steps, mrs_errors(order, variant, pred, steps))
    report("fitted order (MRS-ODE)", f"mrs order={order} pred={pred}", p)
    assert abs(p - nominal) < 0.3


def test_the_official_third_order_update_is_second_order(report):
    steps = [40, 80, 160, 320]
    p = fitted_order(steps, mrs_errors(3, "legacy", "x0", steps))
    report("fitted order (MRS-ODE)", "mrs order=3 variant=legacy", p)
    assert abs(p - 2.0) < 0.3


def test_invert_with_mu_round_trips_and_denoise_to_zero_returns_x0_about_x():
    s = MeanReverting()
    x0 = MU + GM.sample(8, generator=torch.Generator().manual_seed(3))
    model = x_model(s, MU, "eps")
    kw = dict(schedule=s, steps=200, t_end=1e-3, solver="dpmsolver++", order=3, mu=MU)
    x_T = cp.invert(model, x0, **kw)
    back = cp.sample(model, x_T, lower_order_final=False, **kw)
    assert (back - x0).abs().max() < 1e-5
    # the final data prediction is about x: a run with denoise_to_zero lands near x0, not near x0 - mu
    out = cp.sample(model, x_T, denoise_to_zero=True, **kw)
    assert (out - x0).abs().max() < 1e-3


@pytest.mark.parametrize("name", [n for n in cp.solvers.available() if n != "interpolant"])
def test_mu_runs_every_solver_on_y(name):
    """mu= is the y = x - mu problem plus mu for every registered solver (the same per-sample noise)."""
    s = MeanReverting()
    x = prior(s, 6, seed=8)
    mu = MU + 0.05 * torch.arange(6, dtype=torch.float64)[:, None]
    kw = dict(schedule=s, solver=name, steps=8, t_end=1e-3)
    a = cp.sample(
        x_model(s, mu, "x0"), x, prediction="x0", mu=mu, noise=cp.noise.PerSampleNoise(range(6)), **kw
    )
    eps_y = GM.model(s, "eps")
    b = cp.sample(eps_y, x - mu, noise=cp.noise.PerSampleNoise(range(6)), **kw) + mu
    assert (a - b).abs().max() < 1e-9
