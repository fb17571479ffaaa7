"""Pure parts of the hub integration: form ↔ schema, validation, state, status batching."""

from __future__ import annotations

import asyncio
import tomllib
import types
from pathlib import Path

import pytest

from ctrlstack._proc import CommandResult
from ctrlstack.hub.form import FormError, JobRequest, Limits, ProfileChoice, render_form, validate
from ctrlstack.hub.handlers import parse_rendezvous
from ctrlstack.hub.singleuser import pin_cpus
from ctrlstack.hub.spawner import StackSpawner
from ctrlstack.hub.status import StatusService

PROFILES = [ProfileChoice("cpu", "debug", 2, 1024, 1800, "core")]
LIMITS = Limits(max_cores=4, max_memory_mb=4096, max_gpus=1, max_walltime=3600)


def test_defaults_come_from_the_profile():
    req = validate({}, PROFILES, LIMITS, ["python3"])
    assert (req.partition, req.cores, req.memory_mb, req.walltime, req.gpus) == (
        "debug",
        2,
        1024,
        1800,
        0,
    )
    assert req.kernel == "python3"
    assert req.policy == "core"


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"cores": "0"}, "cores"),
        ({"cores": 5}, "cores"),
        ({"cores": "two"}, "cores"),
        ({"cores": True}, "cores"),
        ({"memory": "5G"}, "memory"),
        ({"memory": "a lot"}, "memory"),
        ({"gpus": 2}, "gpus"),
        ({"walltime": "02:00:00"}, "walltime"),
        ({"walltime": "1h"}, "walltime"),
        ({"partition": "debug\n#SBATCH --uid=0"}, "partition"),
        ({"kernel": "r"}, "kernel"),
        ({"profile": "gpu"}, "profile"),
        ({"exec_prefix": "sudo"}, "exec_prefix"),
        ({"cores": ["1", "2"]}, "cores"),
    ],
)
def test_each_bad_value_names_its_field(raw, field):
    with pytest.raises(FormError) as info:
        validate(raw, PROFILES, LIMITS, ["python3"])
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}: ")


def test_form_lists_and_strings_are_accepted():
    req = validate(
        {"cores": ["3"], "memory": "2 GiB", "walltime": "00:45:00", "gpus": "1"},
        PROFILES,
        LIMITS,
        ["python3"],
    )
    assert (req.cores, req.memory_mb, req.walltime, req.gpus) == (3, 2048, 2700, 1)


def test_group_limits_take_the_largest_bound():
    table = {"big": {"cores": 16, "partitions": ["gpu"]}, "small": {"cores": 2, "gpus": 1}}
    lim = Limits.for_groups(["small", "big", "other"], table, LIMITS)
    assert lim.max_cores == 16
    assert lim.max_gpus == 1
    assert lim.partitions == ()  # "small" allows any partition
    only = Limits.for_groups(["big"], table, LIMITS)
    assert only.partitions == ("gpu",)
    with pytest.raises(FormError, match="partition: 'debug' is not allowed"):
        validate({}, PROFILES, only, [])
    assert Limits.for_groups([], table, LIMITS) == LIMITS


def test_form_is_generated_from_profiles_schema_and_limits():
    html = render_form(PROFILES, LIMITS, ["python3", "r"])
    for name in ("profile", "partition", "cores", "memory", "gpus", "walltime", "kernel"):
        assert f'name="{name}"' in html
    assert 'max="4"' in html
    assert 'value="00:30:00"' in html
    assert "Slurm partition" in html  # the schema's description
    bad = render_form(PROFILES, LIMITS, [], error=FormError("cores", "too <many>"))
    assert "too &lt;many&gt;" in bad
    assert "has-error" in bad


def test_job_request_round_trip():
    req = validate({"cores": 3}, PROFILES, LIMITS, [])
    assert JobRequest.from_dict(req.to_dict()) == req


def test_spawner_state_round_trip():
    sp = StackSpawner(user=types.SimpleNamespace(name="x", groups=[]))
    sp.job_id, sp.job_ip, sp.job_port, sp.request = "42", "127.0.0.1", 9999, {"cores": 1}
    state = sp.get_state()
    other = StackSpawner(user=types.SimpleNamespace(name="x", groups=[]))
    other.load_state(state)
    assert (other.job_id, other.job_ip, other.job_port, other.request) == (
        "42",
        "127.0.0.1",
        9999,
        {"cores": 1},
    )
    other.clear_state()
    assert other.job_id == ""
    assert other.get_state().get("job_id") is None


def test_rendezvous_body_is_whitelisted():
    assert parse_rendezvous({"ip": "127.0.0.1", "port": 80}) == ("127.0.0.1", 80)
    assert parse_rendezvous({"ip": "node-01.cluster", "port": 65535})[0] == "node-01.cluster"
    for body in (
        {"ip": "127.0.0.1", "port": 80, "cmd": "x"},
        {"ip": "0.0.0.0", "port": 80},
        {"ip": "127.0.0.1", "port": 0},
        {"ip": "127.0.0.1", "port": "80"},
        {"ip": "a b", "port": 80},
        ["ip", "port"],
    ):
        with pytest.raises((ValueError, TypeError)):
            parse_rendezvous(body)


def test_pinning_takes_the_first_cores_of_the_job():
    assert pin_cpus([5, 3, 4, 6], 2, "core") == [3, 4]
    assert pin_cpus([0, 1], 2, "none") is None


def test_lab_extension_is_enabled_where_it_can_run():
    from ctrlstack.hub.singleuser import lab_extension_config

    path = lab_extension_config()  # this venv has distributed and jupyter_server
    assert path is not None
    assert (Path(path) / "jupyter_server_config.d" / "ctrlstack.json").exists()


def test_entry_point_is_declared():
    data = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    spawners = data["project"]["entry-points"]["jupyterhub.spawners"]
    assert spawners["ctrlstack"] == "ctrlstack.hub:StackSpawner"


class FakeSqueue:
    """Records calls; answers from a table (the parser is tested on real output elsewhere)."""

    def __init__(self, lines: str = "", rc: int = 0, stderr: str = ""):
        self.calls: list[list[str]] = []
        self.lines, self.rc, self.stderr = lines, rc, stderr

    def __call__(self, argv, env):
        self.calls.append(argv)
        return CommandResult(tuple(argv), self.rc, self.lines, self.stderr)


def test_one_call_answers_every_job():
    fake = FakeSqueue(
        "1|RUNNING|None|n1|2026-11-25T15:00:00|2026-11-25T16:00:00\n2|PENDING|Resources|||\n"
    )

    async def main():
        svc = StatusService(runner=fake, period=60)
        svc.watch("1")
        svc.watch("2")
        await svc.fresh("1")  # the service's own loop answers both in one call
        await svc.fresh("2")
        await svc.close()
        return svc

    svc = asyncio.run(main())
    assert len(fake.calls) == 1
    assert "--jobs=1,2" in fake.calls[0]
    assert svc.status("1").state == "RUNNING"
    assert svc.status("1").node == "n1"
    assert svc.status("2").state == "PENDING"
    assert svc.status("2").reason == "Resources"


def test_failing_status_command_is_unknown_never_gone():
    fake = FakeSqueue(rc=1, stderr="slurm_load_jobs error: Unable to contact slurm controller")

    async def main():
        svc = StatusService(runner=fake, period=60, missing_grace=0)
        svc.watch("7")
        await svc.poll_once()
        await svc.poll_once()
        await svc.close()
        return svc

    svc = asyncio.run(main())
    assert svc.status("7").state == "UNKNOWN"
    assert svc.failing_since is not None


def test_missing_job_is_gone_only_after_the_grace():
    fake = FakeSqueue(rc=1, stderr="slurm_load_jobs error: Invalid job id specified")

    async def main(grace):
        svc = StatusService(runner=fake, period=60, missing_grace=grace)
        svc.watch("9")
        await svc.poll_once()
        await svc.close()
        return svc.status("9").state

    assert asyncio.run(main(60)) == "UNKNOWN"
    assert asyncio.run(main(0)) == "FAILED"


def test_progress_yields_every_message_until_ready():
    sp = StackSpawner(user=types.SimpleNamespace(name="x", groups=[]))

    async def main():
        sp._emit("job 1 submitted", 10)
        sp._emit("queued: Resources — estimated start 12:00:00", 20)

        async def later():
            await asyncio.sleep(0.05)
            sp._emit("connecting to the server at 127.0.0.1:1", 80)
            sp._emit("server ready", 100)

        task = asyncio.ensure_future(later())
        events = [e async for e in sp.progress()]
        await task
        return events

    events = asyncio.run(main())
    assert [e["progress"] for e in events] == [10, 20, 80, 100]
    assert events[1]["message"].startswith("queued: Resources")


def _account(name: str = "ann") -> dict:
    return {"username": name, "uid": 1234, "gid": 99, "home": f"/home/{name}"}


@pytest.mark.parametrize(
    ("prefix", "uid", "argv"),
    [
        (
            ["setpriv", "--reuid={uid}", "--regid={gid}", "--init-groups"],
            False,
            ["setpriv", "--reuid=1234", "--regid=99", "--init-groups", "sbatch", "--parsable"],
        ),
        (
            ["sudo", "-E", "-u", "{username}"],
            False,
            ["sudo", "-E", "-u", "ann; rm -rf /", "sbatch", "--parsable"],
        ),
        ([], True, ["sbatch", "--uid=1234", "--gid=99", "--parsable"]),
    ],
)
def test_submission_prefixes_are_argv_words(prefix, uid, argv):
    """Each prefix is argv (a hostile user name stays one word), ``sbatch --uid`` for root."""
    sp = StackSpawner(user=types.SimpleNamespace(name="x", groups=[]))
    sp.submit_prefix, sp.sbatch_uid = prefix, uid
    account = _account("ann; rm -rf /" if "{username}" in prefix else "ann")
    assert sp.submit_argv(account) == argv


def test_session_info_counts_down_and_warns():
    from ctrlstack.hub.session import session_info

    env = {
        "SLURM_JOB_ID": "7",
        "CTRLSTACK_JOB_END_TIME": "1000",
        "CTRLSTACK_WALLTIME_WARNING": "60",
    }
    info = session_info(env, now=900.0)
    assert (info["job_id"], info["end_time"], info["left_seconds"], info["warning"]) == (
        "7",
        1000.0,
        100.0,
        False,
    )
    assert session_info(env, now=950.0)["warning"] is True
    assert session_info(env, now=2000.0)["left_seconds"] == 0.0
    empty = session_info({"SLURM_JOB_ID": "7", "CTRLSTACK_JOB_END_TIME": "soon"}, now=1.0)
    assert empty["end_time"] is None
    assert empty["job_id"] is None
    assert empty["warning"] is False


def test_job_end_prefers_slurms_answer_over_the_estimate():
    from ctrlstack.hub.singleuser import job_end

    assert job_end({"end_time": 5000}, started=100.0, walltime=600) == 5000.0
    assert job_end({"end_time": None}, started=100.0, walltime=600) == 700.0
    assert job_end({"end_time": True}, started=100.0, walltime=600) == 700.0
    assert job_end({}, started=100.0, walltime=0) is None


def test_job_script_tells_the_wrapper_its_walltime():
    sp = StackSpawner(user=types.SimpleNamespace(name="x", groups=[]), server_ip="127.0.0.1")
    choice = ProfileChoice("slurm-cpu", "debug", 1, 1024, 1800, "core")
    req = validate({"walltime": "00:20:00"}, [choice], LIMITS, ["python3"])
    script = sp.job_script(req, _account())
    assert "--walltime 1200 --warning 600 --" in script
