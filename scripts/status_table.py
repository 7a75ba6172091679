"""The README's status table: seed paper -> chapter -> solver -> claims, with each claim's verdict.

Built from book/papers.yml (what the book covers) and the claims ledger build/claims/*.json (what the
last executed chapters measured). `make book` rewrites the table between the README's markers;
`python scripts/status_table.py --check` fails when the committed table is out of date.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- status:begin -->", "<!-- status:end -->"
MARK = {True: "✅", False: "❌", None: "➖"}


def load_papers(path: Path = ROOT / "book" / "papers.yml") -> list[dict]:
    return yaml.safe_load(path.read_text())["papers"]


def load_verdicts(claims_dir: Path = ROOT / "build" / "claims") -> dict[str, tuple[str, bool | None]]:
    """Claim id -> (kind, verdict) from the ledger."""
    out: dict[str, tuple[str, bool | None]] = {}
    for f in sorted(claims_dir.glob("*.json")):
        for c in json.loads(f.read_text()):
            out[c["id"]] = (c["kind"], c["holds"])
    return out


def load_kinds(path: Path = ROOT / "book" / "verdicts.json") -> dict[str, str]:
    """Claim id -> kind, from the reviewed verdicts (for claims the ledger does not hold yet)."""
    return {k: v["kind"] for k, v in json.loads(path.read_text()).items()} if path.is_file() else {}


def _marks(ids: list[str], verdicts: dict[str, tuple[str, bool | None]]) -> str:
    return " ".join(f"{MARK[verdicts[c][1]] if c in verdicts else '⏳'} `{c}`" for c in ids) or "—"


def render(
    papers: list[dict], verdicts: dict[str, tuple[str, bool | None]], kinds: dict[str, str] | None = None
) -> str:
    """The table. A claim listed in papers.yml is a paper claim, a finding or a check as the ledger (else
    book/verdicts.json) says; findings and checks go to their own column."""
    kinds = {**(kinds or {}), **{c: v[0] for c, v in verdicts.items()}}
    lines = [
        "| paper | part | chapter | solver in `companion` | paper claims (✅ reproduced, ❌ not, ➖ not decidable at our scale) | our findings and checks |",
        "|---|---|---|---|---|---|",
    ]
    for p in papers:
        title = f"[{p['title']}](https://arxiv.org/abs/{p['arxiv']})"
        if not p.get("seed", True):
            title += " (not a seed paper)"
        chapter = f"`{p['chapter']}`" if p.get("chapter") else "planned"
        solver = p.get("solver") or "—"
        ids = p.get("claims", [])
        paper = [c for c in ids if kinds.get(c, "paper") == "paper"]
        other = [c for c in ids if c not in paper]
        lines.append(
            f"| {title} | {p['part']} | {chapter} | {solver} | {_marks(paper, verdicts)} | {_marks(other, verdicts)} |"
        )
    seeds = [p for p in papers if p.get("seed", True)]  # `seed: false` rows: papers a chapter needs besides
    covered = sum(1 for p in seeds if p.get("chapter"))
    lines += [
        "",
        f"{covered} of {len(seeds)} seed papers have a chapter so far; ⏳ marks a claim not yet executed. "
        "Only paper claims count as reproduced or not; the last column holds our findings about the papers' "
        "code and our consistency checks (book/report.md has every record).",
    ]
    return "\n".join(lines)


def splice(readme: str, table: str) -> str:
    if BEGIN not in readme or END not in readme:
        raise ValueError(f"README.md must contain the markers {BEGIN} and {END}")
    head, rest = readme.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{table}\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="fail if README.md's table is out of date")
    args = ap.parse_args(argv)
    readme_path = ROOT / "README.md"
    readme = readme_path.read_text()
    new = splice(readme, render(load_papers(), load_verdicts(), load_kinds()))
    if args.check:
        if new != readme:
            print("README.md's status table is out of date: run `make book`")
            return 1
        return 0
    if new != readme:
        fd, tmp = tempfile.mkstemp(dir=ROOT, prefix=".README.")
        with os.fdopen(fd, "w") as fh:
            fh.write(new)
        os.replace(tmp, readme_path)
        print("[book] README.md status table updated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
