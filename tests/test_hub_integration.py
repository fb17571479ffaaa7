"""StackSpawner in a real JupyterHub, proxy and Slurm, with real Unix users (marker ``hub``)."""

from __future__ import annotations

import subprocess
import time
import urllib.error
import urllib.request

import pytest

from ctrlstack import _proc

pytestmark = [pytest.mark.hub, pytest.mark.slurm, pytest.mark.timeout(240)]


def get(url: str, token: str) -> int:
    request = urllib.request.Request(url, headers={"Authorization": f"token {token}"})
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def spawn(hub, name: str, options: dict | None = None) -> float:
    t0 = time.monotonic()
    status, body = hub.api("POST", f"/hub/api/users/{name}/server", options or {})
    assert status in (201, 202), (status, body, hub.log_tail())
    hub.wait_ready(name)
    return time.monotonic() - t0


def test_spawn_rest_reach_through_proxy_stop(hub):
    a, b = hub.names[0], hub.names[1]
    took = spawn(hub, a, {"cores": 1, "memory": "512M", "walltime": "00:10:00"})
    server = hub.wait_ready(a)
    assert server["url"] == f"/user/{a}/"
    job = hub.job_of(a)
    owner = _proc.run(["squeue", "--noheader", "--jobs", job, "--format=%u|%T"]).stdout.strip()
    assert owner == f"{a}|RUNNING"
    token_a = hub.token_for(a)
    assert get(f"{hub.url}/user/{a}/api/status", token_a) == 200
    # The server listens on loopback only, on the port the job reported.
    state = hub.user(a)["servers"][""]["state"]
    listening = subprocess.run(
        ["ss", "-Htln", f"sport = :{state['port']}"], capture_output=True, text=True
    ).stdout
    local = [line.split()[3] for line in listening.splitlines()]
    assert local == [f"127.0.0.1:{state['port']}"]
    # Another user's token does not open a's server.
    token_b = hub.token_for(b)
    assert get(f"{hub.url}/user/{a}/api/status", token_b) in (403, 404)
    status, _ = hub.api("DELETE", f"/hub/api/users/{a}/server")
    assert status in (202, 204)
    hub.wait_gone(a, 20)
    print(f"spawn-to-ready {took:.2f} s")
