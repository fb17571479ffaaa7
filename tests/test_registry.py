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

from ctrlstack.deploy import lifecycle, procs
from ctrlstack.deploy import registry as registry_module
from ctrlstack.deploy.launcher import _why_taken
from ctrlstack.deploy.lifecycle import STARTING_GRACE
from ctrlstack.deploy.procs import ProcessId, wait_gone
from ctrlstack.deploy.registry import (
    BrokenRecord,
    ClusterRecord,
    NameTakenError,
    Registry,
    validate_name,
)


def exited_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    proc = subprocess.Popen(["true"])
    proc.wait(10)
    return proc.pid


def live_record(name: str) -> ClusterRecord:
    """A record whose "supervisor" is this test process."""
    return ClusterRecord(
        name=name, profile="local", backend="local", state="running",
        supervisor=ProcessId.current(), pgid=os.getpgid(0), address="tls://127.0.0.1:1",
    )  # fmt: skip


def dead_record(name: str) -> ClusterRecord:
    return ClusterRecord(
        name=name, profile="local", backend="local", state="running",
        supervisor=ProcessId(exited_pid(), time.time() - 5, procs.hostname(), procs.boot_id()),
        address="tls://127.0.0.1:1",
    )  # fmt: skip


def reserve(reg: Registry, record: ClusterRecord) -> object:
    """Reserve as the launcher does: a dead holder's name may be taken over."""
    return reg.reserve(record, lambda existing: _why_taken(reg, existing))


def states(reg: Registry) -> dict[str, str]:
    return {s.name: s.state for s in lifecycle.sweep(reg)}


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
        if path.is_dir():
            path.rmdir()
        else:
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
def test_a_trailing_newline_is_not_a_name() -> None:
    # re.match with "$" accepts "nl\n" ("$" matches before a final newline).
    with pytest.raises(ValueError, match="letters, digits"):
        validate_name("nl\n")


def test_reserve_twice_is_refused_while_the_holder_lives(reg: Registry) -> None:
    reserve(reg, live_record("demo"))
    with pytest.raises(NameTakenError, match=r"'demo' already exists.*ctrlstack stop demo"):
        reserve(reg, ClusterRecord(name="demo", profile="other", backend="local"))
    assert isinstance(NameTakenError("x"), ValueError)
    record = reg.read("demo")
    assert record is not None
    assert record.profile == "local"  # the holder's record is untouched


def test_a_starting_reservation_holds_the_name(reg: Registry) -> None:
    # A launch in progress: no supervisor yet, but inside the grace period.
    reserve(reg, ClusterRecord(name="demo", profile="local", backend="local"))
    with pytest.raises(NameTakenError):
        reserve(reg, ClusterRecord(name="demo", profile="local", backend="local"))


def test_a_dead_holders_name_can_be_reused(reg: Registry) -> None:
    reg.write(dead_record("demo"))
    fresh = ClusterRecord(name="demo", profile="new", backend="local")
    replaced = reserve(reg, fresh)
    assert isinstance(replaced, ClusterRecord)
    assert replaced.profile == "local"
    record = reg.read("demo")
    assert record is not None
    assert record.profile == "new"
    assert record.state == "starting"


def test_a_stale_starting_reservation_can_be_reused(reg: Registry) -> None:
    reg.write(ClusterRecord(name="demo", profile="old", backend="local",
                            created=time.time() - STARTING_GRACE - 1))  # fmt: skip
    reserve(reg, ClusterRecord(name="demo", profile="new", backend="local"))
    record = reg.read("demo")
    assert record is not None
    assert record.profile == "new"


def test_a_broken_record_holds_the_name_until_forgotten(reg: Registry) -> None:
    (reg.dir / "demo.json").write_text("{trunc")
    with pytest.raises(NameTakenError, match=r"damaged record.*ctrlstack forget demo"):
        reserve(reg, ClusterRecord(name="demo", profile="new", backend="local"))
    assert (reg.dir / "demo.json").read_text() == "{trunc"
    lifecycle.forget(reg, "demo")
    reserve(reg, ClusterRecord(name="demo", profile="new", backend="local"))
    assert reg.read("demo") is not None


def test_reservation_is_never_visible_half_written(
    reg: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What a concurrent `ctrlstack list` (or a second launch) would read while the record is
    # being written.  An empty file there would read as a broken record.
    seen: list[object] = []
    real_dump = json.dump

    def spying_dump(obj: object, fh: object, **kwargs: object) -> None:
        seen.append(reg.load("demo"))
        real_dump(obj, fh, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(json, "dump", spying_dump)
    reserve(reg, ClusterRecord(name="demo", profile="local", backend="local"))
    assert seen
    assert all(s is None for s in seen), seen
    record = reg.read("demo")
    assert record is not None
    assert record.state == "starting"


def test_two_takeovers_of_a_dead_name_cannot_both_win(reg: Registry) -> None:
    first, second = reg, Registry(reg.root)
    first.write(dead_record("demo"))
    results: dict[str, str] = {}
    threads: list[threading.Thread] = []

    def attempt(reg: Registry, key: str) -> None:
        try:
            reg.reserve(ClusterRecord(name="demo", profile=key, backend="local"), judge_and_race)
            results[key] = "won"
        except NameTakenError:
            results[key] = "refused"

    def judge_and_race(existing: ClusterRecord | BrokenRecord) -> str | None:
        # While the first launch is judging the dead record, a second launch runs to the end
        # (or, with the registry lock, waits for the first one).
        if not threads:
            thread = threading.Thread(target=attempt, args=(second, "second"))
            threads.append(thread)
            thread.start()
            thread.join(0.5)
        return _why_taken(reg, existing)

    attempt(first, "first")
    threads[0].join(20)
    assert sorted(results.values()) == ["refused", "won"], results
    record = first.read("demo")
    assert record is not None
    assert results[record.profile] == "won"


# ------------------------------------------------------------------------------ files
def test_files_are_private(reg: Registry, state_dir: Path) -> None:
    reserve(reg, live_record("demo"))
    reg.write(live_record("demo"))
    reg.make_cluster_dir("demo")
    reg.write_pid_file("demo", {"supervisor": None})
    assert (state_dir / "clusters").stat().st_mode & 0o777 == 0o700
    assert (state_dir / "clusters" / "demo.json").stat().st_mode & 0o777 == 0o600
    assert reg.cluster_dir("demo").stat().st_mode & 0o777 == 0o700
    assert reg.pid_file("demo").stat().st_mode & 0o777 == 0o600
    assert reg.logs.stat().st_mode & 0o777 == 0o700


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
    reserve(reg, live_record("demo"))
    for workers in range(5):
        record = live_record("demo")
        record.requested = workers
        reg.write(record)
    assert sorted(p.name for p in reg.dir.iterdir() if p.name != ".lock") == ["demo.json"]
    stored = reg.read("demo")
    assert stored is not None
    assert stored.requested == 4


def test_a_failed_write_leaves_no_temp_file_and_keeps_the_old_record(reg: Registry) -> None:
    reg.write(live_record("demo"))
    bad = live_record("demo")
    bad.spec = {"not json": object()}
    with pytest.raises(TypeError):
        reg.write(bad)
    with pytest.raises(TypeError):
        reserve(reg, ClusterRecord(name="other", profile="p", backend="b", spec={"x": object()}))
    assert sorted(p.name for p in reg.dir.iterdir() if p.name != ".lock") == ["demo.json"]
    assert reg.read("demo") == ClusterRecord.from_dict(
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
    assert lifecycle.judge(reg, live_record("a")).state == "running"
    assert lifecycle.judge(reg, dead_record("b")).state == "dead"
    starting = ClusterRecord(name="c", profile="p", backend="b")  # no supervisor yet, in grace
    assert lifecycle.judge(reg, starting).state == "starting"


def test_a_reused_pid_does_not_look_alive(reg: Registry) -> None:
    record = live_record("demo")
    assert record.supervisor is not None
    me = record.supervisor
    # same pid, but a process started at another time
    record.supervisor = ProcessId(me.pid, me.started - 100, me.host, me.boot)
    assert record.supervisor.process() is None
    assert lifecycle.judge(reg, record).state == "dead"


def test_a_zombie_supervisor_is_dead(reg: Registry) -> None:
    proc = subprocess.Popen(["true"])
    deadline = time.monotonic() + 10
    while psutil.Process(proc.pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    ident = ProcessId.of(proc.pid)
    assert ident is not None
    record = ClusterRecord(name="z", profile="p", backend="b", state="running", supervisor=ident)
    assert lifecycle.judge(reg, record).state == "dead"
    proc.wait()


def test_an_incomplete_identity_is_never_trusted(reg: Registry) -> None:
    # A pid without a start time (hand-edited or from an old version) proves nothing.
    data = live_record("demo").to_dict()
    data["supervisor"] = {"pid": os.getpid(), "host": procs.hostname(), "boot": procs.boot_id()}
    (reg.dir / "demo.json").write_text(json.dumps(data))
    record = reg.read("demo")
    assert record is not None
    assert record.supervisor is None
    assert lifecycle.judge(reg, record).state == "dead"


def test_a_record_from_before_a_reboot_is_dead(reg: Registry) -> None:
    record = live_record("demo")
    record.boot = "another-boot"
    status = lifecycle.judge(reg, record)
    assert status.state == "dead"
    assert "rebooted" in (status.message or "")


# ------------------------------------------------------------------------------ broken records
@pytest.mark.parametrize(
    "content",
    [b"", b"{not json", b"\xff\xfe", b"[]", b'"text"', b'{"name": "demo"}',
     b'{"name": "demo", "profile": "p", "backend": "b", "pgid": "12"}'],
)  # fmt: skip
def test_a_corrupt_record_is_reported_broken_and_kept(reg: Registry, content: bytes) -> None:
    (reg.dir / "demo.json").write_bytes(content)
    entry = reg.load("demo")
    assert isinstance(entry, BrokenRecord)
    assert entry.path == reg.dir / "demo.json"
    (status,) = lifecycle.sweep(reg)
    assert (status.name, status.state, status.path) == ("demo", "broken", str(entry.path))
    assert "ctrlstack forget demo" in (status.message or "")
    assert (reg.dir / "demo.json").read_bytes() == content  # never deleted behind our back
    assert states(reg) == {"demo": "broken"}


def test_non_regular_record_files_do_not_hang_or_crash(reg: Registry) -> None:
    (reg.dir / "adir.json").mkdir()
    os.mkfifo(reg.dir / "fifo.json")
    (reg.dir / "link.json").symlink_to("/etc/hostname")
    start = time.monotonic()
    found = {s.name: s for s in lifecycle.sweep(reg)}
    assert time.monotonic() - start < 5
    assert {n: s.state for n, s in found.items()} == {
        "adir": "broken", "fifo": "broken", "link": "broken",
    }  # fmt: skip
    assert "directory" in (found["adir"].message or "")
    assert "not a regular file" in (found["fifo"].message or "")
    assert "symbolic link" in (found["link"].message or "")
    for name in ("adir", "fifo", "link"):
        lifecycle.forget(reg, name)
    assert lifecycle.sweep(reg) == []


def test_a_broken_record_of_a_live_supervisor_is_found_through_its_pid_file(
    reg: Registry,
) -> None:
    (reg.dir / "demo.json").write_text('{"name": "de')
    reg.make_cluster_dir("demo")
    reg.write_pid_file("demo", {"supervisor": ProcessId.current().to_dict(), "pgid": os.getpgid(0)})
    (status,) = lifecycle.sweep(reg)
    assert status.state == "broken"
    assert status.pid == os.getpid()
    assert "still runs" in (status.message or "")
    with pytest.raises(ValueError, match="still runs"):
        lifecycle.forget(reg, "demo")
    assert (reg.dir / "demo.json").exists()


def test_stray_files_do_not_break_listing(reg: Registry) -> None:
    (reg.dir / "not a name.json").write_text("{}")
    (reg.dir / "notes.txt").write_text("hello")
    reg.write(live_record("demo"))
    assert [r.name for r in reg] == ["demo"]
    assert states(reg) == {"demo": "running"}
    assert (reg.dir / "not a name.json").exists()  # not ours to delete


def test_the_file_name_is_the_records_name(reg: Registry) -> None:
    # A record copied by hand under another name must not make us remove the original's file.
    data = dead_record("original").to_dict()
    (reg.dir / "copy.json").write_text(json.dumps(data))
    reg.write(live_record("original"))
    assert states(reg) == {"copy": "dead", "original": "running"}
    assert (reg.dir / "original.json").exists()
    assert not (reg.dir / "copy.json").exists()


def test_sweep_keeps_live_records_and_reports_dead_ones_once(reg: Registry) -> None:
    reg.write(live_record("alive"))
    reg.write(dead_record("gone"))
    assert states(reg) == {"alive": "running", "gone": "dead"}
    assert states(reg) == {"alive": "running"}


# ------------------------------------------------------------------------------ leftovers
def test_stop_group_kills_a_dead_supervisors_group(
    sleep_group: subprocess.Popen[bytes],
) -> None:
    since = time.time() - 5
    members = {p.pid for p in procs.group_members(sleep_group.pid, since=since)}
    assert len(members) == 3
    assert sleep_group.pid in members
    start = time.monotonic()
    assert procs.stop_group(sleep_group.pid, since=since, timeout=5) == 3
    assert time.monotonic() - start < 4  # they obey SIGTERM: no SIGKILL round needed
    assert group_alive(sleep_group.pid) == []


STUBBORN = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
    " print('ready', flush=True); time.sleep(60)"
)


def test_stop_group_kills_what_ignores_sigterm() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", STUBBORN],
        start_new_session=True, stdout=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"ready\n"
        start = time.monotonic()
        assert procs.stop_group(proc.pid, since=time.time() - 5, timeout=0.5) == 1
        assert time.monotonic() - start < 3
        assert group_alive(proc.pid) == []
        assert proc.poll() is not None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_group_members_ignore_a_group_older_than_the_record(
    sleep_group: subprocess.Popen[bytes],
) -> None:
    # A reused group id belongs to processes started before our cluster existed.
    assert procs.group_members(sleep_group.pid, since=time.time() + 10) == []
    assert procs.stop_group(sleep_group.pid, since=time.time() + 10) == 0
    assert len(group_alive(sleep_group.pid)) == 3


def test_group_members_never_include_the_callers_own_group() -> None:
    assert procs.group_members(os.getpgrp(), since=0) == []


def test_group_members_skip_processes_whose_start_time_is_unreadable(
    sleep_group: subprocess.Popen[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    def denied(self: psutil.Process) -> float:
        raise psutil.AccessDenied(self.pid)

    monkeypatch.setattr(psutil.Process, "create_time", denied)
    assert procs.group_members(sleep_group.pid, since=time.time() - 5) == []


HOLDER = (
    "import subprocess, time; p = subprocess.Popen(['sleep', '60'], start_new_session=True);"
    " print(p.pid, flush=True); time.sleep(60)"
)


def test_stop_group_does_not_wait_for_zombies_it_cannot_reap() -> None:
    # A dead member of the group whose parent (outside the group) does not reap it stays a
    # zombie; it runs nothing, so stopping must not spend its timeouts waiting for it.
    holder = subprocess.Popen([sys.executable, "-c", HOLDER], stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None
        child = int(holder.stdout.readline())
        os.kill(child, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while psutil.Process(child).status() != psutil.STATUS_ZOMBIE:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        start = time.monotonic()
        procs.stop_group(child, since=time.time() - 5, timeout=3)
        assert time.monotonic() - start < 2
        assert wait_gone([psutil.Process(child)], 0) == []
    finally:
        holder.kill()
        holder.wait(10)


def test_sweep_stops_the_leftovers_of_a_dead_record(reg: Registry) -> None:
    # Like a dead supervisor's group: its leader (the launcher's short-lived intermediate) is
    # gone, its members (workers) still run.
    leader = subprocess.Popen(["sh", "-c", "sleep 60 & sleep 60 &"], start_new_session=True)
    leader.wait(10)
    try:
        deadline = time.monotonic() + 10
        while len(group_alive(leader.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(group_alive(leader.pid)) == 2
        record = dead_record("crash")
        record.created = time.time() - 5
        record.pgid = leader.pid
        reg.write(record)
        assert states(reg) == {"crash": "dead"}
        assert group_alive(leader.pid) == []
        assert reg.read("crash") is None
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(leader.pid, signal.SIGKILL)


def test_sweep_leaves_a_group_whose_leader_lives(
    reg: Registry, sleep_group: subprocess.Popen[bytes]
) -> None:
    # A live leader means the group id was reused by someone else's session: never ours.
    record = dead_record("crash")
    record.created = time.time() - 5
    record.pgid = sleep_group.pid
    reg.write(record)
    assert states(reg) == {"crash": "dead"}
    assert len(group_alive(sleep_group.pid)) == 3
    assert reg.read("crash") is None


def test_a_dead_record_without_a_proven_supervisor_signals_nothing(
    reg: Registry, sleep_group: subprocess.Popen[bytes]
) -> None:
    record = ClusterRecord(name="old", profile="p", backend="local", state="running",
                           pgid=sleep_group.pid, created=time.time() - STARTING_GRACE - 5)  # fmt: skip
    reg.write(record)
    assert states(reg) == {"old": "dead"}
    assert len(group_alive(sleep_group.pid)) == 3


def test_the_lock_wait_is_bounded(reg: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry_module, "LOCK_TIMEOUT", 0.2)
    other = Registry(reg.root)
    start = time.monotonic()
    with reg.lock(), pytest.raises(registry_module.RegistryLockError, match="locked"):  # noqa: SIM117
        with other.lock(timeout=0.2):
            pass
    assert time.monotonic() - start < 2
    with other.lock():  # released again
        pass


def test_a_file_system_without_locking_still_works(
    reg: Registry, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def flock(fd: int, op: int) -> None:
        raise OSError(errno.ENOSYS, "Function not implemented")  # Lustre without -o flock

    monkeypatch.setattr(registry_module.fcntl, "flock", flock)
    reserve(reg, ClusterRecord(name="demo", profile="local", backend="local"))
    assert states(reg) == {"demo": "starting"}
    assert "file locking is not available" in caplog.text


# ------------------------------------------------------------------------------ logs
def test_logs_are_pruned_per_name_and_in_total(reg: Registry) -> None:
    now = time.time()
    made = []
    for i in range(8):
        for name in ("a", "b-c"):
            path = reg.logs / f"{name}-2026010{i}T000000-{100 + i}.log"
            path.write_text("x")
            os.utime(path, (now - 100 + i, now - 100 + i))
            made.append(path)
    protected = reg.logs / "a-20260100T000000-100.log"  # the oldest, but of a live cluster
    deleted = reg.prune_logs(keep_per_name=3, keep_total=5, protect={str(protected)})
    left = sorted(p.name for p in reg.logs.iterdir())
    assert deleted == 16 - len(left)
    assert protected.name in left
    assert len(left) == 5
    assert sum(n.startswith("a-") for n in left) == 3  # 2 newest + the protected one
    assert sum(n.startswith("b-c-") for n in left) == 2
