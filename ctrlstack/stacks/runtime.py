"""Which Python runs a cluster: ctrlstack's own, or the built prefix of the profile's stack.

The launcher asks this before anything is reserved, so "stack not built" is a user error that
changes nothing.  The supervisor is started by the stack's interpreter; distributed's Nanny
starts worker processes with ``multiprocessing`` from ``sys.executable``, so workers and
scheduler run the stack too, without touching distributed or the local backend.  Batch
backends put the same interpreter in their job scripts (``<python> -m ctrlstack worker``).
"""

from __future__ import annotations

import os
import sys

from .build import read_stamp, stack_python
from .model import StackError, get_stack

__all__ = ["job_modules", "runtime"]


def runtime(stack_name: str | None) -> tuple[str, dict[str, str] | None]:
    """``(python, env)`` for processes of a cluster; ``env`` ``None`` means "inherit ours"."""
    if stack_name is None:
        return sys.executable, None
    stack = get_stack(stack_name)
    prefix = stack.prefix
    assert prefix is not None
    if read_stamp(prefix) is None or not stack_python(prefix).exists():
        raise StackError(
            f"the profile runs stack {stack_name!r}, which is not built at {prefix}; "
            f"run 'ctrlstack stack build {stack_name}' first"
        )
    env = dict(os.environ)
    env.update(stack.env)
    env["VIRTUAL_ENV"] = str(prefix)
    env["PATH"] = f"{prefix / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return str(stack_python(prefix)), env


def job_modules(stack_name: str | None) -> tuple[str, ...]:
    """The stack's site module names (Lmod / Environment Modules) for batch job prologues.

    They need a shell, so the kernel launcher cannot apply them; every job script of a profile
    that names the stack (worker jobs and ``ctrlstack submit`` jobs) loads them before its
    command, each rendered as ``module load <quoted name>``.  Unlike :func:`runtime` this does
    not require the stack to be built: ``ctrlstack script`` previews a job on any host.
    """
    if stack_name is None:
        return ()
    return get_stack(stack_name).modules
