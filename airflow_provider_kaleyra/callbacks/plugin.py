"""Mounts the callback receiver on the API server under ``/kaleyra``; it reads nothing until a callback."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from airflow_provider_kaleyra.callbacks.receiver import URL_PREFIX, create_app

app = create_app()


class KaleyraCallbackPlugin(AirflowPlugin):
    """Receives Kaleyra SOIP callbacks at ``<api-server>/kaleyra/soip/callback``."""

    name = "kaleyra_callbacks"
    fastapi_apps = [{"app": app, "url_prefix": URL_PREFIX, "name": "Kaleyra SOIP callback receiver"}]
