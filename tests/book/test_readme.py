"""The README's Python example runs as written (it is the first thing a practitioner copies)."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_readme_python_blocks_run():
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert blocks, "the README shows the package in a ```python block"
    for code in blocks:
        exec(compile(code, "README.md", "exec"), {})
