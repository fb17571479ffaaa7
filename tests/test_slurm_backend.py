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
