"""The slurm backend against the real single-node Slurm (``scripts/slurm``), driven directly."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from distributed import Client
from distributed.comm import connect

from ctrlstack.config import get_profile
from ctrlstack.deploy.backends.slurm import SlurmBackend, SubmitError
from ctrlstack.deploy.security import Credentials
from ctrlstack.deploy.worker import job_placement
from ctrlstack.topology.cpuset import parse_cpulist

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(180)]


def _backend(tmp_path: Path, **overrides: Any) -> SlurmBackend:
    spec = get_profile("slurm-cpu", **overrides)
    creds = Credentials.create(tmp_path / "tls")
    return SlurmBackend(
        spec, cluster_name="t", security=creds.security(), workdir=tmp_path / "cluster"
    )


async def _wait_workers(client: Client, n: int, timeout: float = 60) -> None:
    await client.wait_for_workers(n, timeout=timeout)


def test_two_pinned_workers_in_one_job_connect_over_tls(slurm: Any, tmp_path: Path) -> None:
    backend = _backend(tmp_path, workers=2, workers_per_job=2, cores=2)

    async def main() -> list[dict[str, Any]]:
        cluster = await backend.create()
        try:
            assert cluster.scheduler.address.startswith("tls://127.0.0.1:")
            async with Client(cluster, asynchronous=True) as client:
                await _wait_workers(client, 2)
                result = await client.run(job_placement)
                assert await client.submit(sum, [1, 2, 3]) == 6
                await backend.poll()
                (job,) = backend.report().jobs
                assert job.state == "RUNNING"
                assert job.node == "localhost"
                assert job.end_time is not None
                assert job.end_time > time.time() + 60
                return list(result.values())
        finally:
            await cluster.close()
            await backend.cleanup()

    infos = asyncio.run(main())
    assert sorted(i["name"] for i in infos) == ["t-0-0", "t-0-1"]
    assert len({i["job_id"] for i in infos}) == 1
    assert infos[0]["job_id"]
    used = []
    for info in infos:
        assert info["slot_cpus"] is not None
        cpus = set().union(*(parse_cpulist(t["affinity"]) for t in info["threads"]))
        assert cpus <= parse_cpulist(info["job_cpus"]), info
        assert cpus == parse_cpulist(info["slot_cpus"]), info
        used.append(cpus)
    assert not used[0] & used[1], used


def test_nanny_workers_in_one_job_are_pinned_and_restartable(slurm: Any, tmp_path: Path) -> None:
    """``nanny: true``: the job starts one Nanny per slot (``ctrlstack worker --nanny``)."""
    backend = _backend(tmp_path, workers=2, workers_per_job=2, cores=2, nanny=True)

    async def main() -> tuple[list[dict[str, Any]], list[Any]]:
        cluster = await backend.create()
        try:
            async with Client(cluster, asynchronous=True) as client:
                await _wait_workers(client, 2)
                info = client.scheduler_info()["workers"]
                nannies = [w["nanny"] for w in info.values()]
                await client.restart()  # needs a nanny per worker
                await _wait_workers(client, 2)
                assert await client.submit(sum, [1, 2, 3]) == 6
                return list((await client.run(job_placement)).values()), nannies
        finally:
            await cluster.close()
            await backend.cleanup()

    infos, nannies = asyncio.run(main())
    assert all(n and n.startswith("tls://127.0.0.1:") for n in nannies), nannies
    assert sorted(i["name"] for i in infos) == ["t-0-0", "t-0-1"]
    slots = [parse_cpulist(i["slot_cpus"]) for i in infos]
    for info, cpus in zip(infos, slots, strict=True):
        used = set().union(*(parse_cpulist(t["affinity"]) for t in info["threads"]))
        assert used == cpus, info
    assert not slots[0] & slots[1], slots


def test_plain_client_without_credentials_is_refused(slurm: Any, tmp_path: Path) -> None:
    backend = _backend(tmp_path, workers=1)

    async def main() -> None:
        cluster = await backend.create()
        try:
            # Plain TCP to a TLS scheduler, and TLS without the cluster's certificate.
            plain = cluster.scheduler.address.replace("tls://", "tcp://")
            with pytest.raises(OSError, match=r"Timed out|closed|reset|handshake"):
                await connect(plain, timeout=2)
            other = Credentials.create(tmp_path / "other").security()
            with pytest.raises(OSError, match=r"Timed out|closed|reset|handshake|SSL|certificate"):
                await connect(
                    cluster.scheduler.address,
                    timeout=2,
                    **other.get_connection_args("client"),
                )
        finally:
            await cluster.close()
            await backend.cleanup()

    asyncio.run(main())


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"partition": "nope"}, "invalid partition"),
        ({"memory": "100 GiB"}, "node configuration is not available"),
        ({"extra_directives": ["--bogus-flag"]}, "unrecognized option"),
    ],
)
def test_sbatch_rejection_surfaces_fast_and_leaves_nothing(
    slurm: Any, tmp_path: Path, override: dict[str, Any], message: str
) -> None:
    backend = _backend(tmp_path, workers=2, **override)
    started = time.monotonic()
    with pytest.raises(SubmitError, match=message):
        asyncio.run(backend.create())
    assert time.monotonic() - started < 2
    assert slurm.queue() == []


def test_thirty_launch_stop_cycles_leave_no_job(slurm: Any, tmp_path: Path) -> None:
    async def cycle(i: int) -> None:
        backend = _backend(tmp_path / str(i), workers=2)
        cluster = await backend.create()
        assert len(backend.job_ids()) == 2
        await cluster.close()
        await backend.cleanup()

    async def main() -> None:
        for i in range(30):
            await cycle(i)

    asyncio.run(main())
    assert slurm.wait_empty(10) == []


def test_failing_squeue_is_unknown_after_a_grace_never_gone(
    slurm: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ctrlstack.deploy.backends.slurm as backend_module

    backend = _backend(tmp_path, workers=1)

    async def main() -> None:
        cluster = await backend.create()
        try:
            await backend.poll()
            (job_id,) = backend.job_ids()
            before = backend.report().jobs[0].state
            assert before in ("PENDING", "RUNNING")
            broken = tmp_path / "broken.conf"  # squeue: "Unable to process configuration file"
            broken.write_text("")
            monkeypatch.setenv("SLURM_CONF", str(broken))
            await backend.poll()  # squeue fails: the last known state stays
            assert backend.report().jobs[0].state == before
            monkeypatch.setattr(backend_module, "STATUS_GRACE", 0.0)
            await asyncio.sleep(0.01)
            await backend.poll()
            (job,) = backend.report().jobs
            assert job.state == "UNKNOWN"
            assert backend.job_ids() == [job_id]  # still ours, still to be cancelled
            assert len(cluster.worker_spec) == 1  # nothing dropped or replaced
            monkeypatch.undo()
            await backend.poll()
            assert backend.report().jobs[0].state in ("PENDING", "RUNNING")
        finally:
            await cluster.close()
            await backend.cleanup()

    asyncio.run(main())


def test_scale_up_is_one_array_submission(slurm: Any, tmp_path: Path) -> None:
    backend = _backend(tmp_path, workers=3)

    async def main() -> None:
        cluster = await backend.create()
        try:
            first = backend.job_ids()
            assert len(first) == 3
            assert len({j.split("_")[0] for j in first}) == 1  # one sbatch --array
            assert sorted(j.split("_")[1] for j in first) == ["0", "1", "2"]
            async with Client(cluster, asynchronous=True) as client:
                await _wait_workers(client, 3)
                cluster.scale(5)
                await _wait_workers(client, 5)
                added = [j for j in backend.job_ids() if j not in first]
                assert len(added) == 2
                assert len({j.split("_")[0] for j in added}) == 1
                await backend.poll()
                running = [j for j in backend.report().jobs if j.state == "RUNNING"]
                assert len(running) == 5
                assert all(Path(str(j.log)).exists() for j in running)
        finally:
            await cluster.close()
            await backend.cleanup()

    asyncio.run(main())
