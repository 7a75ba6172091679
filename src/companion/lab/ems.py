"""Empirical model statistics (DPM-Solver-v3) of the shipped digits UNet: where they live, how to load them,
and the command that regenerates them.

    python -m companion.lab.ems digits-unet-eps --guidance 4 --points 100 --samples 384 --seed 0

estimates l, s, b (:func:`companion.solvers.dpm_solver_v3.estimate_statistics`) on the training digits,
noised forward (q_lambda, as the paper), with each digit's own label and classifier-free guidance at the
given scale, on a log-SNR grid uniform between lambda(t = 1) and lambda(t = 1e-3); it writes
``<name>-w<guidance>.safetensors`` into ``--out`` (default: this package's ``ems_files/`` folder, shipped as package
data; about 100 kB). One CPU thread: about 5 minutes.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from ..solvers.dpm_solver_v3 import ModelStatistics, estimate_statistics

__all__ = ["shipped_dir", "path", "load", "estimate_digits", "main"]

T_RANGE = (1.0, 1e-3)


def shipped_dir() -> Path:
    return Path(__file__).with_name("ems_files")


def path(name: str, guidance: float, root: str | Path | None = None) -> Path:
    return Path(root or shipped_dir()) / f"{name}-w{guidance:g}.safetensors"


def load(
    name: str = "digits-unet-eps", guidance: float = 4.0, root: str | Path | None = None
) -> ModelStatistics:
    """The statistics of model ``name`` at classifier-free guidance ``guidance`` (shipped, or under ``root``)."""
    p = path(name, guidance, root)
    if not p.is_file():
        have = sorted(q.name for q in Path(root or shipped_dir()).glob("*.safetensors"))
        raise FileNotFoundError(
            f"no statistics {p.name} in {p.parent} (have {have}); regenerate with "
            f"python -m companion.lab.ems {name} --guidance {guidance:g}"
        )
    return ModelStatistics.load(p)


def estimate_digits(
    name: str = "digits-unet-eps",
    guidance: float = 4.0,
    points: int = 100,
    samples: int = 384,
    batch: int = 384,
    seed: int = 0,
    progress: bool = True,
) -> ModelStatistics:
    """Estimate the statistics of the digits UNet ``name`` under guidance on the training digits."""
    from . import data, models

    net = models.load(name)
    x0, y = data.digits("train")

    def draw(n: int, gen: torch.Generator):
        i = torch.randint(0, x0.shape[0], (n,), generator=gen)
        return x0[i], y[i]

    t0 = time.perf_counter()
    st = estimate_statistics(
        lambda x, t, c: net.cond(c, guidance=guidance)(x, t),
        net.schedule,
        draw,
        t_range=T_RANGE,
        points=points,
        samples=samples,
        batch=batch,
        prediction=net.prediction,
        generator=torch.Generator().manual_seed(seed),
        progress=progress,
    )
    st.meta.update(
        model=name, guidance=guidance, data="digits train split, own labels", seed=seed,
        t_range=list(T_RANGE), seconds=round(time.perf_counter() - t0, 1),
        command=f"python -m companion.lab.ems {name} --guidance {guidance:g} --points {points} "
        f"--samples {samples} --seed {seed}",
    )  # fmt: skip
    return st


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m companion.lab.ems", description=__doc__.split("\n\n")[0])
    ap.add_argument("name", nargs="?", default="digits-unet-eps")
    ap.add_argument("--guidance", type=float, default=4.0)
    ap.add_argument("--points", type=int, default=100)
    ap.add_argument("--samples", type=int, default=384)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    st = estimate_digits(a.name, a.guidance, a.points, a.samples, a.samples, a.seed)
    out = st.save(path(a.name, a.guidance, a.out))
    print(f"wrote {out} ({out.stat().st_size / 1024:.0f} kB, {st.meta['seconds']} s)")


if __name__ == "__main__":
    main()
