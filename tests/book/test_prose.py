"""The chapters' prose: every measured number is glued from the computation, and every claim's criterion is
stated (``claims.state``) in a cell before the one that records its verdict (``claims.record``)."""

from __future__ import annotations

import re
from pathlib import Path

import jupytext
import pytest

ROOT = Path(__file__).resolve().parents[2]
CHAPTERS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.md"))

#: Inline and display math, code, MyST roles ({glue:text}`x`, {cite}`k`, {numref}`f`, ...), links' targets,
#: directive options and HTML comments carry numbers that are not prose.
_NOT_PROSE = [
    re.compile(r"\$\$.*?\$\$", re.S),
    re.compile(r"```.*?```", re.S),
    re.compile(r"^\s*:[\w-]+:.*$", re.M),  # directive options (:label:, :width: 80%)
    re.compile(r"(?<!\\)\$[^$\n]+?(?<!\\)\$"),
    re.compile(r"\{[\w:-]+\}`[^`]*`"),
    re.compile(r"`[^`]*`"),
    re.compile(r"\]\([^)]*\)"),
    re.compile(r"<!--.*?-->", re.S),
]
#: A decimal number typed in prose (3.5, 0.02, 1e-3, 2.5x); integers (step counts, years) are fine.
_DECIMAL = re.compile(r"(?<![\w.])\d+\.\d+(?:[eE][-+]?\d+)?(?![\d.])|(?<![\w.])\d+(?:\.\d+)?[eE][-+]?\d+\b")
#: Typed decimals that are names, not measurements (a version of a tool or of a paper).
_ALLOWED = {"1.0", "2.0", "3.0"}  # DPM-Solver-v3, "version 2.0", ...: only as parts of names


def _prose(text: str) -> str:
    for pattern in _NOT_PROSE:
        text = pattern.sub(" ", text)
    return text


def typed_decimals(markdown: str) -> list[str]:
    """The decimal numbers typed in a markdown cell's prose."""
    return [m for m in _DECIMAL.findall(_prose(markdown)) if m not in _ALLOWED]


def test_the_lint_sees_typed_numbers_and_ignores_math_code_and_glue():
    assert typed_decimals("the error is 0.337 against 0.113, a 2.98x gap") == ["0.337", "0.113", "2.98"]
    assert typed_decimals("tolerance 1e-3 and 5e-3 nats") == ["1e-3", "5e-3"]
    assert (
        typed_decimals(
            "$h = 0.5$, $$\\phi_3(-h) = 1/6 + 0.1 h$$, `eta=0.5`, {glue:text}`err:.3f`, {cite}`song2021`, "
            "[a link](https://arxiv.org/abs/2206.00927), steps 10 and 20 in 2022"
        )
        == []
    )


@pytest.mark.parametrize("src", CHAPTERS, ids=lambda p: p.stem)
def test_no_decimal_number_is_typed_in_a_chapters_prose(src):
    nb = jupytext.read(src)
    found = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "markdown":
            found += [f"cell {i}: {m}" for m in typed_decimals(cell.source)]
    assert not found, f"{src.name}: glue these numbers from the computation ({{glue:text}}`name`): {found}"


_ID = re.compile(r"[\"']([a-z0-9_]+\.[a-z0-9_.]+)[\"']")


def claim_cells(src: Path) -> tuple[dict[str, int], dict[str, int]]:
    """(first cell that states, last cell that records) per claim id: a code cell that calls
    ``claims.state(`` (``claims.record(``) states (records) every claim id written in it as a literal."""
    nb = jupytext.read(src)
    stated: dict[str, int] = {}
    recorded: dict[str, int] = {}
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        ids = set(_ID.findall(cell.source))
        if "claims.state(" in cell.source:
            for cid in ids:
                stated.setdefault(cid, i)
        if "claims.record(" in cell.source:
            for cid in ids:
                recorded[cid] = i
    return stated, recorded


@pytest.mark.parametrize("src", CHAPTERS, ids=lambda p: p.stem)
def test_every_criterion_is_stated_before_its_computation(src):
    stated, recorded = claim_cells(src)
    assert recorded, f"{src.name} records no claim"
    missing = sorted(set(recorded) - set(stated))
    assert not missing, f"{src.name}: claims recorded without claims.state(...): {missing}"
    late = sorted(c for c in recorded if stated[c] >= recorded[c])
    assert not late, f"{src.name}: state these claims in a cell before the one that records them: {late}"
