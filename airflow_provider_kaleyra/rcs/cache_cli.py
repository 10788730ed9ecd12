"""``kaleyra-cache``: purge the capability cache by age (``kaleyra-cache purge --older-than 30d``)."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from datetime import timedelta

from airflow_provider_kaleyra.callbacks.cli import parse_age as parse_age_argument
from airflow_provider_kaleyra.client.config import DEFAULT_CONN_ID, parse_age
from airflow_provider_kaleyra.rcs.cache import get_cache
from airflow_provider_kaleyra.utils.database import redact_url


def _cache_url(conn_id: str | None) -> str:
    from airflow_provider_kaleyra.hooks.kaleyra import KaleyraHook  # (Airflow: not for --url)

    conn_id = conn_id or DEFAULT_CONN_ID
    url = KaleyraHook(conn_id).config.cache_url
    if not url:
        raise ValueError(f"Kaleyra connection {conn_id!r} has no cache_url")
    return url


def purge_cache(older_than: str | timedelta = "30d", kaleyra_conn_id: str | None = None) -> int:
    """Delete cached answers older than ``older_than`` from the connection's ``cache_url``; for a
    ``@task``. A bad age is a ``ValueError`` naming it (a task error, not the CLI's usage error)."""
    age = parse_age(older_than, "older_than")
    return get_cache(_cache_url(kaleyra_conn_id)).purge(age)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kaleyra-cache", description="Manage the Kaleyra capability cache.")
    commands = parser.add_subparsers(dest="command", required=True)
    purge = commands.add_parser("purge", help="delete answers obtained more than AGE ago")
    age = "e.g. 30d, 12h (bare number: days)"
    purge.add_argument("--older-than", type=parse_age_argument, required=True, metavar="AGE", help=age)
    where = purge.add_mutually_exclusive_group()
    where.add_argument("--url", help="SQLAlchemy URL of the cache (default: the connection's cache_url)")
    where.add_argument("--conn-id", help=f"connection whose cache_url to use (default: {DEFAULT_CONN_ID})")
    args = parser.parse_args(argv)
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        url = args.url or _cache_url(args.conn_id)
    except ValueError as exc:
        raise SystemExit(f"kaleyra-cache: {exc} (or pass --url)") from None
    deleted = get_cache(url).purge(args.older_than)
    print(f"purged {deleted} cached answers from {redact_url(url)}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
