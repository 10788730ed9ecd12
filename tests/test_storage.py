"""``open_atomic``: readers never see a partial file; a writer removes its own temporary file and
those of killed writers of this host, never a running writer's."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

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


def test_a_killed_writers_temporary_file_is_removed_by_the_next_writer(tmp_path):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    host = socket.gethostname()
    killed = tmp_path / f".out.csv.{host}-{int(dead.stdout)}-0123456789ab.tmp"  # its process is gone
    running = tmp_path / f".out.csv.{host}-{os.getppid()}-0123456789ab.tmp"  # its process runs
    elsewhere = tmp_path / f".out.csv.other-host-{int(dead.stdout)}-0123456789ab.tmp"  # cannot tell
    for temp in (killed, running, elsewhere):
        temp.write_text("partial")
    with open_atomic(as_path(str(tmp_path / "out.csv"))) as handle:
        handle.write("whole\n")
    assert _temps(tmp_path) == sorted([running.name, elsewhere.name])
    assert (tmp_path / "out.csv").read_text() == "whole\n"


def test_lineage_names_the_file_written_not_its_temporary_name(tmp_path, monkeypatch):
    """With a lineage reader installed (OpenLineage), each list is one output under its own name."""
    from airflow.sdk import lineage

    collector = lineage.HookLineageCollector()
    monkeypatch.setattr(lineage, "get_hook_lineage_collector", lambda: collector)
    target = as_path(str(tmp_path / "rcs.csv"))
    with open_atomic(target) as handle:
        handle.write("row,e164\n")
        handle.write("0,+14155550100\n")
    with target.open("r") as handle:  # (Airflow's own tracking of reads, for comparison)
        handle.read()
    assets = collector.collected_assets
    assert [info.asset.uri for info in assets.outputs] == [str(target)]
    assert [info.asset.uri for info in assets.inputs] == [str(target)]
