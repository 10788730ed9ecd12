"""``kaleyra-simulator`` / ``python -m kaleyra_simulator``: serve until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from typing import Any

from kaleyra_simulator.config import add_arguments, config_from_args
from kaleyra_simulator.server import KaleyraSimulator


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kaleyra-simulator",
        description="Local Kaleyra RCS/SOIP capability-check API simulator (one base URL serves both).",
    )
    add_arguments(p)
    p.add_argument("--log-level", default="INFO")
    return p


def main(argv: list[str] | None = None) -> int:
    """Start the simulator, print its URL on stdout, and serve until SIGINT or SIGTERM."""
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        config = config_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    stop = threading.Event()

    def _on_signal(signum: int, _frame: Any) -> None:
        logging.getLogger(__name__).info("Signal %s received, stopping", signum)
        stop.set()

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    with KaleyraSimulator(config) as sim:
        print(sim.url, flush=True)
        while not stop.wait(0.5):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
