"""Job scripts from one template, shared by Slurm and PBS (and what ``ctrlstack script`` prints).

The script is the only shell text ctrlstack produces.  Values from profiles reach it in two ways
only: as scheduler directives (``#SBATCH --partition=...``: comments to bash, parsed by the
scheduler; a newline inside a value could smuggle in another directive, so it is refused), and as
argv words of the worker command, each quoted with :func:`shlex.quote`.  The site escape hatches
``prologue`` lines and ``modules`` are the exception by design: they are shell, written by the
site's admin or the profile's owner, exactly as they would write them in their own job scripts.

Secrets never appear here: the worker finds the cluster's TLS credentials through
``CTRLSTACK_CREDENTIALS``, a *path* to the owner's 0700 directory on the shared filesystem.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .options import BatchOptions

__all__ = ["CREDENTIALS_ENV", "WorkerCommand", "queue_script", "render_script", "worker_command"]

#: Where ``ctrlstack worker`` finds the cluster's TLS credentials (a directory path).
CREDENTIALS_ENV = "CTRLSTACK_CREDENTIALS"

TEMPLATE = """\
#!{shell}
{directives}

# ctrlstack job for cluster {cluster}: {workers} pinned Dask worker(s) of this job.
set -e
{prologue}{exports}
exec {command}
"""


def _no_newline(what: str, value: str) -> str:
    if "\n" in value or "\r" in value:
        raise ValueError(f"{what} {value!r} must not contain a newline")
    return value


@dataclass(frozen=True)
class WorkerCommand:
    """The argv of ``ctrlstack worker`` inside a job (see :mod:`ctrlstack.deploy.worker`).

    Run as ``python -m ctrlstack.cli_batch``: the profile's interpreter, so the job uses the same
    installation as the supervisor whatever ``PATH`` the node has.
    """

    python: str
    scheduler: str
    name: str
    workers: int
    threads: int | None
    task_threads: int | None
    policy: str
    smt: bool
    memory_limit: int
    death_timeout: float
    lifetime: float | None = None
    interface: str | None = None
    local_directory: str | None = None
    resources: Mapping[str, float] = field(default_factory=dict, hash=False)
    nanny: bool = False

    def argv(self) -> list[str]:
        out = [self.python, "-m", "ctrlstack.cli_batch", "worker", self.scheduler]
        out += ["--name", self.name, "--workers", str(self.workers)]
        if self.threads is not None:
            out += ["--threads", str(self.threads)]
        if self.task_threads is not None:
            out += ["--task-threads", str(self.task_threads)]
        out += ["--policy", self.policy]
        if self.smt:
            out.append("--smt")
        out += ["--memory-limit", str(self.memory_limit)]
        out += ["--death-timeout", f"{self.death_timeout:g}"]
        if self.lifetime is not None:
            out += ["--lifetime", f"{self.lifetime:g}"]
        if self.interface:
            out += ["--interface", self.interface]
        if self.local_directory:
            out += ["--local-directory", self.local_directory]
        for key, value in sorted(self.resources.items()):
            out += ["--resource", f"{key}={value:g}"]
        if self.nanny:
            out.append("--nanny")
        return out


def render_script(
    *,
    directive_prefix: str,
    directives: Sequence[str],
    skip: Sequence[str] = (),
    prologue: Sequence[str] = (),
    modules: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    command: Sequence[str],
    cluster: str,
    workers: int,
    shell: str = "/bin/bash",
) -> str:
    """Render the job script.

    ``directives`` are scheduler options without the prefix (``--partition=debug``); any that
    contains one of the ``skip`` substrings is left out (a site whose scheduler rejects e.g.
    ``--mem`` skips it).  ``env`` is exported before the command (paths and thread counts, never
    key material); ``command`` is quoted word by word.
    """
    lines = []
    for directive in directives:
        _no_newline("directive", directive)
        if any(s and s in directive for s in skip):
            continue
        lines.append(f"{directive_prefix} {directive}")
    pre = [_no_newline("prologue line", line) for line in prologue]
    pre += [f"module load {shlex.quote(_no_newline('module', m))}" for m in modules]
    exports = [
        f"export {name}={shlex.quote(_no_newline('environment value', value))}"
        for name, value in sorted((env or {}).items())
        if name.isidentifier()
    ]
    if len(exports) != len(env or {}):
        bad = sorted(k for k in env or {} if not k.isidentifier())
        raise ValueError(f"environment variable names {bad} are not valid identifiers")
    return TEMPLATE.format(
        shell=shell,
        directives="\n".join(lines),
        cluster=_no_newline("cluster name", cluster),
        workers=workers,
        prologue="".join(line + "\n" for line in pre),
        exports="\n".join(exports),
        command=shlex.join(command),
    )


def worker_command(opts: BatchOptions, *, scheduler: str, name: str) -> WorkerCommand:
    """``ctrlstack worker`` for one job of ``opts``; workers retire ``retire-before`` seconds
    before the walltime ends."""
    return WorkerCommand(
        python=opts.python,
        scheduler=scheduler,
        name=name,
        workers=opts.workers_per_job,
        threads=opts.threads,
        task_threads=opts.task_threads,
        policy=opts.policy,
        smt=opts.smt,
        memory_limit=opts.worker_memory_limit(),
        death_timeout=opts.death_timeout,
        lifetime=float(opts.walltime - opts.retire_before),
        interface=opts.interface,
        local_directory=opts.local_directory,
        resources=opts.resources,
        nanny=opts.nanny,
    )


#: The placeholder name an array script's command carries until the per-task name replaces it.
_ARRAY_TOKEN = "CTRLSTACK_ARRAY_TASK_NAME"


def queue_script(
    opts: BatchOptions,
    *,
    directive_prefix: str,
    directives: Sequence[str],
    index_variable: str,
    scheduler: str,
    name: str,
    credentials: str,
    cluster: str = "",
    array_names: Sequence[str] | None = None,
) -> str:
    """One job's whole script (directives, site prologue, then ``ctrlstack worker``), or with
    ``array_names`` one array job's; Slurm's and PBS's alike.

    Task *i* of the array runs the workers of job ``array_names[i]`` (dask-jobqueue's name for
    it): the names are a quoted bash array indexed by ``$<index_variable>``, an integer the
    scheduler sets (``SLURM_ARRAY_TASK_ID``, ``PBS_ARRAY_INDEX``): the script's only expansion.
    """
    task_name = name if array_names is None else _ARRAY_TOKEN
    text = render_script(
        directive_prefix=directive_prefix,
        directives=directives,
        skip=opts.skip_directives,
        prologue=opts.prologue,
        modules=opts.modules,
        env={CREDENTIALS_ENV: credentials},
        command=worker_command(opts, scheduler=scheduler, name=task_name).argv(),
        cluster=cluster or name,
        workers=opts.workers_per_job,
    )
    if array_names is None:
        return text
    names = " ".join(shlex.quote(n) for n in array_names)
    head, _, command = text.rpartition("\nexec ")
    command = command.replace(
        f" --name {_ARRAY_TOKEN} ", f' --name "${{CTRLSTACK_NAMES[${index_variable}]}}" '
    )
    return f"{head}\nCTRLSTACK_NAMES=({names})\nexec {command}"
