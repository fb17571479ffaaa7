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

__all__ = ["runtime"]


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
