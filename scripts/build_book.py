"""Execute the chapters and build the HTML book: the body of `make book`.

notebooks/NN_name.md --jupytext--> ipynb --papermill (QUICK, DEVICE, SEED)--> book/chapters/NN_name.ipynb
then book/runtimes.md and book/report.md are generated, and jupyter-book renders everything with
`execute_notebooks: off` (it never re-executes) and warnings as errors.

A chapter is executed again only when its source, the package, the shipped models, the lock file or the
parameters changed since its last successful run (or its outputs are missing). A chapter that fails
leaves its partial notebook in build/exec/ for inspection and never replaces the last good one.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ROOT / "notebooks"
CHAPTERS = ROOT / "book" / "chapters"
BUILD = ROOT / "build"
STAMPS = BUILD / "stamps"
EXEC = BUILD / "exec"
CLAIMS = BUILD / "claims"
DEVICES = BUILD / "devices"

sys.path.insert(0, str(ROOT / "scripts"))
import bookconfig  # noqa: E402
import status_table  # noqa: E402
from bookpages import write_report, write_runtimes  # noqa: E402


def chapter_sources() -> list[Path]:
    return sorted(SOURCES.glob("[0-9][0-9]_*.md"))


def _hash_files(h: hashlib._Hash, files: list[Path]) -> None:
    for f in sorted(files):
        h.update(str(f.relative_to(ROOT)).encode())
        h.update(f.read_bytes())


def fingerprint(src: Path, params: dict) -> str:
    """What a chapter's outputs depend on: its source, the package, the models, the lock, the parameters."""
    h = hashlib.sha256()
    _hash_files(h, [src])
    _hash_files(
        h,
        [p for p in (ROOT / "src" / "companion").rglob("*") if p.is_file() and "__pycache__" not in p.parts],
    )
    # src/companion (above) includes the shipped weights; a local models/ folder overrides them by name.
    _hash_files(h, sorted(p for p in (ROOT / "models").glob("*") if p.is_file()))
    _hash_files(h, [ROOT / "requirements.lock"])
    h.update(json.dumps(bookconfig.repository()).encode())  # the Colab cell's URL
    h.update(json.dumps(params, sort_keys=True).encode())
    return h.hexdigest()


def is_fresh(stem: str, key: str) -> bool:
    stamp = STAMPS / f"{stem}.txt"
    return (
        stamp.is_file()
        and stamp.read_text().strip() == key
        and (CHAPTERS / f"{stem}.ipynb").is_file()
        and (CLAIMS / f"{stem}.json").is_file()
    )


def postprocess(nb) -> None:
    """Hide papermill's injected cell, mark the notebook for a Colab GPU, and refuse error outputs."""
    for cell in nb.cells:
        tags = cell.setdefault("metadata", {}).setdefault("tags", [])
        if "injected-parameters" in tags and "remove-cell" not in tags:
            tags.append("remove-cell")
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                raise RuntimeError(f"cell raised {out.get('ename')}: {out.get('evalue')}")
    nb.metadata["accelerator"] = "GPU"
    nb.metadata.setdefault("colab", {})["provenance"] = []


def execute(src: Path, params: dict) -> float:
    import nbformat
    import papermill

    stem = src.stem
    EXEC.mkdir(parents=True, exist_ok=True)
    CHAPTERS.mkdir(parents=True, exist_ok=True)
    nb = bookconfig.read_chapter(src)  # the Colab cell names the repository of _config.yml
    inp, out = EXEC / f"{stem}.ipynb", EXEC / f"{stem}.out.ipynb"
    nbformat.write(nb, inp)
    env_before = dict(os.environ)
    os.environ.update(
        COMPANION_QUICK="1" if params["QUICK"] else "0",
        COMPANION_DEVICE=params["DEVICE"],
        COMPANION_SEED=str(params["SEED"]),
        TQDM_DISABLE="1",
        MPLBACKEND="module://matplotlib_inline.backend_inline",
    )
    t0 = time.perf_counter()
    try:
        papermill.execute_notebook(
            str(inp),
            str(out),
            parameters=params,
            kernel_name="python3",
            cwd=str(ROOT),
            progress_bar=False,
            log_output=False,
            start_timeout=120,
            execution_timeout=3600,
        )
    finally:
        os.environ.clear()
        os.environ.update(env_before)
    seconds = time.perf_counter() - t0
    done = nbformat.read(out, as_version=4)
    postprocess(done)
    tmp = CHAPTERS / f".{stem}.ipynb.tmp"
    nbformat.write(done, tmp)
    os.replace(tmp, CHAPTERS / f"{stem}.ipynb")
    return seconds


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (as in CI)")
    ap.add_argument("--device", default=os.environ.get("COMPANION_DEVICE", ""), help="'' = cuda if available")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--force", action="store_true", help="re-execute every chapter")
    ap.add_argument("--no-html", action="store_true", help="execute only")
    ap.add_argument("only", nargs="*", help="chapter stems to execute (default: all)")
    args = ap.parse_args(argv)
    params = {"QUICK": bool(args.quick), "DEVICE": args.device, "SEED": args.seed}

    sources = chapter_sources()
    if args.only:
        unknown = set(args.only) - {s.stem for s in sources}
        if unknown:
            ap.error(f"unknown chapter(s) {sorted(unknown)}; available: {[s.stem for s in sources]}")
        sources = [s for s in sources if s.stem in args.only]
    STAMPS.mkdir(parents=True, exist_ok=True)
    failed = []
    for src in sources:
        key = fingerprint(src, params)
        if not args.force and is_fresh(src.stem, key):
            print(f"[book] {src.stem}: up to date")
            continue
        print(f"[book] {src.stem}: executing ({'quick' if args.quick else 'default'} mode) ...", flush=True)
        (STAMPS / f"{src.stem}.txt").unlink(missing_ok=True)
        try:
            seconds = execute(src, params)
        except Exception as exc:  # report every failing chapter, then fail the build
            print(
                f"[book] {src.stem}: FAILED: {exc}\n       partial notebook: {EXEC / (src.stem + '.out.ipynb')}"
            )
            failed.append(src.stem)
            continue
        (STAMPS / f"{src.stem}.txt").write_text(key + "\n")
        print(f"[book] {src.stem}: done in {seconds:.1f} s")
    if failed:
        print(f"[book] {len(failed)} chapter(s) failed: {failed}")
        return 1

    write_runtimes(ROOT / "book" / "runtimes.md", CHAPTERS, DEVICES)
    write_report(ROOT / "book" / "report.md", CLAIMS, ROOT / "book" / "verdicts.json", CHAPTERS)
    if not args.quick:  # the README states the verdicts at the sizes the prose talks about, never CI's
        status_table.main([])
    if args.no_html:
        return 0
    html = ROOT / "_build" / "html"
    if html.exists():
        shutil.rmtree(html)  # a stale page from a removed chapter must not survive
    jb = Path(sys.executable).with_name("jupyter-book")
    cmd = [str(jb), "build", str(ROOT), "--warningiserror", "--keep-going", "--quiet"]
    print("[book] rendering:", " ".join(cmd), flush=True)
    rc = subprocess.call(cmd, cwd=ROOT)
    if rc != 0:
        print("[book] jupyter-book failed")
        return rc
    post_build = ROOT / "scripts" / "post_build.py"
    if post_build.is_file():
        rc = subprocess.call([sys.executable, str(post_build)], cwd=ROOT)
        if rc != 0:
            return rc
    print(f"[book] open {html / 'index.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
