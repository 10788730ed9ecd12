"""Facts of the Kaleyra API, in one place (see the specification in ``shared/kaleyra-api``)."""

from __future__ import annotations

import re
from typing import Any

import msgspec

# Default hosts per pod. Kaleyra spells some hosts differently in its own samples,
# so every host can be overridden from the connection.
RCS_HOSTS = {
    "na": "https://rcs-api.na.kaleyra.io",
    "in": "https://rcs-api.in.kaleyra.io",
}
SOIP_HOSTS = {
    "in": "https://api.in.kaleyra.io",
    "eu": "https://api.eu.kaleyra.io",
    "sg": "https://api.ap.kaleyra.io",
    "na": "https://api.kaleyra.io",
}
DEFAULT_POD = "na"

# Paths, relative to the base URL. ``{sid}`` is the account SID.
RCS_SINGLE_PATH = "/v1/{sid}/rcs/lookup/{number}"
RCS_BULK_PATH = "/v1/{sid}/rcs/lookup"
SOIP_CHECK_PATH = "/v1/{sid}/messages/soip/capability-check"

API_KEY_HEADER = "api-key"

SOIP_CHUNK_SIZE = 100  # numbers per SOIP check (an array; Kaleyra publishes no maximum)

# The bulk lookup takes between 100 and 500 distinct valid E.164 numbers.
BULK_MIN = 100
BULK_MAX = 500

# Result statuses of an RCS lookup, one per input.
RCS_ENABLED = "rcs_enabled"
RCS_DISABLED = "rcs_disabled"
INVALID = "invalid"
FAILED = "failed"
STATUSES = (RCS_ENABLED, RCS_DISABLED, INVALID, FAILED)


def soip_number(e164: str) -> str:
    """Kaleyra's SOIP samples send numbers as country code + national number, without ``+``."""
    return e164.lstrip("+")


# ``deviceAddress`` may come back as a uri-like identification (the bulk page's example is
# ``chat:234236745234``): the digits after the scheme are the number asked.
_URI_ADDRESS = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:\+?(\d+)")


def e164_key(device_address: object) -> str:
    """Key to match a returned ``deviceAddress`` (with or without ``+``, or ``<scheme>:<digits>``) to what
    we asked: ``+`` and digits; anything else gives a key no asked number has (``""`` for non-text)."""
    if type(device_address) is str and device_address[1:].isdigit() and device_address[:1] == "+":
        return device_address  # the usual form, as asked
    if isinstance(device_address, int) and not isinstance(device_address, bool):
        device_address = str(device_address)
    if not isinstance(device_address, str):
        return ""
    address = device_address.strip()
    uri = _URI_ADDRESS.fullmatch(address)
    return "+" + (uri.group(1) if uri else address.lstrip("+"))


def data_object(body: Any) -> dict[str, Any]:
    """The ``data`` object of a single lookup answer; ``ValueError`` (retried) when there is none."""
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, dict):
        raise ValueError("Kaleyra's single lookup answer has no data object")
    return data


class Device(msgspec.Struct):
    """A bulk answer's device whose fields have their usual types (Kaleyra's names; others ignored)."""

    deviceAddress: str | None = None
    rcsEnabled: bool | str | None = None
    carrierId: str | None = None
    carrierStatus: str | None = None


class BulkAnswer(msgspec.Struct):
    devices: list[Device]


# Reads a usual bulk answer straight into records: a third less CPU than plain JSON and dicts.
# A body it refuses (a field of another type) is read as plain JSON, device by device.
BULK_ANSWER = msgspec.json.Decoder(BulkAnswer)


def devices_list(body: Any) -> list[Any]:
    """The ``devices`` list of a bulk answer; ``ValueError`` (retried) for an empty or other body."""
    if type(body) is BulkAnswer:
        return body.devices
    if body is None:
        raise ValueError("Kaleyra's bulk answer was empty")
    devices = body.get("devices") if isinstance(body, dict) else None
    if not isinstance(devices, list):
        raise ValueError("Kaleyra's bulk answer has no devices list")
    return devices
