"""The per-user cluster registry: one small JSON file per cluster in the user's state dir.

Every door (CLI, notebook API, JupyterLab extension, widgets) finds clusters here, so a cluster
launched from a notebook can be listed and stopped from a terminal and vice versa.  Files are 0600
in a 0700 directory; they are written atomically (temp file + rename) so a reader never sees half
a record, and a name is *reserved* by hard-linking a complete temp file into place (``link`` fails
if the name exists, like ``O_EXCL``) so two launches cannot claim it at once.

A record names its supervisor by pid **and** process start time: a pid alone can be reused by an
unrelated process after the supervisor died, which would make a dead cluster look alive.

Decisions that *replace* a record someone else may be looking at (taking over a dead holder's
name, removing a dead record in :meth:`Registry.sweep`) are made under a short ``flock`` on
``clusters/.lock``: without it two launches could both judge the same dead record, and the second
would delete the first one's fresh reservation.  Slow work (killing leftovers) happens outside it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import getpass
import json
import logging
import os
import re
import signal
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import psutil

logger = logging.getLogger(__name__)

__all__ = [
    "NAME_PATTERN",
    "ClusterRecord",
    "NameTakenError",
    "Registry",
    "RegistryLockError",
    "validate_name",
    "wait_gone",
]

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")

#: Seconds a record may stay "starting" without a live supervisor before it counts as dead.
STARTING_GRACE = 120.0

#: Seconds to wait for the registry lock; it is only ever held for a few file operations.
LOCK_TIMEOUT = 10.0

#: flock() errors meaning "this file system cannot lock", not "someone else holds the lock".
_NO_LOCKING = frozenset({errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP})

#: Fields that must have these types for a record to be usable (anything else means corrupt).
_INT_OR_NONE = ("pid", "pgid")


class NameTakenError(ValueError):
    """A cluster of that name is already registered (and alive)."""


class RegistryLockError(RuntimeError):
    """Another process held the registry lock for longer than :data:`LOCK_TIMEOUT` seconds."""


def _gone(proc: psutil.Process) -> bool:
    """Whether ``proc`` has exited.  A zombie counts as gone: it runs nothing any more, and one
    that is not our child is only reaped when its parent (or a lazy container init) gets to it."""
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True


def wait_gone(procs: Iterable[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait at most ``timeout`` seconds for ``procs`` to exit; return those still running.

    Unlike :func:`psutil.wait_procs`, a zombie counts as exited, so waiting for a supervisor that
    was re-parented to an init which does not reap promptly never runs into the timeout.
    """
    pending = list(procs)
    deadline = time.monotonic() + timeout
    while True:
        for proc in pending:
            with contextlib.suppress(psutil.Error, ChildProcessError):
                # Reap our own children so they do not stay zombies (no-op for others).
                proc.wait(0)
        pending = [p for p in pending if not _gone(p)]
        if not pending or time.monotonic() >= deadline:
            return pending
        time.sleep(0.05)


def validate_name(name: str) -> str:
    """Check a cluster name: it becomes a file name and appears in URLs and job names."""
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise ValueError(
            f"cluster name {name!r} is not allowed: use 1-63 characters from letters, digits, "
            "'.', '_' and '-', starting with a letter or digit"
        )
    return name


@dataclass
class ClusterRecord:
    """What the registry knows about one cluster (JSON-serialisable)."""

    name: str
    profile: str
    backend: str
    owner: str = field(default_factory=getpass.getuser)
    state: str = "starting"  # starting | running | stopping | dead
    created: float = field(default_factory=time.time)
    pid: int | None = None
    pid_started: float | None = None
    pgid: int | None = None
    address: str | None = None
    dashboard: str | None = None
    spec: dict[str, Any] = field(default_factory=dict)
    workers: int = 0
    ephemeral: bool = False
    log: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClusterRecord:
        """Build a record; ``TypeError``/``ValueError`` if ``data`` is not a usable record."""
        if not isinstance(data, dict):
            raise TypeError(f"a cluster record must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        record = cls(**{k: v for k, v in data.items() if k in known})
        for name in _INT_OR_NONE:
            value = getattr(record, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                raise TypeError(f"cluster record field {name!r} must be an integer, got {value!r}")
        if not isinstance(record.created, int | float) or isinstance(record.created, bool):
            raise TypeError(f"cluster record field 'created' must be a number: {record.created!r}")
        return record

    # ---------------------------------------------------------------- liveness
    def supervisor(self) -> psutil.Process | None:
        """The live supervisor process, or ``None`` if it is gone (or the pid was reused)."""
        if self.pid is None:
            return None
        try:
            proc = psutil.Process(self.pid)
            if self.pid_started is not None and abs(proc.create_time() - self.pid_started) > 1.0:
                return None
            if proc.status() == psutil.STATUS_ZOMBIE:
                return None
            return proc
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return None

    def is_alive(self) -> bool:
        if self.supervisor() is not None:
            return True
        # A launch in progress has no supervisor pid yet; give it a grace period.
        return (
            self.state == "starting"
            and self.pid is None
            and (time.time() - self.created < STARTING_GRACE)
        )

    def leftovers(self) -> list[psutil.Process]:
        """Processes of this cluster still running after its supervisor died.

        The supervisor runs in its own session and process group, so its scheduler and worker
        processes share that pgid.  Only processes started after the record was created count,
        which rules out an unrelated group that reused the id.
        """
        if self.pgid is None or self.pgid == os.getpgrp():
            # Never our own group: a wrong pgid in a record (a foreground --no-daemon supervisor,
            # a hand-edited file) must not make `ctrlstack list` kill the shell job running it.
            return []
        started = self.created - 1.0
        found = []
        for proc in psutil.process_iter():
            try:
                if os.getpgid(proc.pid) != self.pgid:
                    continue
                # Zombies run nothing and cannot be signalled away; waiting for them would only
                # burn the timeout.  create_time() may be unreadable (AccessDenied): skip those.
                if proc.create_time() >= started and proc.status() != psutil.STATUS_ZOMBIE:
                    found.append(proc)
            except (OSError, psutil.Error):
                continue
        return found

    def reap(self, timeout: float = 5.0) -> int:
        """Terminate what a dead supervisor left behind; returns how many processes were found.

        SIGTERM first (workers flush and exit), SIGKILL after ``timeout``; at most ``2 * timeout``
        seconds in all.
        """
        procs = self.leftovers()
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                proc.send_signal(signal.SIGTERM)
        alive = wait_gone(procs, timeout)
        for proc in alive:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        wait_gone(alive, timeout)
        return len(procs)


class Registry:
    """Cluster records of one user, stored as ``<state_dir>/clusters/<name>.json``."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        if root is None:
            from ctrlstack.config import state_dir

            root = state_dir()
        self.root = Path(root)
        self.dir = self.root / "clusters"
        # The state dir itself is private too when we are the ones creating it (an explicit root
        # bypasses config.state_dir(), which would otherwise create it 0700).
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.dir.mkdir(exist_ok=True, mode=0o700)
        os.chmod(self.dir, 0o700)

    def path(self, name: str) -> Path:
        return self.dir / f"{validate_name(name)}.json"

    def log_path(self, name: str) -> Path:
        return self.dir / f"{validate_name(name)}.log"

    # ---------------------------------------------------------------- locking
    @contextlib.contextmanager
    def _lock(self, timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
        """Hold the registry lock (``flock``); bounded wait, so a stuck holder cannot hang us."""
        fd = os.open(self.dir / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno in _NO_LOCKING:
                        # Lustre without "-o flock", NFS without lockd: run unlocked (the races
                        # above become possible again) rather than make every command fail.
                        logger.warning(
                            "file locking is not available in %s (%s); the cluster registry "
                            "works without it, but concurrent launches of one name may race",
                            self.dir,
                            exc.strerror,
                        )
                        break
                    if exc.errno not in (errno.EAGAIN, errno.EACCES):
                        raise
                    if time.monotonic() >= deadline:
                        raise RegistryLockError(
                            f"the cluster registry {self.dir} stayed locked for {timeout:g} s; "
                            "another ctrlstack process is stuck holding it - try again"
                        ) from None
                    time.sleep(0.02)
            yield
        finally:
            os.close(fd)  # also releases the lock

    # ---------------------------------------------------------------- writes
    def _write_tmp(self, record: ClusterRecord) -> Path:
        """Write ``record`` to a private temp file next to its final place (0600)."""
        path = self.path(record.name)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                json.dump(record.to_dict(), fh, indent=1)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
        return tmp

    def reserve(self, record: ClusterRecord) -> None:
        """Create the record only if no live cluster holds the name.

        The complete record is written to a temp file and then hard-linked into place: ``link``
        fails if the name exists (like ``O_EXCL``) but, unlike creating the file and then filling
        it, no reader can ever see an empty reservation and mistake it for a corrupt, dead one.
        A dead holder's record is replaced under the registry lock; its leftover processes are
        killed afterwards, outside the lock.
        """
        path = self.path(record.name)
        tmp = self._write_tmp(record)
        dead: ClusterRecord | None = None
        try:
            with self._lock():
                try:
                    os.link(tmp, path)
                except FileExistsError:
                    existing = self.read(record.name)
                    if existing is not None and existing.state != "dead" and existing.is_alive():
                        raise NameTakenError(
                            f"a cluster named {record.name!r} already exists "
                            f"(state {existing.state}, address {existing.address}); "
                            f"stop it with 'ctrlstack stop {record.name}' or choose another name"
                        ) from None
                    dead = existing
                    # Under the lock nobody else can judge or replace this record meanwhile.
                    os.replace(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        if dead is not None:
            dead.reap()

    def write(self, record: ClusterRecord) -> None:
        """Replace a record atomically (0600); on any failure no temp file is left behind."""
        tmp = self._write_tmp(record)
        try:
            os.replace(tmp, self.path(record.name))
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise

    def remove(self, name: str, *, created: float | None = None) -> None:
        """Delete the record of ``name``.

        With ``created``, only if the record is still the one created then (under the lock): a
        launcher cleaning up after a failed start must not delete the record of a newer cluster
        that took the name meanwhile (the failed one was stopped, and the name launched again).
        """
        if created is None:
            with contextlib.suppress(FileNotFoundError):
                self.path(name).unlink()
            return
        with self._lock():
            current = self.read(name)
            if current is not None and current.created == created:
                with contextlib.suppress(FileNotFoundError):
                    self.path(name).unlink()

    # ---------------------------------------------------------------- reads
    def read(self, name: str) -> ClusterRecord | None:
        try:
            data = json.loads(self.path(name).read_text())
            record = ClusterRecord.from_dict(data)
        except FileNotFoundError:
            return None
        except (ValueError, TypeError):  # bad JSON, bad UTF-8, or not a record's shape
            # A corrupt record still names a cluster; keep the name so it can be cleaned up.
            return ClusterRecord(name=name, profile="?", backend="?", state="dead")
        # The file name is the key: a record whose "name" disagrees must not make us act on
        # (remove, reap) another cluster's file.
        record.name = name
        return record

    def __iter__(self) -> Iterator[ClusterRecord]:
        for path in sorted(self.dir.glob("*.json")):
            if not NAME_PATTERN.match(path.stem):
                continue  # not ours (a stray file); never crash a listing over it
            record = self.read(path.stem)
            if record is not None:
                yield record

    def sweep(self) -> list[ClusterRecord]:
        """All records, with dead supervisors detected, their leftovers reaped and records removed.

        Dead clusters are returned once with ``state="dead"`` so the caller can report them.
        Records are judged and removed under the registry lock (so a concurrent launch that just
        took over a dead name keeps its reservation); leftovers are killed after it is released.
        """
        out = []
        dead = []
        with self._lock():
            for record in self:
                if record.state != "dead" and record.is_alive():
                    out.append(record)
                    continue
                record.state = "dead"
                self.remove(record.name)
                dead.append(record)
                out.append(record)
        for record in dead:
            record.reap()
        return out
