"""Where a cluster's supervisor runs: on the launching host (default) or as a small Slurm job.

Why a job: a supervisor on a login node dies with the login session (or the node's reboot, or a
site's process reaper), and the whole cluster with it.  With ``slurm.supervisor.where: job`` the
launcher submits the supervisor itself as a one-task Slurm job, so a long cluster lives as long
as that job's walltime, whoever launched it.  The rest does not change: the supervisor writes its
own record (naming the node it runs on, so other hosts judge it ``remote`` and reach it over
TLS), and control goes over the scheduler's comm from any node.

The pieces here:

* :func:`supervisor_job` — the profile's ``supervisor`` section resolved (pure; ``ConfigError``
  naming the field);
* :func:`job_script` — the exact script (pure): ``#SBATCH`` directives, the site's prologue and
  modules, then ``exec python -m ctrlstack.deploy.supervisor --as-job ...`` with every word
  quoted.  The spec goes in a 0600 file of the cluster's private dir, not on the command line
  (``ps`` on the node shows command lines to everyone); the TLS credentials stay where the
  launcher created them (0600 files in the owner's 0700 state dir on the shared filesystem);
* :class:`SupervisorJobRun` — submit, wait for the ready report (a file in the private dir: no
  pipe crosses hosts), fail fast when the job is refused or ends first (with its log tail), and
  cancel it on any failure so nothing is left in the queue.

``--signal=B:TERM@<grace>`` makes Slurm send SIGTERM to the supervisor ``grace`` seconds before
the walltime; ``scancel`` sends SIGTERM too.  Either way the supervisor closes its cluster and
cancels its worker jobs before it exits (see :mod:`ctrlstack.deploy.supervisor`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ctrlstack import _proc
from ctrlstack._config_check import ConfigError, field_error
from ctrlstack.deploy.batch import slurm as S
from ctrlstack.deploy.batch.options import parse_walltime
from ctrlstack.deploy.status import JobStatus
from ctrlstack.errors import Failure

if TYPE_CHECKING:
    from ctrlstack.config import ClusterSpec

__all__ = [
    "READY_FILE",
    "SupervisorJob",
    "SupervisorJobRun",
    "finish_job",
    "job_ended",
    "job_script",
    "supervisor_job",
]

#: The supervisor's ready report, in the cluster's private dir (the pipe of a local launch).
READY_FILE = "ready.json"
#: The spec the supervisor job reads, in the cluster's private dir.
SPEC_FILE = "spec.json"
#: Seconds before the walltime at which Slurm sends the supervisor SIGTERM (it then stops its
#: cluster, which needs well under Slurm's default KillWait of 30 s more).
STOP_GRACE = 60
#: How often the launcher looks at the ready file and the job's state.
POLL = 0.25


class SupervisorJobError(Failure):
    """The supervisor job was refused, ended or did not start in time."""


@dataclass(frozen=True)
class SupervisorJob:
    """The resources of the supervisor's own job (``slurm.supervisor`` of the profile)."""

    partition: str | None
    account: str | None
    qos: str | None
    walltime: int  # seconds
    cores: int
    memory: int  # bytes
    extra_directives: tuple[str, ...] = ()
    prologue: tuple[str, ...] = ()
    modules: tuple[str, ...] = ()

    @property
    def memory_mb(self) -> int:
        return max(1, -(-self.memory // 2**20))


def supervisor_job(spec: ClusterSpec) -> SupervisorJob | None:
    """The supervisor job of ``spec``, or None when the supervisor runs on the launching host.

    Partition, account and QoS default to the workers' (the ``slurm`` section's).
    """
    section: Mapping[str, Any] = dict(spec.options).get("supervisor") or {}
    if section.get("where", "local") != "job":
        return None
    if spec.backend != "slurm":  # the schema allows the section for slurm only
        raise field_error(spec.profile, f"{spec.backend}.supervisor.where", "job", "local")
    from dask.utils import parse_bytes

    def bad(key: str, value: Any, allowed: str) -> ConfigError:
        return field_error(spec.profile, f"slurm.supervisor.{key}", value, allowed)

    raw_walltime = section.get("walltime") or "12:00:00"
    try:
        walltime = parse_walltime(raw_walltime)
    except ValueError:
        raise bad("walltime", raw_walltime, "[D-]HH:MM:SS longer than 0 s") from None
    if walltime <= STOP_GRACE:
        raise bad("walltime", raw_walltime, f"longer than {STOP_GRACE} s")
    raw_memory = section.get("memory") or "2 GiB"
    try:
        memory = int(parse_bytes(raw_memory)) if isinstance(raw_memory, str) else int(raw_memory)
    except (ValueError, TypeError):
        raise bad("memory", raw_memory, "a size such as '2 GiB'") from None
    if memory <= 0:
        raise bad("memory", raw_memory, "a size > 0")
    options = dict(spec.options)

    def inherited(key: str) -> str | None:
        value = section.get(key)
        return value if value is not None else options.get(key)

    return SupervisorJob(
        partition=inherited("partition"),
        account=inherited("account"),
        qos=inherited("qos"),
        walltime=walltime,
        cores=int(section.get("cores") or 1),
        memory=memory,
        extra_directives=tuple(section.get("extra-directives") or ()),
        prologue=tuple(section.get("prologue") or ()),
        modules=tuple(section.get("modules") or ()),
    )


def directives(job: SupervisorJob, *, name: str, log: str) -> list[str]:
    """``#SBATCH`` options of the supervisor job (``log``: the supervisor's log file)."""
    out = [
        *S.one_node(
            job_name=f"ctrlstack-supervisor-{name}",
            partition=job.partition,
            account=job.account,
            qos=job.qos,
            walltime=job.walltime,
            cores=job.cores,
            memory_mb=job.memory_mb,
            output=log,
        ),
        "--open-mode=append",
        f"--signal=B:TERM@{STOP_GRACE}",
        *job.extra_directives,
    ]
    for value in out:
        if "\n" in value or "\r" in value:
            raise ValueError(f"directive {value!r} must not contain a newline")
    return out


def supervisor_argv(
    python: str, *, name: str, profile: str, state_dir: str, spec_file: str, ready_file: str
) -> list[str]:
    """The command the job runs: the supervisor in the foreground, told it is the job."""
    return [
        python, "-m", "ctrlstack.deploy.supervisor",
        "--name", name,
        "--profile", profile,
        "--spec-file", spec_file,
        "--state-dir", state_dir,
        "--ready-file", ready_file,
        "--no-daemon",
        "--as-job",
    ]  # fmt: skip


def job_script(job: SupervisorJob, *, name: str, log: str, argv: Sequence[str]) -> str:
    """The exact script sbatch gets for the supervisor of cluster ``name``."""
    lines = ["#!/bin/bash", *(f"#SBATCH {d}" for d in directives(job, name=name, log=log))]
    lines += ["", f"# ctrlstack supervisor of cluster {name}: scheduler and worker-job owner."]
    lines += list(job.prologue)
    lines += [f"module load {shlex.quote(m)}" for m in job.modules]
    lines.append("exec " + " ".join(shlex.quote(word) for word in argv))
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ the queue, from any host
def job_state(job_id: str) -> JobStatus | None:
    """The job's state from squeue (then scontrol); None when Slurm could not be asked."""
    try:
        result = _proc.run(S.squeue_argv([job_id]), timeout=20, check=False)
    except _proc.CommandError:
        return None
    if result.returncode == 0:
        found = S.parse_squeue(result.stdout).get(job_id)
        if found is not None:
            return found
    elif not S.squeue_gone(result.stderr):
        return None
    try:
        shown = _proc.run(S.scontrol_argv(job_id), timeout=20, check=False)
    except _proc.CommandError:
        return None
    status = S.parse_scontrol(shown.stdout) if shown.returncode == 0 else None
    return status or JobStatus(job_id=job_id, state="COMPLETED", reason="no longer known to Slurm")


def job_ended(job_id: str) -> JobStatus | None:
    """The job's final status if it ended (or Slurm forgot it); None while it may still run."""
    status = job_state(job_id)
    return status if status is not None and status.state in S.FINISHED else None


def finish_job(job_id: str, *, wait: float = 15) -> None:
    """Make sure supervisor job ``job_id`` leaves the queue: it ends on its own once its
    supervisor exited; after ``wait`` seconds it is cancelled (and waited for again)."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        status = job_state(job_id)
        if status is None or status.state in S.FINISHED:
            return
        time.sleep(0.2)
    _proc.run(S.scancel_argv([job_id]), timeout=30, check=False)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        status = job_state(job_id)
        if status is None or status.state in S.FINISHED:
            return
        time.sleep(0.2)


def _tail(path: str, lines: int = 25) -> str:
    try:
        with open(path, errors="replace") as fh:
            return "".join(fh.readlines()[-lines:])
    except OSError:
        return ""


# ------------------------------------------------------------------ submit and wait
class SupervisorJobRun:
    """One launch of a supervisor as a Slurm job (see the module docstring)."""

    def __init__(
        self,
        job: SupervisorJob,
        *,
        name: str,
        profile: str,
        spec: dict[str, Any],
        cluster_dir: Path,
        state_dir: Path,
        log: str,
        python: str,
        env: Mapping[str, str] | None,
    ) -> None:
        self.job = job
        self.name = name
        self.cluster_dir = cluster_dir
        self.log = log
        self.env = env
        self.ready_file = cluster_dir / READY_FILE
        self.spec_file = cluster_dir / SPEC_FILE
        self.script_file = cluster_dir / "supervisor-job.sh"
        self.spec = spec
        self.argv = supervisor_argv(
            python,
            name=name,
            profile=profile,
            state_dir=str(state_dir),
            spec_file=str(self.spec_file),
            ready_file=str(self.ready_file),
        )
        self.job_id: str | None = None

    def script(self) -> str:
        return job_script(self.job, name=self.name, log=self.log, argv=self.argv)

    def check(self) -> None:
        """``sbatch --test-only`` of the supervisor job: a bad partition fails before anything."""
        import tempfile

        from ctrlstack.deploy.backends.slurm import run_batch

        with tempfile.TemporaryDirectory(prefix="ctrlstack-check-") as tmp:
            script = Path(tmp) / "supervisor.sh"
            script.write_text(
                job_script(self.job, name=self.name, log=f"{tmp}/log", argv=self.argv)
            )
            run_batch(S.sbatch_argv(str(script), test_only=True), what="supervisor job")

    def submit(self) -> str:
        """Write the spec and script (0600, private dir) and submit; the job id."""
        for path, text in (
            (self.spec_file, json.dumps(self.spec)),
            (self.script_file, self.script()),
        ):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(text)
        with contextlib.suppress(FileNotFoundError):
            self.ready_file.unlink()
        result = _submit(str(self.script_file), self.env)
        self.job_id = S.parse_sbatch(result.stdout)
        return self.job_id

    def await_ready(self, timeout: float) -> dict[str, Any]:
        """The supervisor's ready report; raises when the job ends first or the time is up."""
        assert self.job_id is not None
        deadline = time.monotonic() + timeout
        next_check = 0.0
        last: JobStatus | None = None
        while True:
            report = self._read_ready()
            if report is not None:
                return report
            now = time.monotonic()
            if now >= next_check:
                next_check = now + 1.0
                last = job_state(self.job_id) or last
                if last is not None and last.state in S.FINISHED:
                    report = self._read_ready()  # written just before it exited?
                    if report is not None:
                        return report
                    why = f" ({last.reason})" if last.reason else ""
                    raise SupervisorJobError(
                        f"the supervisor job {self.job_id} ended ({last.state}{why}) before "
                        f"reporting ready; its log {self.log}:\n{_tail(self.log)}"
                    )
            if now >= deadline:
                where = f"; it is {last.state}" if last is not None else ""
                why = f" ({last.reason})" if last is not None and last.reason else ""
                raise SupervisorJobError(
                    f"the supervisor job {self.job_id} did not report ready within {timeout:g} s "
                    f"(ctrlstack.launch-timeout){where}{why}; its log {self.log}:\n"
                    f"{_tail(self.log)}"
                )
            time.sleep(POLL)

    def _read_ready(self) -> dict[str, Any] | None:
        from ctrlstack.deploy.registry import read_json

        try:
            data = read_json(self.ready_file)
        except (FileNotFoundError, ValueError):
            return None  # not there yet, or being written
        return data if isinstance(data, dict) else None

    def abort(self) -> None:
        """After a failed start: cancel the job (if submitted) and wait until it left the queue."""
        if self.job_id is not None:
            _proc.run(S.scancel_argv([self.job_id]), timeout=30, check=False)
            finish_job(self.job_id, wait=15)


def _submit(script: str, env: Mapping[str, str] | None) -> _proc.CommandResult:
    """``sbatch`` with the stack's environment (the job inherits it: ``--export=ALL``)."""
    from ctrlstack.deploy.backends.slurm import BatchCommandFailed, SubmitError

    try:
        return _proc.run(S.sbatch_argv(script), env=env, timeout=30)
    except _proc.CommandError as exc:
        reason = S.is_rejection(exc.stderr) if exc.returncode is not None else None
        if reason is not None:
            raise SubmitError(f"Slurm refused the supervisor job: {reason}") from None
        raise BatchCommandFailed(str(exc)) from None
