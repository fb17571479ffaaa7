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
* **Bad config is one line, naming its file.**  A malformed Dask config file makes ``import dask``
  fail with a 40-line traceback; importing this module (the first thing every door does) turns
  that into a :class:`ConfigError` naming the file, the YAML problem and its line.  A ``ctrlstack``
  value of the wrong shape (``ctrlstack: [1, 2]``, ``profiles: 5``, ``launch-timeout: x``) is
  reported with the file, environment variable or ``dask.config.set`` it came from, instead of
  being papered over by the packaged defaults.

A profile that leaves a field out takes the value of the *packaged* ``local`` profile, so a user
file may define ``big: {workers: 4}`` and nothing more.
"""

from __future__ import annotations

import copy
import os
import pathlib
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from ._config_check import (
    NAMESPACE,
    ConfigError,
    backend_options_schema,
    builtin_profile,
    describe,
    field_error,
    first_schema_error,
    malformed_file_error,
    normalise_profile,
    packaged_defaults,
    profile_key,
    profile_schema,
    schema_error_to_config_error,
    section_schema,
    suggest,
    validate_backend_options,
    validate_profile,
    validate_section,
    with_source,
)

try:
    import dask.config
except ValueError as exc:  # Dask reads every config file while it is imported
    _error = malformed_file_error(exc)
    if _error is None:
        raise
    # The failed `import dask` leaves the submodules it had finished (dask.typing, ...) in
    # sys.modules without their package.  A later `import dask` (the user fixed the file) would
    # then build a `dask` module lacking those attributes (`dask.typing` -> AttributeError).
    # With the package gone nothing can use the orphans, so drop them: the next import starts
    # clean and reports the file again if it is still broken.
    if "dask" not in sys.modules:
        for _name in [m for m in sys.modules if m.startswith("dask.")]:
            del sys.modules[_name]
    raise _error from None

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
_ABSENT: Any = object()


def _register_defaults() -> None:
    """Register the packaged defaults without hiding what the config sources say.

    ``dask.config.update_defaults`` replaces a non-mapping value with the defaults' mapping, so a
    file's ``ctrlstack: [1, 2]`` or ``profiles: 5`` (read when Dask was imported) would vanish
    without a word, whereas ``dask.config.refresh()`` keeps it.  Re-applying what was there before
    makes the live config what ``refresh()`` builds, so :func:`_section` can report it.
    """
    present = NAMESPACE in dask.config.config
    before = copy.deepcopy(dask.config.config.get(NAMESPACE))
    dask.config.update_defaults(copy.deepcopy(_DEFAULTS))
    if present:
        dask.config.update(dask.config.config, {NAMESPACE: before}, priority="new")


_register_defaults()


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
                # Every backend section is a profile field; only the own backend's is used.
                for other in profile_schema()["properties"]["backend"]["enum"]:
                    out[other] = {}
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


# --------------------------------------------------------------- where a config value came from
def _dig(data: Any, keys: Sequence[Any]) -> Any:
    """``data[k1][k2]...`` with Dask's ``-``/``_`` equivalence for keys, or ``_ABSENT``."""
    for key in keys:
        if not isinstance(data, Mapping):
            return _ABSENT
        if key not in data and isinstance(key, str):
            key = key.replace("_", "-") if "_" in key else key.replace("-", "_")
        if key not in data:
            return _ABSENT
        data = data[key]
    return data


def _config_files(paths: Sequence[str]) -> list[str]:
    """The files ``dask.config.collect_yaml`` reads from ``paths``, in its (priority) order."""
    files: list[str] = []
    for path in paths:
        if os.path.isdir(path):
            try:
                names = os.listdir(path)
            except OSError:
                continue
            files.extend(
                sorted(
                    os.path.join(path, name)
                    for name in names
                    if os.path.splitext(name)[1].lower() in (".json", ".yaml", ".yml")
                )
            )
        elif os.path.exists(path):
            files.append(path)
    return files


def _file_stamp(path: str) -> tuple[int, int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return (info.st_mtime_ns, info.st_size, info.st_ino)


_SOURCES: list[Any] = [None, []]  # [stamp, sources] of the last _sources() call


def _sources() -> list[tuple[str, Any]]:
    """``(name, config)`` of every source Dask merges, highest priority first.

    Environment variables come one by one so that an error can name the variable.  The files are
    read again only when the list of files, a file's stamp or a DASK_ variable changed, so this
    is cheap enough to consult on every :func:`_section` call.
    """
    files = _config_files(dask.config.paths)
    environ = sorted((k, os.environ[k]) for k in os.environ if k.startswith("DASK_"))
    stamp = (files, [_file_stamp(f) for f in files], environ)
    if _SOURCES[0] == stamp:
        return list(_SOURCES[1])
    out = [(f"environment variable {k}", dask.config.collect_env({k: v})) for k, v in environ]
    for path in reversed(files):
        try:
            out.extend((path, data) for data in dask.config.collect_yaml([path]))
        except ValueError:  # malformed since Dask read it: it cannot hold the live value
            continue
    _SOURCES[:] = [stamp, out]
    return list(out)


def _source_of(keys: Sequence[Any]) -> str | None:
    """Which source set the live value at ``keys`` (a file path, ``environment variable X`` or
    ``dask.config.set()``), or None if it is the packaged default.

    Dask keeps no record of origins, so this asks every source, highest priority first, for the
    same value.  A key missing from the live config (a required sub-key) is looked up through
    its nearest present parent.  Only called on the error path.
    """
    keys = list(keys)
    live = _dig(dask.config.config, keys)
    while live is _ABSENT and len(keys) > 1:
        keys.pop()
        live = _dig(dask.config.config, keys)
    if live is _ABSENT:
        return None
    holders = [
        (name, value) for name, data in _sources() if (value := _dig(data, keys)) is not _ABSENT
    ]
    for name, value in holders:
        if value == live:
            return name
    if holders:  # a mapping merged from several sources: the highest one is the best lead
        return holders[0][0]
    if live == _dig(_DEFAULTS, keys):
        return None
    return "dask.config.set() in this process"


def _located(error: ConfigError, keys: Sequence[Any]) -> ConfigError:
    """``error`` naming the source of the config value at ``keys``."""
    return with_source(error, _source_of(keys))


# ----------------------------------------------------------------------- public functions
_FIELD_NAMES = tuple(f.name for f in fields(ClusterSpec) if f.name not in ("profile", "options"))


def _canonical(section: Mapping[str, Any]) -> dict[str, Any]:
    """Top-level keys spelled with ``-``.

    Dask environment variables can only spell "_" (DASK_CTRLSTACK__STATE_DIR -> "state_dir");
    dask.config.get treats "-" and "_" alike, so top-level keys are canonicalised the same way.
    When both spellings exist, the underscore one came from an environment variable, which Dask
    ranks above YAML files, so it wins.
    """
    out = {k: v for k, v in section.items() if "_" not in str(k)}
    out.update({str(k).replace("_", "-"): v for k, v in section.items() if "_" in str(k)})
    return out


def _check_source_shapes(source: str, data: Any) -> None:
    """Reject a mapping-shaped setting that one source gives as something else.

    Dask's merge drops such values without a word: a ``[1, 2]`` or ``5`` where a lower source
    or the packaged defaults have a mapping is replaced by that mapping (``update`` overwrites a
    non-mapping with a mapping, whichever has priority).  So the live config cannot show them;
    each source is checked on its own.  Scalar settings merge normally (a later source may fix
    an earlier one's value) and are checked on the live value by :func:`_check_section`.
    """
    section = _dig(data, [NAMESPACE])
    if section is _ABSENT:
        return
    if not isinstance(section, Mapping):
        error = field_error(None, NAMESPACE, section, "a mapping of ctrlstack settings")
        raise with_source(error, source)
    known = section_schema()["properties"]
    for key, value in _canonical(section).items():
        node = known.get(key, {})
        if key == "profiles":
            allowed = "a mapping of profile names"
        elif node.get("type") == "object":
            allowed = describe(node)
        else:
            continue
        if not isinstance(value, Mapping):
            error = field_error(None, f"{NAMESPACE}.{key}", value, allowed)
            raise with_source(error, source)


def _check_profile_sources(key: str) -> None:
    """A profile body that is not a mapping in any source, named with that source (a site
    file's mapping would otherwise replace a user file's ``big: 3`` silently)."""
    for source, data in _sources():
        body = _dig(data, [NAMESPACE, "profiles", key])
        if body is not _ABSENT and not isinstance(body, Mapping):
            try:
                validate_profile(body, key)  # raises the "expected a mapping" error
            except ConfigError as exc:
                raise with_source(exc, source) from None


def _check_section(raw: Any) -> None:
    """Reject a ``ctrlstack`` section, or a top-level setting, of the wrong shape.

    Profiles themselves are checked when they are resolved (a broken profile must not stop the
    others); unknown top-level keys are left to :func:`validate_config`, so that a site file
    written for a newer ctrlstack does not break this one.
    """
    if not isinstance(raw, Mapping):
        error = field_error(None, NAMESPACE, raw, "a mapping of ctrlstack settings")
        raise _located(error, [NAMESPACE])
    known = section_schema()["properties"]
    for key, value in _canonical(raw).items():
        if key == "profiles":
            if not isinstance(value, Mapping):
                error = field_error(
                    None, f"{NAMESPACE}.profiles", value, "a mapping of profile names"
                )
                raise _located(error, [NAMESPACE, key])
        elif key in known:
            problem = first_schema_error(value, known[key])
            if problem is not None:
                error = schema_error_to_config_error(problem, None, f"{NAMESPACE}.{key}", {})
                raise _located(error, [NAMESPACE, key, *problem.absolute_path])


def _section() -> Mapping[str, Any]:
    """The live ``ctrlstack`` section, top-level keys canonical and top-level values checked."""
    for source, data in _sources():
        _check_source_shapes(source, data)
    raw = dask.config.config.get(NAMESPACE, _ABSENT)
    if raw is not _ABSENT:
        _check_section(raw)
    if raw is _ABSENT or "default-profile" not in _canonical(raw):
        # The packaged defaults went missing from the live config: a `dask.config.set()` block
        # for a `ctrlstack.*` key entered before this module registered them deletes the whole
        # namespace when it exits.  Put them back underneath whatever the user has set (which
        # was checked above, so nothing wrong is papered over).
        dask.config.update(dask.config.config, copy.deepcopy(_DEFAULTS), priority="old")
    return _canonical(dask.config.config[NAMESPACE])


def _profiles(section: Mapping[str, Any] | None = None) -> Mapping[str, Any]:
    section = _section() if section is None else section
    profiles: Mapping[str, Any] = section.get("profiles", {})  # a mapping: see _check_section
    return profiles


def profile_names() -> list[str]:
    """Names of all configured profiles, sorted (no validation: a broken profile is listed)."""
    return sorted(str(name) for name in _profiles())


def _lookup(name: str, profiles: Mapping[str, Any], note: str = "") -> str:
    """The profile's key in config (``slurm_big`` finds ``slurm-big``), or a ConfigError that
    lists the known profiles and where they are read from."""
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
    section = _section()
    profiles = _profiles(section)
    if name is None:
        key = _lookup_default(section, profiles)
    elif isinstance(name, str):
        key = _lookup(name, profiles)
    else:
        raise ConfigError(
            f"profile name must be a string, got {name!r}", value=name, allowed="a profile name"
        )
    overridden = {_yaml_name(k): k for k in overrides}
    _check_profile_sources(key)
    try:
        return _resolve(profiles[key], key, overrides)
    except ConfigError as exc:
        raise _located_profile_error(exc, key, overridden) from None


def _lookup_default(section: Mapping[str, Any], profiles: Mapping[str, Any]) -> str:
    """The key of the profile named by ``ctrlstack.default-profile``."""
    default = str(section.get("default-profile"))  # a non-empty string: see _check_section
    try:
        return _lookup(default, profiles, note=f" (named by {NAMESPACE}.default-profile)")
    except ConfigError:
        where = _source_of([NAMESPACE, "default-profile"])
        if where is None:
            raise
        note = f" (named by {NAMESPACE}.default-profile from {where})"
        return _lookup(default, profiles, note=note)


def _resolve(body: Any, key: str, overrides: Mapping[str, Any]) -> ClusterSpec:
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


def _located_profile_error(
    error: ConfigError, key: str, overridden: Mapping[str, str]
) -> ConfigError:
    """Name the source of a bad profile value; an override's error already names the override."""
    path = error.field.split(".") if error.field else []
    if path and path[0] in overridden:
        return error
    return _located(error, [NAMESPACE, "profiles", key, *path])


def launch_timeout() -> float:
    """Seconds to wait for a supervisor to report ready (``ctrlstack.launch-timeout``)."""
    value = _section().get("launch-timeout", _DEFAULTS[NAMESPACE]["launch-timeout"])
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        error = field_error(
            None,
            f"{NAMESPACE}.launch-timeout",
            value,
            describe(section_schema()["properties"]["launch-timeout"]),
        )
        raise _located(error, [NAMESPACE, "launch-timeout"])
    return float(value)


def log_retention() -> tuple[int, int]:
    """``(keep-per-name, keep-total)`` of ``ctrlstack.logs``: how many supervisor logs to keep."""
    packaged = _DEFAULTS[NAMESPACE]["logs"]
    live = _section().get("logs", {})
    # DASK_CTRLSTACK__LOGS__KEEP_PER_NAME arrives as "keep_per_name".
    live = (
        {str(k).replace("_", "-"): v for k, v in live.items()} if isinstance(live, Mapping) else {}
    )
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
    try:
        path = _state_path(_section().get("state-dir"), os.environ)
    except ConfigError as exc:
        raise _located(exc, [NAMESPACE, "state-dir"]) from None
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
