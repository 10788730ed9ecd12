"""Serves the preflight views as the API server mounts them, with Airflow's SimpleAuthManager.

Run as a subprocess by ``tests/test_preflight_views.py`` (Airflow reads its home once per process),
against the metadata database a ``dag.test()`` run wrote to. Prints one JSON line once it listens:
the port, a JWT of a viewer and of a user without any role (both from the auth manager), and the
extra links the report task recorded. ``/test-login`` sets the UI's session cookie as Airflow's
login does, so a browser can follow a link like a signed-in user.
"""

from __future__ import annotations

import json
import os
import threading
import time

import uvicorn
from airflow.api_fastapi.app import init_auth_manager
from airflow.api_fastapi.auth.managers.base_auth_manager import COOKIE_NAME_JWT_TOKEN
from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
from airflow.models.xcom import XComModel
from airflow.utils.session import create_session
from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from sqlalchemy import select

from airflow_provider_kaleyra.preflight.views import KaleyraPreflightPlugin

root = FastAPI()
manager = init_auth_manager(root)
for entry in KaleyraPreflightPlugin.fastapi_apps:
    root.mount(entry["url_prefix"], entry["app"])  # as airflow.api_fastapi.app.init_plugins does


@root.get("/test-login")
def login(token: str, next: str) -> RedirectResponse:
    response = RedirectResponse(next)
    response.set_cookie(COOKIE_NAME_JWT_TOKEN, token, httponly=True, samesite="lax")
    return response


def main() -> None:
    server = uvicorn.Server(uvicorn.Config(root, host="127.0.0.1", port=0, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not (server.started and server.servers):
        time.sleep(0.05)
    with create_session() as session:
        links = [
            {"run_id": row.run_id, "key": row.key, "url": XComModel.deserialize_value(row)}
            for row in session.scalars(
                select(XComModel).where(
                    XComModel.key.like("_link_%"), XComModel.dag_id == os.environ["KALEYRA_VIEWS_DAG"]
                )
            )
        ]
    tokens = {
        "viewer": manager.generate_jwt(SimpleAuthManagerUser(username="viewer", role="viewer")),
        "no_role": manager.generate_jwt(SimpleAuthManagerUser(username="nobody", role=None)),
    }
    port = server.servers[0].sockets[0].getsockname()[1]
    print("PREFLIGHT-VIEWS " + json.dumps({"port": port, "tokens": tokens, "links": links}), flush=True)
    while server.started and not server.should_exit:
        time.sleep(0.5)


if __name__ == "__main__":
    main()
