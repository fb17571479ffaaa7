"""``ctrlstack._proc``: argv-only execution with errors that say what failed and why."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from ctrlstack import _proc
from ctrlstack._proc import CommandError


def test_shell_string_is_refused() -> None:
    with pytest.raises(TypeError, match="shell string"):
        _proc.run("echo hi; rm -rf /")
    with pytest.raises(TypeError, match="shell string"):
        _proc.spawn("sleep 1")
    with pytest.raises(TypeError, match="non-empty"):
        _proc.run([])


def test_non_string_argv_item_is_refused() -> None:
    with pytest.raises(TypeError, match="strings"):
        _proc.run(["echo", 3])  # type: ignore[list-item]


def test_output_is_captured() -> None:
    result = _proc.run(
        [sys.executable, "-c", "import sys; print('out'); print('err', file=sys.stderr)"]
    )
    assert result.returncode == 0
    assert result.stdout == "out\n"
    assert result.stderr == "err\n"
    assert result.argv[0] == sys.executable


def test_path_objects_are_accepted(tmp_path: Path) -> None:
    result = _proc.run([Path(sys.executable), "-c", "print(1)"])  # type: ignore[list-item]
    assert result.stdout == "1\n"


def test_missing_program_names_the_cause() -> None:
    with pytest.raises(CommandError) as info:
        _proc.run(["/nonexistent/ctrlstack-no-such-tool", "--flag"])
    err = info.value
    assert err.returncode is None
    assert not err.timed_out
    assert "could not be started" in str(err)
    assert "No such file or directory" in str(err)
    assert "/nonexistent/ctrlstack-no-such-tool" in str(err)
    assert isinstance(err.__cause__, FileNotFoundError)


def test_program_that_is_not_executable_is_a_command_error(tmp_path: Path) -> None:
    script = tmp_path / "tool.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o644)
    with pytest.raises(CommandError, match=r"could not be started.*Permission denied"):
        _proc.run([str(script)])
    with pytest.raises(CommandError, match="Permission denied"):
        _proc.spawn([str(script)])


def test_nonzero_exit_carries_returncode_and_stderr() -> None:
    code = "import sys; print('partial'); print('disk full', file=sys.stderr); sys.exit(3)"
    with pytest.raises(CommandError) as info:
        _proc.run([sys.executable, "-c", code])
    err = info.value
    assert err.returncode == 3
    assert err.stderr == "disk full\n"
    assert err.stdout == "partial\n"
    assert "exited with 3: disk full" in str(err)


def test_nonzero_exit_without_check_returns_result() -> None:
    result = _proc.run([sys.executable, "-c", "raise SystemExit(4)"], check=False)
    assert result.returncode == 4


def test_timeout_kills_and_reports() -> None:
    code = "import sys, time; print('started', flush=True); time.sleep(30)"
    start = time.monotonic()
    with pytest.raises(CommandError) as info:
        _proc.run([sys.executable, "-c", code], timeout=0.5)
    assert time.monotonic() - start < 10
    err = info.value
    assert err.timed_out
    assert err.returncode is None
    assert "timed out after 0.5 s" in str(err)
    assert "could not be started" not in str(err)
    assert err.stdout == "started\n"  # partial output is kept, as text
    assert isinstance(err.__cause__, subprocess.TimeoutExpired)


def test_env_and_input_are_passed() -> None:
    result = _proc.run(
        [sys.executable, "-c", "import os, sys; print(os.environ['X'] + sys.stdin.read())"],
        env={"X": "a", "PATH": "/usr/bin:/bin"},
        input="b",
    )
    assert result.stdout == "ab\n"


def test_spawn_new_session_and_stdin() -> None:
    proc = _proc.spawn(
        [sys.executable, "-c", "import os, sys; print(os.getsid(0), repr(sys.stdin.read()))"],
        stdout=subprocess.PIPE,
        new_session=True,
    )
    out, _ = proc.communicate(timeout=30)
    sid, data = out.decode().split()
    assert int(sid) == proc.pid  # a session leader of its own
    assert data == "''"  # stdin is closed by default: a daemon never reads the terminal


# ------------------------------------------------------------------- parent_death_signal
PARENT = """
import signal, sys, time
from ctrlstack import _proc
sig = None if sys.argv[1] == "none" else signal.SIGTERM
child = _proc.spawn([sys.executable, "-c", "import time; time.sleep(60)"], parent_death_signal=sig)
print(child.pid, flush=True)
time.sleep(60)
"""


def _gone(pid: int) -> bool:
    """Exited (a zombie counts: whoever inherited it may not reap it at once)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _orphan_after_parent_killed(signal_name: str) -> tuple[int, bool]:
    """Start PARENT, SIGKILL it once its child runs; (child pid, child gone within 3 s)."""
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, signal_name], stdout=subprocess.PIPE, text=True
    )
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert not _gone(child)
    finally:
        parent.kill()
        parent.wait(10)
    deadline = time.monotonic() + 3
    while not _gone(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    return child, _gone(child)


def test_parent_death_signal_stops_the_child_when_the_parent_is_killed() -> None:
    child, gone = _orphan_after_parent_killed("SIGTERM")
    assert gone, f"child {child} survived its SIGKILLed parent"


def test_without_parent_death_signal_the_child_is_orphaned() -> None:
    """The control case: what the option fixes really happens without it."""
    child, gone = _orphan_after_parent_killed("none")
    try:
        assert not gone
    finally:
        with contextlib.suppress(psutil.NoSuchProcess):
            psutil.Process(child).kill()


RACE = """
import os, signal, sys
from ctrlstack import _proc
if sys.argv[1] == "ignored":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
hook = _proc._parent_death_hook(signal.SIGTERM)
os.getppid = lambda: 1  # as if the parent had died between fork and prctl
hook()
print("still running")
"""


@pytest.mark.parametrize(("mode", "returncode"), [("default", -15), ("ignored", 1)])
def test_child_whose_parent_died_before_prctl_does_not_run_on(mode: str, returncode: int) -> None:
    result = subprocess.run(
        [sys.executable, "-c", RACE, mode], check=False, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == returncode, result.stderr
    assert "still running" not in result.stdout


def test_parent_death_signal_is_linux_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "darwin")
    with pytest.raises(NotImplementedError, match=r"needs Linux.*darwin"):
        _proc.spawn([sys.executable, "-c", "pass"], parent_death_signal=signal.SIGTERM)


def test_parent_death_signal_must_be_a_signal() -> None:
    with pytest.raises(ValueError, match="999"):
        _proc.spawn([sys.executable, "-c", "pass"], parent_death_signal=999)


def test_parent_death_signal_leaves_normal_runs_alone() -> None:
    proc = _proc.spawn(
        [sys.executable, "-c", "print('hi')"],
        stdout=subprocess.PIPE,
        parent_death_signal=signal.SIGTERM,
    )
    out, _ = proc.communicate(timeout=30)
    assert (proc.returncode, out) == (0, b"hi\n")
    with pytest.raises(CommandError, match="could not be started"):
        _proc.spawn(["/nonexistent/ctrlstack-tool"], parent_death_signal=signal.SIGTERM)
