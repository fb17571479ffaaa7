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
        ["ss", "-Htln", f"sport = :{state['port']}"], capture_output=True, text=True, check=True
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


def test_bad_form_values_are_400_naming_the_field(hub):
    a = hub.names[0]
    for options, field in [
        ({"cores": 999}, "cores"),
        ({"walltime": "soon"}, "walltime"),
        ({"memory": "lots"}, "memory"),
        ({"profile": "nope"}, "profile"),
        ({"rm -rf": 1}, "rm -rf"),
    ]:
        status, body = hub.api("POST", f"/hub/api/users/{a}/server", options)
        assert status == 400, (options, body)
        assert body["message"].startswith(f"{field}:"), body
    assert not hub.user(a)["servers"]


def test_form_spawn_and_form_error(hub):
    """Log in as b, get the generated form, submit a bad value (readable error), then a good one."""
    import http.cookiejar
    import re
    import urllib.parse

    b = hub.names[1]
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    page = opener.open(f"{hub.url}/hub/login", timeout=20).read().decode()
    xsrf = re.search(r'name="_xsrf" value="([^"]+)"', page).group(1)
    login = urllib.parse.urlencode({"username": b, "password": "ci-password", "_xsrf": xsrf})
    opener.open(f"{hub.url}/hub/login", data=login.encode(), timeout=20).read()
    form = opener.open(f"{hub.url}/hub/spawn/{b}", timeout=20).read().decode()
    for name in ("profile", "partition", "cores", "memory", "gpus", "walltime", "kernel"):
        assert f'name="{name}"' in form
    # The spawn form carries no _xsrf field of its own: the cookie's value is the token.
    xsrf = next(c.value for c in jar if c.name == "_xsrf")
    bad = {"_xsrf": xsrf, "profile": "slurm-cpu", "cores": "999", "memory": "512M"}
    with pytest.raises(urllib.error.HTTPError) as info:
        opener.open(
            f"{hub.url}/hub/spawn/{b}", data=urllib.parse.urlencode(bad).encode(), timeout=30
        )
    assert info.value.code == 400
    text = info.value.read().decode()
    shown = re.findall(r"spawn-error-msg[^>]*>([^<]*)<", text)
    assert shown, text[-3000:]
    assert "cores: 999 is outside the allowed range" in shown[0]
    assert 'has-error"><label for="cs-cores"' in text  # the field is marked on the form
    good = {**bad, "cores": "1", "walltime": "00:10:00"}
    opener.open(
        f"{hub.url}/hub/spawn/{b}", data=urllib.parse.urlencode(good).encode(), timeout=60
    ).read()
    server = hub.wait_ready(b)
    assert server["user_options"]["cores"] == "1"
    assert get(f"{hub.url}/user/{b}/api/status", hub.token_for(b)) == 200


def test_sbatch_rejection_is_a_readable_failure_within_2s(hub):
    a = hub.names[0]
    t0 = time.monotonic()
    status, body = hub.api("POST", f"/hub/api/users/{a}/server", {"partition": "nosuchpart"})
    took = time.monotonic() - t0
    assert status == 500, body
    assert "Slurm refused" in body["message"]
    assert "partition" in body["message"].lower()
    assert took < 2.0, took


def test_job_dying_before_the_server_is_reported_at_once_with_its_log(hub):
    crash = hub.names[2]
    t0 = time.monotonic()
    status, body = hub.api("POST", f"/hub/api/users/{crash}/server", {})
    took = time.monotonic() - t0
    assert status == 500, body
    assert "before the server was up" in body["message"]
    assert "boom: this server cannot start" in body["message"]
    assert took < 15, took  # start_timeout is 60 s


def test_scancel_is_noticed_within_one_poll(hub):
    a = hub.names[0]
    spawn(hub, a, {"walltime": "00:10:00"})
    job = hub.job_of(a)
    _proc.run(["scancel", job])
    # Hub poll_interval 2 s + status period 2 s (+ jitter) + the hub's own bookkeeping.
    took = hub.wait_gone(a, 8)
    assert took < 6, took


def test_hub_restart_reattaches_to_the_running_server(hub):
    a = hub.names[0]
    spawn(hub, a, {"walltime": "00:10:00"})
    job = hub.job_of(a)
    token = hub.token_for(a)
    hub.stop()
    assert _proc.run(["squeue", "--noheader", "-j", job, "-o", "%T"]).stdout.strip() == "RUNNING"
    hub.start()
    server = hub.wait_ready(a, 20)
    assert server["state"]["job_id"] == job
    assert get(f"{hub.url}/user/{a}/api/status", token) == 200
