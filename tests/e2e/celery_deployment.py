"""Airflow on CeleryExecutor for end-to-end tests: Redis as the broker, two Celery workers that share
no disk, and an S3-compatible object store (moto's standalone server) for everything between them.

Every process runs on 127.0.0.1 and is started by the test; :meth:`CeleryDeployment.stop` ends them.
Each worker has its own ``AIRFLOW_HOME`` and working directory (its task logs land there), as on
separate hosts; the DAG files are the code both are deployed with.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from airflow_deployment import AirflowDeployment, _airflow_bin

from kaleyra_simulator.harness import free_port

BUCKET = "kaleyra-e2e"
S3_CONN_ID = "s3_e2e"


def _wait_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = 30) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on 127.0.0.1:{port} within {timeout} s")


def _stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)


class Redis:
    """A throwaway ``redis-server`` (Debian's; ``scripts/setup.sh`` installs it) without persistence."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError(
                "redis-server is not installed: run scripts/setup.sh (it installs it with apt-get)"
            )
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            cwd=workdir,
            stdout=open(workdir / "redis.out", "wb"),  # noqa: SIM115 - the child owns it
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        _wait_port(self.port, self.proc, "redis-server")

    def stop(self) -> None:
        _stop(self.proc)


class S3Server:
    """moto's standalone S3 server on 127.0.0.1, with one bucket; the AWS connection points at it."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            cwd=workdir,
            stdout=open(workdir / "moto.out", "wb"),  # noqa: SIM115 - the child owns it
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"},
        )
        _wait_port(self.port, self.proc, "moto server")
        self.client().create_bucket(Bucket=BUCKET)

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )

    def connection(self) -> dict[str, Any]:
        """The Airflow AWS connection (JSON form) that ``ObjectStoragePath(..., conn_id=)`` uses."""
        return {
            "conn_type": "aws",
            "login": "testing",
            "password": "testing",
            "extra": {"endpoint_url": self.endpoint, "region_name": "us-east-1"},
        }

    def get(self, key: str) -> bytes:
        return self.client().get_object(Bucket=BUCKET, Key=key)["Body"].read()

    def keys(self, prefix: str) -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
        return [item["Key"] for page in pages for item in page.get("Contents", [])]

    def stop(self) -> None:
        _stop(self.proc)


class CeleryDeployment(AirflowDeployment):
    """:class:`AirflowDeployment` with the CeleryExecutor and ``workers`` Celery workers."""

    def __init__(
        self,
        home: Path,
        dags_folder: Path,
        *,
        broker_url: str,
        sql_alchemy_conn: str,
        workers: int = 2,
        **kw: Any,
    ) -> None:
        super().__init__(home, dags_folder, sql_alchemy_conn=sql_alchemy_conn, **kw)
        self.env.update(
            {
                "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
                "AIRFLOW__CELERY__BROKER_URL": broker_url,
                "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + sql_alchemy_conn,
                "AIRFLOW__CELERY__WORKER_CONCURRENCY": "2",
                "AIRFLOW__CELERY__SYNC_PARALLELISM": "1",
            }
        )
        self.worker_names = [f"worker{i + 1}" for i in range(workers)]

    def worker_home(self, name: str) -> Path:
        return self.home.parent / f"{self.home.name}-{name}"

    def start(self, timeout: float = 180) -> CeleryDeployment:
        super().start(timeout)
        for name in self.worker_names:
            home = self.worker_home(name)
            home.mkdir(parents=True, exist_ok=True)
            env = {
                **self.env,
                "AIRFLOW_HOME": str(home),
                "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            }
            log = open(home / "worker.out", "wb")  # noqa: SIM115 - closed with the process
            self.processes[name] = subprocess.Popen(
                [
                    _airflow_bin(),
                    "celery",
                    "worker",
                    "--celery-hostname",
                    f"{name}@127.0.0.1",
                    "--without-gossip",
                    "--without-mingle",
                ],
                env=env,
                cwd=home,  # its own working directory, as on its own host
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
            log.close()
        return self

    def component_log(self, name: str, lines: int = 60) -> str:
        if name in getattr(self, "worker_names", ()):
            path = self.worker_home(name) / "worker.out"
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""
        return super().component_log(name, lines)

    def restart_scheduler(self, **env: str) -> None:
        """Restart the scheduler alone with changed settings (e.g. another executor)."""
        _stop(self.processes.pop("scheduler"))
        self.env.update(env)
        log = open(self.home / "scheduler.out", "ab")  # noqa: SIM115 - closed with the process
        self.processes["scheduler"] = subprocess.Popen(
            [_airflow_bin(), "scheduler"],
            env=self.env,
            cwd=self.home,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        self.wait_healthy(120)

    def tasks_run_by(self, name: str, dag_id: str, run_id: str, task_id: str) -> list[int]:
        """Map indexes of ``task_id`` whose logs are in worker ``name``'s own ``AIRFLOW_HOME``."""
        logs = (
            self.worker_home(name) / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={task_id}"
        )
        if not logs.exists():
            return []
        return sorted(
            int(folder.name.split("=", 1)[1])
            for folder in logs.iterdir()
            if folder.name.startswith("map_index=")
        )


def wait_for_workers(deployment: CeleryDeployment, timeout: float = 120) -> None:
    """Both workers are up when Celery answers a ping from each."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        deployment.check_alive()
        outs = [deployment.component_log(name, 200) for name in deployment.worker_names]
        if all(" ready." in out for out in outs):
            return
        time.sleep(1)
    raise RuntimeError(
        "celery workers not ready:\n"
        + "\n".join(deployment.component_log(n) for n in deployment.worker_names)
    )
