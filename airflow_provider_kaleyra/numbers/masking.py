"""Phone numbers are personal data: what logs, messages and rendered fields show of them."""

from __future__ import annotations

import re
from collections.abc import Iterator

_NUMBER_LIKE = re.compile(r"\+?\d[\d \t().\-/]{4,}\d")


def mask(number: str | None) -> str:
    """``+1415*****67``: enough to tell numbers apart in a log, never the whole number."""
    if not number:
        return "<none>"
    text = str(number)
    if len(text) <= 6:
        return "*" * len(text)
    return text[:5] + "*" * (len(text) - 7) + text[-2:]


def mask_numbers(text: str) -> str:
    """``text`` with anything that looks like a phone number masked, for messages quoting input."""
    return _NUMBER_LIKE.sub(lambda match: mask(match.group()), text)


class MaskedNumbers:
    """A ``numbers`` list that iterates as the numbers but serializes as a masked sample: Airflow keeps
    every templated field after rendering (Rendered Templates), where the audience would be in clear."""

    def __init__(self, values: object) -> None:
        self.values = list(values)  # type: ignore[call-overload]

    def __iter__(self) -> Iterator[object]:
        return iter(self.values)

    def __len__(self) -> int:
        return len(self.values)

    def __repr__(self) -> str:
        return f"<{len(self.values)} phone numbers>"

    def serialize(self) -> dict[str, object]:
        return {"count": len(self.values), "sample": [mask(str(v)) for v in self.values[:5]]}
