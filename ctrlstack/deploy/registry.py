"""The per-user cluster registry: storage only, built for a home directory many hosts share.

Layout under the state dir (0700)::

    clusters/<name>.json        the record (0600): what every door lists
    clusters/<name>.d/          the cluster's private dir (0700):
        supervisor.json         a second copy of "who runs this cluster" (pid file)
        tls/                    the cluster's TLS credentials (0600)
    clusters/.lock              flock for decisions that replace a record
    logs/<name>-<stamp>.log     supervisor logs, pruned at each launch

Why it is defensive: the state dir is on a shared, sometimes flaky file system and users edit
things by hand.  Reading never blocks and never raises for a damaged file: records are opened
with ``O_NONBLOCK | O_NOFOLLOW`` and checked to be regular files of bounded size (a FIFO named
``x.json`` must not hang ``ctrlstack list``); anything unusable becomes a :class:`BrokenRecord`
that names the path and the reason.  A broken record is never deleted behind the user's back:
its cluster may still run, which the pid file can prove, and the supervisor rewrites its record
when it finds it damaged.

Judging liveness (local pid, remote scheduler, reaping, cancelling jobs) is not done here but in
:mod:`ctrlstack.deploy.lifecycle`, which knows processes, schedulers and backends.

Writes are atomic (temp file + rename); a name is *reserved* by hard-linking a complete temp file
into place (``link`` fails if the name exists), so two launches cannot claim it at once and no
reader ever sees an empty reservation.  Decisions that replace or remove a record someone else may
be looking at are made under a short ``flock`` on ``clusters/.lock``.
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
import shutil
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ctrlstack.deploy.procs import ProcessId, boot_id, hostname
from ctrlstack.errors import ConflictError, Failure, UserError

logger = logging.getLogger(__name__)

__all__ = [
    "NAME_PATTERN",
    "BrokenRecord",
    "ClusterRecord",
    "NameTakenError",
    "Registry",
    "RegistryLockError",
    "validate_name",
]

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")

#: Seconds to wait for the registry lock; it is only ever held for a few file operations.
LOCK_TIMEOUT = 10.0

#: A record larger than this is not a record (and reading it must stay cheap).
MAX_RECORD_BYTES = 1 << 20

#: flock() errors meaning "this file system cannot lock", not "someone else holds the lock".
_NO_LOCKING = frozenset({errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP})


class NameTakenError(ConflictError):
    """A cluster of that name is already registered (and alive, or not provably dead)."""


class RegistryLockError(Failure):
    """Another process held the registry lock for longer than :data:`LOCK_TIMEOUT` seconds."""


class InvalidNameError(UserError):
    """A cluster name that cannot be a file name, a URL part and a job name."""


def validate_name(name: Any) -> str:
    """Check a cluster name: it becomes a file name and appears in URLs and job names.

    ``fullmatch``: with ``match`` and ``$``, ``"nl\\n"`` would pass (``$`` matches before a
    trailing newline) and create a file whose name ends in a newline.
    """
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise InvalidNameError(
            f"cluster name {name!r} is not allowed: use 1-63 characters from letters, digits, "
            "'.', '_' and '-', starting with a letter or digit"
        )
    return name


def _ident(value: Any) -> ProcessId | None:
    return value if isinstance(value, ProcessId) else ProcessId.from_dict(value)


@dataclass
class ClusterRecord:
    """What the registry knows about one cluster (JSON-serialisable).

    ``supervisor`` is set by the supervisor itself once it runs (see
    :mod:`ctrlstack.deploy.supervisor`); ``host``/``boot`` name where it was launched, so a
    record seen from another host is never judged by pid.
    """

    name: str
    profile: str
    backend: str
    owner: str = field(default_factory=getpass.getuser)
    state: str = "starting"  # starting | running | stopping
    created: float = field(default_factory=time.time)
    host: str = field(default_factory=hostname)
    boot: str = field(default_factory=boot_id)
    supervisor: ProcessId | None = None
    pgid: int | None = None
    address: str | None = None
    dashboard: str | None = None
    spec: dict[str, Any] = field(default_factory=dict)
    requested: int = 0
    ephemeral: bool = False
    owner_process: ProcessId | None = None  # ephemeral clusters: the process that asked
    log: str | None = None
    job_ids: list[str] = field(default_factory=list)
    #: The Slurm job the supervisor runs as (``slurm.supervisor.where: job``), else None.
    supervisor_job: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("supervisor", "owner_process"):
            value = getattr(self, key)
            data[key] = value.to_dict() if value is not None else None
        return data

    @classmethod
    def from_dict(cls, data: Any) -> ClusterRecord:
        """Build a record; ``TypeError``/``ValueError`` if ``data`` is not a usable record."""
        if not isinstance(data, dict):
            raise TypeError(f"a cluster record must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        record = cls(**{k: v for k, v in data.items() if k in known})
        for name in ("name", "profile", "backend", "state", "host", "boot"):
            if not isinstance(getattr(record, name), str):
                raise TypeError(f"field {name!r} must be a string, got {getattr(record, name)!r}")
        for name in ("address", "dashboard", "log", "supervisor_job"):
            value = getattr(record, name)
            if value is not None and not isinstance(value, str):
                raise TypeError(f"field {name!r} must be a string or null, got {value!r}")
        if record.pgid is not None and (
            not isinstance(record.pgid, int) or isinstance(record.pgid, bool)
        ):
            raise TypeError(f"field 'pgid' must be an integer, got {record.pgid!r}")
        if not isinstance(record.created, int | float) or isinstance(record.created, bool):
            raise TypeError(f"field 'created' must be a number, got {record.created!r}")
        if not isinstance(record.requested, int) or isinstance(record.requested, bool):
            raise TypeError(f"field 'requested' must be an integer, got {record.requested!r}")
        if not isinstance(record.spec, dict):
            raise TypeError("field 'spec' must be a mapping")
        if not isinstance(record.job_ids, list) or not all(
            isinstance(j, str) for j in record.job_ids
        ):
            raise TypeError(f"field 'job_ids' must be a list of strings, got {record.job_ids!r}")
        # An identity that is present but incomplete (a pid without a start time, say) is
        # dropped: such a process can never be proven ours, so it must never be signalled.
        record.supervisor = _ident(record.supervisor)
        record.owner_process = _ident(record.owner_process)
        return record

    @property
    def local(self) -> bool:
        """Whether the cluster was launched on this host in this boot."""
        return self.host == hostname() and self.boot == boot_id()


@dataclass(frozen=True)
class BrokenRecord:
    """A record file that cannot be used: ``reason`` says why, ``path`` where it is."""

    name: str
    path: Path
    reason: str


def _read_bounded(path: Path) -> bytes:
    """Read a regular file without following links or blocking on a FIFO; ``OSError`` or
    ``ValueError`` (with the reason) if it is not a small regular file."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = "a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file"
            raise ValueError(f"it is {kind}")
        if info.st_size > MAX_RECORD_BYTES:
            raise ValueError(f"it is too large ({info.st_size} bytes)")
        chunks = []
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
            if sum(map(len, chunks)) > MAX_RECORD_BYTES:
                raise ValueError("it is too large")
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_json(path: Path) -> Any:
    """Parse a small JSON file safely; ``FileNotFoundError`` if absent, ``ValueError`` (with a
    readable reason) for anything else that is wrong with it."""
    try:
        data = _read_bounded(path)
    except FileNotFoundError:
        raise
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ValueError("it is a symbolic link") from None
        raise ValueError(f"it cannot be read ({exc.strerror})") from None
    if not data.strip():
        raise ValueError("it is empty")
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"it is not valid JSON ({exc})") from None


def write_private(path: Path, data: Any) -> None:
    """Replace ``path`` atomically with JSON ``data`` (0600); no temp file survives a failure."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=1)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


class Registry:
    """Cluster records of one user, stored as ``<state_dir>/clusters/<name>.json``."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        if root is None:
            from ctrlstack.config import state_dir

            root = state_dir()
        self.root = Path(root)
        self.dir = self.root / "clusters"
        self.logs = self.root / "logs"
        # The state dir itself is private too when we are the ones creating it (an explicit root
        # bypasses config.state_dir(), which would otherwise create it 0700).
        for path in (self.root, self.dir, self.logs):
            path.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.dir, 0o700)

    # ---------------------------------------------------------------- paths
    def path(self, name: str) -> Path:
        return self.dir / f"{validate_name(name)}.json"

    def cluster_dir(self, name: str) -> Path:
        """The cluster's private directory (credentials, pid file, job scripts and logs)."""
        return self.dir / f"{validate_name(name)}.d"

    def tls_dir(self, name: str) -> Path:
        return self.cluster_dir(name) / "tls"

    def pid_file(self, name: str) -> Path:
        return self.cluster_dir(name) / "supervisor.json"

    def make_cluster_dir(self, name: str) -> Path:
        path = self.cluster_dir(name)
        path.mkdir(mode=0o700, exist_ok=True)
        os.chmod(path, 0o700)
        return path

    def new_log(self, name: str) -> Path:
        """A fresh log path for a launch of ``name`` (the old ones are pruned separately)."""
        stamp = time.strftime("%Y%m%dT%H%M%S")
        return self.logs / f"{validate_name(name)}-{stamp}-{os.getpid()}.log"

    # ---------------------------------------------------------------- locking
    @contextlib.contextmanager
    def lock(self, timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
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

    # ---------------------------------------------------------------- reads
    def load(self, name: str) -> ClusterRecord | BrokenRecord | None:
        """The record of ``name``: a record, a :class:`BrokenRecord`, or None if there is none."""
        path = self.path(name)
        try:
            record = ClusterRecord.from_dict(read_json(path))
        except FileNotFoundError:
            return None
        except (ValueError, TypeError) as exc:
            return BrokenRecord(name, path, str(exc))
        # The file name is the key: a record whose "name" disagrees must not make us act on
        # (remove, stop) another cluster.
        record.name = name
        return record

    def read(self, name: str) -> ClusterRecord | None:
        """The usable record of ``name``, or None (absent or broken)."""
        record = self.load(name)
        return record if isinstance(record, ClusterRecord) else None

    def read_pid_file(self, name: str) -> dict[str, Any] | None:
        """The supervisor's own copy (identity, pgid, address), or None if absent or unusable."""
        try:
            data = read_json(self.pid_file(name))
        except (FileNotFoundError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def names(self) -> list[str]:
        """Names that have a record file (usable or not); stray files are ignored."""
        out = []
        with contextlib.suppress(OSError):
            for entry in os.scandir(self.dir):
                stem, ext = os.path.splitext(entry.name)
                if ext == ".json" and NAME_PATTERN.fullmatch(stem):
                    out.append(stem)
        return sorted(out)

    def __iter__(self) -> Iterator[ClusterRecord | BrokenRecord]:
        for name in self.names():
            record = self.load(name)
            if record is not None:
                yield record

    # ---------------------------------------------------------------- writes
    def _write_tmp(self, record: ClusterRecord) -> Path:
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

    def reserve(
        self,
        record: ClusterRecord,
        replaceable: Callable[[ClusterRecord | BrokenRecord], str | None],
    ) -> ClusterRecord | BrokenRecord | None:
        """Create the record unless the name is held.

        ``replaceable(existing)`` decides, under the lock, whether an existing record may be
        replaced: it returns None if so, or the reason it may not (raised as
        :class:`NameTakenError`).  Returns the replaced record (whose leftovers the caller
        cleans up outside the lock), or None.
        """
        path = self.path(record.name)
        tmp = self._write_tmp(record)
        try:
            with self.lock():
                try:
                    os.link(tmp, path)
                    return None
                except FileExistsError:
                    pass
                existing = self.load(record.name)
                if existing is not None:
                    reason = replaceable(existing)
                    if reason is not None:
                        raise NameTakenError(reason)
                os.replace(tmp, path)
                return existing
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    def write(self, record: ClusterRecord) -> None:
        """Replace a record atomically (0600)."""
        tmp = self._write_tmp(record)
        try:
            os.replace(tmp, self.path(record.name))
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise

    def write_pid_file(self, name: str, data: dict[str, Any]) -> None:
        write_private(self.pid_file(name), data)

    def remove(
        self,
        name: str,
        *,
        created: float | None = None,
        supervisor: ProcessId | None = None,
        files: bool = True,
    ) -> bool:
        """Delete the record of ``name`` (and, with ``files``, its private dir); True if done.

        With ``created`` or ``supervisor``, only if the record is still that one (checked under
        the lock): a supervisor or launcher cleaning up must not delete the record of a newer
        cluster that took the name meanwhile.  A broken record is only removed unconditionally.
        """
        with self.lock():
            if created is not None or supervisor is not None:
                current = self.load(name)
                if isinstance(current, ClusterRecord):
                    if created is not None and current.created != created:
                        return False
                    if supervisor is not None and current.supervisor not in (None, supervisor):
                        return False
                elif isinstance(current, BrokenRecord):
                    return False
            with contextlib.suppress(FileNotFoundError, IsADirectoryError, PermissionError):
                self.path(name).unlink()
            with contextlib.suppress(OSError):
                # A directory named x.json (someone's mistake) is removed only if empty.
                self.path(name).rmdir()
            if files:
                shutil.rmtree(self.cluster_dir(name), ignore_errors=True)
            return True

    # ---------------------------------------------------------------- logs
    def prune_logs(self, keep_per_name: int, keep_total: int, protect: set[str]) -> int:
        """Delete old supervisor logs: the newest ``keep_per_name`` of each name and at most
        ``keep_total`` in all are kept, and never a log in ``protect`` (of a live cluster).
        Returns how many were deleted."""
        entries: list[tuple[float, str, Path]] = []
        with contextlib.suppress(OSError):
            for entry in os.scandir(self.logs):
                if not entry.name.endswith(".log") or not entry.is_file(follow_symlinks=False):
                    continue
                owner = entry.name.rsplit("-", 2)[0]
                with contextlib.suppress(OSError):
                    entries.append((entry.stat().st_mtime, owner, Path(entry.path)))
        entries.sort(reverse=True)  # newest first
        # Logs of live clusters are kept first and count against both limits.
        seen: dict[str, int] = {}
        for _, owner, path in entries:
            if str(path) in protect:
                seen[owner] = seen.get(owner, 0) + 1
        kept = sum(seen.values())
        deleted = 0
        for _, owner, path in entries:
            if str(path) in protect:
                continue
            if seen.get(owner, 0) < keep_per_name and kept < keep_total:
                seen[owner] = seen.get(owner, 0) + 1
                kept += 1
                continue
            with contextlib.suppress(OSError):
                path.unlink()
                deleted += 1
        return deleted
