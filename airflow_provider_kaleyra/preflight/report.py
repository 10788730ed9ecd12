"""Step 4 of a preflight: the report (HTML, Markdown, ``summary.json``) of one run.

Charts compare like with like: audience *rows* by channel in one chart, *distinct numbers* in
rates by carrier and country in others, and the RCS-capable share of distinct numbers across runs.
Hand-written SVG: three bar charts do not earn a chart library. Links are relative, so the run
folder can be copied or served as it is.
"""

from __future__ import annotations

import json
import logging
from html import escape
from typing import Any

from airflow.sdk import ObjectStoragePath

from airflow_provider_kaleyra.preflight.channels import CHANNELS, LIST_NAMES
from airflow_provider_kaleyra.preflight.records import ChannelResult, PreparedRun
from airflow_provider_kaleyra.utils.storage import open_atomic

log = logging.getLogger(__name__)

SUMMARY, HTML, MARKDOWN = "summary.json", "report.html", "report.md"
HISTORY_RUNS = 30
COLOURS = {"rcs": "#2e7d32", "soip": "#6a1b9a", "sms": "#1565c0", "none": "#c62828"}
LABELS = {"rcs": "RCS", "soip": "SMS over IP", "sms": "SMS", "none": "none (invalid)"}


def run_summary(
    run_id: str, finished_at: str, prepared: PreparedRun, decided: ChannelResult, api: dict[str, int]
) -> dict[str, Any]:
    """What ``summary.json`` and the report hold: ``prepare``'s counts, ``channels``' decisions, API calls."""
    return {
        "run_id": run_id,
        "finished_at": finished_at,
        "audience": prepared["audience"],
        "counts": prepared["counts"],
        "invalid_reasons": prepared["invalid_reasons"],
        "national": prepared["national"],
        "channels": {"rows": decided["rows"], "numbers": decided["numbers"]},
        "reasons": decided["reasons"],
        "carriers": decided["carriers"],
        "countries": decided["countries"],
        "soip": {"asked": decided["soip_asked"], "answered": decided["soip_answered"]},
        "api": api,
    }


def rcs_share(summary: dict[str, Any]) -> float:
    """RCS-capable distinct numbers over distinct valid numbers."""
    distinct = summary["counts"]["distinct"]
    return summary["channels"]["numbers"].get("rcs", 0) / distinct if distinct else 0.0


def load_history(base: ObjectStoragePath, run_id: str, limit: int = HISTORY_RUNS) -> list[dict[str, Any]]:
    """``{run_id, finished_at, rcs_share}`` of earlier runs whose ``summary.json`` is under ``base``, oldest first."""
    found = []
    try:
        candidates = list(base.glob(f"*/{SUMMARY}"))
    except (FileNotFoundError, NotImplementedError):
        return []
    for path in candidates:
        try:
            earlier = json.loads(path.read_text())
            if earlier.get("run_id") != run_id:
                found.append(
                    {
                        "run_id": earlier["run_id"],
                        "finished_at": earlier["finished_at"],
                        "rcs_share": rcs_share(earlier),
                    }
                )
        except (OSError, ValueError, KeyError, TypeError):
            log.warning("Skipped an unreadable earlier summary: %s", path)
    return sorted(found, key=lambda item: item["finished_at"])[-limit:]


def svg_bar_chart(
    title: str, bars: list[tuple[str, float, str]], unit: str = "", scale_max: float | None = None
) -> str:
    """A horizontal bar chart as standalone SVG; ``bars`` are (label, value, colour)."""
    width, bar_height, gap, label_width, top = 640, 24, 8, 190, 40
    height = top + len(bars) * (bar_height + gap) + 10
    plot = width - label_width - 100
    peak = scale_max or max((value for _, value, _ in bars), default=0) or 1
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'font-family="sans-serif" font-size="13" role="img" aria-label="{escape(title)}">',
        f'<text x="10" y="24" font-size="16" font-weight="bold">{escape(title)}</text>',
    ]
    for index, (label, value, colour) in enumerate(bars):
        y = top + index * (bar_height + gap)
        length = max(1.0, plot * value / peak) if value else 0.0
        shown = f"{value:,.1f}{unit}" if isinstance(value, float) else f"{value:,}{unit}"
        parts += [
            f'<text x="{label_width - 8}" y="{y + 17}" text-anchor="end">{escape(label)}</text>',
            f'<rect x="{label_width}" y="{y}" width="{length:.1f}" height="{bar_height}" fill="{colour}">'
            f"<title>{escape(label)}: {shown}</title></rect>",
            f'<text x="{label_width + length + 6:.1f}" y="{y + 17}">{shown}</text>',
        ]
    return "\n".join([*parts, "</svg>"])


def _pct(part: float, whole: float) -> str:
    return f"{100.0 * part / whole:.1f}%" if whole else "-"


def _sections(
    summary: dict[str, Any], history: list[dict[str, Any]]
) -> list[tuple[str, list[str], list[list[str]], str]]:
    """(title, table header, table rows, svg chart or "") for both renderings."""
    counts, channels = summary["counts"], summary["channels"]
    rows_total, distinct = counts["rows"], counts["distinct"]
    mix = [
        [
            LABELS[c],
            f"{channels['rows'][c]:,}",
            _pct(channels["rows"][c], rows_total),
            f"{channels['numbers'][c]:,}" if c in channels["numbers"] else "-",
        ]
        for c in CHANNELS
    ]
    mix_chart = svg_bar_chart(
        "Channel of each audience row", [(LABELS[c], channels["rows"][c], COLOURS[c]) for c in CHANNELS]
    )
    audience = [
        ["audience rows", f"{rows_total:,}", ""],
        [
            "duplicate rows (a number seen earlier)",
            f"{counts['duplicates']:,}",
            _pct(counts["duplicates"], rows_total) + " of rows",
        ],
        ["invalid rows", f"{counts['invalid']:,}", _pct(counts["invalid"], rows_total) + " of rows"],
        ["distinct valid numbers", f"{distinct:,}", ""],
    ]

    def rates(table: dict[str, dict[str, Any]]) -> list[list[str]]:
        return [
            [name, f"{r['numbers']:,}", f"{r['rcs_capable']:,}", f"{100 * r['rcs_rate']:.1f}%"]
            for name, r in table.items()
        ]

    def rate_chart(by: str, table: dict[str, dict[str, Any]]) -> str:
        return svg_bar_chart(
            f"RCS-capable share of distinct numbers, by {by}",
            [(n, round(100 * r["rcs_rate"], 1), "#2e7d32") for n, r in list(table.items())[:15]],
            "%",
            100.0,
        )

    national = summary["national"]
    read_as = [
        [
            f"read with the default region ({national['default_region']})",
            f"{national['default_rows']:,}",
            _pct(national["default_rows"], rows_total) + " of rows",
        ],
        *(
            [f"read as {region}", f"{n:,}", _pct(n, rows_total) + " of rows"]
            for region, n in national["by_region"].items()
        ),
        *(["example (masked)", example, ""] for example in national["examples"]),
    ]
    api = summary["api"]
    this_run = {"run_id": f"{summary['run_id']} (this run)", "finished_at": summary["finished_at"]}
    trend = [*history, {**this_run, "rcs_share": rcs_share(summary)}]
    rate_header = ["", "distinct numbers", "RCS-capable", "share"]
    return [
        ("Channel mix", ["channel", "rows", "share of rows", "distinct numbers"], mix, mix_chart),
        ("Audience", ["", "count", "share"], audience, ""),
        ("Numbers without a country code", ["", "rows", "share"], read_as, ""),
        ("Reasons", ["reason", "rows"], [[r, f"{n:,}"] for r, n in summary["reasons"].items()], ""),
        *(
            (f"RCS reachability by {by}", rate_header, rates(summary[key]), rate_chart(by, summary[key]))
            for by, key in (("carrier", "carriers"), ("country", "countries"))
        ),
        (
            "Why rows were invalid",
            ["reason", "rows"],
            [[r, f"{n:,}"] for r, n in summary["invalid_reasons"].items()],
            "",
        ),
        (
            "API calls",
            ["", "requests"],
            [
                ["RCS lookups (bulk and single)", f"{api['rcs_requests']:,}"],
                ["SOIP capability checks", f"{api['soip_requests']:,}"],
                [
                    "SOIP numbers asked / answered by callback",
                    f"{summary['soip']['asked']:,} / {summary['soip']['answered']:,}",
                ],
            ],
            "",
        ),
        (
            "Trend: RCS-capable share across runs",
            ["run", "RCS-capable share of distinct numbers"],
            [[t["run_id"], f"{100 * t['rcs_share']:.1f}%"] for t in trend],
            svg_bar_chart(
                "RCS-capable share of distinct numbers, by run",
                [(_when(t["finished_at"]), round(100 * t["rcs_share"], 1), "#2e7d32") for t in trend],
                "%",
                100.0,
            ),
        ),
    ]


def render(summary: dict[str, Any], history: list[dict[str, Any]]) -> tuple[str, str]:
    """(HTML, Markdown) of a run's summary; ``history`` from :func:`load_history`."""
    sections = _sections(summary, history)
    title = f"Kaleyra campaign preflight {summary['run_id']}"
    html = [
        f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{escape(title)}</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:62em;color:#222}"
        "table{border-collapse:collapse;margin:.5em 0 1em}td,th{border:1px solid #ccc;padding:3px 9px}"
        "td:not(:first-child){text-align:right}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
        f"<p>Finished {escape(summary['finished_at'])}; audience <code>{escape(summary['audience'])}</code>.</p>",
    ]
    md = [f"# {title}", "", f"Finished {summary['finished_at']}; audience `{summary['audience']}`.", ""]
    for heading, header, rows, chart in sections:
        html += [
            f"<h2>{escape(heading)}</h2><table><tr>"
            + "".join(f"<th>{escape(h)}</th>" for h in header)
            + "</tr>"
        ]
        html += ["<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in rows]
        html += ["</table>", chart]
        md += [f"## {heading}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        md += ["| " + " | ".join(row) + " |" for row in rows] + [""]
    html.append("<h2>Files</h2><ul>")
    md += ["## Files", ""]
    for name, href in summary["files"].items():
        html.append(f'<li><a href="{escape(href)}">{escape(href)}</a> ({escape(name)})</li>')
        md.append(f"- [{href}]({href}) ({name})")
    html.append("</ul></body></html>")
    return "\n".join(html) + "\n", "\n".join(md) + "\n"


def write_report(
    run_dir: ObjectStoragePath, summary: dict[str, Any], history: list[dict[str, Any]]
) -> dict[str, str]:
    """Write ``report.html``, ``report.md`` and ``summary.json`` into ``run_dir``; returns their locations."""
    summary = {
        **summary,
        "files": {**{c: LIST_NAMES[c] for c in CHANNELS}, "report_md": MARKDOWN, "summary": SUMMARY},
    }
    html, markdown = render(summary, history)
    written = {}
    for name, text in (
        (HTML, html),
        (MARKDOWN, markdown),
        (SUMMARY, json.dumps(summary, indent=2, default=str)),
    ):
        with open_atomic(run_dir / name) as handle:
            handle.write(text)
        written[name] = str(run_dir / name)
    return written


def _when(finished_at: str) -> str:
    """A run's chart label: when it finished, to the minute (run ids are too long for a label)."""
    return str(finished_at)[:16].replace("T", " ")
