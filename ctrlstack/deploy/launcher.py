"""Start a supervisor process and wait for its one-line ready report.

Order matters for "bad input changes nothing": the spec is validated and checked by its backend
(for ``local``: planned) *here*, before anything is created; only then is the name reserved, the
cluster's TLS credentials created and the supervisor spawned.  If the supervisor fails, times out
or dies, everything it started is stopped (by process group) and the record and private dir are
removed before the error reaches the caller.

After the spawn the launcher never writes the record: the supervisor registers its own identity
and process group (see :mod:`ctrlstack.deploy.supervisor`), and a read-modify-write here could
put a stale copy back over the supervisor's.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import subprocess
import time
from typing import Any

from ctrlstack import _proc
from ctrlstack.config import ClusterSpec, log_retention
from ctrlstack.deploy import lifecycle, placement, procs
from ctrlstack.deploy.backends import backend_class
from ctrlstack.deploy.registry import BrokenRecord, ClusterRecord, Registry, validate_name
from ctrlstack.deploy.security import Credentials
from ctrlstack.deploy.status import ClusterStatus
from ctrlstack.errors import Failure, UserError
from ctrlstack.stacks.runtime import runtime

__all__ = ["LaunchError", "check_spec", "start_supervisor"]


class LaunchError(Failure):
    """A cluster did not start; the message carries the cause and the supervisor's log tail."""


class LaunchRefused(UserError):
    """The backend refused the request while starting (e.g. a batch system rejected the job)."""


def check_spec(spec: ClusterSpec, name: str = "check") -> None:
    """Raise a ``UserError`` (``PlanError``, ``ConfigError``) now if the spec cannot work."""
    backend_class(spec.backend)(spec, cluster_name=name).check()


def _tail(path: str | None, lines: int = 25) -> str:
    if not path:
        return ""
    try:
        with open(path, errors="replace") as fh:
            return "".join(fh.readlines()[-lines:])
    except OSError:
        return ""


def _why_taken(registry: Registry, existing: ClusterRecord | BrokenRecord) -> str | None:
    """None if ``existing`` may be replaced (its cluster is dead), else why not."""
    status = lifecycle.judge(registry, existing)
    name = status.name
    if status.state == "dead":
        return None
    if status.state == "broken":
        return (
            f"the name {name!r} is held by a damaged record ({status.message}); remove it with "
            f"'ctrlstack forget {name}' or choose another name"
        )
    where = f" on host {status.host}" if status.state in ("remote", "unreachable") else ""
    return (
        f"a cluster named {name!r} already exists{where} (state {status.state}, address "
        f"{status.address}); stop it with 'ctrlstack stop {name}' or choose another name"
    )


def _prune_logs(registry: Registry) -> None:
    keep_per_name, keep_total = log_retention()
    live = {r.log for r in registry if isinstance(r, ClusterRecord) and r.log}
    registry.prune_logs(keep_per_name, keep_total, protect=live)


def start_supervisor(
    name: str,
    spec: ClusterSpec,
    *,
    registry: Registry,
    timeout: float,
    ephemeral: bool = False,
) -> ClusterStatus:
    """Spawn the supervisor for ``name`` and return its ready report (the cluster status)."""
    validate_name(name)
    check_spec(spec, name)
    python, env = runtime(spec.stack)  # the profile's stack runs supervisor and workers
    log_path = registry.new_log(name)
    placed = placement.supervisor_job(spec)  # validated for every launch
    job: placement.SupervisorJobRun | None = None
    # An ephemeral cluster's supervisor watches its owner process, which only works beside it:
    # it stays on this host whatever the profile says (docs/batch.md).
    if placed is not None and not ephemeral:
        job = placement.SupervisorJobRun(
            placed,
            name=name,
            profile=spec.profile,
            spec=spec.to_dict(),
            cluster_dir=registry.cluster_dir(name),
            state_dir=registry.root,
            log=str(log_path),
            python=python,
            env=env,
        )
        job.check()  # sbatch --test-only: a refused supervisor job changes nothing
    reservation = ClusterRecord(
        name=name,
        profile=spec.profile,
        backend=spec.backend,
        spec=spec.to_dict(),
        ephemeral=ephemeral,
        owner_process=procs.ProcessId.current() if ephemeral else None,
        log=str(log_path),
    )
    replaced = registry.reserve(reservation, lambda e: _why_taken(registry, e))
    # From here on every exit path must release the name: nothing before the try may fail.
    read_fd = write_fd = -1
    proc: subprocess.Popen[bytes] | None = None
    spawned_at = time.time()
    try:
        if isinstance(replaced, ClusterRecord):
            # A dead cluster held the name: stop its leftovers and jobs (its record is gone).
            if replaced.local and replaced.supervisor is not None and replaced.pgid is not None:
                procs.stop_leftovers(replaced.pgid, since=replaced.created)
            lifecycle._cancel_jobs(replaced)
        shutil.rmtree(registry.cluster_dir(name), ignore_errors=True)  # a dead one's files
        registry.make_cluster_dir(name)
        Credentials.create(registry.tls_dir(name))
        # Create this launch's log before pruning, so that it counts among the kept ones (it is
        # protected as the reservation's log): pruning first left keep-per-name + 1 logs.
        os.close(os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
        _prune_logs(registry)
        if job is not None:
            job.submit()
            return _parse_report(job.await_ready(timeout))
        read_fd, write_fd = os.pipe()
        argv = [
            python, "-m", "ctrlstack.deploy.supervisor",
            "--name", name,
            "--profile", spec.profile,
            "--spec", json.dumps(spec.to_dict()),
            "--state-dir", str(registry.root),
            "--ready-fd", str(write_fd),
        ]  # fmt: skip
        if reservation.owner_process is not None:
            argv += ["--owner", json.dumps(reservation.owner_process.to_dict())]
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as log:
            spawned_at = time.time()
            proc = _proc.spawn(
                argv, env=env, stdout=log, stderr=log, pass_fds=[write_fd], new_session=True
            )
        os.close(write_fd)
        write_fd = -1
        report = _await_ready(read_fd, timeout, str(log_path))
        proc.wait(5)  # the intermediate parent of the daemonised supervisor
    except BaseException as exc:
        if job is not None:
            job.abort()  # scancel and wait: no supervisor job is left in the queue
        if proc is not None:
            # The group id is the pid of the process we spawned (its session leader); only
            # members started since the spawn count.
            procs.stop_group(proc.pid, since=spawned_at)
            with contextlib.suppress(Exception):
                proc.wait(5)
        if registry.remove(name, created=reservation.created, files=False):
            shutil.rmtree(registry.cluster_dir(name), ignore_errors=True)
        if isinstance(exc, UserError | LaunchError):
            raise
        if isinstance(exc, Exception):
            raise LaunchError(f"cluster {name!r} failed to start: {exc}") from exc
        raise
    finally:
        for end in (read_fd, write_fd):
            if end >= 0:
                os.close(end)
    return report


def _await_ready(read_fd: int, timeout: float, log_path: str) -> ClusterStatus:
    deadline = time.monotonic() + timeout
    buf = b""
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            raise LaunchError(
                f"the supervisor did not report ready within {timeout:g} s "
                f"(ctrlstack.launch-timeout); its log:\n{_tail(log_path)}"
            )
        ready, _, _ = select.select([read_fd], [], [], min(left, 0.5))
        if not ready:
            continue
        chunk = os.read(read_fd, 65536)
        if not chunk:  # EOF: the supervisor died without a word
            # proc is only the intermediate parent of the double fork (it exits 0 at once), so
            # its exit code says nothing about the supervisor: the log does.
            raise LaunchError(
                f"the supervisor exited before reporting ready; its log:\n{_tail(log_path)}"
            )
        buf += chunk
    return _parse_report(json.loads(buf.split(b"\n", 1)[0]))


def _parse_report(report: dict[str, Any]) -> ClusterStatus:
    """The supervisor's ready report -> its status, or the error it reported."""
    if not report.get("ok"):
        message = report.get("error", "unknown error")
        if report.get("kind") == "user":
            raise LaunchRefused(message)
        raise LaunchError(f"{report.get('type', 'Error')}: {message}")
    return ClusterStatus.from_dict(report["status"])
