"""Where a preflight run keeps its files (any object store, through ``as_path``), and the CSV
reading and writing they all share. Tasks hand each other locations, never data."""

from __future__ import annotations

import csv
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from typing import Any

from airflow.sdk import ObjectStoragePath
from airflow.sdk.exceptions import AirflowFailException

from airflow_provider_kaleyra.utils.storage import open_atomic

WORK = "work"  # files only the preflight's own tasks read
ROWS = f"{WORK}/rows.csv"  # every audience row: its columns, then e164 and the invalid reason
SOIP_NUMBERS = f"{WORK}/soip_numbers.csv"  # the numbers the SOIP leg asks about
SOIP_RESULTS = f"{WORK}/soip.jsonl"  # the callback sensor's output
SHARD_NUMBERS = WORK + "/numbers_{:03d}.csv"  # a shard's input: its part of the distinct valid numbers
SHARD_OUTPUT = WORK + "/rcs_shard_{:03d}.csv"  # a shard's output
PARTITIONS = 64  # a step that must see each number's facts together holds about 1/64 of them at a time
E164 = "e164"
INVALID_REASON = "invalid_reason"


def airflow_home() -> str:
    return os.environ.get("AIRFLOW_HOME") or os.path.expanduser("~/airflow")


def safe_name(run_id: str) -> str:
    """A run id as a folder name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", run_id).strip("_") or "run"


def require(path: ObjectStoragePath, written_by: str) -> ObjectStoragePath:
    """Fail at once (no retries) when a file an earlier task wrote is not visible from this host."""
    if not path.exists():
        raise AirflowFailException(
            f"{path} (written by task {written_by!r}) is not visible from this worker. When tasks run "
            "on different hosts, set the preflight's `output` (the DAG param output_location) to "
            "storage every worker shares, e.g. s3://bucket/prefix with storage_conn_id."
        )
    return path


def read_csv(path: ObjectStoragePath) -> Iterator[list[str]]:
    """Rows of a CSV file as lists, header first."""
    with path.open("r", encoding="utf-8-sig", newline="", errors="replace") as handle:
        yield from csv.reader(handle)


class CsvWriter(ExitStack):
    """CSV files written together, each published atomically on a clean exit (none on an error)."""

    def __init__(self) -> None:
        super().__init__()
        self._writers: dict[str, Any] = {}
        self.rows: dict[str, int] = {}

    def open(self, name: str, path: ObjectStoragePath, header: Iterable[str]) -> None:
        self._writers[name] = csv.writer(self.enter_context(open_atomic(path)))
        self._writers[name].writerow(list(header))
        self.rows[name] = 0

    def write(self, name: str, row: Iterable[Any]) -> None:
        self._writers[name].writerow(row)
        self.rows[name] += 1


def write_csv(path: ObjectStoragePath, header: Iterable[str], rows: Iterable[Iterable[Any]]) -> int:
    with CsvWriter() as out:
        out.open("file", path, header)
        for row in rows:
            out.write("file", row)
    return out.rows["file"]


class Partitions(ExitStack):
    """Temporary files that numbers are spread over by value: joining or de-duplicating by number one
    part at a time holds about ``1 / PARTITIONS`` of the numbers, whatever the audience's size."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        folder = self.enter_context(tempfile.TemporaryDirectory(prefix=prefix))
        self.paths = [os.path.join(folder, f"{i:03d}") for i in range(PARTITIONS)]
        self.handles = [self.enter_context(open(p, "w", encoding="utf-8", newline="")) for p in self.paths]  # noqa: SIM115

    def index(self, e164: str) -> int:
        """The part ``e164`` goes to (its last digits: spread evenly, the same on every host)."""
        return int(e164[-6:]) % PARTITIONS

    def written(self) -> Iterator[str]:
        """Each part's path, once its writing is done."""
        for handle, path in zip(self.handles, self.paths, strict=True):
            handle.close()
            yield path
