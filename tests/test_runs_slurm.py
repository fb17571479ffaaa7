"""``ctrlstack submit`` to the project's real single-node Slurm.

One job per run, holding the profile's cluster (2 workers × 1 CPU of ``slurm-cpu``) beside the
notebook's kernel; the queue must be empty after each test (the ``slurm`` fixture checks).
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
from typing import Any

import dask
import nbformat
import pytest

import ctrlstack
from ctrlstack.deploy.backends.slurm import SubmitError
from ctrlstack.runs.record import list_runs
from ctrlstack.runs.submit import wait_for

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

CLI = [sys.executable, "-m", "ctrlstack.cli"]


def _notebook(path: pathlib.Path) -> None:
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("n = 10")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [
        params,
        nbformat.v4.new_code_cell(
            "import os\nfrom distributed import Client\nclient = Client()\n"
            "workers = len(client.scheduler_info()['workers'])\n"
            "print('total', client.submit(sum, range(n)).result(), 'workers', workers, "
            "'job', os.environ.get('SLURM_JOB_ID'))"
        ),
        nbformat.v4.new_code_cell("print('ratio', 1 / (n - 100))"),
    ]
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nbformat.write(nb, path)


def _outputs(path: str) -> str:
    nb = nbformat.read(path, as_version=4)
    return "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))


def test_submit_notebooks_as_slurm_jobs(
    slurm: Any, state_dir: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    source = tmp_path / "analysis.ipynb"
    _notebook(source)
    env = {**os.environ}
    # Both runs at once (2 CPUs each on the 8-CPU CI node): the CLI, then Python.
    cli = subprocess.run(
        [*CLI, "submit", str(source), "--profile", "slurm-cpu", "--param", "n=20", "--json"],
        capture_output=True, text=True, timeout=60, check=False, env=env,
    )  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    good_id = json.loads(cli.stdout)["id"]
    bad = ctrlstack.submit(source, "slurm-cpu", params={"n": 100}, output=tmp_path / "out")
    assert bad.job_id
    assert bad.job_id.isdigit()
    good = wait_for(good_id, timeout=180)
    bad = wait_for(bad.id, timeout=180)

    assert good.state == "succeeded", pathlib.Path(good.log).read_text()
    assert good.mode == "batch"
    assert good.scheduler == "slurm"
    text = _outputs(good.output)
    assert f"total 190 workers 2 job {good.job_id}" in text  # n=20 injected; cluster in the job
    assert pathlib.Path(good.output).parent == tmp_path  # beside the input
    assert f"ctrlstack run {good.id}: succeeded" in pathlib.Path(good.log).read_text()

    assert bad.state == "failed"
    assert bad.failed_cell == 3
    assert bad.error == "cell 3 (\"print('ratio', 1 / (n - 100))\") failed: " + (
        "ZeroDivisionError: division by zero"
    )
    assert pathlib.Path(bad.output).parent == tmp_path / "out"
    assert "total 4950 workers 2" in _outputs(bad.output)  # written despite the error

    listed = subprocess.run(
        [*CLI, "list"], capture_output=True, text=True, timeout=60, env=env, check=False
    )
    assert listed.returncode == 0, listed.stderr
    rows = [ln for ln in listed.stdout.splitlines() if ln.startswith((good.id, bad.id))]
    assert len(rows) == 2
    assert "succeeded" in rows[0]
    assert f"job {good.job_id}" in rows[0]
    assert good.output in rows[0]
    assert "failed" in rows[1]
    assert bad.output in rows[1]
    assert "ZeroDivisionError" in listed.stdout
    logs = subprocess.run(
        [*CLI, "logs", bad.id, "-n", "5"],
        capture_output=True, text=True, timeout=60, env=env, check=False,
    )  # fmt: skip
    assert logs.returncode == 0, logs.stderr
    assert f"ctrlstack run {bad.id}: failed: cell 3" in logs.stdout
    assert slurm.wait_empty(20) == []
    assert ctrlstack.clusters() == []  # the runs' clusters stopped with them


def test_a_refused_submission_leaves_no_record_and_no_job(
    slurm: Any, state_dir: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    source = tmp_path / "analysis.ipynb"
    _notebook(source)
    bad_profile = {"backend": "slurm", "threads": 1, "slurm": {"partition": "nope"}}
    with (
        dask.config.set({"ctrlstack.profiles.slurm-nope": bad_profile}),
        pytest.raises(SubmitError, match=r"(?i)Slurm refused the run .*invalid partition"),
    ):
        ctrlstack.submit(source, "slurm-nope")
    assert list_runs(state_dir) == []
    assert list((state_dir / "runs").iterdir()) == []  # no record, no script
    assert slurm.queue() == []
    assert not list(tmp_path.glob("analysis.*.log"))
