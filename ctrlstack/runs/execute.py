"""The process of a submitted run: cluster up, notebook or script, cluster down, record the end.

Started detached by :func:`ctrlstack.submit` (local profiles) or by a batch job script (batch
profiles: the same command inside the job), always as
``<python> -m ctrlstack.runs.execute --run ID --state-dir DIR`` with stdout/stderr going to the
run's log.  The cluster is :func:`ctrlstack.cluster` — ephemeral, stopped on exit, error or
SIGTERM (a batch system's cancel) — and the notebook's kernel or the script finds it through
``DASK_SCHEDULER_ADDRESS`` and the TLS variables, so a plain ``distributed.Client()`` connects.
A failing cell ends the run as ``failed`` with the cell named; the executed notebook is written
either way.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

from ctrlstack.errors import message

from .params import inject
from .record import RunRecord, load, save

__all__ = ["failing_cell", "main"]


def failing_cell(nb: Any) -> tuple[int, str] | None:
    """``(index, "ename: evalue")`` of the first cell with an error output (pure)."""
    for index, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                return index, f"{out.get('ename')}: {out.get('evalue')}"
    return None


def _kernel_manager(kernel: str, private: pathlib.Path) -> Any:
    """The run's kernel on Unix sockets in a private (0700, node-local) directory instead of
    TCP ports: on a shared login or compute node nobody else can even reach it."""
    from jupyter_client.manager import KernelManager

    return KernelManager(
        kernel_name=kernel, transport="ipc", connection_file=str(private / "kernel.json")
    )


def _notebook(record: RunRecord, state_dir: pathlib.Path) -> tuple[int, str | None, int | None]:
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    nb = nbformat.read(record.input, as_version=4)
    inject(nb, record.params)
    kernel = record.kernel or nb.metadata.get("kernelspec", {}).get("name") or "python3"
    # mkdtemp: 0700, on the node's own /tmp (Unix sockets do not work on NFS homes, and their
    # paths must stay under ~100 characters).
    private = pathlib.Path(tempfile.mkdtemp(prefix=f"ctrlstack-run-{record.id}-"))
    client = NotebookClient(
        nb,
        km=_kernel_manager(kernel, private),
        kernel_name=kernel,
        timeout=None,
        resources={"metadata": {"path": str(pathlib.Path(record.input).parent)}},
    )
    try:
        client.execute()
        return 0, None, None
    except CellExecutionError:
        found = failing_cell(nb)
        if found is None:
            return 1, "a cell failed", None
        index, what = found
        first = "".join(nb.cells[index].source).strip().splitlines()[:1]
        where = f"cell {index}" + (f" ({first[0][:60]!r})" if first else "")
        return 1, f"{where} failed: {what}", index
    finally:
        nbformat.write(nb, record.output)
        shutil.rmtree(private, ignore_errors=True)


def _script(record: RunRecord, state_dir: pathlib.Path) -> tuple[int, str | None, int | None]:
    from ctrlstack import _proc

    child = _proc.spawn(
        [sys.executable, record.input, *record.args],
        stdout=None, stderr=None, cwd=str(pathlib.Path(record.input).parent),
        parent_death_signal=signal.SIGTERM,
    )  # fmt: skip
    try:
        code = child.wait()
    except BaseException:
        child.terminate()
        try:
            child.wait(10)
        except subprocess.TimeoutExpired:
            child.kill()
        raise
    code = 128 - code if code < 0 else code
    return code, None if code == 0 else f"the script exited with status {code}", None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ctrlstack.runs.execute")
    parser.add_argument("--run", required=True)
    parser.add_argument("--state-dir", required=True)
    args = parser.parse_args(argv)
    state_dir = pathlib.Path(args.state_dir)
    os.environ["DASK_CTRLSTACK__STATE_DIR"] = str(state_dir)  # for the kernel/script too
    import dask.config

    from ctrlstack import api

    dask.config.set({"ctrlstack.state-dir": str(state_dir)})  # the cluster's registry

    from ctrlstack.deploy.procs import ProcessId, hostname

    record = load(args.run, state_dir)
    record.state, record.started, record.pid = "running", time.time(), os.getpid()
    record.process, record.host = ProcessId.current().to_dict(), hostname()
    record.cluster = f"run-{record.id}"
    save(record, state_dir)
    code, error, cell = 1, None, None
    # In a batch job the cluster is the profile's workers on the job's own CPUs (a local cluster
    # planned on the job's cpuset); the job was sized for them (see .batch.job_options).
    overrides = {"backend": "local"} if record.mode == "batch" else {}
    try:
        with api.cluster(record.profile, name=record.cluster, **overrides):
            os.environ.update(api.get(record.cluster).dask_env())
            runner = _notebook if record.kind == "notebook" else _script
            code, error, cell = runner(record, state_dir)
        record.state = "succeeded" if code == 0 else "failed"
    except SystemExit as exc:  # SIGTERM (a cancel) while running
        record.state, error = "cancelled", f"cancelled (exit {exc.code})"
        code = exc.code if isinstance(exc.code, int) else 1
    except Exception as exc:  # noqa: BLE001 - recorded, then reported by the exit status
        record.state, error, code = "failed", message(exc), 1
    record.ended, record.exit_code, record.error, record.failed_cell = (
        time.time(),
        code,
        error,
        cell,
    )
    record.cluster = None
    save(record, state_dir)
    print(f"ctrlstack run {record.id}: {record.state}" + (f": {error}" if error else ""))
    return code


if __name__ == "__main__":
    sys.exit(main())
