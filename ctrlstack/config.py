"""Named cluster profiles in ``dask.config``, validated into a typed :class:`ClusterSpec`.

Why it looks like this:

* **One config system.**  Profiles live under the ``ctrlstack`` namespace of ``dask.config``, so
  the packaged defaults (``ctrlstack.yaml``), site files (``/etc/dask/*.yaml``), user files
  (``~/.config/dask/*.yaml``), ``DASK_CTRLSTACK__...`` environment variables and
  ``dask.config.set`` combine exactly as they do for every other Dask setting.  Importing this
  module registers the packaged defaults with :func:`dask.config.update_defaults`; it writes no
  files.
* **One schema.**  ``ctrlstack-schema.yaml`` (JSON Schema 2020-12) states what a profile may
  contain.  Every door (Python API, CLI, REST, widgets) goes through :func:`get_profile` or
  :meth:`ClusterSpec.from_dict`, so a bad value is rejected in one place, with a message naming
  the profile, the field, the value and what is allowed (see :mod:`ctrlstack._config_check`).
* **Resolve once.**  Callers get a frozen :class:`ClusterSpec` instead of calling
  ``dask.config.get`` field by field (dask-jobqueue's ``Job.__init__`` does that 23 times).
* **Cheap import.**  No jsonschema, numba or Jupyter at import time; validation imports
  ``jsonschema`` on first use.

A profile that leaves a field out takes the value of the *packaged* ``local`` profile, so a user
file may define ``big: {workers: 4}`` and nothing more.
"""

from __future__ import annotations

import copy
import os
import pathlib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal

import dask.config

from ._config_check import (
    NAMESPACE,
    ConfigError,
    backend_options_schema,
    builtin_profile,
    describe,
    field_error,
    normalise_profile,
    packaged_defaults,
    profile_key,
    section_schema,
    suggest,
    validate_backend_options,
    validate_profile,
    validate_section,
)

__all__ = [
    "ClusterSpec",
    "ConfigError",
    "get_profile",
    "launch_timeout",
    "log_retention",
    "profile_names",
    "state_dir",
    "validate_config",
]

_DEFAULTS = packaged_defaults()
dask.config.update_defaults(copy.deepcopy(_DEFAULTS))


# ---------------------------------------------------------------------------- ClusterSpec
def _yaml_name(python_name: str) -> str:
    return python_name.replace("_", "-")


@dataclass(frozen=True)
class ClusterSpec:
    """A validated profile: everything a backend needs to start one cluster.

    Build it with :func:`get_profile` or :meth:`from_dict`; the constructor itself trusts its
    arguments.  ``env`` and ``worker_options`` are plain dicts (kept picklable); treat them as
    read-only.  They are left out of ``hash()`` so specs can still be dict keys.
    """

    profile: str
    backend: str
    workers: int | Literal["auto"]
    threads: int | Literal["auto"]
    task_threads: int | None
    policy: str
    smt: bool
    memory_limit: str | int
    dashboard: bool
    idle_timeout: float | None
    adapt: tuple[int, int] | None
    env: Mapping[str, str] = field(hash=False)
    worker_options: Mapping[str, Any] = field(default_factory=dict, hash=False)
    #: The backend's own section (``local:``, ``slurm:``, ...), YAML keys, merged over
    #: ``ctrlstack.backends.<backend>`` and validated against ``$defs/backend-options``.
    options: Mapping[str, Any] = field(default_factory=dict, hash=False)
    #: Computing stack whose Python runs supervisor, scheduler and workers (``None``: ours).
    stack: str | None = None

    def __post_init__(self) -> None:
        # Give worker_options one shape whoever built the spec, so that to_dict/from_dict round
        # trips hold for hand-made specs too; refuse keys that would otherwise vanish silently.
        options = dict(self.worker_options)
        resources = options.pop("resources", None) or {}
        local_directory = options.pop("local_directory", options.pop("local-directory", None))
        if options:
            raise ValueError(
                f"worker_options: unknown keys {sorted(options)}; allowed: resources, "
                "local_directory"
            )
        normalised = {"resources": dict(resources), "local_directory": local_directory}
        object.__setattr__(self, "worker_options", normalised)

    def to_dict(self) -> dict[str, Any]:
        """The profile body with YAML keys (``memory-limit``), JSON-serialisable.

        This is exactly what could be written under ``ctrlstack.profiles.<name>``; the profile
        name is not part of it (pass it to :meth:`from_dict` separately).
        """
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name == "profile":
                continue
            value = getattr(self, f.name)
            if f.name == "options":
                out[self.backend] = copy.deepcopy(dict(value))
                continue
            if f.name == "adapt" and value is not None:
                value = {"minimum": value[0], "maximum": value[1]}
            elif f.name == "worker_options":
                value = {_yaml_name(k): copy.deepcopy(v) for k, v in value.items()}
            elif isinstance(value, Mapping):
                value = dict(value)
            out[_yaml_name(f.name)] = value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, profile: str) -> ClusterSpec:
        """Validate a profile body (YAML keys; ``_`` spellings accepted) and build the spec.

        Fields left out take the packaged ``local`` profile's values.  Raises
        :class:`ConfigError` naming the first bad field.
        """
        return _spec_from_profile(data, profile, {})

    def worker_kwargs(self) -> dict[str, Any]:
        """``worker_options`` as distributed Nanny/Worker keyword arguments (unset ones omitted)."""
        out: dict[str, Any] = {}
        resources = self.worker_options.get("resources")
        if resources:
            out["resources"] = dict(resources)
        local_directory = self.worker_options.get("local_directory")
        if local_directory is not None:
            out["local_directory"] = local_directory
        return out


def _spec_from_profile(
    data: Mapping[str, Any], profile: str, overridden: Mapping[str, str]
) -> ClusterSpec:
    full = validate_profile(data, profile, overridden)
    backend = full["backend"]
    backend_options = validate_backend_options(
        backend,
        _merge(_backend_defaults(backend), full.get(backend) or {}),
        profile,
        overridden,
    )
    adapt = full["adapt"]
    idle = full["idle-timeout"]
    limit = full["memory-limit"]
    options = full["worker-options"]
    return ClusterSpec(
        profile=profile,
        backend=full["backend"],
        workers=full["workers"],
        threads=full["threads"],
        task_threads=full["task-threads"],
        policy=full["policy"],
        smt=full["smt"],
        memory_limit=limit.strip() if isinstance(limit, str) else limit,
        dashboard=full["dashboard"],
        idle_timeout=None if idle is None else float(idle),
        adapt=None if adapt is None else (adapt["minimum"], adapt["maximum"]),
        env=dict(full["env"]),
        worker_options={
            "resources": dict(options["resources"]),
            "local_directory": options["local-directory"],
        },
        options=backend_options,
        stack=full["stack"],
    )


def _merge(base: Mapping[str, Any], over: Any) -> Any:
    """``over`` merged onto ``base`` (mappings recursively); a non-mapping ``over`` wins as is, so
    the validator reports it."""
    if not isinstance(over, Mapping):
        return over
    out = copy.deepcopy(dict(base))
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(out.get(key), Mapping) else value
    return out


def _backend_defaults(backend: str) -> Mapping[str, Any]:
    """``ctrlstack.backends.<backend>``: packaged defaults under site/user settings."""
    packaged = _DEFAULTS[NAMESPACE].get("backends", {}).get(backend, {})
    live = _section().get("backends", {})
    live = live.get(backend, {}) if isinstance(live, Mapping) else {}
    return _merge(packaged, live if isinstance(live, Mapping) else {})


# ----------------------------------------------------------------------- public functions
_FIELD_NAMES = tuple(f.name for f in fields(ClusterSpec) if f.name not in ("profile", "options"))


def _section() -> Mapping[str, Any]:
    if "default-profile" not in dask.config.get(NAMESPACE, default={}):
        # The packaged defaults went missing from the live config: a `dask.config.set()` block
        # for a `ctrlstack.*` key entered before this module registered them deletes the whole
        # namespace when it exits.  Put them back underneath whatever the user has set.
        dask.config.update(dask.config.config, copy.deepcopy(_DEFAULTS), priority="old")
    section = dask.config.get(NAMESPACE, default={})
    if not isinstance(section, Mapping):
        raise field_error(None, NAMESPACE, section, "a mapping")
    # Dask environment variables can only spell "_" (DASK_CTRLSTACK__STATE_DIR -> "state_dir");
    # dask.config.get treats "-" and "_" alike, so top-level keys are canonicalised the same way.
    # When both spellings exist, the underscore one came from an environment variable, which
    # Dask ranks above YAML files, so it wins.
    out = {k: v for k, v in section.items() if "_" not in str(k)}
    out.update({str(k).replace("_", "-"): v for k, v in section.items() if "_" in str(k)})
    return out


def _profiles() -> Mapping[str, Any]:
    profiles = _section().get("profiles", {})
    if not isinstance(profiles, Mapping):
        raise field_error(None, f"{NAMESPACE}.profiles", profiles, "a mapping of profile names")
    return profiles


def profile_names() -> list[str]:
    """Names of all configured profiles, sorted (no validation: a broken profile is listed)."""
    return sorted(str(name) for name in _profiles())


def _lookup(name: str, note: str = "") -> str:
    """The profile's key in config (``slurm_big`` finds ``slurm-big``), or a ConfigError that
    lists the known profiles and where they are read from."""
    profiles = _profiles()
    key = profile_key(name, profiles)
    if key is None:
        known = ", ".join(sorted(map(str, profiles))) or "(none)"
        paths = ", ".join(str(p) for p in dask.config.paths)
        raise ConfigError(
            f"unknown profile {name!r}{note}{suggest(name, map(str, profiles))}; known profiles: "
            f"{known}. Profiles come from ctrlstack's packaged ctrlstack.yaml, then *.yaml files "
            f"in {paths}, then DASK_CTRLSTACK__PROFILES__<NAME>__<FIELD> environment variables "
            "and dask.config.set()",
            profile=name,
            value=name,
            allowed=known,
        )
    return key


def get_profile(name: str | None = None, **overrides: Any) -> ClusterSpec:
    """Resolve profile ``name`` (default: ``ctrlstack.default-profile``) into a ClusterSpec.

    ``overrides`` use Python names (``workers=2``, ``task_threads=1``, ``memory_limit="2GiB"``,
    ``adapt=(0, 8)``) and replace the whole field; ``None`` means YAML ``null``, not "unset".
    Settings of the profile's backend section may be overridden the same way (``walltime=...``
    for a Slurm profile, ``host=...`` for a local one).  The profile and the overrides are
    validated together, so an override may fix a bad field and cross-field rules see the final
    values.  Nothing is written anywhere.
    """
    if name is None:
        default = _section().get("default-profile")
        if not isinstance(default, str) or not default:
            raise field_error(
                None,
                f"{NAMESPACE}.default-profile",
                default,
                describe(section_schema()["properties"]["default-profile"]),
            )
        key = _lookup(default, note=f" (named by {NAMESPACE}.default-profile)")
    elif isinstance(name, str):
        key = _lookup(name)
    else:
        raise ConfigError(
            f"profile name must be a string, got {name!r}", value=name, allowed="a profile name"
        )
    body = _profiles()[key]
    if not isinstance(body, Mapping):
        return _spec_from_profile(body, key, {})  # raises the "expected a mapping" error
    data = normalise_profile(body, key)
    backend = data.get("backend", builtin_profile()["backend"])
    section_keys = tuple(
        backend_options_schema(backend).get("properties", {}) if isinstance(backend, str) else ()
    )
    allowed = _FIELD_NAMES + tuple(k.replace("-", "_") for k in section_keys)
    unknown = [k for k in overrides if k not in allowed]
    if unknown:
        raise ConfigError(
            f"unknown override {unknown[0]!r} for profile {key!r}"
            f"{suggest(unknown[0], allowed)}; allowed overrides: {', '.join(allowed)}",
            profile=key,
            field=unknown[0],
            value=overrides[unknown[0]],
            allowed=", ".join(allowed),
        )
    overridden: dict[str, str] = {}
    for python_name, value in overrides.items():
        yaml_name = _yaml_name(python_name)
        if python_name in _FIELD_NAMES:
            data[yaml_name] = value
            overridden[yaml_name] = python_name
        else:
            section = data.get(backend)
            data[backend] = {**(section if isinstance(section, Mapping) else {}), yaml_name: value}
            overridden[backend] = python_name
    return _spec_from_profile(data, key, overridden)


def launch_timeout() -> float:
    """Seconds to wait for a supervisor to report ready (``ctrlstack.launch-timeout``)."""
    value = _section().get("launch-timeout", _DEFAULTS[NAMESPACE]["launch-timeout"])
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise field_error(
            None,
            f"{NAMESPACE}.launch-timeout",
            value,
            describe(section_schema()["properties"]["launch-timeout"]),
        )
    return float(value)


def log_retention() -> tuple[int, int]:
    """``(keep-per-name, keep-total)`` of ``ctrlstack.logs``: how many supervisor logs to keep."""
    packaged = _DEFAULTS[NAMESPACE]["logs"]
    live = _section().get("logs", {})
    live = live if isinstance(live, Mapping) else {}
    out = []
    for key in ("keep-per-name", "keep-total"):
        value = live.get(key, packaged[key])
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise field_error(None, f"{NAMESPACE}.logs.{key}", value, "an integer >= 1")
        out.append(value)
    return out[0], out[1]


def _state_path(configured: Any, environ: Mapping[str, str]) -> pathlib.Path:
    """Where the state dir is (pure): the configured path or the XDG default."""
    if configured is None:
        xdg = environ.get("XDG_STATE_HOME", "")
        # The XDG spec says a relative XDG_STATE_HOME is invalid and must be ignored.
        if xdg and os.path.isabs(xdg):
            return pathlib.Path(xdg) / "ctrlstack"
        return pathlib.Path(os.path.expanduser("~")) / ".local" / "state" / "ctrlstack"
    key = f"{NAMESPACE}.state-dir"
    if not isinstance(configured, str) or not configured:
        raise field_error(
            None, key, configured, describe(section_schema()["properties"]["state-dir"])
        )
    expanded = os.path.expanduser(os.path.expandvars(configured))
    if not os.path.isabs(expanded):
        raise field_error(
            None,
            key,
            configured,
            "an absolute path (after expanding ~ and $VARS): supervisors run in other directories",
        )
    return pathlib.Path(expanded)


def state_dir() -> pathlib.Path:
    """The per-user state directory, created (mode 0700) if needed, and tightened if too open.

    It holds the cluster registry and TLS material, so it must belong to the caller and be closed
    to everyone else; a directory owned by someone else is an error, not something to fix.
    """
    path = _state_path(_section().get("state-dir"), os.environ)
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise field_error(
            None, f"{NAMESPACE}.state-dir", str(path), "a directory (a file is in the way)"
        ) from None
    info = path.stat()
    if info.st_uid != os.getuid():
        raise ConfigError(
            f"{NAMESPACE} state dir {str(path)!r} belongs to uid {info.st_uid}, not to you "
            f"(uid {os.getuid()}); set {NAMESPACE}.state-dir to a directory of your own",
            field=f"{NAMESPACE}.state-dir",
            value=str(path),
            allowed="a directory owned by the current user",
        )
    if info.st_mode & 0o077:
        path.chmod(0o700)
    return path


def validate_config(config: Mapping[str, Any] | None = None) -> None:
    """Check the whole ``ctrlstack`` section (every profile) and raise the first ConfigError.

    ``config`` is a full Dask-style mapping (``{"ctrlstack": {...}}``); default: the live
    ``dask.config``.  Unlike :func:`get_profile`, an unknown top-level key or a broken profile
    that nobody asked for is reported too, which is what a ``config check`` command wants.
    """
    root: Mapping[str, Any] = dask.config.config if config is None else config
    validate_section(root.get(NAMESPACE, {}))
