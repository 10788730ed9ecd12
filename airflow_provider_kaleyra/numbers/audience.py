"""Audience files in: one row per line, on any object store Airflow knows (``file://``, ``s3://``, ...).

Every byte goes through :class:`~airflow.sdk.ObjectStoragePath`. Reading streams in
blocks and never holds more than one line (capped at :data:`MAX_LINE_BYTES`); every
line of an audience becomes exactly one row, with a reason when it cannot be a number.
A ``.gz`` suffix (``audience.csv.gz``, ``audience.txt.gz``) is decompressed on the way,
still streaming. Error messages quote header names with phone numbers masked.
"""

from __future__ import annotations

import csv
import gzip
import os
import zlib
from collections.abc import Callable, Iterator
from typing import IO, NamedTuple

from airflow.sdk import ObjectStoragePath

from airflow_provider_kaleyra.numbers.normalize import mask_numbers

MAX_LINE_BYTES = 64 * 1024  # longer lines are refused with a reason, never held whole
READ_BLOCK = 1 << 20
NOT_UTF8 = "not UTF-8 text"
NOT_CSV = "not a CSV line (a carriage return or stray quote inside it)"
_BOM = b"\xef\xbb\xbf"
_CSV_SUFFIXES = {".csv"}
_TEXT_SUFFIXES = {"", ".txt", ".text", ".lst"}
_GZIP_SUFFIX = ".gz"
_OTHER_DELIMITERS = {";": "semicolon", "\t": "tab", "|": "pipe"}


class AudienceRow(NamedTuple):
    """One input: the text found, and the reason it cannot be read as a number (``None`` when it may)."""

    raw: str
    problem: str | None = None


def _suffix(path: ObjectStoragePath) -> tuple[str, bool]:
    """The suffix that names the format (``.csv`` of ``a.csv.gz``), and whether the file is gzipped."""
    suffix = path.suffix.lower()
    if suffix == _GZIP_SUFFIX:
        return os.path.splitext(path.stem)[1].lower(), True
    return suffix, False


def audience_format(path: ObjectStoragePath, fmt: str | None = None) -> str:
    """``"csv"`` or ``"text"``: given, or read from the suffix (before a ``.gz``)."""
    if fmt is not None:
        if fmt not in ("csv", "text"):
            raise ValueError(f"audience_format must be 'csv' or 'text', got {fmt!r}")
        return fmt
    suffix, _ = _suffix(path)
    if suffix in _CSV_SUFFIXES:
        return "csv"
    if suffix in _TEXT_SUFFIXES:
        return "text"
    raise ValueError(
        f"cannot tell the format of audience {path} from its suffix {suffix!r}: "
        "use .csv or .txt (optionally .gz), or pass audience_format='csv' or 'text'"
    )


# -- reading -----------------------------------------------------------------------------


def iter_lines(read: Callable[[int], bytes], limit: int = MAX_LINE_BYTES) -> Iterator[bytes | None]:
    """Lines of a binary stream without their ``\\n`` / ``\\r\\n``; ``None`` for a line over ``limit`` bytes.

    Reads ``READ_BLOCK`` bytes at a time, so memory stays at one block plus one line,
    whatever the stream holds (even one gigabyte with no newline at all).
    """
    tail = b""
    skipping = False  # inside a line already known to be too long
    while block := read(READ_BLOCK):
        start = 0
        while (end := block.find(b"\n", start)) >= 0:
            if skipping:
                skipping = False
                yield None
            else:
                line = _chomp(tail + block[start:end] if tail else block[start:end])
                tail = b""
                yield line if len(line) <= limit else None
            start = end + 1
        if not skipping:
            rest = block[start:]
            if len(tail) + len(rest) > limit + 1:
                skipping, tail = True, b""
            else:
                tail += rest
    if skipping:
        yield None
    elif tail:
        line = _chomp(tail)
        yield line if len(line) <= limit else None


def _chomp(line: bytes) -> bytes:
    return line[:-1] if line.endswith(b"\r") else line


def _decode(line: bytes) -> tuple[str, str | None]:
    try:
        return line.decode("utf-8"), None
    except UnicodeDecodeError:
        return line.decode("utf-8", errors="replace"), NOT_UTF8


def _fields(text: str) -> list[str] | None:
    """The fields of one CSV line; ``None`` when ``csv`` refuses it (a carriage return in a quoted line)."""
    if '"' not in text:
        return text.split(",")
    try:
        return next(csv.reader([text]), [])
    except csv.Error:
        return None


def _gunzip(stream: IO[bytes], path: ObjectStoragePath) -> Callable[[int], bytes]:
    """``read`` of the decompressed stream; a corrupt or cut file is a ``ValueError`` naming the path."""
    unzipped = gzip.GzipFile(fileobj=stream, mode="rb")

    def read(size: int) -> bytes:
        try:
            return unzipped.read(size)
        except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
            raise ValueError(f"audience {path} is not a whole gzip file: {exc}") from None

    return read


def _column_index(header: list[str], column: str, path: ObjectStoragePath) -> int:
    names = [name.strip() for name in header]
    if column in names:
        return names.index(column)
    folded = [name.casefold() for name in names]
    if folded.count(column.casefold()) == 1:
        return folded.index(column.casefold())
    shown = ", ".join(repr(mask_numbers(name[:40])) for name in names[:20]) + (
        ", ..." if len(names) > 20 else ""
    )
    message = f"audience {path} has no column {column!r}"
    for delimiter, word in _OTHER_DELIMITERS.items():
        if len(names) == 1 and delimiter in names[0]:
            raise ValueError(
                f"{message}: the header looks {word}-delimited: {shown}; save the audience as "
                "comma-separated CSV"
            )
    if any(mask_numbers(name) != name for name in names):
        raise ValueError(
            f"{message}: line 1 holds numbers ({shown}), not a header; add a header row naming "
            f"{column!r}, or read it as plain text (one number per line, audience_format='text')"
        )
    raise ValueError(f"{message}; columns found: {shown or 'none'}")


def read_audience(
    path: ObjectStoragePath, *, column: str = "phone", fmt: str | None = None
) -> Iterator[AudienceRow]:
    """Stream an audience file: one :class:`AudienceRow` per line after the CSV header.

    CSV files need a header naming ``column``; each physical line is one record (quoted
    fields may hold commas, not newlines). Plain text holds one number per line. A UTF-8
    BOM is dropped; blank lines, over-long lines and lines that are not UTF-8 become rows
    with a reason, so the output can account for every line.

    :raises ValueError: the CSV header is missing, unreadable, or does not name ``column``.
    """
    kind = audience_format(path, fmt)
    _, gzipped = _suffix(path)
    with path.open("rb") as stream:
        lines = iter_lines(_gunzip(stream, path) if gzipped else stream.read)
        first = True
        index = -1
        if kind == "csv":
            header = next(lines, b"")
            if header is None:
                raise ValueError(
                    f"audience {path}: line 1 (the header) is longer than {MAX_LINE_BYTES} bytes"
                )
            header_text, problem = _decode(header.removeprefix(_BOM))
            if problem or not header_text.strip():
                raise ValueError(
                    f"audience {path}: line 1 must be a UTF-8 CSV header naming column {column!r}"
                )
            index = _column_index(_fields(header_text) or [header_text], column, path)
            first = False
        for line in lines:
            if line is None:
                yield AudienceRow("", f"line too long: over {MAX_LINE_BYTES} bytes")
                first = False
                continue
            if first:
                line, first = line.removeprefix(_BOM), False
            text, problem = _decode(line)
            if kind == "text" or not text.strip():
                yield AudienceRow(text, problem)  # a blank line is read as "empty"
                continue
            fields = _fields(text)
            if fields is None:
                yield AudienceRow(text, problem or NOT_CSV)
            elif index < len(fields):
                yield AudienceRow(fields[index], problem)
            else:
                yield AudienceRow("", problem or f"no {column!r} field")
