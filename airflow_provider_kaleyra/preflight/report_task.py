"""The preflight's report task: an operator, so that the task carries links to its report and lists.

The links open the files through the API server (the provider's plugin, :mod:`.views`), which reads
them from wherever the run wrote them (``file://``, ``s3://`` ...) and checks the user's access to
the DAG first. A user needs no shell on the workers and no credentials of the store.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import attrs
from airflow.sdk import BaseOperator, BaseOperatorLink, XComArg, conf

from airflow_provider_kaleyra.operators.soip import SoipSubmission
from airflow_provider_kaleyra.preflight import rendering, report
from airflow_provider_kaleyra.preflight.channels import CHANNELS, LIST_NAMES
from airflow_provider_kaleyra.preflight.records import ChannelResult, LookupSummary, PreparedRun, ReportResult
from airflow_provider_kaleyra.utils.storage import as_path

URL_PREFIX = "/kaleyra-preflight"  # where the plugin mounts the views on the API server
XCOM_KEY = "kaleyra_preflight_report"  # the task's record of its run folder, read by the views
SERVED_FILES = (report.HTML, report.MARKDOWN, report.SUMMARY, *LIST_NAMES.values())


def file_url(dag_id: str, run_id: str, task_id: str, name: str) -> str:
    """Where the API server serves a file of a preflight run (relative when ``[api] base_url`` is unset)."""
    base = (conf.get("api", "base_url", fallback="") or "").rstrip("/")
    parts = "/".join(quote(part, safe="") for part in (dag_id, run_id, task_id))
    return f"{base}{URL_PREFIX}/runs/{parts}/{name}"


@attrs.define
class PreflightFileLink(BaseOperatorLink):
    """A button on the report task opening one file of its run through the API server."""

    label: str
    file: str

    @property
    def name(self) -> str:
        return self.label

    @property
    def xcom_key(self) -> str:
        return f"_link_kaleyra_preflight_{self.file}"

    def get_link(self, operator: BaseOperator, *, ti_key: Any) -> str:
        return file_url(ti_key.dag_id, ti_key.run_id, ti_key.task_id, self.file)


LINKS = (
    PreflightFileLink("Preflight report", report.HTML),
    *(PreflightFileLink(rendering.FILE_LABELS[c], LIST_NAMES[c]) for c in CHANNELS),
)


class KaleyraPreflightReportOperator(BaseOperator):
    """Writes ``report.html``, ``report.md`` and ``summary.json``, with the trend of earlier runs.

    :param prepared: ``prepare``'s record (:class:`~.records.PreparedRun`).
    :param decided: ``channels``' record (:class:`~.records.ChannelResult`).
    :param lookups: the RCS shards' summaries (for the request counts), or ``None``.
    :param submission: the SOIP check's record, or ``None`` when the leg was skipped.
    """

    template_fields = ("prepared", "decided", "lookups", "submission")
    operator_extra_links = LINKS

    def __init__(
        self,
        *,
        prepared: PreparedRun | XComArg,
        decided: ChannelResult | XComArg,
        lookups: Iterable[LookupSummary] | XComArg | None = None,
        submission: SoipSubmission | XComArg | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.prepared = prepared
        self.decided = decided
        self.lookups = lookups
        self.submission = submission

    def execute(self, context: Any) -> ReportResult:
        prepared, decided = self.prepared, self.decided
        storage = prepared["storage_conn_id"]
        run_dir = as_path(prepared["run_dir"], storage)
        api = {
            "rcs_requests": sum(int(s.get("requests") or 0) for s in self.lookups or []),
            "soip_requests": int((self.submission or {}).get("requests") or 0),
        }
        finished_at = datetime.now(UTC).isoformat(timespec="seconds")
        dag_id, run_id = context["dag"].dag_id, context["run_id"]
        summary = report.run_summary(run_id, finished_at, prepared, decided, api, dag_id=dag_id)
        history = report.load_history(run_dir.parent, run_id)
        written = report.write_report(run_dir, summary, history)
        self.log.info("Report: %s", written[report.HTML])
        self.log.info("Open it from the API server: %s", file_url(dag_id, run_id, self.task_id, report.HTML))
        context["ti"].xcom_push(
            key=XCOM_KEY,
            value={
                "run_dir": str(run_dir),
                "storage_conn_id": storage,
                "finished_at": finished_at,
                "rows": summary["channels"]["rows"],
                "distinct": summary["counts"]["distinct"],
                "rcs_share": report.rcs_share(summary),
            },
        )
        return {
            "report": written[report.HTML],
            "channels": decided["rows"],
            "rcs_share": report.rcs_share(summary),
        }
