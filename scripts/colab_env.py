"""The Colab path, offline: what a reader's Colab session does, for every chapter, in ``build/colab/``.

1. ``src/``: a git clone of this repository, with the working tree's changes committed on top (on a fresh
   clone, as in CI, that commit is empty: the clone is HEAD).
2. ``venv/``: a fresh virtual environment (no site packages) into which pip installs the package from the
   ``git+file://`` URL of that clone: pip builds a wheel from the clone, exactly as it does on Colab from the
   GitHub URL. Versions are held to ``requirements.lock`` (``-c``), so pip's cache serves them. The Jupyter
   tools Colab provides (ipykernel; pytest and nbval to drive it) are installed beside it. The installed
   package must be the wheel's and must carry every shipped model.
3. ``venv-<extras>/``: for each set of extras that a chapter's Colab cell names, a copy of ``venv/`` (hard
   links) plus exactly the requirements of those extras, as ``pip install "companion[<extras>] @ ..."``
   adds them. A chapter runs in the environment of its own extras, so a missing extra fails it.
4. ``run/<chapter>/<chapter>.ipynb``: each chapter notebook alone in an empty folder, with two cells added
   around it: the first notes which modules the kernel had loaded before the chapter, the last checks that
   every extra the Colab cell names is used (its packages are imported) and every import is accounted for.

Then (unless ``--prepare-only``) nbval runs every chapter in quick mode with its environment's Python, from
its folder, with nothing of the checkout on its path: ``make test`` runs ``python scripts/colab_env.py``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nbformat

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bookconfig  # noqa: E402

ROOT = bookconfig.ROOT
TOOLS = ["ipykernel", "pytest", "nbval"]  # what Colab's Jupyter has, plus the driver

SNAPSHOT = """\
# [Colab-path test, not part of the chapter] the modules the kernel loaded before the chapter.
import sys as _colab_sys
_COLAB_BASE = set(_colab_sys.modules)"""

AUDIT = """\
# [Colab-path test, not part of the chapter] the chapter's imports come from the extras its Colab cell names.
import importlib.metadata as _md
import re as _re

_imported = set(_colab_sys.modules) - _COLAB_BASE
from packaging.requirements import Requirement as _Req  # noqa: E402  (ipykernel's dependency)


def _canon(name):
    return _re.sub(r"[-_.]+", "-", name).lower()


def _closure(roots):
    seen, todo = set(), [(r, tuple(e)) for r, e in roots]
    while todo:
        name, extras = todo.pop()
        if (_canon(name), extras) in seen:
            continue
        seen.add((_canon(name), extras))
        try:
            reqs = _md.requires(name) or []
        except _md.PackageNotFoundError:
            continue
        for r in map(_Req, reqs):
            if r.marker is None or any(r.marker.evaluate({"extra": e}) for e in (*extras, "")):
                todo.append((r.name, tuple(sorted(r.extras))))
    return {n for n, _ in seen}


EXTRAS = __EXTRAS__
allowed = _closure([("companion", EXTRAS), ("ipykernel", ()), ("nbval", ()), ("pytest", ())])
owners = _md.packages_distributions()
import sysconfig as _sysconfig  # noqa: E402

_site = [_sysconfig.get_paths()[k] for k in ("purelib", "platlib")]
_stdlib = _sysconfig.get_paths()["stdlib"]
used, unknown = {}, set()
for mod in _imported:
    top = mod.split(".")[0]
    if top in _colab_sys.stdlib_module_names or top == "__main__":
        continue
    dists = owners.get(top)
    if not dists:
        # An extension module registered under a top-level name (scipy's _csparsetools, ...): its file says
        # whose it is. A module with no file was made in memory (multiprocessing's __mp_main__, torch's
        # generated modules) and is no import of a distribution.
        path = getattr(_colab_sys.modules.get(mod), "__file__", None)
        if path is None or path.startswith(_stdlib + "/") and not any(path.startswith(s + "/") for s in _site):
            continue
        base = next((s for s in _site if path.startswith(s + "/")), None)
        dists = owners.get(path[len(base) + 1 :].split("/")[0]) if base else None
        if not dists:
            unknown.add(f"{mod} ({path})")
            continue
    for d in dists:
        used.setdefault(_canon(d), set()).add(top)
missing = {d: sorted(m) for d, m in used.items() if d not in allowed}
assert not missing, (
    f"the chapter imports modules of {missing}, which companion[{','.join(EXTRAS)}] does not install: "
    "name the extra that provides them in its Colab cell (pyproject.toml lists the extras)"
)
assert not unknown, f"imported modules with no installed distribution: {sorted(unknown)}"
for extra in EXTRAS:
    direct = {
        _canon(r.name)
        for r in map(_Req, _md.requires("companion") or [])
        if r.marker is not None and r.marker.evaluate({"extra": extra})
    }
    assert direct, f"the Colab cell names the extra {extra!r}, which pyproject.toml does not define"
    assert direct & set(used), f"the Colab cell installs companion[{extra}] ({sorted(direct)}) but never uses it"
print(f"Colab path: companion[{','.join(EXTRAS)}] provides every import ({len(used)} distributions)")"""


def _run(cmd: list[str], **kw) -> None:
    print("[colab] $", " ".join(str(c) for c in cmd), flush=True)
    subprocess.run(cmd, check=True, **kw)


def snapshot_clone(dest: Path) -> Path:
    """``git clone`` of the checkout plus one commit holding the working tree's changes (if any)."""
    _run(["git", "clone", "-q", "--no-hardlinks", str(ROOT), str(dest)])
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout.split(b"\0")
    wanted = {Path(p.decode()) for p in listed if p}
    in_clone = subprocess.run(
        ["git", "ls-files", "-z"], cwd=dest, check=True, capture_output=True
    ).stdout.split(b"\0")
    for p in (Path(q.decode()) for q in in_clone if q):
        if p not in wanted:
            (dest / p).unlink(missing_ok=True)  # deleted in the working tree
    for p in wanted:
        if (ROOT / p).is_file():  # a deleted but still indexed file is skipped
            (dest / p).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / p, dest / p)
    ident = ["-c", "user.name=companion build", "-c", "user.email=build@localhost"]
    _run(["git", "add", "-A"], cwd=dest)
    _run(["git", *ident, "commit", "-q", "--allow-empty", "-m", "working tree snapshot"], cwd=dest)
    return dest


def prepare_notebooks(run: Path, url: str) -> dict[str, list[str]]:
    """Each chapter alone in ``run/<stem>/``, with the snapshot and audit cells; returns the extras."""
    extras = {}
    for src in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.md")):
        nb = bookconfig.read_chapter(src, url)
        ex = bookconfig.install_extras(nb)
        extras[src.stem] = ex
        nb.cells.insert(0, nbformat.v4.new_code_cell(SNAPSHOT))
        nb.cells.append(nbformat.v4.new_code_cell(AUDIT.replace("__EXTRAS__", repr(tuple(ex)))))
        folder = run / src.stem
        folder.mkdir(parents=True)
        nbformat.write(nb, folder / f"{src.stem}.ipynb")
    return extras


def _requirements(py: Path, extras: list[str], env: dict) -> list[str]:
    """The requirement strings ``companion[<extras>]`` adds to the base package (read from its metadata)."""
    probe = (
        "import importlib.metadata as md, json, sys\n"
        "from packaging.requirements import Requirement\n"
        "ex = sys.argv[1].split(',')\n"
        "out = []\n"
        "for r in map(Requirement, md.requires('companion') or []):\n"
        "    if r.marker is not None and any(r.marker.evaluate({'extra': e}) for e in ex):\n"
        "        r.marker = None\n"
        "        out.append(str(r))\n"
        "print(json.dumps(out))"
    )
    got = subprocess.run(
        [str(py), "-c", probe, ",".join(extras)], env=env, check=True, capture_output=True, text=True
    )
    reqs = json.loads(got.stdout)
    if any(r.startswith("companion") for r in reqs):
        raise SystemExit(f"[colab] a chapter names a meta extra of {extras}: name the extras it uses instead")
    return reqs


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", nargs="?", default="build/colab")
    ap.add_argument("--prepare-only", action="store_true", help="set up, do not run the chapters")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    dest = ROOT / args.out
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    url = bookconfig.repository()["url"]
    run = dest / "run"
    extras = prepare_notebooks(run, url)
    clone = snapshot_clone(dest / "src")
    venv = dest / "venv"
    _run([sys.executable, "-m", "venv", str(venv)])
    py = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    lock = ["-c", str(ROOT / "requirements.lock")]
    pip = ["-m", "pip", "install", "-q", "--disable-pip-version-check"]
    _run([str(py), *pip, "--upgrade", "pip"], env=env)  # the venv's bundled pip predates git+file references
    _run([str(py), *pip, *lock, f"companion @ git+file://{clone}", *TOOLS], env=env)
    # What the installed package holds: it must be the wheel's copy, and carry every shipped model.
    probe = (
        "import json, companion, companion.lab.models as m;"
        "print(json.dumps({'file': companion.__file__, 'models': m.available(m.shipped_dir())}))"
    )
    out = subprocess.run([str(py), "-c", probe], cwd=run, env=env, check=True, capture_output=True, text=True)
    got = json.loads(out.stdout)
    shipped = sorted(p.stem for p in (ROOT / "src/companion/lab/models/weights").glob("*.json"))
    print(f"[colab] installed {got['file']}\n[colab] models in the wheel: {got['models']}")
    if not got["file"].startswith(str(venv) + "/"):
        raise SystemExit(f"[colab] companion was imported from {got['file']}, not from the fresh venv")
    if got["models"] != shipped:
        raise SystemExit(
            f"[colab] the wheel lacks shipped models: {sorted(set(shipped) - set(got['models']))}"
        )

    groups: dict[tuple[str, ...], list[str]] = {}
    for stem, ex in extras.items():
        groups.setdefault(tuple(sorted(ex)), []).append(stem)
    pythons = {}
    for ex in groups:
        v = dest / f"venv-{'-'.join(ex)}"
        _run(
            ["cp", "-al", str(venv), str(v)]
        )  # hard links: seconds, and pip replaces files, never edits them
        reqs = _requirements(v / "bin" / "python", list(ex), env)
        _run([str(v / "bin" / "python"), *pip, *lock, *reqs], env=env)
        pythons[ex] = v / "bin" / "python"
    print(f"[colab] environments ready in {time.perf_counter() - t0:.0f} s")
    if args.prepare_only:
        return 0

    env_run = {
        **env,
        "COMPANION_QUICK": "1",
        "TQDM_DISABLE": "1",
        "MPLBACKEND": "Agg",
        "COMPANION_VERDICTS": str(ROOT / "book" / "verdicts.json"),  # the reviewed verdicts still apply
    }
    failed = []
    for ex, stems in groups.items():
        print(f"[colab] companion[{','.join(ex)}]: {', '.join(stems)}", flush=True)
        cmd = [
            str(pythons[ex]),
            "-m",
            "pytest",
            *stems,
            "--nbval-lax",
            "--nbval-current-env",
            "--nbval-cell-timeout=600",
            "-p",
            "no:cacheprovider",
            "--rootdir=.",
            "-c",
            os.devnull,
            "-q",
        ]
        if subprocess.run(cmd, cwd=run, env=env_run).returncode != 0:
            failed += stems
    took = time.perf_counter() - t0
    if failed:
        print(f"[colab] FAILED on the Colab path: {failed} ({took:.0f} s)")
        return 1
    print(
        f"[colab] every chapter ran from a plain install, alone in an empty folder ({len(extras)} chapters, {took:.0f} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
