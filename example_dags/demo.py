"""The demo behind ``scripts/demo.sh``: the campaign preflight DAG, end to end, on the Kaleyra simulator.

Starts the simulator on 127.0.0.1 in this process, points the ``kaleyra_default`` connection at
it, creates the ``kaleyra_api`` pool, runs ``kaleyra_campaign_preflight`` once with ``dag.test()``
on a generated audience, checks the outputs against the simulator's deterministic answers, and
prints where the report is. ``AIRFLOW_HOME`` must hold a migrated metadata database (demo.sh does it).

    python example_dags/demo.py --size 50000 --shards 4
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

DAGS_FOLDER = Path(__file__).resolve().parent
DAG_ID = "kaleyra_campaign_preflight"
POOL = "kaleyra_api"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=50_000, help="rows of the generated audience (default 50,000)")
    p.add_argument("--shards", type=int, default=4, help="mapped lookup tasks (default 4)")
    p.add_argument("--seed", type=int, default=42, help="seed of the generated audience")
    p.add_argument("--output", default=None, help="output folder (default: <AIRFLOW_HOME>/../output)")
    p.add_argument("--pool-slots", type=int, default=2, help="slots of the kaleyra_api pool")
    p.add_argument("--latency", type=float, default=0.02, help="simulated API latency per request, seconds")
    p.add_argument("--verbose", action="store_true", help="show Airflow's task logs")
    return p


@contextlib.contextmanager
def _quiet(log_file: Path | None) -> Iterator[None]:
    """Send everything Airflow prints (both file descriptors, so every logger) to ``log_file``."""
    if log_file is None:
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with log_file.open("ab") as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def _count_rows(path: Path) -> int:
    with path.open(encoding="utf-8", newline="") as fh:
        return sum(1 for _ in csv.reader(fh)) - 1


def _check(summary: dict, audience: Path) -> list[str]:
    """Recompute the expected outcome from the audience and the simulator's answers; list the differences."""
    from airflow_provider_kaleyra.phone import normalize
    from airflow_provider_kaleyra.simulator import rcs_answer

    distinct: dict[str, None] = {}
    invalid = rows = 0
    with audience.open(encoding="utf-8", newline="") as fh:
        for record in csv.DictReader(fh):
            rows += 1
            e164 = normalize(record["phone"], "US").e164
            if e164 is None:
                invalid += 1
            else:
                distinct.setdefault(e164)
    capable = {n for n in distinct if rcs_answer(n)["rcsEnabled"]}
    with Path(summary["files"]["rcs_capable"].removeprefix("file://")).open(
        encoding="utf-8", newline=""
    ) as fh:
        listed = [record["e164"] for record in csv.DictReader(fh)]
    problems = (
        []
        if set(listed) == capable and len(listed) == len(capable)
        else ["the RCS list differs from the simulator's answers"]
    )
    counts = summary["counts"]
    expected = {
        "rows": rows,
        "invalid": invalid,
        "distinct": len(distinct),
        "duplicates": rows - invalid - len(distinct),
        "rcs_capable": len(capable),
        "sms_fallback": len(distinct) - len(capable),
        "failed": 0,
    }
    problems += [
        f"{key}: expected {value:,}, got {counts.get(key)}"
        for key, value in expected.items()
        if counts.get(key) != value
    ]
    return problems


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    home = Path(os.environ.get("AIRFLOW_HOME") or Path.home() / "airflow")
    output = Path(args.output) if args.output else home.parent / "output"
    os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(DAGS_FOLDER))
    os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")

    from airflow_provider_kaleyra.simulator import KaleyraSimulator, SimulatorConfig

    started = time.monotonic()
    with KaleyraSimulator(SimulatorConfig(latency=args.latency)) as sim:
        os.environ["AIRFLOW_CONN_KALEYRA_DEFAULT"] = json.dumps(
            {
                "conn_type": "kaleyra",
                "login": sim.config.sid,
                "password": sim.config.api_key,
                "extra": {
                    "rcs_base_url": sim.url,
                    "soip_base_url": sim.url,
                    "default_region": "US",
                    "rate_limit": 50,
                    "max_concurrency": 8,
                },
            }
        )
        print(f"==> Kaleyra simulator on {sim.url}")

        log_file = home / "dag-test.log"
        print(
            f"==> Running {DAG_ID} on {args.size:,} generated numbers in {args.shards} shard(s) with dag.test()"
        )
        print(f"    (Airflow's own output goes to {log_file})")
        with _quiet(None if args.verbose else log_file):
            from airflow.dag_processing.dagbag import DagBag
            from airflow.models.pool import Pool

            Pool.create_or_update_pool(
                POOL, args.pool_slots, "Kaleyra API: concurrent RCS lookup shards", False
            )
            bag = DagBag(dag_folder=str(DAGS_FOLDER))
            dag = bag.get_dag(DAG_ID)
            run = None
            if dag is not None and not bag.import_errors:
                run = dag.test(
                    run_conf={
                        "audience_size": args.size,
                        "sample_seed": args.seed,
                        "shard_count": args.shards,
                        "output_location": f"file://{output.resolve()}",
                    }
                )
        if run is None:
            for path, error in bag.import_errors.items():
                print(f"Import error in {path}:\n{error}", file=sys.stderr)
            return 1
        logging.getLogger("airflow_provider_kaleyra.simulator").setLevel(logging.WARNING)
        state = str(getattr(run, "state", ""))
        stats = sim.stats()
    elapsed = time.monotonic() - started
    if not state.endswith("success"):
        print(f"The DAG run ended {state}; the task logs are in {log_file}", file=sys.stderr)
        return 1

    run_dirs = sorted(output.glob("*/summary.json"), key=lambda p: p.stat().st_mtime)
    summary_path = run_dirs[-1]
    summary = json.loads(summary_path.read_text())
    files = {name: Path(url.removeprefix("file://")) for name, url in summary["files"].items()}
    audience = Path(summary["audience"].removeprefix("file://"))
    counts = summary["counts"]
    problems = _check(summary, audience)
    for name in ("rcs_capable", "sms_fallback", "invalid"):
        if _count_rows(files[name]) != counts[name]:
            problems.append(
                f"{files[name]} holds {_count_rows(files[name]):,} rows, the summary says {counts[name]:,}"
            )

    def pct(n: int, d: int) -> str:
        return f"{100 * n / d:.1f}%" if d else "-"

    requests = stats.get("requests", {})
    print()
    print(f"Campaign preflight of {counts['rows']:,} rows done in {elapsed:.0f} s")
    print(
        f"  distinct valid numbers {counts['distinct']:>9,}   duplicates {counts['duplicates']:,}   invalid {counts['invalid']:,}"
    )
    print(
        f"  RCS-capable            {counts['rcs_capable']:>9,}   ({pct(counts['rcs_capable'], counts['distinct'])})"
    )
    print(f"  SMS fallback           {counts['sms_fallback']:>9,}   (failed lookups: {counts['failed']:,})")
    print(
        "  carriers: "
        + ", ".join(f"{name} {row['rcs_rate'] * 100:.0f}%" for name, row in summary["carriers"].items())
    )
    print(f"  simulator requests: {json.dumps(requests)}")
    print()
    print(f"Report:       {files['report_html']}")
    print(f"Markdown:     {files['report_md']}")
    print(f"RCS list:     {files['rcs_capable']}")
    print(f"SMS fallback: {files['sms_fallback']}")
    print(f"Invalid rows: {files['invalid']}")
    if problems:
        print(
            "\nThe outputs do not match the simulator's answers:\n  " + "\n  ".join(problems), file=sys.stderr
        )
        return 1
    print("\nChecked: every count matches the simulator's deterministic answers.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
