"""The package registers as an Airflow provider with a real connection form."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import resources

import jsonschema
import pytest

from airflow_provider_kaleyra.client.config import KaleyraConfig
from airflow_provider_kaleyra.get_provider_info import CONN_FIELDS, get_provider_info


def test_provider_info_validates_against_airflows_schema():
    schema = json.loads((resources.files("airflow") / "provider_info.schema.json").read_text())
    jsonschema.validate(get_provider_info(), schema)


def test_every_module_named_in_provider_info_imports():
    info = get_provider_info()
    modules = [m for entry in info["triggers"] for m in entry["python-modules"]]
    modules += [conn["hook-class-name"].rpartition(".")[0] for conn in info["connection-types"]]
    code = "import importlib,sys\nfor m in sys.argv[1:]: importlib.import_module(m)"
    subprocess.run([sys.executable, "-c", code, *modules], check=True)


def test_connection_form_lists_every_extra_the_config_reads():
    extras = set(KaleyraConfig.__dataclass_fields__) - {"sid", "api_key", "retry_backoff"}
    assert extras == set(CONN_FIELDS)
    assert CONN_FIELDS["callback_secret"]["schema"]["format"] == "password"
    assert CONN_FIELDS["callback_client_secret"]["schema"]["format"] == "password"


def test_connection_form_offers_every_pod_with_its_hosts_and_says_what_to_set(monkeypatch):
    pod = CONN_FIELDS["pod"]
    assert [p for p in pod["schema"]["enum"] if p] == ["na", "in", "eu", "sg"]
    for host in ("rcs-api.na.kaleyra.io", "rcs-api.in.kaleyra.io", "api.eu.kaleyra.io", "api.ap.kaleyra.io"):
        assert host in pod["description"]
    assert "sg: RCS none published, set RCS base URL" in pod["description"]

    from airflow_provider_kaleyra.hooks.kaleyra import KaleyraHook

    conn = {"conn_type": "kaleyra", "login": "AC-1", "password": "key-1", "extra": {"pod": "eu"}}
    monkeypatch.setenv("AIRFLOW_CONN_KALEYRA_EU", json.dumps(conn))
    hook = KaleyraHook("kaleyra_eu")
    assert (hook.config.rcs_base_url, hook.config.soip_base_url) == ("", "https://api.eu.kaleyra.io")
    with pytest.raises(ValueError, match="no RCS host for pod 'eu'.*set the connection's rcs_base_url"):
        hook.lookup_rcs("+14155552671")
    assert hook.transport.requests_sent == 0
    conn["extra"] = {"pod": "sg", "rcs_base_url": "https://rcs.example.test/"}
    monkeypatch.setenv("AIRFLOW_CONN_KALEYRA_SG", json.dumps(conn))
    config = KaleyraHook("kaleyra_sg").config
    assert (config.rcs_base_url, config.soip_base_url) == (
        "https://rcs.example.test",
        "https://api.ap.kaleyra.io",
    )


def test_airflow_sees_the_provider_and_its_connection_form():
    code = """
import json
from airflow.providers_manager import ProvidersManager
pm = ProvidersManager()
info = pm.providers["airflow-provider-kaleyra"]
pm._load_ui_metadata() if hasattr(pm, "_load_ui_metadata") else None
widgets = [k for k in pm.connection_form_widgets if k.startswith("extra__kaleyra__")]
behaviour = pm.field_behaviours.get("kaleyra")
print(json.dumps({"version": info.version, "widgets": sorted(widgets), "behaviour": behaviour,
                  "hook": pm.hooks["kaleyra"].hook_class_name}))
"""
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    seen = json.loads(out.strip().splitlines()[-1])
    assert seen["hook"] == "airflow_provider_kaleyra.hooks.kaleyra.KaleyraHook"
    assert "extra__kaleyra__default_region" in seen["widgets"]
    assert "extra__kaleyra__callback_secret" in seen["widgets"]
    assert {"host", "port", "schema", "extra"} <= set(seen["behaviour"]["hidden_fields"])
    assert seen["behaviour"]["relabeling"] == {"login": "Account SID", "password": "API key"}


def test_airflow_providers_list_shows_the_package():
    out = subprocess.run(
        [sys.executable, "-m", "airflow", "providers", "list", "--output", "json"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    packages = {p["package_name"] for p in json.loads(out[out.index("[") :])}
    assert "airflow-provider-kaleyra" in packages
