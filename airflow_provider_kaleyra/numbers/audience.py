"""The one audience reader, so the same line gets the same row and reason everywhere (any object store).

Every line is one row, with a reason when it cannot be a number; ``.gz`` is decompressed on the way.
Rows go on in blocks (:class:`RowBlock`, columns), since per-row Python is most of a reader's cost;
memory stays at one :data:`READ_BLOCK` plus one line (capped at :data:`MAX_LINE_BYTES`).
"""

from __future__ import annotations

import csv
import gzip
import os
import zlib
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass
from itertools import chain, repeat
from operator import itemgetter, methodcaller
from typing import NamedTuple

from airflow.sdk import ObjectStoragePath

from airflow_provider_kaleyra.numbers.masking import mask_numbers

MAX_LINE_BYTES = 64 * 1024  # longer lines are refused with a reason, never held whole
READ_BLOCK = 1 << 18  # bytes read at a time: a few thousand rows per block
NOT_UTF8 = "not UTF-8 text"
NOT_CSV = "not a CSV line (a carriage return or stray quote inside it)"
LINE_TOO_LONG = f"line too long: over {MAX_LINE_BYTES} bytes"
_BOM = b"\xef\xbb\xbf"
_FORMATS = {".csv": "csv", "": "text", ".txt": "text", ".text": "text", ".lst": "text"}
_OTHER_DELIMITERS = {";": "semicolon", "\t": "tab", "|": "pipe"}
_SPLIT = methodcaller("split", ",")


class AudienceRow(NamedTuple):
    """One input: the text found, and the reason it cannot be read as a number (``None`` when it may)."""

    raw: str
    problem: str | None = None


@dataclass(slots=True)
class RowBlock:
    """Consecutive rows of an audience, as columns: the phone field of each row; why each cannot be
    a number (``None`` where it may, and for the whole block when none has a problem, at no per-row
    cost); every column of each row, when the audience was opened with ``keep_columns``."""

    raws: list[str]
    problems: list[str | None] | None = None
    records: list[list[str]] | None = None

    def rows(self) -> Iterator[AudienceRow]:
        return map(AudienceRow, self.raws, self.problems or repeat(None))


def audience_format(path: ObjectStoragePath, fmt: str | None = None) -> str:
    """``"csv"`` or ``"text"``: given, or read from the suffix (before a ``.gz``)."""
    if fmt is not None:
        if fmt not in ("csv", "text"):
            raise ValueError(f"audience_format must be 'csv' or 'text', got {fmt!r}")
        return fmt
    suffix = path.suffix.lower()
    if suffix == ".gz":
        suffix = os.path.splitext(path.stem)[1].lower()
    if suffix not in _FORMATS:
        raise ValueError(
            f"cannot tell the format of audience {path} from its suffix {suffix!r}: "
            "use .csv or .txt (optionally .gz), or pass audience_format='csv' or 'text'"
        )
    return _FORMATS[suffix]


def line_blocks(read: Callable[[int], bytes], limit: int = MAX_LINE_BYTES) -> Iterator[list[bytes | None]]:
    """Lines of a binary stream, a block at a time, without their ``\\n`` / ``\\r\\n``; ``None`` for
    a line over ``limit`` bytes. Memory stays at one block plus one line, whatever the stream holds."""
    tail = b""
    skipping = False  # inside a line already known to be too long
    while block := read(READ_BLOCK):
        lines: list[bytes | None] = []
        if skipping:
            end = block.find(b"\n")
            if end < 0:
                continue
            skipping, block = False, block[end + 1 :]
            lines.append(None)
        data = tail + block if tail else block
        last = data.rfind(b"\n")
        if last >= 0:
            lines += _checked(data[:last].split(b"\n"), limit)
            data = data[last + 1 :]
        if len(data) > limit + 1:  # (+1: a "\r" may still end it)
            skipping, tail = True, b""
        else:
            tail = data
        if lines:
            yield lines
    if skipping:
        yield [None]
    elif tail:
        yield _checked([tail], limit)


def _checked(lines: list[bytes], limit: int) -> list[bytes | None]:
    """``lines`` less a final ``\\r`` each, over-long ones as ``None`` (C loops unless needed)."""
    if any(map(methodcaller("endswith", b"\r"), lines)):
        lines = [line[:-1] if line.endswith(b"\r") else line for line in lines]
    if max(map(len, lines)) > limit:
        return [line if len(line) <= limit else None for line in lines]
    return lines  # type: ignore[return-value]


def _decode(line: bytes) -> tuple[str, str | None]:
    try:
        return line.decode("utf-8"), None
    except UnicodeDecodeError:
        return line.decode("utf-8", errors="replace"), NOT_UTF8


def _texts(lines: list[bytes | None]) -> tuple[list[str], list[str | None] | None]:
    """A block of lines as text (one decode for the block when it is all UTF-8), and its problems."""
    if None not in lines:
        try:
            return b"\n".join(lines).decode("utf-8").split("\n"), None  # type: ignore[arg-type]
        except UnicodeDecodeError:
            pass
    read = [("", LINE_TOO_LONG) if line is None else _decode(line) for line in lines]
    return [text for text, _ in read], [problem for _, problem in read]


def _fields(text: str) -> list[str] | None:
    """The fields of one CSV line; ``None`` when ``csv`` refuses it (a carriage return in a quoted line)."""
    if '"' not in text:
        return text.split(",")
    try:
        return next(csv.reader([text]), [])
    except csv.Error:
        return None


def _csv_block(
    texts: list[str], problems: list[str | None] | None, index: int, column: str, keep: bool
) -> RowBlock:
    """The ``index`` field of each CSV line (and every field, with ``keep``)."""
    if problems is None and not any(map(methodcaller("__contains__", '"'), texts)):
        # No quotes: a line's fields are its comma-separated parts; the loops stay in C.
        records = list(map(_SPLIT, texts)) if keep else None
        try:
            raws = list(map(itemgetter(index), records if keep else map(_SPLIT, texts)))  # type: ignore[arg-type]
            return RowBlock(raws, None, records)
        except IndexError:
            pass  # a short line: read line by line below
    raws, found, kept = [], [], []
    for text, problem in zip(texts, problems or repeat(None)):
        if problem == LINE_TOO_LONG:
            raw, fields = "", []
        elif not text.strip():
            raw, fields = text, [text]  # a blank line: read as "empty"
        elif (parsed := _fields(text)) is None:
            raw, fields, problem = text, [text], problem or NOT_CSV
        elif index < len(parsed):
            raw, fields = parsed[index], parsed
        else:
            raw, fields, problem = "", parsed, problem or f"no {column!r} field"
        raws.append(raw)
        found.append(problem)
        kept.append(fields)
    return RowBlock(raws, found if any(p is not None for p in found) else None, kept if keep else None)


def column_index(header: list[str], column: str, path: ObjectStoragePath) -> int:
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


@dataclass
class Audience:
    """An audience file opened by :func:`open_audience`: its header, and its rows in blocks."""

    path: ObjectStoragePath
    kind: str  # "csv" or "text"
    column: str
    keep_columns: bool
    header: list[str] | None  # the CSV header (None for text)
    index: int  # of ``column`` in the header

    def _line_blocks(self) -> Iterator[list[bytes | None]]:
        with self.path.open("rb") as stream:
            if self.path.suffix.lower() != ".gz":
                yield from line_blocks(stream.read)
                return
            try:
                yield from line_blocks(gzip.GzipFile(fileobj=stream, mode="rb").read)
            except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
                raise ValueError(f"audience {self.path} is not a whole gzip file: {exc}") from None

    def blocks(self) -> Iterator[RowBlock]:
        """Every row after the header, in order, a block at a time (the file is read again each call)."""
        for n, lines in enumerate(self._line_blocks()):
            if n == 0:
                if self.kind == "csv":
                    lines = lines[1:]  # the header, read by open_audience
                elif lines[0] is not None:
                    lines[0] = lines[0].removeprefix(_BOM)
                if not lines:
                    continue
            texts, problems = _texts(lines)
            if self.kind == "text":
                records = [[text] for text in texts] if self.keep_columns else None
                yield RowBlock(texts, problems, records)
            else:
                yield _csv_block(texts, problems, self.index, self.column, self.keep_columns)

    def rows(self) -> Iterator[AudienceRow]:
        """Row by row, for callers that need no speed."""
        return chain.from_iterable(map(RowBlock.rows, self.blocks()))


def open_audience(
    path: ObjectStoragePath, *, column: str = "phone", fmt: str | None = None, keep_columns: bool = False
) -> Audience:
    """Open a CSV with a header naming ``column``, or text with one number per line (``fmt``: "csv" or
    "text", else from the suffix); each physical line is one record (quoted fields may hold commas, not
    newlines), a UTF-8 BOM is dropped. ``keep_columns``: every column of each row, in ``RowBlock.records``.
    ``ValueError`` when the CSV header is missing, unreadable, or does not name ``column``."""
    kind = audience_format(path, fmt)
    header, index = None, 0
    if kind == "csv":
        with closing(Audience(path, kind, column, False, None, 0)._line_blocks()) as blocks:
            first = next(blocks, None)
        if first is None:
            raise ValueError(
                f"audience {path} is empty: line 1 must be a CSV header naming column {column!r}"
            )
        if first[0] is None:
            raise ValueError(f"audience {path}: line 1 (the header) is longer than {MAX_LINE_BYTES} bytes")
        header_text, problem = _decode(first[0].removeprefix(_BOM))
        if problem or not header_text.strip():
            raise ValueError(f"audience {path}: line 1 must be a UTF-8 CSV header naming column {column!r}")
        header = _fields(header_text) or [header_text]
        index = column_index(header, column, path)
    return Audience(path, kind, column, keep_columns, header, index)
