"""The one public API: every door (CLI, notebook, JupyterLab extension, Hub) goes through here.

>>> import ctrlstack
>>> c = ctrlstack.launch("local", name="demo")      # doctest: +SKIP
>>> client = c.client()                              # doctest: +SKIP
>>> ctrlstack.clusters()                             # doctest: +SKIP
>>> with ctrlstack.cluster("local", workers=2) as client:   # doctest: +SKIP
...     client.submit(sum, [1, 2]).result()

Clusters live in their own supervisor process (see :mod:`ctrlstack.deploy.supervisor`); a
:class:`Cluster` handle is just a name plus the registry record, so handles can be recreated from
any process with :func:`get`.
"""

from __future__ import annotations

import contextlib
import html
import os
import secrets
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING, Any

import psutil

from ctrlstack.config import get_profile, launch_timeout
from ctrlstack.deploy import control
from ctrlstack.deploy.launcher import start_supervisor
from ctrlstack.deploy.registry import ClusterRecord, Registry, validate_name

if TYPE_CHECKING:
    from distributed import Client

    from ctrlstack.topology.report import CrowdingReport

__all__ = [
    "Cluster",
    "ClusterInfo",
    "ClusterNotFoundError",
    "cluster",
    "clusters",
    "connect",
    "crowding",
    "get",
    "launch",
    "stop",
]


class ClusterNotFoundError(LookupError):
    """No live cluster of that name is registered for this user."""


@dataclass(frozen=True)
class ClusterInfo:
    """One row of :func:`clusters`: what the registry (and, if alive, the supervisor) says."""

    name: str
    profile: str
    backend: str
    state: str
    address: str | None
    dashboard: str | None
    workers: int
    pid: int | None
    created: float
    ephemeral: bool

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _registry() -> Registry:
    return Registry()


class Cluster:
    """A handle on a running cluster; cheap, stateless apart from its name.

    Methods talk to the cluster's supervisor, so they work from any process of the same user.
    """

    def __init__(self, name: str, *, registry: Registry | None = None) -> None:
        self.name = validate_name(name)
        self._registry = registry or _registry()
        self._client: Client | None = None

    # ---------------------------------------------------------------- facts
    @property
    def record(self) -> ClusterRecord:
        record = self._registry.read(self.name)
        if record is None or record.state == "dead" or not record.is_alive():
            raise ClusterNotFoundError(
                f"no running cluster named {self.name!r}; see 'ctrlstack list'"
            )
        return record

    @property
    def address(self) -> str:
        address = self.record.address
        if address is None:
            raise ClusterNotFoundError(f"cluster {self.name!r} is still starting")
        return address

    @property
    def dashboard_link(self) -> str | None:
        return self.record.dashboard

    def status(self) -> dict[str, Any]:
        """Live status from the supervisor: workers, slots, adapt range, ..."""
        result: dict[str, Any] = control.call(self.address, "ctrlstack_status")
        return result

    # ---------------------------------------------------------------- actions
    def client(self, **kwargs: Any) -> Client:
        """A :class:`distributed.Client` connected to this cluster (reused on repeated calls)."""
        from distributed import Client

        if self._client is None or self._client.status in ("closed", "closing"):
            self._client = Client(self.address, **kwargs)
        return self._client

    def scale(self, n: int) -> dict[str, Any]:
        """Ask for ``n`` workers; raises ``PlanError`` (nothing changes) if they do not fit."""
        result: dict[str, Any] = control.call(self.address, "ctrlstack_scale", n=n)
        return result

    def adapt(self, minimum: int = 0, maximum: int | None = None) -> dict[str, Any]:
        """Let the cluster scale itself between ``minimum`` and ``maximum`` workers."""
        result: dict[str, Any] = control.call(
            self.address, "ctrlstack_adapt", minimum=minimum, maximum=maximum
        )
        return result

    def wait_for_workers(self, n: int, timeout: float = 60) -> None:
        self.client().wait_for_workers(n, timeout=timeout)

    def stop(self, timeout: float = 30) -> None:
        """Stop the cluster and wait until its supervisor has exited."""
        if self._client is not None:  # first, or it would try to reconnect to a stopped scheduler
            with contextlib.suppress(Exception):
                self._client.close()
            self._client = None
        stop(self.name, timeout=timeout, registry=self._registry)

    # ---------------------------------------------------------------- display
    def __repr__(self) -> str:
        record = self._registry.read(self.name)
        where = record.address if record else "gone"
        return f"<ctrlstack.Cluster {self.name!r} {where}>"

    def _repr_html_(self) -> str:
        try:
            s = self.status()
        except (ClusterNotFoundError, control.ClusterUnreachableError) as exc:
            return f"<b>ctrlstack cluster {html.escape(self.name)}</b>: {html.escape(str(exc))}"
        dash = s.get("dashboard")
        dash_html = (
            f'<a href="{html.escape(dash)}" target="_blank">{html.escape(dash)}</a>'
            if dash
            else "off"
        )
        rows = "".join(
            f"<tr><td>{html.escape(str(w))}</td><td>{html.escape(c or 'unpinned')}</td></tr>"
            for w, c in s["slots"].items()
        )
        return (
            f"<div><b>ctrlstack cluster {html.escape(self.name)}</b> "
            f"(profile {html.escape(s['profile'])}, policy {html.escape(s['policy'])})<br>"
            f"scheduler {html.escape(s['address'])}, dashboard {dash_html}<br>"
            f"workers {s['workers']}/{s['requested']} (max {s['max_workers']}), "
            f"{s['threads']} CPUs × {s['task_threads']} task threads each"
            f"<table><tr><th>worker</th><th>CPUs</th></tr>{rows}</table></div>"
        )


def launch(
    profile: str | None = None,
    *,
    name: str | None = None,
    **overrides: Any,
) -> Cluster:
    """Start a cluster from a named profile; it lives in its own supervisor process.

    ``overrides`` replace profile fields (``workers=4``, ``threads=8``, ``policy="numa"``).
    Bad fields raise ``ConfigError``, plans that do not fit raise ``PlanError``, failed starts
    raise ``LaunchError`` with the cause — in every case nothing is left running.
    """
    spec = get_profile(profile, **overrides)
    name = validate_name(name or f"{spec.profile}-{secrets.token_hex(3)}")
    registry = _registry()
    start_supervisor(name, spec, registry=registry, timeout=launch_timeout())
    return Cluster(name, registry=registry)


def get(name: str) -> Cluster:
    """A handle on the running cluster ``name`` (from any process of this user)."""
    handle = Cluster(name)
    handle.record  # noqa: B018 - raises ClusterNotFoundError when absent
    return handle


def connect(name: str, **kwargs: Any) -> Client:
    """A ``distributed.Client`` connected to the running cluster ``name``."""
    return get(name).client(**kwargs)


def clusters() -> list[ClusterInfo]:
    """Every cluster of this user; dead ones are reported once (``state="dead"``) and cleaned up."""
    return [
        ClusterInfo(
            name=r.name,
            profile=r.profile,
            backend=r.backend,
            state=r.state,
            address=r.address,
            dashboard=r.dashboard,
            workers=r.workers,
            pid=r.pid,
            created=r.created,
            ephemeral=r.ephemeral,
        )
        for r in _registry().sweep()
    ]


def stop(name: str, *, timeout: float = 30, registry: Registry | None = None) -> None:
    """Stop cluster ``name``: ask its supervisor, then make sure nothing of it is left running."""
    registry = registry or _registry()
    record = registry.read(name)
    if record is None:
        raise ClusterNotFoundError(f"no cluster named {name!r}; see 'ctrlstack list'")
    proc = record.supervisor()
    if proc is not None and record.address:
        with contextlib.suppress(control.ClusterUnreachableError):
            control.call(record.address, "ctrlstack_stop")
        _wait_gone(record, timeout)
    if record.supervisor() is not None:
        with contextlib.suppress(psutil.Error):
            record.supervisor().terminate()  # type: ignore[union-attr]
        _wait_gone(record, 5)
    record.reap()
    registry.remove(name)


def _wait_gone(record: ClusterRecord, timeout: float) -> bool:
    """Wait until the supervisor has exited; a zombie counts as exited.

    ``psutil.Process.wait`` would also wait for the zombie to be reaped, which is up to whoever
    adopted the double-forked supervisor (init, or a slow container PID 1).
    """
    deadline = time.monotonic() + timeout
    while record.supervisor() is not None:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@contextlib.contextmanager
def cluster(
    profile: str | None = None, *, name: str | None = None, **overrides: Any
) -> Iterator[Client]:
    """An ephemeral cluster for a script: yields a connected client, stops on any exit.

    The cluster is stopped when the block exits normally, raises, or the process receives SIGTERM
    (turned into ``SystemExit(143)``, also while the cluster is still starting).  A SIGTERM that
    arrives while the cluster is being stopped is held back until the stop is done.  If this
    process is killed outright, the supervisor notices its owner is gone and stops by itself.
    """
    spec = get_profile(profile, **overrides)
    name = validate_name(name or f"run-{os.getpid()}-{secrets.token_hex(2)}")
    registry = _registry()
    guard = _SigtermToExit()
    guard.install()
    try:
        # A SIGTERM during the start raises SystemExit inside start_supervisor, whose clean-up
        # kills the half-started supervisor and releases the name.
        start_supervisor(name, spec, registry=registry, timeout=launch_timeout(), ephemeral=True)
        handle = Cluster(name, registry=registry)
        try:
            yield handle.client()
        finally:
            guard.cleaning = True
            handle.stop()
    finally:
        guard.restore()
        if guard.deferred is not None:
            raise SystemExit(128 + guard.deferred)


class _SigtermToExit:
    """SIGTERM -> ``SystemExit(128 + signum)`` in the main thread, with a protected clean-up.

    Why: Python's default SIGTERM action kills the process without running ``finally`` blocks, so
    a script stopped by Slurm or systemd would leave its cluster to the owner watchdog.  Once
    clean-up has begun (``cleaning``), further SIGTERMs (schedulers often send several) are only
    remembered in ``deferred``: raising again would cut the cluster's stop short.
    """

    def __init__(self) -> None:
        self.active = threading.current_thread() is threading.main_thread()
        self.previous: Any = None
        self.cleaning = False
        self.deferred: int | None = None

    def install(self) -> None:
        if self.active:
            self.previous = signal.getsignal(signal.SIGTERM)
            signal.signal(signal.SIGTERM, self._handler)

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        if self.cleaning:
            self.deferred = signum
            return
        self.cleaning = True  # the SystemExit below starts the clean-up
        raise SystemExit(128 + signum)

    def restore(self) -> None:
        if self.active:
            # getsignal() returns None for a handler installed from C: fall back to the default.
            previous = signal.SIG_DFL if self.previous is None else self.previous
            signal.signal(signal.SIGTERM, previous)


def crowding(client: Client) -> CrowdingReport:
    """Where each worker's threads really run, per L3 domain (see ``ctrlstack.topology.report``)."""
    from ctrlstack.topology.report import crowding as _crowding

    return _crowding(client)
