"""Helpers shared by the example DAGs: run folders, CSV files and the campaign report.

A plain module beside the DAG files, not a DAG: Airflow puts the DAGs folder on ``sys.path``, so
the DAG files import it as ``campaign_report``. Nothing runs at import time.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from html import escape
from typing import Any

from airflow.sdk import ObjectStoragePath

from airflow_provider_kaleyra.utils.storage import as_path

# -- where the outputs go ----------------------------------------------------------------------


def airflow_home() -> str:
    return os.environ.get("AIRFLOW_HOME") or os.path.expanduser("~/airflow")


def default_sample_location(size: int, seed: int) -> str:
    """Where the campaign preflight generates its sample audience."""
    return f"file://{airflow_home()}/kaleyra/samples/audience_{size}_seed{seed}.csv"


def default_output_location() -> str:
    return f"file://{airflow_home()}/kaleyra/preflight"


def safe_name(run_id: str) -> str:
    """A run id as a folder name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", run_id).strip("_") or "run"


# -- files -------------------------------------------------------------------------------------


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


# -- the audience ------------------------------------------------------------------------------


def write_sample_audience(path: ObjectStoragePath, phone_column: str, size: int, seed: int) -> int:
    """The simulator's deterministic sample audience as a CSV file (written whole, then renamed); its rows."""
    from airflow_provider_kaleyra.simulator import generate_audience_rows

    tmp = path.parent / f".{path.name}.tmp"
    rows = write_csv(tmp, ("customer_id", phone_column, "segment"), generate_audience_rows(size, seed))
    tmp.rename(path)
    return rows


@dataclass
class AudienceScan:
    """An audience read row by row: its distinct valid numbers and its invalid rows."""

    distinct: dict[str, None] = field(default_factory=dict)  # E.164 numbers in first-seen order
    invalid: list[tuple[Any, ...]] = field(default_factory=list)  # (row, input, reason, *other columns)
    others: list[str] = field(default_factory=list)  # the audience's other columns, to find the records
    rows: int = 0
    duplicates: int = 0

    def counts(self) -> dict[str, int]:
        distinct, invalid = len(self.distinct), len(self.invalid)
        return {"rows": self.rows, "distinct": distinct, "duplicates": self.duplicates, "invalid": invalid}


def scan_audience(records: Iterable[dict[str, str]], column: str, region: str | None) -> AudienceScan:
    """Normalize every row's ``column`` to E.164 (``region`` reads national numbers) and drop duplicates."""
    from airflow_provider_kaleyra.phone import normalize

    scan = AudienceScan()
    for line, record in enumerate(records, start=1):
        if column not in record:
            raise ValueError(f"the audience has no column {column!r}; columns: {sorted(record)}")
        if line == 1:
            scan.others = [name for name in record if name != column and name is not None]
        scan.rows += 1
        raw = record[column]
        norm = normalize(raw, region)
        if norm.e164 is None:
            extra = tuple(record.get(name) for name in scan.others)
            scan.invalid.append((line, raw if raw is not None else "", norm.reason or "invalid", *extra))
        elif norm.e164 in scan.distinct:
            scan.duplicates += 1
        else:
            scan.distinct[norm.e164] = None
    return scan


# -- the campaign report ----------------------------------------------------------------------

_COUNTRY_CODES: dict[str, str] | None = None


def country_of(e164: str) -> str:
    """ISO region of an E.164 number from its calling code (cheap: no full parse)."""
    global _COUNTRY_CODES
    if _COUNTRY_CODES is None:
        import phonenumbers

        _COUNTRY_CODES = {
            str(code): regions[0]
            for code, regions in phonenumbers.COUNTRY_CODE_TO_REGION_CODE.items()
            if regions
        }
    digits = e164.lstrip("+")
    for length in (1, 2, 3):
        region = _COUNTRY_CODES.get(digits[:length])
        if region:
            return "001" if region == "001" else region
    return "??"


def svg_bar_chart(
    title: str,
    bars: list[tuple[str, float, str]],
    unit: str = "",
    width: int = 640,
    scale_max: float | None = None,
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
    html_rows = "\n".join(
        f"<tr><td>{escape(k)}</td><td class=n>{v:,}</td><td>{escape(r)}</td></tr>" for k, v, r in rows
    )
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
        f"<tr><td>{escape(reason)}</td><td class=n>{count:,}</td></tr>"
        for reason, count in summary["invalid_reasons"].items()
    )
    files = "\n".join(
        f"<li><code>{escape(name)}</code>: {escape(path)}</li>" for name, path in summary["files"].items()
    )
    html = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Kaleyra campaign preflight {escape(summary["run_id"])}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; max-width: 60em; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
td, th {{ border: 1px solid #ccc; padding: 4px 10px; text-align: left; }}
td.n {{ text-align: right; font-variant-numeric: tabular-nums; }}
</style></head><body>
<h1>Kaleyra campaign preflight</h1>
<p>Run <code>{escape(summary["run_id"])}</code>, finished {escape(summary["finished_at"])}.
Audience <code>{escape(summary["audience"])}</code>.</p>
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


def rate_table(totals: Counter[str], capable: Counter[str]) -> dict[str, dict[str, Any]]:
    return {
        name: {
            "numbers": count,
            "rcs_capable": capable[name],
            "rcs_rate": capable[name] / count if count else 0.0,
        }
        for name, count in sorted(totals.items(), key=lambda item: (-item[1], item[0]))
    }


@dataclass
class LookupSplit:
    """The lookup results of the shards, each number once (first answer wins)."""

    capable: list[tuple[str, str, str]] = field(default_factory=list)  # e164, carrier_id, carrier_status
    fallback: list[tuple[str, str, str, str, str]] = field(default_factory=list)  # ... status, reason
    carriers: dict[str, dict[str, Any]] = field(default_factory=dict)  # rate tables, see rate_table
    countries: dict[str, dict[str, Any]] = field(default_factory=dict)
    failed: int = 0  # lookups that did not answer (they are in the fallback list)
    answered: int = 0  # distinct numbers in the results


def split_lookups(records: Iterable[dict[str, str]]) -> LookupSplit:
    """RCS-capable numbers, and the SMS fallback (not capable, or the lookup failed) with the reason."""
    split = LookupSplit()
    carriers, carriers_capable = Counter[str](), Counter[str]()
    countries, countries_capable = Counter[str](), Counter[str]()
    seen: set[str] = set()
    for record in records:
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
            split.capable.append((e164, record.get("carrier_id", ""), record.get("carrier_status", "")))
            carriers_capable[carrier] += 1
            countries_capable[country] += 1
        else:
            if status != "rcs_disabled":
                split.failed += 1
            reason = (
                "not RCS-capable"
                if status == "rcs_disabled"
                else f"lookup {status}: {record.get('error') or 'no answer'}"
            )
            split.fallback.append(
                (e164, record.get("carrier_id", ""), record.get("carrier_status", ""), status or "", reason)
            )
    split.carriers = rate_table(carriers, carriers_capable)
    split.countries = rate_table(countries, countries_capable)
    split.answered = len(seen)
    return split


def write_report(summary: dict[str, Any], conn_id: str | None = None) -> None:
    """Render the report of ``summary`` and write it to its ``files``: HTML, Markdown, chart and JSON."""
    files = summary["files"]
    html, markdown, chart = render_report(summary)
    write_text(as_path(files["report_html"], conn_id), html)
    write_text(as_path(files["report_md"], conn_id), markdown)
    write_text(as_path(files["chart"], conn_id), chart)
    write_text(as_path(files["summary"], conn_id), json.dumps(summary, indent=2, default=str))
