"""Validate profile data against ``ctrlstack-schema.yaml`` with messages people can act on.

Pure: never touches ``dask.config``, and reads only the two packaged YAML files (plus, to quote
its problem in one line, a Dask config file that Dask found malformed).  :mod:`ctrlstack.config`
is the public face; this module holds the parts that need no Dask: schema loading, schema ->
English (:func:`describe`), translation of ``jsonschema`` errors into :class:`ConfigError`, and
the rules JSON Schema cannot state (cross-field limits, ``parse_bytes`` strings).

Every message has the shape ``profile 'p': field 'f' = value is not allowed; expected <what>``
(``choose one of ...`` for enums), where ``<what>`` is generated from the schema keywords, so the
text and the schema cannot drift apart.  ``jsonschema`` is imported on first use only: with
``rfc3987-syntax`` installed (Jupyter brings it) ``import jsonschema`` costs about two seconds.
"""

from __future__ import annotations

import copy
import difflib
import functools
import importlib.resources
import json
import os
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import yaml

from ctrlstack.errors import UserError

__all__ = [
    "NAMESPACE",
    "ConfigError",
    "backend_options_schema",
    "builtin_profile",
    "describe",
    "field_error",
    "malformed_file_error",
    "normalise_profile",
    "packaged_defaults",
    "profile_key",
    "profile_schema",
    "schema",
    "section_schema",
    "suggest",
    "validate_backend_options",
    "validate_profile",
    "validate_section",
    "with_source",
]

NAMESPACE = "ctrlstack"


def _load_packaged(name: str) -> dict[str, Any]:
    text = importlib.resources.files("ctrlstack").joinpath(name).read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    if not isinstance(data, dict):  # pragma: no cover - a packaging error, caught by the tests
        raise TypeError(f"packaged {name} is not a mapping")
    return data


@functools.cache
def _packaged_defaults() -> dict[str, Any]:
    return _load_packaged("ctrlstack.yaml")


def packaged_defaults() -> dict[str, Any]:
    """The packaged ``ctrlstack.yaml`` (``{"ctrlstack": {...}}``), a fresh copy each call."""
    return copy.deepcopy(_packaged_defaults())


@functools.cache
def schema() -> dict[str, Any]:
    """The packaged JSON Schema (``ctrlstack-schema.yaml``) as a dict; do not mutate it."""
    return _load_packaged("ctrlstack-schema.yaml")


def profile_schema() -> dict[str, Any]:
    """The schema of one profile (``$defs/profile``)."""
    return schema()["$defs"]["profile"]


def section_schema() -> dict[str, Any]:
    """The schema of the ``ctrlstack`` section of dask.config."""
    return schema()["properties"][NAMESPACE]


def builtin_profile() -> dict[str, Any]:
    """Field defaults: the packaged ``local`` profile (never the user's modified copy)."""
    return copy.deepcopy(_packaged_defaults()[NAMESPACE]["profiles"]["local"])


# ------------------------------------------------------------------------------------ errors
class ConfigError(UserError):
    """A configuration value is invalid, or a profile does not exist.

    Raised by :mod:`ctrlstack.config` (and re-exported there, which is where users import it).

    ``profile``, ``field`` (dotted YAML path such as ``adapt.minimum``) and ``value`` identify what
    was wrong and ``allowed`` says, in words, what would have been accepted, so that a REST handler
    or a form can point at the field without parsing the message.  ``source`` says where a value
    read from ``dask.config`` was set: a config file's path, ``environment variable DASK_...`` or
    ``dask.config.set()`` (``None`` for values passed in directly, such as overrides).
    """

    def __init__(
        self,
        message: str,
        *,
        profile: str | None = None,
        field: str | None = None,
        value: Any = None,
        allowed: str | None = None,
        source: str | None = None,
    ) -> None:
        super().__init__(message)
        self.profile = profile
        self.field = field
        self.value = value
        self.allowed = allowed
        self.source = source


def with_source(error: ConfigError, source: str | None) -> ConfigError:
    """``error`` with `` (from <source>)`` appended: a user who cannot find the bad value in any
    file they know of is stuck, so every error about a configured value says where it was set."""
    if source is None or error.source is not None:
        return error
    return ConfigError(
        f"{error} (from {source})",
        profile=error.profile,
        field=error.field,
        value=error.value,
        allowed=error.allowed,
        source=source,
    )


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _mark(mark: Any) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}"


def _yaml_problem(path: str) -> str | None:
    """What is wrong with the Dask config file ``path``, read as Dask reads it, in one line.

    PyYAML's own message spans five lines with a source excerpt and a caret; the problem and its
    line/column are what a user needs to find it.  ``None`` if the file reads fine now.
    """
    try:
        with open(path) as f:  # Dask opens config files with the locale's encoding, too
            data = yaml.safe_load(f.read())
    except yaml.MarkedYAMLError as exc:
        text = exc.problem or "invalid YAML"
        if exc.problem_mark is not None:
            text += f" at {_mark(exc.problem_mark)}"
        if exc.context:
            context = exc.context + (f" at {_mark(exc.context_mark)}" if exc.context_mark else "")
            text += f" ({context})"
        return f"not valid YAML: {_one_line(text)}"
    except (yaml.YAMLError, OSError, ValueError) as exc:  # ValueError: UnicodeDecodeError
        return f"not readable as YAML: {_one_line(str(exc))}"
    if data is not None and not isinstance(data, dict):
        return f"not a mapping at the top level (it is a {type(data).__name__})"
    return None


_DASK_MALFORMED = re.compile(r"A dask config file at (?P<path>'[^\n]*?'|\"[^\n]*?\") is malformed")


def malformed_file_error(exc: ValueError) -> ConfigError | None:
    """Dask's "config file is malformed" ``ValueError`` as a one-line ConfigError, else None.

    Dask raises it while ``import dask`` runs, with the YAML parser's multi-line message; the
    error names the file, the problem with its line and column, and the way out.
    """
    import ast

    found = _DASK_MALFORMED.search(str(exc))
    if found is None:
        return None
    path = str(ast.literal_eval(found.group("path")))
    problem = _yaml_problem(path) or "malformed (it reads fine now: was it being edited?)"
    if os.environ.get("DASK_CONFIG") == path:
        way_out = "fix it, or point DASK_CONFIG elsewhere"
    else:
        way_out = (
            f"fix it, or move it out of {os.path.dirname(path) or '.'} (Dask reads every "
            "*.yaml, *.yml and *.json file there)"
        )
    return ConfigError(
        f"Dask config file {path} is {problem}; {way_out}",
        value=path,
        allowed="a YAML file holding a mapping",
        source=path,
    )


def _where(profile: str | None) -> str:
    return f"profile {profile!r}" if profile is not None else f"{NAMESPACE} config"


def field_error(
    profile: str | None,
    path: str,
    value: Any,
    allowed: str,
    *,
    choose: bool = False,
    note: str = "",
) -> ConfigError:
    """``profile 'p': field 'f' = v is not allowed; choose one of .../expected ...``."""
    hint = f"choose {allowed}" if choose else f"expected {allowed}"
    return ConfigError(
        f"{_where(profile)}: field {path!r} = {value!r} is not allowed; {hint}{note}",
        profile=profile,
        field=path,
        value=value,
        allowed=allowed,
    )


def suggest(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'workers'?)`` for a near miss, else an empty string."""
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


# --------------------------------------------------------------- schema -> English (pure)
def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def _join_or(parts: list[str]) -> str:
    parts = list(dict.fromkeys(p for p in parts if p))
    if len(parts) <= 1:
        return "".join(parts)
    return ", ".join(parts[:-1]) + " or " + parts[-1]


def _bounds(node: Mapping[str, Any]) -> str:
    text = ""
    if "minimum" in node:
        text += f" >= {node['minimum']}"
    if "exclusiveMinimum" in node:
        text += f" > {node['exclusiveMinimum']}"
    if "maximum" in node:
        text += f" <= {node['maximum']}"
    return text


def _describe_type(kind: str, node: Mapping[str, Any]) -> str:
    if kind in ("integer", "number"):
        return f"{'an integer' if kind == 'integer' else 'a number'}{_bounds(node)}"
    if kind == "string":
        text = "a non-empty string" if node.get("minLength") else "a string"
        if "pattern" in node:
            text += f" matching {node['pattern']}"
        if node.get("examples"):
            text += " such as " + ", ".join(repr(e) for e in node["examples"])
        return text
    if kind == "boolean":
        return "true or false"
    if kind == "null":
        return "null"
    if kind == "object":
        if node.get("properties"):
            return "a mapping with keys " + ", ".join(node["properties"])
        return "a mapping"
    return f"a{'n' if kind[:1] in 'aeiou' else ''} {kind}"


def describe(node: Mapping[str, Any]) -> str:
    """Say in words what a (sub)schema accepts: ``{'type': 'integer', 'minimum': 1}`` -> ``an
    integer >= 1``.  Enums render as ``one of a, b, c`` (bare words, as users type them in YAML).
    """
    if "enum" in node:
        return "one of " + ", ".join(
            _show(v) if not isinstance(v, str) else v for v in node["enum"]
        )
    if "const" in node:
        return _show(node["const"])
    alternatives = node.get("anyOf") or node.get("oneOf")
    if alternatives:
        return _join_or([describe(alt) for alt in alternatives])
    kinds = node.get("type", [])
    kinds = [kinds] if isinstance(kinds, str) else list(kinds)
    return _join_or([_describe_type(k, node) for k in kinds]) or "any value"


# ------------------------------------------------------------------------- validation (pure)
def _dashed(key: Any) -> Any:
    return key.replace("_", "-") if isinstance(key, str) else key


def _canonical_keys(data: Mapping[str, Any], known: Iterable[str], profile: str) -> dict[str, Any]:
    """Accept ``memory_limit`` for ``memory-limit``: Dask env vars and Python callers use ``_``.

    Unknown keys are kept as written so that the error message quotes what the user typed.
    """
    known = set(known)
    out: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for key, value in data.items():
        name = _dashed(key) if _dashed(key) in known else key
        if name in out:
            raise ConfigError(
                f"{_where(profile)}: field {name!r} is given twice (as {origin[name]!r} and "
                f"{key!r}); keep one",
                profile=profile,
                field=str(name),
            )
        out[name] = value
        origin[name] = str(key)
    return out


def normalise_profile(data: Mapping[str, Any], profile: str) -> dict[str, Any]:
    """Key spelling and two harmless shorthands, before the schema sees the data."""
    node = profile_schema()
    out = _canonical_keys(data, node["properties"], profile)
    options = out.get("worker-options")
    if isinstance(options, Mapping):
        sub = node["properties"]["worker-options"]["properties"]
        out["worker-options"] = _canonical_keys(options, sub, profile)
    # Dask's env parser reads the word "none" as None, so DASK_..._POLICY=none arrives as null.
    if "policy" in out and out["policy"] is None:
        out["policy"] = "none"
    # A ClusterSpec-shaped (minimum, maximum) pair is accepted for adapt.
    adapt = out.get("adapt")
    if isinstance(adapt, list | tuple) and len(adapt) == 2:
        out["adapt"] = {"minimum": adapt[0], "maximum": adapt[1]}
    return out


def _merge_defaults(defaults: Mapping[str, Any], data: Mapping[str, Any]) -> dict[str, Any]:
    """Fill fields (and sub-keys of mapping fields) missing from ``data`` from ``defaults``."""
    out = copy.deepcopy(dict(defaults))
    for key, value in data.items():
        base = out.get(key)
        if isinstance(base, Mapping) and isinstance(value, Mapping):
            out[key] = _merge_defaults(base, value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _override_note(overridden: Mapping[str, str], key: str) -> str:
    """Point at the keyword argument when the bad value came from ``get_profile(**overrides)``."""
    return f" (from the override {overridden[key]}=...)" if key in overridden else ""


def _path_text(path: Iterable[Any]) -> str:
    return ".".join(str(p) for p in path)


def schema_error_to_config_error(
    error: Any, profile: str | None, prefix: str, overridden: Mapping[str, str]
) -> ConfigError:
    """Turn one ``jsonschema.ValidationError`` into a ConfigError in our message format."""
    path = list(error.absolute_path)
    where = _path_text([prefix, *path] if prefix else path)
    note = _override_note(overridden, str(path[0])) if path else ""
    node = error.schema if isinstance(error.schema, Mapping) else {}
    if error.validator == "additionalProperties" and node.get("additionalProperties") is False:
        names = list(node.get("properties", {}))
        extra = [k for k in error.instance if k not in names]
        bad = extra[0] if extra else "?"
        where_key = _path_text([*([prefix] if prefix else []), *path, bad])
        return ConfigError(
            f"{_where(profile)}: unknown field {where_key!r}{suggest(str(bad), names)}; "
            f"allowed fields: {', '.join(names)}{note}",
            profile=profile,
            field=where_key,
            value=error.instance.get(bad) if isinstance(error.instance, Mapping) else None,
            allowed=", ".join(names),
        )
    if error.validator == "required":
        missing = [k for k in node.get("required", []) if k not in error.instance]
        key = missing[0] if missing else "?"
        sub = node.get("properties", {}).get(key, {})
        full = _path_text([*([prefix] if prefix else []), *path, key])
        return ConfigError(
            f"{_where(profile)}: field {full!r} is missing; expected {describe(sub)}{note}",
            profile=profile,
            field=full,
            allowed=describe(sub),
        )
    if "propertyNames" in error.absolute_schema_path:
        allowed = describe({"type": "string", **node})
        return ConfigError(
            f"{_where(profile)}: field {where!r} has key {error.instance!r}, which is not "
            f"allowed; keys must be {allowed}{note}",
            profile=profile,
            field=where,
            value=error.instance,
            allowed=allowed,
        )
    if "enum" in node:
        return field_error(profile, where, error.instance, describe(node), choose=True, note=note)
    return field_error(profile, where, error.instance, describe(node), note=note)


_FAST: dict[str, Callable[[Any], Any]] = {}


def _is_valid(instance: Any, node: Mapping[str, Any]) -> bool:
    """Fast yes/no check with a compiled ``fastjsonschema`` validator (cached per schema).

    ``import jsonschema`` costs seconds when Jupyter's ``rfc3987-syntax`` is installed, and every
    ``ctrlstack launch`` and supervisor start validates a profile; valid input — the common case —
    never needs jsonschema's detailed errors, so it never pays for that import.
    """
    import fastjsonschema

    key = json.dumps(node, sort_keys=True, default=str)
    check = _FAST.get(key)
    if check is None:
        check = _FAST[key] = fastjsonschema.compile(dict(node))
    try:
        check(copy.deepcopy(instance))  # fastjsonschema may fill defaults in place
    except fastjsonschema.JsonSchemaException:
        return False
    return True


def first_schema_error(instance: Any, node: Mapping[str, Any]) -> Any:
    """The first violation, in the order the schema lists its properties, or None.

    ``jsonschema`` is imported here, only once the fast check found a violation (see
    :func:`_is_valid`).  The subschemas validated here contain no ``$ref``, so no registry is needed.
    """
    if _is_valid(instance, node):
        return None
    import jsonschema

    order = {name: i for i, name in enumerate(node.get("properties", {}))}

    def position(error: Any) -> tuple[int, list[str]]:
        path = [str(p) for p in error.path]
        return (order.get(path[0], len(order)) if path else -1, path)

    validator = jsonschema.Draft202012Validator(node)
    errors = sorted(validator.iter_errors(instance), key=position)
    return errors[0] if errors else None


def _semantic_checks(data: Mapping[str, Any], profile: str, overridden: Mapping[str, str]) -> None:
    """Rules JSON Schema cannot state: cross-field limits and byte-size strings."""

    def note(key: str) -> str:
        return _override_note(overridden, key)

    limit = data["memory-limit"]
    if isinstance(limit, str) and limit.strip() != "auto":
        from dask.utils import parse_bytes

        try:
            size = parse_bytes(limit)
        except (ValueError, TypeError) as exc:
            raise field_error(
                profile,
                "memory-limit",
                limit,
                describe(profile_schema()["properties"]["memory-limit"]),
                note=f" ({exc}){note('memory-limit')}",
            ) from None
        if size < 0:
            raise field_error(
                profile, "memory-limit", limit, "a size >= 0", note=note("memory-limit")
            )
    adapt = data["adapt"]
    if adapt is not None and adapt["minimum"] > adapt["maximum"]:
        raise field_error(
            profile,
            "adapt",
            adapt,
            f"minimum <= maximum (here {adapt['minimum']} > {adapt['maximum']})",
            note=note("adapt"),
        )
    threads, task_threads = data["threads"], data["task-threads"]
    if isinstance(threads, int) and isinstance(task_threads, int) and task_threads > threads:
        raise field_error(
            profile,
            "task-threads",
            task_threads,
            f"an integer <= threads ({threads}); more task threads than CPUs oversubscribes "
            "the worker",
            note=note("task-threads"),
        )
    if data["policy"] == "core" and threads not in ("auto", 1):
        raise field_error(
            profile,
            "threads",
            threads,
            "1 or 'auto' with policy 'core' (one single-threaded worker per core); use "
            "policy 'l3' for multi-threaded workers",
            note=note("threads"),
        )


def _coerce_int(value: Any) -> Any:
    """JSON Schema counts 2.0 as an integer; give the spec a real int."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def validate_profile(
    data: Mapping[str, Any], profile: str, overridden: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Normalise, fill defaults, validate (schema, then semantics); return the full profile."""
    overridden = overridden or {}
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"{_where(profile)}: expected a mapping of fields, got {data!r}",
            profile=profile,
            value=data,
            allowed="a mapping of fields",
        )
    full = _merge_defaults(builtin_profile(), normalise_profile(data, profile))
    error = first_schema_error(full, profile_schema())
    if error is not None:
        raise schema_error_to_config_error(error, profile, "", overridden)
    for key in ("workers", "threads", "task-threads", "memory-limit"):
        full[key] = _coerce_int(full[key])
    if full["adapt"] is not None:
        full["adapt"] = {k: _coerce_int(v) for k, v in full["adapt"].items()}
    _semantic_checks(full, profile, overridden)
    return full


def profile_key(name: str, profiles: Mapping[str, Any]) -> str | None:
    """``slurm_big`` finds ``slurm-big`` and vice versa, as ``dask.config.get`` does for keys:
    Dask environment variables can only spell ``_``."""
    for key in (name, name.replace("_", "-"), name.replace("-", "_")):
        if key in profiles:
            return key
    return None


def backend_options_schema(backend: str) -> dict[str, Any]:
    """The schema of one backend's profile section (``$defs/backend-options/<backend>``)."""
    return schema()["$defs"]["backend-options"].get(backend, {"type": "object"})


def validate_backend_options(
    backend: str, data: Any, profile: str | None, overridden: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Validate a backend section (already merged over its defaults); errors say ``<backend>.x``."""
    node = backend_options_schema(backend)
    if not isinstance(data, Mapping):
        raise field_error(profile, backend, data, describe(node))
    out = _canonical_keys(data, node.get("properties", {}), profile or NAMESPACE)
    error = first_schema_error(out, node)
    if error is not None:
        raise schema_error_to_config_error(error, profile, backend, overridden or {})
    return out


def validate_section(section: Any) -> None:
    """Check a whole ``ctrlstack`` section (every profile); raise the first ConfigError.

    Unlike resolving one profile, an unknown top-level key or a broken profile nobody asked for is
    reported too, which is what a ``config check`` command wants.
    """
    top = section_schema()
    # Profiles are validated one by one below, so that the error names the profile.
    names_only = {
        k: v for k, v in top["properties"]["profiles"].items() if k != "additionalProperties"
    }
    error = first_schema_error(
        section, {**top, "properties": {**top["properties"], "profiles": names_only}}
    )
    if error is not None:
        raise schema_error_to_config_error(error, None, NAMESPACE, {})
    profiles = section.get("profiles", {})
    for name, body in profiles.items():
        validate_profile(body, str(name))
    default = section.get("default-profile")
    if default is not None and profile_key(default, profiles) is None:
        raise field_error(
            None,
            f"{NAMESPACE}.default-profile",
            default,
            "one of the configured profiles: " + ", ".join(sorted(map(str, profiles))),
        )
