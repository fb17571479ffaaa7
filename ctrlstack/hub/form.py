"""The spawn form as pure data: fields from the site's profile schema, parsing, validation.

Why pure: the same validation runs for the HTML form and for a JSON body posted to the REST API,
and it must be testable in milliseconds.  Field help and syntax come from
``ctrlstack-schema.yaml`` (the ``slurm:`` section of a profile), defaults from the profile, and
the upper bounds from the admin's per-group limits, so form, schema and profiles cannot drift.

Every refusal is a :class:`FormError` naming the field: the spawner turns it into HTTP 400 whose
message starts with the field name, and into a readable error on the form.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ctrlstack._config_check import backend_options_schema
from ctrlstack.deploy.batch.options import format_walltime, parse_walltime

__all__ = [
    "FIELDS",
    "FormError",
    "JobRequest",
    "Limits",
    "ProfileChoice",
    "parse_memory_mb",
    "render_form",
    "validate",
]

#: The fields users may set, in form order.  Anything else in a request is refused.
FIELDS = ("profile", "partition", "cores", "memory", "gpus", "walltime", "kernel")

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$")
_MEMORY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?B)?\s*$", re.IGNORECASE)


class FormError(ValueError):
    """One field of a spawn request is not acceptable; ``field`` names it."""

    def __init__(self, field: str, message: str):
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


@dataclass(frozen=True)
class Limits:
    """Upper bounds for one user (the loosest of their groups' limits)."""

    max_cores: int = 4
    max_memory_mb: int = 8192
    max_gpus: int = 0
    max_walltime: int = 8 * 3600
    partitions: tuple[str, ...] = ()  # empty: any partition

    @classmethod
    def for_groups(
        cls, groups: Iterable[str], table: Mapping[str, Mapping[str, Any]], default: Limits
    ) -> Limits:
        """Merge the limits of every group the user is in (each bound: the largest)."""
        found = [cls.from_mapping(table[g], default) for g in sorted(groups) if g in table]
        if not found:
            return default
        parts: set[str] = set()
        for lim in found:
            parts.update(lim.partitions)
        return cls(
            max_cores=max(lim.max_cores for lim in found),
            max_memory_mb=max(lim.max_memory_mb for lim in found),
            max_gpus=max(lim.max_gpus for lim in found),
            max_walltime=max(lim.max_walltime for lim in found),
            partitions=() if any(not lim.partitions for lim in found) else tuple(sorted(parts)),
        )

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], default: Limits) -> Limits:
        """``{"cores": 8, "memory": "16G", "gpus": 1, "walltime": "12:00:00", "partitions": []}``."""
        unknown = set(data) - {"cores", "memory", "gpus", "walltime", "partitions"}
        if unknown:
            raise ValueError(f"unknown limit keys {sorted(unknown)}")
        memory = data.get("memory")
        walltime = data.get("walltime")
        return cls(
            max_cores=int(data.get("cores", default.max_cores)),
            max_memory_mb=default.max_memory_mb if memory is None else parse_memory_mb(memory),
            max_gpus=int(data.get("gpus", default.max_gpus)),
            max_walltime=default.max_walltime if walltime is None else parse_walltime(walltime),
            partitions=tuple(data.get("partitions", default.partitions)),
        )


@dataclass(frozen=True)
class ProfileChoice:
    """A profile offered on the form, with the defaults its ``slurm:`` section gives."""

    name: str
    partition: str | None
    cores: int
    memory_mb: int
    walltime: int
    policy: str
    description: str = ""


@dataclass(frozen=True)
class JobRequest:
    """A validated spawn request: what the job asks of Slurm (kept in the spawner's state)."""

    profile: str
    partition: str | None
    cores: int
    memory_mb: int
    gpus: int
    walltime: int
    kernel: str
    policy: str = "core"
    extra: Mapping[str, str] = field(default_factory=dict, hash=False)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["extra"] = dict(self.extra)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> JobRequest:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)


def parse_memory_mb(value: Any) -> int:
    """``"4G"``, ``"4 GiB"``, ``"512M"``, ``4096`` (MiB) -> MiB, rounded up (never under-ask)."""
    if isinstance(value, bool):
        raise TypeError("a size, not true/false")
    if isinstance(value, int | float):
        number, unit = float(value), "M"
    else:
        match = _MEMORY.match(str(value))
        if match is None:
            raise ValueError(f"{value!r} is not a size such as '4G' or '512M'")
        number, unit = float(match.group(1)), (match.group(2) or "M").upper()
    factor = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024}[unit]
    mb = math.ceil(number * factor)
    if mb <= 0 or not math.isfinite(number):
        raise ValueError(f"{value!r} must be more than 0")
    return mb


def _int(name: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool):
        raise FormError(name, f"{value!r} is not a whole number")
    try:
        number = int(str(value).strip()) if not isinstance(value, int) else value
    except ValueError:
        raise FormError(name, f"{value!r} is not a whole number") from None
    if not low <= number <= high:
        raise FormError(name, f"{number} is outside the allowed range {low}–{high}")
    return number


def _one(value: Any) -> Any:
    """HTML forms give lists (``{"cores": ["2"]}``); JSON gives scalars."""
    if isinstance(value, list | tuple):
        if len(value) != 1:
            raise ValueError("expected one value")
        return value[0]
    return value


def validate(
    raw: Mapping[str, Any],
    profiles: Sequence[ProfileChoice],
    limits: Limits,
    kernels: Sequence[str],
) -> JobRequest:
    """Check a request (form data or a JSON body) field by field; raise :class:`FormError`."""
    if not profiles:
        raise FormError("profile", "this hub offers no profile")
    unknown = sorted(set(raw) - set(FIELDS))
    if unknown:
        raise FormError(unknown[0], f"unknown field; the fields are {', '.join(FIELDS)}")
    data: dict[str, Any] = {}
    for key, value in raw.items():
        try:
            data[key] = _one(value)
        except ValueError:
            raise FormError(key, "give exactly one value") from None
    by_name = {p.name: p for p in profiles}
    name = data.get("profile") or profiles[0].name
    if name not in by_name:
        raise FormError("profile", f"{name!r} is not offered; choose one of {', '.join(by_name)}")
    profile = by_name[name]
    partition = data.get("partition") or profile.partition
    if partition is not None:
        partition = str(partition)
        if not _NAME.match(partition):
            raise FormError("partition", f"{partition!r} is not a partition name")
        if limits.partitions and partition not in limits.partitions:
            allowed = ", ".join(limits.partitions)
            raise FormError("partition", f"{partition!r} is not allowed for you; use {allowed}")
    cores = _int("cores", data.get("cores") or profile.cores, 1, limits.max_cores)
    memory = data.get("memory") or profile.memory_mb
    try:
        memory_mb = parse_memory_mb(memory)
    except (ValueError, TypeError) as exc:
        raise FormError("memory", str(exc)) from None
    if memory_mb > limits.max_memory_mb:
        raise FormError("memory", f"{memory_mb} MiB is more than your limit {limits.max_memory_mb}")
    gpus = _int("gpus", data.get("gpus") or 0, 0, limits.max_gpus)
    raw_walltime = data.get("walltime") or format_walltime(profile.walltime)
    try:
        walltime = parse_walltime(str(raw_walltime))
    except ValueError as exc:
        raise FormError("walltime", str(exc)) from None
    if walltime > limits.max_walltime:
        most = format_walltime(limits.max_walltime)
        raise FormError("walltime", f"{raw_walltime} is longer than your limit {most}")
    kernel = str(data.get("kernel") or (kernels[0] if kernels else "python3"))
    if kernels and kernel not in kernels:
        raise FormError("kernel", f"{kernel!r} is not offered; choose one of {', '.join(kernels)}")
    return JobRequest(
        profile=profile.name,
        partition=partition,
        cores=cores,
        memory_mb=memory_mb,
        gpus=gpus,
        walltime=walltime,
        kernel=kernel,
        policy=profile.policy,
    )


def _help(key: str) -> str:
    """The schema's description of a ``slurm:`` field (reST markup removed)."""
    props = backend_options_schema("slurm").get("properties", {})
    text = str(props.get(key, {}).get("description", ""))
    return text.replace("``", "")


def render_form(
    profiles: Sequence[ProfileChoice],
    limits: Limits,
    kernels: Sequence[str],
    *,
    error: FormError | None = None,
) -> str:
    """The HTML of the options form (JupyterHub wraps it in its own ``<form>``)."""
    esc = html.escape
    first = profiles[0] if profiles else None
    options = "".join(
        f'<option value="{esc(p.name)}">{esc(p.name)}'
        + (f" — {esc(p.description)}" if p.description else "")
        + "</option>"
        for p in profiles
    )
    part_default = (first.partition if first else None) or ""
    if limits.partitions:
        part_input = (
            '<select class="form-control" name="partition" id="cs-partition">'
            + "".join(f'<option value="{esc(p)}">{esc(p)}</option>' for p in limits.partitions)
            + "</select>"
        )
    else:
        part_input = (
            f'<input class="form-control" name="partition" id="cs-partition" '
            f'value="{esc(part_default)}" pattern="[A-Za-z0-9][A-Za-z0-9_.+-]*">'
        )
    kernel_opts = "".join(f'<option value="{esc(k)}">{esc(k)}</option>' for k in kernels)

    def row(key: str, label: str, control: str, note: str) -> str:
        bad = error is not None and error.field == key
        msg = f'<div class="text-danger">{esc(error.message)}</div>' if bad and error else ""
        return (
            f'<div class="form-group{" has-error" if bad else ""}">'
            f'<label for="cs-{key}">{esc(label)}</label>{control}'
            f'<small class="form-text text-muted">{esc(note)}</small>{msg}</div>'
        )

    walltime_default = format_walltime(first.walltime) if first else "01:00:00"
    parts = [
        row(
            "profile",
            "Profile",
            f'<select class="form-control" name="profile" id="cs-profile">{options}</select>',
            "The site's named ctrlstack profile: pinning policy and defaults.",
        ),
        row("partition", "Partition", part_input, _help("partition")),
        row(
            "cores",
            "CPUs",
            f'<input class="form-control" type="number" name="cores" id="cs-cores" min="1" '
            f'max="{limits.max_cores}" value="{first.cores if first else 1}">',
            f"{_help('cores').split(';')[0]} (at most {limits.max_cores}).",
        ),
        row(
            "memory",
            "Memory",
            f'<input class="form-control" name="memory" id="cs-memory" '
            f'value="{first.memory_mb if first else 1024}M">',
            f"{_help('memory')} At most {limits.max_memory_mb} MiB.",
        ),
        row(
            "gpus",
            "GPUs",
            f'<input class="form-control" type="number" name="gpus" id="cs-gpus" min="0" '
            f'max="{limits.max_gpus}" value="0">',
            f"GPUs for the server (at most {limits.max_gpus}).",
        ),
        row(
            "walltime",
            "Walltime",
            f'<input class="form-control" name="walltime" id="cs-walltime" '
            f'value="{walltime_default}" pattern="([0-9]+-)?[0-9]+:[0-5][0-9]:[0-5][0-9]">',
            f"{_help('walltime').split('.')[0]} (at most {format_walltime(limits.max_walltime)}).",
        ),
        row(
            "kernel",
            "Stack / kernel",
            f'<select class="form-control" name="kernel" id="cs-kernel">{kernel_opts}</select>',
            "The software stack (kernel) the notebooks start with.",
        ),
    ]
    if error is not None and error.field not in FIELDS:
        parts.insert(0, f'<div class="alert alert-danger">{esc(str(error))}</div>')
    return "\n".join(parts)
