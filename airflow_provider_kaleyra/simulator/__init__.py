"""A local Kaleyra API simulator (RCS lookups and SOIP capability checks) for tests and benchmarks.

Usage::

    with KaleyraSimulator(SimulatorConfig(rate_limit=50)) as sim:
        requests.get(f"{sim.url}/v1/{sim.config.sid}/rcs/lookup/%2B14155550123", headers={"api-key": ...})

Expected answers come from the pure functions :func:`rcs_answer` and :func:`soip_answer`;
:func:`generate_audience_rows` yields a deterministic sample audience to look them up on.
"""

from __future__ import annotations

from airflow_provider_kaleyra.simulator.audience import generate_audience_rows
from airflow_provider_kaleyra.simulator.server import (
    CARRIER_STATUSES,
    CARRIERS,
    DEFAULT_API_KEY,
    DEFAULT_SID,
    E164_RE,
    FAULT_KINDS,
    CallbackAuth,
    KaleyraSimulator,
    SimulatorConfig,
    TokenBucket,
    rcs_answer,
    simulator_connection,
    soip_answer,
)

__all__ = [
    "CARRIERS",
    "CARRIER_STATUSES",
    "CallbackAuth",
    "DEFAULT_API_KEY",
    "DEFAULT_SID",
    "E164_RE",
    "FAULT_KINDS",
    "KaleyraSimulator",
    "SimulatorConfig",
    "TokenBucket",
    "generate_audience_rows",
    "rcs_answer",
    "simulator_connection",
    "soip_answer",
]
