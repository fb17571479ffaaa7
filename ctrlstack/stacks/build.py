"""Build a stack: a venv at a prefix, exactly the packages of its lock, plus ctrlstack itself.

Planning (:func:`build_steps`) is pure: it returns the argv of every step, so tests and
``--dry-run`` can see what would run.  :func:`build` runs them through :mod:`ctrlstack._proc`.

* **uv when present, pip otherwise.**  uv: ``uv venv`` then ``uv pip sync --require-hashes``, which
  also removes what the lock does not name, so a rebuild after a lock change is exact.  pip:
  ``python -m venv`` then ``pip install --require-hashes --no-deps -r lock`` (pip has no sync:
  packages dropped from a lock stay until the prefix is removed; ``stack check`` shows them).
* **Idempotent.**  The last step writes a stamp (``.ctrlstack-stack.json``) with the lock's
  sha256 and how ctrlstack was installed; a build whose stamp matches does nothing.  A failed
  build leaves no stamp, so the next one starts over.
* **ctrlstack in every stack.**  The stack's Python must run ``ctrlstack worker``, the supervisor
  and the kernel launcher.  From a source checkout ctrlstack is installed *editable* (``-e
  <checkout>``, no dependencies): kernel, scheduler and workers then run the very code of the
  caller, and the version check cannot be fooled by a stale copy.  From a wheel installation it
  is installed as ``ctrlstack==<running version>`` from the configured index (no dependencies:
  the lock has them).
"""

from __future__ import annotations

import json
import os
import pathlib
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from ctrlstack import __version__, _proc

from .lock import uv_path
from .model import Stack, StackError, lock_hash

__all__ = ["STAMP", "BuildResult", "build", "build_steps", "ctrlstack_source", "read_stamp"]

STAMP = ".ctrlstack-stack.json"


def ctrlstack_source() -> str:
    """What to install ctrlstack from: the source checkout's path (editable) or ``==version``."""
    root = pathlib.Path(__file__).resolve().parents[2]
    pyproject = root / "pyproject.toml"
    if pyproject.is_file() and 'name = "ctrlstack"' in pyproject.read_text(encoding="utf-8"):
        return str(root)
    return f"ctrlstack=={__version__}"


def stack_python(prefix: pathlib.Path) -> pathlib.Path:
    return prefix / "bin" / "python"


def _base_python() -> str:
    """The interpreter a venv is made from: the running one's base, never a venv's shim."""
    return str(getattr(sys, "_base_executable", None) or sys.executable)


def _running_minor() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def build_steps(
    stack: Stack, prefix: pathlib.Path, *, tool: str, uv: str | None, source: str
) -> list[list[str]]:
    """The argv of every build step (pure).  ``source`` as from :func:`ctrlstack_source`."""
    if stack.lock is None:
        raise StackError(f"stack {stack.name!r} has no lock file")
    python = str(stack_python(prefix))
    lock = str(stack.lock)
    editable = ["-e", source] if not source.startswith("ctrlstack==") else [source]
    if tool == "uv":
        if uv is None:
            raise StackError("tool 'uv' asked for, but uv is not installed (pip install uv)")
        interpreter = _base_python() if stack.python == _running_minor() else stack.python
        return [
            [uv, "venv", "--quiet", "--allow-existing", "--python", interpreter, str(prefix)],
            # No --compile-bytecode: compiling every module of numba/numpy/scipy costs minutes
            # on a busy node; Python compiles what a kernel or worker imports, once, instead.
            [uv, "pip", "sync", "--quiet", "--python", python, "--require-hashes", lock],
            [uv, "pip", "install", "--quiet", "--python", python, "--no-deps", *editable],
        ]
    if tool == "pip":
        if stack.python != _running_minor():
            raise StackError(
                f"stack {stack.name!r} wants Python {stack.python}, this is {_running_minor()}; "
                "pip builds venvs from the running Python only (install uv to get others)"
            )
        pip = [python, "-m", "pip", "--disable-pip-version-check", "--quiet", "install"]
        return [
            [_base_python(), "-m", "venv", str(prefix)],
            [*pip, "--require-hashes", "--no-deps", "-r", lock],
            [*pip, "--no-deps", *editable],
        ]
    raise StackError(f"unknown build tool {tool!r}; expected uv or pip")


@dataclass
class BuildResult:
    stack: str
    prefix: str
    python: str
    tool: str
    changed: bool
    seconds: float
    lock_sha256: str
    steps: list[list[str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_stamp(prefix: pathlib.Path) -> dict[str, Any] | None:
    """The stamp of a built prefix, or ``None`` (not built, or a build that did not finish)."""
    try:
        data = json.loads((prefix / STAMP).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _check_target(prefix: pathlib.Path) -> None:
    """Refuse to build into a directory that is neither empty nor a venv (a typo'd --prefix
    must not turn someone's project folder into a venv)."""
    if not prefix.exists():
        return
    if not prefix.is_dir():
        raise StackError(f"cannot build into {str(prefix)!r}: it is not a directory")
    if any(prefix.iterdir()) and not (prefix / "pyvenv.cfg").is_file():
        raise StackError(
            f"cannot build into {str(prefix)!r}: it is not empty and not a virtual environment"
        )


def build(
    stack: Stack,
    prefix: pathlib.Path | None = None,
    *,
    tool: str | None = None,
    force: bool = False,
    timeout: float = 1800,
) -> BuildResult:
    """Build ``stack`` at ``prefix`` (default: its configured prefix); nothing if up to date."""
    prefix = pathlib.Path(prefix or stack.prefix or "").expanduser().absolute()
    if not str(prefix) or stack.lock is None or not stack.lock.is_file():
        raise StackError(
            f"stack {stack.name!r} has no lock (expected {stack.lock}); "
            f"create it with 'ctrlstack stack lock {stack.name}'"
        )
    digest = lock_hash(stack.lock.read_text(encoding="utf-8"))
    source = ctrlstack_source()
    uv = uv_path()
    tool = tool or ("uv" if uv else "pip")
    python = stack_python(prefix)
    stamp = read_stamp(prefix)
    start = time.perf_counter()
    up_to_date = (
        stamp is not None
        and stamp.get("lock_sha256") == digest
        and stamp.get("ctrlstack") == source
        and python.exists()
    )
    if up_to_date and not force:
        return BuildResult(stack.name, str(prefix), str(python), tool, False, 0.0, digest)
    _check_target(prefix)
    steps = build_steps(stack, prefix, tool=tool, uv=uv, source=source)
    (prefix / STAMP).unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONHOME")}
    for argv in steps:
        _proc.run(argv, env=env, timeout=timeout)
    seconds = time.perf_counter() - start
    record = {
        "stack": stack.name,
        "lock": str(stack.lock),
        "lock_sha256": digest,
        "ctrlstack": source,
        "tool": tool,
        "python": str(python),
        "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seconds": round(seconds, 2),
    }
    (prefix / STAMP).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return BuildResult(stack.name, str(prefix), str(python), tool, True, seconds, digest, steps)
