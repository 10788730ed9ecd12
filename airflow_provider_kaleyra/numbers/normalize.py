"""Phone numbers in, E.164 out: the one place that decides what a valid number is.

``phonenumbers`` does the real work. Prepending ``+`` to a national number is a trap
(Indian ``9876543210`` becomes a possible Iranian number), so numbers without a country
code are read with an explicit default region and always gated on ``is_valid_number``.

Speed: inputs that are ``+`` and digits, or digits read with a default region (nearly all
of them), are answered by :mod:`airflow_provider_kaleyra.numbers.fastphone`, which replays
``phonenumbers``' parse and validation for exactly those strings from its own metadata,
with precompiled patterns; everything else goes through ``phonenumbers`` itself. The
answer is the same either way (``tests/test_phone.py`` checks it).
"""

from __future__ import annotations

import logging
import re
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from itertools import repeat
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
    parsed = _fastphone.parse(compact, parse_region) if _trusted or fast_path_enabled() else None
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

    The same answers as :func:`normalize`, for less CPU per row: inputs already ``+`` and ASCII
    digits (most of a clean audience) go straight to the fast path's calling-code step, with no
    per-row cleaning or record; a repeated input the fast path does not take is read once per block.

    :param problems: why each input was refused unread (``None`` where it was not), as
        :class:`~airflow_provider_kaleyra.numbers.audience.RowBlock` gives them; ``None``: none was.
    """
    international = _fastphone.international if _trusted or fast_path_enabled() else None
    e164s: list[str | None] = []
    reasons: list[str | None] = []
    slow: dict[str, Normalized] = {}  # this block's answers for inputs off the cheap path
    for raw, problem in zip(raws, problems or repeat(None)):
        if problem is not None:
            e164s.append(None)
            reasons.append(problem)
            continue
        if type(raw) is not str:
            e164s.append(None)
            reasons.append(normalize(raw).reason)  # refused: not text
            continue
        if (
            international is not None
            and raw[:1] == "+"
            and 3 < len(raw) <= E164_MAX_DIGITS + 1
            and raw.isascii()
            and raw[1:].isdigit()
        ):
            parsed = international(raw[1:])
            if parsed is not None and parsed[2]:
                e164 = f"+{parsed[0]}{parsed[1]}"
                if len(e164) <= E164_MAX_DIGITS + 1:  # (a transform rule can lengthen a number)
                    e164s.append(e164)
                    reasons.append(None)
                    continue
        answer = slow.get(raw)
        if answer is None:
            answer = slow[raw] = normalize(raw, region)
        e164s.append(answer.e164)
        reasons.append(answer.reason)
    return e164s, reasons


def preclean(raw: object, region: str | None) -> Normalized | tuple[str, str | None]:
    """The rules applied before ``phonenumbers``: a refusal, or ``(compact text, region to parse with)``.

    Text longer than ``MAX_INPUT_LENGTH`` and Excel's scientific notation (its digits are lost)
    are refused, separators go, ``00`` before a country code becomes ``+``, and a number with
    ``+`` is read without a default region.
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


_NORMALIZE = normalize  # (the function itself, whatever a test rebinds the name to)
MAX_REASONS = 20  # distinct invalid reasons tallied: a few say what went wrong; ``invalid`` counts all


class DistinctNumbers:
    """The one normalize-and-deduplicate pass: every input read once, every valid number kept once.

    :meth:`add` says what one input is; the tallies and the distinct numbers (first-seen order)
    build up as it goes. A number is kept as the integer of its E.164 digits: half the memory
    of its string. ``inputs`` is derived, so a new number costs no count.

    :param region: ISO country for numbers written without a country code.
    :param read: reads one input: :func:`normalize` (default), or :func:`already_e164` for inputs
        an earlier step normalized.
    :param positions: remember each number's position, so that a repeat's is known too (the bulk
        spool needs it); otherwise a repeat's position is ``None`` and the map holds no int per number.
    :param as_text: key numbers by their E.164 text instead, for a caller that keeps those strings
        anyway (the hook): the map then shares them rather than adding an int per number.
    """

    def __init__(
        self,
        region: str | None,
        read: Callable[[object, str | None], Normalized] | None = None,
        *,
        positions: bool = False,
        as_text: bool = False,
    ) -> None:
        self.region = region
        self.read = read or normalize  # (looked up now, not at import: a test counts its calls)
        self.positions = positions
        self.as_text = as_text
        self.seen: dict[int | str, int | None] = {}
        self.invalid = self.duplicates = 0
        self.reasons: Counter[str] = Counter()

    def add(self, raw: object, problem: str | None = None) -> tuple[str | None, str | None, int | None, bool]:
        """``(e164, reason, position, first_seen)`` of one input; ``problem``: why it was refused unread."""
        e164, reason = self.read(raw, self.region) if problem is None else (None, problem)
        return self._keep(e164, reason)

    def add_block(
        self, raws: Sequence[object], problems: Sequence[str | None] | None = None
    ) -> tuple[list[str | None], list[str | None]]:
        """:meth:`add` for a block: ``(e164s, reasons)``, aligned with ``raws``.

        Plain :func:`normalize` reads the block with :func:`normalize_block`; any other reader
        (:func:`already_e164`, a test's counter) is called once per input.
        """
        if self.read is _NORMALIZE:
            e164s, reasons = normalize_block(raws, problems, self.region)
        else:
            pairs = [
                self.read(r, self.region) if p is None else (None, p)
                for r, p in zip(raws, problems or repeat(None))
            ]
            e164s, reasons = [pair[0] for pair in pairs], [pair[1] for pair in pairs]
        for e164, reason in zip(e164s, reasons):
            self._keep(e164, reason)
        return e164s, reasons

    def _keep(self, e164: str | None, reason: str | None) -> tuple[str | None, str | None, int | None, bool]:
        if e164 is None:
            self.invalid += 1
            if reason in self.reasons or len(self.reasons) < MAX_REASONS:
                self.reasons[reason] += 1  # type: ignore[index]
            return None, reason, None, False
        seen = self.seen
        count = len(seen)
        position = seen.setdefault(e164 if self.as_text else int(e164[1:]), count if self.positions else None)
        if len(seen) == count:
            self.duplicates += 1
            return e164, None, position, False
        return e164, None, count, True

    @property
    def inputs(self) -> int:
        return len(self.seen) + self.duplicates + self.invalid

    def __len__(self) -> int:
        return len(self.seen)

    def numbers(self) -> Iterator[str]:
        """The distinct numbers, E.164, first-seen order."""
        return iter(self.seen) if self.as_text else (f"+{digits}" for digits in self.seen)  # type: ignore[return-value]


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

_trusted: bool | None = None  # None until the self-check ran
_check_lock = threading.Lock()
# Regions with national prefixes, shared calling codes, leading zeros, AR/MX transforms, ...
_SAMPLE_REGIONS = (
    "US CA AG GB IE IN DE FR IT SM VA ES NL BR AR MX RU KZ CN JP KR AU NZ SG AE SA ZA NG KE EG TR ID"
)
# ... and inputs that exercise one replayed rule each: (input, default region)
_TRICKY = [("+5491123456789", None), ("01115234567890", "AR"), ("0445512345678", "MX"), ("0212345678", "IT")]
_TRICKY += [
    ("8800555353", "RU"),
    ("011442079460000", "US"),
    ("4641234", "AG"),
    ("+0", None),
    ("+80012345678", None),
]


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


def fast_path_enabled() -> bool:
    """Whether :mod:`~airflow_provider_kaleyra.numbers.fastphone` is used: its first-use self-check,
    once per process, found no difference from plain ``phonenumbers`` (the property tests cover the
    pinned version; this catches a release that slipped past the pin, or a forced install)."""
    global _trusted
    if _trusted is None:
        with _check_lock:
            if _trusted is None:
                _trusted = _self_check()
    return _trusted


def _self_check() -> bool:
    """The fast path against plain ``phonenumbers`` on :func:`_sample` (~0.2 s, once per process)."""
    try:
        for compact, region in _sample():
            ours = _fastphone.parse(compact, region)
            if ours is None:
                continue
            try:
                number = phonenumbers.parse(compact, region)
                plain = (number.country_code, phonenumbers.national_significant_number(number))
                same = ours == (*plain, phonenumbers.is_valid_number(number))
            except phonenumbers.NumberParseException:
                same = False
            if not same:
                log.warning(
                    "phonenumbers %s disagrees with the fast path on a sample number (region %s): "
                    "normalizing with plain phonenumbers (slower, same answers)",
                    phonenumbers.__version__,
                    region,
                )
                return False
    except Exception:  # a private internal moved: the same fallback
        log.warning("Fast path self-check failed: normalizing with plain phonenumbers", exc_info=True)
        return False
    return True
