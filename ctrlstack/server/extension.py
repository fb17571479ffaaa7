"""Wiring of the server extension: one manager per server, routes under the base URL."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from jupyter_server.utils import url_path_join

from ctrlstack.hub.session import routes as session_routes
from ctrlstack.server.handlers import routes
from ctrlstack.server.manager import ClusterManager

__all__ = ["API_PATH", "load"]

API_PATH = "ctrlstack/api"


def load(server_app: Any) -> None:
    web_app = server_app.web_app
    manager = ClusterManager()
    web_app.settings["ctrlstack_manager"] = manager
    prefix = url_path_join(web_app.settings["base_url"], API_PATH)
    web_app.add_handlers(".*$", [*routes(prefix), *session_routes(prefix)])
    with contextlib.suppress(RuntimeError):  # no running loop yet: the first call imports
        asyncio.get_running_loop().create_task(manager.warm_up())
    server_app.log.info("ctrlstack: REST API at %s", prefix)
