"""CLI commands for computing stacks, their kernels and submitted runs.

``ctrlstack stack list|lock|build|check``, ``ctrlstack kernels install``, ``ctrlstack submit``
and ``ctrlstack runs``.  Thin shells over :mod:`ctrlstack.stacks` and :mod:`ctrlstack.runs`,
registered on the main group at the end of :mod:`ctrlstack.cli`, whose error boundary reports
every exception (one ``error:`` line; exit 2 for user errors, 1 for failures).
"""

from __future__ import annotations

import json
import pathlib
import sys
import time
from typing import Any

import click

__all__ = ["current_runs", "kernels", "run_lines", "run_log", "runs", "stack", "submit"]


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


# ------------------------------------------------------------------------------------ stack
@click.group()
def stack() -> None:
    """Computing stacks: reproducible venvs for kernels and workers (see docs/stacks.md)."""


@stack.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def stack_list(as_json: bool) -> None:
    """The stacks (ctrlstack's own and the site's), what each holds and whether it is built."""
    from ctrlstack.stacks.build import read_stamp
    from ctrlstack.stacks.model import stacks

    rows = []
    for item in stacks().values():
        row = item.summary()
        assert item.prefix is not None
        row["built"] = read_stamp(item.prefix) is not None
        rows.append(row)
    if as_json:
        _echo_json(rows)
        return
    for row in rows:
        mark = "built" if row["built"] else "not built"
        click.echo(f"{row['name']:<10} {row['description']}")
        click.echo(f"{'':<10} packages: {', '.join(row['packages']) or '-'}")
        click.echo(f"{'':<10} ops: {', '.join(row['ops']) or '-'}; numba layer: "
                   f"{row['threading-layer']}; modules: {', '.join(row['modules']) or '-'}")  # fmt: skip
        click.echo(f"{'':<10} {mark} at {row['prefix']}")


@stack.command("lock")
@click.argument("name")
def stack_lock(name: str) -> None:
    """Resolve stack NAME with uv and (re)write its hashed lock beside its file."""
    from ctrlstack.stacks.lock import lock
    from ctrlstack.stacks.model import get_stack

    click.echo(f"wrote {lock(get_stack(name))}")


@stack.command("build")
@click.argument("name")
@click.option("--prefix", type=click.Path(file_okay=False), help="Build here instead.")
@click.option("--tool", type=click.Choice(["uv", "pip"]), help="Default: uv when present.")
@click.option("--force", is_flag=True, help="Rebuild even when the stamp says up to date.")
@click.option("--json", "as_json", is_flag=True)
def stack_build(
    name: str, prefix: str | None, tool: str | None, force: bool, as_json: bool
) -> None:
    """Build stack NAME from its lock (idempotent: nothing happens when up to date)."""
    from ctrlstack.stacks.build import build
    from ctrlstack.stacks.model import get_stack

    result = build(
        get_stack(name), pathlib.Path(prefix) if prefix else None, tool=tool, force=force
    )
    if as_json:
        _echo_json(result.to_dict())
    elif result.changed:
        click.echo(f"built {name} at {result.prefix} with {result.tool} in {result.seconds:.1f} s")
    else:
        click.echo(f"{name} at {result.prefix} is up to date with its lock")


@stack.command("check")
@click.argument("name")
@click.option("--prefix", type=click.Path(file_okay=False), help="Check the build here.")
@click.option("--json", "as_json", is_flag=True)
def stack_check(name: str, prefix: str | None, as_json: bool) -> None:
    """Drift of stack NAME's build against its lock, and which profiles/kernels use it.

    Exits 1 when the stack is not built, was built from another lock, or has drifted.
    """
    from ctrlstack.stacks.check import check
    from ctrlstack.stacks.model import get_stack

    result = check(get_stack(name), pathlib.Path(prefix) if prefix else None)
    if as_json:
        _echo_json(result.to_dict())
    else:
        if not result.built:
            click.echo(f"{name}: not built at {result.prefix}")
        elif result.lock_changed:
            click.echo(
                f"{name}: built from another lock; rebuild with 'ctrlstack stack build {name}'"
            )
        for d in result.drift:
            click.echo(f"{name}: drift: {d}")
        if result.ok:
            click.echo(f"{name}: {result.prefix} matches its lock")
        click.echo(f"profiles: {', '.join(result.profiles) or '-'}")
        click.echo(f"kernels: {', '.join(result.kernels) or '-'}")
    if not result.ok:
        sys.exit(1)


# ------------------------------------------------------------------------------------ kernels
@click.group()
def kernels() -> None:
    """Jupyter kernels of the built stacks."""


@kernels.command("install")
@click.option("--user", "where", flag_value="user", help="Into the user's Jupyter data dir.")
@click.option("--sys-prefix", "where", flag_value="sys-prefix", help="Into sys.prefix.")
@click.option("--prefix", "jupyter_prefix", type=click.Path(file_okay=False),
              help="Into PREFIX/share/jupyter/kernels.")  # fmt: skip
@click.option("--stack", "names", multiple=True, help="Only these stacks (default: all built).")
def kernels_install(where: str | None, jupyter_prefix: str | None, names: tuple[str, ...]) -> None:
    """Install a kernelspec for every built stack (or the named ones)."""
    from ctrlstack.stacks.build import read_stamp
    from ctrlstack.stacks.kernelspec import install
    from ctrlstack.stacks.model import get_stack, stacks

    if where and jupyter_prefix:
        raise click.UsageError("give at most one of --user, --sys-prefix and --prefix")
    if where == "sys-prefix":
        jupyter_prefix = sys.prefix
    chosen = [get_stack(n) for n in names] if names else list(stacks().values())
    done = 0
    for item in chosen:
        assert item.prefix is not None
        if read_stamp(item.prefix) is None:
            if names:
                install(item)  # raises "not built" for a stack named explicitly
            click.echo(f"{item.name}: not built, skipped")
            continue
        path = install(item, user=where == "user", jupyter_prefix=jupyter_prefix)
        click.echo(f"{item.name}: {path}")
        done += 1
    if not done:
        click.echo("no built stacks: build one with 'ctrlstack stack build NAME'")


# ------------------------------------------------------------------------------------ runs
@click.command(context_settings={"ignore_unknown_options": True})
@click.option("--profile", help="Profile of the run's cluster (default profile if omitted).")
@click.option("--param", "-p", "params", multiple=True, metavar="NAME=VALUE",
              help="Notebook parameter (YAML value), repeatable.")  # fmt: skip
@click.option("--output-dir", "--output", "output", type=click.Path(file_okay=False),
              help="Where the executed notebook and the log go (default: beside PATH).")  # fmt: skip
@click.option("--kernel", help="Kernel for a notebook (default: the notebook's own).")
@click.option("--wait", is_flag=True, help="Wait for the end; exit 1 if the run failed.")
@click.option("--timeout", type=click.FloatRange(min=0), help="With --wait: at most this many s.")
@click.option("--script", "show_script", is_flag=True,
              help="Print the batch job script that would be submitted; submit nothing.")  # fmt: skip
@click.option("--json", "as_json", is_flag=True)
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def submit(
    profile: str | None,
    params: tuple[str, ...],
    output: str | None,
    kernel: str | None,
    wait: bool,
    timeout: float | None,
    show_script: bool,
    as_json: bool,
    path: str,
    args: tuple[str, ...],
) -> None:
    """Run notebook or script PATH with a cluster of its own from the profile: detached here
    for a local profile, as one batch job for a Slurm/PBS profile.

    Options may come before or after PATH; anything else after PATH goes to a script (put
    '--' before script arguments that look like these options).

    The executed notebook and the log land beside PATH (or in --output-dir) as
    <name>.<run id>.ipynb / .log; follow the run with 'ctrlstack list', 'ctrlstack runs' or
    'ctrlstack logs RUN_ID'.
    """
    from ctrlstack.runs.params import parse_params
    from ctrlstack.runs.submit import job_script
    from ctrlstack.runs.submit import submit as do_submit

    if show_script:
        click.echo(
            job_script(path, profile, params=parse_params(params), args=args, output=output,
                       kernel=kernel),
            nl=False,
        )  # fmt: skip
        return
    record = do_submit(
        path, profile, params=parse_params(params), args=args, output=output, kernel=kernel,
        wait=wait, timeout=timeout,
    )  # fmt: skip
    if as_json:
        _echo_json(record.to_dict())
    else:
        job = f" (job {record.job_id})" if record.job_id else ""
        click.echo(
            f"run {record.id}{job}: {record.state}" + (f": {record.error}" if record.error else "")
        )
        click.echo(f"output: {record.output}\nlog: {record.log}")
    if wait and record.state != "succeeded":
        sys.exit(1)


def current_runs() -> list[Any]:
    """Every run of this user, batch runs judged from their queue (``ctrlstack list``/``runs``)."""
    from ctrlstack.runs.batch import refresh
    from ctrlstack.runs.record import list_runs

    return refresh(list_runs())


def run_lines(records: list[Any]) -> list[str]:
    """The runs table of ``ctrlstack runs`` and ``ctrlstack list`` (pure)."""
    lines = [f"{'RUN':<20} {'STATE':<9} {'CREATED':<16} {'PROFILE':<10} {'WHERE':<12} OUTPUT"]
    for r in records:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(r.created))
        where = f"job {r.job_id}" if r.job_id else r.mode
        lines.append(f"{r.id:<20} {r.state:<9} {when:<16} {r.profile:<10} {where:<12} {r.output}")
        if r.error:
            lines.append(f"  {r.error}")
    return lines


@click.command("runs")
@click.option("--json", "as_json", is_flag=True)
def runs(as_json: bool) -> None:
    """Submitted runs with their state and output path."""
    records = current_runs()
    if as_json:
        _echo_json([r.to_dict() for r in records])
        return
    if not records:
        click.echo("no runs")
        return
    for line in run_lines(records):
        click.echo(line)


def run_log(run_id: str, lines: int) -> str:
    """The end of a run's log (local: the executor's output; batch: the job's output)."""
    from collections import deque

    from ctrlstack.errors import NotFoundError
    from ctrlstack.runs.record import load

    record = load(run_id)
    try:
        with open(record.log, errors="replace") as fh:
            tail = deque(fh, maxlen=lines)
    except FileNotFoundError:
        if record.state == "pending":
            return f"run {run_id} is pending: no log yet ({record.log})\n"
        raise NotFoundError(f"run {run_id}: its log {record.log!r} does not exist") from None
    return "".join(tail)
