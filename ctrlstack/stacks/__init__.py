"""Computing stacks: declared in ``environments/*.toml``, locked with hashes, built into venvs.

One stack runs a notebook's kernel and its cluster's scheduler and workers, so that pickles load,
Numba compiles the same way and distributed sees one set of versions.  Modules, each with one
job: :mod:`.model` (what a stack is; loading and validation), :mod:`.lock` (resolver input and
lock parsing), :mod:`.build` (venv from the lock, idempotent), :mod:`.check` (drift and users),
:mod:`.kernelspec` / :mod:`.kernel` (Jupyter kernels pinned from the topology), :mod:`.runtime`
(which Python runs a cluster), :mod:`.versions` (the one mismatch message on connect).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = ["Stack", "StackError", "get_stack", "stacks"]

if TYPE_CHECKING:
    from .model import Stack, StackError, get_stack, stacks


def __getattr__(name: str) -> Any:
    # Lazy: the kernel launcher (``ctrlstack.stacks.kernel``) must not pay for the model's
    # imports on every kernel start.
    if name in __all__:
        return getattr(importlib.import_module(".model", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
