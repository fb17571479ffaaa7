"""``ClusterView(cluster)``: one cluster's status with scale / adapt / stop, live while it starts."""

from __future__ import annotations

import html
import threading
import time
from typing import TYPE_CHECKING, Any

from ctrlstack.display import status_html
from ctrlstack.errors import classify
from ctrlstack.widgets._base import View, ipywidgets

if TYPE_CHECKING:
    from ctrlstack.api import Cluster
    from ctrlstack.deploy.status import ClusterStatus

__all__ = ["ClusterView"]


class ClusterView(View):
    """Status, a progress bar while workers come up, and the cluster's actions as buttons.

    ``cluster`` is a :class:`ctrlstack.Cluster` or a cluster name.  The methods ``scale``,
    ``adapt`` and ``stop`` are what the buttons call, so scripts and tests drive the same path.
    """

    def __init__(self, cluster: Cluster | str) -> None:
        from ctrlstack import api

        self.cluster = api.get(cluster) if isinstance(cluster, str) else cluster
        self.status: ClusterStatus | None = None
        self.message = ""
        self._follower: threading.Thread | None = None
        w = ipywidgets()
        if w is not None:
            self._build(w)
        self.refresh()
        self.follow()

    # ---------------------------------------------------------------- widget
    def _build(self, w: Any) -> None:
        small = w.Layout(width="7em")
        self._html = w.HTML()
        self._progress = w.IntProgress(value=0, min=0, max=1, description="workers")
        self._note = w.HTML()
        self._n = w.BoundedIntText(value=1, min=0, max=100_000, description="n", layout=small)
        self._lo = w.BoundedIntText(value=0, min=0, max=100_000, description="min", layout=small)
        self._hi = w.BoundedIntText(value=1, min=1, max=100_000, description="max", layout=small)
        buttons = {
            "Scale": lambda _: self.scale(self._n.value),
            "Adapt": lambda _: self.adapt(self._lo.value, self._hi.value),
            "Stop": lambda _: self.stop(),
            "Refresh": lambda _: self.refresh(),
        }
        row = []
        for label, fn in buttons.items():
            b = w.Button(description=label, layout=w.Layout(width="auto"))
            if label == "Stop":
                b.button_style = "danger"
            b.on_click(fn)
            row.append(b)
        self._buttons = row
        controls = w.HBox([self._n, row[0], self._lo, self._hi, row[1], row[2], row[3]])
        self.widget = w.VBox([self._html, self._progress, controls, self._note])

    def _show(self) -> None:
        if self.widget is None:
            return
        self._html.value = self.html()
        note = html.escape(self.message)
        self._note.value = f"<span style='color:#b00'>{note}</span>" if note else ""
        s = self.status
        if s is not None:
            self._progress.max = max(s.requested, 1)
            self._progress.value = min(s.connected, self._progress.max)
            self._progress.bar_style = "success" if s.connected >= s.requested else "info"
        live = s is not None and s.state == "running"
        for b in self._buttons:
            b.disabled = not live

    # ---------------------------------------------------------------- actions
    def _do(self, fn: Any, *args: Any) -> ClusterStatus | None:
        try:
            result: ClusterStatus | None = fn(*args)
        except Exception as exc:  # noqa: BLE001 - shown in the view, as the sidebar does
            self.message = classify(exc).message
            self._show()
            return None
        self.message = ""
        return result

    def refresh(self) -> ClusterStatus | None:
        status = self._do(self.cluster.status)
        if status is not None:
            self.status = status
        self._show()
        return status

    def scale(self, n: int) -> ClusterStatus | None:
        if self._do(self.cluster.scale, n) is not None:
            self.refresh()
            self.follow()
        return self.status

    def adapt(self, minimum: int, maximum: int | None = None) -> ClusterStatus | None:
        if self._do(self.cluster.adapt, minimum, maximum) is not None:
            self.refresh()
            self.follow()
        return self.status

    def stop(self) -> None:
        self._do(self.cluster.stop)
        if self.status is not None and not self.message:
            self.status.state = "dead"
            self.status.connected = 0
        self._show()

    def follow(self, timeout: float = 120, interval: float = 0.5) -> None:
        """Refresh in a background thread until every requested worker is connected."""
        if self._follower is not None and self._follower.is_alive():
            return

        def run() -> None:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                s = self.status
                if s is None or s.state != "running" or s.connected >= s.requested:
                    return
                time.sleep(interval)
                self.refresh()

        self._follower = threading.Thread(target=run, name="ctrlstack-follow", daemon=True)
        self._follower.start()

    def wait(self, timeout: float = 120) -> ClusterStatus | None:
        """Block until the workers are up (or ``timeout``); returns the last status."""
        self.follow(timeout)
        if self._follower is not None:
            self._follower.join(timeout)
        return self.refresh()

    # ---------------------------------------------------------------- display
    def html(self) -> str:
        if self.status is None:
            name, why = self.cluster.name, self.message or "no status"
            return f"<b>ctrlstack cluster {html.escape(name)}</b>: {html.escape(why)}"
        return status_html(self.status)

    def __repr__(self) -> str:
        s = self.status
        state = f"{s.state}, {s.connected}/{s.requested} workers" if s else "no status"
        return f"<ClusterView {self.cluster.name!r} {state}>"
