"""The ``ctrlstack`` command: the same API as ``import ctrlstack``, for terminals and batch scripts.

Every command is a thin shell over :mod:`ctrlstack.api` or :mod:`ctrlstack.topology`; errors the
user can fix (bad profile field, plan that does not fit, unknown cluster) print one clear line
and exit with status 2, failures of the system exit with status 1.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import click

from ctrlstack import __version__

# Exit status for errors the user can fix by changing the command line or the profile.
USAGE_ERROR = 2


@contextmanager
def _errors() -> Iterator[None]:
    """Turn ctrlstack's own exceptions into one-line messages with the right exit status."""
    from ctrlstack.api import ClusterNotFoundError
    from ctrlstack.config import ConfigError
    from ctrlstack.deploy.control import ClusterUnreachableError
    from ctrlstack.deploy.launcher import LaunchError
    from ctrlstack.deploy.registry import NameTakenError
    from ctrlstack.topology.plan import PlanError

    try:
        yield
    except (ConfigError, PlanError, NameTakenError, ClusterNotFoundError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(USAGE_ERROR)
    except ValueError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(USAGE_ERROR)
    except (LaunchError, ClusterUnreachableError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)


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


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ctrlstack")
def main() -> None:
    """ctrlstack: topology-pinned Dask clusters from notebooks, scripts and the shell."""
    # A malformed Dask config file fails `import ctrlstack.config` (Dask reads every file while it
    # is imported), and the commands import it before their _errors() block: report it here.
    from ctrlstack._config_check import ConfigError

    try:
        import ctrlstack.config  # noqa: F401
    except ConfigError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(USAGE_ERROR)


# ------------------------------------------------------------------------------------ topology
@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_with_source
def topology(
    as_json: bool, sysfs_root: str | None, hwloc_xml: str | None, cpus: str | None
) -> None:
    """Show packages → NUMA nodes → L3 (chiplet) domains → cores, with allowed CPUs marked."""
    from ctrlstack.topology.render import render_machine

    with _errors():
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

    with _errors():
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

    with _errors():
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
@click.option("--json", "as_json", is_flag=True)
def launch(profile: str | None, name: str | None, as_json: bool, **overrides: Any) -> None:
    """Start a cluster from PROFILE (default profile if omitted); it outlives this command."""
    from ctrlstack import api

    with _errors():
        handle = api.launch(profile, name=name, **_overrides(**overrides))
        status = handle.status()
    if as_json:
        _echo_json(status)
        return
    click.echo(f"cluster {status['name']} running at {status['address']}")
    if status.get("dashboard"):
        click.echo(f"dashboard {status['dashboard']}")
    click.echo(
        f"{status['requested']} workers × {status['threads']} CPUs (policy {status['policy']}); "
        f"connect with ctrlstack.connect({status['name']!r})"
    )


@main.command("list")
@click.option("--json", "as_json", is_flag=True)
def list_cmd(as_json: bool) -> None:
    """Every cluster of this user, from any door, with its state."""
    from ctrlstack import api

    with _errors():
        infos = api.clusters()
    if as_json:
        _echo_json([i.to_dict() for i in infos])
        return
    if not infos:
        click.echo("no clusters")
        return
    click.echo(f"{'NAME':<20} {'PROFILE':<10} {'STATE':<9} {'WORKERS':>7}  {'AGE':>7}  ADDRESS")
    for i in infos:
        age = _age(time.time() - i.created)
        click.echo(
            f"{i.name:<20} {i.profile:<10} {i.state:<9} {i.workers:>7}  {age:>7}  {i.address or '-'}"
        )


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
    """Live status of cluster NAME."""
    from ctrlstack import api

    with _errors():
        data = api.get(name).status()
    if as_json:
        _echo_json(data)
        return
    click.echo(
        f"{data['name']}: {data['workers']}/{data['requested']} workers up (max {data['max_workers']}), "
        f"{data['threads']} CPUs each, policy {data['policy']}, scheduler {data['address']}"
    )
    if data.get("adapt"):
        click.echo(f"adaptive: {data['adapt']['minimum']}..{data['adapt']['maximum']} workers")
    for worker, cpus in data["slots"].items():
        click.echo(f"  worker {worker}: CPUs {cpus or 'unpinned'}")


@main.command()
@click.argument("name")
@click.argument("n", type=click.IntRange(min=0))
def scale(name: str, n: int) -> None:
    """Scale cluster NAME to N workers (stops adaptive scaling)."""
    from ctrlstack import api

    with _errors():
        data = api.get(name).scale(n)
    click.echo(f"{name}: scaling to {data['requested']} workers")


@main.command()
@click.argument("name")
@click.option("--min", "minimum", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--max", "maximum", type=click.IntRange(min=0), help="Default: as many as fit.")
def adapt(name: str, minimum: int, maximum: int | None) -> None:
    """Let cluster NAME scale itself between --min and --max workers."""
    from ctrlstack import api

    with _errors():
        data = api.get(name).adapt(minimum=minimum, maximum=maximum)
    click.echo(
        f"{name}: adaptive between {data['adapt']['minimum']} and {data['adapt']['maximum']} workers"
    )


@main.command()
@click.argument("names", nargs=-1)
@click.option("--all", "stop_all", is_flag=True, help="Stop every cluster of this user.")
def stop(names: tuple[str, ...], stop_all: bool) -> None:
    """Stop cluster(s) NAMES and everything they started.

    Every named cluster is tried even if an earlier one fails; the exit status reports the worst.
    """
    from ctrlstack import api

    if not names and not stop_all:
        raise click.UsageError("name a cluster or pass --all")
    if stop_all:
        with _errors():
            names = tuple(i.name for i in api.clusters() if i.state != "dead")
        if not names:
            click.echo("no clusters")
            return
    status = 0
    for name in names:
        try:
            with _errors():
                api.stop(name)
            click.echo(f"stopped {name}")
        except SystemExit as exc:  # _errors() already printed the one-line message
            status = max(status, exc.code if isinstance(exc.code, int) else 1)
    if status:
        sys.exit(status)


@main.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
def crowding(name: str, as_json: bool) -> None:
    """Where the threads of cluster NAME's workers really run, per L3 domain."""
    from ctrlstack import api

    with _errors():
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

    The script finds the cluster through DASK_SCHEDULER_ADDRESS, so a plain
    ``distributed.Client()`` in it connects; CTRLSTACK_CLUSTER holds the cluster's name.
    """
    import os

    from ctrlstack import _proc, api

    name = f"run-{os.getpid()}"
    with _errors(), api.cluster(profile, name=name, **_overrides(**overrides)):
        env = dict(os.environ)
        env["DASK_SCHEDULER_ADDRESS"] = api.get(name).address
        env["CTRLSTACK_CLUSTER"] = name
        # stdin=None: the script reads our stdin (`ctrlstack run job.py < data` works).
        child = _proc.spawn([sys.executable, script, *args], env=env,
                            stdin=None, stdout=None, stderr=None)  # fmt: skip
        code = _wait_script(child)
    sys.exit(code)


def _wait_script(child: Any, grace: float = 10.0) -> int:
    """Wait for ``ctrlstack run``'s script; its exit status in shell convention (128 + signal).

    If we are interrupted (SIGTERM turned into SystemExit, Ctrl-C, anything), the script gets
    SIGTERM, ``grace`` seconds, then SIGKILL, and is reaped before the cluster is stopped: it
    must neither outlive its cluster nor keep running against a stopped one.
    """
    import signal
    import subprocess

    try:
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


if __name__ == "__main__":  # pragma: no cover
    main()
