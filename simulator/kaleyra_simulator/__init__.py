"""A local Kaleyra API for tests and benchmarks: ``with KaleyraSimulator(SimulatorConfig()) as sim: ...``;
expected answers from :func:`rcs_answer` and :func:`soip_answer`; child processes in :mod:`.harness`."""

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
