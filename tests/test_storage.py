"""``open_atomic``: readers never see a partial file, and a writer touches only its own temporary file."""

from __future__ import annotations

import pytest

from airflow_provider_kaleyra.utils.storage import as_path, open_atomic


def _temps(tmp_path):
    return sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp"))


def test_two_writers_of_one_path_do_not_delete_each_others_temporary_file(tmp_path):
    target = as_path(str(tmp_path / "out.csv"))
    with open_atomic(target) as first:
        first.write("first,")
        with open_atomic(target) as second:
            second.write("second\n")
            assert len(_temps(tmp_path)) == 2
        assert target.read_text() == "second\n" and len(_temps(tmp_path)) == 1
        first.write("done\n")
    assert target.read_text() == "first,done\n"  # the last writer to finish wins, whole
    assert _temps(tmp_path) == []


def test_a_failed_writer_removes_its_temporary_file_and_leaves_the_old_file(tmp_path):
    target = as_path(str(tmp_path / "out.csv"))
    target.write_text("old\n")
    other = tmp_path / ".out.csv.0123456789ab.tmp"  # another writer's, mid-write
    other.write_text("partial")

    def killed_midway() -> None:
        with open_atomic(target) as handle:
            handle.write("half")
            raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        killed_midway()
    assert target.read_text() == "old\n"
    assert _temps(tmp_path) == [other.name] and other.read_text() == "partial"
