"""The run record: what was submitted, where it runs, where its outputs go, how it ended.

One JSON file per run under ``<state dir>/runs/`` (mode 0600, written atomically), the same
place and habits as cluster records, so every door can list runs (``ctrlstack runs``, later
``ctrlstack list`` and the Lab sidebar).  A run is "local" (a detached process on this host,
``process``: pid + start time + host + boot) or "batch" (``job_id`` in the ``scheduler``'s queue);
the executor updates ``state`` as it goes.  :func:`judge` notices a run whose executor provably
died without writing its end (killed), so no run stays "running" forever; batch jobs that ended
before their executor could write anything are judged from the queue (:mod:`.batch`).

The fields are a public shape (the Lab sidebar reads :func:`list_runs`): add, never rename.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import secrets
import socket
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ctrlstack.errors import NotFoundError

__all__ = [
    "STATES",
    "RunRecord",
    "is_run_id",
    "judge",
    "list_runs",
    "load",
    "new_id",
    "process_alive",
    "remove",
    "runs_dir",
    "save",
]

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
    #: The executor's identity (:class:`~ctrlstack.deploy.procs.ProcessId` as a dict: pid, start
    #: time, host, boot), so a reused pid is never taken for the run's process.
    process: dict[str, Any] | None = None
    scheduler: str | None = None  # batch runs: "slurm" | "pbs" (the queue ``job_id`` is in)

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
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
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


def remove(record: RunRecord, state_dir: pathlib.Path | None = None) -> None:
    """Drop a run's record (a batch submission the queue refused leaves none behind)."""
    (runs_dir(state_dir) / f"{record.id}.json").unlink(missing_ok=True)


#: Run ids as :func:`new_id` makes them (also what keeps a path out of a record's file name).
_ID = re.compile(r"^\d{8}-\d{6}-[0-9a-f]{4}$")


def is_run_id(text: str) -> bool:
    return bool(_ID.match(text))


def load(run_id: str, state_dir: pathlib.Path | None = None) -> RunRecord:
    if not is_run_id(run_id):
        raise NotFoundError(f"no run {run_id!r} (run ids look like 20261125-153012-a1b2)")
    path = runs_dir(state_dir) / f"{run_id}.json"
    try:
        return judge(RunRecord.from_dict(json.loads(path.read_text())))
    except FileNotFoundError:
        raise NotFoundError(f"no run {run_id!r}; see 'ctrlstack runs'") from None
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        raise NotFoundError(
            f"run record {str(path)!r} is unreadable ({type(exc).__name__}); delete it"
        ) from None


def process_alive(record: RunRecord) -> bool | None:
    """Whether the run's executor still runs: True/False where that can be proven (its own host
    and boot, pid *and* start time matching, zombies gone), None where it cannot (another host,
    or an old record without a start time whose pid still exists)."""
    from ctrlstack.deploy.procs import ProcessId

    ident = ProcessId.from_dict(record.process)
    if ident is not None:
        return ident.alive()
    if record.pid is None or record.host != socket.gethostname():
        return None
    return None if ProcessId.of(record.pid) is not None else False


def judge(record: RunRecord) -> RunRecord:
    """A run recorded as running whose executor is provably gone has failed (it was killed)."""
    if record.state in ("pending", "running") and process_alive(record) is False:
        record.state = "failed"
        record.error = record.error or "the run's process died without recording its end"
    return record


def list_runs(state_dir: pathlib.Path | None = None) -> list[RunRecord]:
    """Every run of this user, oldest first (unreadable files are skipped).

    Ordered by the recorded creation time, not the file name: ids carry the second only, so two
    runs submitted within one second would otherwise list in the order of their random suffix.
    """
    out = []
    for path in runs_dir(state_dir).glob("*.json"):
        try:
            out.append(judge(RunRecord.from_dict(json.loads(path.read_text()))))
        except (OSError, ValueError, TypeError, AttributeError):
            continue

    def _key(record: RunRecord) -> tuple[float, str]:
        created = record.created if isinstance(record.created, (int, float)) else 0.0
        return (float(created), str(record.id))

    return sorted(out, key=_key)
