"""``ctrlstack.submit``: run a notebook or script detached, with a cluster of its own.

Validation happens here, before anything starts (file kind, parameters, profile, stack, output
directory); then the record is written and the executor (:mod:`.execute`) is started where the
profile says: for ``local`` profiles a detached process on this host (its own session, so it
survives the terminal or kernel that submitted it), run by the profile's stack's Python; for
batch profiles a job of the profile's backend, through :func:`batch_submitter` (the Slurm/PBS
backends provide it; until then batch profiles are refused with a clear message).
"""

from __future__ import annotations

import os
import pathlib
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ctrlstack.errors import UserError

from .record import RunRecord, load, new_id, remove, save

__all__ = [
    "BatchSubmit",
    "batch_submitter",
    "executor_argv",
    "job_script",
    "submit",
    "wait_for",
]

#: ``(record, spec, argv, env) -> job id``: how a batch backend runs a run's executor in a job.
BatchSubmit = Callable[[RunRecord, Any, list[str], Mapping[str, str]], str]


def executor_argv(python: str, record: RunRecord, state_dir: pathlib.Path) -> list[str]:
    """The command that executes a run, detached here or inside a batch job (pure)."""
    return [
        python,
        "-m",
        "ctrlstack.runs.execute",
        "--run",
        record.id,
        "--state-dir",
        str(state_dir),
    ]


def batch_submitter(backend: str) -> BatchSubmit:
    """The backend's run submitter: ``submit_run`` of its backend class, if it has one."""
    from ctrlstack.deploy.backends import backend_class

    fn = getattr(backend_class(backend), "submit_run", None)
    if fn is None:
        raise UserError(
            f"profile backend {backend!r} cannot run submitted jobs yet; use a local profile"
        )
    return fn  # type: ignore[no-any-return,unused-ignore]


def _kind(path: pathlib.Path) -> str:
    if path.suffix == ".ipynb":
        return "notebook"
    if path.suffix == ".py":
        return "script"
    raise UserError(f"cannot submit {str(path)!r}: expected a notebook (.ipynb) or script (.py)")


def _prepare(
    path: str | os.PathLike[str],
    profile: str | None,
    *,
    params: Mapping[str, Any] | None,
    args: Iterable[str],
    output: str | os.PathLike[str] | None,
    kernel: str | None,
) -> tuple[RunRecord, Any, list[str], dict[str, str] | None, pathlib.Path]:
    """Validate everything and build the run's record and executor command (nothing written
    but the output directory, which is created if missing)."""
    from ctrlstack.config import get_profile, state_dir
    from ctrlstack.stacks.runtime import runtime

    source = pathlib.Path(path).expanduser().resolve()
    if not source.is_file():
        raise UserError(f"cannot submit {str(path)!r}: no such file")
    kind = _kind(source)
    if params and kind != "notebook":
        raise UserError("--param applies to notebooks; pass script arguments after the script")
    if args and kind != "script":
        raise UserError(
            f"arguments {list(args)!r} given for notebook {source.name!r}: "
            "notebooks take --param NAME=VALUE"
        )
    spec = get_profile(profile)
    out = pathlib.Path(output).expanduser().resolve() if output else source.parent
    if out.exists() and not out.is_dir():
        raise UserError(f"output directory {str(out)!r} is a file")
    out.mkdir(parents=True, exist_ok=True)
    if not os.access(out, os.W_OK):
        raise UserError(f"output directory {str(out)!r} is not writable")
    record = RunRecord(
        id=new_id(),
        kind=kind,
        input=str(source),
        output_dir=str(out),
        profile=spec.profile,
        mode="local" if spec.backend == "local" else "batch",
        params=dict(params or {}),
        args=list(args),
        kernel=kernel,
    )
    if record.mode == "batch":
        record.scheduler = spec.backend
    python, env = runtime(spec.stack)
    root = state_dir()
    return record, spec, executor_argv(python, record, root), env, root


def _job_env(env: Mapping[str, str] | None) -> dict[str, str]:
    """What a job script exports: only what the stack changes (the queue passes the rest of
    the submitting environment, ``--export=ALL`` / ``qsub -V`` style site defaults aside)."""
    if env is None:
        return {}
    return {k: v for k, v in env.items() if os.environ.get(k) != v}


def job_script(
    path: str | os.PathLike[str],
    profile: str | None = None,
    *,
    params: Mapping[str, Any] | None = None,
    args: Iterable[str] = (),
    output: str | os.PathLike[str] | None = None,
    kernel: str | None = None,
) -> str:
    """The job script ``submit`` would hand a batch profile's queue (nothing is submitted)."""
    from . import batch

    record, spec, argv, env, _ = _prepare(
        path, profile, params=params, args=args, output=output, kernel=kernel
    )
    if spec.backend not in batch.SCHEDULERS:
        raise UserError(
            f"profile {spec.profile!r} uses backend {spec.backend!r}: its runs are not batch "
            "jobs, so there is no job script"
        )
    return batch.preview(spec, record, argv, _job_env(env))


def submit(
    path: str | os.PathLike[str],
    profile: str | None = None,
    *,
    params: Mapping[str, Any] | None = None,
    args: Iterable[str] = (),
    output: str | os.PathLike[str] | None = None,
    kernel: str | None = None,
    wait: bool = False,
    timeout: float | None = None,
) -> RunRecord:
    """Run notebook/script ``path`` with an ephemeral cluster of ``profile``; return its record.

    ``params`` are injected into a notebook (papermill convention); ``args`` go to a script.
    The executed notebook and the log land in ``output`` (default: beside ``path``) as
    ``<stem>.<run id>.ipynb`` / ``.log``.  A local profile runs it detached on this host; a
    Slurm/PBS profile as one batch job holding the profile's cluster (a refusal by the queue is
    a ``SubmitError`` and leaves no record and no job).  ``wait=True`` blocks until the run ends
    (at most ``timeout`` seconds) and returns the final record; otherwise follow it with
    ``ctrlstack runs`` / :func:`ctrlstack.runs.record.load`.
    """
    from ctrlstack import _proc

    from . import batch

    record, spec, argv, env, root = _prepare(
        path, profile, params=params, args=args, output=output, kernel=kernel
    )
    if record.mode == "batch":
        own = spec.backend in batch.SCHEDULERS
        submit_job = None if own else batch_submitter(spec.backend)
        save(record, root)  # before the job exists: its executor reads it
        try:
            if submit_job is None:
                record.job_id = batch.submit_run(record, spec, argv, _job_env(env), root)
            else:
                record.job_id = submit_job(record, spec, argv, env or dict(os.environ))
        except BaseException:
            remove(record, root)
            batch.script_path(record, root).unlink(missing_ok=True)
            raise
        _save_job_id(record, root)
        return wait_for(record.id, timeout=timeout, state_dir=root) if wait else record
    save(record, root)
    fd = os.open(record.log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as log:
        proc = _proc.spawn(argv, env=env, stdout=log, stderr=log, new_session=True)
    if wait:
        proc.wait(timeout)
        return load(record.id, root)
    return record


def _save_job_id(record: RunRecord, root: pathlib.Path) -> None:
    """Add the job id to the record without overwriting what a fast executor already wrote."""
    current = load(record.id, root)
    current.job_id, current.scheduler = record.job_id, record.scheduler
    save(current, root)


def wait_for(
    run_id: str,
    *,
    timeout: float | None = None,
    poll: float = 0.5,
    state_dir: pathlib.Path | None = None,
) -> RunRecord:
    """Block until run ``run_id`` has ended (batch runs are judged from their queue too)."""
    from . import batch

    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        record = batch.refresh([load(run_id, state_dir)], state_dir)[0]
        if record.state not in ("pending", "running"):
            return record
        if deadline is not None and time.monotonic() >= deadline:
            raise TimeoutError(f"run {run_id} still {record.state} after {timeout:g} s")
        time.sleep(poll)
