"""``kaleyra-simulator`` / ``python -m kaleyra_simulator``: prints its URL, serves until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from kaleyra_simulator.config import SimulatorConfig, add_arguments
from kaleyra_simulator.server import KaleyraSimulator


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser("kaleyra-simulator", description="A local Kaleyra RCS and SOIP API.")
    add_arguments(parser)
    parser.add_argument("--log-level", default="INFO")
    options = vars(parser.parse_args(argv))
    level = options.pop("log_level").upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        config = SimulatorConfig(**options)
    except ValueError as exc:
        parser.error(str(exc))
    stop = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop)  # before the server's threads start: they inherit it
    with KaleyraSimulator(config) as sim:
        print(sim.url, flush=True)
        logging.getLogger(__name__).info("Signal %s received, stopping", signal.sigwait(stop))
    return 0


if __name__ == "__main__":
    sys.exit(main())
