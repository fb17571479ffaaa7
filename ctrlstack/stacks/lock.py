"""Locks: what ``uv pip compile --generate-hashes`` is asked for, and what a lock pins.

A lock is uv's hashed requirements output, so ``pip install --require-hashes -r`` reads it too.
The resolver's input is the stack's packages *plus* ctrlstack's own runtime requirements and
``ipykernel``: every stack must be able to run ``ctrlstack worker``, a supervisor and a kernel,
so a stack file cannot forget them.  ctrlstack itself is not in the lock; :mod:`.build` installs
it from the running installation (see there).  Everything here is pure except :func:`lock`.
"""

from __future__ import annotations

import importlib.metadata
import pathlib
import re
import shutil
import sys
import tomllib
from collections.abc import Iterable

from ctrlstack import _proc

from .model import Stack, StackError

__all__ = ["compile_argv", "ctrlstack_requirements", "lock", "lock_input", "pinned", "uv_path"]

#: Packages every stack gets besides its own list (kernels need ipykernel).
ALWAYS = ("ipykernel",)
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)")


def canonical(name: str) -> str:
    """PEP 503 normalised project name (``Foo_Bar`` -> ``foo-bar``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def ctrlstack_requirements() -> list[str]:
    """ctrlstack's runtime requirements (no extras): from the source checkout's pyproject.toml
    when running from one (the code that gets installed), else the installation's metadata."""
    from .build import ctrlstack_source

    source = ctrlstack_source()
    if not source.startswith("ctrlstack=="):
        with open(pathlib.Path(source) / "pyproject.toml", "rb") as fh:
            return list(tomllib.load(fh)["project"]["dependencies"])
    requires = importlib.metadata.requires("ctrlstack") or []
    return [r for r in requires if "extra ==" not in r and "extra==" not in r]


def lock_input(stack: Stack, extra: Iterable[str] = ()) -> str:
    """The requirements text handed to the resolver (one requirement a line)."""
    lines = [*stack.packages, *ctrlstack_requirements(), *ALWAYS, *extra]
    seen: list[str] = []
    for line in lines:
        if line not in seen:
            seen.append(line)
    return "\n".join(seen) + "\n"


def uv_path() -> str | None:
    """``uv`` beside the running Python (a venv's ``bin``) or on ``PATH``; ``None`` if absent."""
    beside = shutil.which("uv", path=str(pathlib.Path(sys.executable).parent))
    return beside or shutil.which("uv")


def platform_tag() -> str:
    """The uv ``--python-platform`` of this machine (locks are per platform)."""
    import platform

    return f"{platform.machine()}-manylinux_2_28"


def compile_argv(uv: str, stack: Stack, output: str) -> list[str]:
    """``uv pip compile`` reading the input from stdin, for the stack's Python and this platform."""
    return [
        uv, "pip", "compile", "-", "--generate-hashes", "--quiet",
        "--python-version", stack.python,
        "--python-platform", platform_tag(),
        "--custom-compile-command", f"ctrlstack stack lock {stack.name}",
        "--output-file", output,
    ]  # fmt: skip


def lock(stack: Stack, *, extra: Iterable[str] = (), timeout: float = 600) -> str:
    """Resolve ``stack`` and write its lock beside its file; return the lock path."""
    if stack.lock is None:
        raise StackError(f"stack {stack.name!r} has no file to write a lock beside")
    uv = uv_path()
    if uv is None:
        raise StackError("locking needs uv (pip install uv)")
    _proc.run(
        compile_argv(uv, stack, str(stack.lock)), input=lock_input(stack, extra), timeout=timeout
    )
    return str(stack.lock)


def pinned(text: str) -> dict[str, str]:
    """``{canonical name: version}`` of every ``name==version`` line of a lock (pure)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        match = _PIN.match(line.strip())
        if match:
            out[canonical(match.group(1))] = match.group(2)
    return out
