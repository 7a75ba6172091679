"""The two generated pages of the book: run times (from papermill's metadata) and the reproduction
report (from the claims ledger, build/claims/*.json). Both are rewritten on every `make book`."""

from __future__ import annotations

import html
import json
import os
import tempfile
from pathlib import Path


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


def headline(measured: object) -> str:
    """The one figure a reader scans: ``measured["headline"]`` when the chapter names it, else the first
    scalar of the record."""
    if isinstance(measured, dict):
        if "headline" in measured:
            return _fmt_measured(measured["headline"])
        for k, v in measured.items():
            if isinstance(v, (int, float, str)) and not isinstance(v, bool):
                return f"{k}: {_fmt_measured(v)}"
        return ""
    return _fmt_measured(measured)


KIND_TITLE = {
    "paper": "Paper claims",
    "finding": "Findings (ours, about the papers' code or results)",
    "check": "Checks (identities and consistency tests)",
}
VERDICT = {
    "paper": {True: "✅ reproduced", False: "❌ did not reproduce", None: "➖ not decidable at our scale"},
    "finding": {True: "✅ holds", False: "❌ does not hold", None: "➖ not decidable"},
    "check": {True: "✅ passes", False: "❌ fails", None: "➖ not decidable"},
}


def write_report(dest: Path, claims_dir: Path, verdicts_file: Path, chapters_dir: Path | None = None) -> None:
    """book/report.md: per chapter (by title), paper claims apart from findings and checks, a sentence,
    one figure and the verdict per row; the full records in a collapsed block."""
    expected = json.loads(verdicts_file.read_text()) if verdicts_file.is_file() else {}
    claims = []
    for f in sorted(claims_dir.glob("*.json")):
        claims.extend(json.loads(f.read_text()))
    paper = [c for c in claims if c["kind"] == "paper"]
    count = {k: sum(1 for c in paper if c["holds"] is k) for k in (True, False, None)}
    others = {k: sum(1 for c in claims if c["kind"] == k) for k in ("finding", "check")}
    text = [
        "# Reproduction report",
        "",
        "Each chapter states the claims it checks before computing them and records the verdicts in a ledger",
        "(`companion.lab.claims`); `make book` writes this page from that ledger. Every paper claim has a",
        "negative control (the same criterion on an input that must fail it) that came out False, and every",
        "verdict matches the reviewed one in `book/verdicts.json`: a change in either direction fails the build.",
        "",
        f"**{len(paper)} paper claims:** {count[True]} reproduced, {count[False]} did not reproduce, "
        f"{count[None]} not decidable at our scale. Beside them: {others['finding']} findings of ours and "
        f"{others['check']} checks.",
        "",
    ]
    by_chapter: dict[str, list[dict]] = {}
    for c in claims:
        by_chapter.setdefault(c["chapter"], []).append(c)
    for stem, cs in by_chapter.items():
        nb_path = (chapters_dir / f"{stem}.ipynb") if chapters_dir else None
        title = (
            chapter_title(json.loads(nb_path.read_text()), stem) if nb_path and nb_path.is_file() else stem
        )
        text += [f"## [{title}](chapters/{stem}.ipynb)", ""]
        for kind in ("paper", "finding", "check"):
            rows = [c for c in cs if c["kind"] == kind]
            if not rows:
                continue
            text += [f"**{KIND_TITLE[kind]}**", "", "| claim | figure | verdict |", "|---|---|---|"]
            for c in rows:
                text.append(
                    f"| `{_cell(c['id'])}` | {_cell(headline(c['measured']))} | {VERDICT[kind][c['holds']]} |"
                )
            text.append("")
            for c in rows:  # the criterion, the control and, where it did not hold, why: one click away
                why = expected.get(c["id"], {}).get("reason", "") if c["holds"] is not True else ""
                body = f"<b>Criterion.</b> {html.escape(c['criterion'])}"
                if c.get("control_note"):
                    body += f"<br><b>Control</b> (must fail): {html.escape(c['control_note'])}"
                if why:
                    body += f"<br><b>Why not.</b> {html.escape(why)}"
                summary = f"<code>{html.escape(c['id'])}</code>: criterion"
                text.append(f"<details><summary>{summary}</summary>{body}</details>")
            text.append("")
        records = html.escape(json.dumps(cs, indent=1))
        text += [f"<details><summary>Full records ({len(cs)})</summary><pre>{records}</pre></details>", ""]
    _atomic_write(dest, "\n".join(text))
