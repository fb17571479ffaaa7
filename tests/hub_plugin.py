"""A real JupyterHub + configurable-http-proxy + the project's Slurm, for tests marked ``hub``.

Everything runs on 127.0.0.1 with free ports.  Real Unix users are created with ``useradd``
(homes under a private 0755 directory) and removed at the end.  The users' jobs run as those
users, each through one of the three submission prefixes (``a``: ``setpriv``, ``b``: ``sudo -E
-u``, ``c``: ``sbatch --uid`` with the hub as root), with a Python they can execute: the project
venv's interpreter lives under root's 0700 home on this image, so the servers use a venv made
from the system's ``/usr/bin/python3`` with this tree installed with its ``lab`` extra
(``scripts/hub-userenv``, also ``make hub-env``; updated here when the tree changed).

If anything cannot start, the tests fail (never skip): they are part of ``make test``.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ctrlstack import _proc

ROOT = Path(__file__).resolve().parents[1]
CHP = ROOT / "ci" / "chp" / "node_modules" / ".bin" / "configurable-http-proxy"
USER_ENV = Path(os.environ.get("CTRLSTACK_HUB_USER_ENV", "/var/tmp/ctrlstack-hub-userenv"))
SERVICE_TOKEN = secrets.token_hex(32)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ensure_user_env() -> Path:
    """The servers' Python with this tree installed (``scripts/hub-userenv``; fast when current)."""
    script = ROOT / "scripts" / "hub-userenv"
    out = _proc.run([sys.executable, str(script), "--sudo", "--env", str(USER_ENV)], timeout=1800)
    return Path(out.stdout.strip().splitlines()[-1])


def ensure_chp() -> Path:
    if not CHP.exists():
        where = str(CHP.parents[2])  # ci/chp: its package.json pins the proxy
        _proc.run(["npm", "install", "--prefix", where, "--no-audit", "--no-fund"], timeout=600)
    return CHP


@dataclass
class Hub:
    """One JupyterHub process (restartable) with its proxy, config and state in ``root``."""

    root: Path
    slurm_conf: str
    user_python: Path
    extra_config: str = ""
    spawner_config: str = ""  # replaces the StackSpawner block (the benchmark's batchspawner)
    port: int = field(default_factory=free_port)
    hub_port: int = field(default_factory=free_port)
    api_port: int = field(default_factory=free_port)
    proc: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stack_config(self) -> str:
        return f"""
c.JupyterHub.spawner_class = "ctrlstack.hub.StackSpawner"  # entry point "ctrlstack" once installed
c.JupyterHub.extra_handlers = extra_handlers()
c.Spawner.poll_interval = 2
c.Spawner.start_timeout = 60
c.Spawner.http_timeout = 30
c.StackSpawner.profiles = ["slurm-cpu"]
c.StackSpawner.submit_prefix = ["setpriv", "--reuid={{uid}}", "--regid={{gid}}", "--init-groups"]
c.StackSpawner.job_python = {str(self.user_python)!r}
# The job imports ctrlstack from the user env's install (not the hub's PYTHONPATH).
c.StackSpawner.job_env_keep = ["PATH", "LANG", "LC_ALL", "SLURM_CONF"]
c.StackSpawner.server_ip = "127.0.0.1"
c.StackSpawner.status_period = 2.0
c.StackSpawner.start_poll_period = 0.3
"""

    def write_config(self) -> Path:
        conf = self.root / "jupyterhub_config.py"
        conf.write_text(
            f"""
import sys
from ctrlstack.hub import extra_handlers
c = get_config()  # noqa
c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = {self.port}
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = {self.hub_port}
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{self.api_port}"
c.ConfigurableHTTPProxy.command = [{str(CHP)!r}]
c.ConfigurableHTTPProxy.pid_file = {str(self.root / "chp.pid")!r}
c.JupyterHub.pid_file = {str(self.root / "hub.pid")!r}
c.JupyterHub.db_url = "sqlite:///{self.root}/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = {str(self.root / "cookie_secret")!r}
c.JupyterHub.authenticator_class = "dummy"
c.DummyAuthenticator.password = "ci-password"
c.Authenticator.allow_all = True
c.JupyterHub.services = [{{"name": "ci", "api_token": {SERVICE_TOKEN!r}}}]
c.JupyterHub.load_roles = [{{"name": "ci-admin", "services": ["ci"], "scopes": [
    "admin:users", "admin:servers", "access:servers", "read:users", "list:users", "tokens",
    "admin:server_state"]}}]
c.JupyterHub.cleanup_servers = False
{self.spawner_config or self.stack_config()}
{self.extra_config}
"""
        )
        return conf

    def start(self, timeout: float = 60) -> None:
        conf = self.write_config()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p
        )
        env["SLURM_CONF"] = self.slurm_conf
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        log = open(self.root / "hub.log", "ab")  # noqa: SIM115 - kept for the process lifetime
        self.proc = _proc.spawn(
            [sys.executable, "-m", "jupyterhub", "-f", str(conf)],
            env=env,
            cwd=str(self.root),
            stdout=log,
            stderr=log,
            new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"jupyterhub exited:\n{self.log_tail()}")
            try:
                if self.api("GET", "/hub/api/")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"jupyterhub did not answer in {timeout} s:\n{self.log_tail()}")

    def stop(self) -> None:
        """TERM the hub (it stops its proxy); kill the proxy by its pid file if it is left."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None
        pid_file = self.root / "chp.pid"
        if pid_file.exists():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid_file.read_text().strip()), signal.SIGTERM)
            pid_file.unlink(missing_ok=True)

    def log_tail(self, n: int = 60) -> str:
        path = self.root / "hub.log"
        return (
            "\n".join(path.read_text(errors="replace").splitlines()[-n:]) if path.exists() else ""
        )

    def api(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: str = SERVICE_TOKEN,
        timeout: float = 90,
    ) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={"Authorization": f"token {token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                text = response.read().decode()
                status = response.status
        except urllib.error.HTTPError as exc:
            text, status = exc.read().decode(errors="replace"), exc.code
        try:
            return status, json.loads(text) if text else None
        except json.JSONDecodeError:
            return status, text

    def user(self, name: str) -> dict[str, Any]:
        status, model = self.api("GET", f"/hub/api/users/{name}")
        assert status == 200, model
        return dict(model)

    def wait_ready(self, name: str, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            server = self.user(name)["servers"].get("")
            if server and server.get("ready"):
                return dict(server)
            if not server:
                raise AssertionError(f"{name}'s server is gone:\n{self.log_tail()}")
            time.sleep(0.1)
        raise AssertionError(f"{name}'s server not ready in {timeout} s:\n{self.log_tail()}")

    def wait_gone(self, name: str, timeout: float) -> float:
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if not self.user(name)["servers"]:
                return time.monotonic() - start
            time.sleep(0.1)
        raise AssertionError(f"{name}'s server still listed after {timeout} s")

    def token_for(self, name: str) -> str:
        status, model = self.api("POST", f"/hub/api/users/{name}/tokens", {"note": "test"})
        assert status == 201, model
        return str(model["token"])

    def job_of(self, name: str) -> str:
        status, model = self.api("GET", f"/hub/api/users/{name}")
        assert status == 200
        return str(model["servers"][""]["state"]["job_id"])


@dataclass
class UnixUsers:
    base: Path
    names: list[str] = field(default_factory=list)

    def add(self, name: str) -> str:
        home = self.base / name
        _proc.run(["useradd", "-m", "-d", str(home), "-s", "/bin/bash", name], timeout=30)
        self.names.append(name)
        return name

    def remove_all(self) -> None:
        for name in self.names:
            _proc.run(["userdel", name], check=False, timeout=30)
        self.names.clear()


@pytest.fixture(scope="session")
def hub_session(slurm_session: Any) -> Iterator[Hub]:
    """A running hub with Unix users ``cs<pid>a``/``b``/``c`` (one per prefix) and ``...crash``."""
    root = Path(f"/tmp/ctrlstack-hub-test-{os.getpid()}")
    shutil.rmtree(root, ignore_errors=True)
    (root / "homes").mkdir(parents=True)
    for path in (root, root / "homes"):
        path.chmod(0o755)
    users = UnixUsers(root / "homes")
    suffix = str(os.getpid())[-5:]
    names = [users.add(f"cs{suffix}{x}") for x in ("a", "b", "crash", "c")]
    hub = Hub(
        root=root,
        slurm_conf=slurm_session.conf,
        user_python=ensure_user_env(),
        extra_config=f"""
def _per_user(spawner):
    name = spawner.user.name
    if name == {names[1]!r}:
        spawner.submit_prefix = ["sudo", "-E", "-u", "{{username}}"]
    elif name == {names[3]!r}:
        spawner.submit_prefix = []
        spawner.sbatch_uid = True
    elif name == {names[2]!r}:
        spawner.server_cmd = [spawner.job_python, "-c",
            "import sys; print('boom: this server cannot start'); sys.exit(3)"]
c.Spawner.pre_spawn_hook = _per_user
""",
    )
    hub.names = names  # type: ignore[attr-defined]
    ensure_chp()
    try:
        hub.start()
        status, body = hub.api("POST", "/hub/api/users", {"usernames": names})
        assert status == 201, body
        yield hub
    finally:
        try:
            if hub.proc is not None and hub.proc.poll() is None:
                for name in names:
                    hub.api("DELETE", f"/hub/api/users/{name}/server", timeout=30)
        finally:
            hub.stop()
            left = slurm_session.queue()
            if left:
                _proc.run(["scancel", *left], check=False)
            users.remove_all()
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def hub(hub_session: Hub, slurm: Any) -> Iterator[Hub]:
    """The session hub; after the test no server is left and (``slurm``) no job."""
    if hub_session.proc is None:
        hub_session.start()
    yield hub_session
    for name in hub_session.names:  # type: ignore[attr-defined]
        hub_session.api("DELETE", f"/hub/api/users/{name}/server", timeout=30)
