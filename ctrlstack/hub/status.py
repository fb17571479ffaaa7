"""One batched ``squeue`` for every user's server in the hub.

Why: batchspawner runs one ``squeue`` per user per poll; with hundreds of users that is the
controller's load, not the users'.  Here every :class:`~ctrlstack.hub.spawner.StackSpawner` of
the hub registers its job with one :class:`StatusService` (shared per Slurm environment), which
asks Slurm about *all* watched jobs in one call per period (plus a random jitter, so many hubs do
not beat in step).  ``poll()`` then only reads the last answer.

A failing status command is not a dead job: the answer becomes UNKNOWN for every job and the
spawners keep their servers (a controller restart must not drop every user).  A job the
controller does not list at all is only declared gone after ``missing_grace`` seconds (a job
submitted a moment ago may not be listed yet).

While some spawner is starting, the service polls every ``fast_period`` seconds (still one call
for all jobs), so a job that dies before its server is up is noticed at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import ClassVar

from ctrlstack import _proc
from ctrlstack.deploy.batch import slurm
from ctrlstack.deploy.status import JobStatus

__all__ = ["StatusService", "Tracked"]

log = logging.getLogger(__name__)

Runner = Callable[[list[str], Mapping[str, str] | None], _proc.CommandResult]


def _run(argv: list[str], env: Mapping[str, str] | None) -> _proc.CommandResult:
    return _proc.run(argv, env=env, timeout=30, check=False)


@dataclass
class Tracked:
    """What the service knows of one job."""

    job_id: str
    since: float = field(default_factory=time.monotonic)
    status: JobStatus | None = None
    seen: float | None = None  # monotonic time of the last answer that listed the job
    urgent: int = 0  # spawners currently starting this job
    changed: asyncio.Event = field(default_factory=asyncio.Event)


class StatusService:
    """Poll Slurm for every watched job with one ``squeue`` per period.

    Use :meth:`shared` (one instance per Slurm environment and event loop) rather than the
    constructor, so every spawner of the hub lands on the same service.
    """

    _instances: ClassVar[dict[tuple[object, ...], StatusService]] = {}

    def __init__(
        self,
        *,
        env: Mapping[str, str] | None = None,
        period: float = 10.0,
        jitter: float = 0.1,
        fast_period: float = 0.5,
        missing_grace: float = 30.0,
        runner: Runner = _run,
    ):
        self.env = dict(env) if env is not None else None
        self.period = period
        self.jitter = jitter
        self.fast_period = fast_period
        self.missing_grace = missing_grace
        self.runner = runner
        self.jobs: dict[str, Tracked] = {}
        self.calls = 0
        self.failing_since: float | None = None
        self.last_error: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._answered = asyncio.Event()

    @classmethod
    def shared(cls, *, env: Mapping[str, str] | None, **kwargs: float) -> StatusService:
        """The hub-wide service for this Slurm environment (created on first use)."""
        loop = asyncio.get_running_loop()
        key = (id(loop), tuple(sorted((env or {}).items())))
        service = cls._instances.get(key)
        if service is None:
            service = cls._instances[key] = cls(env=env, **kwargs)  # type: ignore[arg-type]
        return service

    # ------------------------------------------------------------------------- registration
    def watch(self, job_id: str, *, urgent: bool = False) -> Tracked:
        tracked = self.jobs.get(job_id)
        if tracked is None:
            tracked = self.jobs[job_id] = Tracked(job_id)
        if urgent:
            tracked.urgent += 1
            self._wake.set()
        self._ensure_running()
        return tracked

    def calm(self, job_id: str) -> None:
        """The spawner of ``job_id`` has finished starting: back to the normal period."""
        tracked = self.jobs.get(job_id)
        if tracked is not None and tracked.urgent:
            tracked.urgent -= 1

    def unwatch(self, job_id: str) -> None:
        self.jobs.pop(job_id, None)

    def _ensure_running(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    # ------------------------------------------------------------------------- answers
    def status(self, job_id: str) -> JobStatus | None:
        """The last answer for ``job_id``; None before the first answer.

        UNKNOWN while the status command fails; FAILED with reason "gone" when the controller
        has not listed the job for ``missing_grace`` seconds.
        """
        tracked = self.jobs.get(job_id)
        return None if tracked is None else tracked.status

    async def fresh(self, job_id: str, timeout: float = 30.0) -> JobStatus | None:
        """Wait for the first answer about ``job_id`` (a hub restart's first poll)."""
        tracked = self.watch(job_id)
        if tracked.status is None:
            self._wake.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._first(tracked), timeout)
        return tracked.status

    @staticmethod
    async def _first(tracked: Tracked) -> None:
        while tracked.status is None:
            tracked.changed.clear()
            await tracked.changed.wait()

    # ------------------------------------------------------------------------- the loop
    def _delay(self) -> float:
        if any(t.urgent for t in self.jobs.values()):
            return self.fast_period
        return self.period * (1 + random.uniform(-self.jitter, self.jitter))

    async def _loop(self) -> None:
        while self.jobs:
            await self.poll_once()
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._delay())
        self._task = None

    async def poll_once(self) -> None:
        """One ``squeue`` for every watched job; update every :class:`Tracked`."""
        ids = sorted(self.jobs)
        if not ids:
            return
        self.calls += 1
        loop = asyncio.get_running_loop()
        try:
            result = await loop.run_in_executor(None, self.runner, slurm.squeue_argv(ids), self.env)
        except _proc.CommandError as exc:
            self._failed(str(exc))
            return
        now = time.monotonic()
        if result.returncode != 0 and not slurm.squeue_gone(result.stderr):
            self._failed(f"squeue exited with {result.returncode}: {result.stderr.strip()}")
            return
        if self.failing_since is not None:
            log.info("squeue answers again after %.0f s", now - self.failing_since)
        self.failing_since = None
        self.last_error = None
        answer = slurm.parse_squeue(result.stdout) if result.returncode == 0 else {}
        for job_id in ids:
            tracked = self.jobs.get(job_id)
            if tracked is None:
                continue
            status = answer.get(job_id)
            if status is not None:
                tracked.seen = now
            elif now - (tracked.seen or tracked.since) >= self.missing_grace:
                status = JobStatus(job_id=job_id, state="FAILED", reason="gone from the queue")
            else:
                status = tracked.status or JobStatus(job_id=job_id, state="UNKNOWN")
            tracked.status = status
            tracked.changed.set()

    def _failed(self, message: str) -> None:
        now = time.monotonic()
        if self.failing_since is None:
            self.failing_since = now
            log.warning("Slurm status command failed (servers kept): %s", message)
        self.last_error = message
        for tracked in self.jobs.values():
            tracked.status = JobStatus(job_id=tracked.job_id, state="UNKNOWN", reason=message)
            tracked.changed.set()
