"""Thin REST handlers: parse the request, await the manager, write JSON.

Every route is a :class:`jupyter_server.base.handlers.APIHandler` behind
``@tornado.web.authenticated`` (token or login cookie; XSRF checked by the server for cookie
requests that change state).  Errors go through :func:`ctrlstack.errors.classify`: a user error
is a 4xx with the field at fault and what is allowed, a failure a 5xx with the message — never a
traceback (it goes to the server log).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Awaitable, Callable
from typing import Any

import tornado.web
from jupyter_server.base.handlers import APIHandler

from ctrlstack.errors import classify
from ctrlstack.server.manager import ClusterManager, RequestError
from ctrlstack.server.wire import error_body

__all__ = ["routes"]

NAME = r"(?P<name>[^/]+)"
_Method = Callable[..., Awaitable[None]]


def _reported(method: _Method) -> _Method:
    """Turn any exception of ``method`` into a JSON error with the status of the error table."""

    @functools.wraps(method)
    async def wrapper(self: _Base, *args: Any, **kwargs: Any) -> None:
        try:
            await method(self, *args, **kwargs)
        except tornado.web.HTTPError:
            raise
        except Exception as exc:  # noqa: BLE001 - the boundary: every error becomes JSON
            self._fail(exc)

    return wrapper


class _Base(APIHandler):
    @property
    def manager(self) -> ClusterManager:
        manager: ClusterManager = self.settings["ctrlstack_manager"]
        return manager

    def body(self) -> Any:
        if not self.request.body:
            return {}
        try:
            return json.loads(self.request.body)
        except ValueError as exc:
            raise RequestError(f"the request body is not JSON: {exc}") from None

    def send(self, data: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(data))

    def _fail(self, exc: Exception) -> None:
        if isinstance(exc, RequestError):
            self.send(error_body("user", str(exc), field=exc.field, allowed=exc.allowed), 400)
            return
        verdict = classify(exc)
        if verdict.kind == "failure":
            self.log.error("ctrlstack: %s failed", self.request.path, exc_info=exc)
        field = getattr(exc, "field", None)
        allowed = getattr(exc, "allowed", None)
        if verdict.http_status == 409 and field is None:
            field = "name"  # the only conflict a request can cause: the cluster name is taken
        self.send(
            error_body(
                verdict.kind,
                verdict.message,
                field=field if isinstance(field, str) else None,
                allowed=allowed if isinstance(allowed, str) else None,
            ),
            verdict.http_status,
        )


class ProfilesHandler(_Base):
    @tornado.web.authenticated
    @_reported
    async def get(self) -> None:
        self.send(await self.manager.profiles())


class ClustersHandler(_Base):
    @tornado.web.authenticated
    @_reported
    async def get(self) -> None:
        self.send(await self.manager.list())

    @tornado.web.authenticated
    @_reported
    async def post(self) -> None:
        self.send(await self.manager.create(self.body()), 201)


class ClusterHandler(_Base):
    @tornado.web.authenticated
    @_reported
    async def get(self, name: str) -> None:
        self.send(await self.manager.status(name))

    @tornado.web.authenticated
    @_reported
    async def delete(self, name: str) -> None:
        await self.manager.stop(name)
        self.set_status(204)
        self.finish()


class ScaleHandler(_Base):
    @tornado.web.authenticated
    @_reported
    async def post(self, name: str) -> None:
        self.send(await self.manager.scale(name, self.body()))


class AdaptHandler(_Base):
    @tornado.web.authenticated
    @_reported
    async def post(self, name: str) -> None:
        self.send(await self.manager.adapt(name, self.body()))


class ForgetHandler(_Base):
    @tornado.web.authenticated
    @_reported
    async def post(self, name: str) -> None:
        self.send(await self.manager.forget(name))


class LogsHandler(_Base):
    @tornado.web.authenticated
    @_reported
    async def get(self, name: str) -> None:
        text = await self.manager.logs(name, self.get_query_argument("lines", "200"))
        self.send({"name": name, "log": text})


class RunsHandler(_Base):
    @tornado.web.authenticated
    @_reported
    async def get(self) -> None:
        self.send(await self.manager.runs(self.get_query_argument("limit", "50")))


class TopologyHandler(_Base):
    @tornado.web.authenticated
    @_reported
    async def get(self) -> None:
        self.send(await self.manager.topology())


def routes(prefix: str) -> list[tuple[str, type[APIHandler]]]:
    """URL patterns under ``prefix`` (the server's base URL + ``ctrlstack/api``)."""
    return [
        (f"{prefix}/profiles", ProfilesHandler),
        (f"{prefix}/clusters", ClustersHandler),
        (f"{prefix}/clusters/{NAME}", ClusterHandler),
        (f"{prefix}/clusters/{NAME}/scale", ScaleHandler),
        (f"{prefix}/clusters/{NAME}/adapt", AdaptHandler),
        (f"{prefix}/clusters/{NAME}/logs", LogsHandler),
        (f"{prefix}/clusters/{NAME}/forget", ForgetHandler),
        (f"{prefix}/topology", TopologyHandler),
        (f"{prefix}/runs", RunsHandler),
    ]
