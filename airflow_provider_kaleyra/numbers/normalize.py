"""Phone numbers in, E.164 out: the one place that decides what a valid number is.

``phonenumbers`` does the work. Prepending ``+`` to a national number is a trap (Indian
``9876543210`` becomes a possible Iranian number), so numbers without a country code are read
with an explicit default region, and every answer is gated on ``is_valid_number``. Inputs that
are ``+`` and digits, or digits with a default region, take :mod:`.fastphone` (same answers,
checked at first use and by ``tests/test_phone.py``); the rest go through ``phonenumbers``.
"""

from __future__ import annotations

import functools
import logging
import re
from collections import Counter
from collections.abc import Sequence
from itertools import islice, repeat
from typing import NamedTuple

import phonenumbers
from phonenumbers import NumberParseException, PhoneNumberFormat

from airflow_provider_kaleyra.numbers import fastphone as _fastphone

log = logging.getLogger(__name__)

MAX_INPUT_LENGTH = 64  # longer strings are not phone numbers; refuse before parsing
# Excel shows a long number as ``1.41555527E10`` and saves it so: the digits after the 9th
# are gone for good, and reading the rest would give another, valid-looking number.
_SCIENTIFIC = re.compile(r"\+?\d+(?:[.,]\d*)?[eE]\+?\d+")
SCIENTIFIC_NOTATION = "scientific notation: digits were lost (format the column as text)"
# phonenumbers accepts some national plans past E.164's 15 digits (e.g. German +49 201 00000000000);
# no API takes them, so they are refused here, on both paths.
E164_MAX_DIGITS = 15
TOO_LONG_FOR_E164 = f"not a valid number: longer than E.164's {E164_MAX_DIGITS} digits"
_SEPARATORS = str.maketrans("", "", " \t-.()/\u00a0\u2010\u2011\u2012\u2013\u2014")


class Normalized(NamedTuple):
    """The E.164 form of an input, or the reason there is none."""

    e164: str | None
    reason: str | None = None


def normalize(raw: object, region: str | None = None) -> Normalized:
    """Read one input as a phone number.

    :param raw: what the audience holds: a string in any common format (``+1 415-555-0100``,
        ``(415) 555 0100``, ``0044 20 7946 0000``); anything else is refused with a reason.
    :param region: ISO country used for numbers written without a country code.
    """
    cleaned = preclean(raw, region)
    if isinstance(cleaned, Normalized):
        return cleaned
    compact, parse_region = cleaned
    # what phonenumbers would compute, or None (then, or when the self-check failed, ask it)
    parsed = _fastphone.parse(compact, parse_region) if fast_path_enabled() else None
    if parsed is None:
        return normalize_with_phonenumbers(compact, parse_region)
    country_code, nsn, valid = parsed
    if valid:
        if len(nsn) + len(str(country_code)) > E164_MAX_DIGITS:
            return Normalized(None, TOO_LONG_FOR_E164)
        return Normalized(f"+{country_code}{nsn}")
    return Normalized(None, _invalid_reason(_fastphone.phone_number(parsed)))


def normalize_block(
    raws: Sequence[object], problems: Sequence[str | None] | None = None, region: str | None = None
) -> tuple[list[str | None], list[str | None]]:
    """:func:`normalize` of each input of a block: ``(e164s, reasons)``, aligned with ``raws``.
    Inputs that are ``+`` and ASCII digits, or national digits, once separators are gone go straight
    to the fast path; any other input is read once per block. ``problems``: why each input was refused unread, as
    :class:`~airflow_provider_kaleyra.numbers.audience.RowBlock` gives them."""
    fast = fast_path_enabled()
    e164s: list[str | None] = []
    reasons: list[str | None] = []
    slow: dict[str, Normalized] = {}  # this block's answers for inputs off the cheap path
    for raw, problem in zip(raws, problems or repeat(None)):
        if problem is None and fast and type(raw) is str and len(raw) <= MAX_INPUT_LENGTH:
            # ``preclean``'s outcome for most inputs: separators gone, ``+`` and digits or national digits
            compact = raw if raw[1:].isdigit() else raw.translate(_SEPARATORS)
            plus = compact[:1] == "+"
            digits = compact[1:] if plus else compact
            parsed = None
            if 2 < len(digits) <= E164_MAX_DIGITS and digits.isascii() and digits.isdigit():
                if plus:
                    parsed = _fastphone.international(digits)
                elif region and compact[:2] != "00":
                    parsed = _fastphone.parse(compact, region)
            if parsed is not None and parsed[2]:
                e164 = f"+{parsed[0]}{parsed[1]}"
                if len(e164) <= E164_MAX_DIGITS + 1:  # (a transform rule can lengthen a number)
                    e164s.append(e164)
                    reasons.append(None)
                    continue
        if problem is not None:
            answer = Normalized(None, problem)
        elif type(raw) is str:
            answer = slow.get(raw)
            if answer is None:
                answer = slow[raw] = normalize(raw, region)
        else:
            answer = normalize(raw)  # refused: not text (and perhaps not hashable)
        e164s.append(answer.e164)
        reasons.append(answer.reason)
    return e164s, reasons


def preclean(raw: object, region: str | None) -> Normalized | tuple[str, str | None]:
    """The rules applied before ``phonenumbers``: a refusal, or ``(compact text, region to parse with)``.

    Over-long text and Excel's scientific notation are refused, separators go, ``00`` before a
    country code becomes ``+``, and a number with ``+`` is read without a default region.
    """
    if not isinstance(raw, str):
        return Normalized(None, f"not text: {type(raw).__name__}")
    text = raw.strip().lstrip("\ufeff")
    if not text:
        return Normalized(None, "empty")
    if len(text) > MAX_INPUT_LENGTH:
        return Normalized(None, f"too long: {len(text)} characters")
    # (digits, with or without a leading "+", hold no separator to remove: skip the translation)
    clean = text[1:].isdigit() and (text[0] == "+" or text[0].isdigit())
    if not clean and ("E" in text or "e" in text) and _SCIENTIFIC.fullmatch(text):
        return Normalized(None, SCIENTIFIC_NOTATION)
    compact = text if clean else text.translate(_SEPARATORS)
    if compact.startswith("00") and compact[2:3].isdigit() and compact[2] != "0":
        compact = "+" + compact[2:]  # the international prefix; "000..." is no country code
    if compact.startswith("+"):
        return compact, None
    if not region:
        return Normalized(None, "no country code and no default region")
    return compact, region


def normalize_with_phonenumbers(compact: str, region: str | None) -> Normalized:
    """The reference path: plain ``phonenumbers`` parse, validation and E.164 formatting."""
    try:
        number = phonenumbers.parse(compact, region)
    except NumberParseException as exc:
        return Normalized(None, f"unparseable: {exc.args[0]}")  # the message, without the error code
    if not phonenumbers.is_valid_number(number):
        return Normalized(None, _invalid_reason(number))
    e164 = phonenumbers.format_number(number, PhoneNumberFormat.E164)
    if len(e164) - 1 > E164_MAX_DIGITS:
        return Normalized(None, TOO_LONG_FOR_E164)
    return Normalized(e164)


def already_e164(raw: object, region: str | None = None) -> Normalized:
    """For inputs normalized by an earlier step: check the E.164 shape only (no second parse)."""
    if isinstance(raw, str) and raw[:1] == "+" and raw[1:].isdigit() and 8 <= len(raw) <= 16:
        return Normalized(raw)
    return Normalized(None, "not E.164 (the input was declared normalized)")


MAX_REASONS = 20  # distinct invalid reasons tallied: a few say what went wrong; ``invalid`` counts all


class DistinctNumbers:
    """The one de-duplication tally, a block of rows at a time: inputs, invalid inputs and their
    reasons counted, each valid number kept once (``seen``: its position, first-seen order)."""

    def __init__(self) -> None:
        self.seen: dict[str, int] = {}
        self.inputs = self.invalid = 0
        self.reasons: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self.seen)

    def count(self, e164s: list[str | None], reasons: list[str | None]) -> bool:
        """Tally a block's rows without keeping their numbers; whether one of them was invalid."""
        self.inputs += len(e164s)
        if None not in e164s:
            return False
        invalid = [r for e, r in zip(e164s, reasons) if e is None]
        self.invalid += len(invalid)
        for reason, n in Counter(r or "invalid" for r in invalid).items():
            if reason in self.reasons or len(self.reasons) < MAX_REASONS:
                self.reasons[reason] += n
        return True

    def add(self, e164s: list[str | None], reasons: list[str | None]) -> tuple[list[int], list[str]]:
        """Tally and keep a block: ``(positions, new numbers)``, -1 for an invalid row; the numbers
        seen first in this block."""
        seen = self.seen
        before = len(seen)
        add = seen.setdefault
        if self.count(e164s, reasons):
            positions = [-1 if e is None else add(e, len(seen)) for e in e164s]
        else:
            positions = [add(e, len(seen)) for e in e164s]  # type: ignore[arg-type]
        added = len(seen) - before
        new = list(islice(reversed(seen), added))[::-1] if added else []
        return positions, new


_POSSIBILITY = {
    phonenumbers.ValidationResult.INVALID_COUNTRY_CODE: "invalid country code",
    phonenumbers.ValidationResult.TOO_SHORT: "too short",
    phonenumbers.ValidationResult.TOO_LONG: "too long",
    phonenumbers.ValidationResult.INVALID_LENGTH: "invalid length",
}


def _invalid_reason(number: phonenumbers.PhoneNumber) -> str:
    why = _POSSIBILITY.get(phonenumbers.is_possible_number_with_reason(number))
    if why is None:  # the length fits, the digits do not: often a national number read in the wrong country
        region = phonenumbers.region_code_for_country_code(number.country_code)
        why = f"no such area code or prefix in {region} (+{number.country_code})"
    return f"not a valid number: {why}"


# --------------------------------------------------------------------------- fast path self-check

# Regions with national prefixes, shared calling codes, leading zeros, AR/MX transforms, ...
_SAMPLE_REGIONS = (
    "US CA AG GB IE IN DE FR IT SM VA ES NL BR AR MX RU KZ CN JP KR AU NZ SG AE SA ZA NG KE EG TR ID"
)
# ... and inputs that exercise one replayed rule each: (input, default region)
_TRICKY = [("+5491123456789", None), ("01115234567890", "AR"), ("0445512345678", "MX"), ("0212345678", "IT")]
_TRICKY += [("8800555353", "RU"), ("011442079460000", "US"), ("4641234", "AG"), ("+0", None)]
_TRICKY += [("+80012345678", None)]


def _sample() -> list[tuple[str, str | None]]:
    """Example numbers of each sample region, as audiences write them, valid and not, plus ``_TRICKY``."""
    inputs = list(_TRICKY)
    for region in _SAMPLE_REGIONS.split():
        for kind in (phonenumbers.PhoneNumberType.MOBILE, phonenumbers.PhoneNumberType.FIXED_LINE):
            number = phonenumbers.example_number_for_type(region, kind)
            if number is None:
                continue
            cc, nsn = number.country_code, phonenumbers.national_significant_number(number)
            national = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.NATIONAL)
            inputs += [(f"+{cc}{nsn}", None), (f"+{cc}{nsn[:-2]}", None), (f"+{cc}{nsn}0", None)]
            inputs += [(text, region) for text in ("".join(filter(str.isdigit, national)), nsn, nsn[:-1])]
            inputs += [(nsn + "1", region), (f"{cc}{nsn}", region)]
    return inputs


@functools.cache
def fast_path_enabled() -> bool:
    """Whether :mod:`.fastphone` is used: once per process, a self-check against plain
    ``phonenumbers`` on :func:`_sample` (~0.2 s) found no difference. The property tests cover the
    pinned version; this catches a release that slipped past the pin, or a forced install."""
    try:
        for compact, region in _sample():
            ours = _fastphone.parse(compact, region)
            if ours is not None:  # (phonenumbers raising where the fast path answered: a difference too)
                number = phonenumbers.parse(compact, region)
                nsn = phonenumbers.national_significant_number(number)
                if ours != (number.country_code, nsn, phonenumbers.is_valid_number(number)):
                    raise ValueError(f"another answer for a sample number of region {region}")
    except Exception:  # a difference, or a private internal moved: the same fallback
        log.warning(
            "phonenumbers %s fails the fast path's self-check: normalizing with plain phonenumbers "
            "(slower, same answers)",
            phonenumbers.__version__,
            exc_info=True,
        )
        return False
    return True
