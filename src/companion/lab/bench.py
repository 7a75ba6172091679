"""Model calls to a tolerance: ours and the peers' implementations of the same algorithm, same model, same grid.

Used by ``benchmarks/nfe_to_tolerance.py`` (full suite, JSON and a table) and by the chapter "Which sampler
should I use?" (a small suite computed live). Every target is *exact*: a Gaussian mixture with closed-form
eps (a 2-D ring, a 64-D mixture fitted to sklearn's digits, the same digits classes under classifier-free
guidance), whose reference is the float64 DOP853 solution of the probability-flow ODE, or the shipped
digits UNet, whose reference is a 1000-step float64 run (third-order DPM-Solver++ and UniPC-3 at 1000
steps agree to the printed ``ref_spread``).

All runs share the discrete 1000-step linear-beta schedule diffusers uses (the UNet: its continuous
VPLinear sampled at the 1000 knots), start at t = 1 and end at the first training step t = 1/1000
(sigma > 0: diffusers' ``final_sigmas_type="sigma_min"``, DDIM's ``set_alpha_to_one=False``), so that the
reference is one ODE solution for every algorithm. For each algorithm the grid is the peer scheduler's own
(diffusers' sigmas or timesteps for n steps); ours runs on that grid with its defaults. Peers:

* diffusers: DDIMScheduler, DPMSolverMultistepScheduler (orders 2, 3), UniPCMultistepScheduler (order 2),
  EulerDiscreteScheduler (Euler in x/alpha over sigma/alpha, Karras et al. 2022);
* torchdiffeq ``odeint`` and flow_matching's ``ODESolver`` (methods ``euler`` and ``heun2``) on the same
  variables and grid (y = x/alpha over rho = sigma/alpha);
* k-diffusion is not installed: see :data:`SKIPPED`.

Errors are relative RMS, ``rms(x - ref) / rms(ref)`` over the batch.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .. import schedules as S
from ..sampling import sample
from ..targets import ClassConditionalMixture, GaussianMixture

__all__ = [
    "ALGORITHMS",
    "SKIPPED",
    "TOLERANCES",
    "Target",
    "available_peers",
    "fewest_nfe",
    "interleaved",
    "make_targets",
    "overhead",
    "ring",
    "relative_rms",
    "run_suite",
]

#: the three tolerances on the relative RMS error
TOLERANCES = (5e-2, 1e-2, 2e-3)

#: peers we do not run, with the reason (printed by the benchmark and the chapter)
SKIPPED = {
    "k-diffusion": "k-diffusion 0.1.1.post1 installs with torch 2.13.0 only with ~40 further packages "
    "(wandb, clip-anytorch, kornia, torchvision, scikit-image) and downgrades numpy to 1.26.4 against the "
    "lock's 2.4.6; its samplers are not worth that as a test dependency",
}

N_TRAIN = 1000
T_END = 1.0 / N_TRAIN


@dataclass
class Target:
    """An exact target: eps model on ``schedule``, initial noise ``x_T`` at t = 1 and the float64 solution
    ``ref`` at t = 1/1000."""

    name: str
    schedule: S.VPDiscrete
    model: Callable[[Tensor, Tensor], Tensor]
    x_T: Tensor
    ref: Tensor
    note: str = ""
    ref_spread: float = 0.0
    seconds: float = 0.0


def relative_rms(x: Tensor, ref: Tensor) -> float:
    d = (x.to(torch.float64) - ref.to(torch.float64)).reshape(x.shape[0], -1)
    r = ref.to(torch.float64).reshape(ref.shape[0], -1)
    if not bool(torch.isfinite(d).all()):
        return float("inf")
    return float(d.pow(2).sum(1).mean().sqrt() / r.pow(2).sum(1).mean().sqrt())


def ring(k: int = 8, radius: float = 2.0, var: float = 0.1) -> GaussianMixture:
    """The 2-D target: ``k`` equal Gaussians of variance ``var`` on a circle of ``radius``."""
    ang = torch.arange(k, dtype=torch.float64) * (2 * math.pi / k)
    mu = radius * torch.stack([torch.cos(ang), torch.sin(ang)], 1)
    return GaussianMixture(mu, var)


def _digits_classes() -> list[GaussianMixture]:
    """One diagonal Gaussian per digit class, fitted (moments) to sklearn's digits in [-1, 1]."""
    from .data.digits import digits

    x, y = digits("all")
    x = x.reshape(x.shape[0], -1).to(torch.float64)
    out = []
    for c in range(10):
        xc = x[y == c]
        out.append(GaussianMixture(xc.mean(0, keepdim=True), (xc.var(0) + 1e-2)[None]))
    return out


def _pf_reference(model, x_T: Tensor, schedule) -> Tensor:
    from ..reference import solve_pf_ode

    return solve_pf_ode(model, x_T, schedule, 1.0, T_END, rtol=1e-11, atol=1e-11)


def _discrete(schedule) -> S.VPDiscrete:
    t = torch.arange(1, N_TRAIN + 1, dtype=torch.float64) / N_TRAIN
    return S.VPDiscrete(alphas_cumprod=schedule.alpha(t) ** 2)


def make_targets(
    names: Sequence[str], batch: int = 64, unet_batch: int = 16, seed: int = 0, guidance=(1.0, 3.0, 7.5)
) -> list[Target]:
    """The targets among ``mixture-2d``, ``digits-64d``, ``guided`` (one per guidance scale) and ``unet``."""
    sched = S.VPDiscrete.linear(N_TRAIN)
    g = torch.Generator().manual_seed(seed)
    out: list[Target] = []
    for name in names:
        t0 = time.perf_counter()
        if name == "mixture-2d":
            gm = ring()
            x_T = torch.randn(batch, 2, generator=g, dtype=torch.float64)
            model = gm.model(sched, "eps")
            out.append(Target(name, sched, model, x_T, _pf_reference(model, x_T, sched), "8-component ring"))
        elif name == "digits-64d":
            gm = GaussianMixture(
                torch.cat([c.means for c in _digits_classes()]),
                torch.cat([c.eigvals for c in _digits_classes()]),
            )
            x_T = torch.randn(batch, 64, generator=g, dtype=torch.float64)
            model = gm.model(sched, "eps")
            out.append(
                Target(name, sched, model, x_T, _pf_reference(model, x_T, sched), "10 diagonal Gaussians")
            )
        elif name == "guided":
            ccm = ClassConditionalMixture(_digits_classes())
            labels = torch.arange(batch) % 10
            x_T = torch.randn(batch, 64, generator=g, dtype=torch.float64)
            for w in guidance:
                model = ccm.model(sched, labels, "eps", guidance_scale=w)
                out.append(
                    Target(
                        f"guided-w{w:g}",
                        sched,
                        model,
                        x_T,
                        _pf_reference(model, x_T, sched),
                        f"digits classes, CFG scale {w:g}",
                    )
                )
        elif name == "unet":
            from .models import load

            net = load("digits-unet-eps").to(torch.float64)
            disc = _discrete(net.schedule)
            x_T = torch.randn(unet_batch, 1, 8, 8, generator=g, dtype=torch.float64)

            def model(x, t, net=net):
                with torch.no_grad():
                    return net.cond(None)(x, t)

            ts = _rho_times(disc, 1000)
            with torch.no_grad():
                ref = sample(model, x_T, schedule=disc, timesteps=ts, solver="dpmsolver++", order=3)
                alt = sample(model, x_T, schedule=disc, timesteps=ts, solver="unipc", order=3)
            out.append(
                Target(
                    name,
                    disc,
                    model,
                    x_T,
                    ref,
                    "shipped digits UNet (eps), 1000-step float64 reference",
                    relative_rms(alt, ref),
                )
            )
        else:
            raise ValueError(f"unknown target {name!r}")
        out[-1].seconds = time.perf_counter() - t0
    return out


def _rho_times(schedule: S.VPDiscrete, n: int) -> Tensor:
    """n steps uniform in log-SNR from t = 1 to t = 1/1000 (the reference grid)."""
    from ..grids import get_grid

    return get_grid("logsnr", schedule, n, 1.0, T_END)


# --- peers ---------------------------------------------------------------------------------------------


def available_peers() -> dict[str, str | None]:
    """{peer: version or None when not importable}."""
    out: dict[str, str | None] = {}
    for mod, name in (
        ("diffusers", "diffusers"),
        ("torchdiffeq", "torchdiffeq"),
        ("flow_matching", "flow_matching"),
    ):
        try:
            m = __import__(mod)
            out[name] = getattr(m, "__version__", "?")
        except ImportError:
            out[name] = None
    return out


class _Counted:
    def __init__(self, model):
        self.model, self.calls = model, 0

    def __call__(self, x, t):
        self.calls += 1
        return self.model(x, t)


def _diffusers_scheduler(cls_name: str, cfg: dict, n: int):
    import diffusers

    sch = getattr(diffusers, cls_name)(beta_schedule="linear", **cfg)
    sch.set_timesteps(n, device="cpu")
    return sch


def _sigma_grid(sch, schedule) -> Tensor:
    from ..adapters.diffusers import times_from_sigmas

    return times_from_sigmas(sch.sigmas.to(torch.float64), schedule)


def _ddim_grid(sch, schedule) -> Tensor:
    from ..adapters.diffusers import times_from_timesteps

    return times_from_timesteps(sch.timesteps, schedule, final=T_END)


def _run_diffusers_sigma(sch, model, x_T, grid, schedule):
    """Drive a sigma-based diffusers scheduler on its own grid; the model sees the VP x at our time."""
    sch.sigmas = sch.sigmas.to(torch.float64)
    x = x_T * sch.init_noise_sigma if sch.init_noise_sigma != 1.0 else x_T.clone()
    B = x_T.shape[0]
    for i, t in enumerate(sch.timesteps):
        xin = sch.scale_model_input(x, t)
        x = sch.step(model(xin, grid[i].expand(B)), t, x).prev_sample
    if sch.init_noise_sigma != 1.0:  # Euler keeps x / alpha: back to the VP state
        x = x * schedule.alpha(grid[-1])
    return x


def _run_diffusers_ddim(sch, model, x_T, grid, schedule):
    x = x_T.clone()
    B = x_T.shape[0]
    for i, t in enumerate(sch.timesteps):
        x = sch.step(model(x, grid[i].expand(B)), t, x, eta=0.0).prev_sample
    return x


def _rho_problem(model, x_T, grid, schedule):
    """(f(rho, y), y0, rho grid, back) for the ODE dy/drho = eps(alpha y, t(rho)) in y = x/alpha."""
    B = x_T.shape[0]
    rho = torch.exp(-schedule.lambda_(grid))

    def f(r, y):
        lam = -torch.log(torch.as_tensor(r, dtype=torch.float64))
        t = schedule.t_of_lambda(lam).clamp(schedule.t_min, schedule.t_max)
        return model(schedule.alpha(t) * y, t.expand(B))

    y0 = x_T / schedule.alpha(grid[0])
    return f, y0, rho, lambda y: y * schedule.alpha(grid[-1])


def _run_torchdiffeq(method):
    def run(model, x_T, grid, schedule):
        from torchdiffeq import odeint

        f, y0, rho, back = _rho_problem(model, x_T, grid, schedule)
        return back(odeint(f, y0, rho, method=method)[-1])

    return run


def _run_flow_matching(method):
    def run(model, x_T, grid, schedule):
        from flow_matching.solver import ODESolver
        from flow_matching.utils import ModelWrapper

        f, y0, rho, back = _rho_problem(model, x_T, grid, schedule)

        class Velocity(ModelWrapper):
            def forward(self, x, t, **extras):
                return f(t, x)

        solver = ODESolver(velocity_model=Velocity(torch.nn.Identity()))
        return back(solver.sample(x_init=y0, step_size=None, method=method, time_grid=rho))

    return run


@dataclass
class Algorithm:
    """One algorithm: ours (``companion.sample`` options), the grid's scheduler, and the peers' runners."""

    label: str
    ours: dict
    scheduler: tuple[str, dict]
    grid: str  # "sigma" or "ddim"
    peers: dict[str, Callable] = field(default_factory=dict)
    nfe_per_step: int = 1
    #: why ours is not the peers' formula under the same name ("" when it is): such a row is shown beside
    #: the peers but is not a same-algorithm comparison
    differs: str = ""


def _diffusers_peer(kind: str):
    def run(model, x_T, grid, schedule, sch):
        if kind == "ddim":
            return _run_diffusers_ddim(sch, model, x_T, grid, schedule)
        return _run_diffusers_sigma(sch, model, x_T, grid, schedule)

    run.needs_scheduler = True  # type: ignore[attr-defined]
    return run


_SIGMA_MIN = {"final_sigmas_type": "sigma_min", "timestep_spacing": "trailing"}

ALGORITHMS: dict[str, Algorithm] = {
    "ddim": Algorithm(
        "DDIM",
        dict(solver="ddim"),
        ("DDIMScheduler", dict(timestep_spacing="trailing", set_alpha_to_one=False, clip_sample=False)),
        "ddim",
        {"diffusers": _diffusers_peer("ddim")},
    ),
    "dpmpp2m": Algorithm(
        "DPM-Solver++(2M)",
        dict(solver="dpmsolver++", order=2),
        ("DPMSolverMultistepScheduler", dict(solver_order=2, **_SIGMA_MIN)),
        "sigma",
        {"diffusers": _diffusers_peer("sigma")},
    ),
    "dpmpp3m": Algorithm(
        "DPM-Solver++(3M), ours exact",
        dict(solver="dpmsolver++", order=3),
        ("DPMSolverMultistepScheduler", dict(solver_order=3, **_SIGMA_MIN)),
        "sigma",
        {"diffusers": _diffusers_peer("sigma")},
        differs="ours is the exact third-order step; diffusers' is the shipped second-order formula "
        "(ours: variant='legacy', row dpmpp3m-legacy)",
    ),
    # diffusers' (and the official code's) third-order step, which is second order (docs/findings/dpmpp_3m.md):
    # the same formula as ours with variant="legacy", so this row compares like with like; "dpmpp3m" above
    # sets our corrected step against it.
    "dpmpp3m-legacy": Algorithm(
        "DPM-Solver++(3M), shipped formula",
        dict(solver="dpmsolver++", order=3, variant="legacy"),
        ("DPMSolverMultistepScheduler", dict(solver_order=3, **_SIGMA_MIN)),
        "sigma",
        {"diffusers": _diffusers_peer("sigma")},
    ),
    "dpm2m": Algorithm(
        "DPM-Solver(2M), noise prediction",
        dict(solver="dpmsolver", order=2),
        ("DPMSolverMultistepScheduler", dict(solver_order=2, algorithm_type="dpmsolver", **_SIGMA_MIN)),
        "sigma",
        {"diffusers": _diffusers_peer("sigma")},
    ),
    "unipc2": Algorithm(
        "UniPC-2 (bh2)",
        dict(solver="unipc", order=2),
        ("UniPCMultistepScheduler", dict(solver_order=2, **_SIGMA_MIN)),
        "sigma",
        {"diffusers": _diffusers_peer("sigma")},
    ),
    "euler": Algorithm(
        "Euler (x/alpha in sigma/alpha)",
        dict(solver="euler", variable="rho"),
        ("EulerDiscreteScheduler", dict(_SIGMA_MIN)),
        "sigma",
        {
            "diffusers": _diffusers_peer("sigma"),
            "torchdiffeq": _run_torchdiffeq("euler"),
            "flow_matching": _run_flow_matching("euler"),
        },
    ),
    "heun": Algorithm(
        "Heun (x/alpha in sigma/alpha)",
        dict(solver="heun", variable="rho"),
        ("EulerDiscreteScheduler", dict(_SIGMA_MIN)),
        "sigma",
        {"torchdiffeq": _run_torchdiffeq("heun2"), "flow_matching": _run_flow_matching("heun2")},
        nfe_per_step=2,
    ),
}


def _grid_for(alg: Algorithm, n: int, schedule):
    sch = _diffusers_scheduler(alg.scheduler[0], alg.scheduler[1], n)
    grid = _ddim_grid(sch, schedule) if alg.grid == "ddim" else _sigma_grid(sch, schedule)
    return sch, grid


def run_suite(
    targets: Sequence[Target],
    algorithms: Sequence[str],
    nfe_list: Sequence[int],
    peers: Sequence[str] | None = None,
    progress: bool = True,
) -> dict:
    """For each target, algorithm and implementation (``ours`` and each available peer), the relative RMS
    error at each NFE of ``nfe_list`` (steps = NFE / nfe_per_step). Returns a JSON-ready dict."""
    avail = {k: v for k, v in available_peers().items() if v is not None}
    use = set(avail) if peers is None else set(peers) & set(avail)
    from tqdm.auto import tqdm

    out: dict = {"tolerances": list(TOLERANCES), "peers": avail, "skipped": dict(SKIPPED), "targets": {}}
    jobs = [(tg, a) for tg in targets for a in algorithms]
    for tg, a in tqdm(jobs, desc="nfe_to_tolerance", disable=not progress):
        alg = ALGORITHMS[a]
        rec = (
            out["targets"]
            .setdefault(tg.name, {"note": tg.note, "ref_spread": tg.ref_spread, "algorithms": {}})[
                "algorithms"
            ]
            .setdefault(a, {"label": alg.label, "curves": {}})
        )
        impls = {"ours": None} | {p: r for p, r in alg.peers.items() if p in use}
        for impl, runner in impls.items():
            pts = []
            for nfe in nfe_list:
                n = nfe // alg.nfe_per_step
                if n < 2:
                    continue
                sch, grid = _grid_for(alg, n, tg.schedule)
                counted = _Counted(tg.model)
                with torch.no_grad():
                    if runner is None:
                        x = sample(counted, tg.x_T, schedule=tg.schedule, timesteps=grid, **alg.ours)
                    elif getattr(runner, "needs_scheduler", False):
                        x = runner(counted, tg.x_T, grid, tg.schedule, sch)
                    else:
                        x = runner(counted, tg.x_T, grid, tg.schedule)
                pts.append((counted.calls, relative_rms(x, tg.ref)))
            rec["curves"][impl] = {"nfe": [p[0] for p in pts], "err": [p[1] for p in pts]}
            rec["curves"][impl]["to_tol"] = {
                f"{tol:g}": fewest_nfe(rec["curves"][impl], tol) for tol in TOLERANCES
            }
    return out


def fewest_nfe(curve: dict, tol: float) -> int | None:
    """The fewest model calls among the measured ones whose error is at most ``tol`` (None: never)."""
    ok = [n for n, e in zip(curve["nfe"], curve["err"], strict=True) if e <= tol]
    return min(ok) if ok else None


# --- per-step overhead against diffusers and the memory floor (the chapter's live version of
# benchmarks/solver_overhead.py) -------------------------------------------------------------------------

#: state-sized tensors a step must read + write: DDIM x, out -> x (3); 2M also the previous prediction in and
#: the new one out (5); UniPC-2 x_{i-1}, predicted x_i, out, two predictions in, corrected x_i, x_{i+1} and
#: the new prediction out (8)
FLOOR_UNITS = {"dpmpp2m": 5, "unipc2": 8, "ddim": 3}


def interleaved(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median wall time of each function, run in turn A B A B ... ``repeats`` times after a warm-up, so that
    a shared machine's load hits all of them alike."""
    for f in fns.values():
        f()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def overhead(shape: Sequence[int] = (64, 3, 64, 64), steps: int = 20, repeats: int = 5) -> dict:
    """Per-step time of ours, diffusers' ``step`` and a memory-floor run (``copy_`` moving the bytes a step
    must read and write), interleaved ours, theirs, floor, ours, ... with the median kept; the model returns
    a precomputed tensor. One thread. Returns {algorithm: {ours_ms, diffusers_ms, floor_ms, ratio,
    ours_over_floor, diffusers_over_floor}}."""

    import diffusers

    from ..adapters.diffusers import schedule_from_scheduler, times_from_sigmas, times_from_timesteps

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        g = torch.Generator().manual_seed(0)
        x_T = torch.randn(tuple(shape), generator=g)
        eps = torch.randn(tuple(shape), generator=g) * 0.1
        cfgs = {
            "dpmpp2m": (
                "DPMSolverMultistepScheduler",
                dict(solver_order=2),
                dict(solver="dpmsolver++", order=2),
            ),
            "unipc2": ("UniPCMultistepScheduler", dict(solver_order=2), dict(solver="unipc", order=2)),
            "ddim": ("DDIMScheduler", dict(clip_sample=False), dict(solver="ddim")),
        }
        out = {}
        for name, (cls, cfg, kw) in cfgs.items():
            sch = getattr(diffusers, cls)(beta_schedule="linear", **cfg)
            sched = schedule_from_scheduler(sch)
            sch.set_timesteps(steps, device="cpu")
            if name == "ddim":
                grid = times_from_timesteps(sch.timesteps, sched, final=0.0)
                compat = None
            else:
                grid = times_from_sigmas(sch.sigmas, sched)
                compat = "diffusers"

            def model(x, t):
                return eps

            def ours(sched=sched, grid=grid, kw=kw, compat=compat):
                sample(model, x_T, schedule=sched, prediction="eps", timesteps=grid, compat=compat, **kw)

            def theirs(sch=sch):
                sch.set_timesteps(steps, device="cpu")
                x = x_T * sch.init_noise_sigma
                for t in sch.timesteps:
                    x = sch.scale_model_input(x, t)
                    x = sch.step(eps, t, x).prev_sample

            src, dst = x_T.clone(), torch.empty_like(x_T)
            copies = steps * FLOOR_UNITS[name] // 2
            half = FLOOR_UNITS[name] % 2

            def floor(src=src, dst=dst, copies=copies, half=half):
                for _ in range(copies):
                    dst.copy_(src)
                for _ in range(half * steps // 2):  # an odd unit count: half a copy per step
                    dst.copy_(src)

            med = interleaved({"ours": ours, "diffusers": theirs, "floor": floor}, repeats)
            med = {k: v / steps for k, v in med.items()}
            out[name] = {
                "ours_ms": 1e3 * med["ours"],
                "diffusers_ms": 1e3 * med["diffusers"],
                "floor_ms": 1e3 * med["floor"],
                "ratio": med["ours"] / med["diffusers"],
                "ours_over_floor": med["ours"] / med["floor"],
                "diffusers_over_floor": med["diffusers"] / med["floor"],
            }
        return out
    finally:
        torch.set_num_threads(threads)
