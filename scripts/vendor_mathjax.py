"""Serve MathJax from the book itself: a Sphinx extension (listed in _config.yml) and a command.

The book's math must render with no network, so MathJax is not loaded from a CDN at read time. At build
time this fetches the pinned npm package (`npm pack mathjax@VERSION`, the registry's ordinary client),
checks it against the pinned sha512, unpacks the CHTML build into build/mathjax/ (cached there), and adds
it to Sphinx's static files: the HTML gets `_static/mathjax/tex-mml-chtml.js` plus the CHTML fonts and the
components MathJax loads on demand (TeX extensions, menu, accessibility). `mathjax_path` in _config.yml
points at that file; a `mathjax_path` that leaves the machine is refused.

    python scripts/vendor_mathjax.py     # fetch and unpack now (the build does it when needed)
"""

from __future__ import annotations

import base64
import hashlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

VERSION = "3.2.2"
# `npm view mathjax@3.2.2 dist.integrity`: a tarball that differs from this one is refused.
INTEGRITY = "sha512-Bt+SSVU8eBG27zChVewOicYs7Xsdt40qm4+UpHyX7k0/O9NliPc+x77k1/FEsPsjKPZGJvtRZM1vO+geW0OhGw=="
ENTRY = "tex-mml-chtml.js"
# What the CHTML build loads at run time (fonts, autoloaded TeX packages, menu, a11y and speech), and
# the licence that must travel with it. The SVG output and the other combined builds are left out.
KEEP = ("LICENSE", f"es5/{ENTRY}", "es5/input/", "es5/output/chtml/", "es5/ui/", "es5/a11y/", "es5/sre/")

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "build" / "mathjax"
STATIC = CACHE / VERSION / "static"  # added to html_static_path; holds mathjax/
TARGET = STATIC / "mathjax"


def _integrity(path: Path) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(path.read_bytes()).digest()).decode()


def fetch_tarball() -> Path:
    """The pinned package archive, fetched with `npm pack` once and verified every time."""
    tgz = CACHE / f"mathjax-{VERSION}.tgz"
    if not tgz.is_file():
        npm = shutil.which("npm")
        if npm is None:
            raise RuntimeError(
                f"MathJax {VERSION} is vendored from the npm registry at build time, but `npm` is not on "
                "PATH: install Node.js and npm (Debian: apt-get install npm), or put "
                f"mathjax-{VERSION}.tgz from `npm pack mathjax@{VERSION}` into {CACHE}"
            )
        CACHE.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
            subprocess.run(
                [
                    npm,
                    "pack",
                    f"mathjax@{VERSION}",
                    "--pack-destination",
                    tmp,
                    "--silent",
                    "--ignore-scripts",
                ],
                check=True,
                stdout=subprocess.DEVNULL,
            )
            (Path(tmp) / tgz.name).replace(tgz)
    got = _integrity(tgz)
    if got != INTEGRITY:
        tgz.unlink()
        raise RuntimeError(f"{tgz.name}: integrity {got} is not the pinned {INTEGRITY}; removed it")
    return tgz


def vendor() -> Path:
    """Unpack the pinned MathJax into build/mathjax/VERSION/static/mathjax (once); return the static dir."""
    if (TARGET / ENTRY).is_file() and (TARGET / ".integrity").is_file():
        if (TARGET / ".integrity").read_text().strip() == INTEGRITY:
            return STATIC
    tgz = fetch_tarball()
    STATIC.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=STATIC) as tmp:
        out = Path(tmp) / "mathjax"
        with tarfile.open(tgz) as tar:
            for member in tar.getmembers():
                name = member.name.removeprefix("package/")
                if not member.isfile() or not name.startswith(KEEP):
                    continue
                dest = out / name.removeprefix("es5/")
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(tar.extractfile(member).read())
        (out / ".integrity").write_text(INTEGRITY + "\n")
        if TARGET.exists():
            shutil.rmtree(TARGET)
        out.replace(TARGET)  # whole or not at all: a half-unpacked tree never looks complete
    return STATIC


def _on_config(app, config) -> None:
    from sphinx.errors import ExtensionError

    path = str(config.mathjax_path)
    if "://" in path or path.startswith("//"):
        raise ExtensionError(
            f"mathjax_path = {path!r} loads MathJax from the network; the book serves its own copy: set "
            f"sphinx.config.mathjax_path to 'mathjax/{ENTRY}' in _config.yml"
        )
    try:
        static = vendor()
    except (RuntimeError, subprocess.CalledProcessError) as exc:
        raise ExtensionError(f"could not vendor MathJax: {exc}") from exc
    if not (static / path).is_file():
        raise ExtensionError(f"mathjax_path = {path!r} is not in the vendored MathJax ({static})")
    config.html_static_path.append(str(static))


def setup(app):
    app.setup_extension("sphinx.ext.mathjax")
    app.connect("config-inited", _on_config)
    return {"version": VERSION, "parallel_read_safe": True, "parallel_write_safe": True}


if __name__ == "__main__":
    print(f"MathJax {VERSION} vendored in {vendor() / 'mathjax'}")
    sys.exit(0)
