"""Command line of the standalone receiver (``kaleyra-callback-receiver``) and of retention."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from airflow_provider_kaleyra.callbacks.store import get_store
from airflow_provider_kaleyra.client import config
from airflow_provider_kaleyra.utils.database import redact_url

# How ``--workers`` hands the checked settings (never the secret: only its variable's name) to each worker.
_WORKER_SETTINGS_ENV = "KALEYRA_RECEIVER_WORKER_SETTINGS"


def parse_age(text: str) -> timedelta:
    """``30d``, ``12h``, ``90m``, ``45s``; a bare number means days."""
    try:
        return config.parse_age(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until interrupted, or purge and exit."""
    parser = argparse.ArgumentParser(
        prog="kaleyra-callback-receiver",
        description="Receive Kaleyra SOIP callbacks at /kaleyra/soip/callback and store them.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8089, help="port (default: %(default)s)")
    parser.add_argument("--store-url", help="SQLAlchemy URL of the store (default: from the connection)")
    secret = parser.add_mutually_exclusive_group()
    secret.add_argument("--secret-env", metavar="NAME", help="environment variable holding the shared secret")
    secret.add_argument(
        "--conn-id",
        help="kaleyra connection to read callback_secret (and the store URL) from "
        "(default: env KALEYRA_CALLBACK_CONN_ID or kaleyra_default)",
    )
    parser.add_argument("--client-id", help="advanced auth: client ID Kaleyra sends to /kaleyra/soip/token")
    parser.add_argument(
        "--client-secret-env", metavar="NAME", help="advanced auth: variable holding the client secret"
    )
    parser.add_argument("--max-body-bytes", type=int, default=1024 * 1024, help="default: %(default)s")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes sharing the port, each with its own group commit; about one per CPU core "
        "(like the API server's [api] workers) (default: %(default)s)",
    )
    parser.add_argument(
        "--purge-older-than",
        type=parse_age,
        metavar="AGE",
        help="delete callbacks older than AGE (e.g. 30d) from the store, then exit",
    )
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    args, log_format = parser.parse_args(argv), "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=args.log_level.upper(), format=log_format)
    from airflow_provider_kaleyra.callbacks.receiver import ReceiverNotConfigured, read_connection

    if args.purge_older_than is not None:
        store = get_store(args.store_url or read_connection(args.conn_id).store_url)
        print(f"purged {store.purge(args.purge_older_than)} callbacks from {redact_url(store.url)}")
        return 0
    for name in (args.secret_env, args.client_secret_env):
        if name and not os.environ.get(name):
            print(f"error: environment variable {name} is empty or unset", file=sys.stderr)
            return 2
    names = ("store_url", "secret_env", "client_id", "client_secret_env", "conn_id", "max_body_bytes")
    options = {name: getattr(args, name) for name in names}
    app = worker_app(options)
    try:  # refuse to start rather than answer 503 to every callback; the store must open (tables made)
        checked = app.state.kaleyra_settings.get()
        checked.store.engine  # noqa: B018
    except ReceiverNotConfigured as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        reason = f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0]}"
        sys.stderr.write(f"error: callback store {redact_url(checked.store.url)} cannot be used: {reason}\n")
        return 2
    import uvicorn

    if args.workers > 1:  # workers import the app by name, and the options (no secret) from the environment
        checked.store.dispose()  # each worker opens its own
        os.environ[_WORKER_SETTINGS_ENV] = json.dumps(options)
        app = f"{__name__}:worker_app"
    # X-Forwarded-For is read by the receiver's allow-list, from the proxies the connection trusts only.
    common = {"host": args.host, "port": args.port, "log_level": args.log_level, "proxy_headers": False}
    uvicorn.run(app, factory=args.workers > 1, workers=args.workers, **common)
    return 0


def worker_app(options: dict[str, Any] | None = None) -> Any:
    """The app from the command line's options; a ``--workers`` process reads them from the environment."""
    from airflow_provider_kaleyra.callbacks.receiver import create_standalone_app

    given = options if options is not None else json.loads(os.environ[_WORKER_SETTINGS_ENV])
    secret_env, client_secret_env = given["secret_env"], given["client_secret_env"]
    return create_standalone_app(
        store=get_store(given["store_url"]) if given["store_url"] else None,
        secret=os.environ.get(secret_env) if secret_env else None,
        client_id=given["client_id"],
        client_secret=os.environ.get(client_secret_env) if client_secret_env else None,
        conn_id=given["conn_id"],
        max_body_bytes=given["max_body_bytes"],
    )
