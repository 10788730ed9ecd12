"""Every knob of the simulator, once: :class:`SimulatorConfig`. The fault kinds, the CLI flags and
the Airflow connection that points at a simulator are all derived from it.
"""

from __future__ import annotations

import argparse
import dataclasses
from base64 import b64encode
from dataclasses import dataclass, field
from typing import Any

DEFAULT_SID = "AC-TEST-SID"
DEFAULT_API_KEY = "test-api-key-0123456789"


CALLBACK_BODIES = ("json", "xml", "form", "text")
CALLBACK_METHODS = ("POST", "PUT", "GET")
TOKEN_REQUESTS = ("json", "form", "basic")  # how advanced auth sends the client ID and secret


@dataclass(frozen=True)
class CallbackAuth:
    """How SOIP callbacks authenticate, as a Kaleyra callback profile allows: HTTP Basic, one extra
    header, or advanced (a token fetched with a client ID and secret, sent as ``Bearer``)."""

    kind: str  # "basic", "header" or "advanced"
    name: str  # user name, header name, or client ID
    value: str = field(repr=False)  # password, header value, or client secret
    token_request: str = "json"  # advanced: credentials as a JSON object, a form, or Basic auth

    def __post_init__(self) -> None:
        if self.kind not in ("basic", "header", "advanced"):
            raise ValueError(f"callback auth kind must be 'basic', 'header' or 'advanced', got {self.kind!r}")
        if self.token_request not in TOKEN_REQUESTS:
            raise ValueError(f"token_request must be one of {TOKEN_REQUESTS}, got {self.token_request!r}")

    @classmethod
    def basic(cls, user: str, password: str) -> CallbackAuth:
        return cls("basic", user, password)

    @classmethod
    def header(cls, name: str, value: str) -> CallbackAuth:
        return cls("header", name, value)

    @classmethod
    def advanced(cls, client_id: str, client_secret: str, token_request: str = "json") -> CallbackAuth:
        return cls("advanced", client_id, client_secret, token_request)

    @classmethod
    def parse(cls, spec: str) -> CallbackAuth:
        """Parse ``basic:USER:PASSWORD``, ``header:NAME:VALUE`` or ``advanced[-form|-basic]:ID:SECRET``."""
        kind, sep, rest = spec.partition(":")
        name, sep2, value = rest.partition(":")
        if not sep or not sep2 or not name:
            raise ValueError(
                "callback auth must look like 'basic:USER:PASSWORD', 'header:NAME:VALUE' or 'advanced:ID:SECRET'"
            )
        kind, _, style = kind.lower().partition("-")
        return cls(kind, name, value, style or "json")

    def headers(self) -> dict[str, str]:
        """Static headers (advanced auth adds its token at delivery)."""
        if self.kind == "advanced":
            return {}
        if self.kind == "basic":
            token = b64encode(f"{self.name}:{self.value}".encode()).decode()
            return {"Authorization": f"Basic {token}"}
        return {self.name: self.value}


def _knob(default: Any, help: str, **metadata: Any) -> Any:
    return field(default=default, metadata={"help": help, **metadata})


def _fault(effect: str) -> Any:
    """A fault kind: its probability per request, in [0, 1]. The one list of fault kinds is these fields."""
    return _knob(0.0, effect, fault=True)


@dataclass(frozen=True)
class SimulatorConfig:
    """Every knob of the simulator. Probabilities are per request, in [0, 1]."""

    host: str = _knob("127.0.0.1", "address to bind")
    port: int = _knob(0, "0 picks a free port (default)")
    sid: str = _knob(DEFAULT_SID, "account SID expected in the paths")
    api_key: str = field(default=DEFAULT_API_KEY, repr=False, metadata={"help": "expected api-key header"})
    latency: float = _knob(0.0, "seconds added to every API request")
    rate_limit: float | None = _knob(None, "requests/s over all API endpoints (429 above); 0 = unlimited")
    retry_after: bool = _knob(True, "send Retry-After with 429 answers")
    # fault injection: one field per kind, in the order the stats list them
    error_5xx: float = _fault("answer 500, 502, 503 or 504")
    reset: float = _fault("drop the connection (RST) without answering")
    slow: float = _fault("wait slow_seconds before answering")
    truncated: float = _fault("send only the first half of a 200 body")
    bulk_missing: float = _fault("leave ~5% of the asked numbers out of a bulk answer")
    bulk_extra: float = _fault("add 3 numbers nobody asked for to a bulk answer")
    rate_429: float = _fault("answer 429 as if throttled")
    slow_seconds: float = _knob(2.0, "delay of a 'slow' fault")
    seed: int | None = _knob(None, "seed of the fault RNG")
    # behaviour
    rcs_disabled: bool = _knob(False, "answer 401 to every RCS lookup")
    bulk_invalid: str = _knob(
        "reject", "bulk entries not E.164-shaped: 'reject' answers 400 naming them, 'drop' omits them"
    )
    # SOIP callbacks
    callback_url: str | None = _knob(None, "where SOIP callbacks are POSTed (none: no callbacks)")
    callback_delay: float = _knob(0.0, "seconds between a SOIP check and its callbacks")
    callback_auth: CallbackAuth | None = _knob(
        None, "basic:USER:PASSWORD, header:NAME:VALUE or advanced[-form|-basic]:CLIENT_ID:CLIENT_SECRET"
    )
    callback_token_url: str | None = _knob(None, "advanced auth's token URL (default: callback URL's /token)")
    callback_duplicates: bool = _knob(False, "deliver every callback twice")
    callback_form: bool = _knob(False, "form-encoded callbacks instead of JSON (as --callback-body form)")
    callback_body: str = _knob("json", "body type: json, xml, form or text")
    callback_method: str = _knob("POST", "POST, PUT, or GET (the fields in the query string)")
    callback_retries: int = _knob(3, "delivery attempts after the first")
    callback_timeout: float = _knob(5.0, "seconds to wait for the receiver")

    def __post_init__(self) -> None:
        if isinstance(self.callback_auth, str):  # as /_sim/config and the CLI give it
            object.__setattr__(self, "callback_auth", CallbackAuth.parse(self.callback_auth))
        for name in FAULT_KINDS:
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} is a probability and must be within [0, 1], got {value!r}")
        for name in ("latency", "slow_seconds", "callback_delay", "callback_timeout"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.rate_limit is not None and self.rate_limit < 0:
            raise ValueError("rate_limit must not be negative")
        if self.callback_retries < 0:
            raise ValueError("callback_retries must not be negative")
        if self.bulk_invalid not in ("reject", "drop"):
            raise ValueError("bulk_invalid must be 'reject' or 'drop'")
        if self.callback_form:
            object.__setattr__(self, "callback_body", "form")
        object.__setattr__(self, "callback_method", self.callback_method.upper())
        if self.callback_body not in CALLBACK_BODIES or self.callback_method not in CALLBACK_METHODS:
            raise ValueError(
                f"callback_body must be one of {CALLBACK_BODIES}, callback_method one of {CALLBACK_METHODS}"
            )

    def public(self) -> dict[str, Any]:
        """The config as JSON-friendly data, secrets masked (for ``GET /_sim/config``)."""
        data = dataclasses.asdict(self)
        data["api_key"] = "***"
        if self.callback_auth is not None:
            data["callback_auth"] = {"kind": self.callback_auth.kind, "name": self.callback_auth.name}
        return data


FAULT_KINDS: tuple[str, ...] = tuple(
    f.name for f in dataclasses.fields(SimulatorConfig) if f.metadata.get("fault")
)


def simulator_connection(
    url: str, *, sid: str = DEFAULT_SID, api_key: str = DEFAULT_API_KEY, **extra: Any
) -> dict[str, Any]:
    """An Airflow ``kaleyra`` connection (JSON form) whose RCS and SOIP base URLs are ``url``.

    The one place tests, benchmarks and examples build it; ``extra`` adds or overrides
    connection extras (``default_region``, ``rate_limit``, ...). ``json.dumps`` it into
    ``AIRFLOW_CONN_<ID>``. For a running simulator, :meth:`KaleyraSimulator.connection`.
    """
    return {
        "conn_type": "kaleyra",
        "login": sid,
        "password": api_key,
        "extra": {"rcs_base_url": url, "soip_base_url": url, **extra},
    }


# --------------------------------------------------------------------------- CLI flags

_TYPES: dict[str, Any] = {"int": int, "float": float}  # anything else is read as text
_CHOICES = {
    "bulk_invalid": ("reject", "drop"),
    "callback_body": CALLBACK_BODIES,
    "callback_method": CALLBACK_METHODS,
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per :class:`SimulatorConfig` field (``--error-5xx``; booleans ``--rcs-disabled``
    or, when on by default, ``--no-retry-after``), so a new knob is a flag with no more code.
    """
    groups = {
        "fault": parser.add_argument_group("fault injection (probabilities per request, 0..1)"),
        "callback": parser.add_argument_group("SOIP callbacks"),
    }
    for f in dataclasses.fields(SimulatorConfig):
        group = groups["fault"] if f.metadata.get("fault") or f.name in ("slow_seconds", "seed") else parser
        group = groups["callback"] if f.name.startswith("callback_") else group
        flag = "--" + f.name.replace("_", "-")
        help = f.metadata["help"].replace("%", "%%")  # argparse formats help with %
        if f.type == "bool":
            if f.default:
                group.add_argument(
                    "--no-" + flag[2:], dest=f.name, action="store_false", help=f"do not {help}"
                )
            else:
                group.add_argument(flag, dest=f.name, action="store_true", help=help)
            continue
        kind = _TYPES.get(f.type.split(" | ")[0], str)
        group.add_argument(
            flag, dest=f.name, type=kind, default=f.default, choices=_CHOICES.get(f.name), help=help
        )


def config_from_args(args: argparse.Namespace) -> SimulatorConfig:
    """The :class:`SimulatorConfig` that flags added by :func:`add_arguments` describe."""
    return SimulatorConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(SimulatorConfig)})
