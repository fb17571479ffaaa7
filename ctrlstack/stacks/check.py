"""Is a built stack still what its lock says, and who uses it?

:func:`drift` is pure (locked pins against installed versions); :func:`check` gathers the inputs:
the installed distributions as the stack's *own* Python reports them (``importlib.metadata`` in
that interpreter: right whichever tool built it, and it sees what a kernel or worker would
import), the stamp, the profiles whose ``stack`` names it and the kernelspecs that launch it.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from ctrlstack import _proc

from .build import read_stamp, stack_python
from .lock import canonical, pinned
from .model import Stack, StackError, lock_hash

__all__ = ["CheckResult", "Drift", "check", "drift", "installed_versions"]

#: Installed beside the lock on purpose (the tools themselves and ctrlstack): never drift.
_IGNORED = frozenset({"ctrlstack", "pip", "setuptools", "wheel"})

_LIST = (
    "import importlib.metadata as m, json; "
    "print(json.dumps({d.metadata['Name']: d.version for d in m.distributions()}))"
)


@dataclass(frozen=True)
class Drift:
    """One package that differs: ``installed`` or ``locked`` is ``None`` when it is absent."""

    package: str
    locked: str | None
    installed: str | None

    def __str__(self) -> str:
        if self.installed is None:
            return f"{self.package}: locked {self.locked}, not installed"
        if self.locked is None:
            return f"{self.package}: installed {self.installed}, not in the lock"
        return f"{self.package}: locked {self.locked}, installed {self.installed}"


def drift(locked: Mapping[str, str], installed: Mapping[str, str]) -> list[Drift]:
    """Every package whose installed version differs from the lock (names canonicalised)."""
    lock = {canonical(k): v for k, v in locked.items()}
    have = {canonical(k): v for k, v in installed.items()}
    out = []
    for name in sorted((set(lock) | set(have)) - _IGNORED):
        if lock.get(name) != have.get(name):
            out.append(Drift(name, lock.get(name), have.get(name)))
    return out


def installed_versions(python: pathlib.Path) -> dict[str, str]:
    """``{name: version}`` of what ``python`` can import, asked of that interpreter."""
    result = _proc.run([str(python), "-I", "-c", _LIST], timeout=60)
    data = json.loads(result.stdout)
    return {str(k): str(v) for k, v in data.items()}


@dataclass
class CheckResult:
    stack: str
    prefix: str
    built: bool
    lock_changed: bool  # the lock differs from the one the prefix was built from
    drift: list[Drift] = field(default_factory=list)
    profiles: list[str] = field(default_factory=list)
    kernels: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.built and not self.lock_changed and not self.drift

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["drift"] = [asdict(d) for d in self.drift]
        out["ok"] = self.ok
        return out


def profiles_using(name: str) -> list[str]:
    """Profiles whose ``stack`` field names stack ``name`` (unvalidated: a broken profile that
    names it is listed too, which is what someone about to rebuild wants to know)."""
    from ctrlstack.config import _profiles

    return sorted(
        str(key)
        for key, body in _profiles().items()
        if isinstance(body, Mapping) and body.get("stack") == name
    )


def kernels_using(name: str) -> list[str]:
    """Installed kernelspecs whose launcher runs stack ``name``."""
    from .kernelspec import installed_kernels

    return sorted(k for k, stack in installed_kernels().items() if stack == name)


def check(stack: Stack, prefix: pathlib.Path | None = None) -> CheckResult:
    """Compare the build at ``prefix`` (default: the stack's) with its lock."""
    prefix = pathlib.Path(prefix or stack.prefix or "").expanduser().absolute()
    if stack.lock is None or not stack.lock.is_file():
        raise StackError(f"stack {stack.name!r} has no lock (expected {stack.lock})")
    text = stack.lock.read_text(encoding="utf-8")
    stamp = read_stamp(prefix)
    python = stack_python(prefix)
    built = stamp is not None and python.exists()
    result = CheckResult(
        stack=stack.name,
        prefix=str(prefix),
        built=built,
        lock_changed=built and stamp is not None and stamp.get("lock_sha256") != lock_hash(text),
        profiles=profiles_using(stack.name),
        kernels=kernels_using(stack.name),
    )
    if built:
        result.drift = drift(pinned(text), installed_versions(python))
    return result
