"""A bulk task killed with SIGKILL midway and retried resumes from its checkpoint.

The bulk operator runs in a child process against a simulator with latency; once some checkpoint
parts exist the child gets ``kill -9`` (no cleanup, no ``finally``), then the task is run again,
as Airflow's retry would. The output must hold the rows and answers of an uninterrupted run (resumed
answers with their age), and the retry must not ask Kaleyra again for what the checkpoint holds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from _reliability import SECRETS

from airflow_provider_kaleyra.operators.kaleyra import KaleyraRcsBulkLookupOperator
from airflow_provider_kaleyra.rcs.outputs import read_results
from airflow_provider_kaleyra.utils.storage import as_path
from kaleyra_simulator import rcs_answer

ROWS = 12_000
CHECKPOINT_BATCHES = 2  # ~24 bulk calls of ~490 -> 12 parts
RUNNER = textwrap.dedent(
    """
    import json, sys
    from airflow_provider_kaleyra.operators.kaleyra import KaleyraRcsBulkLookupOperator

    op = KaleyraRcsBulkLookupOperator(
        task_id="bulk", audience=sys.argv[1], output=sys.argv[2], checkpoint_batches=int(sys.argv[3])
    )
    print("SUMMARY " + json.dumps(op.execute({})), flush=True)
    """
)


def write_audience(path: Path, rows: int) -> list[str | None]:
    """A CSV audience with duplicates and invalid rows; returns the expected E.164 per row."""
    expected: list[str | None] = []
    with path.open("w", encoding="utf-8") as handle:
        handle.write("name,phone\n")
        for i in range(rows):
            if i % 97 == 5:
                handle.write(f"bad-{i},not a number\n")
                expected.append(None)
            elif i % 89 == 3 and i > 10:
                handle.write(f"dup-{i},{expected[i - 7] or '+12125550100'}\n")
                expected.append(expected[i - 7] or "+12125550100")
            else:
                e164 = f"+1{(212, 415, 646)[i % 3]}{201 + (i // 3) // 10000}{(i // 3) % 10000:04d}"
                handle.write(f'n-{i},"{e164[:2]} ({e164[2:5]}) {e164[5:8]}-{e164[8:]}"\n')
                expected.append(e164)
    return expected


def parts(output: Path) -> list[Path]:
    return sorted(output.parent.glob(output.name + ".checkpoint/*/part-*.jsonl"))


def run_child(audience: Path, output: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", RUNNER, str(audience), str(output), str(CHECKPOINT_BATCHES)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def summary_of(stdout: bytes) -> dict:
    line = next(line for line in stdout.decode().splitlines() if line.startswith("SUMMARY "))
    return json.loads(line[len("SUMMARY ") :])


def test_sigkilled_bulk_task_resumes_from_its_checkpoint(secret_simulator, use_connection, tmp_path):
    sim = secret_simulator(latency=0.1)
    use_connection(sim.url, max_concurrency=2, max_retries=2)
    audience = tmp_path / "audience.csv"
    expected = write_audience(audience, ROWS)
    killed_dir, clean_dir = tmp_path / "killed", tmp_path / "clean"
    killed_dir.mkdir()
    clean_dir.mkdir()
    output = killed_dir / "results.csv"

    # 1. Run, and kill -9 once a few parts are on disk.
    started = time.monotonic()
    child = run_child(audience, output)
    deadline = time.monotonic() + 60
    while len(parts(output)) < 3:
        assert child.poll() is None, (
            f"the task ended before it could be killed:\n{child.stdout.read().decode()}"
        )
        assert time.monotonic() < deadline, "no checkpoint part appeared"
        time.sleep(0.02)
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=10)
    assert child.returncode == -signal.SIGKILL
    saved = len(parts(output))
    killed_requests = sim.stats()["requests"]["rcs_bulk"]
    assert not output.exists(), "a killed task left a (partial) output behind"
    assert saved < 12

    # 2. The retry resumes.
    sim.reset_stats()
    child = run_child(audience, output)
    stdout, _ = child.communicate(timeout=120)
    assert child.returncode == 0, stdout.decode()[-3000:]
    resumed = summary_of(stdout)
    resumed_requests = sim.stats()["requests"]["rcs_bulk"]
    batches, chunks = resumed["batches"], resumed["chunks"]
    assert chunks == -(-batches // CHECKPOINT_BATCHES) and resumed["chunks_resumed"] >= saved, resumed
    # Every chunk but the last holds CHECKPOINT_BATCHES calls; the last one is never resumed here.
    assert resumed_requests == batches - resumed["chunks_resumed"] * CHECKPOINT_BATCHES, (
        resumed,
        resumed_requests,
    )
    assert resumed["requests"] == resumed_requests
    # What the killed run paid for is not paid again (beyond calls in flight at the kill).
    assert killed_requests + resumed_requests <= batches + 2 * 2 + CHECKPOINT_BATCHES, (
        killed_requests,
        resumed_requests,
    )
    assert sorted(p.name for p in killed_dir.iterdir()) == ["results.csv"], (
        "checkpoint or temp files left behind"
    )

    # 3. An uninterrupted run, for comparison.
    sim.reset_stats()
    clean_output = clean_dir / "results.csv"
    clean = KaleyraRcsBulkLookupOperator(
        task_id="bulk",
        audience=str(audience),
        output=str(clean_output),
        checkpoint_batches=CHECKPOINT_BATCHES,
    ).execute({})
    assert sim.stats()["requests"]["rcs_bulk"] == batches and clean["chunks_resumed"] == 0
    # The same rows and answers; a resumed answer is as old as its part (seconds here), never older.
    resumed_rows = list(read_results(as_path(str(output))))
    assert [{**r, "age_seconds": r["age_seconds"] and 0} for r in resumed_rows] == list(
        read_results(as_path(str(clean_output)))
    )
    assert all(0 <= (r["age_seconds"] or 0) <= time.monotonic() - started + 1 for r in resumed_rows)
    assert {k: v for k, v in resumed.items() if k not in ("output", "requests", "chunks_resumed")} == {
        k: v for k, v in clean.items() if k not in ("output", "requests", "chunks_resumed")
    }
    print(
        f"\nkilled after {saved} of {chunks} parts ({killed_requests} calls); the retry made {resumed_requests} calls "
        f"and resumed {resumed['chunks_resumed']} parts; the same rows and answers ({output.stat().st_size} bytes)"
    )

    # And the output is right: one row per input line, in order, each with the true answer.
    rows = list(read_results(as_path(str(output))))
    assert [r["row"] for r in rows] == list(range(ROWS))
    for record, e164 in zip(rows, expected):
        if e164 is None:
            assert record["status"] == "invalid" and record["error"]
        else:
            truth = rcs_answer(e164)
            assert record["e164"] == e164
            assert record["status"] == ("rcs_enabled" if truth["rcsEnabled"] else "rcs_disabled"), record
    assert not any(secret in stdout.decode() for secret in SECRETS)
