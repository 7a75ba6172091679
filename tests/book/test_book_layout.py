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


def test_every_claim_has_a_reviewed_verdict_and_every_verdict_a_claim():
    """book/verdicts.json is valid (reasons for every expected False or None) and covers exactly the claims
    the chapters record."""
    from test_prose import claim_cells

    from companion.lab import claims

    expected = claims.expected_verdicts(ROOT / "book" / "verdicts.json")
    recorded = set()
    for src in CHAPTER_SOURCES:
        recorded |= set(claim_cells(src)[1])
    assert recorded == set(expected), (sorted(recorded - set(expected)), sorted(set(expected) - recorded))


def _entry(cid, kind, holds, measured, criterion):
    return {"id": cid, "kind": kind, "paper": "p", "claim": f"Claim {cid} in one sentence.",
            "source": "Sec. 1: 'q'" if kind == "paper" else "",
            "criterion": criterion, "measured": measured, "holds": holds, "control": False if kind == "paper" else None,
            "control_note": "the baseline" if kind == "paper" else "", "note": "n", "chapter": "01_x", "mode": "default"}  # fmt: skip


def test_generated_pages(tmp_path):
    from bookpages import write_report, write_runtimes

    claims = tmp_path / "claims"
    claims.mkdir()
    rows = [
        _entry(
            "x.a", "paper", True, {"headline": "3.1x speed-up", "curve": [1, 2]}, "speed-up > 2x at 10 NFE"
        ),
        _entry("x.b", "paper", None, 3, "FID at CIFAR-10 scale"),
        _entry("x.c", "finding", True, {"order": 2.1}, "shipped 3M is order 2"),
        _entry("x.d", "check", True, {"z": 1.0}, "within 3 SE"),
    ]
    (claims / "01_x.json").write_text(json.dumps(rows))
    (tmp_path / "verdicts.json").write_text(
        json.dumps({"x.b": {"kind": "paper", "expected": None, "reason": "no GPU"}})
    )
    chapters = tmp_path / "chapters"
    chapters.mkdir()
    nb = {
        "cells": [
            {"cell_type": "markdown", "source": "# Title X"},
            {"cell_type": "markdown", "source": "## Speed: the `fast` solver, $O(h^2)$"},
            {"cell_type": "code", "source": 'claims.state("x.a", ...)\nclaims.record("x.a", measured=m)'},
            {"cell_type": "markdown", "source": "## Checks and findings"},
            {"cell_type": "code", "source": 'for cid in ("x.b", "x.c", "x.d"):\n    claims.record(cid, ...)'},
        ],
        "metadata": {
            "papermill": {"duration": 12.5, "parameters": {"QUICK": True}, "end_time": "2026-01-01T00:00:00"}
        },
    }
    (chapters / "01_x.ipynb").write_text(json.dumps(nb))
    write_report(tmp_path / "report.md", claims, tmp_path / "verdicts.json", chapters)
    text = (tmp_path / "report.md").read_text()
    assert "**2 paper claims:** 1 reproduced, 0 did not reproduce, 1 not decidable at our scale." in text
    assert "1 finding of ours and 1 check." in text
    assert "## [Title X](chapters/01_x.ipynb)" in text
    rows = re.findall(r'<div class="claim-row" id="claim-([\w-]+)">(.*?)</details></div>', text, re.S)
    assert [r[0] for r in rows] == ["x-a", "x-b", "x-c", "x-d"]
    row = dict(rows)
    # the claim in a sentence, the headline figure, the verdict (words; the mark is the CSS class's)
    assert "Claim x.a in one sentence." in row["x-a"] and ">3.1x speed-up<" in row["x-a"]
    assert '<div class="claim-verdict claim-yes">reproduced</div>' in row["x-a"]
    assert '<div class="claim-verdict claim-open">not decidable at our scale</div>' in row["x-b"]
    # a link to the section that records it: Sphinx's id of the heading above the recording cell
    assert 'href="chapters/01_x.html#speed-the-fast-solver-o-h-2"' in row["x-a"]
    assert 'href="chapters/01_x.html#checks-and-findings"' in row["x-b"]
    # the rest one click away: criterion, why not, and the full measured record
    assert "<b>Criterion.</b> FID at CIFAR-10 scale" in row["x-b"] and "<b>Why not.</b> no GPU" in row["x-b"]
    assert '"curve": [\n  1,\n  2\n ]' in row["x-a"].replace("&quot;", '"')  # whole, not cut to a headline
    assert (
        text.index("**Findings")
        < text.index("x.c</code>")
        < text.index("**Checks")
        < text.index("x.d</code>")
    )
    assert "{download}`report-claims.json`" in text
    assert [c["id"] for c in json.loads((tmp_path / "report-claims.json").read_text())] == [
        "x.a",
        "x.b",
        "x.c",
        "x.d",
    ]
    write_runtimes(tmp_path / "runtimes.md", chapters, tmp_path / "devices")
    assert (
        "| [Title X](chapters/01_x.ipynb) | quick | 12.5 | unknown | 2026-01-01 00:00:00 |"
        in (tmp_path / "runtimes.md").read_text()
    )
