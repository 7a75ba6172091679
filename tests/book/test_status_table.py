"""The README's status table stays true: every seed paper is listed, chapters and claim ids exist."""

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
import status_table  # noqa: E402

PAPERS = status_table.load_papers()


def _strip_marks(text: str) -> str:
    return re.sub("[✅❌➖⏳]", "?", text)


def test_readme_table_matches_papers_yml():
    readme = (ROOT / "README.md").read_text()
    table = readme.split(status_table.BEGIN, 1)[1].split(status_table.END, 1)[0].strip()
    assert _strip_marks(table) == _strip_marks(status_table.render(PAPERS, {}, status_table.load_kinds())), (
        "run `make book`"
    )


def test_every_paper_is_cited_and_its_chapter_and_claims_exist():
    bib = (ROOT / "book" / "references.bib").read_text()
    for p in PAPERS:
        assert re.search(rf"@\w+\{{{p['key']},", bib), f"{p['key']} missing from references.bib"
        if p.get("chapter"):
            src = ROOT / "notebooks" / f"{p['chapter']}.md"
            assert src.is_file(), f"{p['key']}: chapter {p['chapter']} does not exist"
            text = src.read_text()
            for claim in p.get("claims", []):
                assert f'"{claim}"' in text, f"{p['key']}: claim {claim} is not recorded in {src.name}"
        else:
            assert not p.get("claims"), f"{p['key']}: claims listed without a chapter"
