"""``ctrlstack.api`` and ``deploy.control`` behaviour that needs no cluster: signals and bounds."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

from ctrlstack import api
from ctrlstack.deploy import control


class Sentinel(Exception):
    """Raised by the test's own SIGTERM handler (instead of this process dying)."""


@pytest.fixture
def sigterm_sentinel() -> Iterator[Any]:
    def handler(signum: int, frame: FrameType | None) -> None:
        raise Sentinel

    previous = signal.signal(signal.SIGTERM, handler)
    yield handler
    signal.signal(signal.SIGTERM, previous)


def test_sigterm_while_the_cluster_starts_becomes_system_exit(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch, sigterm_sentinel: Any
) -> None:
    cleaned: list[str] = []

    def start_supervisor(name: str, spec: Any, **kwargs: Any) -> None:
        try:
            os.kill(os.getpid(), signal.SIGTERM)  # e.g. Slurm cancels the job during the start
            time.sleep(5)
        finally:
            cleaned.append(name)  # the launcher's own clean-up runs on the way out

    monkeypatch.setattr(api, "start_supervisor", start_supervisor)
    begin = time.monotonic()
    with pytest.raises(SystemExit) as info, api.cluster("local", name="eph"):
        pytest.fail("the block must not run")
    assert info.value.code == 128 + signal.SIGTERM
    assert time.monotonic() - begin < 3
    assert cleaned == ["eph"]
    assert signal.getsignal(signal.SIGTERM) is sigterm_sentinel  # restored


def test_sigterm_during_the_stop_waits_for_the_stop(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch, sigterm_sentinel: Any
) -> None:
    events: list[str] = []
    monkeypatch.setattr(api, "start_supervisor", lambda *a, **k: None)
    monkeypatch.setattr(api.Cluster, "client", lambda self, **kw: "client")

    def stop(self: api.Cluster, timeout: float = 30) -> None:
        os.kill(os.getpid(), signal.SIGTERM)  # systemd/Slurm repeat SIGTERM during clean-up
        time.sleep(0.3)
        events.append("stopped")

    monkeypatch.setattr(api.Cluster, "stop", stop)
    with pytest.raises(SystemExit) as info, api.cluster("local", name="eph") as client:
        assert client == "client"
    assert events == ["stopped"]  # the stop ran to the end ...
    assert info.value.code == 128 + signal.SIGTERM  # ... and the signal still ends the script
    assert signal.getsignal(signal.SIGTERM) is sigterm_sentinel


def test_sigterm_in_the_block_stops_the_cluster(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch, sigterm_sentinel: Any
) -> None:
    events: list[str] = []
    monkeypatch.setattr(api, "start_supervisor", lambda *a, **k: None)
    monkeypatch.setattr(api.Cluster, "client", lambda self, **kw: "client")
    monkeypatch.setattr(api.Cluster, "stop", lambda self, timeout=30: events.append("stopped"))

    def script() -> None:
        with api.cluster("local", name="eph"):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)

    with pytest.raises(SystemExit) as info:
        script()
    assert info.value.code == 143
    assert events == ["stopped"]


def test_control_calls_are_bounded_even_if_the_call_hangs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def stuck(
        address: str, op: str, timeout: float, security: Any, kwargs: dict[str, Any]
    ) -> None:
        time.sleep(2)  # noqa: ASYNC251 - blocks its loop: asyncio.wait_for cannot cancel this

    monkeypatch.setattr(control, "_acall", stuck)
    monkeypatch.setattr(control, "CLOSE_GRACE", 0.2, raising=False)
    begin = time.monotonic()
    with pytest.raises(control.ClusterUnreachableError, match="did not answer 'ctrlstack_status'"):
        control.call("tcp://127.0.0.1:1", "ctrlstack_status", timeout=0.3)
    assert time.monotonic() - begin < 1.5


def test_control_call_to_nothing_is_unreachable() -> None:
    begin = time.monotonic()
    with pytest.raises(control.ClusterUnreachableError, match=r"127\.0\.0\.1:9"):
        control.call("tcp://127.0.0.1:9", "ctrlstack_status", timeout=0.5)
    assert time.monotonic() - begin < 6
