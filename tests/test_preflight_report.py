"""The preflight report: structure and numbers (not pixels), like-with-like charts, relative links, the trend."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from airflow_provider_kaleyra.preflight import rendering, report
from airflow_provider_kaleyra.utils.storage import as_path


def summary(run_id: str, rcs: int, finished: str = "2026-01-02T00:00:00+00:00") -> dict[str, Any]:
    return {
        "dag_id": "spring_campaign",
        "run_id": run_id,
        "finished_at": finished,
        "audience": "file:///data/a.csv",
        "counts": {"rows": 110, "invalid": 5, "duplicates": 5, "distinct": 100},
        "invalid_reasons": {"empty": 3, "not a valid number: too short": 2},
        "national": {
            "default_region": "US",
            "default_rows": 22,
            "by_region": {"US": 22, "IN": 8},
            "examples": ["617.4*****07 -> +1617*****07"],
        },
        "channels": {
            "rows": {"rcs": rcs + 2, "soip": 20, "sms": 83 - rcs, "none": 5},
            "numbers": {"rcs": rcs, "soip": 20, "sms": 80 - rcs},
        },
        "reasons": {
            "rcs_enabled": rcs + 2,
            "soip_capable": 20,
            "not_rcs_capable": 83 - rcs,
            "invalid: empty": 5,
        },
        "carriers": {"AT&T": {"numbers": 60, "rcs_capable": 30, "rcs_rate": 0.5}},
        "countries": {"US": {"numbers": 60, "rcs_capable": 30, "rcs_rate": 0.5}},
        "soip": {"asked": 40, "answered": 39},
        "api": {"rcs_requests": 7, "soip_requests": 1},
    }


def test_report_sections_numbers_and_links(tmp_path: Path) -> None:
    run_dir = as_path(str(tmp_path / "run-2"))
    history = [{"run_id": "run-1", "finished_at": "2026-01-01T00:00:00+00:00", "rcs_share": 0.25}]
    written = report.write_report(run_dir, summary("run-2", 30), history)
    html = Path(written["report.html"]).read_text()
    markdown = Path(written["report.md"]).read_text()
    saved = json.loads(Path(written["summary.json"]).read_text())

    for heading in (
        "Channel mix",
        "Why each row got its channel",
        "Numbers without a country code",
        "RCS reachability by carrier",
        "RCS reachability by country",
        "API calls",
        "Trend: RCS-capable share across runs",
    ):
        assert f"<h2>{heading}</h2>" in html and f"## {heading}" in markdown
    assert "| RCS | 32 | 29.1% | 30 |" in markdown  # rows, share of rows, distinct numbers side by side
    assert "| RCS lookups (bulk and single) | 7 |" in markdown
    assert "| 1 Jan 2026 00:00 UTC | run-1 | 25.0% |" in markdown
    assert "| 2 Jan 2026 00:00 UTC | run-2 (this run) | 30.0% |" in markdown
    assert "| read with the default region (US) | 22 | 20.0% of rows |" in markdown  # 22 of 110 rows
    assert "| read as IN | 8 | 7.3% of rows |" in markdown and "617.4*****07 -&gt; +1617*****07" in html
    assert "AT&amp;T" in html
    hrefs = re.findall(r'href="([^"]+)"', html)
    assert set(hrefs) == {"rcs.csv", "soip.csv", "sms.csv", "invalid.csv", "report.md", "summary.json"}
    assert all((tmp_path / "run-2" / h).exists() for h in ("report.md", "summary.json"))
    assert saved["files"]["rcs"] == "rcs.csv" and report.rcs_share(saved) == 0.3

    charts = [ET.fromstring(svg) for svg in re.findall(r"<svg.*?</svg>", html, re.S)]
    titles = [c.get("aria-label") for c in charts]
    assert titles[0] == "Channel of each audience row"  # rows only: the four channels sum to the rows
    bars = [
        int(t.text.split(": ")[1].replace(",", ""))
        for t in charts[0].iter("{http://www.w3.org/2000/svg}title")
    ]
    assert sum(bars) == 110
    assert all("share of distinct numbers" in t for t in titles[1:])  # rates of distinct numbers only


def test_trend_reads_earlier_runs_under_the_same_output(tmp_path: Path) -> None:
    base = as_path(str(tmp_path))
    for run_id, rcs, day in (("b", 40, "03"), ("a", 20, "01"), ("current", 50, "04")):
        report.write_report(base / run_id, summary(run_id, rcs, f"2026-01-{day}T00:00:00+00:00"), [])
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "summary.json").write_text("{not json")
    history = report.load_history(base, "current")
    assert [(h["run_id"], h["rcs_share"]) for h in history] == [("a", 0.2), ("b", 0.4)]
    assert report.load_history(as_path(str(tmp_path / "none")), "x") == []


def test_report_speaks_to_a_campaign_manager(tmp_path: Path) -> None:
    """A title with the DAG and the date, reasons under their channel, plain invalid reasons, file labels."""
    figures = summary("scheduled__2026-01-02T00:00:00+00:00", 30, "2026-01-02T14:05:09+00:00")
    figures["invalid_reasons"] = {
        "unparseable: The string supplied did not seem to be a phone number.": 3,
        "not a valid number: too short": 1,
    }
    written = report.write_report(as_path(str(tmp_path)), figures, [])
    html = Path(written["report.html"]).read_text()
    markdown = Path(written["report.md"]).read_text()

    assert "<title>spring_campaign: preflight of 2 Jan 2026 14:05 UTC</title>" in html
    assert markdown.startswith("# spring_campaign: preflight of 2 Jan 2026 14:05 UTC\n")
    assert "scheduled__2026-01-02" not in html.split("</h1>")[0]  # the run id is no title
    assert (
        "Of 110 audience rows, 32 to RCS (29.1%), 20 to SMS over IP (18.2%), 53 to SMS (48.2%); 5 are"
        in markdown
    )
    # every reason sits under the channel it leads to, with its share of that channel's rows
    assert "| RCS | Kaleyra says the number takes RCS | 32 | 100.0% |" in markdown
    assert "| SMS over IP | not RCS-capable; the SMS-over-IP check said capable | 20 | 100.0% |" in markdown
    assert (
        "| SMS | not RCS-capable (outside the SMS-over-IP countries, or that check off) | 53 | 100.0% |"
        in (markdown)
    )
    why = markdown.split("## Why each row got its channel")[1].split("##")[0].splitlines()
    invalid = [line for line in why if line.startswith("| none (invalid) |")]
    assert invalid == [
        "| none (invalid) | not a number (words or symbols) | 3 | 60.0% |",
        "| none (invalid) | not a valid number: too short | 1 | 20.0% |",
        "| none (invalid) | other reasons (see the invalid rows list) | 1 | 20.0% |",  # 5 invalid, 4 tallied
    ]
    links = {text: href for href, text in re.findall(r'<a href="([^"]+)">([^<]+)</a>', html)}
    assert links == {
        "RCS list, 32 rows": "rcs.csv",
        "SMS-over-IP list, 20 rows": "soip.csv",
        "SMS list, 53 rows": "sms.csv",
        "Invalid rows, 5 rows": "invalid.csv",
        "This report as Markdown": "report.md",
        "The figures as JSON (summary.json)": "summary.json",
    }
    assert "(none)" not in html and "(report_md)" not in html


def test_trend_labels_are_distinct_when_runs_finish_in_the_same_minute() -> None:
    runs = [
        {"finished_at": "2026-01-02T14:05:01+00:00"},
        {"finished_at": "2026-01-02T14:05:40+00:00"},
        {"finished_at": "2026-01-02T14:05:40+00:00"},
    ]
    assert rendering.distinct_labels(runs) == [
        "2 Jan 2026 14:05:01 UTC",
        "2 Jan 2026 14:05:40 UTC (1)",
        "2 Jan 2026 14:05:40 UTC (2)",
    ]
    assert rendering.distinct_labels(runs[:1] + [{"finished_at": "2026-01-02T14:06:00+00:00"}]) == [
        "2 Jan 2026 14:05 UTC",
        "2 Jan 2026 14:06 UTC",
    ]
    assert rendering.distinct_labels([{"finished_at": "now"}]) == ["now"]  # no timestamp: shown as it is
