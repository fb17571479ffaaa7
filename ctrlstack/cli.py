"""The ``ctrlstack`` command: the same API as ``import ctrlstack``, for terminals and batch scripts.

Every command is a thin shell over :mod:`ctrlstack.api` or :mod:`ctrlstack.topology`.  Errors
are reported in one place, the group's :meth:`_Main.invoke`, from the one error table
(:func:`ctrlstack.errors.classify`): errors the user can fix print one ``error:`` line and exit
with status 2, failures of the system exit with status 1; no traceback reaches the user unless
``--debug`` is given.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

import click

from ctrlstack import __version__

# Exit status for errors the user can fix by changing the command line or the profile.
USAGE_ERROR = 2

#: Largest worker count a command accepts (bounds input before it reaches Dask's wire format).
MAX_WORKERS = 100_000


def _report(exc: BaseException, debug: bool) -> int:
    """Print ``exc`` as the error table says; return its exit status."""
    from ctrlstack.errors import classify

    info = classify(exc)
    if debug:
        traceback.print_exception(exc)
    click.echo(f"error: {info.message}", err=True)
    return info.exit_code


class _Main(click.Group):
    """The command group, with the single error boundary of the CLI."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except Exception as exc:  # noqa: BLE001 - every error becomes one line and a status
            ctx.exit(_report(exc, bool(ctx.params.get("debug"))))


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False, default=str))


def _machine(sysfs_root: str | None, hwloc_xml: str | None, cpus: str | None) -> Any:
    """The machine to show or plan on: live, a sysfs tree, or an hwloc XML; optionally restricted."""
    from ctrlstack.topology.cpuset import parse_cpulist

    if sysfs_root and hwloc_xml:
        raise click.UsageError("give at most one of --sysfs-root and --hwloc-xml")
    if hwloc_xml:
        from ctrlstack.topology.hwloc import from_hwloc_xml

        machine = from_hwloc_xml(hwloc_xml)
    elif sysfs_root:
        from ctrlstack.topology.sysfs import from_sysfs

        machine = from_sysfs(sysfs_root)
    else:
        from ctrlstack.topology.discover import discover

        machine = discover()
    if cpus:
        try:
            machine = machine.restrict(parse_cpulist(cpus))
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--cpus") from None
    return machine


_source_options: list[Callable[[Any], Any]] = [
    click.option(
        "--sysfs-root",
        type=click.Path(exists=True, file_okay=False),
        help="Read a captured sysfs tree instead of this machine.",
    ),
    click.option(
        "--hwloc-xml",
        type=click.Path(exists=True, dir_okay=False),
        help="Read an 'lstopo --of xml' file instead of this machine.",
    ),
    click.option(
        "--cpus", help="Pretend only these CPUs are allowed (e.g. a Slurm cpuset '0-15,64-79')."
    ),
]


def _with_source(f: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(_source_options):
        f = option(f)
    return f


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ctrlstack")
@click.option("--debug", is_flag=True, help="Show Python tracebacks of errors.")
def main(debug: bool) -> None:
    """ctrlstack: topology-pinned Dask clusters from notebooks, scripts and the shell."""


# ------------------------------------------------------------------------------------ topology
@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_with_source
def topology(
    as_json: bool, sysfs_root: str | None, hwloc_xml: str | None, cpus: str | None
) -> None:
    """Show packages → NUMA nodes → L3 (chiplet) domains → cores, with allowed CPUs marked."""
    from ctrlstack.topology.render import render_machine

    machine = _machine(sysfs_root, hwloc_xml, cpus)
    context = None
    if not (sysfs_root or hwloc_xml):
        from ctrlstack.topology.discover import job_context

        context = job_context()
    if as_json:
        data = machine.to_dict()
        if context:
            data["context"] = context
        _echo_json(data)
    else:
        click.echo(render_machine(machine, context=context))


@main.command("plan")
@click.option(
    "-w",
    "--workers",
    type=click.IntRange(min=1),
    help="Number of workers (default: as many as fit).",
)
@click.option(
    "-t",
    "--threads",
    type=click.IntRange(min=1),
    help="CPUs per worker (default: from the policy).",
)
@click.option(
    "-p",
    "--policy",
    type=click.Choice(["l3", "numa", "socket", "core", "none"]),
    default="l3",
    show_default=True,
)
@click.option(
    "--smt/--no-smt", default=False, show_default=True, help="Count SMT siblings as CPUs."
)
@click.option("--json", "as_json", is_flag=True)
@_with_source
def plan_cmd(
    workers: int | None, threads: int | None, policy: str, smt: bool, as_json: bool,
    sysfs_root: str | None, hwloc_xml: str | None, cpus: str | None,
) -> None:  # fmt: skip
    """Show which CPUs each worker would get here, or why they do not fit."""
    from ctrlstack.topology.plan import plan

    machine = _machine(sysfs_root, hwloc_xml, cpus)
    result = plan(machine, workers=workers, threads=threads, policy=policy, smt=smt)
    if as_json:
        _echo_json(result.to_dict())
    else:
        click.echo(result.render(machine))


# ------------------------------------------------------------------------------------ profiles
@main.command()
@click.option("--json", "as_json", is_flag=True)
def profiles(as_json: bool) -> None:
    """List the named profiles (package, site and user config merged).

    A broken profile does not hide the others: the good ones are listed, each broken one gets an
    ``error:`` line on stderr, and the exit status is 2 if any was broken.
    """
    from ctrlstack.config import get_profile, profile_names

    specs = []
    broken = []
    for name in profile_names():
        try:
            specs.append(get_profile(name))
        except ValueError as exc:  # ConfigError, or a spec the schema let through
            broken.append(str(exc))
    if as_json:
        _echo_json({s.profile: s.to_dict() for s in specs})
    else:
        for s in specs:
            click.echo(
                f"{s.profile:<16} backend={s.backend} workers={s.workers} threads={s.threads} "
                f"policy={s.policy}"
            )
    for message in broken:
        click.echo(f"error: {message}", err=True)
    if broken:
        sys.exit(USAGE_ERROR)


# ------------------------------------------------------------------------------------ lifecycle
_override_options: list[Callable[[Any], Any]] = [
    click.option(
        "-w", "--workers", type=click.IntRange(min=1), help="Override the profile's workers."
    ),
    click.option("-t", "--threads", type=click.IntRange(min=1), help="Override CPUs per worker."),
    click.option(
        "--task-threads", type=click.IntRange(min=1), help="Override Dask task threads per worker."
    ),
    click.option("-p", "--policy", type=click.Choice(["l3", "numa", "socket", "core", "none"])),
    click.option("--smt/--no-smt", default=None),
]


def _with_overrides(f: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(_override_options):
        f = option(f)
    return f


def _overrides(**kwargs: Any) -> dict[str, Any]:
    return {k: v for k, v in kwargs.items() if v is not None}


@main.command()
@click.argument("profile", required=False)
@click.option("-n", "--name", help="Cluster name (default: <profile>-<random>).")
@_with_overrides
@click.option(
    "--wait",
    type=click.IntRange(min=1),
    help="Return once N workers are connected; a job that dies first fails the launch at once "
    "(the cluster is stopped).",
)
@click.option(
    "--wait-timeout",
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds --wait waits (default: ctrlstack.launch-timeout); then the cluster is stopped.",
)
@click.option("--json", "as_json", is_flag=True)
def launch(
    profile: str | None,
    name: str | None,
    wait: int | None,
    wait_timeout: float | None,
    as_json: bool,
    **overrides: Any,
) -> None:
    """Start a cluster from PROFILE (default profile if omitted); it outlives this command."""
    from ctrlstack import api

    cluster = api.launch(
        profile, name=name, wait=wait, wait_timeout=wait_timeout, **_overrides(**overrides)
    )
    status = cluster.status()
    if as_json:
        _echo_json(status.to_dict())
        return
    click.echo(f"cluster {status.name} running at {status.address}")
    if status.dashboard:
        click.echo(f"dashboard {status.dashboard}")
    click.echo(
        f"{status.requested} workers × {status.threads} CPUs (policy {status.policy}); "
        f"connect with ctrlstack.connect({status.name!r})"
    )


@main.command("list")
@click.option(
    "--json", "as_json", is_flag=True, help="Clusters as JSON ('ctrlstack runs --json': runs)."
)
def list_cmd(as_json: bool) -> None:
    """Every cluster of this user, from any door and any host sharing this home, with its state,
    then the submitted runs ('ctrlstack submit') with theirs and their output path.

    Broken records are listed with their path and what is wrong; 'ctrlstack forget NAME'
    removes one.
    """
    from ctrlstack import api
    from ctrlstack.cli_stacks import current_runs, run_lines

    statuses = api.clusters()
    if as_json:
        _echo_json([s.to_dict() for s in statuses])
        return
    if not statuses:
        click.echo("no clusters")
    else:
        click.echo(
            f"{'NAME':<20} {'PROFILE':<10} {'STATE':<11} {'WORKERS':>7}  {'AGE':>6}  "
            f"{'HOST':<12} ADDRESS"
        )
    for s in statuses:
        age = _age(time.time() - s.created) if s.created else "-"
        click.echo(
            f"{s.name:<20} {s.profile:<10} {s.state:<11} {s.requested:>7}  {age:>6}  "
            f"{(s.host or '-'):<12} {s.address or '-'}"
        )
        if s.state in ("broken", "unreachable", "dead") and s.message:
            click.echo(f"  {s.message}")
    runs = current_runs()
    if runs:
        click.echo("")
        for line in run_lines(runs):
            click.echo(line)


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


@main.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
def status(name: str, as_json: bool) -> None:
    """Live status of cluster NAME: workers with their CPUs, jobs, adaptive range."""
    from ctrlstack import api

    data = api.get(name).status()
    if as_json:
        _echo_json(data.to_dict())
        return
    limit = f" (max {data.max_workers})" if data.max_workers is not None else ""
    click.echo(
        f"{data.name}: {data.state}, {data.connected}/{data.requested} workers up{limit}, "
        f"{data.threads} CPUs each, policy {data.policy}, scheduler {data.address}"
    )
    if data.adapt:
        click.echo(f"adaptive: {data.adapt.minimum}..{data.adapt.maximum} workers")
    for w in data.workers:
        job = f" job {w.job_id}" if w.job_id else ""
        click.echo(f"  worker {w.name}: {w.state}, CPUs {w.cpus or 'unpinned'}{job}")
    for j in data.jobs:
        reason = f" ({j.reason})" if j.reason else ""
        click.echo(f"  job {j.job_id}: {j.state}{reason}{' on ' + j.node if j.node else ''}")


@main.command()
@click.argument("name")
@click.argument("n", type=click.IntRange(min=0, max=MAX_WORKERS))
def scale(name: str, n: int) -> None:
    """Scale cluster NAME to N workers (stops adaptive scaling)."""
    from ctrlstack import api

    data = api.get(name).scale(n)
    click.echo(f"{name}: scaling to {data.requested} workers")


@main.command()
@click.argument("name")
@click.option(
    "--min", "minimum", type=click.IntRange(min=0, max=MAX_WORKERS), default=0, show_default=True
)
@click.option(
    "--max", "maximum", type=click.IntRange(min=0, max=MAX_WORKERS), help="Default: as many as fit."
)
def adapt(name: str, minimum: int, maximum: int | None) -> None:
    """Let cluster NAME scale itself between --min and --max workers."""
    from ctrlstack import api

    data = api.get(name).adapt(minimum=minimum, maximum=maximum)
    assert data.adapt is not None
    click.echo(f"{name}: adaptive between {data.adapt.minimum} and {data.adapt.maximum} workers")


@main.command()
@click.argument("names", nargs=-1)
@click.option("--all", "stop_all", is_flag=True, help="Stop every cluster of this user.")
@click.pass_context
def stop(ctx: click.Context, names: tuple[str, ...], stop_all: bool) -> None:
    """Stop cluster(s) NAMES and everything they started.

    Every named cluster is tried even if an earlier one fails; the exit status reports the worst.
    """
    from ctrlstack import api

    if not names and not stop_all:
        raise click.UsageError("name a cluster or pass --all")
    if stop_all:
        names = tuple(
            s.name for s in api.clusters() if s.state in ("starting", "running", "stopping")
        )
        if not names:
            click.echo("no clusters")
            return
    worst = 0
    debug = bool(ctx.find_root().params.get("debug"))
    for name in names:
        try:
            api.stop(name)
        except Exception as exc:  # noqa: BLE001 - report, go on with the next name
            worst = max(worst, _report(exc, debug))
            continue
        click.echo(f"stopped {name}")
    if worst:
        ctx.exit(worst)


@main.command()
@click.argument("name")
def forget(name: str) -> None:
    """Remove the record of cluster NAME when it is broken, dead or unreachable.

    Nothing is signalled or cancelled; a cluster that provably runs is refused (use stop).
    """
    from ctrlstack import api

    status = api.forget(name)
    click.echo(f"forgot {name} ({status.state})")


@main.command()
@click.argument("name")
@click.option(
    "-n", "--lines", type=click.IntRange(min=1), default=200, show_default=True,
    help="How many lines of the end of the log.",
)  # fmt: skip
@click.option("--job", "job_id", help="A batch job's log instead (see 'ctrlstack status NAME').")
def logs(name: str, lines: int, job_id: str | None) -> None:
    """Print the end of cluster NAME's supervisor log (also after the cluster stopped), or of
    one of its batch jobs' logs; NAME may also be a run id ('ctrlstack runs'): its log."""
    from ctrlstack import api
    from ctrlstack.cli_stacks import run_log
    from ctrlstack.runs.record import is_run_id, runs_dir

    if job_id is None and is_run_id(name) and (runs_dir() / f"{name}.json").exists():
        click.echo(run_log(name, lines), nl=False)
        return

    click.echo(api.logs(name, lines=lines, job=job_id), nl=False)


@main.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
def crowding(name: str, as_json: bool) -> None:
    """Where the threads of cluster NAME's workers really run, per L3 domain."""
    from ctrlstack import api

    client = api.connect(name)
    try:
        report = api.crowding(client)
    finally:
        client.close()
    if as_json:
        _echo_json(report.to_dict())
    else:
        click.echo(str(report))


@main.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("--profile", help="Profile for the cluster (default profile if omitted).")
@_with_overrides
@click.argument("script", type=click.Path(exists=True, dir_okay=False))
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def run(profile: str | None, script: str, args: tuple[str, ...], **overrides: Any) -> None:
    """Run SCRIPT against a fresh cluster and stop the cluster afterwards.

    The script finds the cluster through DASK_SCHEDULER_ADDRESS and the cluster's TLS settings
    in DASK_DISTRIBUTED__COMM__TLS__* variables, so a plain ``distributed.Client()`` in it
    connects; CTRLSTACK_CLUSTER holds the cluster's name.  If this command is killed, the script
    gets SIGTERM (and the cluster stops by itself).
    """
    import os
    import signal

    from ctrlstack import _proc, api

    name = f"run-{os.getpid()}"
    with api.cluster(profile, name=name, **_overrides(**overrides)):
        handle = api.get(name)
        env = {**os.environ, **handle.dask_env()}
        # stdin=None: the script reads our stdin (`ctrlstack run job.py < data` works).
        child = _proc.spawn(
            [sys.executable, script, *args], env=env, stdin=None, stdout=None, stderr=None,
            parent_death_signal=signal.SIGTERM,
        )  # fmt: skip
        code = _wait_script(child, attach=handle.attach)
    sys.exit(code)


def _wait_script(
    child: Any, grace: float = 10.0, attach: Callable[[int], None] | None = None
) -> int:
    """Wait for ``ctrlstack run``'s script; its exit status in shell convention (128 + signal).

    If we are interrupted (SIGTERM turned into SystemExit, Ctrl-C, anything), the script gets
    SIGTERM, ``grace`` seconds, then SIGKILL, and is reaped before the cluster is stopped: it
    must neither outlive its cluster nor keep running against a stopped one.
    """
    import signal
    import subprocess

    try:
        if attach is not None:
            # If we are killed outright, the kernel sends the script SIGTERM (parent-death
            # signal); the supervisor kills it if it still runs after a grace period.
            try:
                attach(child.pid)
            except Exception:
                # A script that has already exited (a zombie until we reap it) cannot be
                # attached, and needs no guard: take its status.  One that still runs must
                # not run unguarded: stop it (below) and report why.
                if child.poll() is None:
                    raise
        code: int = child.wait()
    except BaseException:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
            try:
                child.wait(grace)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait(grace)
        raise
    # Popen reports "killed by signal N" as -N; sys.exit(-N) would exit with 256 - N.
    return 128 - code if code < 0 else code


@main.group()
def ops() -> None:
    """The Numba kernels of ctrlstack.ops."""


@ops.command("warm")
@click.argument("names", nargs=-1)
def ops_warm(names: tuple[str, ...]) -> None:
    """Compile the kernels behind op NAMES (default: all) into Numba's on-disk cache, so the
    first call in a fresh worker only loads them (run it once per stack/machine kind)."""
    import time as _time

    from ctrlstack.ops import warm

    start = _time.perf_counter()
    done = warm(names or None)
    click.echo(f"warmed {len(done)} ops in {_time.perf_counter() - start:.1f} s: {', '.join(done)}")


def _register_commands() -> None:
    """Commands kept in their own modules: batch scripts and the node-side worker
    (docs/batch.md); stacks, kernels and runs (docs/stacks.md)."""
    from ctrlstack import cli_stacks
    from ctrlstack.cli_batch import script, worker

    for command in (
        script,
        worker,
        cli_stacks.stack,
        cli_stacks.kernels,
        cli_stacks.submit,
        cli_stacks.runs,
    ):
        main.add_command(command)


_register_commands()

if __name__ == "__main__":  # pragma: no cover
    main()
