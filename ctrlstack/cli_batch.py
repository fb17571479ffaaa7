"""Batch commands of the ``ctrlstack`` CLI: ``script`` (what would be submitted) and ``worker``
(what a job runs on its node).  Registered on the main group at the end of :mod:`ctrlstack.cli`;
errors go through that group's single error boundary.
"""

from __future__ import annotations

import asyncio
import logging
import sys

import click

__all__ = ["script", "worker"]


def _resources(values: tuple[str, ...]) -> dict[str, float]:
    out: dict[str, float] = {}
    for item in values:
        key, sep, value = item.partition("=")
        try:
            if not sep or not key:
                raise ValueError
            out[key] = float(value)
        except ValueError:
            raise click.BadParameter(
                f"{item!r} is not NAME=NUMBER", param_hint="--resource"
            ) from None
    return out


@click.command()
@click.argument("profile")
@click.option("--name", default="NAME", show_default=True, help="Cluster name to render for.")
def script(profile: str, name: str) -> None:
    """Print the exact job script a batch PROFILE submits for one job.

    Only the scheduler address (known once the cluster runs) is a placeholder.
    """
    from ctrlstack.config import get_profile, state_dir
    from ctrlstack.deploy.backends import backend_class
    from ctrlstack.deploy.registry import Registry, validate_name
    from ctrlstack.errors import UserError

    spec = get_profile(profile)
    cls = backend_class(spec.backend)
    render = getattr(cls, "job_script", None)
    if render is None:
        raise UserError(
            f"profile {profile!r} uses backend {spec.backend!r}, which submits no job script"
        )
    registry = Registry(state_dir())
    cluster_name = validate_name(name) if name != "NAME" else name
    backend = cls(spec, cluster_name=cluster_name, workdir=registry.dir / f"{cluster_name}.d")
    click.echo(
        backend.job_script(  # type: ignore[attr-defined]
            "tls://SCHEDULER-ADDRESS:PORT", f"{cluster_name}-0"
        ),
        nl=False,
    )


@click.command()
@click.argument("scheduler")
@click.option("--name", required=True, help="Job name; workers are NAME or NAME-0, NAME-1, ...")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=None, help="CPUs per worker.")
@click.option("--task-threads", type=click.IntRange(min=1), default=None)
@click.option(
    "--policy",
    type=click.Choice(["l3", "numa", "socket", "core", "none"]),
    default="l3",
    show_default=True,
)
@click.option("--smt", is_flag=True, help="Count SMT siblings as CPUs.")
@click.option("--memory-limit", default="auto", show_default=True, help="Per worker.")
@click.option("--death-timeout", type=float, default=60.0, show_default=True)
@click.option("--lifetime", type=float, default=None, help="Seconds until the workers retire.")
@click.option("--interface", default=None, help="Network interface the workers listen on.")
@click.option("--local-directory", default=None)
@click.option("--resource", "resources", multiple=True, help="Worker resource NAME=NUMBER.")
@click.option(
    "--nanny",
    is_flag=True,
    help="One nanny per worker (restarts on memory limit) instead of forked workers.",
)
def worker(
    scheduler: str,
    name: str,
    workers: int,
    threads: int | None,
    task_threads: int | None,
    policy: str,
    smt: bool,
    memory_limit: str,
    death_timeout: float,
    lifetime: float | None,
    interface: str | None,
    local_directory: str | None,
    resources: tuple[str, ...],
    nanny: bool,
) -> None:
    """Start pinned Dask workers for SCHEDULER inside a batch job (run by ctrlstack's jobs).

    Plans WORKERS × THREADS on the CPUs this job may use, forks one pinned worker per slot
    (or, with --nanny, starts one nanny per slot) and waits until they exit.  TLS credentials
    come from the directory in $CTRLSTACK_CREDENTIALS.
    """
    from ctrlstack.deploy.worker import NodeRequest, fork_workers, run_workers

    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    limit: int | str = int(memory_limit) if memory_limit.isdigit() else memory_limit
    request = NodeRequest(
        scheduler=scheduler,
        name=name,
        workers=workers,
        threads=threads,
        task_threads=task_threads,
        policy=policy,
        smt=smt,
        memory_limit=limit,
        death_timeout=death_timeout,
        lifetime=lifetime,
        interface=interface,
        local_directory=local_directory,
        resources=_resources(resources),
    )
    if nanny:
        sys.exit(asyncio.run(run_workers(request)))
    sys.exit(fork_workers(request))  # before any event loop: fork() copies only this thread


if __name__ == "__main__":  # `python -m ctrlstack.cli_batch worker ...`: what job scripts run
    import importlib

    importlib.import_module("ctrlstack.cli").main()
