"""``TopologyView()``: this machine's CPUs with live load and the workers pinned to them."""

from __future__ import annotations

from typing import Any

from ctrlstack.occupancy import occupancy
from ctrlstack.widgets._base import View, ipywidgets
from ctrlstack.widgets.html import topology_html

__all__ = ["TopologyView"]


class TopologyView(View):
    """The crowding picture of the sidebar, in a notebook; ``refresh()`` (or its button) redraws."""

    def __init__(self) -> None:
        occupancy()  # first psutil sample, so the next one reports real load
        self.data: dict[str, Any] = occupancy()
        w = ipywidgets()
        if w is not None:
            self._map = w.HTML(topology_html(self.data))
            button = w.Button(description="Refresh", icon="refresh", layout=w.Layout(width="auto"))
            button.on_click(lambda _: self.refresh())
            self.widget = w.VBox([self._map, button])

    def refresh(self) -> dict[str, Any]:
        self.data = occupancy()
        if self.widget is not None:
            self._map.value = topology_html(self.data)
        return self.data

    def html(self) -> str:
        return topology_html(self.data)

    def __repr__(self) -> str:
        owned = sorted({o["cluster"] for v in self.data["owners"].values() for o in v})
        return f"<TopologyView CPUs {self.data['machine']['cpus']}, clusters {owned}>"
