"""``Launcher()``: the profile launch form of the sidebar, as a notebook widget.

Fields come from the profile schema (:mod:`ctrlstack.forms`); only fields changed from the
profile's values are sent as overrides.  A bad field's message appears under that field; the
launched cluster appears below the form as a :class:`~ctrlstack.widgets.ClusterView`.
"""

from __future__ import annotations

import html
import threading
from typing import TYPE_CHECKING, Any

from ctrlstack.errors import classify
from ctrlstack.forms import Field, current, fields, parse_text, profiles
from ctrlstack.widgets._base import View, ipywidgets

if TYPE_CHECKING:
    from ctrlstack.api import Cluster

__all__ = ["Launcher"]


class Launcher(View):
    """Pick a profile, change fields, launch.  ``launch()`` is what the button calls."""

    def __init__(self, profile: str | None = None) -> None:
        self.data = profiles()
        names = [p["name"] for p in self.data["profiles"]]
        if not names:
            raise ValueError("no ctrlstack profiles are configured")
        self.profile: str = profile if profile is not None and profile in names else names[0]
        self.values: dict[str, Any] = {}  # path -> what the user set (text, bool or choice)
        self.name: str = ""
        self.errors: dict[str, str] = {}
        self.clusters: list[Cluster] = []
        self.views: list[Any] = []
        self._w = ipywidgets()
        if self._w is not None:
            self.widget = self._w.VBox()
            self._rebuild()

    # ---------------------------------------------------------------- form model
    def _row(self) -> dict[str, Any]:
        return next(p for p in self.data["profiles"] if p["name"] == self.profile)

    def fields(self) -> list[Field]:
        row = self._row()
        return fields(self.data["schema"], self.data["backends"], row["backend"])

    def set(self, path: str, value: Any) -> None:
        """Set a field as a user would (text for text fields); ``name`` sets the cluster name."""
        if path == "name":
            self.name = str(value)
        elif path == "profile":
            self.profile = str(value)
            self.values.clear()
            if self._w is not None:
                self._rebuild()
        else:
            self.values[path] = value

    def overrides(self) -> dict[str, Any]:
        """Changed fields as ``launch()`` keyword arguments (Python names)."""
        row = self._row()
        out: dict[str, Any] = {}
        objects: dict[str, dict[str, Any]] = {}
        for field in self.fields():
            if field.path not in self.values:
                continue
            raw = self.values[field.path]
            value = parse_text(raw) if isinstance(raw, str) else raw
            if value == current(row["values"], row["backend"], field):
                continue
            if field.sub is not None:
                objects.setdefault(field.override, {})[field.sub] = value
            else:
                out[field.python_name] = value
        for key, parts in objects.items():
            for field in self.fields():  # fill the unchanged half of adapt from the profile
                if field.override == key and field.sub is not None and field.sub not in parts:
                    parts[field.sub] = current(row["values"], row["backend"], field)
            empty = all(v is None for v in parts.values())
            out[key.replace("-", "_")] = None if empty else parts
        return out

    # ---------------------------------------------------------------- actions
    def launch(self, *, block: bool = True) -> Cluster | None:
        """Launch with the form's values; on a bad field, record its message and return None."""
        if not block:
            threading.Thread(target=self.launch, name="ctrlstack-launch", daemon=True).start()
            return None
        from ctrlstack import api
        from ctrlstack.widgets.cluster import ClusterView

        self.errors = {}
        self._status("launching…")
        try:
            cluster = api.launch(self.profile, name=self.name or None, **self.overrides())
        except Exception as exc:  # noqa: BLE001 - every error is shown in the form
            verdict = classify(exc)
            field = getattr(exc, "field", None)
            path = self._path(field) if isinstance(field, str) else None
            self.errors[path or ""] = verdict.message
            self._status("")
            self._show_errors()
            return None
        self.clusters.append(cluster)
        view = ClusterView(cluster)
        self.views.append(view)
        self._status("")
        self._show_errors()
        if self._w is not None and view.widget is not None:
            self.widget.children = (*self.widget.children, view.widget)
        return cluster

    def _path(self, field: str) -> str | None:
        plain = field.replace("_", "-")
        if plain in ("name", "profile"):
            return plain
        for f in self.fields():
            if f.path == plain or f.override == plain or f.path.endswith(f".{plain}"):
                return f.path
        prefix = [f.path for f in self.fields() if f.path.startswith(f"{plain}.")]
        return prefix[0] if prefix else None

    # ---------------------------------------------------------------- widget
    def _rebuild(self) -> None:
        w = self._w
        assert w is not None
        row = self._row()
        label = w.Layout(width="auto")
        self._inputs: dict[str, Any] = {}
        self._error_slots: dict[str, Any] = {}
        children = []
        names = [p["name"] for p in self.data["profiles"]]
        chooser = w.Dropdown(options=names, value=self.profile, description="profile")
        chooser.observe(lambda ch: self.set("profile", ch["new"]), names="value")
        name = w.Text(value=self.name, description="name", placeholder="automatic")
        name.observe(lambda ch: self.set("name", ch["new"]), names="value")
        for path, widget in (("profile", chooser), ("name", name)):
            self._inputs[path] = widget
            self._error_slots[path] = w.HTML()
            children += [widget, self._error_slots[path]]
        for field in self.fields():
            value = current(row["values"], row["backend"], field)
            node = field.schema
            tip = str(node.get("description", ""))[:300]
            if "enum" in node:
                options = [str(v) for v in node["enum"]]
                widget = w.Dropdown(
                    options=options, value=str(value) if str(value) in options else options[0]
                )
            elif node.get("type") == "boolean":
                widget = w.Checkbox(value=bool(value), indent=False)
            else:
                widget = w.Text(value="" if value is None else str(value))
            widget.description = field.path
            widget.tooltip = tip
            widget.style = {"description_width": "8em"}
            widget.observe(lambda ch, p=field.path: self.set(p, ch["new"]), names="value")
            self._inputs[field.path] = widget
            self._error_slots[field.path] = w.HTML()
            children += [widget, self._error_slots[field.path]]
        button = w.Button(description="Launch", button_style="primary", layout=label)
        button.on_click(lambda _: self.launch(block=False))
        self._state = w.HTML()
        self._general = w.HTML()
        children += [w.HBox([button, self._state]), self._general]
        self._form = w.VBox(children)
        self.widget.children = (self._form, *(v.widget for v in self.views if v.widget))

    def _status(self, text: str) -> None:
        if self._w is not None:
            self._state.value = html.escape(text)

    def _show_errors(self) -> None:
        if self._w is None:
            return
        for path, slot in self._error_slots.items():
            message = self.errors.get(path, "")
            slot.value = (
                f"<span style='color:#b00'>{html.escape(message)}</span>" if message else ""
            )
        general = self.errors.get("", "")
        self._general.value = (
            f"<span style='color:#b00'>{html.escape(general)}</span>" if general else ""
        )

    def html(self) -> str:
        row = self._row()
        items = "".join(
            f"<li>{html.escape(f.path)} = {html.escape(str(current(row['values'], row['backend'], f)))}</li>"
            for f in self.fields()
        )
        launched = "".join(v.html() for v in self.views)
        return (
            f"<div><b>ctrlstack launcher</b>: profile {html.escape(self.profile)} "
            f"(backend {html.escape(str(row['backend']))})<ul>{items}</ul>"
            "<i>Launching needs a widget frontend, or call <code>ctrlstack.launch()</code>.</i>"
            f"{launched}</div>"
        )

    def __repr__(self) -> str:
        return f"<Launcher profile {self.profile!r}, {len(self.clusters)} launched>"
