"""A sample audience with messy, invalid and repeated phone numbers, for the example DAGs, the demo,
the tests and the benchmarks: the same ``size`` and ``seed`` give the same rows, byte for byte."""

from __future__ import annotations

import random
from collections.abc import Iterator

_US_AREA_CODES = (201, 202, 212, 213, 305, 312, 404, 415, 512, 617, 646, 702, 713, 718, 805, 917, 949)
_GARBAGE = (
    "",
    "   ",
    "N/A",
    "unknown",
    "call me maybe",
    "12345",
    "+999 123 4567",
    "+1 415 555 0123 4567 8901",
    "jane.doe@example.com",
    "0",
    "(555) CALL-NOW",
    "+44 20 7946",
    "000-000-0000",
    "+1 (000) 000-0000",
    "\u260e +1 4",
    "x" * 80,
)


def _random_valid_number(rng: random.Random) -> tuple[str, str]:
    """A valid number as (country, E.164); countries weighted like a mostly-US audience."""
    import phonenumbers

    country = rng.choices(("US", "IN", "GB", "DE", "BR"), weights=(60, 25, 8, 4, 3))[0]
    for _ in range(100):
        if country == "US":
            exchange = rng.randrange(200, 1000)
            if exchange % 100 == 11 or exchange == 555:
                continue
            e164 = f"+1{rng.choice(_US_AREA_CODES)}{exchange}{rng.randrange(10_000):04d}"
        elif country == "IN":
            e164 = f"+91{rng.choice('6789')}{rng.randrange(10**9):09d}"
        elif country == "GB":
            e164 = f"+447{rng.choice('123456789')}{rng.randrange(10**8):08d}"
        elif country == "DE":
            e164 = f"+491{rng.choice(('51', '52', '57', '60', '62', '70', '71', '76'))}{rng.randrange(10**8):08d}"
        else:
            e164 = f"+55{rng.choice(('11', '21', '31', '41'))}9{rng.randrange(10**8):08d}"
        if phonenumbers.is_valid_number(phonenumbers.parse(e164)):
            return country, e164
    raise RuntimeError(f"could not generate a valid {country} number")  # pragma: no cover


def _messy_format(rng: random.Random, country: str, e164: str) -> str:
    """The same number as people type it: spaces, dashes, brackets, 00 prefix, US national form."""
    digits = e164[1:]
    style = rng.randrange(10)
    if country == "US":
        area, exchange, line = digits[1:4], digits[4:7], digits[7:]
        return (
            e164,
            f"+1 {area}-{exchange}-{line}",
            f"({area}) {exchange}-{line}",
            f"{area}.{exchange}.{line}",
            f"1 {area} {exchange} {line}",
            f"001{area}{exchange}{line}",
            f"  {e164} ",
            f"+1 ({area}) {exchange} {line}",
            f"{area}{exchange}{line}",
            f"+1-{area}-{exchange}-{line}",
        )[style]
    code, national = digits[:2], digits[2:]  # (IN, GB, DE, BR: two-digit calling codes)
    if style < 4:
        return e164
    if style < 7:
        return f"+{code} {national[:5]} {national[5:]}"
    if style < 9:
        return f"00{code} {national}"
    return f"+{code}-{national[:3]}-{national[3:6]}-{national[6:]}"


def generate_audience_rows(size: int, seed: int = 42) -> Iterator[tuple[str, str, str]]:
    """``size`` rows of (customer_id, phone, segment): about 5% garbage (empty, words, wrong lengths,
    unknown country codes), about 3% an earlier number again, usually written in another format."""
    rng = random.Random(seed)
    seen: list[tuple[str, str]] = []
    segments = ("loyal", "new", "lapsed", "vip")
    for index in range(size):
        roll = rng.random()
        if roll < 0.05:
            phone = rng.choice(_GARBAGE)
        else:
            if roll < 0.08 and seen:
                country, e164 = rng.choice(seen)
            else:
                country, e164 = _random_valid_number(rng)
                seen.append((country, e164))
            phone = _messy_format(rng, country, e164)
        yield f"C{index + 1:07d}", phone, segments[index % len(segments)]
