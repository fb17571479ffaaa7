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
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ctrlstack.errors import UserError

from .record import RunRecord, load, new_id, save

__all__ = ["BatchSubmit", "batch_submitter", "executor_argv", "submit"]

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


def submit(
    path: str | os.PathLike[str],
    profile: str | None = None,
    *,
    params: Mapping[str, Any] | None = None,
    args: Iterable[str] = (),
    output: str | os.PathLike[str] | None = None,
    kernel: str | None = None,
    wait: bool = False,
) -> RunRecord:
    """Run notebook/script ``path`` with an ephemeral cluster of ``profile``; return its record.

    ``params`` are injected into a notebook (papermill convention); ``args`` go to a script.
    The executed notebook and the log land in ``output`` (default: beside ``path``) as
    ``<stem>.<run id>.ipynb`` / ``.log``.  ``wait=True`` blocks until the run ends and returns
    the final record; otherwise follow it with ``ctrlstack runs`` / :func:`ctrlstack.runs.record.load`.
    """
    from ctrlstack import _proc
    from ctrlstack.config import get_profile, state_dir
    from ctrlstack.stacks.runtime import runtime

    source = pathlib.Path(path).expanduser().resolve()
    if not source.is_file():
        raise UserError(f"cannot submit {str(path)!r}: no such file")
    kind = _kind(source)
    if params and kind != "notebook":
        raise UserError("--param applies to notebooks; pass script arguments after the script")
    spec = get_profile(profile)
    out = pathlib.Path(output).expanduser().resolve() if output else source.parent
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
    python, env = runtime(spec.stack)
    root = state_dir()
    argv = executor_argv(python, record, root)
    if record.mode == "batch":
        submit_job = batch_submitter(spec.backend)
        save(record, root)
        record.job_id = submit_job(record, spec, argv, env or dict(os.environ))
        save(record, root)
        return record
    save(record, root)
    fd = os.open(record.log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as log:
        proc = _proc.spawn(argv, env=env, stdout=log, stderr=log, new_session=True)
    if wait:
        proc.wait()
        return load(record.id, root)
    return record
