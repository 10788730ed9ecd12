"""A real Airflow 3 deployment for end-to-end tests: scheduler, API server, triggerer, DAG processor.

Each component is its own process (as in production), sharing a throwaway ``AIRFLOW_HOME`` (or,
with ``component_homes=True``, each with its own, as on separate hosts: then they share nothing
but the DAGs folder, the metadata database and what the test names as object storage) and a
metadata database: a fresh database on the PostgreSQL server that ``scripts/setup.sh`` starts
(``KALEYRA_TEST_POSTGRES_URL``), or SQLite when there is none. The LocalExecutor runs the tasks.
Everything is torn down by :meth:`AirflowDeployment.stop`, whatever happened before.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import requests

from kaleyra_simulator.harness import free_port

COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
FINISHED = {"success", "failed"}


def _airflow_bin() -> str:
    candidate = Path(sys.executable).with_name("airflow")
    return str(candidate) if candidate.exists() else "airflow"


class PostgresDatabase:
    """``CREATE DATABASE`` on the server of ``server_url`` (a SQLAlchemy URL), dropped by :meth:`drop`."""

    def __init__(self, server_url: str, prefix: str) -> None:
        from sqlalchemy.engine import make_url

        self._server = make_url(server_url)
        self.name = f"{prefix}_{uuid.uuid4().hex[:8]}"
        self.url = self._server.set(database=self.name).render_as_string(hide_password=False)

    def _admin(self) -> Any:
        import psycopg

        u = self._server
        return psycopg.connect(
            host=u.host or "127.0.0.1",
            port=u.port or 5432,
            user=u.username,
            password=u.password,
            dbname=u.database or "postgres",
            autocommit=True,
        )

    def create(self) -> PostgresDatabase:
        with self._admin() as conn:
            conn.execute(f'CREATE DATABASE "{self.name}"')
        return self

    def drop(self) -> None:
        with contextlib.suppress(Exception), self._admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


class AirflowDeployment:
    """Start with :meth:`start`, talk to it with :meth:`api`, always :meth:`stop` it."""

    def __init__(
        self,
        home: Path,
        dags_folder: Path,
        *,
        sql_alchemy_conn: str | None = None,
        env: dict[str, str] | None = None,
        parallelism: int = 4,
        component_homes: bool = False,
    ) -> None:
        self.home = home
        self.component_homes = component_homes
        self.dags_folder = dags_folder
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self._token: str | None = None
        self._session = requests.Session()
        self._session.trust_env = False  # never through a proxy: everything is on 127.0.0.1
        db = sql_alchemy_conn or f"sqlite:///{home / 'airflow.db'}"
        inherited = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("AIRFLOW__", "AIRFLOW_CONN_", "AIRFLOW_VAR_", "_AIRFLOW"))
        }
        self.env = {
            **inherited,
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": str(parallelism),
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.url}/execution/",
            "AIRFLOW__CORE__FERNET_KEY": "",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": db,
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(self.port),
            "AIRFLOW__API__BASE_URL": self.url,
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__API_AUTH__JWT_SECRET": uuid.uuid4().hex + uuid.uuid4().hex,
            # Only the runs the test triggers: no scheduled run of the daily DAG competes with them.
            "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "10",
            "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "2",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
            # Free ports for the log servers, so a developer's own Airflow (or another test) does not clash.
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
        }
        if db.startswith("postgresql"):
            self.env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC"] = db
        self.env.update(env or {})

    # -- lifecycle ---------------------------------------------------------------------------

    def airflow(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """Run one ``airflow`` CLI command to completion; raise with its output when it fails."""
        done = subprocess.run(
            [_airflow_bin(), *args],
            env=self.env,
            cwd=self.home,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if done.returncode:
            raise RuntimeError(
                f"airflow {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
            )
        return done

    def home_of(self, component: str) -> Path:
        """The ``AIRFLOW_HOME`` of one component: its own directory with ``component_homes``."""
        return self.home / component if self.component_homes else self.home

    def start(self, timeout: float = 180) -> AirflowDeployment:
        self.home.mkdir(parents=True, exist_ok=True)
        self.airflow("db", "migrate")
        for name in COMPONENTS:
            args = [name] + (
                ["--host", "127.0.0.1", "--port", str(self.port)] if name == "api-server" else []
            )
            home = self.home_of(name)
            home.mkdir(parents=True, exist_ok=True)
            log = open(self.home / f"{name}.out", "wb")  # noqa: SIM115 - closed with the process
            self.processes[name] = subprocess.Popen(
                [_airflow_bin(), *args],
                env={**self.env, "AIRFLOW_HOME": str(home)},
                cwd=home,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group: stop() ends its children too
            )
            log.close()
        self.wait_healthy(timeout)
        return self

    def stop(self) -> None:
        """SIGTERM every component's process group, then SIGKILL what is left."""
        for proc in self.processes.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for proc in self.processes.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        for proc in self.processes.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # stragglers: task runners, uvicorn workers
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        self._session.close()

    def check_alive(self) -> None:
        for name, proc in self.processes.items():
            if proc.poll() is not None:
                raise RuntimeError(
                    f"airflow {name} exited with {proc.returncode}:\n{self.component_log(name)}"
                )

    def component_log(self, name: str, lines: int = 60) -> str:
        path = self.home / f"{name}.out"
        if not path.exists():
            return "(no output)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    # -- REST API ------------------------------------------------------------------------------

    def wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                answer = self._session.get(f"{self.url}/api/v2/monitor/health", timeout=5)
                if answer.ok:
                    health = answer.json()
                    states = {k: (v or {}).get("status") for k, v in health.items() if isinstance(v, dict)}
                    if all(
                        states.get(k) == "healthy"
                        for k in ("metadatabase", "scheduler", "triggerer", "dag_processor")
                    ):
                        return
                    last = str(states)
            except requests.RequestException as exc:
                last = str(exc)
            time.sleep(1)
        raise TimeoutError(f"Airflow not healthy after {timeout}s ({last}):\n{self.summary_of_components()}")

    def token(self) -> str:
        if self._token is None:
            answer = self._session.get(f"{self.url}/auth/token", timeout=10)
            answer.raise_for_status()
            self._token = answer.json()["access_token"]
        return self._token

    def api(self, method: str, path: str, *, expect: tuple[int, ...] = (200, 201), **kwargs: Any) -> Any:
        answer = self._session.request(
            method,
            f"{self.url}/api/v2{path}",
            headers={"Authorization": f"Bearer {self.token()}"},
            timeout=30,
            **kwargs,
        )
        if answer.status_code not in expect:
            raise AssertionError(f"{method} {path}: HTTP {answer.status_code}: {answer.text[:2000]}")
        return answer.json() if answer.content else None

    def wait_for_dags(self, dag_ids: list[str], timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        missing = list(dag_ids)
        while time.monotonic() < deadline:
            self.check_alive()
            errors = self.api("GET", "/importErrors").get("import_errors", [])
            if errors:
                raise AssertionError(
                    "DAG import errors:\n" + "\n".join(f"{e['filename']}: {e['stack_trace']}" for e in errors)
                )
            missing = [
                d for d in dag_ids if self.api("GET", f"/dags/{d}", expect=(200, 404)).get("dag_id") != d
            ]
            if not missing:
                return
            time.sleep(2)
        raise TimeoutError(
            f"DAGs not parsed after {timeout}s: {missing}\n{self.component_log('dag-processor')}"
        )

    def trigger(self, dag_id: str, conf: dict[str, Any]) -> str:
        run = self.api("POST", f"/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": conf})
        return run["dag_run_id"]

    def run_state(self, dag_id: str, run_id: str) -> str:
        return self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}")["state"]

    def wait_for_runs(self, runs: list[tuple[str, str]], timeout: float) -> dict[tuple[str, str], str]:
        """Poll until every (dag_id, run_id) has finished; the states, or TimeoutError with diagnostics."""
        deadline = time.monotonic() + timeout
        states: dict[tuple[str, str], str] = {}
        while time.monotonic() < deadline:
            self.check_alive()
            states = {run: self.run_state(*run) for run in runs}
            if all(state in FINISHED for state in states.values()):
                return states
            time.sleep(3)
        raise TimeoutError(
            f"DAG runs not finished after {timeout}s: {states}\n"
            + "\n".join(self.diagnostics(*run) for run in runs)
        )

    # -- diagnostics ---------------------------------------------------------------------------

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        return self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances", params={"limit": 1000})[
            "task_instances"
        ]

    def task_logs(self, dag_id: str, run_id: str) -> Iterator[tuple[str, str]]:
        # task logs are written where the tasks run: by the scheduler's LocalExecutor
        base = self.home_of("scheduler") / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}"
        for path in sorted(base.rglob("*.log")) if base.exists() else []:
            yield str(path.relative_to(base)), path.read_text(errors="replace")

    def diagnostics(self, dag_id: str, run_id: str, log_lines: int = 40) -> str:
        """Task states, the tail of every unsuccessful task's log, and the components' output."""
        out = [f"=== {dag_id} / {run_id}"]
        bad: set[str] = set()
        try:
            for ti in self.task_instances(dag_id, run_id):
                out.append(
                    f"  {ti['task_id']}[{ti.get('map_index', -1)}]: {ti.get('state')} (try {ti.get('try_number')})"
                )
                if ti.get("state") != "success":
                    bad.add(ti["task_id"])
        except Exception as exc:  # diagnostics must never hide the real failure
            out.append(f"  (task instances unavailable: {exc})")
        for name, text in self.task_logs(dag_id, run_id):
            if any(f"task_id={task_id}" in name for task_id in bad):
                out.append(f"--- {name}\n" + "\n".join(text.splitlines()[-log_lines:]))
        out.append(self.summary_of_components())
        return "\n".join(out)

    def summary_of_components(self) -> str:
        return "\n".join(
            f"--- airflow {name} (last lines)\n{self.component_log(name, 25)}" for name in self.processes
        )
