"""Model calls to a tolerance: the fewest NFE at which each solver reaches each of three tolerances, ours and
each peer's implementation of the same algorithm, on the same exact model and grid (companion.lab.bench).

Targets: an 8-component 2-D ring mixture, a 64-D mixture fitted to sklearn's digits, the digits classes under
classifier-free guidance (scales 1, 3, 7.5), and the shipped digits UNet against a 1000-step float64
reference. Writes JSON (``--json``) and prints a table. Usage:

    PYTHONPATH=src python benchmarks/nfe_to_tolerance.py [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings

import torch

from companion.lab import bench

FULL_NFE = [4, 5, 6, 8, 10, 12, 15, 20, 25, 30, 40, 50, 60, 80, 100]
QUICK_NFE = [5, 8, 10, 15, 20, 30, 40]


def table(res: dict) -> str:
    tols = [f"{t:g}" for t in res["tolerances"]]
    lines = [
        f"{'target':12s} {'algorithm':14s} {'implementation':14s} "
        + " ".join(f"{'tol ' + t:>9s}" for t in tols)
    ]
    for tg, rec in res["targets"].items():
        for a, arec in rec["algorithms"].items():
            for impl, c in arec["curves"].items():
                cells = [c["to_tol"][t] for t in tols]
                lines.append(
                    f"{tg:12s} {a:14s} {impl:14s} "
                    + " ".join(f"{('>' + str(max(c['nfe']))) if v is None else v:>9}" for v in cells)
                )
    return "\n".join(lines)


def verdicts(res: dict) -> list[str]:
    """Where ours needs more calls than a peer (for any tolerance), one line each; rows where ours is not the
    peer's formula (``Algorithm.differs``) are marked, since they are no same-algorithm comparison."""
    out = []
    for tg, rec in res["targets"].items():
        for a, arec in rec["algorithms"].items():
            curves = arec["curves"]
            mark = (
                " (a different formula: " + bench.ALGORITHMS[a].differs + ")"
                if bench.ALGORITHMS[a].differs
                else ""
            )
            for impl, c in curves.items():
                if impl == "ours":
                    continue
                for t, theirs in c["to_tol"].items():
                    ours = curves["ours"]["to_tol"][t]
                    if theirs is not None and (ours is None or ours > theirs):
                        out.append(f"{tg} {a} tol {t}: ours {ours} > {impl} {theirs}{mark}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a small suite (the chapter's quick mode)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--targets", nargs="+", default=None)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    if args.quick:
        names, batch, nfe = args.targets or ["mixture-2d", "guided"], 32, QUICK_NFE
    else:
        names, batch, nfe = args.targets or ["mixture-2d", "digits-64d", "guided", "unet"], 64, FULL_NFE
    targets = bench.make_targets(names, batch=batch)
    res = bench.run_suite(targets, list(bench.ALGORITHMS), nfe)
    res["seconds"] = time.perf_counter() - t0
    res["load"] = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    for name, why in res["skipped"].items():
        print(f"skipped peer {name}: {why}")
    print(table(res))
    worse = verdicts(res)
    same = [w for w in worse if "(a different formula" not in w]
    print("ours needs more calls than a peer:" if worse else "ours at or below every peer everywhere")
    for line in worse:
        print("  " + line)
    print(
        f"same algorithm: {'ours at or below every peer' if not same else f'ours needs more calls in {len(same)} cells'}"
    )
    print(f"{res['seconds']:.0f} s, load average {res['load']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
