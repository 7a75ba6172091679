"""companion._io.write_atomic: a file is written whole or not at all, and no temporary is left behind."""

import pytest

from companion._io import TMP_PREFIX, write_atomic


def test_text_and_bytes_replace_the_file_whole(tmp_path):
    p = tmp_path / "a.json"
    assert write_atomic(p, "one\n") == p and p.read_text() == "one\n"
    write_atomic(p, b"\x00two")
    assert p.read_bytes() == b"\x00two"
    assert [q.name for q in tmp_path.iterdir()] == ["a.json"]


def test_a_crash_before_the_rename_keeps_the_old_file_and_no_temporary(tmp_path):
    p = tmp_path / "a.json"
    p.write_text("old")

    def crash():
        assert any(q.name.startswith(TMP_PREFIX) for q in tmp_path.iterdir())  # the new data is on disk
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomic(p, "new", crash)
    assert p.read_text() == "old" and [q.name for q in tmp_path.iterdir()] == ["a.json"]
