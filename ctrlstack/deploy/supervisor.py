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
writes its own pid, start time and process group *first thing*, before the (slow) cluster start,
so from then on liveness is judged by the process itself and never by the launcher's
"starting" grace period, which a long ``launch-timeout`` could outlast.
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
from typing import Any

import psutil

from ctrlstack.config import ClusterSpec
from ctrlstack.deploy.local import SLOT_ENV, PinnedLocalCluster
from ctrlstack.deploy.registry import ClusterRecord, Registry
from ctrlstack.topology.discover import discover
from ctrlstack.topology.plan import PlanError

logger = logging.getLogger("ctrlstack.supervisor")

#: How often the supervisor checks its owner (ephemeral clusters) and its scheduler.
WATCH_INTERVAL = 0.5


async def _awaitable(result: Any) -> None:
    """Await what ``SpecCluster.close()`` returns in asynchronous mode (typed as optional)."""
    if result is not None:
        await result


def _write_ready(fd: int | None, message: dict[str, Any]) -> None:
    if fd is None:
        return
    try:
        with contextlib.suppress(OSError):
            os.write(fd, (json.dumps(message) + "\n").encode())
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)


def _owner(pid: int | None) -> psutil.Process | None:
    """The owner process as a ``psutil.Process`` (remembers its start time), if it runs."""
    if pid is None:
        return None
    try:
        return psutil.Process(pid)
    except psutil.Error:
        return None


class Supervisor:
    """Runs one cluster until told to stop; see the module docstring."""

    def __init__(
        self,
        name: str,
        spec: ClusterSpec,
        registry: Registry,
        *,
        owner_pid: int | None = None,
    ) -> None:
        self.name = name
        self.spec = spec
        self.registry = registry
        self.owner_pid = owner_pid
        # Captured now, while the owner is surely alive (it is waiting for us): the start time
        # it carries is what makes a reused pid or a zombie owner count as gone later.
        self._owner = _owner(owner_pid)
        self.cluster: PinnedLocalCluster | None = None
        self.stopping = asyncio.Event()
        self.adapt_range: tuple[int, int] | None = None

    # ---------------------------------------------------------------- lifecycle
    def owner_gone(self) -> bool:
        """For ephemeral clusters: has the process that asked for the cluster exited?

        ``psutil.pid_exists`` is not enough: a killed owner stays a zombie until its parent reaps
        it, and its pid may be reused by an unrelated process afterwards.
        """
        if self.owner_pid is None:
            return False
        if self._owner is None:
            return True
        try:
            return not self._owner.is_running() or self._owner.status() == psutil.STATUS_ZOMBIE
        except psutil.Error:
            return True

    async def start(self) -> None:
        spec = self.spec
        machine = discover()
        self.cluster = await PinnedLocalCluster(
            machine,
            workers=None if spec.workers == "auto" else int(spec.workers),
            threads=None if spec.threads == "auto" else int(spec.threads),
            task_threads=spec.task_threads,
            policy=spec.policy,
            smt=spec.smt,
            memory_limit=spec.memory_limit,
            dashboard=spec.dashboard,
            env=dict(spec.env),
            worker_options=spec.worker_kwargs(),
            asynchronous=True,
            name=self.name,
            silence_logs=logging.WARNING,
        )
        scheduler = self.cluster.scheduler
        assert scheduler is not None
        scheduler.handlers.update(
            {
                "ctrlstack_status": self.handle_status,
                "ctrlstack_scale": self.handle_scale,
                "ctrlstack_adapt": self.handle_adapt,
                "ctrlstack_stop": self.handle_stop,
            }
        )
        if spec.adapt is not None:
            self._adapt(*spec.adapt)
        self._update_record(state="running")

    async def run_until_stopped(self) -> None:
        assert self.cluster is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.add_signal_handler(sig, self.stopping.set)
        idle_since: float | None = None
        while not self.stopping.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), WATCH_INTERVAL)
            if self.owner_gone():
                logger.info("owner process %s is gone; stopping", self.owner_pid)
                break
            scheduler = self.cluster.scheduler
            if scheduler is None or scheduler.status.name in ("closing", "closed", "failed"):
                logger.info("scheduler closed; stopping")
                break
            if self.spec.idle_timeout is not None:
                busy = bool(scheduler.tasks) or bool(scheduler.clients.keys() - {"fire-and-forget"})
                idle_since = None if busy else (idle_since or time.monotonic())
                if (
                    idle_since is not None
                    and time.monotonic() - idle_since > self.spec.idle_timeout
                ):
                    logger.info("idle for %s s; stopping", self.spec.idle_timeout)
                    break

    async def close(self) -> None:
        logger.info("cluster %s stopping", self.name)
        self._update_record(state="stopping")
        await self.close_cluster()
        self.registry.remove(self.name)

    async def close_cluster(self, timeout: float = 30) -> None:
        """Close scheduler and workers, bounded: a hung close must not keep the supervisor up."""
        if self.cluster is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(_awaitable(self.cluster.close()), timeout)

    # ---------------------------------------------------------------- handlers
    def status(self) -> dict[str, Any]:
        cluster = self.cluster
        assert cluster is not None
        assert cluster.scheduler is not None
        scheduler = cluster.scheduler
        slots = {
            str(name): spec["options"]["env"].get("CTRLSTACK_CPUS", "")
            for name, spec in cluster.worker_spec.items()
        }
        return {
            "name": self.name,
            "profile": self.spec.profile,
            "backend": self.spec.backend,
            "address": scheduler.address,
            "dashboard": cluster.dashboard_link if self.spec.dashboard else None,
            "pid": os.getpid(),
            "workers": len(scheduler.workers),
            "requested": len(cluster.worker_spec),
            "max_workers": cluster.max_workers,
            "threads": cluster.full_plan.threads,
            "task_threads": cluster.task_threads,
            "policy": cluster.full_plan.policy,
            "pinned": cluster.full_plan.pinned,
            "adapt": None
            if self.adapt_range is None
            else {"minimum": self.adapt_range[0], "maximum": self.adapt_range[1]},
            "slots": slots,
            "slot_index": {
                str(name): int(spec["options"]["env"][SLOT_ENV])
                for name, spec in cluster.worker_spec.items()
            },
        }

    async def handle_status(self) -> dict[str, Any]:
        return self.status()

    async def handle_scale(self, n: int) -> dict[str, Any]:
        assert self.cluster is not None
        self.cluster.check_scale(n)  # raises before anything changes
        if self.adapt_range is not None:
            self._stop_adaptive()  # an explicit scale ends adaptive mode, as in Dask
        self.cluster.scale(n)
        self._update_record()
        return self.status()

    async def handle_adapt(
        self, minimum: int | None = None, maximum: int | None = None, off: bool = False
    ) -> dict[str, Any]:
        assert self.cluster is not None
        if off:
            self._stop_adaptive()
            return self.status()
        lo = 0 if minimum is None else minimum
        hi = self.cluster.max_workers if maximum is None else maximum
        for label, value in (("minimum", lo), ("maximum", hi)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"adapt {label} must be an integer >= 0, got {value!r}")
        if lo > hi:
            raise ValueError(f"adapt minimum ({lo}) must not exceed maximum ({hi})")
        self.cluster.check_scale(hi)
        self._adapt(lo, hi)
        return self.status()

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

    async def handle_stop(self) -> dict[str, Any]:
        # Reply first, then stop: the caller's comm must not be torn down mid-answer.
        asyncio.get_running_loop().call_later(0.05, self.stopping.set)
        return {"name": self.name, "stopping": True}

    # ---------------------------------------------------------------- registry
    def register(self) -> None:
        """Put this process's pid, start time and process group into the record, before starting.

        The launcher cannot do it: the supervisor daemonises (double fork), so the pid the
        launcher spawned is not the supervisor's.  The record keeps ``state="starting"``.
        """
        self._update_record()

    def _update_record(self, state: str | None = None) -> None:
        record = self.registry.read(self.name)
        if record is None:
            if state == "stopping":
                return
            record = ClusterRecord(
                name=self.name, profile=self.spec.profile, backend=self.spec.backend
            )
        me = psutil.Process()
        record.pid = me.pid
        record.pid_started = me.create_time()
        record.pgid = os.getpgid(0)
        if state is not None:
            record.state = state
        if self.cluster is not None and self.cluster.scheduler is not None:
            record.address = self.cluster.scheduler.address
            record.dashboard = self.cluster.dashboard_link if self.spec.dashboard else None
            record.workers = len(self.cluster.worker_spec)
        self.registry.write(record)


async def _main(args: argparse.Namespace) -> int:
    registry = Registry(args.state_dir)
    ready_fd: int | None = args.ready_fd
    supervisor: Supervisor | None = None
    try:
        spec = ClusterSpec.from_dict(json.loads(args.spec), profile=args.profile)
        supervisor = Supervisor(args.name, spec, registry, owner_pid=args.owner_pid)
        supervisor.register()
        await supervisor.start()
    except Exception as exc:  # noqa: BLE001 - any start failure must reach the launcher
        logger.error("cluster %s failed to start:\n%s", args.name, traceback.format_exc())
        _write_ready(
            ready_fd,
            {
                "ok": False,
                "error": str(exc) or type(exc).__name__,
                "type": type(exc).__name__,
                "plan_error": isinstance(exc, PlanError),
            },
        )
        if supervisor is not None:
            await supervisor.close_cluster()
        registry.remove(args.name)
        return 1
    _write_ready(ready_fd, {"ok": True, **supervisor.status()})
    logger.info("cluster %s running at %s", args.name, supervisor.status()["address"])
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
    parser.add_argument("--spec", required=True, help="ClusterSpec as JSON")
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--ready-fd", type=int, default=None)
    parser.add_argument("--owner-pid", type=int, default=None)
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
