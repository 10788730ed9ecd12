"""Every knob of the simulator, once: :class:`SimulatorConfig`; the fault kinds, the CLI flags, the checks of
a value and the Airflow connection that points at a simulator derive from it."""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, field, fields
from typing import Any

DEFAULT_SID = "AC-TEST-SID"
DEFAULT_API_KEY = "test-api-key-0123456789"


@dataclass(frozen=True)
class CallbackAuth:
    """How SOIP callbacks authenticate, as a Kaleyra callback profile allows (advanced: ``Bearer`` token)."""

    kind: str  # "basic", "header" or "advanced"
    name: str  # user name, header name, or client ID
    value: str = field(repr=False)  # password, header value, or client secret
    token_request: str = "json"  # advanced: credentials as a JSON object, a form, or Basic auth

    def __post_init__(self) -> None:
        if self.kind not in ("basic", "header", "advanced"):
            raise ValueError(f"callback auth kind must be 'basic', 'header' or 'advanced', got {self.kind!r}")
        if self.token_request not in ("json", "form", "basic"):
            raise ValueError(f"token_request must be json, form or basic, got {self.token_request!r}")

    @classmethod
    def parse(cls, spec: str) -> CallbackAuth:
        """Parse ``basic:USER:PASSWORD``, ``header:NAME:VALUE`` or ``advanced[-form|-basic]:ID:SECRET``."""
        kind, name, value = spec.split(":", 2) if spec.count(":") >= 2 else ("", "", "")
        if not name:
            raise ValueError("callback auth must be KIND:NAME:SECRET (basic, header, advanced[-form|-basic])")
        kind, _, style = kind.lower().partition("-")
        return cls(kind, name, value, style or "json")


def _knob(default: Any, help: str, **metadata: Any) -> Any:
    return field(default=default, metadata={"help": help, **metadata})


@dataclass(frozen=True)
class SimulatorConfig:
    """Every knob of the simulator. Probabilities are per request, in [0, 1]; no number is negative."""

    port: int = _knob(0, "port on 127.0.0.1; 0 picks a free one (default)")
    sid: str = _knob(DEFAULT_SID, "account SID expected in the paths")
    api_key: str = field(default=DEFAULT_API_KEY, repr=False, metadata={"help": "expected api-key header"})
    latency: float = _knob(0.0, "seconds added to every API request")
    rate_limit: float | None = _knob(None, "requests/s over all API endpoints (429 above); 0 = unlimited")
    retry_after: bool = _knob(True, "send Retry-After with 429 answers")
    # fault injection, probabilities: the one list of fault kinds (FAULT_KINDS, in the stats' order)
    error_5xx: float = _knob(0.0, "answer 500, 502, 503 or 504", fault=True)
    reset: float = _knob(0.0, "drop the connection (RST) without answering", fault=True)
    slow: float = _knob(0.0, "wait slow_seconds before answering", fault=True)
    truncated: float = _knob(0.0, "send only the first half of a 200 body", fault=True)
    bulk_missing: float = _knob(0.0, "leave ~5% of the asked numbers out of a bulk answer", fault=True)
    bulk_extra: float = _knob(0.0, "add 3 numbers nobody asked for to a bulk answer", fault=True)
    rate_429: float = _knob(0.0, "answer 429 as if throttled", fault=True)
    slow_seconds: float = _knob(2.0, "delay of a 'slow' fault")
    seed: int | None = _knob(None, "seed of the fault RNG")
    # behaviour
    rcs_disabled: bool = _knob(False, "answer 401 to every RCS lookup")
    bulk_invalid: str = _knob("reject", "non-E.164 bulk entries: a 400, or drop", choices=("reject", "drop"))
    # SOIP callbacks
    callback_url: str | None = _knob(None, "where SOIP callbacks are POSTed (none: no callbacks)")
    callback_delay: float = _knob(0.0, "seconds between a SOIP check and its callbacks")
    callback_spread: float = _knob(0.0, "seconds over which a check's callbacks are spread, after the delay")
    callback_auth: CallbackAuth | None = _knob(
        None, "basic:USER:PASSWORD, header:NAME:VALUE or advanced[-form|-basic]:CLIENT_ID:CLIENT_SECRET"
    )
    callback_token_url: str | None = _knob(None, "advanced auth's token URL (default: callback URL's /token)")
    callback_duplicates: bool = _knob(False, "deliver every callback twice")
    callback_body: str = _knob("json", "body type", choices=("json", "xml", "form", "text"))
    callback_method: str = _knob("POST", "GET: fields in the query string", choices=("POST", "PUT", "GET"))
    callback_retries: int = _knob(3, "delivery attempts after the first")

    def __post_init__(self) -> None:
        if isinstance(self.callback_auth, str):  # as /_sim/config and the CLI give it
            object.__setattr__(self, "callback_auth", CallbackAuth.parse(self.callback_auth))
        object.__setattr__(self, "callback_method", self.callback_method.upper())
        for f in fields(self):
            value, choices = getattr(self, f.name), f.metadata.get("choices")
            if choices and value not in choices:
                raise ValueError(f"{f.name} must be one of {choices}, got {value!r}")
            if f.type in ("int", "float", "float | None") and value is not None and value < 0:
                raise ValueError(f"{f.name} must not be negative, got {value!r}")
            if f.metadata.get("fault") and value > 1:
                raise ValueError(f"{f.name} is a probability and must be within [0, 1], got {value!r}")

    def public(self) -> dict[str, Any]:
        """The config as JSON-friendly data, secrets masked (for ``GET /_sim/config``)."""
        auth = self.callback_auth and {"kind": self.callback_auth.kind, "name": self.callback_auth.name}
        return {**asdict(self), "api_key": "***", "callback_auth": auth}


FAULT_KINDS = tuple(f.name for f in fields(SimulatorConfig) if f.metadata.get("fault"))


def simulator_connection(
    url: str, *, sid: str = DEFAULT_SID, api_key: str = DEFAULT_API_KEY, **extra: Any
) -> dict[str, Any]:
    """An Airflow ``kaleyra`` connection (JSON form) whose RCS and SOIP base URLs are ``url``, with ``extra``
    extras (``default_region``, ...): the one place tests, benchmarks and examples build it."""
    extra = {"rcs_base_url": url, "soip_base_url": url, **extra}
    return {"conn_type": "kaleyra", "login": sid, "password": api_key, "extra": extra}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per :class:`SimulatorConfig` field (``--error-5xx``; booleans ``--rcs-disabled`` and
    ``--no-rcs-disabled``): ``SimulatorConfig(**vars(args))`` reads them back."""
    faults = parser.add_argument_group("fault injection (probabilities per request, 0..1)")
    for f in fields(SimulatorConfig):
        group = faults if f.metadata.get("fault") or f.name in ("slow_seconds", "seed") else parser
        flag, help = "--" + f.name.replace("_", "-"), f.metadata["help"].replace("%", "%%")
        if f.type == "bool":
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=help)
        else:
            kind = {"int": int, "float": float}.get(f.type.split(" | ")[0], str)  # anything else is text
            choices = f.metadata.get("choices")
            group.add_argument(flag, dest=f.name, type=kind, default=f.default, choices=choices, help=help)
