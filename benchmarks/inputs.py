"""Deterministic, realistic benchmark audiences: mostly distinct numbers, as real audiences are.

Numbers come from ``phonenumbers``' example numbers of many regions (mobile and fixed line)
with the trailing digits randomized, written the ways people write them. Nothing here is
timed; generation only has to be quick enough for a million inputs.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator

import phonenumbers
from phonenumbers import PhoneNumberFormat, PhoneNumberType

from airflow_provider_kaleyra.numbers.normalize import normalize

# Audience regions, weighted roughly like a campaign: India first (SOIP is India-only), then
# the big RCS markets, with the awkward ones (IT leading zeros, AR/MX mobile rules, BR carrier
# codes, RU 8-prefix, shared calling codes) well represented.
REGION_WEIGHTS = {
    "IN": 30, "US": 12, "GB": 6, "DE": 5, "FR": 5, "BR": 5, "IT": 4, "MX": 4, "AR": 3, "ES": 3,
    "AU": 2, "JP": 2, "CN": 2, "RU": 2, "AE": 2, "NG": 2, "ID": 2, "CA": 2, "ZA": 1, "KR": 1,
    "NL": 1, "TR": 1, "PK": 1, "EG": 1, "CO": 1, "SG": 1, "SA": 1, "KZ": 1, "CH": 1, "PL": 1,
}  # fmt: skip
STYLES = {  # how each input is written, with its share of the mixed inputs
    "e164": 30,  # +919876543210
    "national_digits": 20,  # 09876543210 with a default region
    "national_formatted": 14,  # 098765 43210, (415) 555-0100, 02 1234 5678
    "international_formatted": 12,  # +91 98765 43210
    "international_dots_dashes": 6,  # +1.415.555.0100, +44-20-7946-0000
    "double_zero": 8,  # 0091 98765 43210
    "cc_digits": 4,  # 919876543210 with a default region
    "garbage": 6,  # see _garbage
}
_DIGIT = re.compile(r"\d")


class _Template:
    """An example number of one region and type, in each written form, with its free tail."""

    def __init__(self, region: str, number: phonenumbers.PhoneNumber) -> None:
        self.region = region
        self.forms = {
            "e164": phonenumbers.format_number(number, PhoneNumberFormat.E164),
            "national": phonenumbers.format_number(number, PhoneNumberFormat.NATIONAL),
            "international": phonenumbers.format_number(number, PhoneNumberFormat.INTERNATIONAL),
        }
        nsn = phonenumbers.national_significant_number(number)
        self.free = min(6, len(nsn) - 3)  # randomized trailing digits (the leading ones pick the range)

    def write(self, style: str, tail: str, rng: random.Random | None = None) -> str:
        if style == "e164":
            return _with_tail(self.forms["e164"], tail)
        if style == "cc_digits":
            return _with_tail(self.forms["e164"], tail)[1:]
        if style == "national_digits":
            return "".join(_DIGIT.findall(_with_tail(self.forms["national"], tail)))
        if style == "national_formatted":
            return _with_tail(self.forms["national"], tail)
        if style == "international_formatted":
            return _with_tail(self.forms["international"], tail)
        if style == "international_dots_dashes":
            return _with_tail(self.forms["international"], tail).replace(" ", (rng or random).choice(".-"))
        if style == "double_zero":
            return "00" + _with_tail(self.forms["international"], tail)[1:]
        raise ValueError(style)


def _with_tail(text: str, tail: str) -> str:
    """``text`` with its last ``len(tail)`` digits replaced by ``tail``."""
    chars = list(text)
    positions = [i for i, c in enumerate(chars) if c.isdigit()][-len(tail) :] if tail else []
    for position, digit in zip(positions, tail):
        chars[position] = digit
    return "".join(chars)


def _templates() -> list[tuple[_Template, int]]:
    templates = []
    for region, weight in REGION_WEIGHTS.items():
        for kind, share in ((PhoneNumberType.MOBILE, 4), (PhoneNumberType.FIXED_LINE, 1)):
            number = phonenumbers.example_number_for_type(region, kind)
            if number is not None:
                templates.append((_Template(region, number), weight * share))
    return templates


def _garbage(rng: random.Random) -> str:
    kind = rng.randrange(10)
    if kind == 0:
        return ""
    if kind == 1:
        return rng.choice(["N/A", "null", "-", "none", "unknown", "TBD", "#N/A", "0"])
    if kind == 2:
        return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz ") for _ in range(rng.randint(3, 20)))
    if kind == 3:
        return f"{rng.choice(['jo', 'ann', 'raj'])}{rng.randint(1, 999)}@example.com"
    if kind == 4:
        return str(rng.randint(1, 99999))  # too short
    if kind == 5:
        return "".join(rng.choice("0123456789") for _ in range(rng.randint(18, 30)))  # too long
    if kind == 6:
        return "+" + "".join(rng.choice("0123456789") for _ in range(rng.randint(6, 14)))  # mostly invalid
    if kind == 7:
        return f"+1 415 555 {rng.randint(1000, 9999)} ext. {rng.randint(1, 999)}"
    if kind == 8:
        return f"1-800-{''.join(rng.choice('ABCDEFGHIJKLMNOPRSTUVWXY') for _ in range(7))}"
    return "".join(rng.choice("0123456789") for _ in range(rng.randint(7, 12)))  # digits, maybe valid


def mixed_inputs(count: int, seed: int = 7) -> list[tuple[str, str]]:
    """``count`` ``(raw, default region)`` pairs in the mix of ``STYLES``."""
    rng = random.Random(seed)
    templates, weights = zip(*_templates())
    styles, style_weights = zip(*STYLES.items())
    out: list[tuple[str, str]] = []
    template_picks = rng.choices(templates, weights, k=count)
    style_picks = rng.choices(styles, style_weights, k=count)
    for template, style in zip(template_picks, style_picks):
        if style == "garbage":
            out.append((_garbage(rng), template.region))
            continue
        tail = "".join(rng.choice("0123456789") for _ in range(template.free))
        out.append((template.write(style, tail, rng), template.region))
    return out


def valid_e164_numbers(count: int, seed: int = 11) -> list[str]:
    """``count`` distinct valid E.164 numbers of the audience regions (checked with ``normalize``)."""
    rng = random.Random(seed)
    templates, weights = zip(*_templates())
    seen: dict[str, None] = {}
    while len(seen) < count:
        for template in rng.choices(templates, weights, k=min(count, 100_000)):
            tail = "".join(rng.choice("0123456789") for _ in range(template.free))
            e164 = normalize(template.write("e164", tail)).e164
            if e164 is not None:
                seen[e164] = None
                if len(seen) == count:
                    break
    return list(seen)


def iter_audience_lines(count: int, seed: int = 13) -> Iterator[str]:
    """Lines of a big audience file: mostly valid numbers in assorted styles, a little garbage."""
    for raw, _region in mixed_inputs(count, seed):
        yield raw


def audience_lines(count: int, region: str = "IN", seed: int = 17) -> Iterator[str]:
    """Lines of a big audience file read with default region ``region``: national numbers of
    that region, international ones of any, in the mix of ``STYLES`` (garbage included)."""
    rng = random.Random(seed)
    all_templates = _templates()
    local = [(t, w) for t, w in all_templates if t.region == region]
    styles, style_weights = zip(*STYLES.items())
    national = {"national_digits", "national_formatted"}
    for _ in range(count // 10_000 + 1):
        n = min(10_000, count)
        if n <= 0:
            return
        count -= n
        style_picks = rng.choices(styles, style_weights, k=n)
        for style in style_picks:
            if style == "garbage":
                yield _garbage(rng)
                continue
            templates, weights = zip(*(local if style in national else all_templates))
            template = rng.choices(templates, weights)[0]
            tail = "".join(rng.choice("0123456789") for _ in range(template.free))
            yield template.write(style, tail, rng)


def messy_audience(numbers: list[str], seed: int = 19) -> list[str]:
    """The lines of a messy audience over ``numbers`` (distinct valid E.164, read with default
    region US): 10% of rows written in US national form (``(212) 245-2918``, when the number is a
    US one; otherwise ``+1 ...``-style international), 5% repeats of earlier rows, 2% garbage."""
    rng = random.Random(seed)
    lines: list[str] = []
    for e164 in numbers:
        draw = rng.random()
        if draw < 0.02:
            lines.append(_garbage(rng))
        elif draw < 0.07 and lines:
            lines.append(lines[rng.randrange(len(lines))])
        elif draw < 0.17:
            number = phonenumbers.parse(e164)
            form = PhoneNumberFormat.NATIONAL if number.country_code == 1 else PhoneNumberFormat.INTERNATIONAL
            lines.append(phonenumbers.format_number(number, form))
        else:
            lines.append(e164)
    return lines
