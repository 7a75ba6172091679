"""After the HTML is built (scripts/build_book.py runs this): screenshots for the README.

Headless Chromium (scripts/check_book.py: served from 127.0.0.1, no network) takes a 1200x900 shot of
the intro and of the first chapter into docs/screenshots/{intro,chapter}.png, and the reproduction report
at 1280x900 and at 390x844 (a phone) into docs/screenshots/report-{1280,390}.png, each written atomically.
They are refreshed only by a default-mode build (`make book`): a quick build (as in `make test`) would
show smaller experiments than the prose describes, so it leaves the committed pictures alone. Without
Chromium this says why it skipped and succeeds; a page that is broken in the browser fails the build.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import check_book as cb  # noqa: E402

OUT = ROOT / "docs" / "screenshots"
SIZE = (1200, 900)


def pages_to_shoot(root: Path = ROOT) -> dict[str, str]:
    """{png name: page} for the intro (the TOC root) and the first chapter of the TOC."""
    toc = yaml.safe_load((root / "_toc.yml").read_text())
    files = [c["file"] for part in toc.get("parts", []) for c in part.get("chapters", [])]
    chapters = [f for f in files if f.startswith("book/chapters/")]
    shots = {"intro.png": f"{toc['root']}.html"}
    if chapters:
        shots["chapter.png"] = f"{chapters[0]}.html"
    return shots


def quick_chapters(root: Path = ROOT) -> list[str]:
    """Chapters whose executed notebook came from a quick (small-size) run."""
    quick = []
    for nb in sorted((root / "book" / "chapters").glob("*.ipynb")):
        params = json.loads(nb.read_text()).get("metadata", {}).get("papermill", {}).get("parameters", {})
        if params.get("QUICK"):
            quick.append(nb.stem)
    return quick


# The reproduction report as a reader sees it on a laptop (its top) and on a phone (its first chapter).
REPORT = "book/report.html"
REPORT_SHOTS = {"report-1280.png": ((1280, 900), None), "report-390.png": ((390, 844), "article h2")}


def take_screenshots(html: Path = cb.HTML, out: Path = OUT) -> list[Path]:
    shots = pages_to_shoot()
    with cb.serve(html) as base, cb.chromium() as browser:
        done = [cb.screenshot(browser, base, html, page, out / name, SIZE) for name, page in shots.items()]
        for name, (size, scroll_to) in REPORT_SHOTS.items():
            done.append(cb.screenshot(browser, base, html, REPORT, out / name, size, scroll_to))
        return done


def main() -> int:
    why = cb.browser_unavailable()
    if why:
        print(f"[screenshots] skipped: {why}")
        return 0
    quick = quick_chapters()
    if quick:
        print(f"[screenshots] skipped: quick-mode build ({', '.join(quick)}); `make book` refreshes them")
        return 0
    try:
        written = take_screenshots()
    except Exception as exc:
        print(f"[screenshots] FAILED: {exc}")
        return 1
    for p in written:
        print(f"[screenshots] {p.relative_to(ROOT)} ({p.stat().st_size // 1024} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
