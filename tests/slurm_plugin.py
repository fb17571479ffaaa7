"""The real single-node Slurm for tests marked ``slurm`` (brought up by ``scripts/slurm``).

Session-scoped: ``scripts/slurm up`` runs once, on the first test that needs it, in a private
state dir with free ports (so it never meets a developer's own instance), and ``down`` at the end
of the session.  If Slurm cannot start, the tests fail — they are part of ``make test`` and a
skipped one would count as a pass.  After every ``slurm`` test the queue must be empty: a job
left behind is a leak in the code under test (it is cancelled, then the test fails).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ctrlstack import _proc

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "slurm"


@dataclass(frozen=True)
class Slurm:
    conf: str
    state: Path
    partition: str

    def queue(self) -> list[str]:
        """Job ids squeue lists (any state it shows by default: pending, running, completing)."""
        out = _proc.run(["squeue", "--noheader", "--array", "--format=%i"], timeout=20)
        return out.stdout.split()

    def wait_empty(self, timeout: float = 20) -> list[str]:
        deadline = time.monotonic() + timeout
        left = self.queue()
        while left and time.monotonic() < deadline:
            time.sleep(0.1)
            left = self.queue()
        return left


@pytest.fixture(scope="session")
def slurm_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Slurm]:
    state = Path(f"/tmp/ctrlstack-slurm-test-{os.getpid()}")
    script = [sys.executable, str(SCRIPT)]
    result = _proc.run([*script, "up", "--state", str(state), "--json"], timeout=900, check=False)
    if result.returncode != 0:
        _proc.run([*script, "down", "--state", str(state)], timeout=120, check=False)
        pytest.fail(f"scripts/slurm up failed:\n{result.stderr}{result.stdout}")
    info = json.loads(result.stdout)
    previous = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = info["SLURM_CONF"]
    try:
        yield Slurm(conf=info["SLURM_CONF"], state=state, partition=info["partition"])
    finally:
        began = time.monotonic()
        down = _proc.run([*script, "down", "--state", str(state)], timeout=300, check=False)
        print(f"\nscripts/slurm down took {time.monotonic() - began:.1f} s", file=sys.stderr)
        if previous is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = previous
        assert down.returncode == 0, down.stderr


@pytest.fixture
def slurm(slurm_session: Slurm) -> Iterator[Slurm]:
    """The session's Slurm, with the check that the test left no job in the queue."""
    before = slurm_session.queue()
    assert not before, f"jobs in the queue before the test: {before}"
    yield slurm_session
    left = slurm_session.wait_empty(20)
    if left:
        _proc.run(["scancel", *left], check=False)
        slurm_session.wait_empty(20)
    assert not left, f"the test left jobs in the Slurm queue: {left}"
