"""Another Unix user cannot use, control or read a running ctrlstack cluster (issue 6, part 4).

A real cluster (supervisor, TLS scheduler, a worker process) is launched by this test process
(root, here and in CI); then a *real second user* — uid/gid 65534 (``nobody``), no
supplementary groups, switched to by ``subprocess``'s ``user=``/``group=`` — tries what an
attacker on a shared login node would: a plain ``distributed.Client`` on the ``tcp://`` and the
``tls://`` address, with and without its own ``Security.temporary()``; the control handlers
through ``distributed.core.rpc``; reading the credential files.  Each attempt must fail clearly
(a TLS/auth error, permission denied), no code of that user may run on the cluster, and the
cluster must still be healthy afterwards.  The owner without the credentials (a plain client) is
refused too; the owner through ``ctrlstack.connect`` is not.

The state dir lives in a world-traversable temp dir, so what keeps the other user out is
ctrlstack's own 0700/0600 modes, layer by layer, not pytest's private tmp dir.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import site
import stat
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dask
import pytest

import ctrlstack
from ctrlstack.deploy import lifecycle
from ctrlstack.deploy.registry import Registry
from ctrlstack.deploy.security import CredentialsError

pytestmark = pytest.mark.slow

OTHER_UID = OTHER_GID = 65534
NAME = "guarded"
REPO = Path(ctrlstack.__file__).resolve().parents[1]

if os.geteuid() != 0:  # pragma: no cover - CI and the dev machine run as root
    pytest.skip(
        "switching to a second Unix user (uid 65534) needs root; run as root",
        allow_module_level=True,
    )


def _python_path() -> str:
    """ctrlstack's source tree and this environment's site-packages, for the other user."""
    paths = [str(REPO), *site.getsitepackages()]
    return os.pathsep.join(p for p in paths if os.path.isdir(p))


def _run_as_other(
    argv: list[str], home: Path, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    env = {
        "HOME": str(home),
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": _python_path(),
        "DASK_CONFIG": str(home / ".config" / "dask"),
    }
    return subprocess.run(
        argv,
        env=env,
        cwd=home,
        user=OTHER_UID,
        group=OTHER_GID,
        extra_groups=[],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _other_python(home: Path) -> str:
    """An interpreter the other user can execute that imports distributed and ctrlstack.

    The dev venv's interpreter may live under /root (0700); a system Python of the same
    minor version can import the same site-packages (same ABI).
    """
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    candidates = [
        sys.executable,
        os.path.realpath(sys.executable),
        f"/usr/bin/python{version}",
        f"/usr/local/bin/python{version}",
    ]
    tried = []
    for exe in dict.fromkeys(candidates):
        if not os.path.exists(exe):
            continue
        try:
            proc = _run_as_other(
                [exe, "-c", "import os, distributed, ctrlstack; print(os.getuid())"], home
            )
        except OSError as exc:  # not executable for that user (e.g. under /root)
            tried.append(f"{exe}: {exc.strerror}")
            continue
        if proc.returncode == 0 and proc.stdout.strip() == str(OTHER_UID):
            return exe
        tried.append(f"{exe}: {proc.stderr.strip().splitlines()[-1:] or proc.returncode}")
    pytest.fail(
        f"no Python {version} that uid {OTHER_UID} can run with distributed importable: {tried}"
    )


@dataclass
class Guarded:
    base: Path
    state: Path
    home: Path
    python: str
    address: str
    marker: Path

    @property
    def tls_dir(self) -> Path:
        return self.state / "clusters" / f"{NAME}.d" / "tls"

    def other(self, code: str, *args: str) -> subprocess.CompletedProcess[str]:
        return _run_as_other([self.python, "-c", textwrap.dedent(code), *args], self.home)


def _healthy(registry: Registry) -> None:
    """The cluster is running, its worker connected, and it computes for its owner."""
    (status,) = lifecycle.sweep(registry)
    assert status.name == NAME
    assert status.state == "running", status
    live = ctrlstack.get(NAME).status()
    assert live.connected == 1, live
    client = ctrlstack.connect(NAME)
    try:
        assert client.submit(os.getuid, pure=False).result(timeout=30) == os.getuid()
    finally:
        client.close()


@pytest.fixture(scope="module")
def guarded() -> Iterator[Guarded]:
    base = Path(tempfile.mkdtemp(prefix="ctrlstack-sec-"))
    base.chmod(0o755)  # traversable by everyone: only ctrlstack's own modes protect the state
    state = base / "state"
    home = base / "home"
    home.mkdir()
    os.chown(home, OTHER_UID, OTHER_GID)
    marker_dir = base / "drop"
    marker_dir.mkdir()
    marker_dir.chmod(0o1777)  # where the other user's task would leave proof that it ran
    old = os.environ.get("DASK_CTRLSTACK__STATE_DIR")
    os.environ["DASK_CTRLSTACK__STATE_DIR"] = str(state)
    registry = None
    try:
        with dask.config.set({"ctrlstack.state-dir": str(state)}):
            python = _other_python(home)
            handle = ctrlstack.launch("local", name=NAME, workers=1, threads=1)
            registry = Registry(state)
            try:
                handle.wait_for_workers(1, timeout=60)
                yield Guarded(base, state, home, python, handle.address, marker_dir / "ran")
                _healthy(registry)
            finally:
                handle.stop()
                assert lifecycle.sweep(registry) == []
    finally:
        if old is None:
            os.environ.pop("DASK_CTRLSTACK__STATE_DIR", None)
        else:
            os.environ["DASK_CTRLSTACK__STATE_DIR"] = old
        shutil.rmtree(base, ignore_errors=True)


CLIENT_ATTEMPT = """
import json, os, sys
from distributed import Client
from distributed.security import Security
address, own_security, marker = sys.argv[1], sys.argv[2] == "own", sys.argv[3]

def pwn():
    with open(marker, "w") as fh:
        fh.write(str(os.getuid()))
    return os.getuid()

kwargs = {"security": Security.temporary()} if own_security else {}
try:
    client = Client(address, timeout=10, **kwargs)
except BaseException as exc:
    print(json.dumps({"refused": type(exc).__name__, "message": str(exc)}))
else:
    uid = client.submit(pwn, pure=False).result(timeout=10)
    print(json.dumps({"connected": True, "uid": uid}))
"""

#: What a refusal looks like from distributed, per attempt: all name TLS, encryption or the
#: peer resetting the (TLS-only) connection.
EXPECTED = {
    ("tcp", "plain"): r"reset by peer|closed|handshake",
    ("tcp", "own"): r"encryption required",
    ("tls", "plain"): r"TLS expects a `ssl_context`",
    ("tls", "own"): r"TLS certificate does not match|CERTIFICATE_VERIFY_FAILED",
}


@pytest.mark.parametrize(("scheme", "security"), list(EXPECTED))
def test_other_user_cannot_submit_work(guarded: Guarded, scheme: str, security: str) -> None:
    assert guarded.address.startswith("tls://127.0.0.1:")
    address = f"{scheme}://{guarded.address.split('://', 1)[1]}"
    proc = guarded.other(CLIENT_ATTEMPT, address, security, str(guarded.marker))
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "connected" not in result, f"uid {OTHER_UID} ran code on the cluster: {result}"
    assert result["message"], result
    assert re.search(EXPECTED[scheme, security], result["message"]), result
    assert not guarded.marker.exists()


RPC_ATTEMPT = """
import asyncio, json, sys
from distributed.core import rpc
from distributed.security import Security
address, op, own_security = sys.argv[1], sys.argv[2], sys.argv[3] == "own"

async def main():
    args = Security.temporary().get_connection_args("client") if own_security else {}
    r = rpc(address, timeout=10, connection_args=args)
    try:
        return await asyncio.wait_for(getattr(r, op)(), 20)
    finally:
        await r.close_rpc()

try:
    answer = asyncio.run(main())
except BaseException as exc:
    chain, e = [], exc
    while e is not None and len(chain) < 5:  # rpc wraps the TLS error: report its causes too
        chain.append(f"{type(e).__name__}: {e}")
        e = e.__cause__ or e.__context__
    print(json.dumps({"refused": type(exc).__name__, "message": " <- ".join(chain)}))
else:
    print(json.dumps({"answered": repr(answer)}))
"""


@pytest.mark.parametrize("op", ["ctrlstack_status", "ctrlstack_stop"])
@pytest.mark.parametrize(("scheme", "security"), [("tls", "own"), ("tcp", "plain")])
def test_other_user_cannot_call_control_handlers(
    guarded: Guarded, op: str, scheme: str, security: str
) -> None:
    address = f"{scheme}://{guarded.address.split('://', 1)[1]}"
    proc = guarded.other(RPC_ATTEMPT, address, op, security)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "answered" not in result, f"uid {OTHER_UID} called {op}: {result}"
    assert re.search(EXPECTED[scheme, security], result["message"]), result
    # ctrlstack_stop did nothing: the supervisor still answers its owner.
    assert ctrlstack.get(NAME).status().state == "running"


READ_ATTEMPT = """
import json, os, sys
out = {}
for path in sys.argv[1:]:
    try:
        if os.path.isdir(path):
            os.listdir(path)
        else:
            with open(path, "rb") as fh:
                fh.read(1)
        out[path] = "read"
    except OSError as exc:
        out[path] = exc.strerror
print(json.dumps(out))
"""


def _private_paths(g: Guarded) -> list[Path]:
    cdir = g.state / "clusters"
    return [
        g.tls_dir / "cluster.key",
        g.tls_dir / "cluster.pem",
        cdir / f"{NAME}.json",
        cdir / f"{NAME}.d" / "supervisor.json",
    ]


def test_other_user_cannot_read_credentials(guarded: Guarded) -> None:
    paths = _private_paths(guarded)
    dirs = [guarded.state, guarded.state / "clusters", guarded.tls_dir.parent, guarded.tls_dir]
    # The owner's side: every layer private.
    for d in dirs:
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, d
    for p in paths:
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
        assert p.stat().st_uid == os.getuid()
    targets = [str(p) for p in paths] + [str(d) for d in dirs]
    proc = guarded.other(READ_ATTEMPT, *targets)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {t: "Permission denied" for t in targets}

    # Each layer alone keeps the key out: open the directories above it to search (o+x) one by
    # one; until the last one the directory denies, and at the end the file's own 0600 does.
    key = str(guarded.tls_dir / "cluster.key")
    try:
        for d in dirs:
            d.chmod(0o711)
            proc = guarded.other(READ_ATTEMPT, key)
            assert json.loads(proc.stdout) == {key: "Permission denied"}, d
    finally:
        for d in dirs:
            d.chmod(0o700)


def test_owner_without_credentials_cannot_connect(guarded: Guarded, tmp_path: Path) -> None:
    """The owner's own plain Client (no TLS settings) is refused like anyone else's."""
    script = tmp_path / "attempt.py"
    script.write_text(textwrap.dedent(CLIENT_ATTEMPT))
    env = {k: v for k, v in os.environ.items() if not k.startswith("DASK_")}
    for scheme in ("tls", "tcp"):
        address = f"{scheme}://{guarded.address.split('://', 1)[1]}"
        proc = subprocess.run(
            [sys.executable, str(script), address, "plain", str(guarded.marker)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        assert "connected" not in result, result
        assert re.search(EXPECTED[scheme, "plain"], result["message"]), result
    assert not guarded.marker.exists()


def test_owner_with_credentials_connects_and_cluster_is_healthy(guarded: Guarded) -> None:
    _healthy(Registry(guarded.state))
    # Credentials.load refuses a key that others could read (and says so).
    key = guarded.tls_dir / "cluster.key"
    key.chmod(0o644)
    try:
        with pytest.raises(CredentialsError, match="readable by others"):
            ctrlstack.connect(NAME)
    finally:
        key.chmod(0o600)
