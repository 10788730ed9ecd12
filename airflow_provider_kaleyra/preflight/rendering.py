"""The preflight report as HTML and Markdown: what a campaign manager reads before sending. Charts
compare like with like: audience *rows* by channel, *distinct numbers* in the rates. A few bar charts
in hand-written SVG do not earn a chart library. Relative links: the folder can move."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from markupsafe import escape  # (Jinja's; leaves the Markup cells of the runs page as they are)

from airflow_provider_kaleyra.preflight.channels import CHANNELS, NONE

COLOURS = {"rcs": "#2e7d32", "soip": "#6a1b9a", "sms": "#1565c0", "none": "#c62828"}
LABELS = {"rcs": "RCS", "soip": "SMS over IP", "sms": "SMS", "none": "none (invalid)"}
FILE_LABELS = {
    "rcs": "RCS list",
    "soip": "SMS-over-IP list",
    "sms": "SMS list",
    "none": "Invalid rows",
    "report_md": "This report as Markdown",
    "summary": "The figures as JSON (summary.json)",
}
# why a row got its channel (the reason codes of ``channels.decide``), in plain words
REASONS = {
    "rcs_enabled": ("rcs", "Kaleyra says the number takes RCS"),
    "soip_capable": ("soip", "not RCS-capable; the SMS-over-IP check said capable"),
    "soip_not_capable": ("sms", "not RCS-capable; the SMS-over-IP check said not capable"),
    "soip_no_callback": ("sms", "not RCS-capable; no SMS-over-IP answer came in time"),
    "not_rcs_capable": ("sms", "not RCS-capable (outside the SMS-over-IP countries, or that check off)"),
    "lookup_failed": ("sms", "the RCS lookup failed: the number is valid, SMS still works"),
}
# phonenumbers' parse errors, as a campaign manager would say them
INVALID_WORDS = {
    "empty": "empty cell",
    "unparseable: The string supplied did not seem to be a phone number.": "not a number (words or symbols)",
    "unparseable: Could not interpret numbers after plus-sign.": "unknown country code after +",
    "unparseable: The string supplied is too long to be a phone number.": "too long to be a phone number",
    "unparseable: The string supplied is too short to be a phone number.": "too short to be a phone number",
    "no country code and no default region": "no country code, and the connection sets no default region",
}
STYLE = (
    "body{font-family:system-ui,sans-serif;margin:2em auto;max-width:62em;padding:0 1em;color:#222}"
    "h1{font-size:1.6em;margin-bottom:.2em}.sub{color:#555;margin-top:0}.lead{font-size:1.15em}"
    "table{border-collapse:collapse;margin:.5em 0 1em}td,th{border:1px solid #ccc;padding:3px 9px}"
    "th{background:#f4f4f4;text-align:left}td.n,td:first-child{white-space:nowrap}td.n{text-align:right}"
    "td.ch{font-weight:bold;vertical-align:top;border-left:6px solid var(--c)}svg{max-width:100%;height:auto}"
)
_NUMBER = re.compile(r"[\d,.]+%?( / [\d,]+)?|-")  # cells shown right-aligned
Section = tuple[str, list[str], list[list[str]], str]  # title, table header, table rows, SVG chart or ""


def svg_bar_chart(title: str, bars: list[tuple[str, float, str]], unit: str = "", scale: float = 0) -> str:
    """A horizontal bar chart as standalone SVG; ``bars`` are (label, value, colour); a full-width bar
    stands for ``scale`` (default: the largest value)."""
    width, bar_height, gap, label_width, top = 640, 24, 8, 190, 40
    height = top + len(bars) * (bar_height + gap) + 10
    plot = width - label_width - 100
    peak = scale or max((value for _, value, _ in bars), default=0) or 1
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


def share_chart(by: str, shares: Iterable[tuple[str, float]]) -> str:
    """RCS-capable shares (0..1) as a chart in percent, on a 0-100 scale."""
    bars = [(label, round(100 * share, 1), COLOURS["rcs"]) for label, share in shares]
    return svg_bar_chart(f"RCS-capable share of distinct numbers, by {by}", bars, "%", 100.0)


def when(finished_at: str, seconds: bool = False) -> str:
    """``2026-01-02T14:05:09+00:00`` as ``2 Jan 2026 14:05 UTC``; text that is no timestamp as it is."""
    try:
        moment = datetime.fromisoformat(str(finished_at))
    except ValueError:
        return str(finished_at)
    shown = moment.strftime("%H:%M:%S" if seconds else "%H:%M")
    return f"{moment.day} {moment:%b %Y} {shown} {moment.tzname() or ''}".strip()


def distinct_labels(runs: list[dict[str, Any]]) -> list[str]:
    """Chart labels for runs: when each finished, to the minute, more precise only where two collide."""
    labels = [when(r["finished_at"]) for r in runs]
    if len(set(labels)) < len(labels):
        labels = [when(r["finished_at"], seconds=True) for r in runs]
    repeated, seen = Counter(labels), Counter[str]()
    for index, label in enumerate(labels):
        if repeated[label] > 1:  # the same second: number them
            seen[label] += 1
            labels[index] = f"{label} ({seen[label]})"
    return labels


def rcs_share(summary: dict[str, Any]) -> float:
    """RCS-capable distinct numbers over distinct valid numbers."""
    distinct = summary["counts"]["distinct"]
    return summary["channels"]["numbers"].get("rcs", 0) / distinct if distinct else 0.0


def _pct(part: float, whole: float) -> str:
    return f"{100.0 * part / whole:.1f}%" if whole else "-"


def reason_rows(summary: dict[str, Any]) -> list[list[str]]:
    """[channel, why, rows, share of the channel's rows]: every reason under the channel it leads to."""
    reasons, invalid = summary["reasons"], summary["invalid_reasons"]
    found = [(*REASONS.get(code, ("sms", code)), n) for code, n in reasons.items() if code != "invalid"]
    found += [(NONE, INVALID_WORDS.get(reason, reason), n) for reason, n in invalid.items()]
    if (rest := summary["counts"]["invalid"] - sum(invalid.values())) > 0:
        found.append((NONE, "other reasons (see the invalid rows list)", rest))
    found.sort(key=lambda row: (CHANNELS.index(row[0]), -row[2]))  # (stable: equal counts keep their order)
    rows = summary["channels"]["rows"]
    return [[LABELS[c], words, f"{n:,}", _pct(n, rows.get(c, 0))] for c, words, n in found]


def _sections(summary: dict[str, Any], history: list[dict[str, Any]]) -> Iterable[Section]:
    counts, api, soip = summary["counts"], summary["api"], summary["soip"]
    rows, numbers = summary["channels"]["rows"], summary["channels"]["numbers"]

    def of_rows(label: str, count: int) -> list[str]:
        return [label, f"{count:,}", _pct(count, counts["rows"]) + " of rows"]

    mix = [
        [LABELS[c], f"{rows[c]:,}", _pct(rows[c], counts["rows"]), f"{numbers[c]:,}" if c in numbers else "-"]
        for c in CHANNELS
    ]
    chart = svg_bar_chart(
        "Channel of each audience row", [(LABELS[c], rows[c], COLOURS[c]) for c in CHANNELS]
    )
    yield "Channel mix", ["channel", "rows", "share of rows", "distinct numbers"], mix, chart
    audience = [
        ["audience rows", f"{counts['rows']:,}", ""],
        of_rows("duplicate rows (a number seen earlier)", counts["duplicates"]),
        of_rows("invalid rows", counts["invalid"]),
        ["distinct valid numbers", f"{counts['distinct']:,}", ""],
    ]
    yield "Audience", ["", "count", "share"], audience, ""
    national = summary["national"]
    read_as = [
        of_rows(f"read with the default region ({national['default_region']})", national["default_rows"]),
        *(of_rows(f"read as {region}", n) for region, n in national["by_region"].items()),
        *(["example (masked)", example, ""] for example in national["examples"]),
    ]
    yield "Numbers without a country code", ["", "rows", "share"], read_as, ""
    why = ["channel", "why", "rows", "share of the channel"]  # (grouped by channel: see render)
    yield "Why each row got its channel", why, reason_rows(summary), ""
    for by, key in (("carrier", "carriers"), ("country", "countries")):
        rates = [
            [name, f"{r['numbers']:,}", f"{r['rcs_capable']:,}", f"{100 * r['rcs_rate']:.1f}%"]
            for name, r in summary[key].items()
        ]
        chart = share_chart(by, [(n, r["rcs_rate"]) for n, r in list(summary[key].items())[:15]])
        yield f"RCS reachability by {by}", ["", "distinct numbers", "RCS-capable", "share"], rates, chart
    calls = [
        ["RCS lookups (bulk and single)", f"{api['rcs_requests']:,}"],
        ["SMS-over-IP capability checks", f"{api['soip_requests']:,}"],
        ["SMS-over-IP numbers asked / answered by callback", f"{soip['asked']:,} / {soip['answered']:,}"],
    ]
    yield "API calls", ["", "requests"], calls, ""
    this_run = {"run_id": f"{summary['run_id']} (this run)", "finished_at": summary["finished_at"]}
    trend = [*history, {**this_run, "rcs_share": rcs_share(summary)}]
    labels = distinct_labels(trend)
    yield (
        "Trend: RCS-capable share across runs",
        ["finished", "run", "RCS-capable share of distinct numbers"],
        [[label, t["run_id"], f"{100 * t['rcs_share']:.1f}%"] for label, t in zip(labels, trend)],
        share_chart("run", [(label, t["rcs_share"]) for label, t in zip(labels, trend)]),
    )


def html_page(heading: str, body: Iterable[str]) -> str:
    """A whole page in the report's style (also the runs page's)."""
    head = f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{escape(heading)}</title>"
    style = f"<meta name=viewport content='width=device-width'><style>{STYLE}</style></head><body>"
    return f"{head}\n{style}\n<h1>{escape(heading)}</h1>" + "\n".join(body) + "</body></html>\n"


def html_table(header: list[str], rows: list[list[str]], grouped: bool = False) -> str:
    """A table; ``grouped``: the first column (a channel) spans the rows of its group, in its colour."""
    colour = {LABELS[c]: COLOURS[c] for c in CHANNELS}
    lines = ["<table><tr>" + "".join(f"<th>{escape(h)}</th>" for h in header)]
    for index, row in enumerate(rows):
        cells = "".join(
            f"<td{' class=n' if _NUMBER.fullmatch(c) else ''}>{escape(c)}</td>" for c in row[grouped:]
        )
        if grouped and not (index and rows[index - 1][0] == row[0]):
            span = sum(1 for other in rows[index:] if other[0] == row[0])
            cells = f'<td class=ch rowspan={span} style="--c:{colour.get(row[0], "#999")}">{escape(row[0])}</td>{cells}'
        lines.append(f"<tr>{cells}</tr>")
    return "\n".join([*lines, "</table>"])


def render(summary: dict[str, Any], history: list[dict[str, Any]]) -> tuple[str, str]:
    """(HTML, Markdown) of a run's summary; ``history`` from ``report.load_history``."""
    # the title names the DAG and when the run finished, not the run id
    heading = f"{summary.get('dag_id') or 'Kaleyra campaign'}: preflight of {when(summary['finished_at'])}"
    counted, total = summary["channels"]["rows"], summary["counts"]["rows"]
    parts = [f"{counted[c]:,} to {LABELS[c]} ({_pct(counted[c], total)})" for c in CHANNELS if c != NONE]
    invalid = f"{counted[NONE]:,} are not phone numbers ({_pct(counted[NONE], total)})"
    lead = f"Of {total:,} audience rows, " + ", ".join(parts) + f"; {invalid}."
    sub = f"Run {summary['run_id']}, finished {when(summary['finished_at'])}; audience {summary['audience']}."
    html = [f"<p class=sub>{escape(sub)}</p>", f"<p class=lead>{escape(lead)}</p>"]
    md = [f"# {heading}", "", sub, "", lead, ""]
    for name, header, rows, chart in _sections(summary, history):
        html += [f"<h2>{escape(name)}</h2>" + html_table(header, rows, grouped=header[1] == "why"), chart]
        md += [f"## {name}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        md += ["| " + " | ".join(row) + " |" for row in rows] + [""]
    html.append("<h2>Files</h2><ul>")
    md += ["## Files", ""]
    for key, href in summary["files"].items():
        label = FILE_LABELS.get(key, key) + (f", {counted[key]:,} rows" if key in counted else "")
        html.append(f'<li><a href="{escape(href)}">{escape(label)}</a> <code>{escape(href)}</code></li>')
        md.append(f"- [{label}]({href})")
    return html_page(heading, [*html, "</ul>"]), "\n".join(md) + "\n"
