"""Convert every chapter source (jupytext MyST) into a notebook for nbval: build/nbval/<stem>.ipynb.

The directory is emptied first, so a removed chapter never lingers in the test run.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import jupytext

ROOT = Path(__file__).resolve().parents[1]


def main(out: str) -> int:
    dest = ROOT / out
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    sources = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.md"))
    for src in sources:
        nb = jupytext.read(src)
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        jupytext.write(nb, dest / f"{src.stem}.ipynb", fmt="ipynb")
    print(f"prepared {len(sources)} chapter(s) for nbval in {dest.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "build/nbval"))
