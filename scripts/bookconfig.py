"""The one source of the repository's address, and chapter sources turned into notebooks that use it.

``_config.yml`` (``repository.url`` and ``repository.branch``) is the only file that spells the repository
URL: Jupyter Book's launch buttons read it there, and every chapter's Colab cell names it through the
placeholder ``{{ repository.url }}``, which :func:`read_chapter` fills in when a chapter source
(``notebooks/NN_*.md``) becomes a notebook. A fork changes that one line.

The Colab cell installs the package with the extras the chapter needs, and nothing else::

    %pip install -q "companion[plots,models] @ git+{{ repository.url }}"

:func:`install_extras` reads those extras back (the Colab-path test installs exactly them).
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PLACEHOLDER = "{{ repository.url }}"
_INSTALL = re.compile(r'%pip install -q "companion\[(?P<extras>[a-z,]+)\] @ git\+(?P<url>[^"]+)"')


def repository(config: Path = ROOT / "_config.yml") -> dict[str, str]:
    """``{"url": ..., "branch": ...}`` from ``_config.yml``; the URL must be an https GitHub address."""
    import yaml

    repo = (yaml.safe_load(config.read_text()) or {}).get("repository") or {}
    url, branch = str(repo.get("url", "")), str(repo.get("branch", ""))
    if not re.fullmatch(r"https://github\.com/[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+", url):
        raise ValueError(f"{config}: repository.url must be https://github.com/<owner>/<name>; got {url!r}")
    if not branch:
        raise ValueError(f"{config}: repository.branch (where the executed notebooks are published) is empty")
    return {"url": url, "branch": branch}


def install_cell(nb) -> dict:
    """The chapter's Colab install cell (its first code cell, tagged ``skip-execution``)."""
    for cell in nb.cells:
        if cell.cell_type == "code":
            if "skip-execution" not in cell.metadata.get("tags", []) or not _INSTALL.search(cell.source):
                raise ValueError(
                    "a chapter's first code cell must be its Colab install cell, tagged skip-execution, with "
                    f'%pip install -q "companion[<extras>] @ git+{PLACEHOLDER}"; got:\n{cell.source}'
                )
            return cell
    raise ValueError("the chapter has no code cell")


def install_extras(nb) -> list[str]:
    """The extras the chapter's Colab cell installs, e.g. ``["plots", "models"]``."""
    return _INSTALL.search(install_cell(nb).source)["extras"].split(",")


def read_chapter(src: Path, url: str | None = None):
    """Chapter source -> notebook: jupytext, the python3 kernel, and the repository URL filled in."""
    import jupytext

    nb = jupytext.read(src)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    cell = install_cell(nb)
    if PLACEHOLDER not in cell.source:
        raise ValueError(
            f"{src.name}: the Colab cell must name the repository as {PLACEHOLDER}, not spell it"
        )
    cell.source = cell.source.replace(PLACEHOLDER, url or repository()["url"])
    return nb


def publish_notebooks(chapters: Path, out: Path, commit: str) -> list[Path]:
    """Lay out the executed chapters as the Colab buttons open them: ``out/book/chapters/NN_*.ipynb``.

    ``out`` becomes the whole tree of the branch ``repository.branch`` (CI force-pushes it), with a README
    that says which commit of the book the notebooks were executed from.
    """
    import shutil

    notebooks = sorted(chapters.glob("[0-9][0-9]_*.ipynb"))
    if not notebooks:
        raise ValueError(f"no executed chapters in {chapters}: run `make book` first")
    if out.exists():
        shutil.rmtree(out)
    dest = out / "book" / "chapters"
    dest.mkdir(parents=True)
    for nb in notebooks:
        shutil.copy2(nb, dest / nb.name)
    repo = repository()
    (out / "README.md").write_text(
        f"# Executed chapters of the companion book\n\n"
        f"Written by CI from commit {commit} of {repo['url']} (branch main): each chapter executed in the\n"
        f"book's default mode, with its outputs, for the book's *Open in Colab* buttons. Do not edit here:\n"
        f"the sources are `notebooks/*.md` on main, and this branch is replaced on every push.\n"
    )
    return [dest / nb.name for nb in notebooks]


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="The repository of _config.yml, and the published notebooks.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("url", help="print repository.url")
    sub.add_parser("branch", help="print repository.branch (where the executed notebooks are published)")
    pub = sub.add_parser("publish", help="lay out book/chapters/*.ipynb for the notebooks branch")
    pub.add_argument("out", type=Path)
    pub.add_argument("--commit", required=True)
    args = ap.parse_args()
    if args.cmd in ("url", "branch"):
        print(repository()[args.cmd])
    else:
        for p in publish_notebooks(ROOT / "book" / "chapters", args.out, args.commit):
            print(p)
