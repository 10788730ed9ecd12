"""A throwaway Airflow deployment for ``dag.test()`` runs (load with ``pytest_plugins``).

``dag.test()`` needs a migrated metadata database, and Airflow reads ``AIRFLOW_HOME`` once
per process, so DAGs run in a subprocess against a SQLite database migrated once per
session. The subprocess inherits the environment (e.g. ``AIRFLOW_CONN_KALEYRA_DEFAULT``
set by the ``kaleyra_conn`` fixture).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest


def _airflow_env(home: Path, dags_folder: Path | None = None) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("AIRFLOW__")}
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder or home / "dags"),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
            "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
        }
    )
    return env


@pytest.fixture(scope="session")
def airflow_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ``AIRFLOW_HOME`` with a migrated SQLite metadata database (about 5 s, once per session)."""
    home = tmp_path_factory.mktemp("airflow_home")
    (home / "dags").mkdir()
    subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"],
        env=_airflow_env(home),
        check=True,
        capture_output=True,
        timeout=180,
    )
    return home


@pytest.fixture
def run_dag_file(airflow_home: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """``run_dag_file(path)`` runs a DAG file (ending in ``dag.test()``) with the migrated database.

    ``dag.test()`` runs only DAGs it can serialize from the DAGs folder, so the file's own
    directory is the DAGs folder: keep one DAG file per directory.
    The current environment is passed on, so read ``os.environ`` after fixtures such as
    ``kaleyra_conn`` have set connections. Fails the test with the output when the file fails.
    """

    def run(path: Path, *, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, str(path)],
            env=_airflow_env(airflow_home, path.parent),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if result.returncode:
            pytest.fail(
                f"{path.name} failed ({result.returncode}):\n{result.stdout[-5000:]}\n{result.stderr[-5000:]}"
            )
        return result

    return run
