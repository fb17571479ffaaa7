"""Who runs where: this machine's topology, live per-CPU load, and the CPUs each worker owns.

Why a module of its own: the JupyterLab sidebar (through the server extension) and the notebook
widgets draw the same map, and both must agree on what "crowded" and "unpinned" mean.

* A CPU is **crowded** when workers of more than one cluster are pinned to it (two clusters
  planned independently on the same machine, the EPYC problem from the seed issue).
* A worker is **unpinned** when it has no CPU set: it floats over every allowed CPU.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import psutil

if TYPE_CHECKING:
    from ctrlstack.deploy.status import ClusterStatus

__all__ = ["live_status", "occupancy"]


def live_status(name: str) -> ClusterStatus | None:
    """The supervisor's status of ``name``, or None if it is stopping or does not answer."""
    from ctrlstack import api

    try:
        return api.get(name).status()
    except (LookupError, ConnectionError, OSError, TimeoutError):
        return None


def occupancy(statuses: Mapping[str, ClusterStatus | None] | None = None) -> dict[str, Any]:
    """``{"machine", "load", "owners", "unpinned", "crowded"}`` (JSON-ready; blocking).

    ``load`` is the busy percentage of each CPU since the previous call in this process (the
    first call reports 0s: psutil needs two samples).  Clusters that are stopping or do not
    answer simply draw no workers.  ``statuses`` (cluster name → live status, or None when it
    did not answer) lets a caller that already asked every supervisor skip asking again.
    """
    from ctrlstack import api
    from ctrlstack.topology.cpuset import parse_cpulist
    from ctrlstack.topology.discover import discover

    machine = discover().to_dict()
    load = psutil.cpu_percent(interval=None, percpu=True)
    owners: dict[str, list[dict[str, Any]]] = {}
    unpinned: list[dict[str, Any]] = []
    for row in api.clusters():
        if row.state not in ("running", "starting"):
            continue
        if statuses is not None and row.name in statuses:
            status = statuses[row.name]
        else:
            status = live_status(row.name)
        if status is None:
            continue
        for worker in status.workers:
            entry = {"cluster": row.name, "worker": worker.name, "state": worker.state}
            if worker.cpus is None:
                unpinned.append(entry)
                continue
            with contextlib.suppress(ValueError):
                for cpu in parse_cpulist(worker.cpus):
                    owners.setdefault(str(cpu), []).append(entry)
    crowded = sorted(
        int(cpu) for cpu, entries in owners.items() if len({e["cluster"] for e in entries}) > 1
    )
    return {
        "machine": machine,
        "load": {str(i): value for i, value in enumerate(load)},
        "owners": owners,
        "unpinned": unpinned,
        "crowded": crowded,
    }
