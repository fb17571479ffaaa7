"""``StackSpawner``: each user's JupyterLab as a pinned Slurm job, configured with traitlets.

What it adds to JupyterHub's :class:`~jupyterhub.spawner.Spawner` (which it extends, not
replaces: the hub still owns tokens, OAuth, routes, timeouts and ``poll_interval``):

* the options form from the site's ctrlstack profiles (:mod:`.form`), validated server-side,
  per-field errors as HTTP 400;
* the job script from the Slurm backend's machinery (:mod:`ctrlstack.deploy.batch`), submitted as
  the user through an argv prefix (``setpriv``/``sudo``/``sbatch --uid``), never a shell string;
  the token travels in sbatch's environment, not in the script;
* the port rendezvous over :mod:`.handlers`; progress messages; a job that ends before its
  server answers fails the spawn at once with the log's tail;
* ``poll`` reading :class:`.status.StatusService` (one ``squeue`` for the whole hub);
  ``get_state``/``load_state`` so a restarted hub re-attaches to its jobs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import pwd
import re
import sys
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

from jupyterhub.spawner import Spawner
from jupyterhub.utils import url_path_join
from tornado import web
from tornado.httpclient import AsyncHTTPClient, HTTPClientError
from traitlets import Bool, Dict, Float, Integer, List, Unicode, default

from ctrlstack import _proc
from ctrlstack.deploy.batch import render_script, slurm
from ctrlstack.deploy.batch.options import BatchOptions, format_walltime

from .form import FormError, JobRequest, Limits, ProfileChoice, render_form, validate
from .status import StatusService

__all__ = ["SpawnFailed", "StackSpawner"]

#: States in which the job still runs (or will): the server is kept.
ALIVE = frozenset({"PENDING", "RUNNING", "UNKNOWN"})
TAIL_LINES = 20


_RESOLVED: dict[str, tuple[float, BatchOptions]] = {}
RESOLVE_TTL = 60.0


def _resolved(profile: str) -> BatchOptions:
    """The profile's batch options, re-read at most once a minute.

    Resolving validates the whole site configuration (JSON Schema), which costs seconds on a
    loaded login node; a spawn must not pay that each time, and a site's edits still show
    within a minute.
    """
    from ctrlstack import config
    from ctrlstack.deploy.batch.options import resolve

    now = time.monotonic()
    hit = _RESOLVED.get(profile)
    if hit is None or now - hit[0] > RESOLVE_TTL:
        hit = _RESOLVED[profile] = (now, resolve(config.get_profile(profile), cluster_name="hub"))
    return hit[1]


class SpawnFailed(RuntimeError):
    """A spawn failure with a message JupyterHub shows as is (REST ``message`` and spawn page)."""

    def __init__(self, message: str):
        super().__init__(message)
        self.jupyterhub_message = message


def _tail(path: str, lines: int = TAIL_LINES) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 16384))
            text = fh.read().decode(errors="replace")
    except OSError as exc:
        return f"(no log at {path}: {exc.strerror})"
    return "\n".join(text.splitlines()[-lines:])


class StackSpawner(Spawner):
    """Spawn each user's server as a Slurm job shaped by a ctrlstack profile."""

    # ------------------------------------------------------------------ configuration
    profiles = List(
        Unicode(),
        help="""Names of the ctrlstack profiles offered on the form (backend ``slurm``).

        Empty: every Slurm profile of the site's ctrlstack configuration.  A profile gives the
        defaults (partition, CPUs, memory, walltime) and the pinning policy of the server.
        """,
    ).tag(config=True)

    kernels = List(
        Unicode(),
        default_value=["python3"],
        help="Stacks (kernel names) offered on the form; the first is the default.",
    ).tag(config=True)

    default_limits = Dict(
        default_value={"cores": 4, "memory": "8G", "gpus": 0, "walltime": "08:00:00"},
        help="""Upper bounds for users in none of ``group_limits``' groups.

        Keys: ``cores``, ``memory`` (``"8G"``), ``gpus``, ``walltime`` (``[D-]HH:MM:SS``),
        ``partitions`` (list; empty = any).
        """,
    ).tag(config=True)

    group_limits = Dict(
        help="""Upper bounds per JupyterHub group, same keys as ``default_limits``.

        A user in several groups gets the largest bound of each.  Example::

            c.StackSpawner.group_limits = {"gpu-users": {"gpus": 2, "cores": 16}}
        """,
    ).tag(config=True)

    submit_prefix = List(
        Unicode(),
        help="""argv put before ``sbatch`` and ``scancel`` to act as the user — never a shell string.

        Each item may use ``{username}``, ``{uid}``, ``{gid}``, ``{home}``.  Examples:
        ``["sudo", "-E", "-u", "{username}"]`` (``-E``: the job's environment travels in
        sbatch's environment), ``["setpriv", "--reuid={uid}", "--regid={gid}",
        "--init-groups"]`` (keeps the environment).  Empty: the hub's own user submits; combine
        with ``sbatch_uid = True`` when the hub runs as root.
        """,
    ).tag(config=True)

    sbatch_uid = Bool(
        False,
        help="Pass ``--uid``/``--gid`` of the user to sbatch (the hub runs as root).",
    ).tag(config=True)

    job_python = Unicode(
        sys.executable,
        help="""The Python inside the job: must be executable by the user and have jupyterhub
        and jupyter_server (and ctrlstack's JupyterLab extension, when installed, is loaded by
        the server as any extension).  ctrlstack itself must be importable (its ``hub`` wrapper
        needs the standard library only).""",
    ).tag(config=True)

    server_cmd = List(
        Unicode(),
        help="The single-user server argv; default ``[job_python, -m, jupyterhub.singleuser]``.",
    ).tag(config=True)

    server_ip = Unicode(
        "",
        help="""Address the server listens on in the job (where the proxy reaches it).

        Empty: the address of the node's host name.  Never 0.0.0.0.""",
    ).tag(config=True)

    log_directory = Unicode(
        "{home}",
        help="Directory of the job's output file (``{home}``, ``{username}``); must exist.",
    ).tag(config=True)

    job_env_keep = List(
        Unicode(),
        default_value=["PATH", "LANG", "LC_ALL", "PYTHONPATH", "SLURM_CONF", "VIRTUAL_ENV"],
        help="""Variables of the hub's environment passed into the job.

        JupyterHub 6 keeps almost nothing by default (``Spawner.env_keep``), which is what made
        batchspawner's jobs fail to find their own executables.""",
    ).tag(config=True)

    slurm_env = Dict(
        help="""Environment of the hub's Slurm commands (sbatch, squeue, scancel).

        Default: the hub's ``PATH``, ``SLURM_CONF`` and ``LANG``.""",
    ).tag(config=True)

    status_period = Float(
        10.0, help="Seconds between the hub-wide squeue calls (one for all users)."
    ).tag(config=True)
    status_jitter = Float(0.1, help="Random ± fraction of status_period.").tag(config=True)
    start_poll_period = Float(
        0.5, help="squeue period while any server is starting (still one call for all)."
    ).tag(config=True)
    missing_grace = Float(
        30.0,
        help="Seconds a job may be missing from squeue's answer before it counts as ended.",
    ).tag(config=True)
    walltime_warning = Float(
        600.0, help="Warn (hub log, server state) this many seconds before the walltime ends."
    ).tag(config=True)
    extra_directives = List(
        Unicode(), help="More ``#SBATCH`` options for every server job (admin only)."
    ).tag(config=True)

    # ------------------------------------------------------------------ state
    job_id = Unicode("")
    job_ip = Unicode("")
    job_port = Integer(0)
    request = Dict()

    @default("options_form")
    def _options_form_default(self) -> Any:
        return lambda spawner: spawner.render_options_form()

    @default("apply_user_options")
    def _apply_user_options_default(self) -> Any:
        # JupyterHub's hook for user_options: errors here become HTTP 400 before start().
        return lambda spawner, options: spawner.job_request()

    @default("slurm_env")
    def _slurm_env_default(self) -> dict[str, str]:
        keep = ("PATH", "SLURM_CONF", "LANG")
        return {k: os.environ[k] for k in keep if k in os.environ}

    @default("env_keep")
    def _env_keep_default(self) -> list[str]:
        return ["JUPYTERHUB_SINGLEUSER_APP"]

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self._events: list[dict[str, Any]] = []
        self._new_event = asyncio.Event()
        self._address: asyncio.Future[tuple[str, int]] | None = None
        self._warned_end = False
        self._form_error: FormError | None = None

    # ------------------------------------------------------------------ form
    def choices(self) -> list[ProfileChoice]:
        """The offered profiles, resolved from the site's ctrlstack configuration."""
        from ctrlstack import config

        names = list(self.profiles) or [
            n for n in config.profile_names() if config.get_profile(n).backend == "slurm"
        ]
        out = []
        for name in names:
            opts = _resolved(name)
            out.append(
                ProfileChoice(
                    name=name,
                    partition=opts.queue,
                    cores=opts.cores,
                    memory_mb=opts.memory_mb,
                    walltime=opts.walltime,
                    policy=opts.policy,
                )
            )
        return out

    def limits(self) -> Limits:
        base = Limits.from_mapping(self.default_limits, Limits())
        groups = [getattr(g, "name", g) for g in getattr(self.user, "groups", [])]
        return Limits.for_groups(groups, self.group_limits, base)

    def render_options_form(self) -> str:
        error, self._form_error = self._form_error, None
        return render_form(self.choices(), self.limits(), list(self.kernels), error=error)

    def options_from_form(self, formdata: Mapping[str, list[str]]) -> dict[str, Any]:
        """Form lists -> scalars; validation happens in :meth:`job_request` (400 per field)."""
        return {
            k: v[0] if isinstance(v, list) and len(v) == 1 else v
            for k, v in formdata.items()
            if not k.startswith("_")  # _xsrf: the hub's, not an option
        }

    def job_request(self) -> JobRequest:
        """The validated ``user_options``; HTTP 400 naming the field otherwise."""
        try:
            return validate(self.user_options or {}, self.choices(), self.limits(), self.kernels)
        except FormError as exc:
            self._form_error = exc  # the re-rendered form marks the field
            error = web.HTTPError(400, "%s", str(exc))
            error.jupyterhub_message = str(exc)  # type: ignore[attr-defined]
            raise error from None

    # ------------------------------------------------------------------ job
    def _account(self) -> dict[str, Any]:
        try:
            pw = pwd.getpwnam(self.user.name)
        except KeyError:
            raise SpawnFailed(f"user {self.user.name!r} has no Unix account here") from None
        return {"username": pw.pw_name, "uid": pw.pw_uid, "gid": pw.pw_gid, "home": pw.pw_dir}

    def _prefix(self, account: Mapping[str, Any]) -> list[str]:
        return [item.format(**account) for item in self.submit_prefix]

    def submit_argv(self, account: Mapping[str, Any]) -> list[str]:
        """``<prefix> sbatch [--uid --gid] --parsable``: the script goes on stdin.

        So nothing of it (or of the token, which is in sbatch's environment) lands in a file;
        ``slurm.sbatch_argv()`` wants a path, hence the words here.  Every item is one argv
        word: a user name with spaces or ``;`` stays one word, no shell ever reads it.
        """
        argv = ["sbatch", "--parsable"]
        if self.sbatch_uid:
            argv[1:1] = [f"--uid={account['uid']}", f"--gid={account['gid']}"]
        return [*self._prefix(account), *argv]

    def _job_name(self) -> str:
        name = re.sub(r"[^A-Za-z0-9_.-]", "-", self.user.name)
        return f"jupyterhub-{name}" + (f"-{self.name}" if self.name else "")

    def _log_dir(self, account: Mapping[str, Any]) -> str:
        return self.log_directory.format(**account)

    def job_script(self, req: JobRequest, account: Mapping[str, Any]) -> str:
        """The script sbatch reads: profile directives + the rendezvous wrapper's argv."""
        opts = _resolved(req.profile)
        extra = [*opts.extra_directives, *self.extra_directives, f"--chdir={account['home']}"]
        if req.gpus:
            extra.append(f"--gres=gpu:{req.gpus}")
        opts = dataclasses.replace(
            opts,
            queue=req.partition,
            cores=req.cores,
            memory=req.memory_mb * 2**20,
            walltime=req.walltime,
            job_name=self._job_name(),
            extra_directives=tuple(extra),
        )
        server = list(self.server_cmd) or [self.job_python, "-m", "jupyterhub.singleuser"]
        command = [
            self.job_python,
            "-m",
            "ctrlstack.hub.singleuser",
            "--ip",
            self.server_ip,
            "--cores",
            str(req.cores),
            "--policy",
            req.policy,
            "--walltime",
            str(req.walltime),
            "--warning",
            f"{self.walltime_warning:.0f}",
            "--",
            *server,
            *self.get_args(),
        ]
        return render_script(
            directive_prefix="#SBATCH",
            directives=slurm.directives(opts, log_directory=self._log_dir(account)),
            skip=opts.skip_directives,
            prologue=opts.prologue,
            modules=opts.modules,
            command=command,
            cluster=self._job_name(),
            workers=0,
        )

    def job_environment(self) -> dict[str, str]:
        """What the job gets (through sbatch's environment: never written into the script)."""
        env = {k: os.environ[k] for k in self.job_env_keep if k in os.environ}
        env.update(self.get_env())
        env["CTRLSTACK_HUB_RENDEZVOUS_URL"] = url_path_join(
            self.hub.api_url, "ctrlstack/rendezvous", self.user.escaped_name, self.name or ""
        )
        return env

    def _service(self) -> StatusService:
        return StatusService.shared(
            env=self.slurm_env,
            period=self.status_period,
            jitter=self.status_jitter,
            fast_period=self.start_poll_period,
            missing_grace=self.missing_grace,
        )

    async def _run(self, argv: list[str], env: Mapping[str, str], input: str | None = None) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            None, lambda: _proc.run(argv, env=env, timeout=30, check=False, input=input)
        )

    def _emit(self, message: str, progress: int | None = None) -> None:
        event: dict[str, Any] = {"message": message}
        if progress is not None:
            event["progress"] = progress
        self._events.append(event)
        self._new_event.set()
        self.log.info("%s: %s", self._log_name, message)

    def rendezvous(self, ip: str, port: int) -> bool:
        """Called by the rendezvous handler; False when not waiting for an address."""
        if self._address is None or self._address.done():
            return False
        self._address.set_result((ip, port))
        return True

    def job_end_time(self) -> float | None:
        """Slurm's end of the job (epoch seconds), None before squeue has told."""
        if not self.job_id:
            return None
        try:
            status = self._service().status(self.job_id)
        except RuntimeError:  # no event loop (get_state from a script): nothing known
            return None
        return None if status is None else status.end_time

    async def start(self) -> str:
        req = self.job_request()
        account = self._account()
        self._events = []
        self._emit("submitting the job to Slurm", 5)
        script = self.job_script(req, account)
        env = {**self.job_environment(), **self.slurm_env}
        env.update(HOME=account["home"], USER=account["username"], LOGNAME=account["username"])
        loop = asyncio.get_running_loop()
        self._address = loop.create_future()
        result = await self._run(self.submit_argv(account), env, input=script)
        if result.returncode != 0:
            why = slurm.is_rejection(result.stderr) or (result.stderr or result.stdout).strip()
            raise SpawnFailed(f"Slurm refused the server's job: {why}")
        self.job_id = slurm.parse_sbatch(result.stdout)
        self.request = req.to_dict()
        self.job_ip, self.job_port = "", 0
        log = slurm.log_path(self._log_dir(account), self._job_name(), self.job_id)
        self._emit(f"job {self.job_id} submitted ({req.cores} CPUs, {req.memory_mb} MiB)", 10)
        service = self._service()
        tracked = service.watch(self.job_id, urgent=True)
        try:
            ip, port = await self._wait_address(tracked, log)
            self.job_ip, self.job_port = ip, port
            self._emit(f"connecting to the server at {ip}:{port}", 80)
            await self._wait_http(ip, port, tracked, log)
        finally:
            service.calm(self.job_id)
        self._emit("server ready", 100)
        host = f"[{ip}]" if ":" in ip else ip
        return f"http://{host}:{port}"

    def _check_alive(self, status: Any, log: str) -> None:
        if status is not None and status.state not in ALIVE:
            why = f" ({status.reason})" if status.reason else ""
            raise SpawnFailed(
                f"job {self.job_id} ended {status.state}{why} before the server was up; "
                f"last lines of {log}:\n{_tail(log)}"
            )

    async def _wait_address(self, tracked: Any, log: str) -> tuple[str, int]:
        assert self._address is not None
        last = None
        while not self._address.done():
            tracked.changed.clear()
            changed = asyncio.ensure_future(tracked.changed.wait())
            await asyncio.wait({self._address, changed}, return_when=asyncio.FIRST_COMPLETED)
            changed.cancel()
            status = tracked.status
            if self._address.done():
                break
            self._check_alive(status, log)
            if status is None or (status.state, status.reason) == last:
                continue
            last = (status.state, status.reason)
            if status.state == "PENDING":
                when = (
                    time.strftime(
                        " — estimated start %H:%M:%S", time.localtime(status.start_estimate)
                    )
                    if status.start_estimate
                    else ""
                )
                self._emit(f"queued: {status.reason or 'waiting'}{when}", 20)
            elif status.state == "RUNNING":
                ends = (
                    time.strftime(" — walltime ends %H:%M:%S", time.localtime(status.end_time))
                    if status.end_time
                    else ""
                )
                self._emit(f"starting on {status.node or 'a node'}{ends}", 50)
        return self._address.result()

    async def _wait_http(self, ip: str, port: int, tracked: Any, log: str) -> None:
        """Wait until the server answers (so the hub's own check passes at once)."""
        host = f"[{ip}]" if ":" in ip else ip
        url = f"http://{host}:{port}{url_path_join(self.server.base_url, 'api')}"
        client = AsyncHTTPClient()
        while True:
            self._check_alive(tracked.status, log)
            try:
                await client.fetch(url, request_timeout=2, raise_error=False)
                return
            except (OSError, HTTPClientError):
                await asyncio.sleep(0.1)

    async def progress(self) -> AsyncIterator[dict[str, Any]]:
        sent = 0
        while True:
            while sent < len(self._events):
                yield self._events[sent]
                sent += 1
            if self._events and self._events[-1].get("progress") == 100:
                return
            self._new_event.clear()
            try:
                await asyncio.wait_for(self._new_event.wait(), 1.0)
            except TimeoutError:
                if not self._spawn_pending:
                    return

    # ------------------------------------------------------------------ poll / stop / state
    async def poll(self) -> int | None:
        if not self.job_id:
            return 0
        service = self._service()
        status = service.status(self.job_id) or await service.fresh(self.job_id)
        if status is None or status.state in ALIVE:
            self._check_walltime(status)
            return None
        self.log.info(
            "%s: job %s is %s (%s)", self._log_name, self.job_id, status.state, status.reason
        )
        service.unwatch(self.job_id)
        return 0 if status.state == "COMPLETED" else 1

    def walltime_left(self) -> float | None:
        """Seconds until the job's walltime ends (None before Slurm tells)."""
        end = self.job_end_time()
        return None if end is None else end - time.time()

    def _check_walltime(self, status: Any) -> None:
        if status is None or status.end_time is None or self._warned_end:
            return
        left = status.end_time - time.time()
        if left <= self.walltime_warning:
            self._warned_end = True
            self.log.warning(
                "%s: job %s reaches its walltime in %s; the server will stop then",
                self._log_name,
                self.job_id,
                format_walltime(max(0, int(left))),
            )

    async def stop(self, now: bool = False) -> None:
        if not self.job_id:
            return
        try:
            account = self._account()
            prefix = self._prefix(account)
        except SpawnFailed:
            prefix = []
        try:
            result = await self._run([*prefix, *slurm.scancel_argv([self.job_id])], self.slurm_env)
        except _proc.CommandError as exc:  # timed out: the controller does not answer
            self.log.warning("scancel %s: %s", self.job_id, exc)
        else:
            if result.returncode != 0:
                self.log.warning("scancel %s: %s", self.job_id, result.stderr.strip())
        self._service().unwatch(self.job_id)

    def get_state(self) -> dict[str, Any]:
        state: dict[str, Any] = super().get_state()
        if self.job_id:
            state.update(
                job_id=self.job_id, ip=self.job_ip, port=self.job_port, request=self.request
            )
            end = self.job_end_time()
            if end is not None:  # shown to admins in the hub's REST (servers[...].state)
                state["end_time"] = end
        return state

    def load_state(self, state: Mapping[str, Any]) -> None:
        super().load_state(state)
        self.job_id = str(state.get("job_id", "") or "")
        self.job_ip = str(state.get("ip", "") or "")
        self.job_port = int(state.get("port", 0) or 0)
        self.request = dict(state.get("request") or {})

    def clear_state(self) -> None:
        super().clear_state()
        self.job_id, self.job_ip, self.job_port, self.request = "", "", 0, {}
