"""Slurm start-up: ``ctrlstack.launch`` vs a plain ``dask_jobqueue.SLURMCluster``, same Slurm.

Measures, alternating the two sides every repeat (medians reported):

* **launch → N connected workers**: ctrlstack's ``launch("slurm-cpu", workers=N)`` (supervisor
  process, TLS, ``ctrlstack worker`` pinning on the node) + ``wait_for_workers(N)``, against
  ``SLURMCluster(cores=1, memory="1GiB", processes=1, queue="debug", interface="lo")`` +
  ``scale(N)`` + ``wait_for_workers(N)`` in the calling process (no TLS, no supervisor);
* **scale-up N/2 → N** on a running cluster, both sides;
* **stop → empty queue**: from the stop call until ``squeue`` lists none of the cluster's jobs;
* ctrlstack with 2 workers per job (N/2 jobs × 2 forked workers, ``workers-per-job: 2``: the
  same 8 workers × 1 CPU).  More per job does not fit here: the CI node declares 8 CPUs but the
  VM has 2, and ``ctrlstack worker`` refuses to plan more workers than the job's real CPUs;
* plain dask-jobqueue packed the same way (``processes=2, cores=2``: N/2 jobs × 2 workers), so
  the packed comparison is also made like for like;
* ctrlstack with ``nanny: true`` (a nanny per worker, each spawning a fresh interpreter: the
  start-up path before forked workers), to show what forking saves;
* a breakdown, same conditions: ``sbatch`` of a trivial job until it runs (submission +
  scheduling + job start), and one ``python -c "import distributed"`` (the import every worker
  process pays); and per launch, when the first worker connected.

Slurm: uses ``$SLURM_CONF`` when set, else brings up ``scripts/slurm`` in a private state dir
and takes it down at the end.  Usage: ``python benchmarks/slurm_startup.py [--repeat 3]
[--workers 8]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ctrlstack import _proc

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "slurm"


def queue() -> list[str]:
    return _proc.run(["squeue", "--noheader", "--array", "--format=%i"]).stdout.split()


def wait_empty(timeout: float = 60) -> float:
    t0 = time.perf_counter()
    while queue() and time.perf_counter() - t0 < timeout:
        time.sleep(0.05)
    return time.perf_counter() - t0


def ctrlstack_run(n: int, per_job: int = 1, nanny: bool = False) -> dict[str, float]:
    import ctrlstack

    jobs_kw: dict[str, Any] = {"workers_per_job": per_job, "cores": per_job, "nanny": nanny}
    t0 = time.perf_counter()
    cluster = ctrlstack.launch("slurm-cpu", workers=n, dashboard=False, **jobs_kw)
    returned = time.perf_counter() - t0
    cluster.wait_for_workers(1, timeout=300)
    first = time.perf_counter() - t0
    cluster.wait_for_workers(n, timeout=300)
    launch = time.perf_counter() - t0
    t1 = time.perf_counter()
    cluster.stop()
    stop = time.perf_counter() - t1 + wait_empty()
    return {"launch": launch, "stop": stop, "returned": returned, "first": first}


def job_latency(directory: str) -> float:
    """``sbatch`` of a job running ``true`` until its first line runs (seconds)."""
    stamp = Path(directory) / f"stamp-{time.monotonic_ns()}"
    script = Path(directory) / "latency.sh"
    script.write_text(f"#!/bin/sh\n#SBATCH --output=/dev/null\ndate +%s.%N > {stamp}\n")
    t0 = time.time()
    _proc.run(["sbatch", "--parsable", "--partition=debug", str(script)])
    while not (stamp.exists() and stamp.read_text().strip()):
        time.sleep(0.01)
    started = float(stamp.read_text())
    wait_empty()
    return started - t0


def import_time() -> float:
    t0 = time.perf_counter()
    _proc.run([sys.executable, "-c", "import distributed"], timeout=120)
    return time.perf_counter() - t0


def ctrlstack_scale(n: int) -> float:
    import ctrlstack

    cluster = ctrlstack.launch("slurm-cpu", workers=n // 2, dashboard=False)
    try:
        cluster.wait_for_workers(n // 2, timeout=300)
        t0 = time.perf_counter()
        cluster.scale(n)
        cluster.wait_for_workers(n, timeout=300)
        return time.perf_counter() - t0
    finally:
        cluster.stop()
        wait_empty()


def _plain(log_dir: str, per_job: int = 1) -> Any:
    from dask_jobqueue import SLURMCluster

    return SLURMCluster(
        cores=per_job,
        memory=f"{per_job}GiB",
        processes=per_job,
        queue="debug",
        walltime="00:30:00",
        interface="lo",
        log_directory=log_dir,
        scheduler_options={"dashboard_address": ":0"},
    )


def plain_run(n: int, log_dir: str, per_job: int = 1) -> dict[str, float]:
    from distributed import Client

    t0 = time.perf_counter()
    cluster = _plain(log_dir, per_job)
    client = Client(cluster)
    cluster.scale(n)
    client.wait_for_workers(1, timeout=300)
    first = time.perf_counter() - t0
    client.wait_for_workers(n, timeout=300)
    launch = time.perf_counter() - t0
    t1 = time.perf_counter()
    client.close()
    cluster.close()
    stop = time.perf_counter() - t1 + wait_empty()
    return {"launch": launch, "stop": stop, "first": first}


def plain_scale(n: int, log_dir: str) -> float:
    from distributed import Client

    cluster = _plain(log_dir)
    client = Client(cluster)
    try:
        cluster.scale(n // 2)
        client.wait_for_workers(n // 2, timeout=300)
        t0 = time.perf_counter()
        cluster.scale(n)
        client.wait_for_workers(n, timeout=300)
        return time.perf_counter() - t0
    finally:
        client.close()
        cluster.close()
        wait_empty()


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workers", type=int, default=8)
    args = parser.parse_args(argv)
    own = None
    if not os.environ.get("SLURM_CONF"):
        own = Path(tempfile.gettempdir()) / f"ctrlstack-slurm-bench-{os.getpid()}"
        out = _proc.run(
            [sys.executable, str(SCRIPT), "up", "--state", str(own), "--json"], timeout=900
        )
        os.environ["SLURM_CONF"] = json.loads(out.stdout)["SLURM_CONF"]
    state = tempfile.mkdtemp(prefix="ctrlstack-bench-state-")
    os.environ["DASK_CTRLSTACK__STATE_DIR"] = state
    n = args.workers
    results: dict[str, list[float]] = {}

    def record(key: str, value: float) -> None:
        results.setdefault(key, []).append(value)
        print(f"  {key}: {value:.2f} s", flush=True)

    sides: list[tuple[str, Callable[[], None]]] = []

    def ours() -> None:
        run = ctrlstack_run(n)
        record("ctrlstack launch", run["launch"])
        record("ctrlstack launch returned", run["returned"])
        record("ctrlstack first worker", run["first"])
        record("ctrlstack stop->empty", run["stop"])
        record("ctrlstack scale-up", ctrlstack_scale(n))

    def plain() -> None:
        with tempfile.TemporaryDirectory() as logs:
            run = plain_run(n, logs)
            record("plain launch", run["launch"])
            record("plain first worker", run["first"])
            record("plain stop->empty", run["stop"])
            record("plain scale-up", plain_scale(n, logs))

    def packed() -> None:
        run = ctrlstack_run(n, per_job=2)
        record("ctrlstack packed launch", run["launch"])
        record("ctrlstack packed first worker", run["first"])
        record("ctrlstack packed stop->empty", run["stop"])

    def plain_packed() -> None:
        with tempfile.TemporaryDirectory() as logs:
            run = plain_run(n, logs, per_job=2)
            record("plain packed launch", run["launch"])

    def nanny() -> None:
        record("ctrlstack nanny launch", ctrlstack_run(n, nanny=True)["launch"])

    def breakdown() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            record("breakdown: sbatch -> job runs", job_latency(tmp))
        record("breakdown: import distributed", import_time())

    sides = [
        ("ctrlstack", ours),
        ("plain", plain),
        ("packed", packed),
        ("plain packed", plain_packed),
        ("nanny", nanny),
        ("breakdown", breakdown),
    ]
    try:
        for r in range(args.repeat):
            order = sides[r % len(sides) :] + sides[: r % len(sides)]
            load = os.getloadavg()
            print(f"repeat {r + 1}/{args.repeat} (load {load[0]:.1f} {load[1]:.1f})", flush=True)
            for _, fn in order:
                fn()
    finally:
        if own is not None:
            _proc.run([sys.executable, str(SCRIPT), "down", "--state", str(own)], timeout=300)
    load = os.getloadavg()
    print(f"\nmedians over {args.repeat} repeats, {n} workers × 1 CPU (load now {load[0]:.1f}):")
    for key in sorted(results):
        print(f"  {key:26s} {_median(results[key]):6.2f} s")
    ratio = _median(results["ctrlstack launch"]) / _median(results["plain launch"])
    print(f"  launch ratio ctrlstack/plain: {ratio:.2f}× (target <= 0.5×)")
    scale = _median(results["ctrlstack scale-up"]) / _median(results["plain scale-up"])
    print(f"  scale-up ratio ctrlstack/plain: {scale:.2f}×")
    packed_ratio = _median(results["ctrlstack packed launch"]) / _median(results["plain launch"])
    print(
        f"  packed launch ratio ({n // 2} jobs × 2 workers vs plain {n} jobs): {packed_ratio:.2f}×"
    )
    like = _median(results["ctrlstack packed launch"]) / _median(results["plain packed launch"])
    print(f"  packed vs plain packed (both {n // 2} jobs × 2 workers, processes=2): {like:.2f}×")
    nanny_ratio = _median(results["ctrlstack nanny launch"]) / _median(results["plain launch"])
    print(f"  nanny launch ratio (nanny: true, {n} jobs): {nanny_ratio:.2f}×")
    return 0


if __name__ == "__main__":
    sys.exit(main())
