"""The one place ctrlstack starts other programs.

Every shell-out goes through :func:`run` (wait for a result) or :func:`spawn` (start and return).
Both take an argv list — never a shell string — so values from profiles, REST bodies or spawner
forms can never be interpreted by a shell.  Failures raise :class:`CommandError` carrying the
command, exit code and captured output, which is what a user needs to act on.
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import IO

logger = logging.getLogger(__name__)

__all__ = ["CommandError", "CommandResult", "run", "spawn"]


@dataclass(frozen=True)
class CommandResult:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


class CommandError(RuntimeError):
    """A command failed or could not be started; the message says which and why."""

    def __init__(self, argv: Sequence[str], returncode: int | None, stdout: str, stderr: str):
        self.argv = tuple(argv)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        what = "could not be started" if returncode is None else f"exited with {returncode}"
        detail = (stderr or stdout).strip()
        super().__init__(f"command {list(self.argv)!r} {what}" + (f": {detail}" if detail else ""))


def _check_argv(argv: Sequence[str]) -> list[str]:
    if isinstance(argv, str) or not argv:
        raise TypeError("argv must be a non-empty sequence of strings, not a shell string")
    out = [os.fspath(a) for a in argv]
    if not all(isinstance(a, str) for a in out):
        raise TypeError(f"argv items must be strings, got {argv!r}")
    return out


def run(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    timeout: float | None = 60,
    check: bool = True,
    input: str | None = None,
) -> CommandResult:
    """Run ``argv`` to completion and capture its output (text)."""
    args = _check_argv(argv)
    logger.debug("run %s", args)
    try:
        proc = subprocess.run(
            args,
            env=None if env is None else dict(env),
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
            check=False,
        )
    except FileNotFoundError as exc:
        raise CommandError(args, None, "", str(exc)) from exc
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        raise CommandError(args, None, out, f"timed out after {timeout} s") from exc
    result = CommandResult(tuple(args), proc.returncode, proc.stdout, proc.stderr)
    if check and proc.returncode != 0:
        raise CommandError(args, proc.returncode, proc.stdout, proc.stderr)
    return result


def spawn(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    stdout: IO[bytes] | int | None = None,
    stderr: IO[bytes] | int | None = None,
    pass_fds: Sequence[int] = (),
    new_session: bool = False,
    cwd: str | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` and return the process without waiting.

    ``new_session=True`` detaches it from the caller's terminal and process group, so it outlives a
    notebook kernel or a Jupyter server, and lets us signal the whole group later.
    """
    args = _check_argv(argv)
    logger.debug("spawn %s", args)
    try:
        return subprocess.Popen(
            args,
            env=None if env is None else dict(env),
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            pass_fds=tuple(pass_fds),
            start_new_session=new_session,
            cwd=cwd,
        )
    except OSError as exc:
        raise CommandError(args, None, "", str(exc)) from exc
