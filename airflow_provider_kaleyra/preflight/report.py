"""Step 4 of a preflight: the report (HTML, Markdown, ``summary.json``; the trend from the earlier
runs' summaries under the same output) and its operator, whose links open the files through the API
server (:mod:`.views`)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import attrs
from airflow.sdk import BaseOperator, BaseOperatorLink, ObjectStoragePath, XComArg, conf

from airflow_provider_kaleyra.preflight.channels import CHANNELS, LIST_NAMES
from airflow_provider_kaleyra.preflight.records import ChannelResult, PreparedRun
from airflow_provider_kaleyra.preflight.rendering import FILE_LABELS, rcs_share, render
from airflow_provider_kaleyra.utils.storage import as_path, open_atomic

if TYPE_CHECKING:
    from airflow_provider_kaleyra.operators.soip import SoipSubmission

log = logging.getLogger(__name__)
SUMMARY, HTML, MARKDOWN = "summary.json", "report.html", "report.md"
SERVED_FILES = (HTML, MARKDOWN, SUMMARY, *LIST_NAMES.values())
HISTORY_RUNS = 30
URL_PREFIX = "/kaleyra-preflight"  # where the plugin mounts the views on the API server
XCOM_KEY = "kaleyra_preflight_report"  # the task's record of its run folder, read by the views


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
        **{key: prepared[key] for key in ("audience", "counts", "invalid_reasons", "national")},
        "channels": {"rows": decided["rows"], "numbers": decided["numbers"]},
        **{key: decided[key] for key in ("reasons", "carriers", "countries")},
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
                run = {key: earlier[key] for key in ("run_id", "finished_at")}
                found.append({**run, "rcs_share": rcs_share(earlier)})
        except (OSError, ValueError, KeyError, TypeError):
            log.warning("Skipped an unreadable earlier summary: %s", path)
    return sorted(found, key=lambda item: item["finished_at"])[-limit:]


def write_report(
    run_dir: ObjectStoragePath, summary: dict[str, Any], history: list[dict[str, Any]]
) -> dict[str, str]:
    """Write ``report.html``, ``report.md`` and ``summary.json`` into ``run_dir``; returns their locations."""
    summary = {**summary, "files": {**LIST_NAMES, "report_md": MARKDOWN, "summary": SUMMARY}}
    html, markdown = render(summary, history)
    texts = {HTML: html, MARKDOWN: markdown, SUMMARY: json.dumps(summary, indent=2, default=str)}
    for name, text in texts.items():
        with open_atomic(run_dir / name) as handle:
            handle.write(text)
    return {name: str(run_dir / name) for name in texts}


def file_url(dag_id: str, run_id: str, task_id: str, name: str) -> str:
    """Where the API server serves a file of a preflight run (relative when ``[api] base_url`` is unset)."""
    base = (conf.get("api", "base_url", fallback="") or "").rstrip("/")
    parts = "/".join(quote(part, safe="") for part in (dag_id, run_id, task_id))
    return f"{base}{URL_PREFIX}/runs/{parts}/{name}"


@attrs.define
class PreflightFileLink(BaseOperatorLink):
    """A button on the report task opening one file of its run through the API server."""

    name: str
    file: str

    @property
    def xcom_key(self) -> str:
        return f"_link_kaleyra_preflight_{self.file}"

    def get_link(self, operator: BaseOperator, *, ti_key: Any) -> str:
        return file_url(ti_key.dag_id, ti_key.run_id, ti_key.task_id, self.file)


class KaleyraPreflightReportOperator(BaseOperator):
    """Writes the report from ``prepare``'s and ``channels``' records; the RCS shards' XCom summaries
    and the SOIP check's record (``None`` when skipped) give the request counts."""

    template_fields = ("prepared", "decided", "lookups", "submission")
    operator_extra_links = (
        PreflightFileLink("Preflight report", HTML),
        *(PreflightFileLink(FILE_LABELS[c], LIST_NAMES[c]) for c in CHANNELS),
    )

    def __init__(
        self,
        *,
        prepared: PreparedRun | XComArg,
        decided: ChannelResult | XComArg,
        lookups: Iterable[Mapping[str, Any]] | XComArg | None = None,
        submission: SoipSubmission | XComArg | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.prepared = prepared
        self.decided = decided
        self.lookups = lookups
        self.submission = submission

    def execute(self, context: Any) -> dict[str, Any]:
        storage = self.prepared["storage_conn_id"]
        run_dir = as_path(self.prepared["run_dir"], storage)
        api = {
            "rcs_requests": sum(int(s.get("requests") or 0) for s in self.lookups or []),
            "soip_requests": int((self.submission or {}).get("requests") or 0),
        }
        finished_at = datetime.now(UTC).isoformat(timespec="seconds")
        dag_id, run_id = context["dag"].dag_id, context["run_id"]
        summary = run_summary(run_id, finished_at, self.prepared, self.decided, api, dag_id=dag_id)
        written = write_report(run_dir, summary, load_history(run_dir.parent, run_id))
        self.log.info("Report: %s", written[HTML])
        self.log.info("Open it from the API server: %s", file_url(dag_id, run_id, self.task_id, HTML))
        rows, share = self.decided["rows"], rcs_share(summary)
        record = {"run_dir": str(run_dir), "storage_conn_id": storage, "finished_at": finished_at}
        context["ti"].xcom_push(key=XCOM_KEY, value={**record, "rows": rows, "rcs_share": share})
        return {"report": written[HTML], "channels": rows, "rcs_share": share}
