"""Countries: of an E.164 number (cheap, no parse), and of a CRM export's country field, which
:func:`region_for` reads as an ISO code (``US``, ``in``), an English name (``India``, ``USA``) or a
calling code (``+91``, ``44``), so a mixed audience is read right row by row.
"""

from __future__ import annotations

from functools import cache, lru_cache

import phonenumbers

UNKNOWN = "??"
# Names CRM exports use that are not the CLDR English names
_ALIASES = {"usa": "US", "united states of america": "US", "uk": "GB", "great britain": "GB", "uae": "AE"}


def region_of(e164: str) -> str:
    """ISO region of an E.164 number from its calling code. +1 reads as ``US``."""
    for length in (1, 2, 3):
        code = e164[1 : 1 + length]
        if code.isdigit() and (regions := phonenumbers.COUNTRY_CODE_TO_REGION_CODE.get(int(code))):
            return regions[0]
    return UNKNOWN


@cache
def _region_by_name() -> dict[str, str]:
    from babel import Locale  # a dependency of the Airflow task SDK; CLDR's English country names

    names = {name.casefold(): code for code, name in Locale("en").territories.items() if len(code) == 2}
    return {**names, **_ALIASES}


@lru_cache(maxsize=1024)  # a country column holds few values; a wrong column, many
def region_for(field: str) -> str | None:
    """The ISO region a country field names, or ``None`` when it names none phonenumbers knows."""
    text = field.strip()
    if text.lstrip("+").isdigit():
        region = phonenumbers.region_code_for_country_code(int(text.lstrip("+")))
        return None if region == phonenumbers.UNKNOWN_REGION else region
    region = text.upper() if len(text) == 2 else _region_by_name().get(" ".join(text.casefold().split()))
    return region if region in phonenumbers.SUPPORTED_REGIONS else None
