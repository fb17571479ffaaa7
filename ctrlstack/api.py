"""The one public API: every door (CLI, notebook, JupyterLab extension, Hub) goes through here.

>>> import ctrlstack
>>> c = ctrlstack.launch("local", name="demo")      # doctest: +SKIP
>>> client = c.client()                              # doctest: +SKIP
>>> ctrlstack.clusters()                             # doctest: +SKIP
>>> with ctrlstack.cluster("local", workers=2) as client:   # doctest: +SKIP
...     client.submit(sum, [1, 2]).result()

Clusters live in their own supervisor process (see :mod:`ctrlstack.deploy.supervisor`); a
:class:`Cluster` handle is just a name, so handles can be recreated from any process (and any
host sharing the home directory) with :func:`get`.  Every cluster speaks TLS only; handles,
:func:`connect` and the CLI use the cluster's credentials from the owner's state dir.

This module decides nothing about lifecycle: it validates arguments and calls
:mod:`ctrlstack.deploy` (launcher, lifecycle, control).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import threading
from collections.abc import Iterator
from types import FrameType
from typing import TYPE_CHECKING, Any

from ctrlstack.config import get_profile, launch_timeout
from ctrlstack.deploy import control, lifecycle, waiting
from ctrlstack.deploy.launcher import start_supervisor
from ctrlstack.deploy.lifecycle import ClusterNotFoundError
from ctrlstack.deploy.registry import BrokenRecord, ClusterRecord, Registry, validate_name
from ctrlstack.deploy.status import ClusterStatus
from ctrlstack.errors import UserError
from ctrlstack.stacks import versions

if TYPE_CHECKING:
    from distributed import Client
    from distributed.security import Security

    from ctrlstack.topology.report import CrowdingReport

__all__ = [
    "Cluster",
    "ClusterInfo",
    "ClusterNotFoundError",
    "ClusterStatus",
    "cluster",
    "clusters",
    "connect",
    "crowding",
    "forget",
    "get",
    "launch",
    "logs",
    "stop",
]

#: ``clusters()`` rows used to be called ClusterInfo; the one status shape replaced them.
ClusterInfo = ClusterStatus


def _registry() -> Registry:
    return Registry()


class Cluster:
    """A handle on a running cluster; cheap, stateless apart from its name.

    Methods talk to the cluster's supervisor over TLS, so they work from any process of the
    same user, on any host that shares the home directory.
    """

    def __init__(self, name: str, *, registry: Registry | None = None) -> None:
        self.name = validate_name(name)
        self._registry = registry or _registry()
        self._client: Client | None = None

    # ---------------------------------------------------------------- facts
    @property
    def record(self) -> ClusterRecord:
        """The registry record, if the cluster is not known to be gone."""
        entry = self._registry.load(self.name)
        if isinstance(entry, BrokenRecord):
            status = lifecycle.judge(self._registry, entry)
            raise lifecycle.BrokenRecordError(status.message or entry.reason)
        if entry is None or (
            entry.local and lifecycle.judge(self._registry, entry).state == "dead"
        ):
            raise ClusterNotFoundError(
                f"no running cluster named {self.name!r}; see 'ctrlstack list'"
            )
        return entry

    @property
    def address(self) -> str:
        address = self.record.address
        if address is None:
            raise ClusterNotFoundError(f"cluster {self.name!r} is still starting")
        return address

    @property
    def security(self) -> Security:
        """The cluster's TLS settings (``distributed.security.Security``)."""
        return lifecycle.security(self._registry, self.name)

    @property
    def dashboard_link(self) -> str | None:
        return self.record.dashboard

    def _call(self, op: str, **kwargs: Any) -> Any:
        return control.call(self.address, op, security=self.security, **kwargs)

    def status(self) -> ClusterStatus:
        """Live status from the supervisor: workers with their CPUs, jobs, adapt range, ..."""
        return ClusterStatus.from_dict(self._call("ctrlstack_status"))

    # ---------------------------------------------------------------- actions
    def client(self, **kwargs: Any) -> Client:
        """A :class:`distributed.Client` connected to this cluster (reused on repeated calls)."""
        from distributed import Client

        if self._client is None or self._client.status in ("closed", "closing"):
            kwargs.setdefault("security", self.security)
            with versions.quiet_distributed():
                self._client = Client(self.address, **kwargs)
            versions.check_client(self._client, self.name)
        return self._client

    def scale(self, n: int) -> ClusterStatus:
        """Ask for ``n`` workers; raises ``PlanError`` (nothing changes) if they do not fit."""
        return ClusterStatus.from_dict(self._call("ctrlstack_scale", n=n))

    def adapt(self, minimum: int = 0, maximum: int | None = None) -> ClusterStatus:
        """Let the cluster scale itself between ``minimum`` and ``maximum`` workers."""
        return ClusterStatus.from_dict(
            self._call("ctrlstack_adapt", minimum=minimum, maximum=maximum)
        )

    def dask_env(self) -> dict[str, str]:
        """Environment variables that make a plain ``distributed.Client()`` in a child process
        connect to this cluster: the scheduler address and the TLS settings (paths only)."""
        from ctrlstack.deploy.security import Credentials

        env = Credentials.load(self._registry.tls_dir(self.name)).env()
        env["DASK_SCHEDULER_ADDRESS"] = self.address
        env["CTRLSTACK_CLUSTER"] = self.name
        return env

    def attach(self, pid: int) -> None:
        """Make local process ``pid`` stop with this ephemeral cluster's owner: if the owner dies,
        the supervisor gives it a grace period, then kills it (``ctrlstack run``'s script)."""
        from ctrlstack.deploy.procs import ProcessId

        ident = ProcessId.of(pid)
        if ident is None:
            raise ClusterNotFoundError(f"process {pid} does not run")
        self._call("ctrlstack_companion", process=ident.to_dict())

    def wait_for_workers(self, n: int, timeout: float = 60) -> None:
        self.client().wait_for_workers(n, timeout=timeout)

    def logs(self, lines: int = 200) -> str:
        """The last ``lines`` lines of the supervisor's log."""
        return logs(self.name, lines=lines)

    def stop(self, timeout: float = 30) -> None:
        """Stop the cluster and wait until its supervisor has exited."""
        if self._client is not None:  # first, or it would try to reconnect to a stopped scheduler
            with contextlib.suppress(Exception):
                self._client.close()
            self._client = None
        lifecycle.stop(self._registry, self.name, timeout=timeout)

    # ---------------------------------------------------------------- display
    def __repr__(self) -> str:
        record = self._registry.read(self.name)
        where = record.address if record else "gone"
        return f"<ctrlstack.Cluster {self.name!r} {where}>"

    def _repr_html_(self) -> str:
        from ctrlstack.display import status_html

        try:
            return status_html(self.status())
        except Exception as exc:  # noqa: BLE001 - a repr must never raise
            return status_html(ClusterStatus(name=self.name, state="unknown", message=str(exc)))


def launch(
    profile: str | None = None,
    *,
    name: str | None = None,
    wait: int | None = None,
    wait_timeout: float | None = None,
    **overrides: Any,
) -> Cluster:
    """Start a cluster from a named profile; it lives in its own supervisor process.

    ``overrides`` replace profile fields (``workers=4``, ``threads=8``, ``policy="numa"``) or
    settings of the profile's backend section.  Bad fields raise ``ConfigError``, plans that do
    not fit raise ``PlanError``, a taken name ``NameTakenError``, failed starts ``LaunchError``
    with the cause — in every case nothing is left running.

    ``wait=N`` blocks until N workers are connected (at most ``wait_timeout`` seconds, default
    ``ctrlstack.launch-timeout``).  A batch job that dies before its workers connect raises
    :class:`~ctrlstack.deploy.waiting.JobDiedError` at once, with the job's state, reason and
    log tail; the timeout raises :class:`~ctrlstack.deploy.waiting.WaitTimeoutError`.  Either
    way the cluster is stopped first: ``launch(wait=N)`` returns N workers or leaves nothing.
    """
    n = waiting.check_wait(wait)
    spec = get_profile(profile, **overrides)
    name = validate_name(name or f"{spec.profile}-{secrets.token_hex(3)}")
    registry = _registry()
    report = start_supervisor(name, spec, registry=registry, timeout=launch_timeout())
    handle = Cluster(name, registry=registry)
    if n is not None:
        try:
            if report.adapt is None and n > report.requested:
                raise UserError(
                    f"wait={n} is more than the {report.requested} workers cluster {name!r} "
                    "asks for; pass workers= as well, or a smaller wait"
                )
            waiting.wait_for_workers(
                handle.status, n, launch_timeout() if wait_timeout is None else wait_timeout
            )
        except BaseException as exc:
            with contextlib.suppress(Exception):
                handle.stop()
            if isinstance(exc, waiting.JobDiedError | waiting.WaitTimeoutError):
                raise type(exc)(f"{exc}\ncluster {name!r} was stopped") from None
            raise
    return handle


def get(name: str) -> Cluster:
    """A handle on the running cluster ``name`` (from any process of this user)."""
    handle = Cluster(name)
    handle.record  # noqa: B018 - raises ClusterNotFoundError when absent
    return handle


def connect(name: str, **kwargs: Any) -> Client:
    """A ``distributed.Client`` connected (over TLS) to the running cluster ``name``."""
    return get(name).client(**kwargs)


def clusters() -> list[ClusterStatus]:
    """Every cluster of this user, from the registry: ``running``/``starting`` here, ``remote``
    on another host, ``broken`` records; dead ones are reported once (``state="dead"``) and
    cleaned up."""
    return lifecycle.sweep(_registry())


def stop(name: str, *, timeout: float = 30, registry: Registry | None = None) -> None:
    """Stop cluster ``name``: ask its supervisor, then make sure nothing of it is left running."""
    lifecycle.stop(registry or _registry(), validate_name(name), timeout=timeout)


def forget(name: str) -> ClusterStatus:
    """Remove the record of a broken, dead or unreachable cluster (signals nothing)."""
    return lifecycle.forget(_registry(), validate_name(name))


def logs(name: str, *, lines: int = 200, job: str | None = None) -> str:
    """The last ``lines`` lines of cluster ``name``'s supervisor log (also after it stopped), or
    with ``job``, of that batch job's log (while the cluster's record exists)."""
    return lifecycle.log_tail(_registry(), validate_name(name), lines=lines, job=job)


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
