"""JupyterHub integration: users' servers as pinned Slurm jobs (:class:`StackSpawner`).

Imports are lazy: :mod:`ctrlstack.hub.singleuser` runs inside the job, in the user's
environment, which need not have JupyterHub's hub-side dependencies or Dask.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .handlers import extra_handlers
    from .spawner import StackSpawner

__all__ = ["StackSpawner", "extra_handlers"]

_LAZY = {"StackSpawner": "ctrlstack.hub.spawner", "extra_handlers": "ctrlstack.hub.handlers"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ctrlstack.hub' has no attribute {name!r}")
