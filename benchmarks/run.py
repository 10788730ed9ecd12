"""Benchmarks of airflow-provider-kaleyra: ``python benchmarks/run.py [--quick] [--only NAME]``.

Every figure is a ratio against a baseline measured in the same run (or, for goodput, against
the ideal the rate limit allows), the median of several runs. Names (``--only``, repeatable):

``goodput``    ``KaleyraHook.lookup_rcs_many`` against the simulator rate-limited at R req/s
               with 150 ms latency: numbers/s as a fraction of the ideal R x 500, 429s, lost.
``baselines``  the same lookup against what a user would write otherwise: a loop of single
               lookups with plain ``requests``, and bulk calls one after another.
``normalize``  ``numbers.normalize`` against a plain ``phonenumbers`` parse/validate/format loop
               on the same mixed inputs (identical answers checked on every input).
``scale``      ``KaleyraRcsBulkLookupOperator`` over a 1,000,000-line audience file (no
               latency): wall time, peak RSS, rows out = rows in; against reading the file
               into memory and calling ``lookup_rcs_many``.
``callbacks``  callbacks/s the standalone receiver stores with group commit (SQLite;
               PostgreSQL from ``KALEYRA_BENCH_POSTGRES_URL`` or ``KALEYRA_TEST_POSTGRES_URL``, its
               fsync setting shown), none lost; against a bare endpoint on the same uvicorn and
               FastAPI answering without storing, same clients (8 and 64), same number of server
               processes (1, and 2 with 64 clients), same run.
``soip``       a 100,000-number SOIP check end to end: the check operator over an audience file,
               the simulator's callbacks to the standalone receiver, the sensor deferred (its
               trigger run as the triggerer would), the per-number output; wall time, callbacks/s,
               XCom bytes.

The simulator and the callback receiver run as their own processes (as the real API and a
real receiver would), so they do not share this process's GIL.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import baselines
import callbacks
import goodput
import normalize
import pipeline
import scale
import soip
from common import Row, log, machine, print_table, row

SECTIONS: dict[str, Callable[..., list[Row]]] = {
    "goodput": goodput.bench_goodput,
    "pipeline": pipeline.bench_pipeline,
    "baselines": baselines.bench_baselines,
    "normalize": normalize.bench_normalize,
    "scale": scale.bench_scale,
    "callbacks": callbacks.bench_callbacks,
    "soip": soip.bench_soip,
}
NAMES = tuple(SECTIONS)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smaller sizes (about a minute)")
    parser.add_argument(
        "--only", action="append", choices=NAMES, metavar="NAME", help=f"one of {', '.join(NAMES)}"
    )
    parser.add_argument("--runs", type=int, default=3, help="runs per figure, median reported (default 3)")
    parser.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    parser.add_argument(
        "--scale-rows",
        type=int,
        default=scale.SCALE_ROWS,
        help="rows of the scale audience (default 1,000,000)",
    )
    parser.add_argument(
        "--no-gc-freeze", action="store_true", help="do not freeze the import-time heap (see below)"
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")
    import airflow_provider_kaleyra.hooks.kaleyra
    import airflow_provider_kaleyra.operators.kaleyra  # noqa: F401

    if not args.no_gc_freeze:
        # Airflow's LocalExecutor and DAG processor gc.freeze() their import-time heap before
        # forking workers, so a task's full garbage collections skip Airflow's ~170k import-time
        # objects. Do the same here, or this process pays ~0.2 s per full collection that a
        # task would not (several per second at R=100).
        gc.collect()
        gc.freeze()
    print(f"machine: {machine()}")
    print(f"gc: import-time heap {'not frozen' if args.no_gc_freeze else 'frozen, as in an Airflow worker'}")
    print(f"command: python benchmarks/run.py {' '.join(argv)}".rstrip())
    sections = {**SECTIONS, "scale": functools.partial(scale.bench_scale, rows=args.scale_rows)}
    rows: list[Row] = []
    started = time.perf_counter()
    for name in args.only or NAMES:
        began = time.perf_counter()
        log(f"{name} ...")
        try:
            rows += sections[name](args.quick, args.runs)
        except Exception as exc:
            detail = str(exc).strip().splitlines()[-1] if str(exc).strip() else ""
            rows.append(row(name, "error", f"{type(exc).__name__}: {detail}"[:160], "-", "-"))
            log(f"{name} failed: {exc}")
        gc.collect()
        log(f"{name} done in {time.perf_counter() - began:.0f} s")
    print()
    print_table(rows)
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(), "argv": argv, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
