"""What every view shares: an optional ipywidgets widget and an HTML fallback."""

from __future__ import annotations

import types
from typing import Any

__all__ = ["View", "ipywidgets"]


def ipywidgets() -> types.ModuleType | None:
    """The ipywidgets module, or None when it is not installed (views fall back to HTML)."""
    try:
        import ipywidgets as module
    except ImportError:
        return None
    return module


class View:
    """Displays as its widget where a widget manager runs, as HTML everywhere else.

    ``_repr_mimebundle_`` carries both: JupyterLab renders the widget view, frontends without
    ipywidgets (nbviewer, GitHub, a saved notebook) render ``text/html``.
    """

    widget: Any = None

    def html(self) -> str:
        raise NotImplementedError

    def _repr_html_(self) -> str:
        return self.html()

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        bundle: dict[str, Any] = {"text/plain": repr(self), "text/html": self.html()}
        if self.widget is not None:
            bundle.update(self.widget._repr_mimebundle_())
        return bundle
