"""Spawn-to-ready of StackSpawner vs batchspawner's SlurmSpawner on the same Slurm, and status calls.

Run as root on a machine with Slurm's packages (``scripts/slurm``), npm and ``/usr/bin/python3``::

    python benchmarks/hub_spawn.py [--repeats 5] [--users 20]

What it does, with real parts only:

* brings up a private Slurm (``scripts/slurm up --state <tmp>``), creates one Unix user, and runs
  two JupyterHubs side by side on loopback (the test harness of ``tests/hub_plugin.py``): one with
  ``ctrlstack.hub.StackSpawner``, one with ``batchspawner.SlurmSpawner`` configured the way
  ``../shared/notes/hub.md`` found it works here (``setpriv`` prefix, ``env_keep`` fix, loopback);
* spawns the user's server through the REST API on each hub in turn (alternating, so load from
  other tenants hits both alike) until the hub says ready, then stops it; reports the medians and
  their ratio (target ≤ 0.7);
* submits ``--users`` sleep jobs and polls them with that many spawner objects of each kind for
  three periods, counting ``squeue`` calls through a counting wrapper on ``PATH``.

Everything it started is stopped at the end (hubs, proxies, jobs, Slurm, the user).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import stat
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from hub_plugin import Hub, UnixUsers, ensure_chp, ensure_user_env

from ctrlstack import _proc

BATCHSPAWNER = """
c.JupyterHub.spawner_class = "batchspawner.SlurmSpawner"
c.SlurmSpawner.exec_prefix = "setpriv --reuid={{username}} --regid={{username}} --init-groups"
c.SlurmSpawner.req_partition = "debug"
c.SlurmSpawner.req_memory = "1024M"
c.SlurmSpawner.req_runtime = "00:30:00"
c.Spawner.env_keep = ["PATH", "LANG", "LC_ALL", "SLURM_CONF",
                      "JUPYTERHUB_SINGLEUSER_APP"]
c.Spawner.environment = {{"PATH": "{userbin}:/usr/local/bin:/usr/bin:/bin"}}
c.Spawner.args = ["--ServerApp.ip=127.0.0.1"]
c.SlurmSpawner.state_exechost_exp = "127.0.0.1"
c.Spawner.start_timeout = 90
c.Spawner.http_timeout = 60
"""


def ensure_batchspawner(python: Path) -> None:
    probe = [str(python), "-c", "import batchspawner"]
    if _proc.run(probe, check=False, timeout=60).returncode != 0:
        _proc.run([str(python), "-m", "pip", "install", "--quiet", "batchspawner"], timeout=900)


def spawn_to_ready(hub: Hub, name: str) -> float:
    t0 = time.monotonic()
    status, body = hub.api("POST", f"/hub/api/users/{name}/server", {}, timeout=120)
    if status not in (201, 202):
        raise RuntimeError(f"spawn failed: {status} {body}\n{hub.log_tail()}")
    hub.wait_ready(name, timeout=120)
    took = time.monotonic() - t0
    hub.api("DELETE", f"/hub/api/users/{name}/server", timeout=60)
    hub.wait_gone(name, 60)
    return took


def counting_path(tmp: Path) -> tuple[str, Path]:
    real = shutil.which("squeue")
    assert real, "squeue not on PATH"
    (tmp / "bin").mkdir()
    wrapper = tmp / "bin" / "squeue"
    count = tmp / "calls"
    wrapper.write_text(f'#!/bin/sh\necho call >> "{count}"\nexec {real} "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IEXEC)
    return f"{tmp / 'bin'}:{os.environ['PATH']}", count


async def count_polls(kind: str, jobs: list[str], path: str, count: Path, period: float) -> int:
    """squeue calls while every spawner polls once per period for three periods."""
    env = {"PATH": path, "SLURM_CONF": os.environ["SLURM_CONF"]}
    spawners: list = []
    for i, job in enumerate(jobs):
        user = types.SimpleNamespace(name=f"u{i}", groups=[], escaped_name=f"u{i}", url="/")
        if kind == "ctrlstack":
            from ctrlstack.hub.spawner import StackSpawner

            sp = StackSpawner(user=user, slurm_env=env, status_period=period, status_jitter=0.1)
            sp.load_state({"job_id": job})
        else:
            from batchspawner import SlurmSpawner

            sp = SlurmSpawner(
                user=user, exec_prefix="", env_keep=[], environment=env, req_homedir="/tmp"
            )
            sp.get_env = lambda env=env: dict(env)  # no hub object in this bare loop
            sp.load_state({"job_id": job, "job_status": ""})
        spawners.append(sp)
    # batchspawner runs its squeue with the hub's own environment (env=None): PATH it is.
    saved = os.environ["PATH"]
    os.environ["PATH"] = path
    try:
        await asyncio.gather(*(sp.poll() for sp in spawners))
        count.write_text("")
        for _ in range(3):  # every spawner polls once per period, for three periods
            await asyncio.gather(*(sp.poll() for sp in spawners))
            await asyncio.sleep(period)
        calls = len(count.read_text().splitlines())
    finally:
        os.environ["PATH"] = saved
    if kind == "ctrlstack":
        await spawners[0]._service().close()
    return calls


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--users", type=int, default=20)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ctrlstack-hub-bench-", dir="/tmp"))
    work.chmod(0o755)
    state = work / "slurm"
    script = [sys.executable, str(ROOT / "scripts" / "slurm")]
    up = _proc.run([*script, "up", "--state", str(state), "--json"], timeout=900)
    os.environ["SLURM_CONF"] = json.loads(up.stdout)["SLURM_CONF"]
    users = UnixUsers(work / "homes")
    (work / "homes").mkdir(mode=0o755)
    hubs: list[Hub] = []
    jobs: list[str] = []
    try:
        python = ensure_user_env()
        ensure_batchspawner(python)
        ensure_chp()
        name = users.add(f"bench{os.getpid() % 100000}")
        for kind in ("ctrlstack", "batchspawner"):
            (work / kind).mkdir()
            cfg = BATCHSPAWNER.format(userbin=python.parent) if kind == "batchspawner" else ""
            hub = Hub(
                root=work / kind,
                slurm_conf=os.environ["SLURM_CONF"],
                user_python=python,
                spawner_config=cfg,
            )
            hub.start(timeout=120)
            hub.api("POST", "/hub/api/users", {"usernames": [name]})
            hubs.append(hub)
        times: dict[str, list[float]] = {"ctrlstack": [], "batchspawner": []}
        for i in range(args.repeats):
            order = hubs if i % 2 == 0 else hubs[::-1]
            for hub in order:
                kind = "ctrlstack" if hub is hubs[0] else "batchspawner"
                times[kind].append(spawn_to_ready(hub, name))
                print(f"{kind:12s} spawn-to-ready {times[kind][-1]:6.2f} s", flush=True)
        med = {k: statistics.median(v) for k, v in times.items()}
        ratio = med["ctrlstack"] / med["batchspawner"]
        for hub in hubs:
            hub.stop()
        hubs.clear()

        for i in range(args.users):
            out = _proc.run(
                [
                    "sbatch",
                    "--parsable",
                    "--mem=10M",
                    f"--job-name=bench{i}",
                    f"--output={work}/poll-%j.out",
                    "--wrap",
                    "sleep 300",
                ]
            )
            jobs.append(out.stdout.strip().split(";")[0])
        path, count = counting_path(work)
        calls = {
            kind: asyncio.run(count_polls(kind, jobs, path, count, 2.0))
            for kind in ("ctrlstack", "batchspawner")
        }
        print(
            json.dumps(
                {
                    "spawn_to_ready_s": times,
                    "median_s": med,
                    "ratio_ctrlstack_over_batchspawner": round(ratio, 3),
                    "squeue_calls_per_period": {k: v / 3 for k, v in calls.items()},
                    "users": args.users,
                },
                indent=2,
            )
        )
    finally:
        for hub in hubs:
            hub.stop()
        if jobs:
            _proc.run(["scancel", *jobs], check=False)
        _proc.run([*script, "down", "--state", str(state)], timeout=300, check=False)
        users.remove_all()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
