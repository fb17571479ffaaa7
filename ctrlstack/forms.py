"""Launch forms from the profile schema: the profiles with their effective values, the fields.

Why one module: the JupyterLab sidebar (through REST) and the notebook ``Launcher`` widget offer
the same fields, named the same way, and send the same overrides.  The fields come from the
JSON Schema, so a new backend's settings (Slurm partition, walltime...) appear in both forms
with no UI change.  (``src/schema.ts`` is the TypeScript twin of :func:`fields`.)
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["NOT_OVERRIDABLE", "Field", "fields", "parse_text", "profiles"]

#: Profile fields that are configuration (site/user files), not per-launch choices.
NOT_OVERRIDABLE = ("backend", "env", "worker-options")
_NUMBER = re.compile(r"\A[-+]?\d+(\.\d+)?([eE][-+]?\d+)?\Z")


@dataclass(frozen=True)
class Field:
    """One form field: ``path`` as errors name it, ``override`` as ``launch()`` takes it."""

    path: str  # "workers", "adapt.minimum", "local.host"
    override: str  # "workers", "adapt", "host"
    sub: str | None  # "minimum" for adapt.minimum
    schema: Mapping[str, Any]
    nullable: bool

    @property
    def python_name(self) -> str:
        return self.override.replace("-", "_")


def _types(node: Mapping[str, Any]) -> list[str]:
    t = node.get("type")
    if t is None:
        return []
    return list(t) if isinstance(t, list) else [t]


def profiles() -> dict[str, Any]:
    """``{"profiles": [{name, backend, values, error}], "schema", "backends"}`` (JSON-ready).

    ``values`` are what a launch would use: the packaged ``local`` profile under the profile's
    own fields, its backend section over the site defaults (``ctrlstack.backends.<name>``).  A
    profile that does not validate is listed with its error, so a form can say why.
    """
    import dask.config

    from ctrlstack._config_check import builtin_profile, profile_schema, schema
    from ctrlstack.config import get_profile, profile_names

    raw = dask.config.get("ctrlstack.profiles", default={}) or {}
    rows = []
    for name in profile_names():
        body = raw.get(name)
        values = {**builtin_profile(), **(dict(body) if isinstance(body, Mapping) else {})}
        backend = values.get("backend")
        if isinstance(backend, str):
            defaults = dask.config.get(f"ctrlstack.backends.{backend}", default={}) or {}
            own = values.get(backend)
            values[backend] = {**defaults, **(own if isinstance(own, Mapping) else {})}
        error = None
        try:
            get_profile(name)
        except ValueError as exc:
            error = str(exc)
        rows.append({"name": name, "backend": backend, "values": values, "error": error})
    backends = schema()["$defs"].get("backend-options", {})
    return {
        "profiles": rows,
        "schema": profile_schema(),
        "backends": {
            k: v for k, v in backends.items() if isinstance(v, Mapping) and k != "description"
        },
    }


def fields(
    profile_schema: Mapping[str, Any], backends: Mapping[str, Any], backend: str
) -> list[Field]:
    """The form's fields for a profile of ``backend``, in schema order."""
    out: list[Field] = []
    for key, node in profile_schema.get("properties", {}).items():
        if key in NOT_OVERRIDABLE or key in backends:
            continue
        types = _types(node)
        if "object" in types:
            for sub, sub_node in node.get("properties", {}).items():
                out.append(Field(f"{key}.{sub}", key, sub, sub_node, "null" in types))
            continue
        out.append(Field(key, key, None, node, "null" in types))
    section = backends.get(backend, {})
    for key, node in section.get("properties", {}).items():
        out.append(Field(f"{backend}.{key}", key, None, node, "null" in _types(node)))
    return out


def current(values: Mapping[str, Any], backend: str, field: Field) -> Any:
    """The profile's value of ``field`` (``None`` when unset)."""
    if field.path.startswith(f"{backend}."):
        section = values.get(backend)
        return section.get(field.override) if isinstance(section, Mapping) else None
    value = values.get(field.override)
    if field.sub is not None:
        return value.get(field.sub) if isinstance(value, Mapping) else None
    return value


def parse_text(text: str) -> Any:
    """What a user typed into a text field, as the JSON value the schema will judge.

    ``""`` is null, numbers are numbers (``"4"`` → 4, ``"2.5"`` → 2.5), the rest stays text
    (``"auto"``, ``"4 GiB"``); the schema check that follows says what is allowed.
    """
    text = text.strip()
    if text == "":
        return None
    if _NUMBER.match(text):
        number = float(text)
        if (
            math.isfinite(number)
            and number.is_integer()
            and "." not in text
            and "e" not in text.lower()
        ):
            return int(text)
        return number
    return text
