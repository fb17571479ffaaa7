"""REST latency of the Jupyter server extension and the event loop's worst stall during a launch.

    python benchmarks/lab.py [--requests 200] [--clusters 20]

What is measured (targets from the Jupyter-door issue: p95 < 50 ms, stall < 50 ms):

* ``GET /ctrlstack/api/clusters`` (registry list) and ``GET /ctrlstack/api/clusters/<name>``
  (live status from the supervisor over TLS), median and p95 over ``--requests`` sequential
  requests, with 1 and with ``--clusters`` clusters registered.  The server answers reads from
  memory and refreshes them in the background over long-lived TLS connections
  (``ctrlstack/server/cache.py``, ``channels.py``), so these are what a polling sidebar sees; the API calls behind them (``ctrlstack.clusters()``, ``Cluster.status()``) are timed
  in-process too.  Clusters are real (supervisor,
  scheduler); the extra ones are scaled to 0 workers so 20 of them fit on a small machine.
* The worst event-loop stall while a cluster launches, two ways: in-process (a 5 ms ticker on
  the loop that runs :class:`ctrlstack.server.manager.ClusterManager`, the code the server runs),
  and from outside (``GET /api/status`` of the real server every 10 ms during a REST launch; this
  includes HTTP overhead, so it bounds the stall from above).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dask

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.labserver import LabServer

SMALL = {"workers": 1, "threads": 1, "dashboard": False}


def timed(server: LabServer, path: str, n: int) -> tuple[float, float]:
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        status, _ = server.request("GET", path)
        samples.append((time.perf_counter() - t0) * 1000)
        assert status == 200, (path, status)
    samples.sort()
    return statistics.median(samples), samples[int(0.95 * (len(samples) - 1))]


def direct(fn: object, n: int) -> tuple[float, float]:
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()  # type: ignore[operator]
        samples.append((time.perf_counter() - t0) * 1000)
    samples.sort()
    return statistics.median(samples), samples[int(0.95 * (len(samples) - 1))]


def latency(server: LabServer, name: str, n: int) -> dict[str, tuple[float, float]]:
    """REST as served (answers at most 1 s old), and the API calls behind them, in-process."""
    import ctrlstack

    server.request("GET", "ctrlstack/api/clusters")  # warm up
    with dask.config.set({"ctrlstack.state-dir": str(server.state_dir)}):
        handle = ctrlstack.get(name)
        return {
            "GET list": timed(server, "ctrlstack/api/clusters", n),
            "GET status": timed(server, f"ctrlstack/api/clusters/{name}", n),
            "api clusters()": direct(ctrlstack.clusters, max(n // 4, 10)),
            "api status() (supervisor round trip)": direct(handle.status, max(n // 4, 10)),
        }


def launch_many(state: Path, names: list[str]) -> None:
    import ctrlstack

    def one(name: str) -> None:
        with dask.config.set({"ctrlstack.state-dir": str(state)}):
            ctrlstack.launch("local", name=name, **SMALL).scale(0)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(one, names))


def inprocess_stall(state: Path) -> tuple[float, float]:
    """(worst gap in ms, launch seconds) of a 5 ms ticker while the manager launches and stops."""
    from ctrlstack.server.manager import ClusterManager

    async def main() -> tuple[float, float]:
        manager = ClusterManager()
        await manager.warm_up()
        stop = asyncio.Event()
        worst = 0.0

        async def tick() -> None:
            nonlocal worst
            last = time.perf_counter()
            while not stop.is_set():
                await asyncio.sleep(0.005)
                now = time.perf_counter()
                worst = max(worst, now - last - 0.005)
                last = now

        ticker = asyncio.create_task(tick())
        t0 = time.perf_counter()
        await manager.create({"profile": "local", "name": "stall", "overrides": SMALL})
        took = time.perf_counter() - t0
        await manager.stop("stall")
        stop.set()
        await ticker
        manager.close()
        return worst * 1000, took

    with dask.config.set({"ctrlstack.state-dir": str(state)}):
        return asyncio.run(main())


def outside_stall(server: LabServer) -> tuple[float, float]:
    """(worst GET /api/status in ms, launch seconds) while the server launches over REST."""
    done = threading.Event()
    result: dict[str, float] = {}

    def launch() -> None:
        t0 = time.perf_counter()
        status, body = server.request(
            "POST",
            "ctrlstack/api/clusters",
            {"profile": "local", "name": "probe", "overrides": SMALL},
        )
        result["took"] = time.perf_counter() - t0
        assert status == 201, body
        done.set()

    thread = threading.Thread(target=launch)
    worst = 0.0
    thread.start()
    while not done.is_set():
        t0 = time.perf_counter()
        server.request("GET", "api/status")
        worst = max(worst, time.perf_counter() - t0)
        time.sleep(0.01)
    thread.join()
    server.request("DELETE", "ctrlstack/api/clusters/probe")
    return worst * 1000, result["took"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--clusters", type=int, default=20)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="ctrlstack-lab-bench-"))
    print(f"# benchmarks/lab.py on {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    with LabServer(root, app="server") as server:
        state = server.state_dir
        names = [f"bench{i:02d}" for i in range(args.clusters)]
        try:
            launch_many(state, names[:1])
            one = latency(server, names[0], args.requests)
            launch_many(state, names[1:])
            many = latency(server, names[0], args.requests)
            t0 = time.perf_counter()
            server.request("GET", "ctrlstack/api/topology")
            topo_ms = (time.perf_counter() - t0) * 1000
        finally:
            for name in names:
                server.request("DELETE", f"ctrlstack/api/clusters/{name}")
        stall_in, took_in = inprocess_stall(root / "stall-state")
        stall_out, took_out = outside_stall(server)
    print("| request | clusters | median ms | p95 ms |")  # REST rows: answers <= 1 s old
    print("|---|---:|---:|---:|")
    for label, data, count in (("1", one, 1), ("many", many, args.clusters)):
        del label
        for kind, (med, p95) in data.items():
            print(f"| {kind} | {count} | {med:.1f} | {p95:.1f} |")
    print(f"\ntopology with {args.clusters} clusters (one status call each): {topo_ms:.0f} ms")
    print(f"event loop worst stall during launch+stop, in-process: {stall_in:.1f} ms "
          f"(launch took {took_in:.1f} s)")  # fmt: skip
    print(f"worst GET /api/status during a REST launch: {stall_out:.1f} ms "
          f"(launch took {took_out:.1f} s)")  # fmt: skip


if __name__ == "__main__":
    main()
