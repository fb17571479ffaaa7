"""The ``ctrlstack`` command without clusters: read commands, errors, exit statuses, ``--help``.

Commands that need a running cluster are covered end to end in ``test_lifecycle.py`` (slow);
``run``'s own process handling is tested here with the cluster part replaced.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import dask
import psutil
import pytest
from click.testing import CliRunner, Result

from ctrlstack import api, cli
from ctrlstack._config_check import packaged_defaults
from ctrlstack.errors import UserError
from ctrlstack.topology.cpuset import parse_cpulist
from ctrlstack.topology.hwloc import from_hwloc_xml

FIXTURES = Path(__file__).parent / "fixtures" / "hwloc"
AMD = FIXTURES / "AMD-19h-Zen3-2xEpyc-7763.xml"


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli.main, list(args), catch_exceptions=False)


def error_lines(result: Result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]


# ------------------------------------------------------------------------------------ --help
def all_commands() -> list[str]:
    return sorted(cli.main.commands)


def test_every_documented_command_exists() -> None:
    documented = "launch list status scale adapt stop crowding run topology plan profiles"
    assert set(documented.split()) <= set(all_commands())


@pytest.mark.parametrize("command", all_commands())
def test_help_of_every_command(command: str) -> None:
    result = invoke(command, "--help")
    assert result.exit_code == 0, result.output
    assert f"Usage: main {command}" in result.output or "Usage:" in result.output
    assert "--help" in result.output


def test_top_level_help_and_version() -> None:
    result = invoke("--help")
    assert result.exit_code == 0
    for command in all_commands():
        assert command in result.output
    version = invoke("--version")
    assert version.exit_code == 0
    assert "ctrlstack" in version.output


# ------------------------------------------------------------------------------------ topology
def test_topology_json_of_an_hwloc_file_is_the_machine_dict() -> None:
    result = invoke("topology", "--hwloc-xml", str(AMD), "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data == json.loads(json.dumps(from_hwloc_xml(AMD).to_dict()))


def test_topology_json_of_this_machine_has_the_machine_keys() -> None:
    from ctrlstack.topology.discover import discover

    result = invoke("topology", "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    keys = set(discover().to_dict())
    assert keys <= set(data)
    assert set(data) - keys <= {"context"}
    assert parse_cpulist(data["allowed"]) == frozenset(os.sched_getaffinity(0))


def test_topology_text_restricted_by_cpus() -> None:
    result = invoke("topology", "--hwloc-xml", str(AMD), "--cpus", "0-15")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip()


def test_topology_rejects_two_sources() -> None:
    result = CliRunner().invoke(
        cli.main, ["topology", "--hwloc-xml", str(AMD), "--sysfs-root", str(FIXTURES)]
    )
    assert result.exit_code == 2
    assert "at most one of --sysfs-root and --hwloc-xml" in result.stderr


def test_bad_cpu_list_names_the_option() -> None:
    result = CliRunner().invoke(cli.main, ["plan", "--hwloc-xml", str(AMD), "--cpus", "3-1"])
    assert result.exit_code == 2
    assert "--cpus" in result.stderr


# ------------------------------------------------------------------------------------ plan
def test_plan_json_on_the_fixture_restricted_by_cpus() -> None:
    result = invoke("plan", "--hwloc-xml", str(AMD), "--cpus", "0-15", "--json")
    assert result.exit_code == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["policy"] == "l3"
    assert plan["workers"] == len(plan["slots"]) >= 1
    cpus = [parse_cpulist(s["cpus"]) for s in plan["slots"]]
    assert all(c <= frozenset(range(16)) for c in cpus)  # only the allowed CPUs
    assert sum(len(c) for c in cpus) == len(frozenset().union(*cpus))  # disjoint
    assert all(len(c) == plan["threads"] for c in cpus)


def test_plan_text_with_explicit_shape() -> None:
    result = invoke(
        "plan", "--hwloc-xml", str(AMD), "--cpus", "0-15", "-w", "2", "-t", "4", "-p", "numa"
    )
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip()


def test_plan_that_does_not_fit_exits_2_with_one_error_line() -> None:
    result = invoke("plan", "--hwloc-xml", str(AMD), "--cpus", "0-3", "-w", "64", "-t", "1")
    assert result.exit_code == 2
    assert result.stdout == ""
    (line,) = error_lines(result)
    assert line.startswith("error: ")
    assert "at most 4 workers" in line


# ------------------------------------------------------------------------------------ profiles
def test_profiles_lists_the_packaged_profile() -> None:
    result = invoke("profiles")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.split()[0] == "local"
    data = json.loads(invoke("profiles", "--json").stdout)
    assert data["local"]["backend"] == "local"


@pytest.fixture
def broken_profiles() -> Iterator[None]:
    extra = {
        "big": {"workers": 4},
        "broken": {"policy": "l4"},
        "notmap": 3,
    }
    with dask.config.set({f"ctrlstack.profiles.{k}": v for k, v in extra.items()}):
        yield


#: The packaged profiles (the embedded default and the batch examples).
PACKAGED = sorted(packaged_defaults()["ctrlstack"]["profiles"])


def test_profiles_lists_the_good_ones_and_reports_each_broken_one(
    broken_profiles: None,
) -> None:
    result = invoke("profiles")
    assert result.exit_code == 2
    listed = [line.split()[0] for line in result.stdout.splitlines()]
    assert listed == sorted(["big", *PACKAGED])
    errors = error_lines(result)
    assert len(errors) == 2
    assert all(line.startswith("error: ") for line in errors)
    assert "'broken'" in errors[0]
    assert "policy" in errors[0]
    assert "'notmap'" in errors[1]


def test_profiles_json_keeps_good_profiles_when_one_is_broken(broken_profiles: None) -> None:
    result = invoke("profiles", "--json")
    assert result.exit_code == 2
    assert sorted(json.loads(result.stdout)) == sorted(["big", *PACKAGED])
    assert len(error_lines(result)) == 2


# ------------------------------------------------------------------------------------ clusters
def test_list_with_an_empty_registry(state_dir: Path) -> None:
    result = invoke("list")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() == "no clusters"
    as_json = invoke("list", "--json")
    assert json.loads(as_json.stdout) == []


def test_list_reports_a_dead_cluster_once(state_dir: Path) -> None:
    from ctrlstack.deploy.registry import ClusterRecord, Registry

    Registry(state_dir).write(
        ClusterRecord(
            name="crashed",
            profile="local",
            backend="local",
            state="running",
            created=time.time() - 3600,
        )
    )
    first = invoke("list")
    assert first.exit_code == 0
    row, why = first.stdout.splitlines()[1:]
    assert row.split()[:3] == ["crashed", "local", "dead"]
    assert why.strip() == "the launch never completed"
    assert invoke("list").stdout.strip() == "no clusters"


def test_stop_of_an_unknown_name_exits_2_with_a_hint(state_dir: Path) -> None:
    result = invoke("stop", "nope")
    assert result.exit_code == 2
    (line,) = error_lines(result)
    assert line.startswith("error: ")
    assert "'nope'" in line
    assert "ctrlstack list" in line


def test_stop_of_an_invalid_name_exits_2(state_dir: Path) -> None:
    result = invoke("stop", "../etc")
    assert result.exit_code == 2
    assert error_lines(result)[0].startswith("error: cluster name '../etc' is not allowed")


def test_stop_without_names_is_a_usage_error(state_dir: Path) -> None:
    result = CliRunner().invoke(cli.main, ["stop"])
    assert result.exit_code == 2
    assert "name a cluster or pass --all" in result.stderr


def test_stop_all_with_nothing_running_is_fine(state_dir: Path) -> None:
    result = invoke("stop", "--all")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() == "no clusters"


def test_stop_tries_every_name(state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stopped: list[str] = []

    def stop(name: str) -> None:
        if name == "missing":
            raise api.ClusterNotFoundError(f"no cluster named {name!r}")
        stopped.append(name)

    monkeypatch.setattr(api, "stop", stop)
    result = invoke("stop", "missing", "other")
    assert result.exit_code == 2
    assert stopped == ["other"]
    assert "stopped other" in result.stdout


@pytest.mark.parametrize("command", ["status", "scale", "adapt", "crowding"])
def test_commands_on_an_unknown_cluster_exit_2(state_dir: Path, command: str) -> None:
    args = [command, "nope"] + (["2"] if command == "scale" else [])
    result = invoke(*args)
    assert result.exit_code == 2
    (line,) = error_lines(result)
    assert line.startswith("error: no running cluster named 'nope'")


def test_launch_with_a_bad_override_exits_2_and_starts_nothing(state_dir: Path) -> None:
    result = invoke("launch", "nope-profile", "--name", "x")
    assert result.exit_code == 2
    assert error_lines(result)[0].startswith("error: unknown profile 'nope-profile'")
    assert list((state_dir / "clusters").glob("*.json")) == []


# ------------------------------------------------------------------------------------ run
@pytest.fixture
def fake_cluster(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """``ctrlstack run`` with the cluster replaced: records that it was stopped."""
    events: list[str] = []

    @contextlib.contextmanager
    def cluster(profile: Any = None, **kwargs: Any) -> Iterator[None]:
        try:
            yield None
        finally:
            events.append("stopped")

    monkeypatch.setattr(api, "cluster", cluster)
    env = {"DASK_SCHEDULER_ADDRESS": "tls://127.0.0.1:1", "CTRLSTACK_CLUSTER": "fake"}
    handle = SimpleNamespace(dask_env=lambda: env, attach=lambda pid: events.append("attached"))
    monkeypatch.setattr(api, "get", lambda name: handle)
    return events


def test_run_exits_with_the_scripts_status(fake_cluster: list[str], tmp_path: Path) -> None:
    script = tmp_path / "job.py"
    script.write_text("import os, sys; assert os.environ['DASK_SCHEDULER_ADDRESS']; sys.exit(3)\n")
    result = invoke("run", str(script))
    assert result.exit_code == 3
    assert fake_cluster == ["attached", "stopped"]


def test_run_takes_the_status_of_a_script_that_exits_before_it_is_attached(
    fake_cluster: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The supervisor refuses to attach a process that has exited; that race is no error."""

    def refuse_once_exited(pid: int) -> None:
        deadline = time.monotonic() + 20
        while psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
            assert time.monotonic() < deadline, "script did not exit"
            time.sleep(0.01)
        raise UserError(f"not a live process of this host: {pid}")

    monkeypatch.setattr(api.get("fake"), "attach", refuse_once_exited)
    script = tmp_path / "job.py"
    script.write_text("import sys; sys.exit(3)\n")
    result = invoke("run", str(script))
    assert result.exit_code == 3, result.output
    assert fake_cluster == ["stopped"]


def test_run_stops_a_running_script_it_cannot_attach(
    fake_cluster: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pidfile = tmp_path / "pid"

    def refuse(pid: int) -> None:
        pidfile.write_text(str(pid))
        raise UserError("the supervisor is gone")

    monkeypatch.setattr(api.get("fake"), "attach", refuse)
    script = tmp_path / "job.py"
    script.write_text("import time; time.sleep(30)\n")
    result = invoke("run", str(script))
    assert result.exit_code != 0
    assert "the supervisor is gone" in result.output
    assert fake_cluster == ["stopped"]
    with contextlib.suppress(psutil.NoSuchProcess):
        proc = psutil.Process(int(pidfile.read_text()))
        assert proc.status() == psutil.STATUS_ZOMBIE, "script still running"


def test_run_reports_a_killed_script_in_shell_convention(
    fake_cluster: list[str], tmp_path: Path
) -> None:
    script = tmp_path / "job.py"
    script.write_text("import os, signal; os.kill(os.getpid(), signal.SIGTERM)\n")
    result = invoke("run", str(script))
    assert result.exit_code == 128 + signal.SIGTERM  # not 256 - 15
    assert fake_cluster == ["attached", "stopped"]


def test_run_interrupted_does_not_leave_the_script_running(
    fake_cluster: list[str], tmp_path: Path
) -> None:
    pidfile = tmp_path / "pid"
    script = tmp_path / "job.py"
    script.write_text(
        "import os, signal, time\n"
        "signal.signal(signal.SIGINT, signal.SIG_IGN)  # a script that survives Ctrl-C\n"
        f"open({str(pidfile)!r}, 'w').write(str(os.getpid()))\n"
        "time.sleep(30)\n"
    )

    def interrupt_once_started() -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if pidfile.exists() and pidfile.read_text():
                os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C reaches `ctrlstack run`
                return
            time.sleep(0.02)

    timer = threading.Thread(target=interrupt_once_started)
    timer.start()
    result = CliRunner().invoke(cli.main, ["run", str(script)])
    timer.join()
    assert result.exit_code != 0
    assert fake_cluster == ["attached", "stopped"]
    pid = int(pidfile.read_text())
    with contextlib.suppress(psutil.NoSuchProcess):
        assert psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, "script still running"


# ------------------------------------------------------------------------------------ ops
def test_ops_warm_refuses_an_unknown_op_before_compiling() -> None:
    result = invoke("ops", "warm", "histogram", "nope")
    assert result.exit_code == 2
    (line,) = error_lines(result)
    assert "unknown op name(s) ['nope']" in line
    assert "histogram" in line  # the known names are listed
    assert "warmed" not in result.stdout


@pytest.mark.slow
def test_ops_warm_compiles_the_named_ops() -> None:
    result = invoke("ops", "warm", "jacobi_step")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith("warmed 1 ops in ")
    assert result.stdout.rstrip().endswith(": jacobi_step")
