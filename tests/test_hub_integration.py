"""StackSpawner in a real JupyterHub, proxy and Slurm, with real Unix users (marker ``hub``)."""

from __future__ import annotations

import json
import pwd
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from ctrlstack import _proc

pytestmark = [pytest.mark.hub, pytest.mark.slurm, pytest.mark.timeout(240)]


def call(url: str, token: str, method: str = "GET", body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url,
        data=data,
        method=method,
        headers={"Authorization": f"token {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            status, text = int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        status, text = int(exc.code), exc.read().decode(errors="replace")
    try:
        return status, json.loads(text) if text else None
    except json.JSONDecodeError:
        return status, text


def get(url: str, token: str) -> int:
    return call(url, token)[0]


def spawn(hub, name: str, options: dict | None = None) -> float:
    t0 = time.monotonic()
    status, body = hub.api("POST", f"/hub/api/users/{name}/server", options or {})
    assert status in (201, 202), (status, body, hub.log_tail())
    hub.wait_ready(name)
    return time.monotonic() - t0


def squeue(job: str) -> str:
    return _proc.run(["squeue", "--noheader", "--jobs", job, "--format=%u|%T"]).stdout.strip()


def uid_of(pid: int) -> int:
    return Path(f"/proc/{pid}").stat().st_uid


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout} s: {what}")


def test_spawn_reach_launch_a_cluster_as_the_user_stop(hub):
    """a (setpriv) and b (sudo -u) spawn; a launches a local cluster from its server's REST."""
    a, b = hub.names[0], hub.names[1]
    opts = {"cores": 1, "memory": "1G", "walltime": "00:20:00"}
    for name in (a, b):  # both submitted before either is waited for
        status, body = hub.api("POST", f"/hub/api/users/{name}/server", opts)
        assert status in (201, 202), (status, body, hub.log_tail())
    server = hub.wait_ready(a)
    hub.wait_ready(b)
    assert server["url"] == f"/user/{a}/"
    job = hub.job_of(a)
    assert squeue(job) == f"{a}|RUNNING"
    assert squeue(hub.job_of(b)) == f"{b}|RUNNING"  # sudo -E -u submitted as b
    token_a, token_b = hub.token_for(a), hub.token_for(b)
    assert get(f"{hub.url}/user/{a}/api/status", token_a) == 200
    # The server listens on loopback only, on the port the job reported.
    state = hub.user(a)["servers"][""]["state"]
    listening = subprocess.run(
        ["ss", "-Htln", f"sport = :{state['port']}"], capture_output=True, text=True, check=True
    ).stdout
    assert [line.split()[3] for line in listening.splitlines()] == [f"127.0.0.1:{state['port']}"]
    # The walltime end, as Slurm has it, is in the server's own REST (what the sidebar shows).
    api_a, api_b = f"{hub.url}/user/{a}/ctrlstack/api", f"{hub.url}/user/{b}/ctrlstack/api"
    status, session = call(f"{api_a}/session", token_a)
    assert status == 200, session
    end = _proc.run(["squeue", "--noheader", "-j", job, "-O", "EndTime:30"]).stdout.strip()
    slurm_end = time.mktime(time.strptime(end, "%Y-%m-%dT%H:%M:%S"))
    assert session["job_id"] == job
    assert abs(session["end_time"] - slurm_end) <= 3, (session, end)
    assert 1000 < session["left_seconds"] <= 1200
    assert session["warning"] is False
    # A local cluster launched through a's server runs as a, registered under a's home.
    pw = pwd.getpwnam(a)
    launch = {"profile": "local", "name": "hubcl", "overrides": {"workers": 1, "threads": 1}}
    status, cluster = call(f"{api_a}/clusters", token_a, "POST", launch)
    assert status == 201, (status, cluster)
    assert cluster["state"] == "running", cluster
    status, rows = call(f"{api_a}/clusters", token_a)
    assert status == 200, rows
    assert [r["name"] for r in rows] == ["hubcl"], rows
    records = list(Path(pw.pw_dir, ".local", "state", "ctrlstack").rglob("hubcl*.json"))
    assert records, list(Path(pw.pw_dir).rglob("*"))
    assert all(r.stat().st_uid == pw.pw_uid for r in records)
    record = json.loads(records[0].read_text())
    assert record["owner"] == a
    supervisor = record["supervisor"]["pid"]
    assert uid_of(supervisor) == pw.pw_uid
    # b can neither reach a's server and clusters nor see them from its own server.
    assert get(f"{hub.url}/user/{a}/api/status", token_b) in (403, 404)
    assert call(f"{api_a}/clusters", token_b)[0] in (403, 404)
    assert call(f"{api_a}/clusters/hubcl", token_b, "DELETE")[0] in (403, 404)
    status, rows_b = call(f"{api_b}/clusters", token_b)
    assert status == 200, rows_b
    assert rows_b == [], rows_b
    assert uid_of(supervisor) == pw.pw_uid  # still running after b's attempts
    status, _ = call(f"{api_a}/clusters/hubcl", token_a, "DELETE")
    assert status == 204
    wait_until(lambda: not Path(f"/proc/{supervisor}").exists(), 30, "supervisor exits")
    assert call(f"{api_a}/clusters", token_a)[1] == []
    for name in (a, b):
        status, _ = hub.api("DELETE", f"/hub/api/users/{name}/server")
        assert status in (202, 204)
        hub.wait_gone(name, 20)
    queue = ["squeue", "--noheader", "-o", "%i"]
    wait_until(lambda: _proc.run(queue).stdout.strip() == "", 20, "no job left")


def test_sbatch_uid_submission_and_walltime_warning(hub):
    """c's job goes through ``sbatch --uid`` (hub as root); a walltime inside the warning window
    is flagged by the server's REST and warned in the hub log."""
    c = hub.names[3]
    spawn(hub, c, {"cores": 1, "memory": "512M", "walltime": "00:05:00"})
    job = hub.job_of(c)
    assert squeue(job) == f"{c}|RUNNING"
    status, session = call(f"{hub.url}/user/{c}/ctrlstack/api/session", hub.token_for(c))
    assert status == 200, session
    assert session["warning"] is True
    assert session["warning_seconds"] == 600
    assert 200 < session["left_seconds"] <= 300
    wait_until(lambda: f"job {job} reaches its walltime" in hub.log_tail(400), 10, "hub warns")


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
