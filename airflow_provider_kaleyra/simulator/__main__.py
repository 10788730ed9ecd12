"""``kaleyra-simulator`` / ``python -m airflow_provider_kaleyra.simulator``: serve until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from typing import Any

from airflow_provider_kaleyra.simulator.server import (
    DEFAULT_API_KEY,
    DEFAULT_SID,
    CallbackAuth,
    KaleyraSimulator,
    SimulatorConfig,
)

_PROBABILITY_FLAGS = ("error_5xx", "reset", "slow", "truncated", "bulk_missing", "bulk_extra", "rate_429")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kaleyra-simulator",
        description="Local Kaleyra RCS/SOIP capability-check API simulator (one base URL serves both).",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port (default)")
    p.add_argument("--sid", default=DEFAULT_SID)
    p.add_argument("--api-key", default=DEFAULT_API_KEY)
    p.add_argument("--latency", type=float, default=0.0, help="seconds added to every API request")
    p.add_argument(
        "--rate-limit", type=float, default=None, help="requests/s over all API endpoints (429 above)"
    )
    p.add_argument("--no-retry-after", action="store_true", help="omit Retry-After on 429 answers")
    fault = p.add_argument_group("fault injection (probabilities per request, 0..1)")
    for name in _PROBABILITY_FLAGS:
        fault.add_argument("--" + name.replace("_", "-"), type=float, default=0.0)
    fault.add_argument("--slow-seconds", type=float, default=2.0, help="delay of a 'slow' fault")
    fault.add_argument("--seed", type=int, default=None, help="seed of the fault RNG")
    p.add_argument("--rcs-disabled", action="store_true", help="answer 401 to every RCS lookup")
    p.add_argument("--bulk-invalid", choices=("reject", "drop"), default="reject")
    cb = p.add_argument_group("SOIP callbacks")
    cb.add_argument("--callback-url", default=None)
    cb.add_argument("--callback-delay", type=float, default=0.0)
    cb.add_argument("--callback-auth", default=None, help="basic:USER:PASSWORD or header:NAME:VALUE")
    cb.add_argument("--callback-duplicates", action="store_true", help="deliver every callback twice")
    cb.add_argument("--callback-form", action="store_true", help="form-encoded callbacks instead of JSON")
    cb.add_argument("--callback-retries", type=int, default=3)
    p.add_argument("--log-level", default="INFO")
    return p


def config_from_args(args: argparse.Namespace) -> SimulatorConfig:
    """Map parsed CLI flags onto a :class:`SimulatorConfig` (kept separate so it can be tested)."""
    values: dict[str, Any] = {name: getattr(args, name) for name in _PROBABILITY_FLAGS}
    return SimulatorConfig(
        host=args.host,
        port=args.port,
        sid=args.sid,
        api_key=args.api_key,
        latency=args.latency,
        rate_limit=args.rate_limit,
        retry_after=not args.no_retry_after,
        slow_seconds=args.slow_seconds,
        seed=args.seed,
        rcs_disabled=args.rcs_disabled,
        bulk_invalid=args.bulk_invalid,
        callback_url=args.callback_url,
        callback_delay=args.callback_delay,
        callback_auth=CallbackAuth.parse(args.callback_auth) if args.callback_auth else None,
        callback_duplicates=args.callback_duplicates,
        callback_form=args.callback_form,
        callback_retries=args.callback_retries,
        **values,
    )


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
