"""The fast path of :func:`airflow_provider_kaleyra.numbers.normalize.normalize`.

``phonenumbers`` is pure Python and general, and the preflight normalizes every row. For inputs
that are ``+`` and ASCII digits, or ASCII digits with a default region, this module replays
``phonenumbers.parse`` (9.x) and ``is_valid_number`` step for step from its own metadata, with
patterns compiled once and a region's validity patterns merged into one per length. Anything else,
or anything ``parse`` would raise on, gives ``None``: the caller asks ``phonenumbers``. It replays
private internals, so ``pyproject.toml`` pins the series ``tests/test_phone.py`` covers and
``normalize.fast_path_enabled`` checks it on first use. ``benchmarks/run.py --only normalize``
gives the gain: delete this module if a release makes it small.
"""

from __future__ import annotations

import functools
import itertools
import re

from phonenumbers import PhoneMetadata, PhoneNumber
from phonenumbers.phonenumberutil import COUNTRY_CODE_TO_REGION_CODE, SUPPORTED_REGIONS

_NON_GEO = "001"
_MIN_NSN = 2  # phonenumbers' _MIN_LENGTH_FOR_NSN
_MAX_NSN = 17  # phonenumbers' _MAX_LENGTH_FOR_NSN
_MAX_INPUT = 250  # phonenumbers' _MAX_INPUT_STRING_LENGTH
_CC_OF_DIGITS = {str(cc): cc for cc in COUNTRY_CODE_TO_REGION_CODE}


# What phonenumbers computes for one input: (calling code, national significant number,
# is_valid_number). A plain tuple: this is the hot path, and a named tuple costs a Python call.
Parsed = tuple[int, str, bool]


def phone_number(parsed: Parsed) -> PhoneNumber:
    """A ``PhoneNumber`` with the same calling code and national significant number as ``parse``'s."""
    country_code, nsn, _ = parsed
    number = PhoneNumber(country_code=country_code, national_number=int(nsn))
    zeros = len(nsn) - len(nsn.lstrip("0"))
    if zeros and len(nsn) > 1:
        number.italian_leading_zero = True
        number.number_of_leading_zeros = min(zeros, len(nsn) - 1)
    return number


class _Region:
    """One metadata object (a region, or a non-geographic calling code), precompiled."""

    __slots__ = ("code", "country_code", "cc_digits", "idd", "prefix", "transform", "general", "lengths")
    __slots__ += ("max_length", "local_lengths", "leading_digits", "_types", "_valid")

    def __init__(self, code: str, md: PhoneMetadata) -> None:
        self.code = code
        self.country_code = md.country_code
        self.cc_digits = str(md.country_code)
        # parse compiles these whenever they are not None (even empty) ...
        self.idd = re.compile(md.international_prefix) if md.international_prefix is not None else None
        self.leading_digits = re.compile(md.leading_digits) if md.leading_digits is not None else None
        # ... and ignores the national-prefix fields and description patterns when empty.
        self.prefix = re.compile(md.national_prefix_for_parsing) if md.national_prefix_for_parsing else None
        self.transform = md.national_prefix_transform_rule or None
        general, pattern = md.general_desc, md.general_desc.national_number_pattern
        self.general = re.compile(pattern) if pattern else None
        self.lengths = frozenset(general.possible_length)
        self.max_length = max(general.possible_length)
        self.local_lengths = frozenset(general.possible_length_local_only)
        descs = [md.premium_rate, md.toll_free, md.shared_cost, md.voip, md.personal_number, md.pager]
        descs += [md.uan, md.voicemail, md.fixed_line]
        if not md.same_mobile_and_fixed_line_pattern:
            descs.append(md.mobile)
        # (admitted lengths, or None for any; pattern) of each description _number_type_helper tries
        self._types = [
            (frozenset(d.possible_length) or None, d.national_number_pattern)
            for d in descs
            if d is not None and d.national_number_pattern
        ]
        # one pattern per possible length (no other length is valid)
        self._valid = {length: self._valid_pattern(length) for length in self.lengths}

    def general_matches(self, number: str) -> bool:
        """``_match_national_number(number, general_desc, False)``: the pattern only, no lengths."""
        return self.general is not None and self.general.fullmatch(number) is not None

    def strip_national_prefix(self, number: str) -> str:
        """``_maybe_strip_national_prefix_carrier_code(number, metadata)[1]``."""
        if self.prefix is None or not number:
            return number
        match = self.prefix.match(number)
        if match is None:
            return number
        if self.transform is None or match.groups()[-1] is None:
            rest = number[match.end() :]
        else:
            rest = self.prefix.sub(self.transform, number, count=1)
        if self.general_matches(number) and not self.general_matches(rest):
            return number  # the number was viable as it stood and would not be without the prefix
        return rest

    def is_valid(self, nsn: str) -> bool:
        """``_number_type_helper(nsn, metadata) != UNKNOWN``."""
        pattern = self._valid.get(len(nsn))
        return pattern is not None and pattern.fullmatch(nsn) is not None

    def _valid_pattern(self, length: int) -> re.Pattern[str] | None:
        """General description (look-ahead) and any admitted type description, as one pattern."""
        if self.general is None or length not in self.lengths:
            return None
        admitted = "|".join(f"(?:{p})" for lengths, p in self._types if lengths is None or length in lengths)
        return re.compile(f"(?=(?:{self.general.pattern})\\Z)(?:{admitted})") if admitted else None


class _CallingCode:
    """A calling code: the metadata ``parse`` uses for it, and how a number picks its region."""

    __slots__ = ("country_code", "digits", "main", "candidates", "single_valid")

    def __init__(self, country_code: int, main: _Region, candidates: list[_Region]) -> None:
        self.country_code = country_code
        self.digits = str(country_code)
        self.main = main  # metadata_for_region_or_calling_code(cc, region_code_for_country_code(cc))
        self.candidates = candidates  # COUNTRY_CODE_TO_REGION_CODE[cc], all with metadata
        # One region: is_valid_number is that region's validity (when its metadata carries
        # this calling code, which is_valid_number_for_region checks for geographic regions).
        self.single_valid: dict[int, re.Pattern[str] | None] | None = None
        if len(candidates) == 1:
            region = candidates[0]
            self.single_valid = (
                region._valid if region.code == _NON_GEO or region.country_code == country_code else {}
            )

    def is_valid(self, nsn: str) -> bool:
        """``is_valid_number`` of a number with this calling code (shared by regions) and ``nsn``."""
        for region in self.candidates:  # region_code_for_number, then is_valid_number_for_region
            if region.leading_digits is not None:
                if region.leading_digits.match(nsn):
                    return region.country_code == self.country_code and region.is_valid(nsn)
            elif region.is_valid(nsn):
                return region.country_code == self.country_code
        return False

    def finish(self, national: str, metadata: _Region) -> Parsed | None:
        """The tail of ``parse`` once the calling code is known (``metadata``: the one it uses);
        ``None`` where ``parse`` raises on the length."""
        if len(national) < _MIN_NSN:
            return None
        if metadata.prefix is not None and metadata.prefix.match(national) is not None:
            stripped = metadata.strip_national_prefix(national)
            length = len(stripped)
            if length not in metadata.local_lengths and (
                length in metadata.lengths or length > metadata.max_length
            ):
                national = stripped
        if len(national) > _MAX_NSN:
            return None
        if self.single_valid is None:
            return (self.country_code, national, self.is_valid(national))
        pattern = self.single_valid.get(len(national))
        return (self.country_code, national, pattern is not None and pattern.fullmatch(national) is not None)


def _replayable(md: PhoneMetadata | None) -> bool:
    """Metadata this module replays; anything odd (none seen in 9.x) is left to phonenumbers."""
    if md is None or md.general_desc is None or not md.general_desc.possible_length:
        return False  # (phonenumbers would index an empty length list)
    if md.national_prefix_transform_rule and md.national_prefix_for_parsing:
        # parse reads the last group of the prefix pattern: it must have one
        return re.compile(md.national_prefix_for_parsing).groups > 0
    return True


@functools.cache
def _region(code: str) -> _Region | None:
    md = PhoneMetadata.metadata_for_region(code, None) if code in SUPPORTED_REGIONS else None
    return _Region(code, md) if _replayable(md) else None


@functools.cache
def _calling_code(cc: int) -> _CallingCode | None:
    codes = COUNTRY_CODE_TO_REGION_CODE.get(cc, ())
    if codes == (_NON_GEO,):
        md = PhoneMetadata.metadata_for_nongeo_region(cc, None)
        if not _replayable(md):
            return None
        region = _Region(_NON_GEO, md)
        return _CallingCode(cc, region, [region])
    if not codes or _NON_GEO in codes:
        return None
    candidates = [r for r in map(_region, codes) if r is not None]
    # region_code_for_number skips a region without metadata, but parse would not use the
    # same metadata without the main one: leave such a code (none in 9.x) to phonenumbers.
    return _CallingCode(cc, candidates[0], candidates) if len(candidates) == len(codes) else None


# Calling codes met so far, by their digits. With prefix-free codes (true of E.164; checked, not
# assumed), the one of these that starts a number is the one _extract_country_code's search finds.
_BY_DIGITS: dict[str, _CallingCode] = {}
_REMEMBER = not any(b.startswith(a) for a, b in itertools.pairwise(sorted(_CC_OF_DIGITS)))


def international(digits: str) -> Parsed | None:
    """``digits`` after ``+`` or an IDD (at least 3): ``_extract_country_code``, then the tail."""
    info = _BY_DIGITS.get(digits[:1]) or _BY_DIGITS.get(digits[:2]) or _BY_DIGITS.get(digits[:3])
    if info is None:
        cc = _CC_OF_DIGITS.get(digits[:1]) or _CC_OF_DIGITS.get(digits[:2]) or _CC_OF_DIGITS.get(digits[:3])
        if cc is None:  # also when digits start with 0: no calling code does
            return None
        info = _calling_code(cc)
        if info is None:
            return None
        if _REMEMBER:
            _BY_DIGITS[info.digits] = info
    return info.finish(digits[len(info.digits) :], info.main)


def parse(compact: str, region: str | None) -> Parsed | None:
    """``phonenumbers.parse(compact, region)`` and ``is_valid_number`` of the result, for ``+`` and
    ASCII digits or ASCII digits read in ``region``; ``None`` for anything else."""
    if compact[:1] == "+":
        digits = compact[1:]
        if not (_MIN_NSN < len(digits) < _MAX_INPUT and digits.isascii() and digits.isdigit()):
            return None  # not viable, too short after the "+", or not digits only
        return international(digits)
    if not (_MIN_NSN <= len(compact) <= _MAX_INPUT and compact.isascii() and compact.isdigit()):
        return None
    default = _region(region) if region else None
    if default is None:
        return None
    if default.idd is not None:
        match = default.idd.match(compact)
        if match is not None:
            rest = compact[match.end() :]
            if rest[:1] != "0":  # an IDD is not stripped when a 0 follows it
                return international(rest) if len(rest) > _MIN_NSN else None
    info = _calling_code(default.country_code)
    if info is None:
        return None
    if compact.startswith(default.cc_digits):
        # "starts with the region's own calling code": kept as one when that makes the
        # number match the general pattern, or when the whole is too long for the region.
        candidate = default.strip_national_prefix(compact[len(default.cc_digits) :])
        too_long = len(compact) > default.max_length and len(compact) not in default.local_lengths
        if (not default.general_matches(compact) and default.general_matches(candidate)) or too_long:
            # parse now uses the main region of the code (the same metadata when it is the default)
            return info.finish(candidate, info.main)
    return info.finish(compact, default)
