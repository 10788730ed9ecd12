"""The example DAGs: they import cleanly (no errors, no warnings, no work at parse time) and are documented."""

from __future__ import annotations

import csv
import importlib.util
import io
import os
import socket
import sys
import warnings
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from airflow_provider_kaleyra.simulator import generate_audience_rows
from airflow_provider_kaleyra.utils.storage import as_path

EXAMPLE_DAGS = Path(__file__).resolve().parents[1] / "example_dags"
CAMPAIGN = "kaleyra_campaign_preflight"
SOIP = "kaleyra_soip_check"
REPORT = "campaign_report"  # the helpers shared by the example DAGs: a plain module, no DAG


@pytest.fixture(scope="module")
def parsed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Parse the folder as the DAG processor does, with warnings recorded and the network and home watched."""
    from airflow.dag_processing.dagbag import DagBag

    home = tmp_path_factory.mktemp("airflow-home")
    connects: list[Any] = []
    real_connect = socket.socket.connect

    def spy_connect(self: socket.socket, address: Any) -> Any:
        connects.append(address)
        return real_connect(self, address)

    mp = pytest.MonkeyPatch()
    mp.setenv("AIRFLOW_HOME", str(home))
    mp.delenv("AIRFLOW_CONN_KALEYRA_DEFAULT", raising=False)
    mp.setattr(socket.socket, "connect", spy_connect)
    # As Airflow does for its DAGs folder: the DAG files import campaign_report.py beside them.
    mp.syspath_prepend(str(EXAMPLE_DAGS))
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            bag = DagBag(dag_folder=str(EXAMPLE_DAGS), safe_mode=False)
    finally:
        mp.undo()
    return {"bag": bag, "warnings": list(caught), "home": home, "connects": connects}


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLE_DAGS / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # as an import does (dataclasses look their module up)
    spec.loader.exec_module(module)
    return module


def test_every_example_dag_imports_without_errors_or_warnings(parsed: dict[str, Any]) -> None:
    bag = parsed["bag"]
    assert bag.import_errors == {}
    assert set(bag.dag_ids) >= {CAMPAIGN, SOIP}
    shown = [f"{w.category.__name__}: {w.message} ({w.filename}:{w.lineno})" for w in parsed["warnings"]]
    assert shown == []
    captured = getattr(bag, "captured_warnings", {})
    assert not captured, captured


def test_parsing_does_no_work(parsed: dict[str, Any]) -> None:
    """No file written (no sample audience generated), no connection read, nothing sent over the network."""
    assert list(Path(parsed["home"]).rglob("*")) == []
    assert parsed["connects"] == []


@pytest.mark.parametrize("dag_id", [CAMPAIGN, SOIP])
def test_documented_tagged_and_parametrised(parsed: dict[str, Any], dag_id: str) -> None:
    dag = parsed["bag"].dags[dag_id]
    assert dag.doc_md and dag.doc_md.lstrip().startswith("### Kaleyra")
    assert {"kaleyra", "example"} <= set(dag.tags)
    assert dag.description
    dag.params.validate()  # the defaults are valid
    for name, param in dag.params.items():
        assert param.schema.get("title") or param.description, f"param {name} has no title"
    for task in dag.tasks:
        if hasattr(task, "kaleyra_conn_id"):
            assert task.kaleyra_conn_id == "kaleyra_default"
    assert all(
        task.partial_kwargs.get("kaleyra_conn_id", "kaleyra_default") == "kaleyra_default"
        for task in dag.tasks
        if hasattr(task, "partial_kwargs")
    )


def test_campaign_preflight_shape(parsed: dict[str, Any]) -> None:
    dag = parsed["bag"].dags[CAMPAIGN]
    assert {
        "audience_location",
        "output_location",
        "audience_size",
        "shard_count",
        "max_failed_ratio",
        "default_region",
        "storage_conn_id",
    } <= set(dag.params)
    assert dag.schedule == "@daily"
    assert dag.catchup is False
    lookup = dag.get_task("rcs_lookup")
    assert lookup.is_mapped
    assert lookup.partial_kwargs["pool"] == "kaleyra_api"
    assert lookup.partial_kwargs["kaleyra_conn_id"] == "kaleyra_default"
    assert [t.task_id for t in dag.topological_sort()] == [
        "ensure_audience",
        "prepare_audience",
        "rcs_lookup",
        "build_report",
    ]


def test_soip_check_shape(parsed: dict[str, Any]) -> None:
    dag = parsed["bag"].dags[SOIP]
    assert {"numbers", "numbers_location", "callback_profile_id", "output_location"} <= set(dag.params)
    sensor = dag.get_task("wait_for_callbacks")
    assert sensor.deferrable is True
    assert dag.get_task("soip_check").kaleyra_conn_id == "kaleyra_default"
    assert [t.task_id for t in dag.topological_sort()] == [
        "load_numbers",
        "soip_check",
        "wait_for_callbacks",
        "split_by_capability",
    ]


# -- the helpers of the example DAGs (campaign_report.py) and the simulator's sample audience ------


def test_sample_audience_is_deterministic_messy_and_mostly_valid() -> None:
    from airflow_provider_kaleyra.phone import normalize

    module = _load(REPORT)
    rows = list(generate_audience_rows(4000, seed=7))
    assert rows == list(generate_audience_rows(4000, seed=7))
    assert rows != list(generate_audience_rows(4000, seed=8))
    assert len({customer for customer, _, _ in rows}) == 4000
    normalized = [normalize(phone, "US").e164 for _, phone, _ in rows]
    invalid = normalized.count(None)
    valid = [n for n in normalized if n]
    duplicates = len(valid) - len(set(valid))
    assert 0.03 * 4000 < invalid < 0.07 * 4000
    assert 0.01 * 4000 < duplicates < 0.05 * 4000
    countries = Counter(module.country_of(n) for n in set(valid))
    assert countries["US"] > countries["IN"] > countries["GB"] > 0
    assert (
        len({phone for _, phone, _ in rows if phone and not phone.strip().startswith("+")}) > 100
    )  # messy formats


def test_sample_audience_survives_csv_round_trip() -> None:
    rows = list(generate_audience_rows(500, seed=1))
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(("customer_id", "phone", "segment"))
    writer.writerows(rows)
    buffer.seek(0)
    assert [tuple(r.values()) for r in csv.DictReader(buffer)] == rows
    assert all("\n" not in phone for _, phone, _ in rows)


def test_svg_chart_and_report_are_well_formed() -> None:
    module = _load(REPORT)
    svg = module.svg_bar_chart(
        "A <chart> & more", [("one", 3, "#111"), ("two & two", 0, "#222"), ("three", 12.5, "#333")]
    )
    root = ET.fromstring(svg)
    assert root.tag.endswith("svg")
    assert len([e for e in root.iter() if e.tag.endswith("rect")]) == 4  # background + three bars
    summary = {
        "run_id": "manual__2026-01-01T00:00:00+00:00",
        "finished_at": "2026-01-01T00:01:00+00:00",
        "audience": "file:///tmp/a.csv",
        "counts": {
            "rows": 10,
            "invalid": 1,
            "duplicates": 1,
            "distinct": 8,
            "rcs_capable": 5,
            "sms_fallback": 3,
            "failed": 1,
        },
        "carriers": {"AT&T": {"numbers": 8, "rcs_capable": 5, "rcs_rate": 0.625}},
        "countries": {"US": {"numbers": 8, "rcs_capable": 5, "rcs_rate": 0.625}},
        "invalid_reasons": {"empty": 1},
        "files": {"report_html": "file:///tmp/r.html"},
    }
    html, markdown, chart = module.render_report(summary)
    assert html.count("<svg") == 2 and "AT&amp;T" in html and "62.5%" in html
    assert "| RCS-capable | 5 | 62.5% of distinct |" in markdown
    ET.fromstring(chart)


def test_storage_paths_accept_urls_and_local_paths(tmp_path: Path) -> None:
    module = _load(REPORT)
    local = as_path(str(tmp_path / "x" / "y.csv"))
    assert str(local) == f"{tmp_path}/x/y.csv"
    module.write_csv(local, ("a",), [("1",), ("2",)])
    assert [r["a"] for r in module.read_csv(as_path(str(local)))] == ["1", "2"]
    assert [r["a"] for r in module.read_csv(as_path(f"file://{tmp_path}/x/y.csv"))] == ["1", "2"]
    assert os.path.exists(tmp_path / "x" / "y.csv")
