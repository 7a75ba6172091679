"""The two generated pages of the book: run times (from papermill's metadata) and the reproduction
report (from the claims ledger, build/claims/*.json). Both are rewritten on every `make book`."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

HOLDS = {True: "reproduced", False: "did not reproduce", None: "not reproducible at this scale"}


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def _cell(text: object) -> str:
    """One Markdown table cell: no pipes or newlines."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def chapter_title(nb: dict, fallback: str) -> str:
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "markdown":
            for line in "".join(cell.get("source", "")).splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    return fallback


def write_runtimes(dest: Path, chapters: Path, devices: Path) -> None:
    rows = []
    total = 0.0
    for nb_path in sorted(chapters.glob("*.ipynb")):
        nb = json.loads(nb_path.read_text())
        pm = nb.get("metadata", {}).get("papermill", {})
        seconds = float(pm.get("duration") or 0.0)
        total += seconds
        params = pm.get("parameters", {})
        mode = "quick" if params.get("QUICK") else "default"
        dev_file = devices / f"{nb_path.stem}.json"
        device = json.loads(dev_file.read_text())["device"] if dev_file.is_file() else "unknown"
        title = chapter_title(nb, nb_path.stem)
        rows.append(
            f"| [{_cell(title)}](chapters/{nb_path.stem}.ipynb) | {mode} | {seconds:.1f} | {_cell(device)} | "
            f"{_cell(pm.get('end_time', '')[:19].replace('T', ' '))} |"
        )
    text = [
        "# Run times",
        "",
        "Every chapter is executed by papermill before the book is rendered; this page is generated from the",
        "executed notebooks' metadata by `make book` (it is never edited by hand).",
        "",
        "| chapter | mode | seconds | device | finished (UTC) |",
        "|---|---|---:|---|---|",
        *rows,
        "",
        f"Total: {total:.1f} s over {len(rows)} chapter(s).",
        "",
    ]
    _atomic_write(dest, "\n".join(text))


def _fmt_measured(m: object) -> str:
    def short(v: object) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        if isinstance(v, list):
            return "[" + ", ".join(short(x) for x in v[:6]) + (", ..." if len(v) > 6 else "") + "]"
        if isinstance(v, dict):
            return ", ".join(f"{k}: {short(x)}" for k, x in v.items())
        return str(v)

    return short(m)


def write_report(dest: Path, claims_dir: Path, expected_file: Path) -> None:
    expected = json.loads(expected_file.read_text()) if expected_file.is_file() else {}
    claims = []
    for f in sorted(claims_dir.glob("*.json")):
        claims.extend(json.loads(f.read_text()))
    counts = {k: sum(1 for c in claims if c["holds"] is k) for k in (True, False, None)}
    text = [
        "# Reproduction report",
        "",
        "Each chapter records the paper claims it checks in a ledger (`companion.lab.claims.record`); this page is",
        "generated from that ledger by `make book`. A claim that did not reproduce fails the build unless it is",
        "listed, with its reason, in `book/expected_nonreproductions.json`.",
        "",
        f"**{len(claims)} claims:** {counts[True]} reproduced, {counts[False]} did not reproduce, "
        f"{counts[None]} not reproducible at this scale.",
        "",
    ]
    by_chapter: dict[str, list[dict]] = {}
    for c in claims:
        by_chapter.setdefault(c["chapter"], []).append(c)
    for chapter, cs in by_chapter.items():
        text += [
            f"## [{chapter}](chapters/{chapter}.ipynb)",
            "",
            "| claim | paper | measured | verdict | note |",
            "|---|---|---|---|---|",
        ]
        for c in cs:
            verdict = HOLDS[c["holds"]]
            if c["holds"] is False and c["id"] in expected:
                verdict += f" (expected: {expected[c['id']]})"
            text.append(
                f"| `{_cell(c['id'])}` | {_cell(c['paper'])} | {_cell(_fmt_measured(c['measured']))} | "
                f"{_cell(verdict)} | {_cell(c['note'])} |"
            )
        text.append("")
    _atomic_write(dest, "\n".join(text))
