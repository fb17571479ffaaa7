"""Notebook parameters the papermill way, on nbformat/nbclient (pure functions).

``--param n=100`` values are YAML scalars (``100`` is an int, ``0.5`` a float, ``abc`` a string,
``[1, 2]`` a list), like ``papermill -y``.  Injection follows papermill's convention so notebooks
written for papermill work unchanged: the values go into a new cell tagged
``injected-parameters`` placed right after the cell tagged ``parameters`` (or first, if there is
none), so they override the notebook's defaults.  Why not papermill itself: it adds a dozen
dependencies (and its own engine) for these twenty lines; nbclient is already ctrlstack's.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

import yaml

from ctrlstack.errors import UserError

__all__ = ["inject", "parameter_source", "parse_params"]

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def parse_params(items: Iterable[str]) -> dict[str, Any]:
    """``["n=100", "name=abc"]`` -> ``{"n": 100, "name": "abc"}``; bad items are user errors."""
    out: dict[str, Any] = {}
    for item in items:
        name, sep, raw = item.partition("=")
        name = name.strip()
        if not sep or not _IDENT.match(name):
            raise UserError(f"--param {item!r}: expected NAME=VALUE with NAME a Python identifier")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        out[name] = value
    return out


def parameter_source(params: Mapping[str, Any]) -> str:
    """Python source assigning ``params`` (``repr`` of YAML scalars/lists/maps is valid Python)."""
    lines = ["# Parameters injected by ctrlstack submit"]
    lines += [f"{name} = {value!r}" for name, value in params.items()]
    return "\n".join(lines) + "\n"


def inject(nb: Any, params: Mapping[str, Any]) -> Any:
    """Insert the injected-parameters cell into notebook ``nb`` (an nbformat node) in place."""
    if not params:
        return nb
    import nbformat

    cells = [
        c for c in nb.cells if "injected-parameters" not in c.get("metadata", {}).get("tags", [])
    ]
    cell = nbformat.v4.new_code_cell(parameter_source(params))
    cell.metadata["tags"] = ["injected-parameters"]
    where = next(
        (
            i + 1
            for i, c in enumerate(cells)
            if "parameters" in c.get("metadata", {}).get("tags", [])
        ),
        0,
    )
    cells.insert(where, cell)
    nb.cells = cells
    return nb
