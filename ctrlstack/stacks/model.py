"""What a computing stack is: a small declarative TOML file plus a hashed lock beside it.

Why TOML and a separate lock: the file says what a site *means* (packages, thread settings,
module loads, the ops it is for) and stays short enough to review; the lock (``<name>.lock``,
``uv pip compile --generate-hashes`` output, i.e. a plain hashed requirements file) says exactly
what gets installed, so two builds from one lock are the same environment and pip can install it
too.  Stacks come from ctrlstack's own ``environments/`` folder and from the ``ctrlstack.stacks``
section of dask.config (site files point at their own TOML files), validated the same way.

This module is pure apart from reading files and dask.config: no subprocesses, no venvs.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import os
import pathlib
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ctrlstack.errors import NotFoundError, UserError

__all__ = [
    "THREADING_LAYERS",
    "Stack",
    "StackError",
    "builtin_dirs",
    "default_prefix",
    "get_stack",
    "lock_hash",
    "parse_stack",
    "stacks",
]

THREADING_LAYERS = ("default", "workqueue", "omp", "tbb")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_KEYS = {"name", "description", "python", "packages", "ops", "modules", "threads", "env"}


class StackError(UserError):
    """A stack file or a ``ctrlstack.stacks`` entry is invalid, or a stack cannot be used."""


@dataclass(frozen=True)
class Stack:
    """One computing stack, validated.

    ``path`` is its TOML file and ``lock`` the hashed requirements beside it (``<stem>.lock``);
    ``prefix`` is where it is built unless a caller names another directory.
    """

    name: str
    description: str
    python: str
    packages: tuple[str, ...]
    ops: tuple[str, ...]
    modules: tuple[str, ...]
    threading_layer: str
    env: Mapping[str, str] = field(hash=False)
    path: pathlib.Path | None = None
    prefix: pathlib.Path | None = None

    @property
    def lock(self) -> pathlib.Path | None:
        return None if self.path is None else self.path.with_suffix(".lock")

    def kernel_env(self) -> dict[str, str]:
        """Environment a kernel of this stack starts with (thread counts come from the plan)."""
        env = dict(self.env)
        if self.threading_layer != "default":
            env["NUMBA_THREADING_LAYER"] = self.threading_layer
        return env

    def summary(self) -> dict[str, Any]:
        """JSON-ready description (``ctrlstack stack list --json``)."""
        return {
            "name": self.name,
            "description": self.description,
            "python": self.python,
            "packages": list(self.packages),
            "ops": list(self.ops),
            "modules": list(self.modules),
            "threading-layer": self.threading_layer,
            "env": dict(self.env),
            "file": None if self.path is None else str(self.path),
            "lock": None if self.lock is None else str(self.lock),
            "prefix": str(self.prefix or default_prefix(self.name)),
        }


def _fail(where: str, key: str, value: Any, allowed: str) -> StackError:
    return StackError(f"{where}: {key} = {value!r} is invalid; expected {allowed}")


def _strings(where: str, key: str, value: Any, pattern: re.Pattern[str] | None = None) -> tuple:
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise _fail(where, key, value, "a list of non-empty strings")
    if pattern is not None:
        for v in value:
            if not pattern.match(v):
                raise _fail(where, key, v, f"strings matching {pattern.pattern}")
    return tuple(v.strip() for v in value)


def parse_stack(data: Mapping[str, Any], *, where: str, path: pathlib.Path | None = None) -> Stack:
    """Validate a stack body (parsed TOML) into a :class:`Stack`; errors name file and key."""
    unknown = sorted(set(data) - _KEYS)
    if unknown:
        raise StackError(
            f"{where}: unknown key {unknown[0]!r}; allowed: {', '.join(sorted(_KEYS))}"
        )
    name = data.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise _fail(where, "name", name, "a name of letters, digits, '.', '_' or '-'")
    description = data.get("description", "")
    if not isinstance(description, str):
        raise _fail(where, "description", description, "a string")
    python = data.get("python", "3.11")
    if not isinstance(python, str) or not re.match(r"^3\.\d+$", python):
        raise _fail(where, "python", python, "a Python minor version such as '3.11'")
    threads = data.get("threads", {})
    if not isinstance(threads, Mapping) or set(threads) - {"numba-threading-layer"}:
        raise _fail(where, "threads", threads, "a table with numba-threading-layer only")
    layer = threads.get("numba-threading-layer", "default")
    if layer not in THREADING_LAYERS:
        raise _fail(where, "threads.numba-threading-layer", layer, " | ".join(THREADING_LAYERS))
    env = data.get("env", {})
    if not isinstance(env, Mapping) or not all(
        isinstance(k, str) and _ENV_NAME.match(k) and isinstance(v, str) for k, v in env.items()
    ):
        raise _fail(where, "env", env, 'a table of VARIABLE = "string"')
    return Stack(
        name=name,
        description=description.strip(),
        python=python,
        packages=_strings(where, "packages", data.get("packages", [])),
        ops=_strings(where, "ops", data.get("ops", [])),
        modules=_strings(where, "modules", data.get("modules", [])),
        threading_layer=layer,
        env=dict(env),
        path=path,
    )


def read_stack_file(path: pathlib.Path) -> Stack:
    """Load and validate one stack TOML file."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise StackError(f"cannot read stack file {str(path)!r}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise StackError(f"{path}: not valid TOML: {exc}") from None
    return parse_stack(data, where=str(path), path=path)


def builtin_dirs() -> list[pathlib.Path]:
    """Where ctrlstack's own stacks live: in a wheel ``ctrlstack/environments`` (force-included),
    in a source checkout the top-level ``environments/`` beside the package."""
    package = pathlib.Path(str(importlib.resources.files("ctrlstack")))
    return [d for d in (package / "environments", package.parent / "environments") if d.is_dir()]


def _data_home(environ: Mapping[str, str]) -> pathlib.Path:
    xdg = environ.get("XDG_DATA_HOME", "")
    if xdg and os.path.isabs(xdg):
        return pathlib.Path(xdg)
    return pathlib.Path(os.path.expanduser("~")) / ".local" / "share"


def _section() -> Mapping[str, Any]:
    import dask.config

    import ctrlstack.config  # noqa: F401 - registers the packaged defaults

    section = dask.config.get("ctrlstack", default={})
    return section if isinstance(section, Mapping) else {}


def _expand(value: str) -> pathlib.Path:
    return pathlib.Path(os.path.expanduser(os.path.expandvars(value)))


def default_prefix(name: str) -> pathlib.Path:
    """Where stack ``name`` is built: its ``prefix`` in config, else ``<stacks-dir>/<name>``
    (``ctrlstack.stacks-dir``; default ``$XDG_DATA_HOME/ctrlstack/stacks``)."""
    section = _section()
    entry = (section.get("stacks") or {}).get(name) or {}
    if isinstance(entry, Mapping) and entry.get("prefix"):
        return _expand(str(entry["prefix"]))
    root = section.get("stacks-dir") or section.get("stacks_dir")
    base = _expand(str(root)) if root else _data_home(os.environ) / "ctrlstack" / "stacks"
    return base / name


def stacks() -> dict[str, Stack]:
    """Every stack by name: ctrlstack's own, then ``ctrlstack.stacks`` entries from config.

    A config entry with ``file`` adds (or replaces) a stack from that TOML file; its ``prefix``
    sets where the stack is built.  The schema of entries is in ``ctrlstack-schema.yaml``.
    """
    found: dict[str, Stack] = {}
    for directory in builtin_dirs():
        for path in sorted(directory.glob("*.toml")):
            stack = read_stack_file(path)
            found.setdefault(stack.name, stack)
    entries = _section().get("stacks") or {}
    if not isinstance(entries, Mapping):
        raise StackError(f"ctrlstack.stacks = {entries!r} is invalid; expected a mapping")
    for key, entry in entries.items():
        where = f"ctrlstack.stacks.{key}"
        if not isinstance(entry, Mapping) or set(entry) - {"file", "prefix"}:
            raise StackError(
                f"{where}: expected a mapping with keys file and prefix, got {entry!r}"
            )
        file = entry.get("file")
        if file:
            stack = read_stack_file(_expand(str(file)))
            if stack.name != key:
                raise StackError(
                    f"{where}: file {file!r} defines stack {stack.name!r}, not {key!r}"
                )
            found[key] = stack
        elif key not in found:
            raise StackError(f"{where}: no stack {key!r} to configure; give file: <stack.toml>")
    return {
        name: Stack(**{**stack.__dict__, "prefix": default_prefix(name)})
        for name, stack in sorted(found.items())
    }


def get_stack(name: str) -> Stack:
    """The stack ``name`` or a :class:`~ctrlstack.errors.NotFoundError` listing the known ones."""
    known = stacks()
    if name not in known:
        raise NotFoundError(
            f"unknown stack {name!r}; known stacks: {', '.join(known) or '(none)'} "
            "(sites add stacks under ctrlstack.stacks in their Dask config)"
        )
    return known[name]


def lock_hash(text: str) -> str:
    """sha256 of a lock's text: the identity of a build (line endings normalised)."""
    return hashlib.sha256(text.replace("\r\n", "\n").encode()).hexdigest()
