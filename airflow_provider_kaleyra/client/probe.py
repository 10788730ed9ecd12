"""The connection test: one lookup, and what its failure says about the connection, in the user's terms."""

from __future__ import annotations

from airflow_provider_kaleyra.client import api
from airflow_provider_kaleyra.client.config import KaleyraConfig
from airflow_provider_kaleyra.client.exceptions import KaleyraApiError
from airflow_provider_kaleyra.client.transport import Transport
from airflow_provider_kaleyra.rcs.answers import answer_from_device


def probe(cfg: KaleyraConfig, url: str) -> tuple[bool, str]:
    """``(ok, message)`` of one unretried single lookup at ``url``: ok only for a readable answer."""
    transport = Transport(
        api_key=cfg.api_key,
        timeout=min(cfg.timeout, 15.0),
        max_retries=0,
        rate_limit=0,
        pool_size=1,
        secrets=(cfg.callback_secret,),
    )
    try:
        device = transport.call("GET", url, shape=api.data_object)
    except KaleyraApiError as exc:
        return False, connection_problem(exc, cfg.rcs_base_url)
    if answer_from_device(device).status == api.FAILED:
        return False, f"{cfg.rcs_base_url} answered a lookup without a readable rcsEnabled: is it Kaleyra?"
    return True, "Connection to Kaleyra works"


def connection_problem(exc: KaleyraApiError, base: str) -> str:
    """What a failed probe lookup says about the connection."""
    said = str(exc.detail).lower()
    if exc.status is None:
        return f"No answer from {base} ({exc.message}): check the pod or rcs_base_url, and the network"
    if exc.status == 403 or (exc.status == 401 and ("channel" in said or "rcs" in said)):
        return (
            f"The RCS channel is not enabled on this Kaleyra account (ask Kaleyra to enable it): {exc.detail}"
        )
    if exc.status == 401 and "sid" in said:
        return f"Kaleyra does not know the account SID (the connection's login): {exc.detail}"
    if exc.status == 401:
        return f"Kaleyra refused the API key (the connection's password): {exc.detail}"
    if exc.status == 404 or exc.status < 300:
        return (
            f"{base} is not Kaleyra's RCS API ({exc}): check the connection's pod or rcs_base_url "
            f"(e.g. {api.RCS_HOSTS[api.DEFAULT_POD]})"
        )
    if exc.status == 429 or exc.status >= 500:
        return f"Kaleyra is not answering properly right now ({exc}): try again later"
    return f"Kaleyra answered the probe lookup with an error ({exc})"
