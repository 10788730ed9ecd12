"""Throwaway databases for the store and cache tests: a SQLite file, or a schema on the test PostgreSQL."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from sqlalchemy import create_engine, text

PG_ENV = "KALEYRA_TEST_POSTGRES_URL"


def postgres_url() -> str:
    """The PostgreSQL server ``scripts/setup.sh`` starts; its absence fails the test."""
    url = os.environ.get(PG_ENV)
    if url:
        return url
    if os.environ.get("KALEYRA_ALLOW_NO_POSTGRES") == "1":
        pytest.skip(f"{PG_ENV} is unset and KALEYRA_ALLOW_NO_POSTGRES=1")
    pytest.fail(
        f"{PG_ENV} is unset: start PostgreSQL (scripts/setup.sh does) and export it, e.g. "
        "postgresql+psycopg://kaleyra@127.0.0.1:55432/kaleyra_test; "
        "or set KALEYRA_ALLOW_NO_POSTGRES=1 to skip the PostgreSQL cases locally"
    )


def throwaway_database(kind: str, tmp_path: Path) -> Iterator[str]:
    """Yield the URL of an empty database (``kind`` ``"sqlite"`` or ``"postgres"``), dropped afterwards."""
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'test.db'}"
        return
    base = postgres_url()
    schema = f"kt_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in base else "?"
    yield f"{base}{sep}options={quote(f'-csearch_path={schema}')}"
    with admin.begin() as conn:
        conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()
