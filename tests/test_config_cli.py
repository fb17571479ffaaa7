"""Bad Dask config files through the ``ctrlstack`` command: one ``error:`` line, exit 2.

Run as real subprocesses (``python -m ctrlstack.cli``), because the malformed-file case fails at
``import dask``, which an in-process CliRunner has long done already.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BAD_FILES = {
    "malformed": ("ctrlstack:\n  profiles: {a: [1, 2}\n", "is not valid YAML"),
    "list-section": ("ctrlstack: [1, 2]\n", "field 'ctrlstack' = [1, 2] is not allowed"),
    "profiles-5": ("ctrlstack:\n  profiles: 5\n", "field 'ctrlstack.profiles' = 5 is not allowed"),
    "default-7": ("ctrlstack:\n  default-profile: 7\n", "'ctrlstack.default-profile' = 7"),
    "timeout-x": ("ctrlstack:\n  launch-timeout: x\n", "'ctrlstack.launch-timeout' = 'x'"),
}
COMMANDS = [["profiles"], ["launch", "--name", "never", "-w", "1", "-t", "1"], ["list"]]


def ctrlstack(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DASK_")}
    env.update(DASK_CONFIG=str(tmp_path / "dask"), XDG_STATE_HOME=str(tmp_path / "state"))
    return subprocess.run(
        [sys.executable, "-m", "ctrlstack.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=120,
    )


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_config_file_is_one_error_line_and_exit_2(
    tmp_path: Path, case: str, command: list[str]
) -> None:
    text, fragment = BAD_FILES[case]
    bad = tmp_path / "dask" / "bad.yaml"
    bad.parent.mkdir()
    bad.write_text(text)
    result = ctrlstack(tmp_path, *command)
    assert "Traceback" not in result.stderr
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert str(bad) in lines[0]
    assert fragment in lines[0]
    assert not (tmp_path / "state" / "ctrlstack" / "clusters" / "never.json").exists()


def test_malformed_file_is_one_line_and_config_free_commands_still_work(tmp_path: Path) -> None:
    """Commands that read config stop with one line; ``topology`` needs no config and works."""
    bad = tmp_path / "dask" / "bad.yml"
    bad.parent.mkdir()
    bad.write_text("a: b: c\n")
    assert ctrlstack(tmp_path, "topology").returncode == 0
    result = ctrlstack(tmp_path, "profiles")
    assert (result.returncode, "Traceback" in result.stderr) == (2, False)
    expected = (
        f"error: Dask config file {bad} is not valid YAML: mapping values are not allowed here "
        f"at line 1, column 5; fix it, or move it out of {bad.parent} (Dask reads every *.yaml, "
        "*.yml and *.json file there)"
    )
    assert result.stderr.strip().splitlines() == [expected]
    bad.rename(bad.with_suffix(".off"))
    assert ctrlstack(tmp_path, "profiles").returncode == 0
