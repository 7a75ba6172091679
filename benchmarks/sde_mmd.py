"""MMD^2 to exact samples of stochastic and ODE solvers at equal NFE on a 2-D Gaussian mixture.

Not a timing benchmark: sample quality at 10 and 20 model evaluations, exact scores, VP-linear schedule,
logSNR grid from t = 1 to 1e-3, x_T drawn from the exact p_1, per-sample seeds. Predictor-corrector costs
2 NFE per step, so it runs NFE/2 steps.

    PYTHONPATH=src python benchmarks/sde_mmd.py [--n 4000] [--seed 0]
"""

from __future__ import annotations

import argparse

import torch

import companion as cp
from companion.lab import metrics
from companion.noise import PerSampleNoise
from companion.targets import GaussianMixture

SOLVERS = [  # (label, solver, options, NFE per step)
    ("Euler-Maruyama", "euler-maruyama", {}, 1),
    ("ancestral (DDPM, sigma^2 = beta-tilde)", "ancestral", {}, 1),
    ("ancestral (DDPM, sigma^2 = beta)", "ancestral", {"variance": "large"}, 1),
    ("DDIM eta=0.5", "ddim", {"order": 1, "eta": 0.5}, 1),
    ("SDE-DPM-Solver++(1)", "sde-dpmsolver++", {"order": 1}, 1),
    ("SDE-DPM-Solver++(2M)", "sde-dpmsolver++", {"order": 2}, 1),
    ("SDE-DPM-Solver++(3M)", "sde-dpmsolver++", {"order": 3}, 1),
    ("SDE-DPM-Solver++(3M) legacy", "sde-dpmsolver++", {"order": 3, "variant": "legacy"}, 1),
    ("PC (EM + Langevin, snr 0.16)", "pc", {}, 2),
    ("interpolant eps=0.5", "interpolant", {"diffusion": 0.5}, 1),
    ("interpolant eps=1", "interpolant", {"diffusion": 1.0}, 1),
    ("ODE: DDIM", "ddim", {"order": 1}, 1),
    ("ODE: DPM-Solver++(2M)", "dpmsolver++", {"order": 2}, 1),
    ("ODE: UniPC (bh2, order 2)", "unipc", {"order": 2}, 1),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=4000, help="samples per solver")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    n, g = args.n, torch.Generator().manual_seed(args.seed)
    gmm = GaussianMixture([[-1.0, 0.5], [1.0, -0.5], [0.3, 1.2]], [0.05, 0.1, 0.08], [0.3, 0.5, 0.2])
    sched = cp.schedules.VPLinear()
    t_end = 1e-3
    model = gmm.model(sched, "eps")
    x_T = gmm.sample_t(n, 1.0, sched, generator=g)
    exact = gmm.sample_t(n, t_end, sched, generator=g)
    h = metrics.median_bandwidth(exact)
    floor = metrics.mmd2_noise_floor(lambda k, gg: gmm.sample_t(k, t_end, sched, generator=gg), n, 8, g, h)
    rms = float(floor.square().mean().sqrt())
    print(f"2-D mixture, n = {n}, bandwidth {h:.3f}; two-sample MMD^2 noise floor (RMS) {rms:.2e}\n")
    print("| solver | MMD^2 @ NFE 10 | MMD^2 @ NFE 20 |")
    print("|---|---|---|")
    for label, solver, kw, per_step in SOLVERS:
        row = []
        for nfe in (10, 20):
            x = cp.sample(
                model,
                x_T,
                schedule=sched,
                solver=solver,
                steps=nfe // per_step,
                t_end=t_end,
                noise=PerSampleNoise(range(args.seed * n, (args.seed + 1) * n)),
                **kw,
            )
            row.append(f"{metrics.mmd2(x, exact, h):.2e}")
        print(f"| {label} | {row[0]} | {row[1]} |", flush=True)


if __name__ == "__main__":
    main()
