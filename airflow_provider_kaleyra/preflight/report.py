"""Step 4 of a preflight: the report (HTML, Markdown, ``summary.json``) of one run.

``summary.json`` holds the run's figures; :mod:`.rendering` turns them into the report, and the
earlier runs' summaries under the same output folder give the trend.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from airflow.sdk import ObjectStoragePath

from airflow_provider_kaleyra.preflight.channels import CHANNELS, LIST_NAMES
from airflow_provider_kaleyra.preflight.records import ChannelResult, PreparedRun
from airflow_provider_kaleyra.preflight.rendering import rcs_share, render
from airflow_provider_kaleyra.utils.storage import open_atomic

log = logging.getLogger(__name__)

SUMMARY, HTML, MARKDOWN = "summary.json", "report.html", "report.md"
HISTORY_RUNS = 30
__all__ = ["HTML", "MARKDOWN", "SUMMARY", "load_history", "rcs_share", "run_summary", "write_report"]


def run_summary(
    run_id: str,
    finished_at: str,
    prepared: PreparedRun,
    decided: ChannelResult,
    api: dict[str, int],
    dag_id: str | None = None,
) -> dict[str, Any]:
    """What ``summary.json`` and the report hold: ``prepare``'s counts, ``channels``' decisions, API calls."""
    return {
        "dag_id": dag_id,
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
