"""Sphinx extension (listed in _config.yml): fixes to the rendered pages that the browser tests found.

``book/_static/companion.css`` is added to every page: wide display math scrolls inside its own box, and
the reproduction report's rows fit a phone (the browser tests measure both at 1280 and 390 px).

Inline scripts registered after the builder starts (sphinx-thebe's `const THEBE_JS_URL = ...`,
sphinx-togglebutton's selector) are written twice into every page by Sphinx 7.4: the builder keeps them
with filename None, then re-adds them from the registry with filename '' before writing, and the two
do not compare equal. The second `const` declaration is a SyntaxError in every reader's console.
This drops the repeats, page by page, keeping the first of each.
"""

from __future__ import annotations


def _key(js) -> tuple:
    return (js.filename or "", js.priority, tuple(sorted(js.attributes.items())))


def dedupe_scripts(app, pagename, templatename, context, doctree) -> None:
    files = context.get("script_files")
    if not isinstance(files, list):
        return
    seen: set[tuple] = set()
    unique = []
    for js in files:
        key = _key(js) if hasattr(js, "attributes") else ("str", str(js))
        if key not in seen:
            seen.add(key)
            unique.append(js)
    files[:] = unique


def _static(app, config) -> None:
    from pathlib import Path

    config.html_static_path.append(str(Path(__file__).resolve().parents[1] / "book" / "_static"))


def setup(app):
    app.connect("config-inited", _static)
    app.add_css_file("companion.css")
    # runs after the themes' handlers (priority 500), so scripts they add are deduplicated too
    app.connect("html-page-context", dedupe_scripts, priority=900)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
