"""Cluster lifecycle decisions: is a cluster alive, stop it, forget it, clean up after it.

The registry (:mod:`.registry`) only stores; this module judges and acts, and the API and CLI
only call it.  How a record is judged depends on where it was made:

* **on this host, this boot**: by its supervisor's identity (pid + start time + host + boot
  id, :class:`~ctrlstack.deploy.procs.ProcessId`);
* **on this host before a reboot**: dead (nothing survives a reboot);
* **on another host** (a home shared by many hosts): never by pid.  Its scheduler is asked over
  TLS with a short timeout: ``remote`` if it answers, ``unreachable`` if not.  Such a record is
  never removed and nothing of it is signalled from here;
* **broken** (unreadable, not JSON, not a regular file): reported with its path and reason.  The
  supervisor's pid file may still prove the cluster runs; then it can be stopped, and its
  supervisor rewrites the record on its own.  Removing a broken record is an explicit
  :func:`forget`.

A dead cluster is reported once (``state="dead"``) and cleaned up: its record is removed under
the registry lock (only if it is still the same record), what is left of its process group is
stopped, and its batch jobs are cancelled through its backend.
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import time
from typing import TYPE_CHECKING, Any

from ctrlstack.deploy import control, procs
from ctrlstack.deploy.registry import BrokenRecord, ClusterRecord, Registry
from ctrlstack.deploy.security import Credentials
from ctrlstack.deploy.status import ClusterStatus, JobStatus
from ctrlstack.errors import ConflictError, NotFoundError, UnreachableError, UserError

if TYPE_CHECKING:
    from distributed.security import Security

logger = logging.getLogger(__name__)

__all__ = [
    "STARTING_GRACE",
    "BrokenRecordError",
    "ClusterNotFoundError",
    "forget",
    "job_log_path",
    "judge",
    "log_path",
    "log_tail",
    "security",
    "stop",
    "sweep",
]

#: Seconds a record may stay "starting" without a supervisor before it counts as dead.
STARTING_GRACE = 120.0

#: Seconds to wait for a remote cluster's scheduler when judging it.
REMOTE_TIMEOUT = 2.0


class ClusterNotFoundError(NotFoundError):
    """No cluster of that name is registered for this user."""


class BrokenRecordError(UserError):
    """A damaged record names a cluster that cannot be reached through it."""

    http_status = 409


def security(registry: Registry, name: str) -> Security:
    """The TLS settings to talk to cluster ``name`` (checked: ours, private)."""
    return Credentials.load(registry.tls_dir(name)).security()


def _status(record: ClusterRecord, state: str, message: str | None = None) -> ClusterStatus:
    return ClusterStatus(
        name=record.name,
        profile=record.profile,
        backend=record.backend,
        state=state,
        owner=record.owner,
        host=record.host,
        created=record.created,
        ephemeral=record.ephemeral,
        address=record.address,
        dashboard=record.dashboard,
        pid=record.supervisor.pid if record.supervisor else None,
        requested=record.requested,
        jobs=[JobStatus(job_id=j) for j in record.job_ids],
        log=record.log,
        message=message,
    )


def _pid_file_process(registry: Registry, name: str) -> tuple[procs.ProcessId | None, Any]:
    """(identity, pid-file data) of a supervisor the pid file proves alive here, else (None, ...)."""
    data = registry.read_pid_file(name)
    if data is None:
        return None, None
    ident = procs.ProcessId.from_dict(data.get("supervisor"))
    if ident is None or ident.process() is None:
        return None, data
    return ident, data


def _broken_status(registry: Registry, broken: BrokenRecord) -> ClusterStatus:
    ident, _ = _pid_file_process(registry, broken.name)
    message = f"record {broken.path} is unusable: {broken.reason}"
    if ident is not None:
        message += (
            f"; its supervisor (pid {ident.pid}) still runs and will rewrite the record, and "
            f"'ctrlstack stop {broken.name}' stops it"
        )
    else:
        message += f"; remove it with 'ctrlstack forget {broken.name}'"
    return ClusterStatus(
        name=broken.name,
        state="broken",
        path=str(broken.path),
        pid=ident.pid if ident else None,
        host=procs.hostname() if ident else None,
        message=message,
    )


def _probe(registry: Registry, record: ClusterRecord) -> str | None:
    """None if the remote scheduler answers over TLS, else why not."""
    if not record.address:
        return "no scheduler address recorded"
    try:
        control.call(
            record.address,
            "identity",
            security=security(registry, record.name),
            timeout=REMOTE_TIMEOUT,
        )
    except Exception as exc:  # noqa: BLE001 - any failure means "not reachable from here"
        return str(exc) or type(exc).__name__
    return None


def judge(registry: Registry, entry: ClusterRecord | BrokenRecord) -> ClusterStatus:
    """The state of one registry entry (no side effects apart from asking a remote scheduler)."""
    if isinstance(entry, BrokenRecord):
        return _broken_status(registry, entry)
    record = entry
    if not record.local:
        if record.host == procs.hostname():
            return _status(record, "dead", "this host was rebooted since the cluster started")
        why = _probe(registry, record)
        if why is None:
            return _status(record, "remote", f"runs on host {record.host}")
        ended = _supervisor_job_ended(record)
        if ended is not None:
            # The batch system is the one witness every host can ask: the job that ran this
            # supervisor is over, so the supervisor is too (its scheduler just did not answer).
            why = f" ({ended.reason})" if ended.reason else ""
            return _status(
                record,
                "dead",
                f"its supervisor job {ended.job_id} on host {record.host} ended "
                f"({ended.state}{why})",
            )
        return _status(
            record, "unreachable", f"runs on host {record.host}, not reachable from here: {why}"
        )
    if record.supervisor is not None:
        if record.supervisor.process() is not None:
            return _status(record, record.state)
        return _status(record, "dead", f"supervisor (pid {record.supervisor.pid}) is gone")
    if record.state == "starting" and time.time() - record.created < STARTING_GRACE:
        return _status(record, "starting")
    return _status(record, "dead", "the launch never completed")


def _supervisor_job_ended(record: ClusterRecord) -> JobStatus | None:
    """The final status of the record's supervisor job if it ended (None: no such job, or it
    may still run, or the batch system could not be asked)."""
    if not record.supervisor_job:
        return None
    from ctrlstack.deploy import placement

    try:
        return placement.job_ended(record.supervisor_job)
    except Exception:  # noqa: BLE001 - no answer is no proof of death
        return None


def _finish_supervisor_job(record: ClusterRecord) -> None:
    """After a stop: the supervisor job must leave the queue too (it ends once its supervisor
    exits; cancelled if it does not)."""
    if record.supervisor_job:
        from ctrlstack.deploy import placement

        try:
            placement.finish_job(record.supervisor_job)
        except Exception:
            logger.exception("could not finish supervisor job %s", record.supervisor_job)


def _cancel_jobs(record: ClusterRecord) -> None:
    if record.supervisor_job:
        _finish_supervisor_job(record)
    if not record.job_ids:
        return
    from ctrlstack.deploy.backends import backend_class

    try:
        options = record.spec.get(record.backend) or {}
        backend_class(record.backend).cancel(list(record.job_ids), dict(options))
    except Exception:
        logger.exception("could not cancel jobs %s of cluster %s", record.job_ids, record.name)


def clean_up(registry: Registry, record: ClusterRecord) -> None:
    """Remove a dead cluster's record (if still the same), stop its leftovers, cancel its jobs.

    Leftover processes are only looked for on the record's own host, by the process group of a
    supervisor whose identity was recorded, and only among processes started after the record.
    """
    if not registry.remove(record.name, created=record.created):
        return  # a newer cluster took the name meanwhile: not ours to touch
    if record.local and record.supervisor is not None and record.pgid is not None:
        procs.stop_leftovers(record.pgid, since=record.created)
    _cancel_jobs(record)


def sweep(registry: Registry) -> list[ClusterStatus]:
    """Every cluster of this user, judged; dead ones are reported once and cleaned up.

    Remote records are probed in parallel, so one unreachable host costs one timeout in all.
    """
    entries = list(registry)
    with concurrent.futures.ThreadPoolExecutor(max(1, min(8, len(entries)))) as pool:
        statuses = list(pool.map(lambda e: judge(registry, e), entries))
    for entry, status in zip(entries, statuses, strict=True):
        if status.state == "dead" and isinstance(entry, ClusterRecord):
            clean_up(registry, entry)
    return statuses


def _wait_removed(registry: Registry, record: ClusterRecord, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        current = registry.read(record.name)
        if current is None or current.created != record.created:
            return True
        time.sleep(0.1)
    return False


def _stop_local(
    registry: Registry,
    name: str,
    ident: procs.ProcessId | None,
    address: str | None,
    timeout: float,
) -> None:
    """Ask a local supervisor to stop (over TLS), then make sure it is gone."""
    proc = ident.process() if ident is not None else None
    if proc is None:
        return
    if address:
        try:
            control.call(address, "ctrlstack_stop", security=security(registry, name))
        except Exception as exc:  # noqa: BLE001 - fall back to a signal
            logger.info("stop request to %s failed (%s); terminating its supervisor", name, exc)
        if not procs.wait_gone([proc], timeout):
            return
    procs.terminate(proc, 5.0)


def stop(registry: Registry, name: str, *, timeout: float = 30) -> None:
    """Stop cluster ``name`` and make sure nothing of it is left (processes, jobs, record)."""
    entry = registry.load(name)
    if entry is None:
        raise ClusterNotFoundError(f"no cluster named {name!r}; see 'ctrlstack list'")
    if isinstance(entry, BrokenRecord):
        ident, data = _pid_file_process(registry, name)
        if ident is None:
            raise BrokenRecordError(
                f"the record of cluster {name!r} ({entry.path}) is unusable ({entry.reason}) and "
                f"no running supervisor of it was found; remove it with 'ctrlstack forget {name}'"
            )
        _stop_local(registry, name, ident, data.get("address"), timeout)
        pgid, created = data.get("pgid"), data.get("created")
        if isinstance(pgid, int) and isinstance(created, int | float):
            procs.stop_group(pgid, since=float(created))
        registry.remove(name)
        return
    record = entry
    if not record.local and record.host != procs.hostname():
        if not record.address:
            raise UnreachableError(
                f"cluster {name!r} runs on host {record.host} and has no scheduler address yet; "
                "try again, or stop it on that host"
            )
        try:
            control.call(record.address, "ctrlstack_stop", security=security(registry, name))
        except Exception as exc:
            raise UnreachableError(
                f"cluster {name!r} runs on host {record.host}, whose scheduler "
                f"{record.address} does not answer from here ({exc}); stop it on "
                f"{record.host}, or remove the record with 'ctrlstack forget {name}'"
            ) from exc
        if not _wait_removed(registry, record, timeout):
            raise UnreachableError(
                f"cluster {name!r} on host {record.host} accepted the stop request but its "
                f"record is still there after {timeout:g} s; check 'ctrlstack list'"
            )
        _finish_supervisor_job(record)
        return
    if record.supervisor is None and judge(registry, record).state == "starting":
        raise ConflictError(
            f"cluster {name!r} is still starting; stop it once 'ctrlstack list' shows it running"
        )
    _stop_local(registry, name, record.supervisor, record.address, timeout)
    # The supervisor removes its own record; whatever remains (it was killed, or never ran)
    # is cleaned up here.
    clean_up(registry, record)
    _finish_supervisor_job(record)


def log_path(registry: Registry, name: str) -> str:
    """The supervisor log of ``name``: its record's, or the newest one left by a past launch."""
    record = registry.read(name)
    if record is not None and record.log:
        return record.log
    candidates = sorted(
        registry.logs.glob(f"{name}-*.log"), key=lambda p: p.stat().st_mtime, reverse=True
    )
    # The glob also matches "<name>-x-<stamp>-<pid>.log" of a cluster named "<name>-x".
    candidates = [p for p in candidates if p.name.rsplit("-", 2)[0] == name]
    if not candidates:
        raise ClusterNotFoundError(
            f"no cluster named {name!r} and no log of one; see 'ctrlstack list'"
        )
    return str(candidates[0])


def job_log_path(registry: Registry, name: str, job_id: str) -> str:
    """The log of batch job ``job_id`` of cluster ``name``, from its backend."""
    from ctrlstack.config import ClusterSpec
    from ctrlstack.deploy.backends import backend_class

    record = registry.read(name)
    if record is None:
        raise ClusterNotFoundError(f"no cluster named {name!r}; see 'ctrlstack list'")
    spec = ClusterSpec.from_dict(record.spec, profile=record.profile)
    backend = backend_class(record.backend)(
        spec, cluster_name=name, workdir=registry.cluster_dir(name)
    )
    path = backend.job_log(job_id)
    if path is None:
        raise UserError(f"cluster {name!r} ({record.backend} backend) has no batch jobs")
    return path


def log_tail(registry: Registry, name: str, *, lines: int = 200, job: str | None = None) -> str:
    """The last ``lines`` lines of ``name``'s supervisor log, or of its batch job ``job``."""
    if not isinstance(lines, int) or isinstance(lines, bool) or lines < 1:
        raise UserError(f"lines must be an integer >= 1, got {lines!r}")
    path = log_path(registry, name) if job is None else job_log_path(registry, name, job)
    try:
        with open(path, errors="replace") as fh:
            return "".join(collections.deque(fh, maxlen=lines))
    except OSError as exc:
        raise ClusterNotFoundError(
            f"the log of {name!r} ({path}) cannot be read: {exc.strerror}"
        ) from None


def forget(registry: Registry, name: str) -> ClusterStatus:
    """Remove the record of a cluster that is broken, dead or unreachable; signals nothing.

    Refused while the cluster provably runs (a live local supervisor, or a remote scheduler
    that answers): that is what :func:`stop` is for.
    """
    entry = registry.load(name)
    if entry is None:
        raise ClusterNotFoundError(f"no cluster named {name!r}; see 'ctrlstack list'")
    status = judge(registry, entry)
    if status.state in ("starting", "running", "stopping", "remote"):
        raise ConflictError(
            f"cluster {name!r} is {status.state}; stop it with 'ctrlstack stop {name}' instead"
        )
    if status.state == "broken" and status.pid is not None:
        raise ConflictError(
            f"the record of {name!r} is damaged but its supervisor (pid {status.pid}) still "
            f"runs; stop it with 'ctrlstack stop {name}'"
        )
    registry.remove(name)
    if isinstance(entry, ClusterRecord) and status.state == "unreachable":
        logger.warning(
            "forgot cluster %s of host %s; if it still runs there, its jobs keep running",
            name,
            entry.host,
        )
    return status
