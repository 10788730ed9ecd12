"""The example DAGs: importable from any folder (no errors, no warnings, no work at parse time), documented,
triggerable from the UI with their defaults."""

from __future__ import annotations

import ast
import csv
import io
import shutil
import socket
import warnings
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_kaleyra.preflight.sample import generate_audience_rows

EXAMPLE_DAGS = Path(__file__).resolve().parents[1] / "example_dags"
CAMPAIGN = "example_kaleyra_campaign_preflight"
SOIP = "example_kaleyra_soip_check"


@pytest.fixture(scope="module")
def parsed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Copy the examples into a SUBFOLDER of a DAGs folder (the usual layout) and parse it as the DAG
    processor does, with warnings recorded and the network and the Airflow home watched."""
    from airflow.dag_processing.dagbag import DagBag

    home = tmp_path_factory.mktemp("airflow-home")
    dags = tmp_path_factory.mktemp("dags")
    shutil.copytree(EXAMPLE_DAGS, dags / "kaleyra", ignore=shutil.ignore_patterns("__pycache__"))
    connects: list[Any] = []
    real_connect = socket.socket.connect

    def spy_connect(self: socket.socket, address: Any) -> Any:
        connects.append(address)
        return real_connect(self, address)

    mp = pytest.MonkeyPatch()
    mp.setenv("AIRFLOW_HOME", str(home))
    mp.delenv("AIRFLOW_CONN_KALEYRA_DEFAULT", raising=False)
    mp.setattr(socket.socket, "connect", spy_connect)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            bag = DagBag(dag_folder=str(dags), safe_mode=False)
    finally:
        mp.undo()
    return {"bag": bag, "warnings": list(caught), "home": home, "connects": connects}


def test_every_example_dag_imports_from_a_subfolder_without_errors_or_warnings(
    parsed: dict[str, Any],
) -> None:
    bag = parsed["bag"]
    assert bag.import_errors == {}
    assert set(bag.dag_ids) == {CAMPAIGN, SOIP}
    shown = [f"{w.category.__name__}: {w.message} ({w.filename}:{w.lineno})" for w in parsed["warnings"]]
    assert shown == []
    assert not getattr(bag, "captured_warnings", {})


def test_parsing_does_no_work(parsed: dict[str, Any]) -> None:
    """No file written (no sample audience generated), no connection read, nothing sent over the network."""
    assert list(Path(parsed["home"]).rglob("*")) == []
    assert parsed["connects"] == []


@pytest.mark.parametrize("path", sorted(EXAMPLE_DAGS.glob("*.py")), ids=lambda p: p.name)
def test_examples_import_only_airflow_and_the_provider(path: Path) -> None:
    assert path.name.startswith("example_kaleyra_")
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "no relative imports"
            roots.add((node.module or "").split(".")[0])
    assert roots - {"__future__", "datetime", "json", "collections", "typing"} <= {
        "airflow",
        "airflow_provider_kaleyra",
    }


def test_the_preflight_dag_is_short() -> None:
    assert len((EXAMPLE_DAGS / f"{CAMPAIGN}.py").read_text().splitlines()) <= 100


@pytest.mark.parametrize("dag_id", [CAMPAIGN, SOIP])
def test_documented_and_triggerable_with_the_defaults(parsed: dict[str, Any], dag_id: str) -> None:
    from airflow.sdk.definitions.param import ParamsDict

    dag = parsed["bag"].dags[dag_id]
    assert dag.doc_md and dag.doc_md.lstrip().startswith("### Kaleyra")
    assert {"kaleyra", "example"} <= set(dag.tags)
    assert dag.description
    assert dag.params.validate()  # what the trigger form submits untouched
    ParamsDict({name: dag.params.get_param(name) for name in dag.params}).validate()
    for name in dag.params:
        param = dag.params.get_param(name)
        assert param.schema.get("title") or param.description, f"param {name} has no title"
        assert param.value != "", f"param {name}: an empty-string default shows as required in the UI"
        if param.value is None:
            assert "null" in param.schema["type"], f"param {name}: a None default needs a nullable type"


def test_campaign_preflight_shape(parsed: dict[str, Any]) -> None:
    dag = parsed["bag"].dags[CAMPAIGN]
    assert {"audience_location", "output_location", "storage_conn_id", "shard_count", "soip"} <= set(
        dag.params
    )
    # daily, and unpausing it from the Trigger form creates no run of a past day (only the one triggered)
    from airflow.serialization.encoders import coerce_to_core_timetable
    from airflow.timetables.base import TimeRestriction

    timetable = coerce_to_core_timetable(dag.timetable)  # what the scheduler runs
    assert dag.catchup is False and timetable.summary == "0 6 * * *"
    first = timetable.next_dagrun_info(
        last_automated_data_interval=None, restriction=TimeRestriction(dag.start_date, None, catchup=False)
    )
    assert first is not None and first.run_after > datetime.now(UTC)
    assert "**build_report**" in dag.doc_md and "**report**" not in dag.doc_md  # the docs name the tasks
    assert {t.task_id.removeprefix("preflight.") for t in dag.tasks} >= {
        "prepare",
        "channels",
        "build_report",
    }
    lookup = dag.get_task("preflight.rcs_lookup")
    assert lookup.is_mapped
    assert lookup.partial_kwargs["pool"] == "kaleyra_api"
    assert lookup.partial_kwargs["e164_input"] is True  # the shards read numbers prepare normalized
    assert dag.get_task("preflight.soip_wait").deferrable is True
    assert dag.get_task("preflight.soip_wait").soft_fail is True  # a timeout loses no row
    outlets = {asset.name for asset in dag.get_task("preflight.channels").outlets}
    assert outlets == {f"kaleyra_preflight.{name}" for name in ("rcs", "soip", "sms", "invalid")}
    order = [t.task_id for t in dag.topological_sort()]
    assert order[0] == "audience" and order[-1] == "preflight.build_report"
    assert (
        order.index("preflight.rcs_lookup")
        < order.index("preflight.soip_check")
        < order.index("preflight.channels")
    )


def test_soip_check_shape(parsed: dict[str, Any]) -> None:
    dag = parsed["bag"].dags[SOIP]
    assert {"numbers", "numbers_location", "callback_profile_id", "output_location"} <= set(dag.params)
    assert dag.get_task("wait_for_callbacks").deferrable is True
    assert dag.get_task("soip_check").kaleyra_conn_id == "kaleyra_default"
    # the numbers reach the operator as a file (its audience=), never as a list through XCom
    assert dag.get_task("soip_check").numbers is None and dag.get_task("soip_check").audience is not None
    assert "load_numbers" not in dag.task_ids


# -- the simulator's sample audience, which the example uses by default ---------------------------


def test_sample_audience_is_deterministic_messy_and_mostly_valid() -> None:
    from airflow_provider_kaleyra.numbers.normalize import normalize
    from airflow_provider_kaleyra.preflight.channels import region_of

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
    countries = Counter(region_of(n) for n in set(valid))
    assert countries["US"] > countries["IN"] > countries["GB"] > 0
    assert len({phone for _, phone, _ in rows if phone and not phone.strip().startswith("+")}) > 100


def test_sample_audience_survives_csv_round_trip() -> None:
    rows = list(generate_audience_rows(500, seed=1))
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(("customer_id", "phone", "segment"))
    writer.writerows(rows)
    buffer.seek(0)
    assert [tuple(r.values()) for r in csv.DictReader(buffer)] == rows
    assert all("\n" not in phone for _, phone, _ in rows)


def test_the_soip_samples_read_the_same_under_any_default_region(parsed: dict[str, Any]) -> None:
    """Each has its country code, so the README's one connection serves both examples (default_region US)."""
    from airflow_provider_kaleyra.numbers.normalize import normalize

    numbers = parsed["bag"].dags[SOIP].params.get_param("numbers").value
    assert all(normalize(n, None).e164 and normalize(n, None) == normalize(n, "US") for n in numbers)
