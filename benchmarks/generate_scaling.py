"""Throughput of ``companion.generate`` with 1 and 2 processes on this machine, side by side in one run.

The same job (the shipped digits UNet, DPM-Solver++(2M), 20 steps, guidance 2, labels cycling over the
ten digits) runs as one process with one thread and as ``torchrun --nproc_per_node=2`` (gloo, one thread
per rank, as torchrun sets it); ``--two-threads`` adds one process with two threads (OpenMP), which is
slow on cores that other jobs also use, since its threads wait for each other. The kinds alternate, each
run in a fresh folder; the wall time includes the process start and model loading (what a user waits
for), and the summary gives the median over the repeats. It also checks that all runs wrote byte-identical
shards and prints the load average before and after, since the cores may be shared.

    PYTHONPATH=src python benchmarks/generate_scaling.py [--n 1024] [--repeats 4]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[1] / "src")


def run(kind: str, out: Path, n: int) -> float:
    job = ["--model", "digits-unet-eps", "--num-samples", str(n), "--shard-size", "64", "--batch-size", "64"]
    job += ["--steps", "20", "--guidance", "2", "--out", str(out)]
    env = {
        **os.environ,
        "TQDM_DISABLE": "1",
        "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")]),
    }
    if kind == "2 processes (torchrun, 1 thread each)":
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
        cmd += ["-m", "companion.generate", *job]
        env["OMP_NUM_THREADS"] = "1"
    else:
        cmd = [sys.executable, "-m", "companion.generate", *job]
        env["OMP_NUM_THREADS"] = "1" if "1 thread" in kind else "2"
    t = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    return time.perf_counter() - t


def digest(out: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(out.glob("shard-*")):
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--two-threads", action="store_true", help="also one process with two threads")
    a = ap.parse_args()
    kinds = ["1 process, 1 thread", "2 processes (torchrun, 1 thread each)"]
    if a.two_threads:
        kinds.insert(1, "1 process, 2 threads")
    print(f"cores: {os.cpu_count()}; load average before: {os.getloadavg()}")
    times: dict[str, list[float]] = {k: [] for k in kinds}
    digests = set()
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.repeats):  # interleaved, so that a change of load hits every kind alike
            for i, kind in enumerate(kinds):
                out = Path(tmp) / f"{r}-{i}"
                s = run(kind, out, a.n)
                times[kind].append(s)
                digests.add(digest(out))
                print(f"  repeat {r}: {kind:40s} {s:6.1f} s  ({a.n / s:6.1f} samples/s)", flush=True)
    print(f"load average after: {os.getloadavg()}")
    print(f"shards identical across the {len(kinds) * a.repeats} runs: {len(digests) == 1}")
    med = {k: statistics.median(v) for k, v in times.items()}
    for kind in kinds:
        print(
            f"median of {a.repeats}: {kind:40s} {a.n / med[kind]:6.1f} samples/s  "
            f"speed-up {med[kinds[0]] / med[kind]:.2f}x  (best {a.n / min(times[kind]):.1f} samples/s)"
        )


if __name__ == "__main__":
    main()
