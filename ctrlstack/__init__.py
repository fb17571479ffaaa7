"""ctrlstack: topology-pinned Dask clusters, named profiles and Numba kernels for HPC notebooks.

The public API (``launch``, ``connect``, ``get``, ``clusters``, ``cluster``, ``stop``,
``crowding``, ``discover``, ``plan``) is imported lazily, so ``import ctrlstack`` stays cheap and
works without JupyterLab, ipywidgets or a running cluster.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "launch": "ctrlstack.api",
    "connect": "ctrlstack.api",
    "get": "ctrlstack.api",
    "clusters": "ctrlstack.api",
    "cluster": "ctrlstack.api",
    "stop": "ctrlstack.api",
    "crowding": "ctrlstack.api",
    "Cluster": "ctrlstack.api",
    "ClusterInfo": "ctrlstack.api",
    "ClusterNotFoundError": "ctrlstack.api",
    "discover": "ctrlstack.topology.discover",
    "plan": "ctrlstack.topology.plan",
    "PlanError": "ctrlstack.topology.plan",
    "ConfigError": "ctrlstack.config",
    "get_profile": "ctrlstack.config",
    "LaunchError": "ctrlstack.deploy.launcher",
    "submit": "ctrlstack.runs.submit",
}

__all__ = [
    "Cluster",
    "ClusterInfo",
    "ClusterNotFoundError",
    "ConfigError",
    "LaunchError",
    "PlanError",
    "__version__",
    "cluster",
    "clusters",
    "connect",
    "crowding",
    "discover",
    "get",
    "get_profile",
    "launch",
    "plan",
    "stop",
    "submit",
]

if TYPE_CHECKING:
    from ctrlstack.api import (
        Cluster,
        ClusterInfo,
        ClusterNotFoundError,
        cluster,
        clusters,
        connect,
        crowding,
        get,
        launch,
        stop,
    )
    from ctrlstack.config import ConfigError, get_profile
    from ctrlstack.deploy.launcher import LaunchError
    from ctrlstack.runs.submit import submit
    from ctrlstack.topology.discover import discover
    from ctrlstack.topology.plan import PlanError, plan


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ctrlstack' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
