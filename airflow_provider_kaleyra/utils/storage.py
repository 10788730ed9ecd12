"""The one way files are read and written: Airflow's ``ObjectStoragePath``, so ``file://``, ``s3://``,
``gs://`` and ``memory://`` behave the same, and a worker on another host reads what an earlier task wrote."""

from __future__ import annotations

import contextlib
import glob
import os
import socket
import uuid
from collections.abc import Iterator
from typing import IO

from airflow.sdk import ObjectStoragePath, lineage
from fsspec.implementations.local import LocalFileSystem


def as_path(
    value: str | os.PathLike[str] | ObjectStoragePath, conn_id: str | None = None
) -> ObjectStoragePath:
    """A path or URL (of the store of Airflow connection ``conn_id``) as an ``ObjectStoragePath``;
    plain local paths are made absolute (``~`` expanded)."""
    if isinstance(value, ObjectStoragePath):
        return value
    text = os.fspath(value)
    if "://" not in text:
        text = os.path.abspath(os.path.expanduser(text))
    return ObjectStoragePath(text, conn_id=conn_id)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError as exc:  # (PermissionError: another user's process, running)
        return not isinstance(exc, ProcessLookupError)
    return True


@contextlib.contextmanager
def open_atomic(path: ObjectStoragePath) -> Iterator[IO[str]]:
    """Open ``path`` for writing UTF-8 text so that readers never see a partial file: local files are
    written under a temporary name and renamed; an object store publishes an object when its upload ends."""
    if not isinstance(path.fs, LocalFileSystem):
        try:
            with path.open("w", encoding="utf-8", newline="") as handle:
                yield handle
        except BaseException:
            # closing an object store's file publishes what was written: take a partial file back
            with contextlib.suppress(Exception):
                path.unlink()
            raise
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix, host = f".{path.name}.", socket.gethostname()
    # Another writer's temporary file is left alone, unless that writer was a process of this host
    # that no longer runs (a task killed with SIGKILL, whose retry this is).
    for left in path.parent.glob(f"{glob.escape(prefix)}*.tmp"):
        writer_host, _, pid = left.name[len(prefix) : -len(".tmp")].rpartition("-")[0].rpartition("-")
        if writer_host == host and pid.isdigit() and not _running(int(pid)):
            with contextlib.suppress(FileNotFoundError):  # (another writer may remove it first)
                left.unlink()
    temp = path.with_name(f"{prefix}{host}-{os.getpid()}-{uuid.uuid4().hex[:12]}.tmp")
    try:
        # a plain file: Airflow's lineage (``ObjectStoragePath.open``) would name the temporary file
        with open(temp.path, "w", encoding="utf-8", newline="", errors="backslashreplace") as handle:
            yield handle
        temp.rename(path)
        lineage.get_hook_lineage_collector().add_output_asset(context=path, uri=str(path))  # what it became
    finally:
        temp.unlink(missing_ok=True)
