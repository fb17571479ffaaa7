"""Inside the Slurm job: pick a port, tell the hub, pin, then become the single-user server.

Run as ``python -m ctrlstack.hub.singleuser --ip IP --cores N --policy P -- <server argv>``.
Standard library only: the job's interpreter is the user's environment, which need not have
Dask or the rest of ctrlstack's dependencies.

Why a wrapper: the port is only known on the node.  It is reported to the hub over an
authenticated POST (the server's own API token, which the hub gave the job) carrying exactly two
fields, ``ip`` and ``port``; the hub's handler accepts nothing else.  The server then listens on
that address only (never 0.0.0.0).  The port is chosen by binding to port 0 and released just
before the server starts: a race with another process on the node is possible but rare, and the
hub then reports the server as not answering rather than connecting to a stranger (its token
check).  The hub's answer carries the job's walltime end, which the server's REST shows
(:mod:`.session`).  The server then runs in this very interpreter (``runpy``) when it is
``<this python> -m <module>``, saving a second interpreter start in the job.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["main", "pin_cpus"]

#: Thread-count variables set to the job's CPUs so kernels do not oversubscribe the node.
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


def free_port(ip: str) -> int:
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((ip, 0))
        return int(sock.getsockname()[1])


def pin_cpus(allowed: Sequence[int], cores: int, policy: str) -> list[int] | None:
    """The CPUs the server is pinned to: the first ``cores`` CPUs Slurm allows (None: no pin).

    ``policy`` ``none`` leaves the server unpinned; any other policy keeps it on a contiguous
    block of the job's CPUs, where Slurm's binding put the job.
    """
    if policy == "none" or not allowed:
        return None
    return sorted(allowed)[: max(1, cores)]


def lab_extension_config() -> str | None:
    """The directory that enables ctrlstack's server extension, when it can run here.

    A wheel install puts ``jupyter_server_config.d/ctrlstack.json`` under ``sys.prefix`` itself;
    a source checkout on ``PYTHONPATH`` has it in ``jupyter-config/``, which is added to
    ``JUPYTER_CONFIG_PATH`` — only when the extension's dependencies import in this
    environment, so a lean user environment still starts a plain server.
    """
    import importlib.util
    from pathlib import Path

    if any(importlib.util.find_spec(m) is None for m in ("distributed", "jupyter_server")):
        return None
    here = Path(__file__).resolve().parents[2] / "jupyter-config"
    return str(here) if (here / "jupyter_server_config.d" / "ctrlstack.json").exists() else None


def report(url: str, token: str, ip: str, port: int, timeout: float = 10.0) -> dict[str, Any]:
    """POST the address; the hub's answer (its ``end_time``: Slurm's, when already known)."""
    body = json.dumps({"ip": ip, "port": port}).encode()
    request = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={"Authorization": f"token {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        answer = json.loads(response.read() or b"{}")
    return answer if isinstance(answer, dict) else {}


def job_end(answer: Mapping[str, Any], started: float, walltime: float) -> float | None:
    """The job's end: the hub's (Slurm's ``EndTime``) or else our start + the walltime.

    The estimate errs late by the job's launch latency (under a second); Slurm's value also
    follows an admin's ``scontrol update TimeLimit`` made before the server started.
    """
    end = answer.get("end_time")
    if isinstance(end, int | float) and not isinstance(end, bool) and end > 0:
        return float(end)
    return started + walltime if walltime > 0 else None


def run_server(command: Sequence[str]) -> None:
    """Become the server: in this interpreter when it is ``<this python> -m module``.

    Saves a second interpreter start and site import in the job (part of spawn-to-ready);
    anything else is ``exec``'d.
    """
    if (
        len(command) >= 3
        and command[1] == "-m"
        and os.path.realpath(command[0]) == os.path.realpath(sys.executable)
    ):
        import runpy

        sys.argv = [command[2], *command[3:]]
        runpy.run_module(command[2], run_name="__main__", alter_sys=True)
        return
    os.execvp(command[0], list(command))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="ctrlstack.hub.singleuser")
    parser.add_argument("--ip", default="", help="address to listen on (default: this node's)")
    parser.add_argument("--cores", type=int, default=1)
    parser.add_argument("--policy", default="core")
    parser.add_argument("--walltime", type=float, default=0.0, help="seconds requested")
    parser.add_argument("--warning", type=float, default=0.0, help="warn this long before end")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = [c for c in args.command if c != "--"] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("the server command is missing after --")
    started = time.time()
    ip = args.ip or socket.gethostbyname(socket.gethostname())
    env = os.environ
    url = env["CTRLSTACK_HUB_RENDEZVOUS_URL"]
    token = env["JUPYTERHUB_API_TOKEN"]
    cpus = pin_cpus(sorted(os.sched_getaffinity(0)), args.cores, args.policy)
    if cpus is not None:
        os.sched_setaffinity(0, cpus)
    extension = lab_extension_config()
    if extension:
        paths = [extension, *filter(None, env.get("JUPYTER_CONFIG_PATH", "").split(os.pathsep))]
        env["JUPYTER_CONFIG_PATH"] = os.pathsep.join(paths)
    for name in THREAD_VARS:
        env.setdefault(name, str(args.cores))
    port = free_port(ip)
    end = job_end(report(url, token, ip, port), started, args.walltime)
    if end is not None:
        env["CTRLSTACK_JOB_END_TIME"] = f"{end:.0f}"
        env["CTRLSTACK_WALLTIME_WARNING"] = f"{args.warning:.0f}"
    host = f"[{ip}]" if ":" in ip else ip
    env["JUPYTERHUB_SERVICE_URL"] = (
        f"http://{host}:{port}{env.get('JUPYTERHUB_SERVICE_PREFIX', '/')}"
    )
    print(
        f"ctrlstack: server on {ip}:{port}, CPUs {cpus or 'unpinned'}", file=sys.stderr, flush=True
    )
    run_server([*command, f"--ServerApp.ip={ip}", f"--ServerApp.port={port}"])


if __name__ == "__main__":
    main()
