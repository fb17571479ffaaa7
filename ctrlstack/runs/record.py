"""The run record: what was submitted, where it runs, where its outputs go, how it ended.

One JSON file per run under ``<state dir>/runs/`` (mode 0600, written atomically), the same
place and habits as cluster records, so every door can list runs (``ctrlstack runs``, later
``ctrlstack list`` and the Lab sidebar).  A run is "local" (a detached process on this host,
``pid`` + start time) or "batch" (``job_id`` in a queue, filled in by a batch backend); the
executor inside updates ``state`` as it goes.  :func:`judge` notices a local run whose process
died without writing its end (killed), so no run stays "running" forever.
"""

from __future__ import annotations

import json
import os
import pathlib
import secrets
import socket
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ctrlstack.errors import NotFoundError

__all__ = ["STATES", "RunRecord", "list_runs", "load", "new_id", "runs_dir", "save"]

#: pending (recorded, not started) -> running -> succeeded | failed | cancelled
STATES = ("pending", "running", "succeeded", "failed", "cancelled")


@dataclass
class RunRecord:
    id: str
    kind: str  # "notebook" | "script"
    input: str  # absolute path of the submitted file
    output_dir: str
    profile: str
    mode: str  # "local" (detached process) | "batch" (a job of the profile's backend)
    params: dict[str, Any] = field(default_factory=dict)
    args: list[str] = field(default_factory=list)  # script arguments
    kernel: str | None = None
    state: str = "pending"
    host: str = field(default_factory=socket.gethostname)
    pid: int | None = None
    job_id: str | None = None  # batch backends: the queue's id
    cluster: str | None = None  # the ephemeral cluster's name while it exists
    created: float = field(default_factory=time.time)
    started: float | None = None
    ended: float | None = None
    exit_code: int | None = None
    error: str | None = None  # one line: what failed (for notebooks: which cell and why)
    failed_cell: int | None = None  # index of the failing cell in the notebook

    @property
    def stem(self) -> str:
        return f"{pathlib.Path(self.input).stem}.{self.id}"

    @property
    def output(self) -> str:
        """The executed notebook (written also when a cell fails); a script's output is its log."""
        if self.kind != "notebook":
            return self.log
        return str(pathlib.Path(self.output_dir) / f"{self.stem}.ipynb")

    @property
    def log(self) -> str:
        return str(pathlib.Path(self.output_dir) / f"{self.stem}.log")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["output"] = self.output
        out["log"] = self.log
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunRecord:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def new_id() -> str:
    """Sortable and unique enough for one user's runs: ``20261125-153012-a1b2``."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(2)


def runs_dir(state_dir: pathlib.Path | None = None) -> pathlib.Path:
    if state_dir is None:
        from ctrlstack.config import state_dir as _state_dir

        state_dir = _state_dir()
    path = state_dir / "runs"
    path.mkdir(mode=0o700, exist_ok=True)
    return path


def save(record: RunRecord, state_dir: pathlib.Path | None = None) -> None:
    """Write atomically (temp file + rename), 0600: records name files and may carry params."""
    path = runs_dir(state_dir) / f"{record.id}.json"
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(record.to_dict(), fh, indent=2, default=str)
    os.replace(tmp, path)


def load(run_id: str, state_dir: pathlib.Path | None = None) -> RunRecord:
    path = runs_dir(state_dir) / f"{run_id}.json"
    try:
        return judge(RunRecord.from_dict(json.loads(path.read_text())))
    except FileNotFoundError:
        raise NotFoundError(f"no run {run_id!r}; see 'ctrlstack runs'") from None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (a child of ours not yet reaped) has finished for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return False


def judge(record: RunRecord) -> RunRecord:
    """A local run on this host recorded as running whose process is gone has failed."""
    if (
        record.state in ("pending", "running")
        and record.mode == "local"
        and record.host == socket.gethostname()
        and record.pid is not None
        and not _alive(record.pid)
    ):
        record.state = "failed"
        record.error = record.error or "the run's process died without recording its end"
    return record


def list_runs(state_dir: pathlib.Path | None = None) -> list[RunRecord]:
    """Every run of this user, oldest first (unreadable files are skipped)."""
    out = []
    for path in sorted(runs_dir(state_dir).glob("*.json")):
        try:
            out.append(judge(RunRecord.from_dict(json.loads(path.read_text()))))
        except (OSError, ValueError, TypeError):
            continue
    return out
