"""The preflight's pages on the Airflow API server (plugin, ``/kaleyra-preflight``): a run's report and
lists, and a DAG's runs. Airflow does not authenticate plugin routes: each checks the user's access to
the DAG itself. Files are read with the run's connection: users need neither a shell nor the store's keys."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any

from airflow.plugins_manager import AirflowPlugin
from fastapi import Depends, FastAPI, HTTPException, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from markupsafe import Markup, escape
from sqlalchemy import select

from airflow_provider_kaleyra.preflight import rendering, report
from airflow_provider_kaleyra.preflight.channels import CHANNELS, LIST_NAMES
from airflow_provider_kaleyra.preflight.files import safe_name
from airflow_provider_kaleyra.preflight.report import file_url
from airflow_provider_kaleyra.utils.storage import as_path

RUNS_SHOWN = 100
CHUNK = 1 << 20
MEDIA_TYPES = {".html": "text/html", ".md": "text/markdown", ".json": "application/json", ".csv": "text/csv"}
# the report has no script; inline SVG and styles only. Framed by the Airflow UI (external view) only.
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'self'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "private, no-store",
}
RUN_FILES = ((report.HTML, "report"), *((LIST_NAMES[c], rendering.LABELS[c]) for c in CHANNELS))
_bearer = HTTPBearer(auto_error=False)

app = FastAPI(title="Kaleyra campaign preflight reports", docs_url=None, redoc_url=None, openapi_url=None)


def may_read(entity: str) -> Any:
    """A route's guard, Airflow's own check: the user (UI session cookie or bearer JWT; else 401, or
    403 for a bad token) may read ``entity`` (``RUN``, ``TASK_INSTANCE``) of the path's DAG, else 403."""

    async def check(
        request: Request, bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
    ) -> None:
        from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
        from airflow.api_fastapi.core_api.security import get_user, requires_access_dag

        user = await get_user(request, None, bearer)  # then the permission (a database query) in a thread
        await run_in_threadpool(requires_access_dag("GET", DagAccessEntity[entity]), request, user)

    return Depends(check)


def _records(dag_id: str, run_id: str | None = None, task_id: str | None = None) -> list[Any]:
    """The report tasks' XCom records of a DAG, newest first (of one run and task when given)."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    query = select(XComModel).where(XComModel.dag_id == dag_id, XComModel.key == report.XCOM_KEY)
    if run_id is not None:
        query = query.where(XComModel.run_id == run_id, XComModel.task_id == task_id)
    with create_session() as session:
        rows = session.scalars(query.order_by(XComModel.timestamp.desc()).limit(RUNS_SHOWN)).all()
        return [(row.run_id, row.task_id, XComModel.deserialize_value(row)) for row in rows]


def _chunks(handle: Any) -> Iterator[bytes]:
    with handle:
        while block := handle.read(CHUNK):
            yield block


@app.get("/runs/{dag_id}/{run_id}/{task_id}/{name}", dependencies=[may_read("TASK_INSTANCE")])
def run_file(dag_id: str, run_id: str, task_id: str, name: str) -> Any:
    """One file of a run's folder: the report, its Markdown and JSON, or a channel list."""
    if name not in report.SERVED_FILES:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"No such preflight file: {name}")
    if not (found := _records(dag_id, run_id, task_id)):
        raise HTTPException(status.HTTP_404_NOT_FOUND, "No preflight report was recorded for this task")
    record = found[0][2]
    path = as_path(record["run_dir"], record.get("storage_conn_id")) / name
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"{name} is gone from the run folder") from None
    media, headers = MEDIA_TYPES[name[name.rindex(".") :]], dict(HEADERS)
    if media == "text/csv":
        headers["Content-Disposition"] = f'attachment; filename="{safe_name(f"{dag_id}_{run_id}_{name}")}"'
    return StreamingResponse(_chunks(handle), media_type=f"{media}; charset=utf-8", headers=headers)


def _mix_bar(rows: dict[str, int]) -> str:
    """The channel mix of one run as a stacked bar."""
    total, x, bar = sum(rows.values()) or 1, 0.0, ""
    for channel in CHANNELS:
        width = 240 * rows.get(channel, 0) / total
        bar += f'<rect x="{x:.1f}" width="{width:.1f}" height="16" fill="{rendering.COLOURS[channel]}">'
        bar += f"<title>{rendering.LABELS[channel]}: {rows.get(channel, 0):,}</title></rect>"
        x += width
    return f'<svg width="240" height="16" viewBox="0 0 240 16" style="min-width:240px" role="img" aria-label="channel mix">{bar}</svg>'


@app.get("/runs/{dag_id}", response_class=HTMLResponse, dependencies=[may_read("RUN")])
def dag_runs(dag_id: str) -> HTMLResponse:
    """A preflight DAG's runs: channel mix, RCS-capable share, links to each report; the trend."""
    if not (runs := _records(dag_id)):
        body = ["<p>No preflight report has been recorded for this DAG yet.</p>"]
        return HTMLResponse(rendering.html_page(f"Preflight runs of {dag_id}", body), headers=HEADERS)
    labels = rendering.distinct_labels([record for _, _, record in reversed(runs)])[::-1]
    table = []
    for label, (run_id, task_id, record) in zip(labels, runs):
        links = " · ".join(
            f'<a href="{escape(file_url(dag_id, run_id, task_id, name))}" target="_blank">{escape(text)}</a>'
            for name, text in RUN_FILES
        )
        rows, share = record["rows"], f"{100 * record['rcs_share']:.1f}%"
        table.append([label, run_id, f"{sum(rows.values()):,}", Markup(_mix_bar(rows)), share, Markup(links)])
    legend = " ".join(
        f'<span style="color:{rendering.COLOURS[c]}">&#9632;</span> {escape(rendering.LABELS[c])}'
        for c in CHANNELS
    )
    trend = [(label, record["rcs_share"]) for label, (_, _, record) in zip(labels, runs)]
    body = [
        f"<p>Newest first (the last {RUNS_SHOWN} at most). {legend}</p>",
        rendering.html_table(["finished", "run", "rows", "channel mix", "RCS-capable share", "files"], table),
        rendering.share_chart("run", trend[::-1]),
    ]
    return HTMLResponse(rendering.html_page(f"Preflight runs of {dag_id}", body), headers=HEADERS)


class KaleyraPreflightPlugin(AirflowPlugin):
    """Serves the preflight reports on the API server; adds a "Preflight runs" tab to each DAG."""

    name = "kaleyra_preflight"
    fastapi_apps = [{"app": app, "url_prefix": report.URL_PREFIX, "name": "Kaleyra preflight reports"}]
    external_views = [
        {
            "name": "Preflight runs",
            "href": f"{report.URL_PREFIX}/runs/{{DAG_ID}}",
            "destination": "dag",
            "url_route": "kaleyra-preflight-runs",
        }
    ]
