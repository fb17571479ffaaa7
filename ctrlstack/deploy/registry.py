"""The per-user cluster registry: one small JSON file per cluster in the user's state dir.

Every door (CLI, notebook API, JupyterLab extension, widgets) finds clusters here, so a cluster
launched from a notebook can be listed and stopped from a terminal and vice versa.  Files are 0600
in a 0700 directory; they are written atomically (temp file + rename) so a reader never sees half
a record, and a name is *reserved* with ``O_EXCL`` so two launches cannot claim it at once.

A record names its supervisor by pid **and** process start time: a pid alone can be reused by an
unrelated process after the supervisor died, which would make a dead cluster look alive.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import re
import signal
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import psutil

__all__ = [
    "NAME_PATTERN",
    "ClusterRecord",
    "NameTakenError",
    "Registry",
    "validate_name",
]

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")

#: Seconds a record may stay "starting" without a live supervisor before it counts as dead.
STARTING_GRACE = 120.0


class NameTakenError(ValueError):
    """A cluster of that name is already registered (and alive)."""


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
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

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
        if self.pgid is None:
            return []
        started = self.created - 1.0
        found = []
        for proc in psutil.process_iter(["pid", "create_time"]):
            try:
                if os.getpgid(proc.pid) == self.pgid and proc.info["create_time"] >= started:
                    found.append(proc)
            except (ProcessLookupError, PermissionError, psutil.Error):
                continue
        return found

    def reap(self, timeout: float = 5.0) -> int:
        """Terminate what a dead supervisor left behind; returns how many processes were found."""
        procs = self.leftovers()
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                proc.send_signal(signal.SIGTERM)
        _, alive = psutil.wait_procs(procs, timeout=timeout)
        for proc in alive:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(alive, timeout=timeout)
        return len(procs)


class Registry:
    """Cluster records of one user, stored as ``<state_dir>/clusters/<name>.json``."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        if root is None:
            from ctrlstack.config import state_dir

            root = state_dir()
        self.root = Path(root)
        self.dir = self.root / "clusters"
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.dir, 0o700)

    def path(self, name: str) -> Path:
        return self.dir / f"{validate_name(name)}.json"

    def log_path(self, name: str) -> Path:
        return self.dir / f"{validate_name(name)}.log"

    # ---------------------------------------------------------------- writes
    def reserve(self, record: ClusterRecord) -> None:
        """Create the record only if no live cluster holds the name (atomic with ``O_EXCL``)."""
        path = self.path(record.name)
        for _ in range(2):
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                existing = self.read(record.name)
                if existing is not None and existing.is_alive():
                    raise NameTakenError(
                        f"a cluster named {record.name!r} already exists "
                        f"(state {existing.state}, address {existing.address}); "
                        f"stop it with 'ctrlstack stop {record.name}' or choose another name"
                    ) from None
                # The old holder is dead: clean up after it and retry once.
                if existing is not None:
                    existing.reap()
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                continue
            with os.fdopen(fd, "w") as fh:
                json.dump(record.to_dict(), fh, indent=1)
            return
        raise NameTakenError(f"could not reserve cluster name {record.name!r}; try again")

    def write(self, record: ClusterRecord) -> None:
        """Replace a record atomically (0600)."""
        path = self.path(record.name)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(record.to_dict(), fh, indent=1)
        os.replace(tmp, path)

    def remove(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(name).unlink()

    # ---------------------------------------------------------------- reads
    def read(self, name: str) -> ClusterRecord | None:
        try:
            data = json.loads(self.path(name).read_text())
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, TypeError):
            # A corrupt record still names a cluster; keep the name so it can be cleaned up.
            return ClusterRecord(name=name, profile="?", backend="?", state="dead")
        return ClusterRecord.from_dict(data)

    def __iter__(self) -> Iterator[ClusterRecord]:
        for path in sorted(self.dir.glob("*.json")):
            record = self.read(path.stem)
            if record is not None:
                yield record

    def sweep(self) -> list[ClusterRecord]:
        """All records, with dead supervisors detected, their leftovers reaped and records removed.

        Dead clusters are returned once with ``state="dead"`` so the caller can report them.
        """
        out = []
        for record in self:
            if record.state != "dead" and record.is_alive():
                out.append(record)
                continue
            record.state = "dead"
            record.reap()
            self.remove(record.name)
            out.append(record)
        return out
