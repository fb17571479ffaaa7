"""An asyncio manager over the public API for the Jupyter server (no web framework here).

Why threads: every call of :mod:`ctrlstack.api` blocks (a launch waits up to the launch timeout
for the scheduler, a stop waits for the supervisor to exit, a batch backend runs ``sbatch``).
Run on the server's event loop they would freeze JupyterLab for everyone, so each call runs in
an executor.  Two pools: quick reads (list, status, topology) never queue behind slow actions
(launch, stop), so the sidebar keeps refreshing while a launch is under way.

Clusters live in their supervisors and the per-user registry, not here: the manager holds no
cluster state, so clusters started from a notebook, a script or the CLI appear, and a restarted
Jupyter server loses none.
"""

from __future__ import annotations

import asyncio
import builtins
import functools
import math
import re
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from ctrlstack.deploy.status import ClusterStatus
from ctrlstack.forms import NOT_OVERRIDABLE
from ctrlstack.server.cache import Fresh
from ctrlstack.server.channels import Channels
from ctrlstack.server.wire import as_status

__all__ = ["ClusterManager", "RequestError"]

_T = TypeVar("_T")
#: Reads (list, status) older than this start a refresh in the background (``cache.Fresh``).
READ_TTL = 1.0
#: ... and are still answered from memory up to this age (a sidebar polls every 1-5 s; one
#: that was hidden for longer waits for a fresh answer).
READ_STALE = 15.0
_NAME = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,62}\Z")


class RequestError(ValueError):
    """A REST request is malformed (before any API call): 400 with the field at fault."""

    def __init__(self, message: str, *, field: str | None = None, allowed: str | None = None):
        super().__init__(message)
        self.field = field
        self.allowed = allowed


def _api() -> Any:
    import ctrlstack.api

    return ctrlstack.api


class ClusterManager:
    """Async facade of :mod:`ctrlstack.api`; every method returns JSON-ready data."""

    def __init__(self, *, fast_workers: int = 4, slow_workers: int = 4) -> None:
        self._fast = ThreadPoolExecutor(fast_workers, thread_name_prefix="ctrlstack-read")
        self._slow = ThreadPoolExecutor(slow_workers, thread_name_prefix="ctrlstack-act")
        self._launching: set[str] = set()
        self._rows: Fresh[list[ClusterStatus]] = Fresh(READ_TTL, READ_STALE)
        self._status: Fresh[ClusterStatus] = Fresh(READ_TTL, READ_STALE)
        self._channels = Channels()

    async def _run(self, pool: ThreadPoolExecutor, fn: Callable[..., _T], *args: Any) -> _T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(pool, functools.partial(fn, *args))

    def close(self) -> None:
        self._fast.shutdown(wait=False, cancel_futures=True)
        self._slow.shutdown(wait=False, cancel_futures=True)
        self._channels.close()

    async def warm_up(self) -> None:
        """Import the API and distributed in a thread, so the first launch does not stall."""
        await self._run(self._fast, _warm)

    # ------------------------------------------------------------------ reads
    async def profiles(self) -> dict[str, Any]:
        return await self._run(self._fast, _profiles)

    async def _list(self) -> list[ClusterStatus]:
        return await self._rows.get("", lambda: self._run(self._fast, _list))

    async def _live(self, name: str) -> ClusterStatus:
        return await self._status.get(
            name, lambda: self._run(self._fast, _status, self._channels, name)
        )

    async def list(self) -> list[dict[str, Any]]:
        return [row.to_dict() for row in await self._list()]

    async def status(self, name: str) -> dict[str, Any]:
        _check_name(name)
        return (await self._live(name)).to_dict()

    async def logs(self, name: str, lines: Any = 200) -> str:
        _check_name(name)
        n = _int(lines, "lines", minimum=1, maximum=10_000)
        return await self._run(self._fast, _logs, name, n)

    async def runs(self, limit: Any = 50) -> builtins.list[dict[str, Any]]:
        """This user's submitted runs (``ctrlstack submit``), newest first, at most ``limit``."""
        n = _int(limit, "limit", minimum=1, maximum=1000)
        return await self._run(self._fast, _runs, n)

    async def topology(self) -> dict[str, Any]:
        """Occupancy, asking every running cluster's supervisor at once (in the read pool)."""
        names = [r.name for r in await self._list() if r.state in ("running", "starting")]
        found = await asyncio.gather(*(self._live(n) for n in names), return_exceptions=True)
        statuses = {
            n: (s if isinstance(s, ClusterStatus) else None)
            for n, s in zip(names, found, strict=True)
        }
        return await self._run(self._fast, _topology, statuses)

    # ------------------------------------------------------------------ actions
    async def create(self, body: Any) -> dict[str, Any]:
        """Launch from ``{"profile": str, "name": str|null, "overrides": {field: value}}``.

        The profile and overrides are checked before anything starts (a bad field is a 400 and
        no process is spawned); the launch itself runs in the slow pool.
        """
        if not isinstance(body, Mapping):
            raise RequestError("the request body must be a JSON object", field=None)
        unknown = sorted(set(body) - {"profile", "name", "overrides"})
        if unknown:
            raise RequestError(
                f"unknown key {unknown[0]!r}", field=unknown[0], allowed="profile, name, overrides"
            )
        profile = body.get("profile")
        if not isinstance(profile, str) or not profile:
            raise RequestError("profile must be a profile name", field="profile")
        name = body.get("name")
        if name is not None:
            _check_name(name, field="name")
        overrides = _overrides(body.get("overrides") or {})
        await self._run(self._fast, _check_profile, profile, overrides)
        if name is not None:
            if name in self._launching:
                raise _name_taken(name)
            self._launching.add(name)
        try:
            status = await self._run(self._slow, _launch, profile, name, overrides)
        finally:
            if name is not None:
                self._launching.discard(name)
        self._rows.forget()
        self._status.put(status.name, status)
        return status.to_dict()

    async def scale(self, name: str, body: Any) -> dict[str, Any]:
        _check_name(name)
        n = _int(_field(body, "workers"), "workers", minimum=0, maximum=100_000)
        self._status.forget(name)
        status = await self._run(self._slow, _scale, name, n)
        self._status.put(name, status)
        return status.to_dict()

    async def adapt(self, name: str, body: Any) -> dict[str, Any]:
        _check_name(name)
        minimum = _int(_field(body, "minimum", 0), "minimum", minimum=0, maximum=100_000)
        raw_max = _field(body, "maximum", None)
        maximum = None if raw_max is None else _int(raw_max, "maximum", minimum=1, maximum=100_000)
        if maximum is not None and maximum < minimum:
            raise RequestError(
                f"maximum {maximum} is below minimum {minimum}",
                field="maximum",
                allowed=">= minimum",
            )
        self._status.forget(name)
        status = await self._run(self._slow, _adapt, name, minimum, maximum)
        self._status.put(name, status)
        return status.to_dict()

    async def forget(self, name: str) -> dict[str, Any]:
        """Drop the record of a broken, dead or unreachable cluster (409 while it runs)."""
        _check_name(name)
        try:
            return (await self._run(self._slow, _forget, name)).to_dict()
        finally:
            self._channels.forget(name)
            self._status.forget(name)
            self._rows.forget()

    async def stop(self, name: str) -> None:
        _check_name(name)
        try:
            await self._run(self._slow, _stop, name)
        finally:
            self._channels.forget(name)
            self._status.forget(name)
            self._rows.forget()


# ---------------------------------------------------------------------- request checks
def _check_name(name: Any, field: str = "name") -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise RequestError(
            f"cluster name {name!r} is not allowed",
            field=field,
            allowed="1-63 letters, digits, '.', '_' or '-', starting with a letter or digit",
        )
    return name


def _field(body: Any, key: str, default: Any = ...) -> Any:
    if not isinstance(body, Mapping):
        raise RequestError("the request body must be a JSON object")
    if key not in body:
        if default is ...:
            raise RequestError(f"{key} is required", field=key)
        return default
    return body[key]


def _int(value: Any, field: str, *, minimum: int, maximum: int) -> int:
    """An integer in range; JSON numbers like 2.0 are fine, ``true`` and 1e30 are not."""
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise RequestError(
            f"{field} = {value!r} is not allowed",
            field=field,
            allowed=f"an integer from {minimum} to {maximum}",
        )
    return value


def _overrides(raw: Any) -> dict[str, Any]:
    """Form fields (YAML spelling, ``task-threads``) to API keyword names (``task_threads``)."""
    if not isinstance(raw, Mapping):
        raise RequestError("overrides must be an object of field: value", field="overrides")
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if not isinstance(key, str) or key in NOT_OVERRIDABLE:
            raise RequestError(
                f"field {key!r} cannot be set at launch",
                field=str(key),
                allowed="a profile field other than " + ", ".join(NOT_OVERRIDABLE),
            )
        out[key.replace("-", "_")] = value
    return out


def _name_taken(name: str) -> Exception:
    from ctrlstack.errors import ConflictError

    return ConflictError(f"a cluster named {name!r} is already being launched")


# ---------------------------------------------------------------------- blocking bodies
def _warm() -> None:
    import distributed  # noqa: F401

    _api()


def _profiles() -> dict[str, Any]:
    from ctrlstack.forms import profiles

    return profiles()


def _check_profile(profile: str, overrides: dict[str, Any]) -> None:
    """Resolve the profile with its overrides (no side effects); errors name the field."""
    from ctrlstack.config import ConfigError, get_profile

    try:
        get_profile(profile, **overrides)
    except ConfigError as exc:
        if exc.field is None and getattr(exc, "value", None) == profile:
            exc.field = "profile"  # an unknown profile: the form's profile selector is at fault
        raise


def _list() -> list[ClusterStatus]:
    return [as_status(row) for row in _api().clusters()]


def _status(channels: Channels, name: str) -> ClusterStatus:
    """``Cluster.status()`` over the cluster's long-lived control connection."""
    handle = _api().get(name)
    return as_status(channels.call(name, handle.address, handle.security, "ctrlstack_status"))


def _launch(profile: str, name: str | None, overrides: dict[str, Any]) -> ClusterStatus:
    return as_status(_api().launch(profile, name=name, **overrides).status())


def _scale(name: str, n: int) -> ClusterStatus:
    return as_status(_api().get(name).scale(n))


def _adapt(name: str, minimum: int, maximum: int | None) -> ClusterStatus:
    return as_status(_api().get(name).adapt(minimum=minimum, maximum=maximum))


def _forget(name: str) -> ClusterStatus:
    return as_status(_api().forget(name))


def _stop(name: str) -> None:
    _api().stop(name)


def _logs(name: str, lines: int) -> str:
    text: str = _api().logs(name, lines=lines)
    return text


def _runs(limit: int) -> list[dict[str, Any]]:
    from ctrlstack.runs import list_runs
    from ctrlstack.server.wire import run_row

    return [run_row(r) for r in reversed(list_runs()[-limit:])]


def _topology(statuses: dict[str, ClusterStatus | None]) -> dict[str, Any]:
    from ctrlstack.occupancy import occupancy

    return occupancy(statuses)
