"""Step 3 of a preflight: one channel per audience row (:func:`decide`; the README tables the reasons),
and the four lists: every audience column, then ``e164``, ``channel``, ``reason``, in the audience's order.
Memory stays bounded: the answers and the rows' numbers are spread over temporary files by number
(about 60 bytes of local disk per row, under ``TMPDIR``), each part decided alone (4 bytes per row)."""

from __future__ import annotations

import csv
from array import array
from collections import Counter
from collections.abc import Iterable, Iterator
from itertools import islice
from typing import Any

import phonenumbers
from airflow.sdk import ObjectStoragePath

from airflow_provider_kaleyra.client.api import FAILED, RCS_DISABLED, RCS_ENABLED
from airflow_provider_kaleyra.preflight import files
from airflow_provider_kaleyra.preflight.records import ChannelResult
from airflow_provider_kaleyra.rcs.answers import Answer, shared
from airflow_provider_kaleyra.rcs.outputs import read_results

DEFAULT_SOIP_REGIONS = frozenset({"IN"})  # where Kaleyra offers SMS over IP; the one place it is set
RCS, SOIP, SMS, NONE = "rcs", "soip", "sms", "none"
CHANNELS = (RCS, SOIP, SMS, NONE)
LIST_NAMES = {RCS: "rcs.csv", SOIP: "soip.csv", SMS: "sms.csv", NONE: "invalid.csv"}
SOIP_CAPABLE, SOIP_NOT_CAPABLE = "capable", "not_capable"
_ANSWER, _ASKED, _OUTCOME, _ROW = "a", "q", "o", "r"  # the kinds of line in a partition file


def region_of(e164: str) -> str:
    """ISO region of an E.164 number from its calling code (cheap, no parse); +1 reads as ``US``."""
    for length in (1, 2, 3):
        code = e164[1 : 1 + length]
        if code.isdigit() and (regions := phonenumbers.COUNTRY_CODE_TO_REGION_CODE.get(int(code))):
            return regions[0]
    return "??"


def rcs_answers(outputs: Iterable[ObjectStoragePath]) -> Iterator[tuple[str, Answer]]:
    """``(e164, answer)`` of every number the RCS shards wrote; a missing output fails at once."""
    for path in outputs:
        for record in read_results(files.require(path, "rcs_lookup")):
            if record.get("e164"):
                status = record["status"] or FAILED
                yield record["e164"], Answer(status, record.get("carrier_id"), None, record.get("error"))


def soip_candidates(outputs: Iterable[ObjectStoragePath], regions: Iterable[str]) -> Iterator[str]:
    """The numbers the SOIP leg asks about: RCS-disabled (an answer, not a failed lookup) in ``regions``."""
    wanted = {region.upper() for region in regions}
    for e164, answer in rcs_answers(outputs):
        if answer.status == RCS_DISABLED and region_of(e164) in wanted:
            yield e164


def soip_outcomes(path: ObjectStoragePath | None) -> Iterator[tuple[str, str]]:
    """``(e164, outcome)`` from the callback sensor's JSON Lines (written on success and on timeout)."""
    if path is not None and path.exists():
        for entry in read_results(path):
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


def _rate_table(numbers: Counter[str], capable: Counter[str]) -> dict[str, dict[str, Any]]:
    return {
        name: {"numbers": count, "rcs_capable": capable[name], "rcs_rate": capable[name] / count}
        for name, count in sorted(numbers.items(), key=lambda item: (-item[1], item[0]))
    }


class _Decisions:
    """Every valid row's (channel, reason), decided one partition of numbers at a time."""

    def __init__(self, rows: int) -> None:
        self.codes = array("I", [0]) * rows  # per row (4 bytes): an index into ``self.table``
        self.table: dict[tuple[str, str], int] = {}  # each distinct decision -> its code
        self.numbers: Counter[str] = Counter()  # distinct numbers by channel
        self.rates = {key: (Counter[str](), Counter[str]()) for key in ("carriers", "countries")}
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
            else:  # a row: its number is decided once, and counted once in the rates
                if e164 not in decided:
                    rcs = answers.get(e164)
                    decision = decide(e164, "", rcs, e164 in asked, outcomes.get(e164))
                    self.numbers[decision[0]] += 1
                    carrier = (rcs.carrier_id if rcs else "") or "unknown"
                    for key, name in (("carriers", carrier), ("countries", region_of(e164))):
                        self.rates[key][0][name] += 1
                        self.rates[key][1][name] += decision[0] == RCS
                    decided[e164] = self.table.setdefault(decision, len(self.table))
                self.codes[int(rest[0])] = decided[e164]
        self.answered += sum(1 for n in asked if outcomes.get(n) in (SOIP_CAPABLE, SOIP_NOT_CAPABLE))


def write_channel_lists(
    run_dir: ObjectStoragePath,
    outputs: list[ObjectStoragePath],
    asked: ObjectStoragePath | None = None,
    outcomes: ObjectStoragePath | None = None,
) -> ChannelResult:
    """Decide every row of ``work/rows.csv`` from the RCS shards' ``outputs``, the numbers the SOIP
    leg ``asked`` (``None``: it did not run) and their ``outcomes``; write the lists, count for the report."""
    rows_path = files.require(run_dir / files.ROWS, "prepare")
    with files.Partitions("kaleyra-channels-") as parts:
        writers = [csv.writer(handle) for handle in parts.handles]

        def spread(kind: str, e164: str, *rest: Any) -> None:
            writers[parts.index(e164)].writerow((kind, e164, *rest))

        for e164, answer in rcs_answers(outputs):
            spread(_ANSWER, e164, answer.status, answer.carrier_id or "", answer.error or "")
        soip_asked = 0
        for e164, *_ in islice(files.read_csv(asked), 1, None) if asked is not None else ():
            spread(_ASKED, e164)
            soip_asked += 1
        for e164, outcome in soip_outcomes(outcomes):
            spread(_OUTCOME, e164, outcome)
        rows = 0
        for rows, record in enumerate(files.read_csv(rows_path)):
            if rows and record[-2]:
                spread(_ROW, record[-2], rows - 1)
        decisions = _Decisions(rows)
        for path in parts.written():
            with open(path, encoding="utf-8", newline="") as fh:
                decisions.decide_partition(csv.reader(fh))
    table = list(decisions.table)
    rows_in = files.read_csv(rows_path)
    header = next(rows_in)[:-2]  # the audience's columns; prepare appended e164 and the invalid reason
    # e164, channel, reason: suffixed when the audience already has such a column
    ours = [name if name not in header else f"{name}_kaleyra" for name in (files.E164, "channel", "reason")]
    reasons: Counter[str] = Counter()
    with files.CsvWriter() as out:
        for channel in CHANNELS:
            out.open(channel, run_dir / LIST_NAMES[channel], [*header, *ours])
        for index, (*columns, e164, invalid_reason) in enumerate(rows_in):
            channel, reason = (
                table[decisions.codes[index]] if e164 else decide(e164, invalid_reason, None, False, None)
            )
            out.write(channel, [*columns, e164, channel, reason])
            reasons[reason.split(":", 1)[0]] += 1  # the details of invalid and failed rows are in the lists
    return ChannelResult(
        rows=out.rows,
        numbers={channel: decisions.numbers[channel] for channel in CHANNELS if channel != NONE},
        reasons=dict(reasons.most_common()),
        carriers=_rate_table(*decisions.rates["carriers"]),
        countries=_rate_table(*decisions.rates["countries"]),
        soip_asked=soip_asked,
        soip_answered=decisions.answered,
        lists={channel: str(run_dir / LIST_NAMES[channel]) for channel in CHANNELS},
    )
