"""20 spawners, one ``squeue`` per period: counted on the real Slurm (markers hub, slurm)."""

from __future__ import annotations

import asyncio
import os
import stat
import types
from pathlib import Path

import pytest

from ctrlstack import _proc
from ctrlstack.hub.spawner import StackSpawner
from ctrlstack.hub.status import StatusService

pytestmark = [pytest.mark.hub, pytest.mark.slurm, pytest.mark.timeout(120)]


def counting_squeue(bin_dir: Path, count_file: Path) -> None:
    real = _proc.run(["sh", "-c", "command -v squeue"]).stdout.strip()
    wrapper = bin_dir / "squeue"
    wrapper.write_text(f'#!/bin/sh\necho call >> "{count_file}"\nexec {real} "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IEXEC)


def test_twenty_spawners_one_squeue_per_period(slurm, tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    count_file = tmp_path / "calls"
    counting_squeue(bin_dir, count_file)
    jobs = []
    for i in range(20):
        out = _proc.run(
            [
                "sbatch",
                "--parsable",
                "--mem=10M",
                "--cpus-per-task=1",
                f"--job-name=poll{i}",
                f"--output={tmp_path}/poll-%j.out",
                "--wrap",
                "sleep 120",
            ]
        )
        jobs.append(out.stdout.strip().split(";")[0])
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_CONF": os.environ["SLURM_CONF"]}
    period = 1.0

    async def main() -> tuple[int, list[int | None]]:
        spawners = []
        for i, job in enumerate(jobs):
            sp = StackSpawner(
                user=types.SimpleNamespace(name=f"u{i}", groups=[]),
                slurm_env=env,
                status_period=period,
                status_jitter=0.1,
            )
            sp.load_state({"job_id": job})
            spawners.append(sp)
        results = await asyncio.gather(*(sp.poll() for sp in spawners))  # first answer
        count_file.write_text("")
        for _ in range(6):  # every spawner polls twice per period, as a busy hub would
            await asyncio.gather(*(sp.poll() for sp in spawners))
            await asyncio.sleep(period / 2)
        calls = len(count_file.read_text().split())
        service = spawners[0]._service()
        assert all(sp._service() is service for sp in spawners)
        await service.close()
        StatusService._instances.clear()
        return calls, results

    try:
        calls, results = asyncio.run(main())
    finally:
        _proc.run(["scancel", *jobs], check=False)
    assert results == [None] * 20  # pending or running: all kept
    # 3 s of polling at a 1 s period (±10 %): 3, maybe 4 calls — never 20 per period.
    assert 2 <= calls <= 4, calls
