"""
### Kaleyra campaign preflight (daily)

Before a campaign goes out, find out **which numbers of the audience can receive RCS** and
which must fall back to SMS, and which rows are not phone numbers at all.

1. **ensure_audience** — uses `params.audience_location`; when it is empty, a deterministic sample
   audience of `params.audience_size` rows is generated (once) under the Airflow home, with about 5%
   messy or garbage rows and some duplicates written in other formats.
2. **prepare_audience** — reads the audience (CSV, column `params.phone_column`), normalizes every
   row to E.164 (`params.default_region` reads national numbers), drops duplicates, writes the
   invalid rows with their reasons, and cuts the distinct numbers into `params.shard_count` shards
   of at least 100 numbers each (`params.shard_count` is a maximum).
3. **rcs_lookup** — one mapped `KaleyraRcsBulkLookupOperator` per shard, in the `kaleyra_api` pool.
   Each shard is cut into balanced bulk calls of 100-500 numbers (fewer than 100: single lookups),
   checkpointed every `params.checkpoint_batches` calls so a retried shard resumes; a shard fails when more
   than `params.max_failed_ratio` of its numbers could not be looked up.
4. **build_report** — merges the shards into `rcs_capable.csv`, `sms_fallback.csv`, and writes
   `report.html` (counts, rates, carriers, countries and an SVG bar chart), `report.md` and
   `summary.json`.

All outputs go under `<params.output_location>/<run id>/`. Every location is an Airflow
`ObjectStoragePath`: `file:///...`, `s3://bucket/prefix`, `gs://...` all work (the latter with
`params.storage_conn_id`).

**Set-up:** a connection `kaleyra_default` of type *Kaleyra*, and a pool limiting how many shards
call Kaleyra at once (each shard itself runs `max_concurrency` requests, paced by `rate_limit`):

```bash
airflow pools set kaleyra_api 2 "Kaleyra API: concurrent RCS lookup shards"
```
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta, timezone
from html import escape
from typing import Any

from airflow.sdk import DAG, ObjectStoragePath, Param, get_current_context, task

from airflow_provider_kaleyra.operators.kaleyra import KaleyraRcsBulkLookupOperator

KALEYRA_CONN_ID = "kaleyra_default"
KALEYRA_POOL = "kaleyra_api"
PHONE_COLUMN = "phone"
E164_COLUMN = "e164"

# --------------------------------------------------------------------------------------------
# Helpers. Plain functions: nothing here runs when the scheduler parses this file.
# --------------------------------------------------------------------------------------------


def storage_path(location: str, conn_id: str | None = None) -> ObjectStoragePath:
    """``s3://...``, ``file:///...`` or a plain local path, as an ``ObjectStoragePath``."""
    if "://" not in location:
        location = "file://" + os.path.abspath(os.path.expanduser(location))
    return ObjectStoragePath(location, conn_id=conn_id or None)


def airflow_home() -> str:
    return os.environ.get("AIRFLOW_HOME") or os.path.expanduser("~/airflow")


def default_sample_location(size: int, seed: int) -> str:
    return f"file://{airflow_home()}/kaleyra/samples/audience_{size}_seed{seed}.csv"


def default_output_location() -> str:
    return f"file://{airflow_home()}/kaleyra/preflight"


def ensure_dir(path: ObjectStoragePath) -> None:
    """Object stores have no directories; local file systems need them."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotImplementedError):
        pass


def write_text(path: ObjectStoragePath, text: str) -> None:
    ensure_dir(path.parent)
    with path.open("w", encoding="utf-8", newline="") as fh:
        fh.write(text)


def write_csv(path: ObjectStoragePath, header: Iterable[str], rows: Iterable[Iterable[Any]]) -> int:
    """Write a CSV file; returns the number of data rows."""
    ensure_dir(path.parent)
    count = 0
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(list(header))
        for row in rows:
            writer.writerow(["" if v is None else v for v in row])
            count += 1
    return count


def read_csv(path: ObjectStoragePath) -> Iterator[dict[str, str]]:
    with path.open("r", encoding="utf-8-sig", newline="") as fh:
        yield from csv.DictReader(fh)


# -- the sample audience ---------------------------------------------------------------------

_US_AREA_CODES = (201, 202, 212, 213, 305, 312, 404, 415, 512, 617, 646, 702, 713, 718, 805, 917, 949)
_GARBAGE = (
    "",
    "   ",
    "N/A",
    "unknown",
    "call me maybe",
    "12345",
    "+999 123 4567",
    "+1 415 555 0123 4567 8901",
    "jane.doe@example.com",
    "0",
    "(555) CALL-NOW",
    "+44 20 7946",
    "000-000-0000",
    "+1 (000) 000-0000",
    "\u260e +1 4",
    "x" * 80,
)


def _random_valid_number(rng: random.Random) -> tuple[str, str]:
    """A valid number as (country, E.164); countries weighted like a mostly-US audience."""
    import phonenumbers

    country = rng.choices(("US", "IN", "GB", "DE", "BR"), weights=(60, 25, 8, 4, 3))[0]
    for _ in range(100):
        if country == "US":
            exchange = rng.randrange(200, 1000)
            if exchange % 100 == 11 or exchange == 555:
                continue
            e164 = f"+1{rng.choice(_US_AREA_CODES)}{exchange}{rng.randrange(10_000):04d}"
        elif country == "IN":
            e164 = f"+91{rng.choice('6789')}{rng.randrange(10**9):09d}"
        elif country == "GB":
            e164 = f"+447{rng.choice('123456789')}{rng.randrange(10**8):08d}"
        elif country == "DE":
            e164 = f"+491{rng.choice(('51', '52', '57', '60', '62', '70', '71', '76'))}{rng.randrange(10**8):08d}"
        else:
            e164 = f"+55{rng.choice(('11', '21', '31', '41'))}9{rng.randrange(10**8):08d}"
        if phonenumbers.is_valid_number(phonenumbers.parse(e164)):
            return country, e164
    raise RuntimeError(f"could not generate a valid {country} number")  # pragma: no cover


def _messy_format(rng: random.Random, country: str, e164: str) -> str:
    """The same number as people type it: spaces, dashes, brackets, 00 prefix, US national form."""
    digits = e164[1:]
    style = rng.randrange(10)
    if country == "US":
        area, exchange, line = digits[1:4], digits[4:7], digits[7:]
        return (
            e164,
            f"+1 {area}-{exchange}-{line}",
            f"({area}) {exchange}-{line}",
            f"{area}.{exchange}.{line}",
            f"1 {area} {exchange} {line}",
            f"001{area}{exchange}{line}",
            f"  {e164} ",
            f"+1 ({area}) {exchange} {line}",
            f"{area}{exchange}{line}",
            f"+1-{area}-{exchange}-{line}",
        )[style]
    code_length = {"IN": 2, "GB": 2, "DE": 2, "BR": 2}[country]
    code, national = digits[:code_length], digits[code_length:]
    if style < 4:
        return e164
    if style < 7:
        return f"+{code} {national[:5]} {national[5:]}"
    if style < 9:
        return f"00{code} {national}"
    return f"+{code}-{national[:3]}-{national[3:6]}-{national[6:]}"


def generate_audience_rows(size: int, seed: int = 42) -> Iterator[tuple[str, str, str]]:
    """``size`` rows of (customer_id, phone, segment): deterministic for a given seed.

    About 5% of the rows are garbage (empty, words, wrong lengths, unknown country codes), and
    about 3% repeat an earlier number, usually written in another format.
    """
    rng = random.Random(seed)
    seen: list[tuple[str, str]] = []
    segments = ("loyal", "new", "lapsed", "vip")
    for index in range(size):
        customer = f"C{index + 1:07d}"
        segment = segments[index % len(segments)]
        roll = rng.random()
        if roll < 0.05:
            phone = rng.choice(_GARBAGE)
        elif roll < 0.08 and seen:
            country, e164 = rng.choice(seen)
            phone = _messy_format(rng, country, e164)
        else:
            country, e164 = _random_valid_number(rng)
            seen.append((country, e164))
            phone = _messy_format(rng, country, e164)
        yield customer, phone, segment


# -- the report ------------------------------------------------------------------------------

_COUNTRY_CODES: dict[str, str] | None = None


def country_of(e164: str) -> str:
    """ISO region of an E.164 number from its calling code (cheap: no full parse)."""
    global _COUNTRY_CODES
    if _COUNTRY_CODES is None:
        import phonenumbers

        _COUNTRY_CODES = {
            str(code): regions[0] for code, regions in phonenumbers.COUNTRY_CODE_TO_REGION_CODE.items() if regions
        }
    digits = e164.lstrip("+")
    for length in (1, 2, 3):
        region = _COUNTRY_CODES.get(digits[:length])
        if region:
            return "001" if region == "001" else region
    return "??"


def svg_bar_chart(
    title: str, bars: list[tuple[str, float, str]], unit: str = "", width: int = 640, scale_max: float | None = None
) -> str:
    """A horizontal bar chart as a standalone SVG string. ``bars``: (label, value, colour).

    Bars are scaled to ``scale_max`` (default: the largest value); integers are shown as such,
    other values with one decimal.
    """
    bar_height, gap, label_width, top = 26, 10, 170, 40
    height = top + len(bars) * (bar_height + gap) + 10
    plot = width - label_width - 90
    peak = scale_max or max((value for _, value, _ in bars), default=0) or 1
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="13" role="img" '
        f'aria-label="{escape(title)}">',
        f'<rect width="{width}" height="{height}" fill="#ffffff"/>',
        f'<text x="10" y="24" font-size="16" font-weight="bold">{escape(title)}</text>',
    ]
    for index, (label, value, colour) in enumerate(bars):
        y = top + index * (bar_height + gap)
        length = max(1.0, plot * value / peak) if value else 0.0
        shown = f"{value:,.1f}{unit}" if isinstance(value, float) else f"{int(value):,}{unit}"
        parts += [
            f'<text x="{label_width - 8}" y="{y + bar_height * 0.7:.1f}" text-anchor="end">{escape(label)}</text>',
            f'<rect x="{label_width}" y="{y}" width="{length:.1f}" height="{bar_height}" fill="{colour}">'
            f"<title>{escape(label)}: {shown}</title></rect>",
            f'<text x="{label_width + length + 6:.1f}" y="{y + bar_height * 0.7:.1f}">{shown}</text>',
        ]
    parts.append("</svg>")
    return "\n".join(parts)


def _pct(part: int, whole: int) -> str:
    return f"{100.0 * part / whole:.1f}%" if whole else "-"


def render_report(summary: dict[str, Any]) -> tuple[str, str, str]:
    """(html, markdown, outcome chart svg) for a summary built by ``build_report``."""
    c = summary["counts"]
    outcome_chart = svg_bar_chart(
        "Audience outcome",
        [
            ("RCS-capable", c["rcs_capable"], "#2e7d32"),
            ("SMS fallback", c["sms_fallback"], "#1565c0"),
            ("  of which lookup failed", c["failed"], "#ef6c00"),
            ("Invalid rows", c["invalid"], "#c62828"),
            ("Duplicate rows", c["duplicates"], "#757575"),
        ],
    )
    carriers = summary["carriers"]
    carrier_chart = svg_bar_chart(
        "RCS-capable rate by carrier",
        [(name, round(row["rcs_rate"] * 100, 1), "#6a1b9a") for name, row in carriers.items()],
        unit="%",
        scale_max=100.0,
    )
    rows = [
        ("Audience rows", c["rows"], ""),
        ("Invalid rows", c["invalid"], _pct(c["invalid"], c["rows"]) + " of rows"),
        ("Duplicate rows", c["duplicates"], _pct(c["duplicates"], c["rows"]) + " of rows"),
        ("Distinct valid numbers", c["distinct"], ""),
        ("RCS-capable", c["rcs_capable"], _pct(c["rcs_capable"], c["distinct"]) + " of distinct"),
        ("SMS fallback", c["sms_fallback"], _pct(c["sms_fallback"], c["distinct"]) + " of distinct"),
        ("Lookups failed (in SMS fallback)", c["failed"], _pct(c["failed"], c["distinct"]) + " of distinct"),
    ]
    html_rows = "\n".join(f"<tr><td>{escape(k)}</td><td class=n>{v:,}</td><td>{escape(r)}</td></tr>" for k, v, r in rows)
    carrier_rows = "\n".join(
        f"<tr><td>{escape(name)}</td><td class=n>{row['numbers']:,}</td><td class=n>{row['rcs_capable']:,}</td>"
        f"<td class=n>{row['rcs_rate'] * 100:.1f}%</td></tr>"
        for name, row in carriers.items()
    )
    country_rows = "\n".join(
        f"<tr><td>{escape(name)}</td><td class=n>{row['numbers']:,}</td><td class=n>{row['rcs_capable']:,}</td>"
        f"<td class=n>{row['rcs_rate'] * 100:.1f}%</td></tr>"
        for name, row in summary["countries"].items()
    )
    reason_rows = "\n".join(
        f"<tr><td>{escape(reason)}</td><td class=n>{count:,}</td></tr>" for reason, count in summary["invalid_reasons"].items()
    )
    files = "\n".join(f"<li><code>{escape(name)}</code>: {escape(path)}</li>" for name, path in summary["files"].items())
    html = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Kaleyra campaign preflight {escape(summary['run_id'])}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; max-width: 60em; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
td, th {{ border: 1px solid #ccc; padding: 4px 10px; text-align: left; }}
td.n {{ text-align: right; font-variant-numeric: tabular-nums; }}
</style></head><body>
<h1>Kaleyra campaign preflight</h1>
<p>Run <code>{escape(summary['run_id'])}</code>, finished {escape(summary['finished_at'])}.
Audience <code>{escape(summary['audience'])}</code>.</p>
<h2>Counts</h2>
<table><tr><th>what</th><th>count</th><th>rate</th></tr>
{html_rows}
</table>
{outcome_chart}
<h2>Carriers</h2>
<table><tr><th>carrier</th><th>numbers</th><th>RCS-capable</th><th>rate</th></tr>
{carrier_rows}
</table>
{carrier_chart}
<h2>Countries</h2>
<table><tr><th>country</th><th>numbers</th><th>RCS-capable</th><th>rate</th></tr>
{country_rows}
</table>
<h2>Why rows were invalid</h2>
<table><tr><th>reason</th><th>rows</th></tr>
{reason_rows}
</table>
<h2>Files</h2>
<ul>
{files}
</ul>
</body></html>
"""
    md_lines = [
        "# Kaleyra campaign preflight",
        "",
        f"Run `{summary['run_id']}`, finished {summary['finished_at']}; audience `{summary['audience']}`.",
        "",
        "| what | count | rate |",
        "|---|---:|---|",
        *(f"| {k} | {v:,} | {r} |" for k, v, r in rows),
        "",
        "![Audience outcome](outcome.svg)",
        "",
        "| carrier | numbers | RCS-capable | rate |",
        "|---|---:|---:|---:|",
        *(
            f"| {name} | {row['numbers']:,} | {row['rcs_capable']:,} | {row['rcs_rate'] * 100:.1f}% |"
            for name, row in carriers.items()
        ),
        "",
        "| invalid reason | rows |",
        "|---|---:|",
        *(f"| {reason} | {count:,} |" for reason, count in summary["invalid_reasons"].items()),
        "",
        *(f"- `{name}`: {path}" for name, path in summary["files"].items()),
        "",
    ]
    return html, "\n".join(md_lines), outcome_chart


def _rate_table(totals: Counter[str], capable: Counter[str]) -> dict[str, dict[str, Any]]:
    return {
        name: {"numbers": count, "rcs_capable": capable[name], "rcs_rate": capable[name] / count if count else 0.0}
        for name, count in sorted(totals.items(), key=lambda item: (-item[1], item[0]))
    }


def _safe_name(run_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", run_id).strip("_") or "run"


# --------------------------------------------------------------------------------------------
# The DAG
# --------------------------------------------------------------------------------------------

with DAG(
    dag_id="kaleyra_campaign_preflight",
    description="Daily RCS capability preflight of a campaign audience (RCS list, SMS fallback, invalid rows, report)",
    doc_md=__doc__,
    schedule="@daily",
    start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(hours=6),
    tags=["kaleyra", "rcs", "example"],
    default_args={"retries": 1, "retry_delay": timedelta(minutes=2)},
    params={
        "audience_location": Param(
            "",
            type="string",
            title="Audience location",
            description="CSV file (file://, s3://, gs://, ...). Empty: a generated sample under the Airflow home.",
        ),
        "phone_column": Param(PHONE_COLUMN, type="string", minLength=1, title="Phone column of the audience CSV"),
        "audience_size": Param(
            10_000, type="integer", minimum=1, maximum=5_000_000, title="Rows of the generated sample audience"
        ),
        "sample_seed": Param(42, type="integer", title="Seed of the generated sample audience"),
        "output_location": Param(
            "",
            type="string",
            title="Output location",
            description="Folder for the outputs; each run writes to <output_location>/<run id>/. "
            "Empty: kaleyra/preflight under the Airflow home.",
        ),
        "storage_conn_id": Param(
            "", type="string", title="Object storage connection id", description="For s3:// and the like; empty: none."
        ),
        "default_region": Param(
            "US",
            type=["null", "string"],
            title="Default region",
            description="ISO country for numbers written without a country code; null: such numbers are invalid.",
        ),
        "shard_count": Param(
            4, type="integer", minimum=1, maximum=256, title="Shards (mapped lookup tasks; each holds >= 100 numbers)"
        ),
        "checkpoint_batches": Param(
            20,
            type="integer",
            minimum=1,
            maximum=1000,
            title="Bulk calls per checkpoint",
            description="A retried shard skips the checkpointed calls (each bulk call holds 100-500 numbers).",
        ),
        "max_failed_ratio": Param(
            0.02,
            type="number",
            minimum=0,
            maximum=1,
            title="Max failed ratio",
            description="A shard fails when more than this share of its numbers could not be looked up.",
        ),
    },
) as dag:

    @task
    def ensure_audience() -> str:
        """The audience to check: ``params.audience_location``, or the sample (generated if missing)."""
        params = get_current_context()["params"]
        conn_id = params["storage_conn_id"] or None
        if params["audience_location"]:
            path = storage_path(params["audience_location"], conn_id)
            if not path.exists():
                raise FileNotFoundError(f"audience not found: {path}")
            return str(path)
        path = storage_path(default_sample_location(params["audience_size"], params["sample_seed"]))
        if path.exists():
            print(f"Using the sample audience {path}")
            return str(path)
        tmp = path.parent / f".{path.name}.tmp"
        rows = write_csv(
            tmp,
            ("customer_id", PHONE_COLUMN, "segment"),
            generate_audience_rows(params["audience_size"], params["sample_seed"]),
        )
        tmp.rename(path)
        print(f"Generated a sample audience of {rows:,} rows at {path}")
        return str(path)

    @task
    def prepare_audience(audience: str) -> list[dict[str, Any]]:
        """Normalize to E.164, drop duplicates, write the invalid rows, plan the shards."""
        from airflow_provider_kaleyra.batching import shard_bounds
        from airflow_provider_kaleyra.phone import normalize

        context = get_current_context()
        params = context["params"]
        conn_id = params["storage_conn_id"] or None
        run_dir = storage_path(params["output_location"] or default_output_location(), conn_id) / _safe_name(
            context["run_id"]
        )
        region = (params["default_region"] or "").upper() or None
        column = params["phone_column"]

        distinct: dict[str, None] = {}
        invalid: list[tuple[Any, ...]] = []
        others: list[str] = []  # the audience's other columns, kept in the invalid list to find the records
        rows = duplicates = 0
        for line, record in enumerate(read_csv(storage_path(audience, conn_id)), start=1):
            if column not in record:
                raise ValueError(f"the audience has no column {column!r}; columns: {sorted(record)}")
            if line == 1:
                others = [name for name in record if name != column and name is not None]
            rows += 1
            raw = record[column]
            norm = normalize(raw, region)
            if norm.e164 is None:
                extra = tuple(record.get(name) for name in others)
                invalid.append((line, raw if raw is not None else "", norm.reason or "invalid", *extra))
            elif norm.e164 in distinct:
                duplicates += 1
            else:
                distinct[norm.e164] = None

        # The distinct numbers in first-seen order: the input of the lookup shards.
        numbers_path = run_dir / "work" / "numbers.csv"
        write_csv(numbers_path, (E164_COLUMN,), ((n,) for n in distinct))
        write_csv(run_dir / "invalid.csv", ("row", "input", "reason", *others), invalid)
        bounds = shard_bounds(len(distinct), params["shard_count"]) if distinct else []
        # One mapped lookup task per shard: the operator looks up its contiguous slice of the distinct
        # numbers (the same ``shard_bounds``), in balanced bulk calls of 100-500 numbers.
        shards = [
            {
                "audience": str(numbers_path),
                "shard_index": index,
                "shard_count": len(bounds),
                "output": str(run_dir / "work" / f"rcs_shard_{index:03d}.csv"),
                "max_failed_ratio": params["max_failed_ratio"],
                "storage_conn_id": conn_id,
                "checkpoint_batches": params["checkpoint_batches"],
            }
            for index in range(len(bounds))
        ]
        print(
            f"{rows:,} rows: {len(distinct):,} distinct valid numbers, {duplicates:,} duplicates, "
            f"{len(invalid):,} invalid; {len(shards)} shard(s)"
        )
        context["ti"].xcom_push(
            key="prepared",
            value={
                "audience": audience,
                "run_dir": str(run_dir),
                "counts": {"rows": rows, "distinct": len(distinct), "duplicates": duplicates, "invalid": len(invalid)},
                "invalid_reasons": dict(Counter(item[2] for item in invalid).most_common()),
            },
        )
        return shards

    @task(trigger_rule="none_failed")
    def build_report(shards: list[dict[str, Any]], lookups: Any) -> dict[str, Any]:
        """Merge the shards into the RCS list and the SMS fallback list; write the report."""
        context = get_current_context()
        prepared = context["ti"].xcom_pull(task_ids="prepare_audience", key="prepared")
        params = context["params"]
        conn_id = params["storage_conn_id"] or None
        run_dir = storage_path(prepared["run_dir"], conn_id)
        header = ("e164", "carrier_id", "carrier_status")
        capable_rows: list[tuple[str, str, str]] = []
        fallback_rows: list[tuple[str, str, str, str, str]] = []
        carriers, carriers_capable = Counter[str](), Counter[str]()
        countries, countries_capable = Counter[str](), Counter[str]()
        seen: set[str] = set()
        failed = 0
        for shard in shards or []:
            for record in read_csv(storage_path(shard["output"], conn_id)):
                e164 = record.get("e164") or ""
                if not e164 or e164 in seen:
                    continue
                seen.add(e164)
                carrier = record.get("carrier_id") or "unknown"
                country = country_of(e164)
                carriers[carrier] += 1
                countries[country] += 1
                status = record.get("status")
                if status == "rcs_enabled":
                    capable_rows.append((e164, record.get("carrier_id", ""), record.get("carrier_status", "")))
                    carriers_capable[carrier] += 1
                    countries_capable[country] += 1
                else:
                    if status != "rcs_disabled":
                        failed += 1
                    reason = (
                        "not RCS-capable"
                        if status == "rcs_disabled"
                        else f"lookup {status}: {record.get('error') or 'no answer'}"
                    )
                    fallback_rows.append(
                        (e164, record.get("carrier_id", ""), record.get("carrier_status", ""), status or "", reason)
                    )
        # The mapped lookups' XCom summaries (by index: iterating would probe past the end).
        shard_summaries = [lookups[i] for i in range(len(lookups))] if lookups is not None else []
        counts = dict(prepared["counts"])
        if len(seen) != counts["distinct"]:
            raise ValueError(f"the shards answered {len(seen):,} numbers, {counts['distinct']:,} were asked")
        files = {
            "rcs_capable": str(run_dir / "rcs_capable.csv"),
            "sms_fallback": str(run_dir / "sms_fallback.csv"),
            "invalid": str(run_dir / "invalid.csv"),
            "report_html": str(run_dir / "report.html"),
            "report_md": str(run_dir / "report.md"),
            "chart": str(run_dir / "outcome.svg"),
            "summary": str(run_dir / "summary.json"),
        }
        write_csv(storage_path(files["rcs_capable"], conn_id), header, capable_rows)
        write_csv(storage_path(files["sms_fallback"], conn_id), (*header, "status", "reason"), fallback_rows)
        counts.update(rcs_capable=len(capable_rows), sms_fallback=len(fallback_rows), failed=failed)
        summary = {
            "run_id": context["run_id"],
            "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "audience": prepared.get("audience", ""),
            "counts": counts,
            "rates": {
                "rcs_capable": counts["rcs_capable"] / counts["distinct"] if counts["distinct"] else 0.0,
                "invalid": counts["invalid"] / counts["rows"] if counts["rows"] else 0.0,
                "duplicates": counts["duplicates"] / counts["rows"] if counts["rows"] else 0.0,
            },
            "carriers": _rate_table(carriers, carriers_capable),
            "countries": _rate_table(countries, countries_capable),
            "invalid_reasons": prepared["invalid_reasons"],
            "shards": shard_summaries,
            "files": files,
        }
        html, markdown, chart = render_report(summary)
        write_text(storage_path(files["report_html"], conn_id), html)
        write_text(storage_path(files["report_md"], conn_id), markdown)
        write_text(storage_path(files["chart"], conn_id), chart)
        write_text(storage_path(files["summary"], conn_id), json.dumps(summary, indent=2, default=str))
        print(
            f"RCS-capable {counts['rcs_capable']:,}, SMS fallback {counts['sms_fallback']:,} "
            f"({failed:,} failed lookups), invalid {counts['invalid']:,}; report: {files['report_html']}"
        )
        return {"report": files["report_html"], "summary": files["summary"], "counts": counts}

    audience = ensure_audience()
    prepared = prepare_audience(audience)
    lookups = KaleyraRcsBulkLookupOperator.partial(
        task_id="rcs_lookup",
        kaleyra_conn_id=KALEYRA_CONN_ID,
        column=E164_COLUMN,
        pool=KALEYRA_POOL,
        retries=2,
    ).expand_kwargs(prepared)
    build_report(prepared, lookups.output)
