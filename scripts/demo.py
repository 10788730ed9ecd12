"""The demo behind ``scripts/demo.sh``: the campaign preflight, end to end, on the Kaleyra simulator.

Starts the simulator and the SOIP callback receiver (uvicorn, the provider's app) on 127.0.0.1 in
this process, points the ``kaleyra_default`` connection at them, creates the ``kaleyra_api`` pool,
runs ``example_kaleyra_campaign_preflight`` once with ``dag.test()`` on a generated audience (RCS
lookups, then the SOIP leg with its callbacks going through the receiver), checks the channel of
every row against the simulator's deterministic answers, and prints where the report is.
``AIRFLOW_HOME`` must hold a migrated metadata database (demo.sh does it).

    python scripts/demo.py --size 50000 --shards 4
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

ROOT = Path(__file__).resolve().parents[1]
DAGS_FOLDER = ROOT / "example_dags"
DAG_ID = "example_kaleyra_campaign_preflight"
POOL = "kaleyra_api"
REGION = "US"
SECRET = "demo-callback-secret-0123456789"
CLIENT_ID, CLIENT_SECRET = "demo-console", "demo-client-secret-0123456789"  # advanced callback auth


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=50_000, help="rows of the generated audience (default 50,000)")
    p.add_argument("--shards", type=int, default=4, help="most mapped lookup tasks (default 4)")
    p.add_argument("--output", default=None, help="output folder (default: <AIRFLOW_HOME>/../output)")
    p.add_argument("--pool-slots", type=int, default=2, help="slots of the kaleyra_api pool")
    p.add_argument("--latency", type=float, default=0.02, help="simulated API latency per request, seconds")
    p.add_argument("--no-soip", action="store_true", help="run the RCS part only")
    p.add_argument(
        "--callback-auth",
        choices=["header", "basic", "advanced"],
        default="header",
        help="how the simulator's SOIP callbacks authenticate (advanced: a token from /kaleyra/soip/token)",
    )
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


@contextlib.contextmanager
def receiver(store_url: str) -> Iterator[str]:
    """The provider's callback receiver served by uvicorn on a free port; yields its callback URL."""
    from airflow_provider_kaleyra.callbacks.receiver import create_standalone_app
    from airflow_provider_kaleyra.callbacks.store import get_store
    from kaleyra_simulator.harness import serve_app

    app = create_standalone_app(
        store=get_store(store_url), secret=SECRET, client_id=CLIENT_ID, client_secret=CLIENT_SECRET
    )
    with serve_app(app) as port:
        yield f"http://127.0.0.1:{port}/kaleyra/soip/callback"


def expected_channel(phone: str, soip: bool) -> tuple[str, str]:
    """What the preflight must answer for one audience cell, from the simulator's pure functions."""
    from airflow_provider_kaleyra.numbers.normalize import normalize
    from airflow_provider_kaleyra.preflight.channels import DEFAULT_SOIP_REGIONS, region_of
    from kaleyra_simulator import rcs_answer, soip_answer

    e164 = normalize(phone, REGION).e164
    if e164 is None:
        return "none", ""
    if rcs_answer(e164)["rcsEnabled"]:
        return "rcs", e164
    if soip and region_of(e164) in DEFAULT_SOIP_REGIONS:
        return ("soip" if soip_answer(e164) else "sms"), e164
    return "sms", e164


def check_lists(run_dir: Path, audience: Path, soip: bool) -> list[str]:
    """Every audience row must be in exactly one list, with the expected channel and its own columns."""
    expected = {}
    with audience.open(encoding="utf-8", newline="") as fh:
        for record in csv.DictReader(fh):
            expected[record["customer_id"]] = (*expected_channel(record["phone"], soip), record["segment"])
    found: dict[str, tuple[str, str, str]] = {}
    problems = []
    for name in ("rcs", "soip", "sms", "invalid"):
        with (run_dir / f"{name}.csv").open(encoding="utf-8", newline="") as fh:
            for record in csv.DictReader(fh):
                if record["customer_id"] in found:
                    problems.append(f"row {record['customer_id']} is listed twice")
                found[record["customer_id"]] = (record["channel"], record["e164"], record["segment"])
    wrong = [cid for cid, want in expected.items() if found.get(cid) != want]
    if wrong or len(found) != len(expected):
        problems.append(f"{len(wrong):,} of {len(expected):,} rows differ from the simulator's answers")
    return problems


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    home = Path(os.environ.get("AIRFLOW_HOME") or Path.home() / "airflow")
    output = (Path(args.output) if args.output else home.parent / "output").resolve()
    os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(DAGS_FOLDER))
    os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")

    from kaleyra_simulator import CallbackAuth, KaleyraSimulator, SimulatorConfig

    callback_auth = {
        "header": CallbackAuth("header", "X-Kaleyra-Secret", SECRET),
        "basic": CallbackAuth("basic", "kaleyra", SECRET),
        "advanced": CallbackAuth("advanced", CLIENT_ID, CLIENT_SECRET),
    }[args.callback_auth]

    store_url = f"sqlite:///{home / 'kaleyra-callbacks.db'}"
    started = time.monotonic()
    with (
        receiver(store_url) as callback_url,
        KaleyraSimulator(
            SimulatorConfig(
                latency=args.latency,
                callback_url=callback_url,
                callback_auth=callback_auth,
            )
        ) as sim,
    ):
        os.environ["AIRFLOW_CONN_KALEYRA_DEFAULT"] = json.dumps(
            {
                "conn_type": "kaleyra",
                "login": sim.config.sid,
                "password": sim.config.api_key,
                "extra": {
                    "rcs_base_url": sim.url,
                    "soip_base_url": sim.url,
                    "default_region": REGION,
                    "rate_limit": 100,
                    "max_concurrency": 8,
                    "callback_profile_id": "demo-profile",
                    "callback_secret": SECRET,
                    "callback_store_url": store_url,
                },
            }
        )
        print(f"==> Kaleyra simulator on {sim.url}; callback receiver at {callback_url}")
        log_file = home / "dag-test.log"
        print(f"==> Running {DAG_ID} on {args.size:,} generated rows with dag.test()")
        print(f"    (Airflow's own output goes to {log_file})")
        with _quiet(None if args.verbose else log_file):
            from airflow.dag_processing.dagbag import DagBag
            from airflow.models.pool import Pool

            Pool.create_or_update_pool(
                POOL, args.pool_slots, "Kaleyra API: concurrent RCS lookup shards", False
            )
            bag = DagBag(dag_folder=str(DAGS_FOLDER))
            dag = bag.dags.get(DAG_ID)
            run = None
            if dag is not None and not bag.import_errors:
                run = dag.test(
                    run_conf={
                        "audience_size": args.size,
                        "shard_count": args.shards,
                        "soip": not args.no_soip,
                        "output_location": f"file://{output}",
                    }
                )
        if run is None:
            for path, error in bag.import_errors.items():
                print(f"Import error in {path}:\n{error}", file=sys.stderr)
            return 1
        logging.getLogger("kaleyra_simulator").setLevel(logging.WARNING)
        state = str(getattr(run, "state", ""))
        stats = sim.stats()
    elapsed = time.monotonic() - started
    if not state.endswith("success"):
        print(f"The DAG run ended {state}; the task logs are in {log_file}", file=sys.stderr)
        return 1

    summary_path = max(output.glob("*/summary.json"), key=lambda p: p.stat().st_mtime)
    summary = json.loads(summary_path.read_text())
    run_dir = summary_path.parent
    problems = check_lists(run_dir, Path(summary["audience"].removeprefix("file://")), not args.no_soip)
    rows, numbers = summary["channels"]["rows"], summary["channels"]["numbers"]
    counts = summary["counts"]
    print()
    print(f"Campaign preflight of {counts['rows']:,} rows done in {elapsed:.0f} s")
    print(f"  distinct valid numbers {counts['distinct']:,}, duplicate rows {counts['duplicates']:,}")
    for channel in ("rcs", "soip", "sms", "none"):
        print(f"  {channel:<5} {rows[channel]:>9,} rows   {numbers.get(channel, 0):>9,} distinct numbers")
    print(f"  SOIP asked {summary['soip']['asked']:,}, answered by callback {summary['soip']['answered']:,}")
    print(f"  simulator: {json.dumps(stats.get('requests', {}))}, callbacks {stats.get('callbacks')}")
    print()
    print(f"Report: {run_dir / 'report.html'}")
    print(f"Lists:  {run_dir}/{{rcs,soip,sms,invalid}}.csv")
    if problems:
        print(
            "\nThe outputs do not match the simulator's answers:\n  " + "\n  ".join(problems), file=sys.stderr
        )
        return 1
    print("\nChecked: every row's channel matches the simulator's deterministic answers.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
