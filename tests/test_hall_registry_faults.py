"""Registry faults and bad input through the real ``ctrlstack`` command (issue 6, parts 3 and 6).

Every case runs the CLI as a subprocess with a bounded time, and checks the exit status, that
stderr is one ``error:`` line without a traceback, and that nothing was changed that should not
be: a damaged record is reported (``broken``, with path and reason) and never deleted behind the
user's back, a live cluster behind a damaged record is still found through its supervisor's pid
file and can be stopped, and a process that cannot be proven ours is never signalled.

An *unreadable* record cannot be made with ``chmod 000`` alone here: the tests run as root, and
root reads any file (CAP_DAC_OVERRIDE).  The CLI is therefore run through ``setpriv`` with
CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH dropped from its bounding set: still uid 0, still the
owner of the state dir, but a 000 file gives EACCES as it would for any user.  Directories and
FIFOs named ``x.json`` are tested as such.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
from proc_helpers import alive, group_members, wait_until

from ctrlstack.deploy.procs import boot_id, hostname
from ctrlstack.deploy.registry import BrokenRecord, ClusterRecord, Registry

CLI = [sys.executable, "-m", "ctrlstack.cli"]

#: Bound for every command that must not hang (list on a FIFO, stop on a damaged record, ...).
QUICK = 20.0
#: Bound for a launch on this loaded machine (a fresh supervisor, scheduler and worker).
LAUNCH = 120.0


def cli(
    *args: str, timeout: float = QUICK, prefix: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*prefix, *CLI, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def one_error_line(proc: subprocess.CompletedProcess[str], code: int = 2) -> str:
    """Assert exit ``code`` and exactly one ``error:`` line on stderr, no traceback; return it."""
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: "), lines
    return lines[0]


def listing(state_dir: Path, prefix: tuple[str, ...] = ()) -> list[dict[str, object]]:
    proc = cli("list", "--json", prefix=prefix)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    data: list[dict[str, object]] = json.loads(proc.stdout)
    return data


# ------------------------------------------------------------------------ a live cluster
@pytest.mark.slow
def test_truncated_record_of_live_cluster(state_dir: Path) -> None:
    launched = cli("launch", "local", "--name", "live", "-w", "1", "-t", "1", timeout=LAUNCH)
    assert launched.returncode == 0, launched.stderr
    registry = Registry(state_dir)
    record = registry.read("live")
    assert record is not None
    assert record.supervisor is not None
    assert record.pgid is not None
    sup = psutil.Process(record.supervisor.pid)
    path = state_dir / "clusters" / "live.json"
    good = path.read_bytes()
    truncated = good[: len(good) // 2]
    port = int(str(record.address).rsplit(":", 1)[1])

    # Freeze the supervisor so that it cannot repair the record while we look at it.
    sup.suspend()
    try:
        path.write_bytes(truncated)
        (entry,) = listing(state_dir)
        assert entry["state"] == "broken"
        assert entry["path"] == str(path)
        assert entry["pid"] == sup.pid  # found through the pid file
        assert "not valid JSON" in str(entry["message"])
        text = cli("list")
        assert text.returncode == 0, text.stderr
        assert "broken" in text.stdout
        assert str(path) in text.stdout
        assert path.read_bytes() == truncated  # reported, not deleted or replaced

        # The name stays taken: a relaunch is refused and changes nothing.
        line = one_error_line(
            cli("launch", "local", "--name", "live", "-w", "1", "-t", "1", timeout=LAUNCH)
        )
        assert "damaged record" in line
        assert path.read_bytes() == truncated
        # forget refuses: the cluster provably runs.
        line = one_error_line(cli("forget", "live"))
        assert "still runs" in line
        assert path.read_bytes() == truncated
    finally:
        sup.resume()

    # Within a few seconds the supervisor notices and rewrites its record.
    assert wait_until(lambda: isinstance(registry.load("live"), ClusterRecord), 15)
    (entry,) = listing(state_dir)
    assert entry["state"] == "running"
    assert entry["pid"] == sup.pid
    # forget refuses an intact live one too.
    assert "stop it" in one_error_line(cli("forget", "live"))

    # stop works on a damaged record, through the pid file.  The supervisor is frozen until
    # the stop command has read the broken record and is connecting to the scheduler.
    sup.suspend()
    try:
        path.write_bytes(truncated)
        stopper = subprocess.Popen(
            [*CLI, "stop", "live"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

        def connecting() -> bool:
            try:
                conns = psutil.Process(stopper.pid).net_connections("tcp")
            except psutil.Error:
                return False
            return any(c.raddr and c.raddr.port == port for c in conns)

        seen = wait_until(connecting, QUICK)
        assert path.read_bytes() == truncated  # the stop command saw the broken record
    finally:
        sup.resume()
    out, err = stopper.communicate(timeout=60)
    assert seen, (out, err)
    assert stopper.returncode == 0, err
    assert out.strip() == "stopped live"
    assert "Traceback" not in err
    assert wait_until(lambda: not alive(sup), 30)
    assert wait_until(lambda: not group_members(record.pgid), 30), group_members(record.pgid)
    assert not path.exists()
    assert not (state_dir / "clusters" / "live.d").exists()


# ------------------------------------------------------------------------ damaged files
def _broken_kinds() -> dict[str, tuple[Callable[[Path], None], str]]:
    def directory(p: Path) -> None:
        p.mkdir()

    def fifo(p: Path) -> None:
        os.mkfifo(p, 0o600)

    def text(data: str) -> Callable[[Path], None]:
        return lambda p: p.write_text(data)

    return {
        "directory": (directory, "it is a directory"),
        "fifo": (fifo, "not a regular file"),
        "empty": (text(""), "it is empty"),
        "not-json": (text('{"name": "x", "profile": '), "not valid JSON"),
        "binary": (lambda p: p.write_bytes(b"\xff\xfe\x00garbage"), "not valid JSON"),
        "json-list": (text("[1, 2]"), "must be a JSON object"),
        "wrong-field": (
            text(json.dumps({"name": "x", "profile": 5, "backend": "local"})),
            "field 'profile' must be a string",
        ),
        "missing-fields": (text(json.dumps({"name": "x"})), "missing"),
        "symlink": (lambda p: p.symlink_to(p.with_name("elsewhere.json")), "symbolic link"),
    }


@pytest.mark.parametrize("kind", list(_broken_kinds()))
def test_damaged_record_is_reported_never_blocks_and_can_be_forgotten(
    state_dir: Path, kind: str
) -> None:
    make, reason = _broken_kinds()[kind]
    Registry(state_dir)
    path = state_dir / "clusters" / "x.json"
    make(path)

    t0 = time.monotonic()
    (entry,) = listing(state_dir)
    assert time.monotonic() - t0 < QUICK
    assert entry["name"] == "x"
    assert entry["state"] == "broken"
    assert entry["path"] == str(path)
    assert reason in str(entry["message"]), entry
    assert "ctrlstack forget x" in str(entry["message"])
    text = cli("list")
    assert text.returncode == 0, text.stderr
    assert f"record {path} is unusable" in text.stdout
    assert os.path.lexists(path)  # listed, not deleted

    # Other commands are not blocked or crashed by it.
    assert cli("profiles").returncode == 0
    line = one_error_line(cli("stop", "x"))
    assert "forget x" in line
    line = one_error_line(cli("status", "x"))
    assert str(path) in line or "x" in line
    assert os.path.lexists(path)

    forgot = cli("forget", "x")
    assert forgot.returncode == 0, forgot.stderr
    assert forgot.stdout.strip() == "forgot x (broken)"
    assert not os.path.lexists(path)
    assert listing(state_dir) == []


def test_unreadable_record_without_root_privilege(state_dir: Path) -> None:
    """chmod 000 as the owner, seen without CAP_DAC_OVERRIDE (see the module docstring)."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:  # pragma: no cover - util-linux is on every CI image we use
        pytest.skip("setpriv (util-linux) is needed to drop CAP_DAC_OVERRIDE")
    drop = (setpriv, "--bounding-set", "-dac_override,-dac_read_search")
    Registry(state_dir)
    path = state_dir / "clusters" / "x.json"
    path.write_text(json.dumps({"name": "x", "profile": "local", "backend": "local"}))
    path.chmod(0)
    probe = subprocess.run([*drop, "cat", str(path)], capture_output=True, text=True, check=False)
    if os.geteuid() == 0:
        assert probe.returncode != 0, "dropping CAP_DAC_OVERRIDE did not take effect"

    (entry,) = listing(state_dir, prefix=drop)
    assert entry["state"] == "broken"
    assert entry["path"] == str(path)
    assert "cannot be read (Permission denied)" in str(entry["message"])
    assert path.exists()
    assert "forget x" in one_error_line(cli("stop", "x", prefix=drop))
    forgot = cli("forget", "x", prefix=drop)
    assert forgot.returncode == 0, forgot.stderr
    assert not path.exists()


# ------------------------------------------------------------------------ unprovable pids
@pytest.fixture
def bystander() -> Iterator[psutil.Process]:
    """An unrelated process of this user, in its own process group (never ours to signal)."""
    proc = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        yield psutil.Process(proc.pid)
    finally:
        proc.kill()
        proc.wait(10)


def _record_naming(pid: int, **supervisor: object) -> dict[str, object]:
    return {
        "name": "x",
        "profile": "local",
        "backend": "local",
        "state": "running",
        "created": time.time() - 5,
        "host": hostname(),
        "boot": boot_id(),
        "supervisor": {"pid": pid, "host": hostname(), "boot": boot_id(), **supervisor},
        "pgid": pid,
        "address": None,
    }


@pytest.mark.parametrize(
    "identity",
    [{}, {"started": 1000.0}, {"started": "yesterday"}],
    ids=["no-start-time", "wrong-start-time", "mistyped-start-time"],
)
def test_pid_that_cannot_be_proven_ours_is_never_signalled(
    state_dir: Path, bystander: psutil.Process, identity: dict[str, object]
) -> None:
    Registry(state_dir)
    path = state_dir / "clusters" / "x.json"
    path.write_text(json.dumps(_record_naming(bystander.pid, **identity)))

    stopped = cli("stop", "x")
    assert stopped.returncode == 0, stopped.stderr
    assert "Traceback" not in stopped.stderr
    time.sleep(0.5)
    assert alive(bystander)
    assert not path.exists()  # the dead record is cleaned up

    path.write_text(json.dumps(_record_naming(bystander.pid, **identity)))
    (entry,) = listing(state_dir)
    assert entry["state"] == "dead"
    assert not path.exists()
    time.sleep(0.5)
    assert alive(bystander)


def test_broken_record_with_unprovable_pid_file_is_not_signalled(
    state_dir: Path, bystander: psutil.Process
) -> None:
    registry = Registry(state_dir)
    path = state_dir / "clusters" / "x.json"
    path.write_text("{")
    registry.make_cluster_dir("x")
    registry.write_pid_file(
        "x",
        {
            "supervisor": {"pid": bystander.pid, "host": hostname(), "boot": boot_id()},
            "pgid": bystander.pid,
            "created": time.time() - 5,
            "address": None,
        },
    )
    (entry,) = listing(state_dir)
    assert entry["state"] == "broken"
    assert entry["pid"] is None
    assert "forget x" in one_error_line(cli("stop", "x"))
    assert isinstance(registry.load("x"), BrokenRecord)
    assert cli("forget", "x").returncode == 0
    time.sleep(0.5)
    assert alive(bystander)
    assert not path.exists()


# ------------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    "args",
    [
        ("launch", "local", "--name", "nl\n", "-w", "1", "-t", "1"),
        ("stop", "nl\n"),
        ("forget", "nl\n"),
        ("status", "nl\n"),
        ("logs", "nl\n"),
    ],
    ids=["launch", "stop", "forget", "status", "logs"],
)
def test_name_with_trailing_newline_is_refused(state_dir: Path, args: tuple[str, ...]) -> None:
    line = one_error_line(cli(*args, timeout=LAUNCH))
    assert "not allowed" in line
    assert "'nl\\n'" in line
    for sub in ("clusters", "logs"):
        d = state_dir / sub
        assert not d.exists() or [p.name for p in d.iterdir() if p.name != ".lock"] == []


def test_huge_worker_count_is_refused(state_dir: Path) -> None:
    proc = cli("scale", "x", "99999999999999999999")
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "OverflowError" not in proc.stderr
    # Click's usage errors add a usage hint; the error itself is one line.
    errors = [line for line in proc.stderr.splitlines() if line.lower().startswith("error")]
    assert len(errors) == 1, proc.stderr
    assert "99999999999999999999" in errors[0]
    assert "0<=x<=100000" in errors[0]


def test_malformed_yaml_in_dask_config_is_one_line(state_dir: Path, tmp_path: Path) -> None:
    conf = tmp_path / "dask"
    conf.mkdir()
    (conf / "broken.yaml").write_text("ctrlstack:\n  profiles: [1,\n")
    env = dict(os.environ, DASK_CONFIG=str(conf))
    proc = subprocess.run(
        [*CLI, "list"], capture_output=True, text=True, timeout=QUICK, env=env, check=False
    )
    line = one_error_line(proc)
    assert "broken.yaml" in line
