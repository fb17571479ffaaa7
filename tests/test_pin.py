"""Pinning: environment for workers, re-pinning every thread, the Dask preload, diagnostics.

Anything that changes thread affinities runs in a fresh subprocess or in real Dask workers, never
in the pytest process itself.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from ctrlstack.topology import pin
from ctrlstack.topology.cpuset import format_cpulist, parse_cpulist
from ctrlstack.topology.model import Machine
from ctrlstack.topology.plan import Plan, Slot, plan

ROOT = Path(__file__).resolve().parents[1]
ALLOWED = sorted(os.sched_getaffinity(0))
needs_two_cpus = pytest.mark.skipif(len(ALLOWED) < 2, reason="needs at least 2 allowed CPUs")


def slot_of(cpus: set[int], threads: int | None = None, index: int = 0) -> Slot:
    return Slot(index, frozenset(cpus), threads or len(cpus), (0,), (0,), (0,), 0)


def child_env(extra: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(extra)
    return env


def run_child(code: str, env: dict[str, str]) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=child_env(env),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


# ------------------------------------------------------------------ worker_env (pure-ish)
def test_worker_env_budget_and_layer() -> None:
    env = pin.worker_env(slot_of(set(range(8))), 3)
    assert env["CTRLSTACK_CPUS"] == "0-7"
    assert env["CTRLSTACK_THREADS"] == "8"
    assert env["CTRLSTACK_TASK_THREADS"] == "3"
    assert env["CTRLSTACK_THREAD_BUDGET"] == "2"
    assert env["NUMBA_NUM_THREADS"] == "8"
    assert env["OMP_NUM_THREADS"] == env["OPENBLAS_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "2"
    assert env["NUMBA_THREADING_LAYER"] == pin.threadsafe_layer()
    assert env["NUMBA_THREADING_LAYER"] != "workqueue"
    single = pin.worker_env(slot_of({4, 5}), 1)
    assert single["NUMBA_THREADING_LAYER"] == "workqueue"
    assert single["CTRLSTACK_THREAD_BUDGET"] == "2"
    # More task threads than slot threads still leaves every task one thread.
    assert pin.worker_env(slot_of({4, 5}), 8)["CTRLSTACK_THREAD_BUDGET"] == "1"


def test_threadsafe_layer_is_omp_here() -> None:
    # topology notes §3.2: the PyPI wheel's omppool links the system libgomp; tbb is absent.
    try:
        import numba.np.ufunc.omppool  # noqa: F401
    except ImportError:
        pytest.skip("libgomp is not available on this machine")
    assert pin.threadsafe_layer() == "omp"


def test_worker_env_unpinned() -> None:
    env = pin.worker_env(None, 1)
    assert "CTRLSTACK_CPUS" not in env
    assert env["CTRLSTACK_THREADS"] == str(len(ALLOWED))
    assert "CTRLSTACK_CPUS" not in pin.worker_env(slot_of({0}), 1, pin=False)
    with pytest.raises(ValueError, match="task_threads must be an integer >= 1"):
        pin.worker_env(slot_of({0}), 0)


def test_worker_envs_follow_plan_pinned_flag(tiny_machine: Machine) -> None:
    pinned = plan(tiny_machine, 2, 1)
    envs = pin.worker_envs(pinned)
    assert [e["CTRLSTACK_CPUS"] for e in envs] == [format_cpulist(s.cpus) for s in pinned.slots]
    unpinned = plan(tiny_machine, 2, 1, policy="none")
    assert all("CTRLSTACK_CPUS" not in e for e in pin.worker_envs(unpinned))


@pytest.fixture
def tiny_machine() -> Machine:
    cpus = frozenset({0, 1})
    return Machine(
        cpus=cpus,
        allowed=cpus,
        packages={0: cpus},
        numa_nodes={0: cpus},
        l3=(cpus,),
        cores=(frozenset({0}), frozenset({1})),
    )


# ------------------------------------------------------------------ parsing, no side effects
def test_last_cpu_handles_odd_thread_names() -> None:
    fields = " ".join(str(i) for i in range(3, 53))  # field k holds the number k
    assert pin._last_cpu(f"123 (a) b (c)) {fields}") == 39
    assert pin._last_cpu("123 (short) 1 2") is None
    assert pin._last_cpu(None) is None


def test_apply_from_env_rejects_bad_values_before_touching_anything() -> None:
    with pytest.raises(ValueError, match="CTRLSTACK_THREAD_BUDGET must be an integer >= 1"):
        pin.apply_from_env({"CTRLSTACK_CPUS": "0", "CTRLSTACK_THREAD_BUDGET": "zero"})
    assert sorted(os.sched_getaffinity(0)) == ALLOWED


def test_apply_from_env_without_plan_does_nothing() -> None:
    result = pin.apply_from_env({})
    assert result["cpus"] is None
    assert result["pinned_tids"] == []
    assert "blas_limit" not in result


def test_pin_threads_outside_allowed_changes_nothing(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="ctrlstack.topology.pin"):
        assert pin.pin_threads({max(ALLOWED) + 4096}) == []
    assert "outside this process's allowed CPUs" in caplog.text
    assert sorted(os.sched_getaffinity(0)) == ALLOWED


def test_placement_reads_this_process() -> None:
    import threading

    info = pin.placement()
    assert info["pid"] == os.getpid()
    me = {t["tid"]: t for t in info["threads"]}[threading.get_native_id()]
    assert parse_cpulist(me["affinity"]) == frozenset(ALLOWED)
    assert me["last_cpu"] in ALLOWED
    assert json.loads(json.dumps(info)) == info


def test_dask_setup_records_result_on_the_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CTRLSTACK_CPUS", "CTRLSTACK_THREADS", "CTRLSTACK_THREAD_BUDGET"):
        monkeypatch.delenv(name, raising=False)

    class FakeWorker:
        nanny = None
        ctrlstack_pin: dict[str, Any] | None = None

    worker = FakeWorker()
    pin.dask_setup(worker)
    assert worker.ctrlstack_pin is not None
    assert worker.ctrlstack_pin["cpus"] is None
    assert "parent_death_signal" not in worker.ctrlstack_pin


# ------------------------------------------------------------------ real processes
CHILD = """
    import json, threading
    import numpy, numba

    @numba.njit(parallel=True)
    def total(n):
        s = 0.0
        for i in numba.prange(n):
            s += i
        return s

    total(1000)  # the Numba pool now exists, created with the *old* mask
    before = sorted(int(t) for t in __import__("os").listdir("/proc/self/task"))
    from ctrlstack.topology.pin import apply_from_env, placement
    applied = apply_from_env()
    total(1000)
    print(json.dumps({"before": before, "applied": applied, "placement": placement(),
                      "numba_threads": numba.get_num_threads(),
                      "main": threading.get_native_id()}))
"""


def check_pinned_child(result: dict[str, Any], cpu: int) -> None:
    place = result["placement"]
    assert place["slot_cpus"] == str(cpu)
    assert set(result["before"]) <= {t["tid"] for t in place["threads"]}
    for thread in place["threads"]:
        assert thread["affinity"] == str(cpu), thread
    main = {t["tid"]: t for t in place["threads"]}[result["main"]]
    assert main["last_cpu"] == cpu
    # The slot's node (0 here) as memory policy: applied to the calling thread and read back.
    # Unlike the CPU mask it cannot reach threads that already existed (Numba's pool, made
    # before): the kernel only sets the caller's policy.  Pinned to the node's CPUs, those
    # threads still allocate on it through the default local policy.
    memory = result["applied"]["memory"]
    assert (memory["status"], memory["applied"], memory["tid"]) == (
        "applied",
        "prefer:0",
        result["main"],
    )
    assert main["mempolicy"] == "prefer:0"
    assert place["memory"]["policy"] == "prefer:0"
    older = [t for t in place["threads"] if t["tid"] in result["before"] and t is not main]
    assert older
    assert {t["mempolicy"] for t in older} == {"default"}
    assert result["numba_threads"] == 1
    assert place["numba"]["num_threads"] == 1
    assert place["numba"]["num_threads_config"] == 1
    blas = [p for p in place["threadpools"] if p["user_api"] == "blas"]
    assert blas
    assert all(p["num_threads"] == 1 for p in blas)


@needs_two_cpus
def test_apply_from_env_pins_existing_threads_in_a_fresh_process() -> None:
    cpu = ALLOWED[-1]
    result = run_child(CHILD, pin.worker_env(slot_of({cpu}), 1))
    assert len(result["before"]) >= 2  # main thread + Numba's pool thread
    check_pinned_child(result, cpu)


@pytest.mark.slow
@needs_two_cpus
def test_apply_from_env_repins_and_shrinks_a_blas_pool_made_before() -> None:
    # As if numpy had been imported before the worker's env applied (distributed imports numpy):
    # OpenBLAS starts with 2 threads on the old mask; apply_from_env must pin and shrink it.
    cpu = ALLOWED[-1]
    env = pin.worker_env(slot_of({cpu}), 1) | {"OPENBLAS_NUM_THREADS": "2"}
    result = run_child(CHILD, env)
    assert len(result["before"]) >= 3  # main + OpenBLAS worker + Numba pool thread
    check_pinned_child(result, cpu)


@pytest.mark.slow
def test_threadsafe_layer_runs_concurrent_parallel_regions() -> None:
    env = pin.worker_env(slot_of(set(ALLOWED)), 2)
    result = run_child(
        """
        import json, threading, numba

        @numba.njit(parallel=True)
        def total(n):
            s = 0.0
            for i in numba.prange(n):
                s += i
            return s

        out = []
        threads = [threading.Thread(target=lambda: out.append(total(10**6))) for _ in range(4)]
        for t in threads: t.start()
        for t in threads: t.join()
        print(json.dumps({"layer": numba.threading_layer(), "out": out}))
        """,
        env,
    )
    assert result["layer"] == env["NUMBA_THREADING_LAYER"]
    assert result["out"] == [float(sum(range(10**6)))] * 4


def test_parent_death_signal_stops_an_orphan() -> None:
    # parent -> child; the child arms PR_SET_PDEATHSIG and sleeps; killing the parent with
    # SIGKILL must take the child down too.
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                """
                import subprocess, sys, time
                code = ("from ctrlstack.topology.pin import set_parent_death_signal;"
                        "import time; print(set_parent_death_signal(), flush=True); time.sleep(60)")
                child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                                         text=True)
                print(child.pid, child.stdout.readline().strip(), flush=True)
                time.sleep(60)
                """
            ),
        ],
        env=child_env({}),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert parent.stdout is not None
        pid_text, armed = parent.stdout.readline().split()
        child = int(pid_text)
        assert armed == "True"
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _alive(child):
            time.sleep(0.05)
        alive = _alive(child)
        if alive:
            os.kill(child, signal.SIGKILL)
        assert not alive, "the orphaned child outlived its parent"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(timeout=10)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


# ------------------------------------------------------------------ a real Dask cluster
def _numba_task() -> float:
    import numba

    @numba.njit(parallel=True)
    def total(n: int) -> float:
        s = 0.0
        for i in numba.prange(n):
            s += i
        return s

    return float(total(1000))


def _live_machine() -> Machine:
    try:
        from ctrlstack.topology.discover import discover
    except ImportError:  # the reader is written separately; fall back to a flat model
        cpus = frozenset(ALLOWED)
        return Machine(
            cpus=cpus,
            allowed=cpus,
            packages={0: cpus},
            numa_nodes={0: cpus},
            l3=(cpus,),
            cores=tuple(frozenset({c}) for c in ALLOWED),
            source="test:affinity",
        )
    return discover()


@pytest.mark.slow
@needs_two_cpus
def test_pinned_nannies_in_a_spec_cluster() -> None:
    from distributed import Client, Nanny, Scheduler, SpecCluster

    from ctrlstack.topology.report import crowding

    machine = _live_machine()
    p: Plan = plan(machine, 2, 1, policy="core")
    envs = pin.worker_envs(p, task_threads=1)
    workers = {
        f"w{s.index}": {
            "cls": Nanny,
            "options": {
                "nthreads": 1,
                "preload": ["ctrlstack.topology.pin"],
                "env": env,
                "dashboard_address": ":0",
            },
        }
        for s, env in zip(p.slots, envs, strict=True)
    }
    scheduler = {"cls": Scheduler, "options": {"dashboard_address": ":0"}}
    with (
        SpecCluster(workers=workers, scheduler=scheduler) as cluster,
        Client(cluster) as client,
    ):
        client.wait_for_workers(2)
        # Run a Numba parallel kernel in each worker (a task thread launches the pool).
        futures = [client.submit(_numba_task, pure=False, workers=[a]) for a in client.ncores()]
        assert client.gather(futures) == [float(sum(range(1000)))] * 2
        places = client.run(pin.placement)
        applied = client.run(lambda dask_worker: dask_worker.ctrlstack_pin)
        by_name = {info["name"]: info for info in places.values()}
        for s in p.slots:
            info = by_name[f"w{s.index}"]
            assert info["slot_cpus"] == format_cpulist(s.cpus)
            for thread in info["threads"]:
                assert parse_cpulist(thread["affinity"]) == s.cpus, thread
            assert info["numba"]["num_threads_config"] == 1
            assert info["numba"]["num_threads"] == 1
            assert info["numba"]["threading_layer"] == "workqueue"
            assert all(t["num_threads"] == 1 for t in info["threadpools"])
        for result in applied.values():
            assert result["pinned_tids"]
            assert result["parent_death_signal"] is True
            assert result["memory"]["requested"] == "prefer:0"  # this VM: node 0 only
            assert result["memory"]["status"] == "applied"
        report = crowding(client, machine)
        assert report.ok, str(report)
        assert sum(len(leaf.workers) for leaf in report.leaves) == 2
        try:
            from ctrlstack.topology.discover import discover  # noqa: F401
        except ImportError:
            pass
        else:
            assert crowding(client).ok  # the default: this host's discovered machine
