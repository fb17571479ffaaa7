"""The server extension's REST API against a real ``jupyter server`` subprocess.

Authentication (token, other server's token, XSRF for cookie sessions), validation with the
field at fault, status codes from the error table, and a cluster's whole lifecycle — including
clusters launched outside the server and surviving a server restart.
"""

from __future__ import annotations

import http.cookiejar
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dask
import pytest

from tests.labserver import LabServer

pytestmark = pytest.mark.slow

API = "ctrlstack/api"
ROUTES = [
    ("GET", "profiles"),
    ("GET", "clusters"),
    ("POST", "clusters"),
    ("GET", "clusters/x"),
    ("DELETE", "clusters/x"),
    ("POST", "clusters/x/scale"),
    ("POST", "clusters/x/adapt"),
    ("GET", "clusters/x/logs"),
    ("POST", "clusters/x/forget"),
    ("GET", "topology"),
    ("GET", "runs"),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabServer]:
    with LabServer(tmp_path_factory.mktemp("lab"), app="server") as srv:
        yield srv
        assert srv.request("GET", f"{API}/clusters")[1] == [], "a test left a cluster running"


def wait_for(predicate: Any, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError("condition not met in time")


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_every_route_needs_a_token(server: LabServer, method: str, path: str) -> None:
    status, body = server.request(
        method, f"{API}/{path}", {} if method == "POST" else None, token=None
    )
    assert status == 403
    assert "Traceback" not in str(body)


def test_token_of_another_server_is_refused(server: LabServer, tmp_path: Path) -> None:
    with LabServer(tmp_path, app="server") as other:
        assert other.request("GET", f"{API}/clusters")[0] == 200
        status, _ = server.request("GET", f"{API}/clusters", token=other.token)
        assert status == 403
        status, _ = server.request(
            "POST", f"{API}/clusters", {"profile": "local"}, token=other.token
        )
        assert status == 403


def _cookie_session(server: LabServer) -> tuple[urllib.request.OpenerDirector, str]:
    """Log in with the token through the login form, as a browser does: a cookie session."""
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    opener.open(server.base + "login").read()
    xsrf = next(c.value for c in jar if c.name == "_xsrf")
    form = urllib.parse.urlencode({"password": server.token, "_xsrf": xsrf}).encode()
    opener.open(server.base + "login", data=form).read()
    assert any(c.name.startswith("username-") for c in jar), "login did not set a session cookie"
    return opener, xsrf


def _post(
    opener: urllib.request.OpenerDirector, url: str, body: Any, headers: dict[str, str]
) -> tuple[int, Any]:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), method="POST", headers=headers
    )
    try:
        with opener.open(req) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            return exc.code, json.loads(raw)
        except ValueError:
            return exc.code, raw.decode(errors="replace")


def test_cookie_session_needs_xsrf_for_changes(server: LabServer) -> None:
    opener, xsrf = _cookie_session(server)
    with opener.open(server.base + f"{API}/clusters") as resp:  # reads need no XSRF header
        assert resp.status == 200
    url = server.base + f"{API}/clusters"
    bad = {"profile": "local", "overrides": {"workers": 0}}
    status, _ = _post(opener, url, bad, {"Content-Type": "application/json"})
    assert status == 403
    status, body = _post(
        opener, url, bad, {"Content-Type": "application/json", "X-XSRFToken": xsrf}
    )
    assert status == 400  # past the XSRF check, stopped by validation
    assert body["error"]["field"] == "workers"


BAD_CREATES = [
    ({"profile": "local", "overrides": {"workers": 0}}, "workers"),
    ({"profile": "local", "overrides": {"workers": "many"}}, "workers"),
    ({"profile": "local", "overrides": {"policy": "diagonal"}}, "policy"),
    ({"profile": "local", "overrides": {"bogus": 1}}, "bogus"),
    ({"profile": "local", "overrides": {"env": {"A": "1"}}}, "env"),
    ({"profile": "local", "overrides": {"adapt": {"minimum": 3, "maximum": 1}}}, "adapt"),
    ({"profile": "local", "name": "bad name"}, "name"),
    ({"profile": "local", "name": "nl\n"}, "name"),
    ({"profile": "no-such-profile"}, "profile"),
    ({"profile": 5}, "profile"),
    ({"profile": "local", "overrides": [1]}, "overrides"),
    ({"profile": "local", "extra": 1}, "extra"),
]


@pytest.mark.parametrize(("body", "field"), BAD_CREATES)
def test_bad_launch_is_400_with_field(server: LabServer, body: dict[str, Any], field: str) -> None:
    status, reply = server.request("POST", f"{API}/clusters", body)
    assert status == 400, reply
    assert reply["error"]["kind"] == "user"
    assert reply["error"]["field"] is not None
    assert reply["error"]["field"].split(".")[0] == field
    assert reply["error"]["message"]
    assert "Traceback" not in reply["error"]["message"]
    assert server.request("GET", f"{API}/clusters")[1] == []  # nothing was started


def test_malformed_requests(server: LabServer) -> None:
    req = urllib.request.Request(
        server.base + f"{API}/clusters",
        data=b"{not json",
        method="POST",
        headers={"Authorization": f"token {server.token}"},
    )
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req)
    assert info.value.code == 400
    assert "not JSON" in json.loads(info.value.read())["error"]["message"]
    assert server.request("GET", f"{API}/clusters/nope")[0] == 404
    assert server.request("DELETE", f"{API}/clusters/nope")[0] == 404
    assert server.request("POST", f"{API}/clusters/nope/scale", {"workers": 1})[0] == 404
    assert server.request("GET", f"{API}/clusters/nope/logs")[0] == 404
    status, reply = server.request("GET", f"{API}/clusters/bad%20name")
    assert (status, reply["error"]["field"]) == (400, "name")
    status, reply = server.request("GET", f"{API}/clusters/x/logs?lines=0")
    assert (status, reply["error"]["field"]) == (400, "lines")


def test_profiles_carry_their_schema(server: LabServer) -> None:
    status, reply = server.request("GET", f"{API}/profiles")
    assert status == 200
    local = next(p for p in reply["profiles"] if p["name"] == "local")
    assert local["backend"] == "local"
    assert local["error"] is None
    assert local["values"]["policy"] == "l3"
    assert set(reply["schema"]["properties"]) >= {"workers", "threads", "policy", "adapt"}
    assert "host" in reply["backends"]["local"]["properties"]


def test_topology_reports_this_machine(server: LabServer) -> None:
    from ctrlstack.topology.cpuset import parse_cpulist
    from ctrlstack.topology.discover import discover

    status, reply = server.request("GET", f"{API}/topology")
    assert status == 200
    assert parse_cpulist(reply["machine"]["cpus"]) == discover().cpus
    assert set(reply["load"]) >= {str(c) for c in discover().allowed}
    assert all(0 <= v <= 100 for v in reply["load"].values())
    assert reply["owners"] == {}
    assert reply["crowded"] == []


def test_cluster_lifecycle_through_rest(server: LabServer) -> None:
    api = f"{API}/clusters"
    status, c = server.request(
        "POST",
        api,
        {"profile": "local", "name": "rest1", "overrides": {"workers": 1, "threads": 1}},
    )
    assert status == 201, c
    try:
        assert (c["name"], c["state"], c["connected"], c["requested"]) == ("rest1", "running", 1, 1)
        assert c["address"].startswith("tls://")
        cpus = c["workers"][0]["cpus"]
        assert cpus is not None

        status, reply = server.request("POST", api, {"profile": "local", "name": "rest1"})
        assert (status, reply["error"]["field"]) == (409, "name")

        assert [r["name"] for r in server.request("GET", api)[1]] == ["rest1"]
        owners = server.request("GET", f"{API}/topology")[1]["owners"]
        assert owners[cpus.split("-")[0].split(",")[0]][0]["cluster"] == "rest1"

        status, c = server.request("POST", f"{api}/rest1/scale", {"workers": 2})
        assert status == 200
        assert c["requested"] == 2
        wait_for(lambda: server.request("GET", f"{api}/rest1")[1]["connected"] == 2)
        status, reply = server.request("POST", f"{api}/rest1/scale", {"workers": 10**20})
        assert (status, reply["error"]["field"]) == (400, "workers")
        status, reply = server.request("POST", f"{api}/rest1/scale", {"workers": 64})
        assert status == 400
        assert "fit" in reply["error"]["message"]
        assert server.request("GET", f"{api}/rest1")[1]["requested"] == 2

        status, c = server.request("POST", f"{api}/rest1/adapt", {"minimum": 1, "maximum": 2})
        assert status == 200
        assert c["adapt"] == {"minimum": 1, "maximum": 2}
        status, reply = server.request("POST", f"{api}/rest1/adapt", {"minimum": 2, "maximum": 1})
        assert (status, reply["error"]["field"]) == (400, "maximum")

        status, reply = server.request("GET", f"{api}/rest1/logs?lines=50")
        assert status == 200
        assert reply["log"]
    finally:
        status, _ = server.request("DELETE", f"{api}/rest1")
    assert status == 204
    assert server.request("GET", f"{api}/rest1")[0] == 404
    assert server.request("GET", api)[1] == []


def test_outside_clusters_appear_and_survive_a_restart(tmp_path: Path) -> None:
    import ctrlstack

    root = tmp_path / "lab"
    first = LabServer(root, app="server").start()
    try:
        with dask.config.set({"ctrlstack.state-dir": str(first.state_dir)}):
            ctrlstack.launch("local", name="outside", workers=1, threads=1)
        names = [r["name"] for r in first.request("GET", f"{API}/clusters")[1]]
        assert names == ["outside"]
    finally:
        first.stop()
    second = LabServer(root, app="server").start()
    try:
        status, c = second.request("GET", f"{API}/clusters/outside")
        assert status == 200
        assert c["state"] == "running"
        assert c["connected"] == 1
    finally:
        status, _ = second.request("DELETE", f"{API}/clusters/outside")
        second.stop()
    assert status == 204


def test_broken_record_is_listed_and_forgotten(server: LabServer) -> None:
    records = server.state_dir / "clusters"
    records.mkdir(parents=True, exist_ok=True)
    (records / "wreck.json").write_text("{truncated")
    # A record written outside the server shows on a later poll: the list is answered from
    # memory and refreshed behind the answer (stale-while-revalidate, at most ~1 s old).
    deadline = time.monotonic() + 10
    rows = server.request("GET", f"{API}/clusters")[1]
    while not any(r["name"] == "wreck" for r in rows) and time.monotonic() < deadline:
        time.sleep(0.2)
        rows = server.request("GET", f"{API}/clusters")[1]
    wreck = next(r for r in rows if r["name"] == "wreck")
    assert wreck["state"] == "broken"
    assert wreck["message"]
    status, reply = server.request("POST", f"{API}/clusters/wreck/forget")
    assert status == 200, reply
    assert not (records / "wreck.json").exists()
    assert server.request("GET", f"{API}/clusters")[1] == []
    assert server.request("POST", f"{API}/clusters/wreck/forget")[0] == 404


def test_runs_are_listed_newest_first_without_params(server: LabServer) -> None:
    """Submitted runs (``ctrlstack submit``) for the sidebar, from their public records."""
    from ctrlstack.runs.record import RunRecord, runs_dir, save

    base = {"kind": "notebook", "output_dir": "/tmp/out", "profile": "local", "mode": "local"}
    old = RunRecord(id="20261201-000000-aaaa", input="/tmp/a.ipynb", state="succeeded", **base)
    new = RunRecord(
        id="20261202-000000-bbbb",
        input="/tmp/b.ipynb",
        state="failed",
        error="cell 3: ZeroDivisionError",
        params={"secret": "x"},
        **base,
    )
    for record in (old, new):
        save(record, server.state_dir)
    (runs_dir(server.state_dir) / "20261203-000000-cccc.json").write_text("{not json")
    try:
        status, body = server.request("GET", f"{API}/runs")
        assert status == 200, body
        assert [r["id"] for r in body] == [new.id, old.id]  # the damaged file is skipped
        assert body[0]["state"] == "failed"
        assert body[0]["error"] == "cell 3: ZeroDivisionError"
        assert body[0]["output"] == new.output
        assert body[0]["input"] == "/tmp/b.ipynb"
        assert "params" not in body[0]
        status, body = server.request("GET", f"{API}/runs?limit=1")
        assert [r["id"] for r in body] == [new.id]
        status, body = server.request("GET", f"{API}/runs?limit=0")
        assert status == 400
        assert body["error"]["field"] == "limit"
    finally:
        for path in runs_dir(server.state_dir).glob("*"):
            path.unlink()
