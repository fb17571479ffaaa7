"""``ctrlstack._proc``: argv-only execution with errors that say what failed and why."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

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
