"""A local Kaleyra API simulator (RCS lookups and SOIP capability checks) for tests and benchmarks:
``with KaleyraSimulator(SimulatorConfig(rate_limit=50)) as sim: sim.connection_json(default_region="US")``.
Expected answers come from the pure functions :func:`rcs_answer` and :func:`soip_answer`. Processes for
tests and benchmarks (the simulator, the receiver, an ASGI app in a thread): :mod:`.harness`."""

from __future__ import annotations

from kaleyra_simulator.answers import rcs_answer, soip_answer
from kaleyra_simulator.config import CallbackAuth, SimulatorConfig, simulator_connection
from kaleyra_simulator.server import KaleyraSimulator

__all__ = [
    "CallbackAuth",
    "KaleyraSimulator",
    "SimulatorConfig",
    "rcs_answer",
    "simulator_connection",
    "soip_answer",
]
