"""Result files out: one row per input row, as CSV or JSON Lines, and shard outputs merged back into one.
A block at a time: each distinct answer is encoded once (the tail of its lines), and inputs are quoted
or escaped only when the block needs it, giving the bytes of ``csv.writer`` and ``json.dumps``."""

from __future__ import annotations

import contextlib
import csv
import heapq
import json
from collections import Counter
from collections.abc import Iterable, Iterator
from itertools import repeat
from types import SimpleNamespace
from typing import IO, Any

from airflow.sdk import ObjectStoragePath

from airflow_provider_kaleyra.client.api import INVALID
from airflow_provider_kaleyra.rcs.answers import (
    FIELDS,
    SOURCE_CACHE,
    Answer,
    AnsweredRows,
    RcsResult,
    resumed_age,
    source_and_age,
)
from airflow_provider_kaleyra.utils.storage import as_path, open_atomic

OUTPUT_FIELDS = ("row", *FIELDS)
_INT_FIELDS = {"row", "age_seconds"}  # read back from CSV as numbers, as JSON Lines keeps them
_FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl"}
_CSV_SPECIAL = (",", '"', "\n", "\r")


def result_format(path: ObjectStoragePath) -> str:
    """``"csv"`` or ``"jsonl"``, from the output's suffix."""
    suffix = path.suffix.lower()
    if suffix not in _FORMATS:
        raise ValueError(f"output {path} must end in .csv, .jsonl or .json (JSON Lines), not {suffix!r}")
    return _FORMATS[suffix]


class ResultWriter:
    """Writes result rows (``row`` + :data:`answers.FIELDS`) as CSV or JSON Lines, a block at a time."""

    def __init__(self, handle: IO[str], fmt: str) -> None:
        self._handle = handle
        self._csv = fmt == "csv"
        self._tails: dict[Any, str] = {}  # (answer or reason, age) -> the encoded end of a line
        # csv's writerow returns what its file's write returns: here, the line itself
        self._csv_line = csv.writer(SimpleNamespace(write=str), lineterminator="").writerow
        self.rows = 0
        if self._csv:
            handle.write(",".join(OUTPUT_FIELDS) + "\n")

    def write(self, row: int, result: RcsResult) -> None:
        """One row (merging shard outputs); the engine writes blocks."""
        if result.e164 is None:
            self.write_block(AnsweredRows([row], [result.input], [None], [None], [result.error]))
            return
        age = result.age_seconds  # from the cache, or since an earlier try of its task asked (0: now)
        ages = [age if result.source == SOURCE_CACHE else resumed_age(age) if age else -1]
        answer = Answer(*result[2:6])
        self.write_block(AnsweredRows([row], [result.input], [result.e164], [answer], None, ages))

    def write_block(self, block: AnsweredRows) -> None:
        """The rows of one block, in one write."""
        raws, answers, reasons, ages = block.raws, block.answers, block.reasons, block.ages
        tails, tail = self._tails, self._tail
        if ages is not None:
            ends = [
                tail(a, age) if a is not None else tail(r, -1)
                for a, age, r in zip(answers, ages, reasons or repeat(None))
            ]
        elif reasons is None:  # every row valid, every answer from the API: the common block
            ends = [tails.get(a) or tail(a, -1) for a in answers]
        else:
            ends = [
                tails.get(a) or tail(a, -1) if a is not None else tail(r, -1)
                for a, r in zip(answers, reasons)
            ]
        text = all(type(raw) is str for raw in raws)
        joined = "".join(raws) if text else ""
        if self._csv:
            plain = text and not any(c in joined for c in _CSV_SPECIAL)
            # (csv.writer quotes an empty field only when it is alone on its line)
            inputs = raws if plain else ["" if r is None or r == "" else self._csv_line((r,)) for r in raws]
            lines = [
                f"{row},{raw},{e164 or ''},{end}\n"
                for row, raw, e164, end in zip(block.rows, inputs, block.e164s, ends)
            ]
        else:
            plain = text and joined.isascii() and joined.isprintable() and not any(c in joined for c in '"\\')
            inputs = [f'"{raw}"' for raw in raws] if plain else [json.dumps(raw) for raw in raws]
            numbers = [f'"{e164}"' if e164 else "null" for e164 in block.e164s]
            lines = [
                f'{{"row": {row}, "input": {raw}, "e164": {e164}, {end}}}\n'
                for row, raw, e164, end in zip(block.rows, inputs, numbers, ends)
            ]
        self._handle.write("".join(lines))
        self.rows += len(lines)

    def _tail(self, answer: Answer | str | None, age: int) -> str:
        """The end of a line for an answer (``age``: an ``AnsweredRows.ages`` entry) or an invalid row's reason."""
        key = answer if age == -1 else (answer, age)
        if key in self._tails:
            return self._tails[key]
        if answer is None or isinstance(answer, str):
            fields: tuple[Any, ...] = (INVALID, None, None, answer or "invalid", None, None)
        else:
            fields = (*answer, *source_and_age(age))
        if self._csv:
            encoded = self._csv_line("" if value is None else value for value in fields)
        else:
            encoded = json.dumps(dict(zip(FIELDS[2:], fields)))[1:-1]
        if len(self._tails) < 100_000:  # (ages and odd errors could make it grow without end)
            self._tails[key] = encoded
        return encoded


@contextlib.contextmanager
def write_results(path: ObjectStoragePath) -> Iterator[ResultWriter]:
    """``with write_results(path) as out: out.write(row, result)``: format from the suffix."""
    fmt = result_format(path)
    with open_atomic(path) as handle:
        yield ResultWriter(handle, fmt)


def read_results(path: ObjectStoragePath) -> Iterator[dict[str, Any]]:
    """Rows of a result file as dicts: ``row``, ``age_seconds`` as int, empty CSV cells but ``input`` None."""
    fmt = result_format(path)
    with path.open("r", encoding="utf-8", newline="") as handle:
        if fmt == "csv":
            for record in csv.DictReader(handle):
                yield {
                    name: (None if value == "" and name != "input" else value)
                    if name not in _INT_FIELDS or value == ""
                    else int(value)
                    for name, value in record.items()
                }
        else:
            for line in handle:
                if line.strip():
                    yield json.loads(line)


def merge_results(
    sources: Iterable[str | ObjectStoragePath], destination: str | ObjectStoragePath
) -> dict[str, Any]:
    """Merge shard outputs (the ``output`` of each XCom summary, each sorted by ``row``) into one file
    sorted by ``row``, streaming, in the format of ``destination``'s suffix; returns ``{"output", "rows",
    "statuses"}``. ``ValueError`` (nothing written) for an output listed twice or a row in two outputs."""
    target = as_path(destination)
    paths = [as_path(source) for source in sources]
    repeated = sorted(name for name, count in Counter(map(str, paths)).items() if count > 1)
    if repeated:
        raise ValueError(
            f"shard outputs listed more than once: {', '.join(repeated)}; each shard must write its "
            "own output (put {{ ti.map_index }} in the output path), or shards overwrite each other"
        )
    statuses: dict[str, int] = {}
    merged = heapq.merge(*(read_results(p) for p in paths), key=lambda record: record["row"])
    previous = None
    with write_results(target) as out:
        for record in merged:
            if record["row"] == previous:
                raise ValueError(
                    f"row {previous} is in more than one shard output: were two shards given the same index?"
                )
            previous = record["row"]
            result = RcsResult(*(record.get(name) for name in FIELDS))
            out.write(record["row"], result)
            statuses[result.status] = statuses.get(result.status, 0) + 1
    return {"output": str(target), "rows": out.rows, "statuses": statuses}
