"""Provider metadata read by Airflow through the ``apache_airflow_provider`` entry point."""

from __future__ import annotations

from typing import Any

from airflow_provider_kaleyra.client.api import DEFAULT_POD, RCS_HOSTS, SOIP_HOSTS
from airflow_provider_kaleyra.client.config import (
    CONN_TYPE,
    DEFAULT_CACHE_MAX_AGE_NEGATIVE,
    DEFAULT_CACHE_MAX_AGE_POSITIVE,
    DEFAULT_MAX_CONCURRENCY,
    DEFAULT_MAX_RETRIES,
    DEFAULT_RATE_LIMIT,
    DEFAULT_TIMEOUT,
    PODS,
)


def _field(label: str, description: str, kind: str = "string", secret: bool = False, **schema: Any) -> dict:
    """One extra of the form; ``secret`` fields are masked in the UI and the API."""
    schema = {"type": [kind, "null"], **({"format": "password"} if secret else {}), **schema}
    return {"label": label, "description": description, "schema": schema}


# Each pod with the hosts the code knows, and what must be set by hand.
_PODS = "Kaleyra pod; picks the default hosts. " + "; ".join(
    f"{pod}: RCS {RCS_HOSTS.get(pod, 'none published, set RCS base URL')}, SOIP {SOIP_HOSTS.get(pod, '-')}"
    for pod in PODS
)

# The connection form: every extra of ``config.KaleyraConfig``, labelled.
CONN_FIELDS: dict[str, Any] = {
    "pod": _field("Pod", _PODS, enum=[*PODS, None], default=DEFAULT_POD),
    "rcs_base_url": _field("RCS base URL", "Overrides the pod's RCS host (e.g. a simulator)"),
    "soip_base_url": _field("SOIP base URL", "Overrides the messaging host used for SOIP checks"),
    "default_region": _field("Default region", "ISO country for numbers without a country code (US, IN)"),
    "callback_profile_id": _field("Callback profile ID", "Default callback profile of SOIP checks"),
    "callback_secret": _field(
        "Callback secret",
        "Shared secret the callback receiver requires (Basic password or header)",
        secret=True,
    ),
    "callback_client_id": _field(
        "Callback client ID", "Advanced auth: the client ID the callback profile sends to /kaleyra/soip/token"
    ),
    "callback_client_secret": _field(
        "Callback client secret", "Advanced auth: the client secret of the callback profile", secret=True
    ),
    "callback_token_lifetime": _field(
        "Callback token lifetime",
        "How long an advanced-auth token is valid (e.g. 1h, 30m, or seconds); default 1h",
    ),
    "callback_allowed_ips": _field(
        "Callback allowed IPs", "Comma-separated CIDRs that may send callbacks; empty: any sender"
    ),
    "callback_trusted_proxies": _field(
        "Callback trusted proxies", "Comma-separated CIDRs of proxies whose X-Forwarded-For is believed"
    ),
    "callback_store_url": _field(
        "Callback store URL", "SQLAlchemy URL of the callback store all components reach (required for SOIP)"
    ),
    "callback_field_map": _field(
        "Callback field map",
        'JSON: the profile\'s placeholders, e.g. {"number": "phone", "status": "state", "request_id": "ref"}, '
        'or lists of keys: {"number_keys": ["msisdn"], "capability_keys": ["soip"]}',
    ),
    "cache_url": _field(
        "Capability cache URL",
        "SQLAlchemy URL of a database every worker reaches (PostgreSQL across hosts); "
        "lookups remember answers there. Empty: no cache",
    ),
    "cache_max_age_positive": _field(
        "Cache max age, RCS-capable",
        f"How long an rcs_enabled answer is served from the cache (e.g. 7d, 36h); "
        f"default {DEFAULT_CACHE_MAX_AGE_POSITIVE.days}d",
    ),
    "cache_max_age_negative": _field(
        "Cache max age, not capable",
        f"How long an rcs_disabled answer is served (offline devices read as not capable, "
        f"so shorter); default {DEFAULT_CACHE_MAX_AGE_NEGATIVE.days}d",
    ),
    "timeout": _field("Timeout (s)", "Per-request timeout", "number", default=DEFAULT_TIMEOUT),
    "max_retries": _field(
        "Max retries", "Retries on 429, 5xx and dropped connections", "integer", default=DEFAULT_MAX_RETRIES
    ),
    "rate_limit": _field(
        "Rate limit (req/s)", "Client-side pacing across all threads", "number", default=DEFAULT_RATE_LIMIT
    ),
    "max_concurrency": _field(
        "Max concurrency",
        "Upper bound on requests in flight; the client keeps rate limit x observed latency in flight",
        "integer",
        default=DEFAULT_MAX_CONCURRENCY,
    ),
}

# Airflow 3's UI shows placeholders for the standard fields only (login, password); the extras'
# hints are in their descriptions and defaults.
UI_FIELD_BEHAVIOUR: dict[str, Any] = {
    "hidden-fields": ["host", "port", "schema", "extra"],
    "relabeling": {"login": "Account SID", "password": "API key"},
    "placeholders": {"login": "HXAP16XXXXXXXXXX", "password": "Axxxxxxxxxxxxxxxxxxxxxxxxxxxxx3"},
}


def get_provider_info() -> dict[str, Any]:
    """What Airflow 3 reads at run time: names, the trigger module and the connection type with its
    form (the version comes from the package). The callback receiver plugin is registered by the
    ``airflow.plugins`` entry point only: listing it here too makes Airflow load it twice."""
    return {
        "package-name": "airflow-provider-kaleyra",
        "name": "Kaleyra",
        "description": "Kaleyra RCS and SMS-over-IP number capability checks.",
        "triggers": [{"integration-name": "Kaleyra", "python-modules": [f"{__package__}.triggers.kaleyra"]}],
        "connection-types": [
            {
                "connection-type": CONN_TYPE,
                "hook-class-name": f"{__package__}.hooks.kaleyra.KaleyraHook",
                "hook-name": "Kaleyra",
                "conn-fields": CONN_FIELDS,
                "ui-field-behaviour": UI_FIELD_BEHAVIOUR,
            }
        ],
    }
