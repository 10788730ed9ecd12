"""What is known about a number (:class:`Answer`, from the transport, the cache or a checkpoint to the
output files) and the record every input gets (:class:`RcsResult`); :class:`AnsweredRows` carries a
block of rows with their answers from the engine to a file or to ``lookup_rcs_many``'s caller."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from itertools import repeat
from typing import Any, NamedTuple

from airflow_provider_kaleyra.client.api import FAILED, INVALID, RCS_DISABLED, RCS_ENABLED, Device, e164_key

# Where an answer came from (``source``): this run's API calls, or the capability cache.
SOURCE_API = "api"
SOURCE_CACHE = "cache"


class Answer(NamedTuple):
    """What Kaleyra said about one E.164 number (or why it could not be asked)."""

    status: str
    carrier_id: str | None = None
    carrier_status: str | None = None
    error: str | None = None


class RcsResult(NamedTuple):
    """One input's outcome: ``status`` is one of ``api.STATUSES``; ``error`` says why when not looked up."""

    input: str
    e164: str | None
    status: str
    carrier_id: str | None = None
    carrier_status: str | None = None
    error: str | None = None
    source: str | None = None  # ``api`` or ``cache``; ``None`` for invalid inputs, never asked
    age_seconds: int | None = None  # how old the answer is: 0 from the API, its age from the cache


FIELDS = RcsResult._fields

# Spellings of ``rcsEnabled`` that cannot be misread. Anything else (missing, ``null``, "maybe",
# 2) is not an answer: unknown is not "no", so such a number is ``failed`` with the reason.
_ENABLED = {1: True, 0: False}  # (True == 1 and False == 0: bools are found too)
_SPELLED = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
NO_RCS_ENABLED = "Kaleyra's answer has no rcsEnabled"
UNREADABLE_RCS_ENABLED = "Kaleyra's answer has an rcsEnabled that is neither true nor false"


def answer_from_device(device: dict[str, Any]) -> Answer:
    """Read one device object: ``rcsEnabled`` as a bool, 1/0 or an unambiguous word. A bulk answer
    repeats a handful of (rcsEnabled, carrier) combinations: each is read once."""
    fields = device.get("rcsEnabled"), device.get("carrierId"), device.get("carrierStatus")
    try:
        return _read_fields(*fields)
    except TypeError:  # a list or object in a field: unhashable, read it each time
        return _read_fields.__wrapped__(*fields)


def answers_by_number(asked: list[str], devices: list[Any]) -> tuple[dict[str, Answer], int]:
    """``({number: answer}, devices not asked for)`` of a bulk answer; numbers it left out are absent.
    The usual ``deviceAddress`` is the number as asked (one set lookup); other forms go by ``e164_key``."""
    wanted = set(asked)
    answers: dict[str, Answer] = {}
    unasked = 0
    typed = bool(devices) and type(devices[0]) is Device  # (a typed decoding gives only records)
    for device in devices:
        if typed:
            key = device.deviceAddress
        elif type(device) is dict:
            key = device.get("deviceAddress")
        else:
            unasked += 1
            continue
        if type(key) is not str or key not in wanted:
            key = e164_key(key)
            if key not in wanted:
                unasked += 1
                continue
        if typed:
            answers[key] = _read_fields(device.rcsEnabled, device.carrierId, device.carrierStatus)
        else:
            answers[key] = answer_from_device(device)
    return answers, unasked


@lru_cache(maxsize=4096, typed=True)  # typed: 1, 1.0 and True are different spellings
def _read_fields(value: Any, carrier_id: Any, carrier_status: Any) -> Answer:
    if isinstance(value, str):
        enabled = _SPELLED.get(value.strip().lower())
    elif isinstance(value, int):
        enabled = _ENABLED.get(value)
    else:
        enabled = None
    carrier_id, carrier_status = _carrier(carrier_id), _carrier(carrier_status)
    if enabled is None:
        reason = NO_RCS_ENABLED if value is None else UNREADABLE_RCS_ENABLED
        return shared(Answer(FAILED, carrier_id, carrier_status, reason))
    return shared(Answer(RCS_ENABLED if enabled else RCS_DISABLED, carrier_id, carrier_status))


def _carrier(value: Any) -> str | int | float | None:
    """A carrier field as the scalar it should be; a list or object (odd, possibly huge) is dropped."""
    if value is None or isinstance(value, str | int | float):
        return value[:200] if isinstance(value, str) else value
    return None


def shared(answer: Answer) -> Answer:
    """One record per distinct answer: a million answers held are a handful of objects (the garbage
    collector never untracks a ``NamedTuple``: a million distinct ones would slow every full collection)."""
    try:
        return _first_equal(answer)
    except TypeError:  # an unhashable field (a checkpoint written by an older version): still an answer
        return answer


@lru_cache(maxsize=4096)
def _first_equal(answer: Answer) -> Answer:
    return answer


def failed(reason: str) -> Answer:
    return shared(Answer(FAILED, error=reason))


@dataclass(slots=True)
class AnsweredRows:
    """Rows of one block, in input order: ``answers[i]`` is ``None`` for a row that is not a number
    (``reasons[i]`` says why); ``ages[i]`` is -1 for an answer asked now, the age of one from the cache,
    or :func:`resumed_age` for one an earlier try asked (``ages`` is ``None`` when all were asked now)."""

    rows: Sequence[int]
    raws: Sequence[Any]
    e164s: Sequence[str | None]
    answers: Sequence[Answer | None]
    reasons: Sequence[str | None] | None = None
    ages: Sequence[int] | None = None

    def records(self) -> Iterator[RcsResult]:
        """One :class:`RcsResult` per row (for callers that want objects, not a file); the engine hands
        out a block only when every number in it is answered."""
        reasons = self.reasons or repeat(None)
        ages = self.ages or repeat(-1)
        for raw, e164, answer, reason, age in zip(self.raws, self.e164s, self.answers, reasons, ages):
            if e164 is None:
                yield RcsResult(raw, None, INVALID, error=reason or "invalid")
            elif age == -1:
                yield RcsResult(raw, e164, *answer, source=SOURCE_API, age_seconds=0)
            else:
                yield RcsResult(raw, e164, *answer, *source_and_age(age))


def resumed_age(age: int) -> int:
    """The ``ages`` entry of an API answer ``age`` seconds old, resumed from a checkpoint: ``-2 - age``
    (below a fresh answer's -1); it also reads such an entry back."""
    return -2 - age


def source_and_age(age: int) -> tuple[str, int]:
    """``(source, age_seconds)`` of an ``ages`` entry: never fresher than the answer is."""
    if age >= 0:
        return SOURCE_CACHE, age
    return SOURCE_API, 0 if age == -1 else resumed_age(age)
