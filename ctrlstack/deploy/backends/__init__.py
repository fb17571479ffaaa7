"""Backends by name: the profile's ``backend`` picks one (see :mod:`.base`).

Built-in backends are imported lazily (``slurm`` must not cost the ``local`` path an import of
dask-jobqueue); sites add their own through the ``ctrlstack.backends`` entry-point group.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from ctrlstack.deploy.backends.base import Backend, BackendReport

__all__ = ["BACKENDS", "Backend", "BackendReport", "backend_class"]

#: Built-in backends: profile ``backend`` value -> "module:Class".
BACKENDS: dict[str, str] = {
    "local": "ctrlstack.deploy.backends.local:LocalBackend",
    "slurm": "ctrlstack.deploy.backends.slurm:SlurmBackend",
    "pbs": "ctrlstack.deploy.backends.pbs:PBSBackend",
}


def backend_class(name: str) -> type[Backend]:
    """The backend class for a profile's ``backend`` value (``ValueError`` if none)."""
    target = BACKENDS.get(name)
    if target is None:
        for ep in entry_points(group="ctrlstack.backends"):
            if ep.name == name:
                cls = ep.load()
                break
        else:
            known = ", ".join(sorted(BACKENDS))
            raise ValueError(f"unknown backend {name!r}; available: {known}")
    else:
        module, _, attr = target.partition(":")
        cls = getattr(importlib.import_module(module), attr)
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        raise TypeError(f"backend {name!r} ({cls!r}) is not a ctrlstack Backend subclass")
    return cls
