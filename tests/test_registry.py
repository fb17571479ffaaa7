"""The cluster registry: reservation, liveness, permissions, corrupt records, leftovers.

No cluster is started here: supervisors are played by this test process (alive), by processes
that already exited (dead), and by small ``sleep`` process groups (leftovers to reap).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from ctrlstack.deploy import registry as registry_module
from ctrlstack.deploy.registry import (
    STARTING_GRACE,
    ClusterRecord,
    NameTakenError,
    Registry,
    validate_name,
    wait_gone,
)


def exited_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    proc = subprocess.Popen(["true"])
    proc.wait(10)
    return proc.pid


def live_record(name: str) -> ClusterRecord:
    """A record whose "supervisor" is this test process."""
    me = psutil.Process()
    return ClusterRecord(
        name=name, profile="local", backend="local", state="running",
        pid=me.pid, pid_started=me.create_time(), pgid=os.getpgid(0), address="tcp://127.0.0.1:1",
    )  # fmt: skip


def dead_record(name: str) -> ClusterRecord:
    return ClusterRecord(
        name=name, profile="local", backend="local", state="running",
        pid=exited_pid(), pid_started=time.time() - 5, address="tcp://127.0.0.1:1",
    )  # fmt: skip


def group_alive(pgid: int) -> list[int]:
    """Non-zombie members of process group ``pgid``."""
    out = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                out.append(proc.pid)
        except (OSError, psutil.Error):
            continue
    return out


@pytest.fixture
def reg(state_dir: Path) -> Iterator[Registry]:
    registry = Registry(state_dir)
    yield registry
    # No real cluster is started here: the records are fakes, "supervised" by this very process
    # or still "starting".  Drop them before state_dir's leftover check, which would otherwise
    # try to stop them (and with them this test process).
    for path in registry.dir.glob("*.json"):
        path.unlink()


@pytest.fixture
def sleep_group() -> Iterator[subprocess.Popen[bytes]]:
    """A process group like a supervisor's: a leader with two children, all sleeping."""
    proc = subprocess.Popen(["sh", "-c", "sleep 60 & sleep 60 & wait"], start_new_session=True)
    deadline = time.monotonic() + 10
    while len(group_alive(proc.pid)) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    yield proc
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)


# ------------------------------------------------------------------------------------ names
@pytest.mark.parametrize("name", ["demo", "a", "run-123-ab", "x.y_z", "A" * 63])
def test_valid_names(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize("name", ["", "-x", ".hidden", "a b", "a/b", "../x", "A" * 64, "é"])
def test_invalid_names_are_refused_with_the_rule(name: str) -> None:
    with pytest.raises(ValueError, match="letters, digits"):
        validate_name(name)


# ------------------------------------------------------------------------------ reservation
def test_reserve_twice_is_refused_while_the_holder_lives(reg: Registry) -> None:
    reg.reserve(live_record("demo"))
    with pytest.raises(NameTakenError, match=r"'demo' already exists.*ctrlstack stop demo"):
        reg.reserve(ClusterRecord(name="demo", profile="other", backend="local"))
    assert isinstance(NameTakenError("x"), ValueError)
    record = reg.read("demo")
    assert record is not None
    assert record.profile == "local"  # the holder's record is untouched


def test_a_starting_reservation_holds_the_name(reg: Registry) -> None:
    # A launch in progress: no supervisor pid yet, but inside the grace period.
    reg.reserve(ClusterRecord(name="demo", profile="local", backend="local"))
    with pytest.raises(NameTakenError):
        reg.reserve(ClusterRecord(name="demo", profile="local", backend="local"))


def test_a_dead_holders_name_can_be_reused(reg: Registry) -> None:
    reg.write(dead_record("demo"))
    fresh = ClusterRecord(name="demo", profile="new", backend="local")
    reg.reserve(fresh)
    record = reg.read("demo")
    assert record is not None
    assert record.profile == "new"
    assert record.state == "starting"


def test_a_stale_starting_reservation_can_be_reused(reg: Registry) -> None:
    reg.write(ClusterRecord(name="demo", profile="old", backend="local",
                            created=time.time() - STARTING_GRACE - 1))  # fmt: skip
    reg.reserve(ClusterRecord(name="demo", profile="new", backend="local"))
    record = reg.read("demo")
    assert record is not None
    assert record.profile == "new"


def test_reservation_is_never_visible_half_written(
    reg: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What a concurrent `ctrlstack list` (or a second launch) would read while the record is
    # being written.  An empty file there reads as a corrupt, hence dead, record: the other
    # process would delete the reservation or take the name.
    seen: list[ClusterRecord | None] = []
    real_dump = json.dump

    def spying_dump(obj: object, fh: object, **kwargs: object) -> None:
        seen.append(reg.read("demo"))
        real_dump(obj, fh, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(json, "dump", spying_dump)
    reg.reserve(ClusterRecord(name="demo", profile="local", backend="local"))
    assert seen
    assert all(s is None for s in seen), [s.state for s in seen if s]
    record = reg.read("demo")
    assert record is not None
    assert record.state == "starting"


def test_two_takeovers_of_a_dead_name_cannot_both_win(
    reg: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = reg, Registry(reg.root)
    first.write(dead_record("demo"))
    results: dict[str, str] = {}
    threads: list[threading.Thread] = []

    def attempt(reg: Registry, key: str) -> None:
        try:
            reg.reserve(ClusterRecord(name="demo", profile=key, backend="local"))
            results[key] = "won"
        except NameTakenError:
            results[key] = "refused"

    original = ClusterRecord.is_alive

    def is_alive(self: ClusterRecord) -> bool:
        # While the first launch is judging the dead record, a second launch runs to the end
        # (or, with the registry lock, waits for the first one).
        if not threads:
            thread = threading.Thread(target=attempt, args=(second, "second"))
            threads.append(thread)
            thread.start()
            thread.join(0.5)
        return original(self)

    monkeypatch.setattr(ClusterRecord, "is_alive", is_alive)
    attempt(first, "first")
    threads[0].join(20)
    assert sorted(results.values()) == ["refused", "won"], results
    record = first.read("demo")
    assert record is not None
    assert results[record.profile] == "won"


# ------------------------------------------------------------------------------ files
def test_files_are_private(reg: Registry, state_dir: Path) -> None:
    reg.reserve(live_record("demo"))
    reg.write(live_record("demo"))
    assert (state_dir / "clusters").stat().st_mode & 0o777 == 0o700
    assert (state_dir / "clusters" / "demo.json").stat().st_mode & 0o777 == 0o600


def test_a_new_state_dir_is_created_private(tmp_path: Path) -> None:
    root = tmp_path / "fresh" / "state"
    Registry(root)
    assert root.stat().st_mode & 0o777 == 0o700
    assert (root / "clusters").stat().st_mode & 0o777 == 0o700


def test_an_open_clusters_dir_is_tightened(tmp_path: Path) -> None:
    (tmp_path / "clusters").mkdir(mode=0o755)
    os.chmod(tmp_path / "clusters", 0o755)
    Registry(tmp_path)
    assert (tmp_path / "clusters").stat().st_mode & 0o777 == 0o700


def test_writes_leave_no_temp_files(reg: Registry) -> None:
    reg.reserve(live_record("demo"))
    for workers in range(5):
        record = live_record("demo")
        record.workers = workers
        reg.write(record)
    assert sorted(p.name for p in reg.dir.iterdir() if p.name != ".lock") == ["demo.json"]
    stored = reg.read("demo")
    assert stored is not None
    assert stored.workers == 4


def test_a_failed_write_leaves_no_temp_file_and_keeps_the_old_record(reg: Registry) -> None:
    reg.write(live_record("demo"))
    bad = live_record("demo")
    bad.spec = {"not json": object()}
    with pytest.raises(TypeError):
        reg.write(bad)
    with pytest.raises(TypeError):
        reg.reserve(ClusterRecord(name="other", profile="p", backend="b", spec={"x": object()}))
    assert sorted(p.name for p in reg.dir.iterdir() if p.name != ".lock") == ["demo.json"]
    assert reg.read("demo") == live_record("demo").__class__.from_dict(
        json.loads((reg.dir / "demo.json").read_text())
    )


def test_record_round_trip_ignores_unknown_fields(reg: Registry) -> None:
    data = live_record("demo").to_dict() | {"from_the_future": 1}
    (reg.dir / "demo.json").write_text(json.dumps(data))
    record = reg.read("demo")
    assert record is not None
    assert record.to_dict() == live_record("demo").to_dict() | {"created": data["created"]}


# ------------------------------------------------------------------------------ liveness
def test_live_and_dead_supervisors(reg: Registry) -> None:
    assert live_record("a").is_alive()
    assert live_record("a").supervisor() is not None
    assert not dead_record("b").is_alive()
    assert ClusterRecord(name="c", profile="p", backend="b").is_alive()  # starting, in grace


def test_a_reused_pid_does_not_look_alive() -> None:
    record = live_record("demo")
    assert record.pid_started is not None
    record.pid_started -= 100  # same pid, but a process started at another time
    assert record.supervisor() is None
    assert not record.is_alive()


def test_a_zombie_supervisor_is_dead() -> None:
    proc = subprocess.Popen(["true"])
    deadline = time.monotonic() + 10
    while psutil.Process(proc.pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    record = ClusterRecord(name="z", profile="p", backend="b", state="running", pid=proc.pid)
    assert not record.is_alive()
    proc.wait()


# ------------------------------------------------------------------------------ corrupt records
@pytest.mark.parametrize(
    "content",
    [b"", b"{not json", b"\xff\xfe", b"[]", b'"text"', b'{"name": "demo"}',
     b'{"name": "demo", "profile": "p", "backend": "b", "pid": "12"}'],
)  # fmt: skip
def test_corrupt_record_is_reported_dead_and_swept(reg: Registry, content: bytes) -> None:
    (reg.dir / "demo.json").write_bytes(content)
    record = reg.read("demo")
    assert record is not None
    assert record.state == "dead"
    assert record.name == "demo"
    (swept,) = reg.sweep()
    assert swept.name == "demo"
    assert swept.state == "dead"
    assert not (reg.dir / "demo.json").exists()
    assert reg.sweep() == []


def test_stray_files_do_not_break_listing(reg: Registry) -> None:
    (reg.dir / "not a name.json").write_text("{}")
    (reg.dir / "notes.txt").write_text("hello")
    reg.write(live_record("demo"))
    assert [r.name for r in reg] == ["demo"]
    assert [r.name for r in reg.sweep()] == ["demo"]
    assert (reg.dir / "not a name.json").exists()  # not ours to delete


def test_the_file_name_is_the_records_name(reg: Registry) -> None:
    # A record copied by hand under another name must not make us remove the original's file.
    data = dead_record("original").to_dict()
    (reg.dir / "copy.json").write_text(json.dumps(data))
    reg.write(live_record("original"))
    (swept_copy, original) = sorted(reg.sweep(), key=lambda r: r.name)
    assert (swept_copy.name, swept_copy.state) == ("copy", "dead")
    assert (original.name, original.state) == ("original", "running")
    assert (reg.dir / "original.json").exists()


def test_sweep_keeps_live_records_and_reports_dead_ones_once(reg: Registry) -> None:
    reg.write(live_record("alive"))
    reg.write(dead_record("gone"))
    first = {r.name: r.state for r in reg.sweep()}
    assert first == {"alive": "running", "gone": "dead"}
    assert {r.name: r.state for r in reg.sweep()} == {"alive": "running"}


# ------------------------------------------------------------------------------ leftovers
def test_leftovers_and_reap_kill_a_dead_supervisors_group(
    sleep_group: subprocess.Popen[bytes],
) -> None:
    record = dead_record("crash")
    record.created = time.time() - 5
    record.pgid = sleep_group.pid
    members = {p.pid for p in record.leftovers()}
    assert len(members) == 3
    assert sleep_group.pid in members
    start = time.monotonic()
    assert record.reap(timeout=5) == 3
    assert time.monotonic() - start < 4  # they obey SIGTERM: no SIGKILL round needed
    assert group_alive(sleep_group.pid) == []
    assert record.leftovers() == []


STUBBORN = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
    " print('ready', flush=True); time.sleep(60)"
)


def test_reap_kills_what_ignores_sigterm(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", STUBBORN],
        start_new_session=True, stdout=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"ready\n"
        record = ClusterRecord(name="x", profile="p", backend="b", pgid=proc.pid,
                               created=time.time() - 5)  # fmt: skip
        start = time.monotonic()
        assert record.reap(timeout=0.5) == 1
        assert time.monotonic() - start < 3
        assert group_alive(proc.pid) == []
        assert proc.poll() is not None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_leftovers_ignore_a_group_older_than_the_record(
    sleep_group: subprocess.Popen[bytes],
) -> None:
    # A reused group id belongs to processes started before our cluster existed.
    record = ClusterRecord(name="x", profile="p", backend="b", pgid=sleep_group.pid,
                           created=time.time() + 10)  # fmt: skip
    assert record.leftovers() == []
    assert record.reap() == 0
    assert len(group_alive(sleep_group.pid)) == 3
    assert ClusterRecord(name="x", profile="p", backend="b").leftovers() == []  # no pgid


def test_leftovers_never_include_the_callers_own_group() -> None:
    record = ClusterRecord(name="x", profile="p", backend="b", pgid=os.getpgrp(),
                           created=time.time() - 3600 * 24 * 365)  # fmt: skip
    assert record.leftovers() == []


def test_leftovers_skip_processes_whose_start_time_is_unreadable(
    sleep_group: subprocess.Popen[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    record = ClusterRecord(name="x", profile="p", backend="b", pgid=sleep_group.pid,
                           created=time.time() - 5)  # fmt: skip

    def denied(self: psutil.Process) -> float:
        raise psutil.AccessDenied(self.pid)

    monkeypatch.setattr(psutil.Process, "create_time", denied)
    monkeypatch.setattr(psutil.Process, "as_dict", lambda self, attrs=None, **kw: {
        "pid": self.pid, "create_time": None})  # fmt: skip
    assert record.leftovers() == []


HOLDER = (
    "import subprocess, time; p = subprocess.Popen(['sleep', '60'], start_new_session=True);"
    " print(p.pid, flush=True); time.sleep(60)"
)


def test_reap_does_not_wait_for_zombies_it_cannot_reap(tmp_path: Path) -> None:
    # A dead member of the group whose parent (outside the group) does not reap it stays a
    # zombie; it runs nothing, so reaping must not spend its timeouts waiting for it.
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER],
        stdout=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert holder.stdout is not None
        child = int(holder.stdout.readline())
        os.kill(child, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while psutil.Process(child).status() != psutil.STATUS_ZOMBIE:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        record = ClusterRecord(name="x", profile="p", backend="b", pgid=child,
                               created=time.time() - 5)  # fmt: skip
        start = time.monotonic()
        record.reap(timeout=3)
        assert time.monotonic() - start < 2
        assert wait_gone([psutil.Process(child)], 0) == []
    finally:
        holder.kill()
        holder.wait(10)


def test_sweep_reaps_the_leftovers_of_a_dead_record(
    reg: Registry, sleep_group: subprocess.Popen[bytes]
) -> None:
    record = dead_record("crash")
    record.created = time.time() - 5
    record.pgid = sleep_group.pid
    reg.write(record)
    (swept,) = reg.sweep()
    assert swept.state == "dead"
    assert group_alive(sleep_group.pid) == []
    assert reg.read("crash") is None


def test_the_lock_wait_is_bounded(reg: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry_module, "LOCK_TIMEOUT", 0.2)
    other = Registry(reg.root)
    start = time.monotonic()
    with reg._lock(), pytest.raises(registry_module.RegistryLockError, match="locked"):  # noqa: SIM117
        with other._lock(timeout=0.2):
            pass
    assert time.monotonic() - start < 2
    with other._lock():  # released again
        pass


def test_a_file_system_without_locking_still_works(
    reg: Registry, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def flock(fd: int, op: int) -> None:
        raise OSError(errno.ENOSYS, "Function not implemented")  # Lustre without -o flock

    monkeypatch.setattr(registry_module.fcntl, "flock", flock)
    reg.reserve(ClusterRecord(name="demo", profile="local", backend="local"))
    assert [r.name for r in reg.sweep()] == ["demo"]
    assert "file locking is not available" in caplog.text
