"""Settings of a ``kaleyra`` connection, read once and typed: the contract between the Airflow
connection (UI form, JSON env var) and the code, every extra named here with its default."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from airflow_provider_kaleyra.client.api import DEFAULT_POD, RCS_HOSTS, SOIP_HOSTS

DEFAULT_CONN_ID = "kaleyra_default"
CONN_TYPE = "kaleyra"

DEFAULT_TIMEOUT = 30.0
DEFAULT_MAX_RETRIES = 5
DEFAULT_RATE_LIMIT = 20.0
DEFAULT_MAX_CONCURRENCY = 64  # an upper bound: the calls in flight follow rate_limit x latency
DEFAULT_RETRY_BACKOFF = 0.5

# Capability cache (see ``cache.py`` and the README for the reasoning): a positive answer holds
# for a week, a negative one (offline device, RCS switched off) is asked again after two days.
DEFAULT_CACHE_MAX_AGE_POSITIVE = timedelta(days=7)
DEFAULT_CACHE_MAX_AGE_NEGATIVE = timedelta(days=2)
DEFAULT_TOKEN_LIFETIME = timedelta(hours=1)  # advanced callback auth (``callbacks/auth.py``)

# Every pod the code knows a host for; RCS hosts are published for NA and IN only.
PODS = tuple(dict.fromkeys([*RCS_HOSTS, *SOIP_HOSTS]))

_AGE_UNITS = {"d": "days", "h": "hours", "m": "minutes", "s": "seconds"}


def parse_age(text: str | float | timedelta, name: str | None = None, bare: str = "d") -> timedelta:
    """``30d``, ``12h``, ``90m``, ``45s`` (a bare number in ``bare`` units), or a ``timedelta`` as it is;
    the error names the setting ``name``."""
    if isinstance(text, timedelta):
        return text
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([dhms]?)\s*", str(text))
    if not match:
        raise ValueError(f"{name + ': ' if name else ''}not an age: {text!r} (use e.g. 30d, 12h, 90m)")
    return timedelta(**{_AGE_UNITS[match.group(2) or bare]: float(match.group(1))})


def _number(extra: dict[str, Any], key: str, default: float, cast: type) -> Any:
    value = extra.get(key, default)
    try:
        result = cast(value)
    except (TypeError, ValueError):
        raise ValueError(f"Kaleyra connection extra {key!r} must be a number, got {value!r}") from None
    if result < 0:
        raise ValueError(f"Kaleyra connection extra {key!r} must not be negative, got {value!r}")
    return result


def _age(extra: dict[str, Any], key: str, default: timedelta, bare: str = "d") -> timedelta:
    """An age extra; ``bare="s"`` where a bare number means seconds (as Kaleyra's ``expires_in``)."""
    return parse_age(extra.get(key, default), f"Kaleyra connection extra {key!r}", bare)


def _cidrs(extra: dict[str, Any], key: str) -> tuple[str, ...]:
    """A list of CIDRs, given as a list or comma-separated (checked by the receiver, which uses them)."""
    value = extra.get(key, ())
    items = value.split(",") if isinstance(value, str) else list(value)
    return tuple(str(i).strip() for i in items if str(i).strip())


def _json_object(extra: dict[str, Any], key: str) -> dict[str, Any] | None:
    """An extra holding a JSON object, given as an object or as JSON text (the UI form sends text)."""
    value = extra.get(key)
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise ValueError(
                f"Kaleyra connection extra {key!r} must be a JSON object, got unreadable JSON"
            ) from None
    if value is not None and not isinstance(value, dict):
        raise ValueError(
            f"Kaleyra connection extra {key!r} must be a JSON object, got {type(value).__name__}"
        )
    return value


@dataclass(frozen=True)
class KaleyraConfig:
    """Everything the hook, the operators and the callback receiver need from the connection."""

    sid: str
    api_key: str = field(repr=False)
    pod: str = DEFAULT_POD
    rcs_base_url: str = RCS_HOSTS[DEFAULT_POD]
    soip_base_url: str = SOIP_HOSTS[DEFAULT_POD]
    callback_profile_id: str | None = None
    default_region: str | None = None
    timeout: float = DEFAULT_TIMEOUT
    max_retries: int = DEFAULT_MAX_RETRIES
    rate_limit: float = DEFAULT_RATE_LIMIT
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY
    retry_backoff: float = DEFAULT_RETRY_BACKOFF
    callback_secret: str | None = field(default=None, repr=False)
    callback_store_url: str | None = field(default=None, repr=False)
    callback_field_map: dict[str, Any] | None = None
    callback_client_id: str | None = None
    callback_client_secret: str | None = field(default=None, repr=False)
    callback_token_lifetime: timedelta = DEFAULT_TOKEN_LIFETIME
    callback_allowed_ips: tuple[str, ...] = ()
    callback_trusted_proxies: tuple[str, ...] = ()
    cache_url: str | None = field(default=None, repr=False)
    cache_max_age_positive: timedelta = DEFAULT_CACHE_MAX_AGE_POSITIVE
    cache_max_age_negative: timedelta = DEFAULT_CACHE_MAX_AGE_NEGATIVE

    @classmethod
    def from_connection(cls, conn: Any) -> KaleyraConfig:
        """Build from an Airflow ``Connection`` (login = SID, password = API key, the rest in extra)."""
        extra = {key: value for key, value in (conn.extra_dejson or {}).items() if value not in (None, "")}
        if not conn.login:
            raise ValueError(f"Kaleyra connection {conn.conn_id!r} has no login: set it to the account SID")
        if not conn.password:
            raise ValueError(f"Kaleyra connection {conn.conn_id!r} has no password: set it to the API key")
        pod = (extra.get("pod") or DEFAULT_POD).lower()
        if pod not in PODS and not extra.get("rcs_base_url"):
            raise ValueError(
                f"Kaleyra connection {conn.conn_id!r}: unknown pod {pod!r} "
                f"(known: {', '.join(PODS)}); set rcs_base_url (and soip_base_url) to use other hosts"
            )
        region = extra.get("default_region") or None
        return cls(
            sid=conn.login,
            api_key=conn.password,
            pod=pod,
            rcs_base_url=(extra.get("rcs_base_url") or RCS_HOSTS.get(pod, "")).rstrip("/"),
            soip_base_url=(extra.get("soip_base_url") or SOIP_HOSTS.get(pod, SOIP_HOSTS["na"])).rstrip("/"),
            callback_profile_id=extra.get("callback_profile_id") or None,
            default_region=region.upper() if region else None,
            timeout=_number(extra, "timeout", DEFAULT_TIMEOUT, float),
            max_retries=_number(extra, "max_retries", DEFAULT_MAX_RETRIES, int),
            rate_limit=_number(extra, "rate_limit", DEFAULT_RATE_LIMIT, float),
            max_concurrency=max(1, _number(extra, "max_concurrency", DEFAULT_MAX_CONCURRENCY, int)),
            retry_backoff=_number(extra, "retry_backoff", DEFAULT_RETRY_BACKOFF, float),
            callback_secret=extra.get("callback_secret") or None,
            callback_store_url=extra.get("callback_store_url") or None,
            callback_field_map=_json_object(extra, "callback_field_map"),
            callback_client_id=extra.get("callback_client_id") or None,
            callback_client_secret=extra.get("callback_client_secret") or None,
            callback_token_lifetime=_age(extra, "callback_token_lifetime", DEFAULT_TOKEN_LIFETIME, "s"),
            callback_allowed_ips=_cidrs(extra, "callback_allowed_ips"),
            callback_trusted_proxies=_cidrs(extra, "callback_trusted_proxies"),
            cache_url=extra.get("cache_url") or None,
            cache_max_age_positive=_age(extra, "cache_max_age_positive", DEFAULT_CACHE_MAX_AGE_POSITIVE),
            cache_max_age_negative=_age(extra, "cache_max_age_negative", DEFAULT_CACHE_MAX_AGE_NEGATIVE),
        )

    @property
    def store_url(self) -> str:
        """The callback store every component shares; no default (a default SQLite file would be
        another file on each host, and the sensor would wait until its timeout with no error)."""
        if not self.callback_store_url:
            raise ValueError(
                "the Kaleyra connection has no 'callback_store_url' extra: set it to a database that the "
                "API server (callback receiver), the workers and the triggerer all reach, e.g. "
                "postgresql+psycopg://user:password@db-host/kaleyra; sqlite:////path/to/file.db only "
                "when every Airflow component runs on one machine"
            )
        return self.callback_store_url
