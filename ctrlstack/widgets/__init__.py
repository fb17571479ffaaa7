"""Notebook widgets: ``Launcher()``, ``ClusterView(cluster)``, ``TopologyView()``.

The same views in any notebook frontend (JupyterLab, Notebook 7, VS Code, Voilà).  ipywidgets is
optional: without it (or in a frontend without a widget manager) every view shows its HTML
fallback, built from the same templates.  Importing this package imports neither ipywidgets
nor a cluster.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = ["ClusterView", "Launcher", "TopologyView"]

_LAZY = {
    "ClusterView": "ctrlstack.widgets.cluster",
    "Launcher": "ctrlstack.widgets.launcher",
    "TopologyView": "ctrlstack.widgets.topology",
}

if TYPE_CHECKING:
    from ctrlstack.widgets.cluster import ClusterView
    from ctrlstack.widgets.launcher import Launcher
    from ctrlstack.widgets.topology import TopologyView


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ctrlstack.widgets' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
