"""Robust final steps, NFE accounting, argument errors, per-sample times and low-precision outputs."""

from __future__ import annotations

import pytest
import torch

import companion as cp

COSINE = cp.schedules.VPCosine()


def zero_terminal_snr(n: int = 1000) -> cp.schedules.VPDiscrete:
    """Lin et al. (2023, Alg. 1) rescaled linear betas. The terminal alpha_bar = 0 must be replaced by a tiny
    value for a finite lambda; diffusers' 2^-24 lies above alpha_bar[-2] ~ 4e-9 here (not monotone), so we
    take alpha_bar[-2]/2, lambda(1) ~ -10."""
    betas = torch.linspace(1e-4, 2e-2, n, dtype=torch.float64)
    ab = torch.cumprod(1 - betas, 0).sqrt()
    ab = (ab - ab[-1]) * ab[0] / (ab[0] - ab[-1])
    ac = ab**2
    ac[-1] = ac[-2] / 2
    return cp.schedules.VPDiscrete(alphas_cumprod=ac)


ZSNR = zero_terminal_snr()


def smooth_eps(calls):
    """A cheap, bounded, nonlinear stand-in for a network (what matters here is the solvers' coefficients)."""

    def f(x, t):
        calls.append(t.clone())
        return 0.5 * torch.tanh(x) + 0.1

    return f


def gaussian_eps(schedule, calls):
    """Exact eps for N(0.3, 0.6^2) data, elementwise."""

    def f(x, t):
        calls.append(t.clone())
        a = schedule.alpha(t.double()).reshape(-1, *([1] * (x.dim() - 1)))
        s = schedule.sigma(t.double()).reshape(-1, *([1] * (x.dim() - 1)))
        return (s * (x - 0.3 * a) / (0.36 * a**2 + s**2)).to(x.dtype)

    return f


# Every order x method of each solver, with its default variant (variants share these code paths).
CONFIGS = (
    [("ddim", {})]
    + [
        (s, dict(order=o, method=m))
        for s in ("dpmsolver", "dpmsolver++")
        for o in (1, 2, 3)
        for m in ("multistep", "singlestep", "singlestep_fixed")
    ]
    + [("deis", dict(order=o)) for o in (1, 2, 3)]
    + [("unipc", dict(order=o)) for o in (1, 2, 3)]
    + [("unipc", dict(order=3, variant="bh1")), ("dpmsolver++", dict(order=3, variant="legacy"))]
    + [("euler", {}), ("heun", {})]
    + [("pndm", {}), ("pndm", dict(variant="pndm"))]
)


def _cfg_id(cfg) -> str:
    return "-".join([cfg[0]] + [str(v) for v in cfg[1].values()])


# (schedule, grid kwargs): ends at t_end > 0, with a denoising evaluation, or exactly at sigma = 0 (the
# diffusers-style discrete grid; zero-length and NaN final steps come from there).
FINALS = {
    "cosine-t_end": (COSINE, dict(grid="logsnr", t_start=COSINE.t_max, t_end=1e-3)),
    "cosine-denoise": (COSINE, dict(grid="logsnr", t_start=COSINE.t_max, t_end=1e-3, denoise_to_zero=True)),
    "zsnr-t_end": (ZSNR, dict(grid="logsnr", t_start=1.0, t_end=1e-3)),
    "zsnr-denoise": (ZSNR, dict(grid="karras", t_start=1.0, t_end=1e-3, denoise_to_zero=True)),
    "zsnr-to-zero": (ZSNR, dict(grid="linspace")),
}


def expected_nfe(solver, variant, steps, final_zero, denoise):
    n = {"heun": 2 * steps - (1 if final_zero else 0), "pndm": steps + (9 if variant == "pndm" else 1)}
    n = n.get(solver, steps)
    return n + (1 if denoise and not final_zero else 0)


@pytest.mark.parametrize("final", list(FINALS))
@pytest.mark.parametrize("cfg", CONFIGS, ids=_cfg_id)
def test_final_steps_finite_and_nfe(cfg, final):
    solver, opts = cfg
    order, method, variant = opts.get("order", 1), opts.get("method"), opts.get("variant")
    schedule, kw = FINALS[final]
    final_zero = final.endswith("to-zero")
    x = torch.randn(2, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    args = dict(schedule=schedule, solver=solver, **opts, **kw)
    for steps in range(1, 51):
        calls: list[torch.Tensor] = []
        if (method == "singlestep_fixed" and steps < order) or (variant == "pndm" and steps < 4):
            with pytest.raises(ValueError, match="steps"):
                cp.sample(smooth_eps(calls), x, steps=steps, **args)
            continue
        out = cp.sample(smooth_eps(calls), x, steps=steps, **args)
        assert torch.isfinite(out).all(), (steps, out)
        assert len(calls) == expected_nfe(solver, variant, steps, final_zero, kw.get("denoise_to_zero")), (
            steps
        )
        times = torch.stack([c[0] for c in calls])
        distinct = torch.unique_consecutive(times)
        # No zero-length step: model times never go back up, and only Heun/PLMS re-evaluate a time
        # (the next step's start, the Heun start of PLMS).
        assert bool((distinct[1:] < distinct[:-1]).all()), steps
        if solver not in ("heun", "pndm"):
            assert len(distinct) == len(times), steps


@pytest.mark.parametrize("final", ["cosine-t_end", "zsnr-t_end"])
@pytest.mark.parametrize("order", [2, 3])
def test_adaptive_finite(final, order):
    schedule, kw = FINALS[final]
    x = torch.randn(2, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    calls: list[torch.Tensor] = []
    out = cp.sample(
        gaussian_eps(schedule, calls),
        x,
        schedule=schedule,
        solver="dpmsolver++",
        order=order,
        method="adaptive",
        **kw,
    )
    assert torch.isfinite(out).all() and len(calls) % order == 0


# --- lower_order_final compat -------------------------------------------------------------------------


@pytest.mark.parametrize("steps", [8, 10, 12, 14, 16])
def test_lower_order_final_compat(steps):
    """Official DPM-Solver lowers the final orders below 10 steps, diffusers below 15: equal runs outside
    [10, 15), different ones inside."""
    sched = cp.schedules.VPLinear()
    x = torch.randn(3, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    model = gaussian_eps(sched, [])
    runs = {
        c: cp.sample(model, x, schedule=sched, order=3, steps=steps, t_end=1e-3, compat=c)
        for c in ("dpm-solver", "diffusers")
    }
    same = torch.equal(runs["dpm-solver"], runs["diffusers"])
    assert same == (not 10 <= steps < 15)


# --- bad input --------------------------------------------------------------------------------------


def _run(**kw):
    sched = cp.schedules.VPLinear()
    x = torch.randn(2, 3, dtype=torch.float64)
    args = dict(schedule=sched, steps=5, t_end=1e-3)
    args.update(kw)
    model = args.pop("model", gaussian_eps(sched, []))
    return cp.sample(model, x, **args)


@pytest.mark.parametrize(
    "order,error", [(0, ValueError), (4, ValueError), (2.0, TypeError), ("2", TypeError)]
)
def test_bad_order(order, error):
    with pytest.raises(error, match=r"solver 'dpmsolver\+\+': option order=.* allowed: one of \[1, 2, 3\]"):
        _run(order=order)


def test_too_few_steps_for_the_order():
    with pytest.raises(ValueError, match="steps must be >= order"):
        _run(order=3, method="singlestep_fixed", steps=2)
    with pytest.raises(ValueError, match="steps must be a positive int"):
        _run(steps=0)


@pytest.mark.parametrize(
    "ts",
    [[1.0, 0.5, 0.5, 0.1], [0.1, 0.5, 1.0], [[1.0, 0.2]], [1.0]],
    ids=["repeat", "increasing", "2d", "one"],
)
def test_timesteps_must_decrease(ts):
    with pytest.raises(ValueError, match="timesteps"):
        _run(timesteps=torch.tensor(ts, dtype=torch.float64))


def test_unknown_solver_lists_available():
    with pytest.raises(ValueError, match="unknown solver 'dpm\\+\\+'.*available:.*dpmsolver\\+\\+"):
        _run(solver="dpm++")
    names = cp.solvers.available()
    assert {"euler", "heun", "ddim", "dpmsolver", "dpmsolver++", "deis", "unipc", "pndm"} <= set(names)


def test_unknown_prediction():
    with pytest.raises(ValueError, match="unknown prediction 'noise_pred'"):
        _run(prediction="noise_pred")


def test_model_output_shape_checked():
    with pytest.raises(ValueError, match="model output must have the shape of x"):
        _run(model=lambda x, t: x[:, :2])


def test_other_bad_arguments():
    with pytest.raises(ValueError, match="unknown grid"):
        _run(grid="cosine")
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['method'\] for solver 'unipc'"):
        _run(solver="unipc", method="singlestep")
    with pytest.raises(ValueError, match="option method='rk4' is not allowed"):
        _run(method="rk4")
    with pytest.raises(ValueError, match="option variant='rk4' is not allowed"):
        _run(variant="rk4")
    with pytest.raises(TypeError, match="unknown option"):
        _run(solver="unipc", eta=1.0)
    with pytest.raises(ValueError, match="t_start must exceed t_end"):
        _run(t_start=0.1, t_end=0.5)
    with pytest.raises(ValueError, match="t_end must lie in"):
        _run(t_end=-0.1)
    with pytest.raises(ValueError, match="compat must be one of"):
        _run(compat="k-diffusion")
    with pytest.raises(TypeError, match="x_T must be a floating-point tensor"):
        cp.sample(lambda x, t: x, torch.zeros(2, 3, dtype=torch.long), schedule=cp.schedules.VPLinear())


# --- per-sample times ---------------------------------------------------------------------------------

PER_SAMPLE = [
    dict(solver="ddim"),
    dict(solver="dpmsolver++", order=2),
    dict(solver="dpmsolver++", order=3),
    dict(solver="dpmsolver", order=3, method="singlestep"),
    dict(solver="dpmsolver++", order=2, method="singlestep_fixed"),
    dict(solver="deis", order=3),
    dict(solver="unipc", order=3),
    dict(solver="euler"),
    dict(solver="heun", order=2),
    dict(solver="pndm", order=4),
]


@pytest.mark.parametrize("kw", PER_SAMPLE, ids=lambda kw: "-".join(str(v) for v in kw.values()))
@pytest.mark.parametrize("grid", ["logsnr", "karras", "time_uniform"])
def test_per_sample_times_equal_solo_runs(kw, grid):
    sched = cp.schedules.VPLinear()
    gm = cp.targets.GaussianMixture(torch.tensor([[1.0, -0.5], [-1.0, 0.4]]), 0.2)
    model = gm.model(sched, "eps")
    x = torch.randn(3, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    t0 = torch.tensor([1.0, 0.7, 0.85], dtype=torch.float64)
    t1 = torch.tensor([1e-3, 5e-3, 2e-2], dtype=torch.float64)
    seen = []

    def spy(x, t):
        seen.append(t)
        return model(x, t)

    batch = cp.sample(spy, x, schedule=sched, steps=9, grid=grid, t_start=t0, t_end=t1, **kw)
    assert seen[0].shape == (3,) and torch.equal(seen[0], t0)
    for b in range(3):
        solo = cp.sample(
            model,
            x[b : b + 1],
            schedule=sched,
            steps=9,
            grid=grid,
            t_start=float(t0[b]),
            t_end=float(t1[b]),
            **kw,
        )
        assert (batch[b] - solo[0]).abs().max().item() <= 1e-12


def test_per_sample_explicit_timesteps():
    sched = cp.schedules.VPLinear()
    ts = torch.stack(
        [
            torch.linspace(1.0, 1e-3, 7, dtype=torch.float64),
            torch.linspace(0.8, 1e-2, 7, dtype=torch.float64),
        ],
        1,
    )
    x = torch.randn(2, 4, dtype=torch.float64)
    model = gaussian_eps(sched, [])
    batch = cp.sample(model, x, schedule=sched, timesteps=ts, order=3)
    for b in range(2):
        solo = cp.sample(model, x[b : b + 1], schedule=sched, timesteps=ts[:, b], order=3)
        assert (batch[b] - solo[0]).abs().max().item() <= 1e-12


# --- precision ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize(
    "kw",
    [dict(solver="dpmsolver++", order=2), dict(solver="unipc", order=3), dict(solver="ddim")],
    ids=["dpmpp2m", "unipc3", "ddim"],
)
def test_low_precision_outputs(dtype, kw, request, report):
    """fp16/bf16 model outputs with float32 solver state stay within 1e-3 of a float64-state run of the
    same model: the solver adds no error of its own (state, coefficients and conversions in fp32 from
    float64 coefficients). The rounding of the model's outputs themselves is not the solver's and is
    reported separately (against the exact float64 model)."""
    sched = cp.schedules.VPLinear()
    gm = cp.targets.GaussianMixture(torch.tensor([[0.8, -0.4, 0.1], [-0.6, 0.5, -0.2]]), 0.3)
    exact = gm.model(sched, "eps")

    def low(x, t):
        return exact(x.double(), t.double()).to(dtype)

    x = torch.randn(64, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ref = cp.sample(low, x, schedule=sched, steps=20, t_end=1e-3, **kw)  # float64 state, same outputs
    out = cp.sample(low, x.float(), schedule=sched, steps=20, t_end=1e-3, **kw)
    assert out.dtype == torch.float32
    err = (out.double() - ref).abs().max().item()
    exact_run = cp.sample(exact, x, schedule=sched, steps=20, t_end=1e-3, **kw)
    report("low precision: solver error vs a float64-state run", request.node.callspec.id, err)
    total = (out.double() - exact_run).abs().max().item()
    report("low precision: error vs the exact float64 model", request.node.callspec.id, total)
    assert err <= 1e-3, err
