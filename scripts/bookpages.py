"""The two generated pages of the book: run times (from papermill's metadata) and the reproduction
report (from the claims ledger, build/claims/*.json). Both are rewritten on every `make book`."""

from __future__ import annotations

import html
import json
import os
import re
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


def _md_text(heading: str) -> str:
    """A MyST heading's text as Sphinx sees it: markup, roles and link targets dropped."""
    t = re.sub(r"\{[a-z:-]+\}`([^`]*)`", r"\1", heading)  # {role}`text`
    t = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", t)  # [text](target)
    return re.sub(r"[`*$\\]", "", t).strip()


def section_anchor(nb: dict, cid: str) -> tuple[str, str] | None:
    """(section title, HTML id) of the section that measures claim ``cid``: the heading above the cell that
    records it (``claims.record(`` with the id written out), else above the first cell naming the id."""
    from docutils.nodes import make_id

    literal = (f'"{cid}"', f"'{cid}'")
    cells = nb.get("cells", [])
    for want_record in (True, False):
        heading = None
        for cell in cells:
            src = "".join(cell.get("source", ""))
            if cell.get("cell_type") == "markdown":
                for line in src.splitlines():
                    m = re.match(r"(#{2,6})\s+(.*)", line)
                    if m:
                        heading = _md_text(m.group(2))
                continue
            if any(q in src for q in literal) and ("claims.record(" in src or not want_record):
                return (heading, make_id(heading)) if heading else None
    return None


def _measured_json(m: object) -> str:
    """The full measured record, indented, with floats at 6 significant digits."""

    def short(v: object) -> object:
        if isinstance(v, float):
            return float(f"{v:.6g}")
        if isinstance(v, list):
            return [short(x) for x in v]
        if isinstance(v, dict):
            return {k: short(x) for k, x in v.items()}
        return v

    return json.dumps(short(m), indent=1)


def _claim_row(c: dict, expected: dict, chapter_html: str, anchor: tuple[str, str] | None) -> str:
    e = html.escape
    kind = c["kind"]
    where = (
        f' <a class="claim-where" href="{chapter_html}#{anchor[1]}">measured in § {e(anchor[0])}</a>'
        if anchor
        else ""
    )
    why = expected.get(c["id"], {}).get("reason", "") if c["holds"] is not True else ""
    body = [f"<p><b>Criterion.</b> {e(c['criterion'])}</p>"]
    if c.get("source"):
        body.append(f"<p><b>Source.</b> {e(c['source'])}</p>")
    if c.get("control_note"):
        body.append(
            f"<p><b>Control</b> (must come out False, came out {c['control']}): {e(c['control_note'])}</p>"
        )
    if why:
        body.append(f"<p><b>Why not.</b> {e(why)}</p>")
    if c.get("note"):
        body.append(f"<p><b>Note.</b> {e(c['note'])}</p>")
    body.append(f"<p><b>Measured</b> ({c['mode']} mode):</p><pre>{e(_measured_json(c['measured']))}</pre>")
    verdict = VERDICT[kind][c["holds"]].split(" ", 1)[1]  # the words; the mark comes from the CSS class
    state = {True: "yes", False: "no", None: "open"}[c["holds"]]
    return (
        f'<div class="claim-row" id="claim-{e(c["id"].replace(".", "-"))}">'
        f'<div class="claim-text">{e(c.get("claim") or c["criterion"])}'
        f'<br><code class="claim-id">{e(c["id"])}</code>{where}</div>'
        f'<div class="claim-figure"><span class="claim-label">measured </span>{e(headline(c["measured"]))}</div>'
        f'<div class="claim-verdict claim-{state}">{e(verdict)}</div>'
        f"<details><summary>criterion, control and the full record</summary>{''.join(body)}</details>"
        "</div>"
    )


def _n(k: int, noun: str) -> str:
    return f"{k} {noun}" + ("" if k == 1 else "s")


def write_report(dest: Path, claims_dir: Path, verdicts_file: Path, chapters_dir: Path | None = None) -> None:
    """book/report.md (and book/report-claims.json, every record): per chapter, by title and linked, paper
    claims apart from findings and checks; one row per claim with the claim in a sentence, the headline
    figure, the verdict and a link to the section that measures it; the rest one click away."""
    expected = json.loads(verdicts_file.read_text()) if verdicts_file.is_file() else {}
    claims = []
    for f in sorted(claims_dir.glob("*.json")):
        claims.extend(json.loads(f.read_text()))
    paper = [c for c in claims if c["kind"] == "paper"]
    count = {k: sum(1 for c in paper if c["holds"] is k) for k in (True, False, None)}
    others = {k: sum(1 for c in claims if c["kind"] == k) for k in ("finding", "check")}
    records = dest.with_name(f"{dest.stem}-claims.json")
    _atomic_write(records, json.dumps(claims, indent=1) + "\n")
    text = [
        "# Reproduction report",
        "",
        "Each chapter states the claims it checks before computing them and records the verdicts in a ledger",
        "(`companion.lab.claims`); `make book` writes this page from that ledger. Every paper claim has a",
        "negative control (the same criterion on an input that must fail it) that came out False, and every",
        "verdict matches the reviewed one in `book/verdicts.json`: a change in either direction fails the build.",
        "The exception is a wall-clock claim (marked `timing` there): its verdict depends on the machine and its",
        "load, so it is shown as measured, and its note says when the reviewed runs measured otherwise.",
        "",
        f"**{len(paper)} paper claims:** {count[True]} reproduced, {count[False]} did not reproduce, "
        f"{count[None]} not decidable at our scale. Beside them: {_n(others['finding'], 'finding')} of ours and "
        f"{_n(others['check'], 'check')}. Each row links to the section that measures the claim; its criterion, "
        f"control and full record open under it, and every record is in {{download}}`{records.name}`.",
        "",
    ]
    by_chapter: dict[str, list[dict]] = {}
    for c in claims:
        by_chapter.setdefault(c["chapter"], []).append(c)
    for stem, cs in by_chapter.items():
        nb_path = (chapters_dir / f"{stem}.ipynb") if chapters_dir else None
        nb = json.loads(nb_path.read_text()) if nb_path and nb_path.is_file() else {}
        title = chapter_title(nb, stem)
        text += [f"## [{title}](chapters/{stem}.ipynb)", ""]
        for kind in ("paper", "finding", "check"):
            rows = [c for c in cs if c["kind"] == kind]
            if not rows:
                continue
            text += [f"**{KIND_TITLE[kind]}**", ""]
            html_rows = [
                _claim_row(c, expected, f"chapters/{stem}.html", section_anchor(nb, c["id"])) for c in rows
            ]
            head = (
                '<div class="claim-row claims-head" aria-hidden="true"><div>claim</div><div>measured</div>'
                "<div>verdict</div></div>"
            )
            text += ['<div class="claims">' + head + "".join(html_rows) + "</div>", ""]
    _atomic_write(dest, "\n".join(text))
