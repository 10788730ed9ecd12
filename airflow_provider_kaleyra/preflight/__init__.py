"""The campaign preflight: which channel (RCS, SMS over IP, SMS, none) each audience row should use.
One module per step (prepare, channels, report); :func:`kaleyra_preflight` runs them in a DAG."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow_provider_kaleyra.preflight.group import kaleyra_preflight

__all__ = ["kaleyra_preflight"]


def __getattr__(name: str) -> Any:
    if name == "kaleyra_preflight":  # imported lazily: the building blocks do not need the operators
        from airflow_provider_kaleyra.preflight.group import kaleyra_preflight

        return kaleyra_preflight
    raise AttributeError(name)
