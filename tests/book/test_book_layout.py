"""The book's configuration and layout: what the pipeline relies on, checked without building."""

import json
import re
import sys
from pathlib import Path

import jupytext
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHAPTER_SOURCES = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.md"))
sys.path.insert(0, str(ROOT / "scripts"))


def toc_files():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]]
    for part in toc.get("parts", []):
        files += [c["file"] for c in part.get("chapters", [])]
    return files


def test_every_chapter_is_in_the_toc_and_nothing_else():
    chapters = {f for f in toc_files() if f.startswith("book/chapters/")}
    assert chapters == {f"book/chapters/{p.stem}" for p in CHAPTER_SOURCES}


def test_jupyter_book_renders_only():
    cfg = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert cfg["execute"]["execute_notebooks"] == "off"
    assert cfg["launch_buttons"]["colab_url"].startswith("https://colab.research.google.com")
    assert "sphinx_proof" in cfg["sphinx"]["extra_extensions"]


@pytest.mark.parametrize("src", CHAPTER_SOURCES, ids=lambda p: p.stem)
def test_chapter_conventions(src):
    nb = jupytext.read(src)
    code = [c for c in nb.cells if c.cell_type == "code"]
    install, params = code[0], code[1]
    assert {"skip-execution", "nbval-skip"} <= set(install.metadata.get("tags", [])), (
        "Colab install cell first"
    )
    assert "google.colab" in install.source and "%pip install" in install.source
    assert "parameters" in params.metadata.get("tags", []), "second code cell holds the parameters"
    for name in ("QUICK", "DEVICE", "SEED"):
        assert re.search(rf"^{name}\s*=", params.source, re.M), f"parameter {name} missing"
    assert f'setup("{src.stem}"' in "".join(c.source for c in code), (
        "chapter calls cp.lab.chapter.setup(<its stem>)"
    )
    assert any(re.match(r"# \S", c.source) for c in nb.cells if c.cell_type == "markdown"), "needs a # title"


def test_bibliography_parses_and_cited_keys_exist():
    pybtex = pytest.importorskip("pybtex.database")
    keys = set(pybtex.parse_file(str(ROOT / "book" / "references.bib")).entries)
    cited = set()
    for src in [*CHAPTER_SOURCES, *(ROOT / "book").glob("*.md")]:
        for group in re.findall(r"\{cite(?::[pt])?\}`([^`]+)`", src.read_text()):
            cited |= {k.strip() for k in group.split(",")}
    assert cited <= keys, f"cited but not in references.bib: {sorted(cited - keys)}"


def test_expected_nonreproductions_have_reasons():
    data = json.loads((ROOT / "book" / "expected_nonreproductions.json").read_text())
    assert all(isinstance(v, str) and len(v.strip()) > 10 for v in data.values())


def test_generated_pages(tmp_path):
    from bookpages import write_report, write_runtimes

    claims = tmp_path / "claims"
    claims.mkdir()
    (claims / "01_x.json").write_text(
        json.dumps(
            [
                {
                    "id": "x.a",
                    "paper": "p",
                    "measured": {"e": 1e-9},
                    "holds": True,
                    "note": "n",
                    "chapter": "01_x",
                },
                {
                    "id": "x.b",
                    "paper": "p",
                    "measured": 3,
                    "holds": None,
                    "note": "no GPU",
                    "chapter": "01_x",
                },
            ]
        )
    )
    write_report(tmp_path / "report.md", claims, tmp_path / "none.json")
    text = (tmp_path / "report.md").read_text()
    assert "**2 claims:** 1 reproduced, 0 did not reproduce, 1 not reproducible at this scale." in text
    assert "| `x.b` | p | 3 | not reproducible at this scale | no GPU |" in text
    chapters = tmp_path / "chapters"
    chapters.mkdir()
    nb = {
        "cells": [{"cell_type": "markdown", "source": "# Title X"}],
        "metadata": {
            "papermill": {"duration": 12.5, "parameters": {"QUICK": True}, "end_time": "2026-01-01T00:00:00"}
        },
    }
    (chapters / "01_x.ipynb").write_text(json.dumps(nb))
    write_runtimes(tmp_path / "runtimes.md", chapters, tmp_path / "devices")
    assert (
        "| [Title X](chapters/01_x.ipynb) | quick | 12.5 | unknown | 2026-01-01 00:00:00 |"
        in (tmp_path / "runtimes.md").read_text()
    )
