"""The server extension's manager, without a web server: it never blocks the event loop."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from ctrlstack.deploy.status import ClusterStatus
from ctrlstack.server.manager import ClusterManager, RequestError
from ctrlstack.server.wire import as_status


async def _watch_loop(stop: asyncio.Event, gaps: list[float], period: float = 0.005) -> None:
    last = time.perf_counter()
    while not stop.is_set():
        await asyncio.sleep(period)
        now = time.perf_counter()
        gaps.append(now - last - period)
        last = now


@pytest.mark.slow
def test_launch_and_stop_do_not_stall_the_loop(state_dir: Path) -> None:
    async def main() -> tuple[float, dict[str, object]]:
        manager = ClusterManager()
        await manager.warm_up()
        stop = asyncio.Event()
        gaps: list[float] = []
        watcher = asyncio.create_task(_watch_loop(stop, gaps))
        try:
            status = await manager.create(
                {"profile": "local", "name": "loop", "overrides": {"workers": 1, "threads": 1}}
            )
            listed = await manager.list()
            assert [c["name"] for c in listed] == ["loop"]
            await manager.stop("loop")
        finally:
            stop.set()
            await watcher
            manager.close()
        return max(gaps), status

    worst, status = asyncio.run(main())
    assert status["state"] == "running"
    assert status["connected"] == 1
    # The launch takes seconds; the loop must keep ticking (generous bound for a loaded CI box,
    # benchmarks/lab.py reports the real figure).
    assert worst < 0.25, f"event loop stalled {worst * 1000:.0f} ms during launch/stop"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ("x", None),
        ({"profile": ""}, "profile"),
        ({"profile": "local", "name": "a/b"}, "name"),
        ({"profile": "local", "overrides": {"backend": "slurm"}}, "backend"),
    ],
)
def test_create_rejects_before_starting(state_dir: Path, body: object, field: str | None) -> None:
    manager = ClusterManager()
    try:
        with pytest.raises(RequestError) as info:
            asyncio.run(manager.create(body))
        assert info.value.field == field
        assert asyncio.run(manager.list()) == []
    finally:
        manager.close()


@pytest.mark.parametrize("value", [True, -1, 1.5, "1e3", float("inf"), None, 10**9])
def test_scale_count_must_be_a_sane_integer(value: object) -> None:
    manager = ClusterManager()
    try:
        with pytest.raises(RequestError) as info:
            asyncio.run(manager.scale("c", {"workers": value}))
        assert info.value.field == "workers"
    finally:
        manager.close()


def test_wire_reads_typed_and_plain_status() -> None:
    typed = ClusterStatus(name="a", connected=2, requested=3)
    assert as_status(typed) is typed
    plain = as_status(typed.to_dict())
    assert plain == typed
    legacy = as_status({"name": "b", "workers": 1, "slots": {"0": "0-1", "1": ""}, "threads": 2})
    assert (legacy.connected, legacy.requested) == (1, 2)
    assert [(w.cpus, w.state) for w in legacy.workers] == [("0-1", "running"), (None, "pending")]
    with pytest.raises(TypeError):
        as_status(42)


def test_fresh_shares_one_call_and_never_caches_errors() -> None:
    from ctrlstack.server.cache import Fresh

    calls: list[str] = []

    async def fetch() -> str:
        calls.append("x")
        await asyncio.sleep(0.05)
        return f"v{len(calls)}"

    async def failing() -> str:
        calls.append("e")
        raise ConnectionError("down")

    async def main() -> None:
        fresh: Fresh[str] = Fresh(ttl=0.2)
        assert await asyncio.gather(*(fresh.get("a", fetch) for _ in range(5))) == ["v1"] * 5
        assert await fresh.get("a", fetch) == "v1"  # within ttl
        assert calls == ["x"]
        await asyncio.sleep(0.25)
        assert await fresh.get("a", fetch) == "v2"  # expired
        fresh.put("a", "mine")
        assert await fresh.get("a", fetch) == "mine"
        fresh.forget("a")
        with pytest.raises(ConnectionError):
            await fresh.get("a", failing)
        assert await fresh.get("a", fetch) == "v4"  # the error was not kept

    asyncio.run(main())


def test_fresh_answers_stale_from_memory_and_refreshes_behind() -> None:
    """A polled read never waits for the supervisor once it has an answer (REST latency)."""
    from ctrlstack.server.cache import Fresh

    calls: list[float] = []
    gate = asyncio.Event()

    async def slow() -> str:
        calls.append(time.perf_counter())
        await gate.wait()
        return f"v{len(calls)}"

    async def gone() -> str:
        raise LookupError("stopped elsewhere")

    async def main() -> None:
        fresh: Fresh[str] = Fresh(ttl=0.05, stale=5.0)
        gate.set()
        assert await fresh.get("a", slow) == "v1"  # nothing cached: waits
        gate.clear()
        await asyncio.sleep(0.06)
        t0 = time.perf_counter()
        answers = [await fresh.get("a", slow) for _ in range(3)]
        assert time.perf_counter() - t0 < 0.02  # from memory, the refresh is blocked on gate
        await asyncio.sleep(0.01)
        assert answers == ["v1"] * 3
        assert len(calls) == 2
        gate.set()
        await asyncio.sleep(0.01)
        assert await fresh.get("a", slow) == "v2"  # the background refresh landed
        # An action's answer wins over a refresh that started before it.
        await asyncio.sleep(0.06)
        gate.clear()
        assert await fresh.get("a", slow) == "v2"  # starts refresh v3 (blocked)
        fresh.put("a", "scaled")
        gate.set()
        await asyncio.sleep(0.01)
        assert await fresh.get("a", slow) == "scaled"
        # A failed refresh drops the answer: the next read sees the error, not a stale value.
        await asyncio.sleep(0.06)
        assert await fresh.get("a", gone) == "scaled"  # stale, refresh fails behind
        await asyncio.sleep(0.01)
        with pytest.raises(LookupError):
            await fresh.get("a", gone)
        assert fresh.age("a") is None

    asyncio.run(main())
