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

Every list keeps every column of the audience row, then ``e164``, ``channel`` and ``reason``.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, NamedTuple

from airflow.sdk import ObjectStoragePath

from airflow_provider_kaleyra.client.api import FAILED, RCS_DISABLED, RCS_ENABLED
from airflow_provider_kaleyra.preflight import files
from airflow_provider_kaleyra.utils.timestamps import as_utc

if TYPE_CHECKING:
    from airflow_provider_kaleyra.callbacks.store import CallbackStore

DEFAULT_SOIP_REGIONS = frozenset({"IN"})  # where Kaleyra offers SMS over IP; the one place it is set
RCS, SOIP, SMS, NONE = "rcs", "soip", "sms", "none"
CHANNELS = (RCS, SOIP, SMS, NONE)
LIST_NAMES = {RCS: "rcs.csv", SOIP: "soip.csv", SMS: "sms.csv", NONE: "invalid.csv"}
SOIP_CAPABLE, SOIP_NOT_CAPABLE = "capable", "not_capable"

_REGION_BY_CODE: dict[str, str] | None = None


def region_of(e164: str) -> str:
    """ISO region of an E.164 number from its calling code (cheap: no parse). +1 reads as ``US``."""
    global _REGION_BY_CODE
    if _REGION_BY_CODE is None:
        import phonenumbers

        _REGION_BY_CODE = {
            str(code): regions[0]
            for code, regions in phonenumbers.COUNTRY_CODE_TO_REGION_CODE.items()
            if regions
        }
    digits = e164[1:4]
    for length in (1, 2, 3):
        region = _REGION_BY_CODE.get(digits[:length])
        if region:
            return region
    return "??"


class RcsAnswer(NamedTuple):
    status: str
    carrier: str
    error: str


def read_rcs_answers(outputs: Iterable[ObjectStoragePath]) -> dict[str, RcsAnswer]:
    """The RCS shards' outputs as ``{e164: answer}``; equal answers share one tuple (a million numbers fit)."""
    answers: dict[str, RcsAnswer] = {}
    shared: dict[RcsAnswer, RcsAnswer] = {}
    for path in outputs:
        for record in files.read_records(files.require(path, "rcs_lookup")):
            e164 = record.get("e164") or ""
            if e164:
                answer = RcsAnswer(
                    record.get("status") or "", record.get("carrier_id") or "", record.get("error") or ""
                )
                answers[e164] = shared.setdefault(answer, answer)
    return answers


def soip_candidates(outputs: Iterable[ObjectStoragePath], regions: Iterable[str]) -> Iterator[str]:
    """The numbers the SOIP leg asks about, streamed from the RCS shards' outputs: not RCS-capable
    (a real answer, not a failed lookup) and in a SOIP country."""
    wanted = {region.upper() for region in regions}
    for path in outputs:
        for record in files.read_records(files.require(path, "rcs_lookup")):
            e164 = record.get("e164") or ""
            if e164 and record.get("status") == RCS_DISABLED and region_of(e164) in wanted:
                yield e164


def read_soip_outcomes(path: ObjectStoragePath | None) -> dict[str, str]:
    """``{e164: outcome}`` from the callback sensor's JSON Lines; empty when the leg wrote nothing."""
    if path is None or not path.exists():
        return {}
    outcomes: dict[str, str] = {}
    with path.open("r", encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                entry = json.loads(line)
                outcomes[str(entry.get("number", ""))] = str(entry.get("outcome", "missing"))
    return outcomes


def stored_soip_outcomes(store: CallbackStore, submission: dict[str, Any]) -> dict[str, str]:
    """When the wait timed out (and wrote nothing): the answers that did arrive, from the callback store."""
    since = as_utc(submission["submitted_at"])
    return {
        number: (result.outcome if result else "missing")
        for number, result in store.results(str(submission["submission_id"]), since)
    }


def decide(
    e164: str,
    invalid_reason: str,
    rcs: RcsAnswer | None,
    soip_asked: bool,
    soip_outcome: str | None,
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


def write_channel_lists(
    run_dir: ObjectStoragePath,
    answers: dict[str, RcsAnswer],
    soip_asked: set[str],
    soip_outcomes: dict[str, str],
) -> dict[str, Any]:
    """Decide every row of ``work/rows.csv`` and write the four lists; returns the counts for the report."""
    rows_in = files.read_csv(files.require(run_dir / files.ROWS, "prepare"))
    header = next(rows_in)[:-2]  # the audience's columns; prepare appended e164 and the invalid reason
    names = _our_names(header)
    by_rows: Counter[str] = Counter()
    by_numbers: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    carriers, carriers_capable = Counter[str](), Counter[str]()
    countries, countries_capable = Counter[str](), Counter[str]()
    seen: set[str] = set()
    with files.CsvWriter() as out:
        for channel in CHANNELS:
            out.open(channel, run_dir / LIST_NAMES[channel], [*header, *names])
        for record in rows_in:
            *columns, e164, invalid_reason = record
            rcs = answers.get(e164) if e164 else None
            channel, reason = decide(e164, invalid_reason, rcs, e164 in soip_asked, soip_outcomes.get(e164))
            out.write(channel, [*columns, e164, channel, reason])
            by_rows[channel] += 1
            reasons[reason.split(":", 1)[0]] += 1  # the details of invalid and failed rows are in the lists
            if e164 and e164 not in seen:
                seen.add(e164)
                by_numbers[channel] += 1
                carrier = (rcs.carrier if rcs else "") or "unknown"
                country = region_of(e164)
                carriers[carrier] += 1
                countries[country] += 1
                if channel == RCS:
                    carriers_capable[carrier] += 1
                    countries_capable[country] += 1
    return {
        "rows": {channel: by_rows[channel] for channel in CHANNELS},
        "numbers": {channel: by_numbers[channel] for channel in CHANNELS if channel != NONE},
        "reasons": dict(reasons.most_common()),
        "carriers": _rate_table(carriers, carriers_capable),
        "countries": _rate_table(countries, countries_capable),
        "soip_asked": len(soip_asked),
        "soip_answered": sum(
            1 for n in soip_asked if soip_outcomes.get(n) in (SOIP_CAPABLE, SOIP_NOT_CAPABLE)
        ),
        "lists": {channel: str(run_dir / LIST_NAMES[channel]) for channel in CHANNELS},
    }
