"""``ctrlstack run`` killed with SIGKILL leaves nothing behind (issue 6, part 8).

``kill -9`` gives the command no chance to clean up.  What must still happen, by mechanisms
that do not depend on it: the script gets SIGTERM from the kernel (parent-death signal), and the
ephemeral cluster's supervisor sees its owner gone and stops itself, removing its record.  The
checks look at real processes (psutil), not at ctrlstack's bookkeeping, and read the record
file directly (``ctrlstack list`` would clean up a dead record and hide a leak).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest
from proc_helpers import alive, group_members, wait_until

from ctrlstack.deploy.registry import Registry

pytestmark = pytest.mark.slow

CLI = [sys.executable, "-m", "ctrlstack.cli"]

#: The supervisor checks its owner every 0.5 s and closes its cluster within seconds; the
#: script dies with its parent.  Generous for a loaded 2-core machine.
GRACE = 30.0

SCRIPT = textwrap.dedent(
    """
    import os, signal, sys, time
    from distributed import Client
    if sys.argv[2] == "ignore-sigterm":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with Client() as client:  # the cluster of `ctrlstack run`, found through the environment
        assert client.submit(sum, [1, 2]).result(timeout=60) == 3
        with open(sys.argv[1] + ".tmp", "w") as fh:
            fh.write(str(os.getpid()))
        os.rename(sys.argv[1] + ".tmp", sys.argv[1])
        time.sleep(600)
    """
)


@pytest.mark.parametrize(
    "behaviour",
    [
        "plain",
        "ignore-sigterm",  # killed by the supervisor after the grace period
    ],
)
def test_sigkilled_run_leaves_no_script_and_no_cluster(
    state_dir: Path, tmp_path: Path, behaviour: str
) -> None:
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    ready = tmp_path / "script.pid"
    cmd = subprocess.Popen(
        [*CLI, "run", "--workers", "1", "--threads", "1", str(script), str(ready), behaviour],
        start_new_session=True,  # our own group, so that nothing we do reaches the test runner
    )
    script_proc: psutil.Process | None = None
    try:
        assert wait_until(ready.exists, 180), "the script never reported ready"
        script_proc = psutil.Process(int(ready.read_text()))
        assert script_proc.ppid() == cmd.pid
        name = f"run-{cmd.pid}"
        record = Registry(state_dir).read(name)
        assert record is not None
        assert record.ephemeral
        assert record.supervisor is not None
        assert record.pgid is not None
        sup = psutil.Process(record.supervisor.pid)
        assert len(group_members(record.pgid)) >= 2  # supervisor + worker processes
        record_file = state_dir / "clusters" / f"{name}.json"
        assert record_file.exists()

        cmd.send_signal(signal.SIGKILL)
        cmd.wait(10)

        assert wait_until(lambda: not alive(script_proc), GRACE), "the script survived"
        assert wait_until(lambda: not alive(sup), GRACE), "the supervisor survived"
        assert wait_until(lambda: not group_members(record.pgid), GRACE), group_members(record.pgid)
        assert wait_until(lambda: not record_file.exists(), GRACE)
        assert not (state_dir / "clusters" / f"{name}.d").exists()
    finally:
        if cmd.poll() is None:
            cmd.kill()
            cmd.wait(10)
        if script_proc is not None and alive(script_proc):
            script_proc.kill()
