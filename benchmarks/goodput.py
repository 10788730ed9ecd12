"""``goodput``: ``KaleyraHook.lookup_rcs_many`` against the simulator rate-limited at R req/s
with 150 ms latency: numbers/s as a fraction of the ideal R x 500, 429s, lost."""

from __future__ import annotations

from common import (
    LATENCY,
    Row,
    concurrency_for,
    hook_lookup,
    log,
    median,
    row,
    set_connection,
    warm_simulator,
)
from inputs import valid_e164_numbers

from kaleyra_simulator.harness import SimulatorProcess


def bench_goodput(quick: bool, runs: int) -> list[Row]:
    cases = (
        [(10, 10_000), (50, 50_000)]
        if quick
        else [(5, 200_000), (20, 200_000), (50, 200_000), (100, 200_000)]
    )
    rows = []
    audience = valid_e164_numbers(max(n for _, n in cases))
    with SimulatorProcess(latency=LATENCY) as sim:
        warm_simulator(sim, audience)
        for rate, count in cases:
            numbers = audience[:count]
            sim.configure(latency=LATENCY, rate_limit=rate)
            set_connection(sim.url, rate_limit=rate, max_concurrency=concurrency_for(rate))
            ideal = rate * 500
            measured = []
            for run in range(runs):
                sim.reset()
                elapsed, sent, lost = hook_lookup(numbers)
                stats = sim.stats()
                measured.append((count / elapsed, stats["rate_limited"], lost, sent))
                log(
                    f"goodput R={rate} run {run + 1}: {count / elapsed:,.0f} numbers/s, "
                    f"{stats['rate_limited']} x 429, {lost} lost, {sent} requests"
                )
            rate_med = median([m[0] for m in measured])
            throttled = median([m[1] for m in measured])
            lost_max = max(m[2] for m in measured)
            rows.append(
                row(
                    "goodput",
                    f"R={rate}/s, {count:,} numbers, {concurrency_for(rate)} in flight",
                    f"{rate_med:,.0f} numbers/s",
                    f"ideal {ideal:,.0f}/s",
                    f"{rate_med / ideal:.2f}",
                    f"429s: {throttled:.0f} (median), lost: {lost_max} (worst run), "
                    f"requests: {measured[0][3]}",
                )
            )
    return rows
