"""Step 3 of a preflight: one channel per audience row, and the per-channel lists.

``channel`` is ``rcs``, ``soip``, ``sms`` or ``none``, with the ``reason``:

======================  =======  ====================================================================
reason                  channel  when
======================  =======  ====================================================================
``rcs_enabled``         rcs      Kaleyra says the number takes RCS
``soip_capable``        soip     not RCS-capable, in a SOIP country, and its callback said capable
``soip_not_capable``    sms      not RCS-capable, in a SOIP country, its callback said not capable
``soip_no_callback``    sms      asked over SOIP, but no readable callback came in time
``not_rcs_capable``     sms      not RCS-capable; outside the SOIP countries, or the SOIP leg is off
``lookup_failed: why``  sms      the RCS lookup failed: the number is valid, SMS still works
``invalid: why``        none     not a phone number (the reason from ``phone.normalize``)
======================  =======  ====================================================================

Every list keeps every column of the audience row, then ``e164``, ``channel`` and ``reason``, in the
audience's order. Memory stays bounded: the answers and the rows' numbers are spread over
temporary files by number (about 60 bytes of local disk per row, under ``TMPDIR``), and each
part is decided alone (4 bytes per row remember each decision).
"""

from __future__ import annotations

import csv
import json
from array import array
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from typing import Any

from airflow.sdk import ObjectStoragePath

from airflow_provider_kaleyra.client.api import FAILED, RCS_DISABLED, RCS_ENABLED
from airflow_provider_kaleyra.preflight import files
from airflow_provider_kaleyra.preflight.records import ChannelResult
from airflow_provider_kaleyra.preflight.regions import region_of
from airflow_provider_kaleyra.rcs.answers import Answer, shared
from airflow_provider_kaleyra.rcs.outputs import read_results

__all__ = ["region_of"]  # (the tests and the examples read it here)

DEFAULT_SOIP_REGIONS = frozenset({"IN"})  # where Kaleyra offers SMS over IP; the one place it is set
RCS, SOIP, SMS, NONE = "rcs", "soip", "sms", "none"
CHANNELS = (RCS, SOIP, SMS, NONE)
LIST_NAMES = {RCS: "rcs.csv", SOIP: "soip.csv", SMS: "sms.csv", NONE: "invalid.csv"}
SOIP_CAPABLE, SOIP_NOT_CAPABLE = "capable", "not_capable"
_ANSWER, _ASKED, _OUTCOME, _ROW = "a", "q", "o", "r"  # the kinds of line in a partition file


def rcs_answers(outputs: Iterable[ObjectStoragePath]) -> Iterator[tuple[str, Answer]]:
    """``(e164, answer)`` of every number the RCS shards wrote; a missing output fails at once."""
    for path in outputs:
        for record in read_results(files.require(path, "rcs_lookup")):
            if record.get("e164"):
                answer = Answer(
                    record["status"] or FAILED, record.get("carrier_id"), None, record.get("error")
                )
                yield record["e164"], answer


def soip_candidates(outputs: Iterable[ObjectStoragePath], regions: Iterable[str]) -> Iterator[str]:
    """The numbers the SOIP leg asks about, streamed from the RCS shards' outputs: not RCS-capable
    (a real answer, not a failed lookup) and in a SOIP country."""
    wanted = {region.upper() for region in regions}
    for e164, answer in rcs_answers(outputs):
        if answer.status == RCS_DISABLED and region_of(e164) in wanted:
            yield e164


def soip_outcomes(path: ObjectStoragePath | None) -> Iterator[tuple[str, str]]:
    """``(e164, outcome)`` from the callback sensor's JSON Lines (written on success and on timeout)."""
    if path is None or not path.exists():
        return
    with path.open("r", encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                entry = json.loads(line)
                yield str(entry.get("number", "")), str(entry.get("outcome", "missing"))


def decide(
    e164: str, invalid_reason: str, rcs: Answer | None, soip_asked: bool, soip_outcome: str | None
) -> tuple[str, str]:
    """The channel of one row, and why."""
    if not e164:
        return NONE, f"invalid: {invalid_reason or 'not a phone number'}"
    if rcs is None:
        return SMS, "lookup_failed: no RCS answer recorded"
    if rcs.status == RCS_ENABLED:
        return RCS, "rcs_enabled"
    if rcs.status != RCS_DISABLED:
        return SMS, f"lookup_failed: {rcs.error or rcs.status or FAILED}"
    if not soip_asked:
        return SMS, "not_rcs_capable"
    if soip_outcome == SOIP_CAPABLE:
        return SOIP, "soip_capable"
    if soip_outcome == SOIP_NOT_CAPABLE:
        return SMS, "soip_not_capable"
    return SMS, "soip_no_callback"


def _our_names(header: list[str]) -> list[str]:
    """``e164``, ``channel``, ``reason``; suffixed when the audience already has such a column."""
    return [name if name not in header else f"{name}_kaleyra" for name in (files.E164, "channel", "reason")]


def _rate_table(numbers: Counter[str], capable: Counter[str]) -> dict[str, dict[str, Any]]:
    return {
        name: {"numbers": count, "rcs_capable": capable[name], "rcs_rate": capable[name] / count}
        for name, count in sorted(numbers.items(), key=lambda item: (-item[1], item[0]))
    }


class _Decisions:
    """Every valid row's (channel, reason), decided one partition of numbers at a time."""

    def __init__(self, rows: int) -> None:
        self.codes = array("I", [0]) * rows  # per row (4 bytes): an index into ``self.table``
        self.table: list[tuple[str, str]] = []
        self._index: dict[tuple[str, str], int] = {}
        self.numbers: Counter[str] = Counter()
        self.carriers, self.carriers_capable = Counter[str](), Counter[str]()
        self.countries, self.countries_capable = Counter[str](), Counter[str]()
        self.answered = 0

    def decide_partition(self, lines: Iterable[list[str]]) -> None:
        answers: dict[str, Answer] = {}
        asked: set[str] = set()
        outcomes: dict[str, str] = {}
        decided: dict[str, int] = {}
        for kind, e164, *rest in lines:  # the facts come first, then the rows (the file's order)
            if kind == _ANSWER:
                answers[e164] = shared(Answer(rest[0], rest[1] or None, None, rest[2] or None))
            elif kind == _ASKED:
                asked.add(e164)
            elif kind == _OUTCOME:
                outcomes[e164] = rest[0]
            else:
                code = decided.get(e164)
                if code is None:
                    code = decided[e164] = self._decide(
                        e164, answers.get(e164), e164 in asked, outcomes.get(e164)
                    )
                self.codes[int(rest[0])] = code
        self.answered += sum(1 for n in asked if outcomes.get(n) in (SOIP_CAPABLE, SOIP_NOT_CAPABLE))

    def _decide(self, e164: str, rcs: Answer | None, asked: bool, outcome: str | None) -> int:
        decision = decide(e164, "", rcs, asked, outcome)
        channel = decision[0]
        carrier = (rcs.carrier_id if rcs else "") or "unknown"
        country = region_of(e164)
        self.numbers[channel] += 1
        self.carriers[carrier] += 1
        self.countries[country] += 1
        if channel == RCS:
            self.carriers_capable[carrier] += 1
            self.countries_capable[country] += 1
        code = self._index.get(decision)
        if code is None:
            code = self._index[decision] = len(self.table)
            self.table.append(decision)
        return code


def write_channel_lists(
    run_dir: ObjectStoragePath,
    outputs: list[ObjectStoragePath],
    asked: ObjectStoragePath | None = None,
    outcomes: ObjectStoragePath | None = None,
) -> ChannelResult:
    """Decide every row of ``work/rows.csv`` and write the four lists; returns the counts for the report.

    :param outputs: the RCS shards' outputs.
    :param asked: the numbers the SOIP leg asked about (``None``: the leg did not run).
    :param outcomes: the callback sensor's per-number answers.
    """
    rows_path = files.require(run_dir / files.ROWS, "prepare")
    with ExitStack() as stack:
        parts = files.Partitions(stack, "kaleyra-channels-")
        writers = [csv.writer(handle) for handle in parts.handles]

        def spread(kind: str, e164: str, *rest: Any) -> None:
            writers[parts.index(e164)].writerow((kind, e164, *rest))

        for e164, answer in rcs_answers(outputs):
            spread(_ANSWER, e164, answer.status, answer.carrier_id or "", answer.error or "")
        soip_asked = 0
        for record in files.read_records(asked) if asked is not None else ():
            spread(_ASKED, record[files.E164])
            soip_asked += 1
        for e164, outcome in soip_outcomes(outcomes):
            spread(_OUTCOME, e164, outcome)
        rows = 0
        for rows, record in enumerate(files.read_csv(rows_path)):
            if rows and record[-2]:
                spread(_ROW, record[-2], rows - 1)
        decisions = _Decisions(max(rows, 0))
        for path in parts.written():
            with open(path, encoding="utf-8", newline="") as fh:
                decisions.decide_partition(csv.reader(fh))
    return _write_lists(run_dir, rows_path, decisions, soip_asked)


def _write_lists(
    run_dir: ObjectStoragePath, rows_path: ObjectStoragePath, decisions: _Decisions, soip_asked: int
) -> ChannelResult:
    rows_in = files.read_csv(rows_path)
    header = next(rows_in)[:-2]  # the audience's columns; prepare appended e164 and the invalid reason
    names = _our_names(header)
    by_rows: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    with files.CsvWriter() as out:
        for channel in CHANNELS:
            out.open(channel, run_dir / LIST_NAMES[channel], [*header, *names])
        for index, record in enumerate(rows_in):
            *columns, e164, invalid_reason = record
            if e164:
                channel, reason = decisions.table[decisions.codes[index]]
            else:
                channel, reason = decide(e164, invalid_reason, None, False, None)
            out.write(channel, [*columns, e164, channel, reason])
            by_rows[channel] += 1
            reasons[reason.split(":", 1)[0]] += 1  # the details of invalid and failed rows are in the lists
    return {
        "rows": {channel: by_rows[channel] for channel in CHANNELS},
        "numbers": {channel: decisions.numbers[channel] for channel in CHANNELS if channel != NONE},
        "reasons": dict(reasons.most_common()),
        "carriers": _rate_table(decisions.carriers, decisions.carriers_capable),
        "countries": _rate_table(decisions.countries, decisions.countries_capable),
        "soip_asked": soip_asked,
        "soip_answered": decisions.answered,
        "lists": {channel: str(run_dir / LIST_NAMES[channel]) for channel in CHANNELS},
    }
