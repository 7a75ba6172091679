"""GPU readiness: sampling loops free of host-device syncs, and per-step overhead against a 1 ms model.

Two checks on a CUDA device, in one run:

1. Every fixed-grid solver runs a whole sampling loop under ``torch.cuda.set_sync_debug_mode("warn")``,
   which reports each host-device synchronisation (``.item()``, ``if tensor:``, a device-to-host copy)
   with the line it came from; a loop found sync-free runs again under ``"error"``, which must raise
   nothing. The
   adaptive DPM-Solver is listed too: its accept/reject decision needs the error norm on the host, so
   it is expected to sync once per step (reported, not an error).
2. Per-step overhead: the model is a GPU kernel that spins for ``--model-ms`` and returns a precomputed
   tensor, so the wall time of a sampling run minus ``steps`` model calls is what the solver adds. The
   same is measured for the diffusers scheduler's ``step`` on the same grid when diffusers is importable.

Usage (on a CUDA machine; ``--device cpu`` is a dry run that skips the sync check):

    PYTHONPATH=src python benchmarks/gpu_readiness.py [--steps 20] [--model-ms 1.0] [--shape 64 3 64 64]

The last line reads ``gpu overhead ms/step vs <m> ms model: dpmpp2m=... unipc=... ddim=...; sync-free: K/N``.
"""

from __future__ import annotations

import argparse
import time
import traceback
import warnings

import torch

import companion as cp
from companion import parameterization as P
from companion.adapters import diffusers as adapter

#: (label, cp.sample keyword arguments). Stochastic ones draw from per-sample seeds (batch-invariant noise).
CONFIGS = [
    ("dpmsolver++ 2M", dict(solver="dpmsolver++", order=2)),
    ("dpmsolver++ 3M", dict(solver="dpmsolver++", order=3)),
    ("dpmsolver++ 2S", dict(solver="dpmsolver++", order=2, method="singlestep")),
    ("dpmsolver 3 singlestep", dict(solver="dpmsolver", order=3, method="singlestep")),
    ("unipc bh2 2 + UniC", dict(solver="unipc", order=2)),
    ("unipc bh1 3 + UniC", dict(solver="unipc", order=3, variant="bh1")),
    ("deis 3", dict(solver="deis", order=3)),
    ("ddim", dict(solver="ddim")),
    ("euler", dict(solver="euler")),
    ("heun", dict(solver="heun")),
    ("pndm", dict(solver="pndm")),
    ("euler-maruyama", dict(solver="euler-maruyama", per_sample=True)),
    ("ancestral", dict(solver="ancestral", per_sample=True)),
    ("ancestral sigma^2=beta", dict(solver="ancestral", variance="large", per_sample=True)),
    ("ddim eta=1", dict(solver="ddim", eta=1.0, per_sample=True)),
    ("sde-dpmsolver++ 2M", dict(solver="sde-dpmsolver++", order=2, per_sample=True)),
    ("pc", dict(solver="pc", per_sample=True)),
    ("interpolant eps=1", dict(solver="interpolant", per_sample=True)),
    ("dpmsolver adaptive 23 (syncs by design)", dict(solver="dpmsolver", order=3, method="adaptive")),
]


def spin_model(eps: torch.Tensor, ms: float):
    """A model whose GPU time is ``ms`` milliseconds (a spinning kernel) returning ``eps``."""
    if eps.device.type != "cuda":

        def cpu_model(x, t):
            time.sleep(ms / 1e3)
            return eps

        return cpu_model
    probe = 1_000_000
    torch.cuda._sleep(probe)  # warm-up
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    torch.cuda._sleep(probe)
    end.record()
    torch.cuda.synchronize()
    cycles = int(probe * ms / start.elapsed_time(end))

    def model(x, t):
        torch.cuda._sleep(cycles)
        return eps

    return model


def sync_sites(fn):
    """Run ``fn`` with CUDA sync warnings on; return its result and {companion file:line: count}."""
    sites: dict[str, int] = {}
    shown = warnings.showwarning

    def record(message, category, filename, lineno, file=None, line=None):
        if "synchroniz" not in str(message):  # other warnings (deprecations, ...) are not syncs
            return
        frames = [f for f in traceback.extract_stack() if "/src/companion/" in f.filename.replace("\\", "/")]
        key = (
            f"{frames[-1].filename.rsplit('/', 1)[-1]}:{frames[-1].lineno}" if frames else "outside companion"
        )
        sites[key] = sites.get(key, 0) + 1

    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = record
            out = fn()
    finally:
        torch.cuda.set_sync_debug_mode(0)
        warnings.showwarning = shown
    return out, sites


def raises_under_error_mode(run) -> str | None:
    """Run ``run()`` under ``torch.cuda.set_sync_debug_mode("error")``: the error text if it raised, else None."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        run()
        return None
    except RuntimeError as err:
        return str(err).splitlines()[0]
    finally:
        torch.cuda.set_sync_debug_mode(0)
        torch.cuda.synchronize()


def check_sync(label: str, run, device: torch.device) -> bool:
    """Print whether ``run()`` syncs the host (on CUDA) and whether its output is finite; True when sync-free.
    A run found sync-free is repeated under the "error" debug mode, which must raise nothing. On the CPU it is
    a dry run: the loop runs, but syncs cannot be detected."""
    if device.type != "cuda":
        print(f"sync check  {label:40s} ran (not CUDA), finite={bool(torch.isfinite(run()).all())}")
        return False
    out, sites = sync_sites(run)
    if sites:
        verdict, raised = f"SYNC x{sum(sites.values())} at " + "; ".join(sites), "not tried"
    else:
        raised = raises_under_error_mode(run)
        verdict = 'no sync, mode "error" ' + ("raised nothing" if raised is None else f"RAISED: {raised}")
    print(f"sync check  {label:40s} {verdict}, finite={bool(torch.isfinite(out).all())}")
    return not sites and raised is None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def best_time(fn, device: torch.device, repeats: int) -> float:
    fn()
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def first_call_s(run, device: torch.device, clear: bool, repeats: int = 5) -> float:
    """Median seconds from calling ``run(model=...)`` to its first model call, the coefficient cache
    cleared before each (``clear``) or warm."""
    from companion.solvers import cache

    got: list[float] = []
    run()  # warm-up (and a warm cache)
    for _ in range(repeats):
        if clear:
            cache.clear()
        _sync(device)
        t0 = time.perf_counter()
        stamp: dict[str, float] = {}
        run(first=stamp)
        got.append(stamp["t"] - t0)
    got.sort()
    return got[len(got) // 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--model-ms", type=float, default=1.0)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--shape", type=int, nargs="+", default=[64, 3, 64, 64])
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible (use --device cpu for a dry run)")
    dev = torch.device(args.device)
    warnings.filterwarnings("ignore")
    n = args.steps
    g = torch.Generator(device=dev).manual_seed(0)
    x_T = torch.randn(args.shape, generator=g, device=dev)
    eps = torch.randn(args.shape, generator=g, device=dev) * 0.1
    model = spin_model(eps, args.model_ms)
    sched = cp.schedules.VPDiscrete.linear()
    seeds = cp.noise.PerSampleNoise(list(range(args.shape[0])))
    print(
        f"device {torch.cuda.get_device_name() if dev.type == 'cuda' else 'cpu'}, torch {torch.__version__}"
    )

    # 1. sync-free sampling loops
    if dev.type == "cuda":  # the detector must see a sync we know of
        _, probe = sync_sites(lambda: x_T.sum().item())
        print(f"sync detector self-test (.item()): {sum(probe.values())} sync(s) seen")
    free = 0
    for label, kw in CONFIGS:
        kw = dict(kw)
        if kw.pop("per_sample", False):
            kw["noise"] = seeds
        run = lambda kw=kw: cp.sample(model, x_T, schedule=sched, prediction="eps", steps=n, t_end=1e-3, **kw)  # noqa: E731
        free += check_sync(label, run, dev) and "adaptive" not in label
    checked = sum("adaptive" not in label for label, _ in CONFIGS) if dev.type == "cuda" else 0

    # A trained network through classifier-free guidance (labels moved to the device once, not per step),
    # with and without dynamic thresholding.
    net = cp.lab.models.load("digits-unet-eps", device=dev).to(torch.float32)
    y = torch.arange(64, device=dev) % 10
    x_d = torch.randn(64, 1, 8, 8, generator=g, device=dev)
    for label, x0_fn in (
        ("digits UNet, CFG w=4, dpmsolver++ 2M", None),
        ("  + dynamic thresholding", P.dynamic_threshold),
    ):
        guided = net.cond(y, guidance=4.0)
        run = lambda guided=guided, x0_fn=x0_fn: cp.sample(  # noqa: E731
            guided,
            x_d,
            schedule=net.schedule,
            prediction=net.prediction,
            steps=10,
            t_start=1.0,
            t_end=1e-3,
            x0_fn=x0_fn,
        )
        with torch.no_grad():
            check_sync(label, run, dev)

    # 2. per-sample noise: sample i of a batch of 7 equals the same sample drawn alone, on this device
    def rowwise(x, t):  # a row-wise model, so that any batch dependence would come from the solver
        return 0.5 * torch.tanh(x) + 0.1 * t.reshape((-1,) + (1,) * (x.dim() - 1)).to(x.dtype)

    worst = 0.0
    for label, kw in CONFIGS:
        kw = dict(kw)
        if not kw.pop("per_sample", False):
            continue
        batch = cp.noise.PerSampleNoise(list(range(7)))
        xb = batch.randn(*args.shape[1:], device=dev)
        full = cp.sample(rowwise, xb, schedule=sched, steps=n, t_end=1e-3, noise=batch, **kw)
        solo_noise = cp.noise.PerSampleNoise([3])
        solo = cp.sample(
            rowwise,
            solo_noise.randn(*args.shape[1:], device=dev),
            schedule=sched,
            steps=n,
            t_end=1e-3,
            noise=solo_noise,
            **kw,
        )
        diff = float((full[3] - solo[0]).abs().max())
        worst = max(worst, diff)
        print(f"batch invariance  {label:22s} max |row 3 of 7 - solo| = {diff:.1e}")
    print(
        f"batch invariance on {dev.type}: worst {worst:.1e} ({'bit for bit' if worst == 0 else 'NOT bit for bit'})"
    )

    # 3. overhead per step against the spinning model
    def model_only():
        for _ in range(n):
            model(x_T, None)

    t_model = best_time(model_only, dev, args.repeats) / n
    print(f"model alone: {1e3 * t_model:.3f} ms per call (target {args.model_ms} ms)")
    try:
        import diffusers
    except ImportError as err:  # the device image may lack it; ours is still measured
        diffusers = None
        print(f"diffusers not importable ({err}); measuring ours only")

    cases = {
        "dpmpp2m": ("DPMSolverMultistepScheduler", dict(solver_order=2), dict(solver="dpmsolver++", order=2)),
        "unipc": ("UniPCMultistepScheduler", dict(solver_order=2), dict(solver="unipc", order=2)),
        "ddim": ("DDIMScheduler", dict(clip_sample=False), dict(solver="ddim", order=1)),
    }
    ours_over = {}
    for name, (cls, cfg, kw) in cases.items():
        if diffusers is not None:
            sch = getattr(diffusers, cls)(beta_schedule="linear", **cfg)
            sch.set_timesteps(n, device=dev)
            s = adapter.schedule_from_scheduler(sch)
            if name == "ddim":
                grid = adapter.times_from_timesteps(sch.timesteps.cpu(), s, final=0.0)
            else:
                grid = adapter.times_from_sigmas(sch.sigmas.cpu(), s)
            compat = None if name == "ddim" else "diffusers"
        else:
            sch, s, compat = None, sched, None
            grid = cp.grids.get_grid("logsnr", s, n, None, 1e-3, 7.0)

        def ours(s=s, grid=grid, kw=kw, compat=compat, first=None):
            m = model
            if first is not None:

                def m(x, t):
                    first.setdefault("t", time.perf_counter())
                    return model(x, t)

            return cp.sample(m, x_T, schedule=s, prediction="eps", timesteps=grid, compat=compat, **kw)

        t_ours = best_time(ours, dev, args.repeats) / n
        ours_over[name] = t_ours - t_model
        # Split our overhead into a one-off set-up (coefficients computed in float64 on the host before the
        # first model call, while the GPU idles) and a per-step part, from runs of n and 3n steps.
        t1, t3 = (
            best_time(
                lambda k=k, kw=kw: cp.sample(
                    model,
                    x_T,
                    schedule=sched,
                    timesteps=cp.grids.get_grid("logsnr", sched, k, None, 1e-3),
                    **kw,
                ),
                dev,
                3,
            )
            for k in (n, 3 * n)
        )
        per = (t3 - t1) / (2 * n) - t_model
        # Set-up before the first model call, with the coefficient cache cleared and warm
        # (companion.solvers.cache): the cached tables are what a repeated 20-step call pays.
        cold, warm = (first_call_s(ours, dev, clear) for clear in (True, False))
        line = (
            f"{name:8s} per step: ours {1e3 * t_ours:7.3f} ms (overhead {1e3 * (t_ours - t_model):6.3f} ms"
            f" = set-up {1e3 * (t1 - n * (t_model + per)):.2f} ms once + {1e3 * per:.3f} ms/step;"
            f" to first model call: cache cold {1e3 * cold:.2f} ms, warm {1e3 * warm:.2f} ms)"
        )
        if sch is not None:

            def theirs(sch=sch):
                sch.set_timesteps(n, device=dev)
                x = x_T * sch.init_noise_sigma
                for t in sch.timesteps:
                    x = sch.scale_model_input(x, t)
                    x = sch.step(model(x, t), t, x).prev_sample
                return x

            t_theirs = best_time(theirs, dev, args.repeats) / n
            synced = str(sum(sync_sites(theirs)[1].values())) if dev.type == "cuda" else "n/a"
            line += (
                f"  diffusers {1e3 * t_theirs:7.3f} ms (overhead {1e3 * (t_theirs - t_model):6.3f} ms, "
                f"host syncs per run: {synced})"
            )
        print(line)
    print(f"shape {tuple(args.shape)} float32, {n} steps")
    print(
        f"gpu overhead ms/step vs {args.model_ms:g} ms model: "
        + " ".join(f"{k}={1e3 * v:.3f}" for k, v in ours_over.items())
        + f"; sync-free: {free}/{checked}"
    )


if __name__ == "__main__":
    main()
