"""Pure batch builders and parsers (no scheduler): Slurm against outputs recorded on the CI
Slurm, PBS against outputs in the format of real OpenPBS servers (tests/fixtures/pbs)."""

from __future__ import annotations

import shlex
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from ctrlstack.config import ConfigError, get_profile
from ctrlstack.deploy.batch import pbs as P
from ctrlstack.deploy.batch import slurm as S
from ctrlstack.deploy.batch.options import format_walltime, parse_walltime, resolve
from ctrlstack.deploy.batch.script import CREDENTIALS_ENV, render_script

FIXTURES = Path(__file__).parent / "fixtures"


def _read(*parts: str) -> str:
    return FIXTURES.joinpath(*parts).read_text()


def _local(text: str) -> float:
    return time.mktime(datetime.strptime(text, "%Y-%m-%dT%H:%M:%S").timetuple())


def _opts(**overrides: Any) -> Any:
    return resolve(get_profile("slurm-cpu", **overrides), cluster_name="big")


# ----------------------------------------------------------------------------- options
@pytest.mark.parametrize(
    ("text", "seconds"),
    [("00:30:00", 1800), ("1-00:00:01", 86401), ("100:00:00", 360000)],
)
def test_walltime_round_trip(text: str, seconds: int) -> None:
    assert parse_walltime(text) == seconds
    assert parse_walltime(format_walltime(seconds)) == seconds


@pytest.mark.parametrize("text", ["30", "00:60:00", "00:00:00", "1:2:3", ""])
def test_bad_walltime(text: str) -> None:
    with pytest.raises(ValueError, match="walltime"):
        parse_walltime(text)


def test_profile_resolves_into_job_shape() -> None:
    opts = _opts(workers=4, threads=2, policy="l3", workers_per_job=2, memory="3 GiB")
    assert (opts.cores, opts.workers_per_job, opts.threads) == (4, 2, 2)
    assert opts.memory_mb == 3072
    assert opts.worker_memory_limit() == 3 * 2**30 // 2
    assert opts.job_name == "ctrlstack-big"
    assert opts.queue == "debug"


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"threads": "auto", "policy": "l3"}, "slurm.cores"),
        ({"threads": 2, "cores": 3, "workers_per_job": 2, "policy": "l3"}, "slurm.cores"),
        ({"retire_before": 4000}, "slurm.retire-before"),
        ({"memory": "lots"}, "slurm.memory"),
    ],
)
def test_bad_job_shape_names_the_field(overrides: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        _opts(**overrides)
    assert info.value.field == field


@pytest.mark.parametrize(
    ("key", "value"),
    [("partition", "a\nb"), ("walltime", "1h"), ("workers_per_job", 0), ("bogus", 1)],
)
def test_schema_rejects_bad_slurm_fields(key: str, value: Any) -> None:
    with pytest.raises(ConfigError, match="slurm"):
        get_profile("slurm-cpu", **{key: value})


# ----------------------------------------------------------------------------- script
def test_slurm_script_is_exact_and_quoted() -> None:
    opts = _opts(
        extra_directives=["--gres=gpu:1"],
        skip_directives=["--mem"],
        prologue=["source /etc/site.sh"],
        modules=["python/3.11"],
    )
    text = S.job_script(
        opts,
        scheduler="tls://10.0.0.1:8786",
        name="big-0",
        credentials="/home/a b/tls",
        log_directory="/logs",
    )
    lines = text.splitlines()
    assert lines[0] == "#!/bin/bash"
    assert "#SBATCH --partition=debug" in lines
    assert "#SBATCH --time=00:30:00" in lines
    assert "#SBATCH --cpus-per-task=1" in lines
    assert "#SBATCH --output=/logs/ctrlstack-big-%j.out" in lines
    assert "#SBATCH --gres=gpu:1" in lines
    assert not any(line.startswith("#SBATCH --mem") for line in lines)
    assert "source /etc/site.sh" in lines
    assert "module load python/3.11" in lines
    assert f"export {CREDENTIALS_ENV}='/home/a b/tls'" in lines
    command = shlex.split(lines[-1])
    assert command[0] == "exec"
    assert command[2:5] == ["-m", "ctrlstack.cli_batch", "worker"]
    assert command[5] == "tls://10.0.0.1:8786"
    assert command[command.index("--name") + 1] == "big-0"
    assert command[command.index("--lifetime") + 1] == str(1800 - 60)
    assert command[command.index("--interface") + 1] == "lo"


def test_script_refuses_newlines_smuggling_directives() -> None:
    with pytest.raises(ValueError, match="newline"):
        render_script(
            directive_prefix="#SBATCH",
            directives=["--partition=a\n#SBATCH --account=other"],
            command=["true"],
            cluster="c",
            workers=1,
        )


def test_script_quotes_every_command_word() -> None:
    text = render_script(
        directive_prefix="#SBATCH",
        directives=[],
        command=["python", "x; rm -rf /", "$(id)"],
        cluster="c",
        workers=1,
    )
    assert "exec python 'x; rm -rf /' '$(id)'" in text


# ----------------------------------------------------------------------------- sbatch
def test_sbatch_argv_and_parsable_output() -> None:
    assert S.sbatch_argv("/s.sh") == ["sbatch", "--parsable", "/s.sh"]
    assert S.sbatch_argv("/s.sh", test_only=True) == ["sbatch", "--test-only", "/s.sh"]
    assert S.parse_sbatch("123\n") == "123"
    assert S.parse_sbatch("77;ci\n") == "77"
    with pytest.raises(ValueError, match="job id"):
        S.parse_sbatch("Submitted batch job\n")


@pytest.mark.parametrize(
    ("fixture", "expected"),
    [
        ("sbatch-bad-partition.stderr", "Invalid partition name specified"),
        ("sbatch-too-much-memory.stderr", "Memory specification can not be satisfied"),
        ("sbatch-test-only-memory.stderr", "Requested node configuration is not available"),
        ("sbatch-unrecognized.stderr", "unrecognized option '--bogus'"),
        ("sbatch-controller-down.stderr", None),
    ],
)
def test_rejections_carry_slurms_message(fixture: str, expected: str | None) -> None:
    reason = S.is_rejection(_read("slurm", fixture))
    if expected is None:
        assert reason is None
    else:
        assert reason is not None
        assert expected in reason


def test_array_directive() -> None:
    lines = S.directives(_opts(), log_directory="/l", array=4)
    assert "--array=0-3" in lines
    assert "--output=/l/ctrlstack-big-%A_%a.out" in lines
    with pytest.raises(ValueError, match="at least one"):
        S.directives(_opts(), log_directory="/l", array=0)


# ----------------------------------------------------------------------------- squeue
def test_squeue_is_one_call_for_all_jobs() -> None:
    argv = S.squeue_argv(["1", "2_0", "3"])
    assert argv[0] == "squeue"
    assert "--jobs=1,2_0,3" in argv
    assert "--states=all" in argv
    assert "--array" in argv
    assert f"--format={S.SQUEUE_FORMAT}" in argv


def test_parse_recorded_squeue() -> None:
    jobs = S.parse_squeue(_read("slurm", "squeue-states-all.txt"))
    assert jobs["1"].state == "CANCELLED"
    assert jobs["2_1"].state == "CANCELLED"
    assert jobs["6"].state == "FAILED"
    assert jobs["6"].reason == "BadConstraints"
    running = jobs["2_0"]
    assert running.state == "RUNNING"
    assert running.node == "localhost"
    assert running.reason is None
    assert running.end_time == _local("2026-11-25T15:16:34")
    assert jobs["3"].state == "PENDING"
    assert jobs["3"].reason == "Resources"
    assert jobs["3"].start_estimate is None
    assert jobs["9"].start_estimate == _local("2026-11-25T15:20:00")
    assert jobs["9"].node is None
    assert "#" not in "".join(jobs)


def test_squeue_invalid_id_means_none_left() -> None:
    assert S.squeue_gone(_read("slurm", "squeue-invalid-id.stderr"))
    assert not S.squeue_gone("squeue: error: Unable to contact slurm controller")


@pytest.mark.parametrize(
    ("raw", "state"),
    [
        ("CANCELLED by 0", "CANCELLED"),
        ("OUT_OF_MEMORY", "FAILED"),
        ("TIMEOUT", "TIMEOUT"),
        ("COMPLETING", "COMPLETING"),
        ("CONFIGURING", "PENDING"),
        ("WHATEVER", "UNKNOWN"),
    ],
)
def test_state_mapping(raw: str, state: str) -> None:
    assert S.state_of(raw) == state


def test_parse_recorded_scontrol() -> None:
    job = S.parse_scontrol(_read("slurm", "scontrol-show-job-cancelled.txt"))
    assert job is not None
    assert (job.job_id, job.state, job.node) == ("1", "CANCELLED", "localhost")
    assert job.reason == "exit code 0:15"
    assert job.log == "/tmp/ctrlstack-slurm-0/jobs/1.out"
    task = S.parse_scontrol(_read("slurm", "scontrol-show-job-array-task.txt"))
    assert task is not None
    assert (task.job_id, task.state) == ("2_1", "FAILED")
    assert task.reason == "NonZeroExitCode; exit code 1:0"
    assert S.parse_scontrol("") is None


def test_sacct_parse_and_disabled() -> None:
    text = "7|COMPLETED|None|node1|2026-11-25T15:00:00|2026-11-25T15:10:00|0:0\n"
    text += "8|TIMEOUT|None|node2|2026-11-25T15:00:00|2026-11-25T15:30:00|0:15\n"
    jobs = S.parse_sacct(text)
    assert jobs["7"].state == "COMPLETED"
    assert jobs["7"].reason is None
    assert jobs["8"].state == "TIMEOUT"
    assert jobs["8"].reason == "exit code 0:15"
    assert S.parse_sacct(_read("slurm", "sacct-disabled.stderr")) == {}
    assert "--jobs=7,8" in S.sacct_argv(["7", "8"])


def test_scancel_argv() -> None:
    assert S.scancel_argv(["1", "2_3"]) == ["scancel", "1", "2_3"]
    with pytest.raises(ValueError, match="at least one"):
        S.scancel_argv([])


# ----------------------------------------------------------------------------- PBS
def _pbs_opts(**overrides: Any) -> Any:
    return resolve(get_profile("pbs-cpu", **overrides), cluster_name="big")


def test_pbs_script() -> None:
    opts = _pbs_opts(account="proj1", memory="2 GiB")
    text = P.job_script(
        opts, scheduler="tls://h:1", name="big-0", credentials="/c", log_directory="/l"
    )
    lines = text.splitlines()
    assert "#PBS -N ctrlstack-big" in lines
    assert "#PBS -q workq" in lines
    assert "#PBS -A proj1" in lines
    assert "#PBS -l select=1:ncpus=1:mem=2048mb" in lines
    assert "#PBS -l walltime=00:30:00" in lines
    assert "#PBS -j oe" in lines
    assert "ctrlstack.cli_batch worker tls://h:1 --name big-0" in lines[-1]
    assert "-J 0-3" in P.directives(opts, log_directory="/l", array=4)


def test_qsub_output_and_rejections() -> None:
    assert P.qsub_argv("/s.sh") == ["qsub", "/s.sh"]
    assert P.parse_qsub(_read("pbs", "qsub.stdout")) == "107.pbs"
    assert P.parse_qsub(_read("pbs", "qsub-array.stdout")) == "108[].pbs"
    with pytest.raises(ValueError, match="job id"):
        P.parse_qsub("qsub: Unknown queue\n")
    assert P.is_rejection(_read("pbs", "qsub-unknown-queue.stderr")) == "Unknown queue"
    reason = P.is_rejection(_read("pbs", "qsub-too-much-memory.stderr"))
    assert reason is not None
    assert "exceeds queue resource limits" in reason
    assert P.is_rejection(_read("pbs", "qsub-server-down.stderr")) is None


def test_parse_qstat_json() -> None:
    jobs = P.parse_qstat(_read("pbs", "qstat-f-json.json"))
    running = jobs["101.pbs"]
    assert (running.state, running.node, running.reason) == ("RUNNING", "node7", None)
    started = time.mktime(datetime(2026, 11, 25, 15, 0, 5).timetuple())
    assert running.end_time == started + 1800
    assert running.log == "/home/alice/.local/state/ctrlstack/clusters/big.d/jobs/101.pbs.OU"
    queued = jobs["102.pbs"]
    assert queued.state == "PENDING"
    assert queued.reason is not None
    assert "Insufficient amount of resource" in queued.reason
    assert queued.start_estimate == time.mktime(datetime(2026, 11, 25, 15, 40).timetuple())
    assert jobs["103.pbs"].state == "CANCELLED"
    assert jobs["104.pbs"].state == "TIMEOUT"
    assert jobs["105.pbs"].state == "FAILED"
    assert jobs["105.pbs"].reason == "exit status 1"
    assert "106[].pbs" not in jobs
    assert jobs["106[0].pbs"].state == "RUNNING"
    assert jobs["106[1].pbs"].state == "PENDING"
    assert P.parse_qstat(_read("pbs", "qstat-empty.json")) == {}
    assert P.qstat_gone(_read("pbs", "qstat-unknown.stderr"))


def test_qstat_and_qdel_argv() -> None:
    assert P.qstat_argv(["1.pbs", "2.pbs"]) == [
        "qstat", "-x", "-t", "-f", "-F", "json", "1.pbs", "2.pbs",
    ]  # fmt: skip
    assert P.qdel_argv(["1.pbs"]) == ["qdel", "-W", "force", "1.pbs"]
    with pytest.raises(ValueError, match="at least one"):
        P.qdel_argv([])


# ----------------------------------------------------------------------------- PBS backend
def test_pbs_backend_wiring(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ctrlstack.deploy.backends import backend_class
    from ctrlstack.deploy.backends.pbs import PBSBackend
    from ctrlstack.deploy.backends.slurm import BatchCommandFailed

    cls = backend_class("pbs")
    assert cls is PBSBackend
    backend = cls(get_profile("pbs-cpu"), cluster_name="big", workdir=tmp_path / "big.d")
    assert isinstance(backend, PBSBackend)
    text = backend.job_script("tls://h:1", "big-0")
    assert f"#PBS -o {tmp_path}/big.d/jobs/" in text
    assert f"export {CREDENTIALS_ENV}={tmp_path}/big.d/tls" in text
    assert "#SBATCH" not in text
    array = backend.array_script(["big-0", "big-1"], "tls://h:1")
    assert "#PBS -J 0-1" in array.splitlines()
    assert "$PBS_ARRAY_INDEX" in array
    assert "SLURM" not in array
    assert backend.job_log("7.pbs") == f"{tmp_path}/big.d/jobs/7.pbs.OU"
    assert backend.cancel_argv(["7.pbs"]) == ["qdel", "-W", "force", "7.pbs"]
    monkeypatch.setenv("PATH", str(tmp_path))  # no qsub here (no PBS server runs in CI)
    with pytest.raises(BatchCommandFailed, match="qsub is not on PATH"):
        backend.check()


def test_pbs_array_script_maps_sub_jobs_to_job_names() -> None:
    text = P.job_script(
        _pbs_opts(),
        scheduler="tls://h:1",
        name="big-0",
        credentials="/c",
        log_directory="/l",
        cluster="big",
        array_names=["big-0", "big-3", "x y;rm -rf ~"],
    )
    lines = text.splitlines()
    assert "#PBS -J 0-2" in lines
    assert "CTRLSTACK_NAMES=(big-0 big-3 'x y;rm -rf ~')" in lines
    assert ' --name "${CTRLSTACK_NAMES[$PBS_ARRAY_INDEX]}" ' in lines[-1]
    assert "CTRLSTACK_ARRAY_TASK_NAME" not in text
    assert "SLURM" not in text
    # without a cluster name the header names the first job's, never the placeholder
    unnamed = P.job_script(
        _pbs_opts(), scheduler="tls://h:1", name="big-0", credentials="/c", log_directory="/l",
        array_names=["big-0", "big-1"],
    )  # fmt: skip
    assert "CTRLSTACK_ARRAY_TASK_NAME" not in unnamed
    assert "for cluster big-0:" in unnamed
    # a single job's script is unchanged by the array path
    single = P.job_script(
        _pbs_opts(), scheduler="tls://h:1", name="big-0", credentials="/c", log_directory="/l"
    )
    assert "-J " not in single
    assert "PBS_ARRAY_INDEX" not in single


def test_pbs_array_sub_job_ids() -> None:
    array_id = P.parse_qsub(_read("pbs", "qsub-array.stdout"))
    assert P.array_task_ids(array_id, 3) == ["108[0].pbs", "108[1].pbs", "108[2].pbs"]
    with pytest.raises(ValueError, match="not a PBS array id"):
        P.array_task_ids("107.pbs", 2)
    # the ids qstat -t lists for a running array (recorded output) are the same shape
    jobs = P.parse_qstat(_read("pbs", "qstat-f-json.json"))
    assert {"106[0].pbs", "106[1].pbs"} <= set(jobs)


def test_pbs_backend_submits_one_scale_up_as_one_array(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No PBS server runs here: a recording ``qsub`` on PATH stands in for the server, to show
    the backend's wiring — one ``qsub -J`` for the three jobs of one scale-up, and the sub-job
    ids it hands back to dask-jobqueue."""
    import asyncio
    import stat

    from ctrlstack.deploy.backends.pbs import PBSBackend

    calls = tmp_path / "calls"
    qsub = tmp_path / "bin" / "qsub"
    qsub.parent.mkdir()
    qsub.write_text(f'#!/bin/sh\necho "$@" >> {calls}\necho 109[].pbs\n')
    qsub.chmod(stat.S_IRWXU)
    monkeypatch.setenv("PATH", f"{qsub.parent}:/usr/bin:/bin")
    backend = PBSBackend(get_profile("pbs-cpu"), cluster_name="big", workdir=tmp_path / "big.d")

    async def scale_up() -> list[str]:
        jobs = [backend.submit_job(f"big-{i}", "tls://h:1") for i in range(3)]
        return list(await asyncio.gather(*jobs))

    ids = asyncio.run(scale_up())
    assert ids == ["109[0].pbs", "109[1].pbs", "109[2].pbs"]
    submitted = calls.read_text().splitlines()
    assert len(submitted) == 1, submitted
    script = Path(submitted[0]).read_text()
    assert "#PBS -J 0-2" in script.splitlines()
    assert "CTRLSTACK_NAMES=(big-0 big-1 big-2)" in script
    assert backend.cancel_argv([ids[1]]) == ["qdel", "-W", "force", "109[1].pbs"]


# ----------------------------------------------------------------------------- ctrlstack worker
def _worker_cli(env: dict[str, str]) -> Any:
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "ctrlstack.cli_batch", "worker", "tls://127.0.0.1:1", "--name", "a"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )


def test_worker_needs_credentials_from_the_environment(tmp_path: Path) -> None:
    import os

    env = {k: v for k, v in os.environ.items() if k != CREDENTIALS_ENV}
    result = _worker_cli(env)
    assert result.returncode == 2
    assert f"{CREDENTIALS_ENV} is not set" in result.stderr
    assert "Traceback" not in result.stderr


def test_worker_refuses_credentials_others_can_read(tmp_path: Path) -> None:
    import os

    from ctrlstack.deploy.security import KEY_FILE, Credentials

    Credentials.create(tmp_path / "tls")
    (tmp_path / "tls" / KEY_FILE).chmod(0o644)
    result = _worker_cli({**os.environ, CREDENTIALS_ENV: str(tmp_path / "tls")})
    assert result.returncode == 2
    assert "readable by others" in result.stderr


def test_slurm_array_script_maps_tasks_to_job_names() -> None:
    text = S.job_script(
        _opts(),
        scheduler="tls://h:1",
        name="big-0",
        credentials="/c",
        log_directory="/l",
        cluster="big",
        array_names=["big-0", "big-3"],
    )
    lines = text.splitlines()
    assert "#SBATCH --array=0-1" in lines
    assert "#SBATCH --output=/l/ctrlstack-big-%A_%a.out" in lines
    assert "CTRLSTACK_NAMES=(big-0 big-3)" in lines
    assert ' --name "${CTRLSTACK_NAMES[$SLURM_ARRAY_TASK_ID]}" ' in lines[-1]
    assert "CTRLSTACK_ARRAY_TASK_NAME" not in text


def test_importing_the_batch_backends_leaves_ctrl_c_alone() -> None:
    """dask-jobqueue's runner installs ``SIGINT -> sys.exit()`` at import (Ctrl-C would exit 0),
    and fails to import outside the main thread; ctrlstack imports it without either effect."""
    import subprocess
    import sys

    code = (
        "import signal, threading\n"
        "before = signal.getsignal(signal.SIGINT)\n"
        "errors = []\n"
        "def load():\n"
        "    try:\n"
        "        import ctrlstack.deploy.backends.slurm, ctrlstack.deploy.backends.pbs\n"
        "    except Exception as exc:\n"
        "        errors.append(repr(exc))\n"
        "t = threading.Thread(target=load); t.start(); t.join()\n"
        "assert not errors, errors\n"
        "assert signal.getsignal(signal.SIGINT) is before, signal.getsignal(signal.SIGINT)\n"
        "print('ok')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
