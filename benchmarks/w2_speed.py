"""W2 between sample sets: wall time of ``companion.lab.metrics.w2_squared`` by method and size.

Exact optimal transport (POT's network simplex) costs O(n^2) memory and roughly O(n^2 log n) time, so it
stops at ``W2_EXACT_MAX`` points; the histogram variant (the paper's: exact transport between 64 x 64
histograms on [-4, 4]^2) and sliced W2 (256 directions) handle any size. Each line also prints the value
on N(0, I) against N((0.5, -0.5), diag(1, 1.5^2)), whose W2^2 is 0.75 (the histogram clips at +-4).

    PYTHONPATH=src python benchmarks/w2_speed.py [--threads 2] [--sizes 2000 5000 10000 20000]

The last line reads ``w2 20000 points: histogram ... s, sliced ... s`` (the issue asks for < 30 s on 2 cores).
"""

from __future__ import annotations

import argparse
import time

import torch

from companion.lab.metrics import W2_EXACT_MAX, w2_squared


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--sizes", type=int, nargs="+", default=[2000, 5000, 10_000, 20_000])
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    m, s = torch.tensor([0.5, -0.5], dtype=torch.float64), torch.tensor([1.0, 1.5], dtype=torch.float64)
    last: dict[str, float] = {}
    for n in args.sizes:
        x = torch.randn(n, 2, generator=g, dtype=torch.float64)
        y = m + s * torch.randn(n, 2, generator=g, dtype=torch.float64)
        for method in ("exact", "histogram", "sliced"):
            if method == "exact" and n > W2_EXACT_MAX:
                continue
            t0 = time.perf_counter()
            v = w2_squared(x, y, method, generator=g)
            dt = time.perf_counter() - t0
            last[method] = dt
            print(f"n={n:6d} {method:9s} W2^2={v:.4f} (true 0.75) {dt:7.2f} s", flush=True)
    n = args.sizes[-1]
    print(f"w2 {n} points: histogram {last['histogram']:.2f} s, sliced {last['sliced']:.2f} s")


if __name__ == "__main__":
    main()
