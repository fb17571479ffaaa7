"""The supervisor: one small process per cluster that owns its scheduler and workers.

Why a separate process: a cluster must outlive whatever asked for it — a notebook kernel that is
restarted, a Jupyter server that is stopped, a CLI command that returns.  The supervisor is started
in its own session (process group), so signals to the caller's terminal do not reach it and a
dead supervisor's leftovers can be found by process group.

Control goes over the scheduler's own comm: the supervisor registers ``ctrlstack_*`` handlers on
its in-process scheduler, so ``scale``/``adapt``/``status``/``stop`` need nothing but the address
already in the registry — no second port, no second protocol.

Start-up handshake: the launcher passes the write end of a pipe (``--ready-fd``); the supervisor
writes exactly one JSON line, ``{"ok": true, ...}`` once the cluster runs and the registry record
says so, or ``{"ok": false, "error": ...}`` with the cause.  The launcher therefore never hangs on
a failed start and always sees why it failed.

Registry record: the supervisor is the only process that updates its record once it runs.  It
writes its own identity (pid, start time, host, boot id) and process group *first thing*, before
the (slow) cluster start, so from then on liveness is judged by the process itself and never by
the launcher's "starting" grace period, which a long ``launch-timeout`` could outlast.  It also
keeps a second copy in its pid file, and rewrites its record whenever it finds it missing or
damaged, so a truncated record never leaves a running cluster untracked.

Backends: the supervisor knows none by name.  It asks :func:`~ctrlstack.deploy.backends.
backend_class` for the profile's backend and goes through the :class:`~ctrlstack.deploy.
backends.Backend` protocol for start, status, scale checks, polling and clean-up.  Every
cluster speaks TLS with the credentials the launcher created in the cluster's private dir.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ctrlstack.config import ClusterSpec
from ctrlstack.deploy import procs
from ctrlstack.deploy.backends import Backend, backend_class
from ctrlstack.deploy.registry import ClusterRecord, Registry
from ctrlstack.deploy.security import Credentials
from ctrlstack.deploy.status import AdaptRange, ClusterStatus, WorkerStatus
from ctrlstack.errors import UserError

if TYPE_CHECKING:
    from distributed import SpecCluster

logger = logging.getLogger("ctrlstack.supervisor")

#: How often the supervisor checks its owner (ephemeral clusters) and its scheduler.
WATCH_INTERVAL = 0.5

#: How often it polls its backend and checks that its registry record is intact.
POLL_INTERVAL = 2.0

#: Seconds a companion process (``ctrlstack run``'s script) gets after its owner died before
#: SIGKILL; the same grace ``ctrlstack run`` itself gives its script on SIGTERM.
COMPANION_GRACE = 10.0


async def _awaitable(result: Any) -> None:
    """Await what ``SpecCluster.close()`` returns in asynchronous mode (typed as optional)."""
    if result is not None:
        await result


def _write_ready(fd: int | None, message: dict[str, Any], path: str | None = None) -> None:
    """Report to the launcher: one JSON line on the pipe, or (a supervisor job, whose launcher
    may be on another host) a 0600 file in the cluster's private dir, written atomically."""
    if path is not None:
        from ctrlstack.deploy.registry import write_private

        try:
            write_private(Path(path), message)
        except OSError:
            logger.exception("could not write the ready report %s", path)
    if fd is None:
        return
    try:
        with contextlib.suppress(OSError):
            os.write(fd, (json.dumps(message) + "\n").encode())
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)


class Supervisor:
    """Runs one cluster until told to stop; see the module docstring."""

    def __init__(
        self,
        name: str,
        spec: ClusterSpec,
        registry: Registry,
        *,
        owner: procs.ProcessId | None = None,
        job_id: str | None = None,
    ) -> None:
        self.name = name
        #: The Slurm job this supervisor runs as (``slurm.supervisor.where: job``), else None.
        self.job_id = job_id
        self.spec = spec
        self.registry = registry
        #: Ephemeral clusters: the process that asked; when it is gone, the cluster stops.
        self.owner = owner
        self.me = procs.ProcessId.current()
        self.created = time.time()
        credentials = Credentials.load(registry.tls_dir(name))
        self.security = credentials.security()
        self.backend: Backend = backend_class(spec.backend)(
            spec,
            cluster_name=name,
            security=self.security,
            workdir=registry.cluster_dir(name),
        )
        self.cluster: SpecCluster | None = None
        self.stopping = asyncio.Event()
        self.adapt_range: tuple[int, int] | None = None
        self._state = "starting"
        #: Processes that must not outlive the owner (``ctrlstack run``'s script).
        self.companions: list[procs.ProcessId] = []
        #: The launcher's reservation (owner, log path, creation time), read in register().
        self._base: ClusterRecord | None = None

    # ---------------------------------------------------------------- lifecycle
    def owner_gone(self) -> bool:
        """For ephemeral clusters: has the process that asked for the cluster exited?"""
        return self.owner is not None and self.owner.process() is None

    async def start(self) -> None:
        self.cluster = await self.backend.create()
        scheduler = self.cluster.scheduler
        assert scheduler is not None
        scheduler.handlers.update(
            {
                "ctrlstack_status": self.handle_status,
                "ctrlstack_scale": self.handle_scale,
                "ctrlstack_adapt": self.handle_adapt,
                "ctrlstack_stop": self.handle_stop,
                "ctrlstack_companion": self.handle_companion,
            }
        )
        if self.spec.adapt is not None:
            self._adapt(*self.spec.adapt)
        self._state = "running"
        self._update_record()

    def _scheduler_closed(self) -> bool:
        scheduler = self.cluster.scheduler if self.cluster is not None else None
        return scheduler is None or scheduler.status.name in ("closing", "closed", "failed")

    def _idle_for(self, idle_since: float | None) -> float | None:
        """Start of the current idle stretch (no tasks, no clients), or None while busy."""
        scheduler = self.cluster.scheduler if self.cluster is not None else None
        if scheduler is None:
            return idle_since
        busy = bool(scheduler.tasks) or bool(scheduler.clients.keys() - {"fire-and-forget"})
        return None if busy else (idle_since or time.monotonic())

    async def run_until_stopped(self) -> None:
        assert self.cluster is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.add_signal_handler(sig, self.stopping.set)
        idle_since: float | None = None
        next_poll = time.monotonic() + POLL_INTERVAL
        while not self.stopping.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), WATCH_INTERVAL)
            if self.owner_gone():
                logger.info("owner process %s is gone; stopping", self.owner)
                await self._stop_companions()
                break
            if self._scheduler_closed():
                logger.info("scheduler closed; stopping")
                break
            if self.spec.idle_timeout is not None:
                idle_since = self._idle_for(idle_since)
                if (
                    idle_since is not None
                    and time.monotonic() - idle_since > self.spec.idle_timeout
                ):
                    logger.info("idle for %s s; stopping", self.spec.idle_timeout)
                    break
            if time.monotonic() >= next_poll:
                next_poll = time.monotonic() + POLL_INTERVAL
                await self._poll()

    async def _stop_companions(self) -> None:
        """Stop companions that outlive the owner: they got SIGTERM from the kernel (parent-death
        signal) when the owner died; whatever still runs after the grace is killed."""
        alive = [p for p in (c.process() for c in self.companions) if p is not None]
        if alive:
            logger.info("stopping %d companion process(es) of the dead owner", len(alive))
            await asyncio.to_thread(lambda: [procs.terminate(p, COMPANION_GRACE) for p in alive])

    async def _poll(self) -> None:
        """Refresh the backend's view and keep the record intact and current."""
        try:
            await self.backend.poll()
        except Exception:
            logger.exception("backend poll failed")
        current = self.registry.load(self.name)
        expected = self._record()
        if not isinstance(current, ClusterRecord) or current.to_dict() != expected.to_dict():
            if current is not None and not isinstance(current, ClusterRecord):
                logger.warning("registry record of %s was damaged; rewriting it", self.name)
            self._write_record(expected)

    async def close(self) -> None:
        logger.info("cluster %s stopping", self.name)
        self._state = "stopping"
        self._update_record()
        await self.close_cluster()
        self.registry.remove(self.name, supervisor=self.me)

    async def close_cluster(self, timeout: float = 30) -> None:
        """Close scheduler and workers, then let the backend clean up; bounded, so a hung close
        must not keep the supervisor up."""
        if self.cluster is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(_awaitable(self.cluster.close()), timeout)
        try:
            await asyncio.wait_for(self.backend.cleanup(), timeout)
        except Exception:
            logger.exception("backend clean-up failed")

    # ---------------------------------------------------------------- status
    def status(self) -> ClusterStatus:
        cluster = self.cluster
        assert cluster is not None
        assert cluster.scheduler is not None
        scheduler = cluster.scheduler
        report = self.backend.report()
        connected = {str(ws.name): ws for ws in scheduler.workers.values()}
        workers: list[WorkerStatus] = []
        for worker in report.workers:
            ws = connected.pop(worker.name, None)
            if ws is not None:
                worker.state = "running"
                worker.address = ws.address
                worker.host = ws.host
                worker.task_threads = ws.nthreads
                worker.memory_limit = ws.memory_limit or None
            workers.append(worker)
        for wname, ws in connected.items():  # workers the backend did not plan by name
            workers.append(
                WorkerStatus(
                    name=wname,
                    address=ws.address,
                    host=ws.host,
                    task_threads=ws.nthreads,
                    memory_limit=ws.memory_limit or None,
                )
            )
        base = self._base
        return ClusterStatus(
            name=self.name,
            profile=self.spec.profile,
            backend=self.spec.backend,
            state=self._state,
            owner=base.owner if base is not None else None,
            host=self.me.host,
            created=self.created,
            ephemeral=self.owner is not None,
            address=scheduler.address,
            dashboard=cluster.dashboard_link if self.spec.dashboard else None,
            pid=self.me.pid,
            connected=len(scheduler.workers),
            requested=report.requested,
            max_workers=report.max_workers,
            threads=report.threads,
            task_threads=report.task_threads,
            policy=report.policy,
            pinned=report.pinned,
            adapt=None if self.adapt_range is None else AdaptRange(*self.adapt_range),
            workers=workers,
            jobs=report.jobs,
            log=base.log if base is not None else None,
        )

    # ---------------------------------------------------------------- handlers
    async def handle_status(self) -> dict[str, Any]:
        return self.status().to_dict()

    async def handle_scale(self, n: Any) -> dict[str, Any]:
        assert self.cluster is not None
        _check_count("number of workers", n)
        self.backend.check_scale(n)  # raises before anything changes
        if self.adapt_range is not None:
            self._stop_adaptive()  # an explicit scale ends adaptive mode, as in Dask
        self.cluster.scale(n)
        self._update_record()
        return self.status().to_dict()

    async def handle_adapt(
        self, minimum: Any = None, maximum: Any = None, off: bool = False
    ) -> dict[str, Any]:
        assert self.cluster is not None
        if off:
            self._stop_adaptive()
            return self.status().to_dict()
        lo = 0 if minimum is None else minimum
        hi = self.backend.report().max_workers if maximum is None else maximum
        _check_count("adapt minimum", lo)
        if hi is None:
            raise UserError("adapt maximum is required for this backend (its queue is unbounded)")
        _check_count("adapt maximum", hi)
        if lo > hi:
            raise UserError(f"adapt minimum ({lo}) must not exceed maximum ({hi})")
        self.backend.check_scale(hi)
        self._adapt(lo, hi)
        return self.status().to_dict()

    def _stop_adaptive(self) -> None:
        adaptive = getattr(self.cluster, "_adaptive", None)
        if adaptive is not None:
            adaptive.stop()
        self.adapt_range = None
        self._update_record()

    def _adapt(self, minimum: int, maximum: int) -> None:
        assert self.cluster is not None
        self.cluster.adapt(minimum=minimum, maximum=maximum)
        self.adapt_range = (minimum, maximum)
        self._update_record()

    async def handle_companion(self, process: Any = None) -> dict[str, Any]:
        """Register a process that must not outlive this ephemeral cluster's owner."""
        ident = procs.ProcessId.from_dict(process)
        if ident is None or not ident.local or ident.process() is None:
            raise UserError(f"not a live process of this host with a full identity: {process!r}")
        self.companions.append(ident)
        return {"companions": len(self.companions)}

    async def handle_stop(self) -> dict[str, Any]:
        # Reply first, then stop: the caller's comm must not be torn down mid-answer.
        asyncio.get_running_loop().call_later(0.05, self.stopping.set)
        return {"name": self.name, "stopping": True}

    # ---------------------------------------------------------------- registry
    def register(self) -> None:
        """Put this process's identity into the record and the pid file, before starting.

        The launcher cannot do it: the supervisor daemonises (double fork), so the pid the
        launcher spawned is not the supervisor's.  The record keeps ``state="starting"``.
        """
        reserved = self.registry.read(self.name)
        if reserved is not None:
            self.created = reserved.created
            self._base = reserved
        self._update_record()

    def _record(self) -> ClusterRecord:
        """The record as this supervisor knows it (what it writes, and rewrites when damaged)."""
        base = self._base
        record = ClusterRecord(
            name=self.name,
            profile=self.spec.profile,
            backend=self.spec.backend,
            created=self.created,
            spec=self.spec.to_dict(),
            ephemeral=self.owner is not None,
            owner_process=self.owner,
            log=base.log if base is not None else None,
        )
        if base is not None:
            record.owner = base.owner
        record.state = self._state
        record.host, record.boot = self.me.host, self.me.boot
        record.supervisor = self.me
        record.pgid = os.getpgid(0)
        cluster = self.cluster
        if cluster is not None and cluster.scheduler is not None:
            record.address = cluster.scheduler.address
            record.dashboard = cluster.dashboard_link if self.spec.dashboard else None
            record.requested = len(cluster.worker_spec)
        record.job_ids = self.backend.job_ids()
        record.supervisor_job = self.job_id
        return record

    def _write_record(self, record: ClusterRecord) -> None:
        self.registry.write(record)
        self.registry.write_pid_file(
            self.name,
            {
                "supervisor": self.me.to_dict(),
                "pgid": record.pgid,
                "created": record.created,
                "address": record.address,
            },
        )

    def _update_record(self) -> None:
        self._write_record(self._record())


def _take_job_environment() -> str | None:
    """The id of the Slurm job this supervisor runs as; its job variables are removed.

    Why remove them: the worker jobs this supervisor submits inherit its environment
    (``--export=ALL``), and the supervisor job's ``SLURM_*`` variables (CPUs, memory, binding)
    would mislead ``sbatch`` and ``ctrlstack worker`` there.  ``SLURM_CONF`` stays.
    """
    job_id = os.environ.get("SLURM_JOB_ID")
    for key in list(os.environ):
        if key.startswith(("SLURM_", "SBATCH_", "SRUN_")) and key != "SLURM_CONF":
            del os.environ[key]
    return job_id


def _check_count(label: str, value: Any) -> None:
    """A worker count must be a plain int in a sane range (a huge one fails msgpack later)."""
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_WORKERS:
        raise UserError(f"{label} must be an integer from 0 to {MAX_WORKERS}, got {value!r}")


#: More workers than any one cluster could have; bounds requests before they reach Dask.
MAX_WORKERS = 100_000


async def _main(args: argparse.Namespace) -> int:
    registry = Registry(args.state_dir)
    ready_fd: int | None = args.ready_fd
    supervisor: Supervisor | None = None
    try:
        raw_spec = args.spec if getattr(args, "spec", None) else Path(args.spec_file).read_text()
        spec = ClusterSpec.from_dict(json.loads(raw_spec), profile=args.profile)
        owner = procs.ProcessId.from_dict(json.loads(args.owner)) if args.owner else None
        job_id = _take_job_environment() if getattr(args, "as_job", False) else None
        supervisor = Supervisor(args.name, spec, registry, owner=owner, job_id=job_id)
        supervisor.register()
        await supervisor.start()
    except Exception as exc:  # noqa: BLE001 - any start failure must reach the launcher
        logger.error("cluster %s failed to start:\n%s", args.name, traceback.format_exc())
        from ctrlstack.errors import classify

        _write_ready(
            ready_fd,
            {
                "ok": False,
                "error": str(exc) or type(exc).__name__,
                "type": type(exc).__name__,
                "kind": classify(exc).kind,
            },
            getattr(args, "ready_file", None),
        )
        if supervisor is not None:
            await supervisor.close_cluster()
            registry.remove(args.name, supervisor=supervisor.me)
        return 1
    _write_ready(
        ready_fd,
        {"ok": True, "status": supervisor.status().to_dict()},
        getattr(args, "ready_file", None),
    )
    logger.info("cluster %s running at %s", args.name, supervisor.status().address)
    try:
        await supervisor.run_until_stopped()
    finally:
        await supervisor.close()
    logger.info("cluster %s stopped", args.name)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ctrlstack.deploy.supervisor")
    parser.add_argument("--name", required=True)
    parser.add_argument("--profile", required=True)
    spec = parser.add_mutually_exclusive_group(required=True)
    spec.add_argument("--spec", help="ClusterSpec as JSON")
    spec.add_argument("--spec-file", help="file holding the ClusterSpec as JSON")
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--ready-fd", type=int, default=None)
    parser.add_argument("--ready-file", default=None, help="write the ready report here")
    parser.add_argument(
        "--as-job",
        action="store_true",
        help="this process is a Slurm job of its own (slurm.supervisor.where: job)",
    )
    parser.add_argument("--owner", default=None, help="ProcessId (JSON) of the owner process")
    parser.add_argument(
        "--no-daemon", action="store_true", help="stay in the foreground (for debugging)"
    )
    args = parser.parse_args(argv)
    if not args.no_daemon and os.fork() > 0:
        # Double fork: the launcher reaps this intermediate at once, so a long-lived notebook
        # kernel that launched the cluster never accumulates a zombie when the cluster stops.
        os._exit(0)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("distributed").setLevel(logging.WARNING)
    loop = asyncio.new_event_loop()
    code = loop.run_until_complete(_main(args))
    # The cluster is closed and the record removed.  What remains is asyncio.run()'s wait for the
    # default executor and distributed's finalizers, which took ~2 s here and would delay every
    # `ctrlstack stop` that waits for this process to exit: skip them.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
