"""A real JupyterLab server in a subprocess, isolated from the user's Jupyter and ctrlstack state.

Used by the handler tests, the browser tests and ``benchmarks/lab.py``.  Why a subprocess and
not an in-process app: the server extension must work as installed (auto-enabled config, the
prebuilt lab extension found on the data path), and the browser needs a server that keeps
serving while the test thread blocks on Playwright.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Self

REPO = Path(__file__).resolve().parents[1]
LABEXTENSION = REPO / "ctrlstack" / "labextension"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class LabServer:
    """``jupyter lab`` (or ``jupyter server``) with a fresh token, home and ctrlstack state dir."""

    def __init__(self, root: Path, *, app: str = "lab", notebook_dir: Path | None = None) -> None:
        self.root = root
        self.app = app
        self.port = free_port()
        self.token = secrets.token_hex(16)
        self.base = f"http://127.0.0.1:{self.port}/"
        self.notebook_dir = notebook_dir or root / "notebooks"
        self.state_dir = root / "state"
        self.log_path = root / f"{app}-server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def env(self) -> dict[str, str]:
        home = self.root / "home"
        paths = {
            "HOME": home,
            "JUPYTER_CONFIG_DIR": home / ".jupyter",
            "JUPYTER_DATA_DIR": home / "data",
            "JUPYTER_RUNTIME_DIR": home / "runtime",
            "IPYTHONDIR": home / ".ipython",
            "JUPYTER_PATH": self.root / "jupyter-path",
        }
        for p in paths.values():
            p.mkdir(parents=True, exist_ok=True)
        # The tree's own build, whether or not an installed copy exists in sys.prefix.
        labext = paths["JUPYTER_PATH"] / "labextensions" / "ctrlstack"
        labext.parent.mkdir(parents=True, exist_ok=True)
        if not labext.exists():
            labext.symlink_to(LABEXTENSION)
        # No "get news?" toast in the tests' screenshots.
        labconfig = paths["JUPYTER_CONFIG_DIR"] / "labconfig"
        labconfig.mkdir(parents=True, exist_ok=True)
        (labconfig / "page_config.json").write_text(
            json.dumps(
                {"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}}
            )
        )
        env = dict(os.environ)
        env.update({k: str(v) for k, v in paths.items()})
        env["PYTHONPATH"] = os.pathsep.join(
            [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]
        )
        env["DASK_CTRLSTACK__STATE_DIR"] = str(self.state_dir)
        env.pop("JUPYTER_TOKEN", None)
        return env

    def start(self, timeout: float = 90) -> Self:
        if not (LABEXTENSION / "package.json").exists():
            raise RuntimeError(
                f"{LABEXTENSION} is not built: run `make setup` (npm run build:prod)"
            )
        self.notebook_dir.mkdir(parents=True, exist_ok=True)
        argv = [
            sys.executable, "-m", "jupyter", self.app,
            "--no-browser", f"--port={self.port}", "--ip=127.0.0.1",
            f"--ServerApp.token={self.token}",
            f"--ServerApp.root_dir={self.notebook_dir}",
            "--ServerApp.jpserver_extensions={'ctrlstack.server': True}",
            "--ServerApp.port_retries=0",
        ]  # fmt: skip
        if self.app == "lab":
            argv += [
                "--LabApp.news_url=None",
                "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
            ]
        if os.getuid() == 0:
            argv.append("--allow-root")
        log = open(self.log_path, "wb")  # noqa: SIM115 - kept open for the server's lifetime
        self.proc = subprocess.Popen(
            argv, env=self.env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"jupyter {self.app} exited:\n{self.log_tail()}")
            with contextlib.suppress(OSError):
                status, _ = self.request("GET", "api/status")
                if status == 200:
                    return self
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"jupyter {self.app} did not start in {timeout}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self) -> None:
        proc = self.proc
        if proc is None:
            return
        self.proc = None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: str | None = "",
        headers: dict[str, str] | None = None,
        timeout: float = 120,
    ) -> tuple[int, Any]:
        """(status, parsed JSON or text); ``token=""`` uses this server's, ``None`` sends none."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        if token is not None:
            req.add_header("Authorization", f"token {token or self.token}")
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read()
        text = raw.decode(errors="replace")
        try:
            return status, json.loads(text) if text else None
        except ValueError:
            return status, text

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
