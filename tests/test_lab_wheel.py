"""A wheel built from the repo carries the prebuilt lab extension and enables the server extension.

Installed into a fresh prefix (no node on PATH for the install), ``jupyter labextension list``
must list ctrlstack as enabled and OK from that prefix, and ``jupyter server extension list``
the server extension — what a user sees after ``pip install ctrlstack[lab]``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.labserver import REPO

pytestmark = pytest.mark.slow


def _run(argv: list[str], env: dict[str, str] | None = None, cwd: Path = REPO) -> str:
    result = subprocess.run(
        argv, check=False, capture_output=True, text=True, timeout=600, env=env, cwd=cwd
    )
    assert result.returncode == 0, f"{argv} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def test_wheel_installs_enabled_extensions(tmp_path: Path) -> None:
    if not (REPO / "ctrlstack" / "labextension" / "package.json").exists():
        pytest.fail("the lab extension is not built: run `make setup`")
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(REPO)])
    (wheel,) = tmp_path.glob("ctrlstack-*.whl")
    # A fresh venv whose only ctrlstack is the wheel; the lab extra's packages come from this
    # test's environment through a .pth file, so the test needs no download.
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = str(venv / "bin" / "python")
    purelib = _run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]).strip()
    deps = sysconfig.get_path("purelib")
    (Path(purelib) / "dev-deps.pth").write_text(deps + "\n")
    no_node = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    no_node["PATH"] = ":".join(
        p for p in no_node["PATH"].split(":") if not (Path(p) / "node").exists()
    )
    _run(
        [sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", str(wheel)],
        no_node,
    )

    home = tmp_path / "home"
    home.mkdir()
    env = {
        **no_node,
        "JUPYTER_CONFIG_DIR": str(home / "config"),
        "JUPYTER_DATA_DIR": str(home / "data"),
        "HOME": str(home),
    }
    check = _run(
        [python, "-c", "import ctrlstack, ctrlstack.server; print(ctrlstack.__file__)"],
        env,
        home,
    )
    assert check.strip().startswith(purelib)

    labext = _run([python, "-m", "jupyterlab.labextensions", "list"], env, home)
    section = labext.split(str(venv / "share" / "jupyter" / "labextensions"), 1)
    assert len(section) == 2, labext
    line = next(ln for ln in section[1].splitlines() if "ctrlstack" in ln)
    assert "enabled" in line
    assert "OK" in line

    server = _run([python, "-m", "jupyter_server.extension.serverextension", "list"], env, home)
    assert f"Config dir: {venv}/etc/jupyter" in server
    lines = server.splitlines()
    enabled = [i for i, ln in enumerate(lines) if "ctrlstack.server" in ln and "enabled" in ln]
    assert enabled, server
    assert any("OK" in ln for ln in lines[enabled[0] : enabled[0] + 3]), server
