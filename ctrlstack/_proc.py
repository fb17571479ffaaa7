"""The one place ctrlstack starts other programs.

Every shell-out goes through :func:`run` (wait for a result) or :func:`spawn` (start and return).
Both take an argv list — never a shell string — so values from profiles, REST bodies or spawner
forms can never be interpreted by a shell.  Failures raise :class:`CommandError` carrying the
command, exit code and captured output, which is what a user needs to act on.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
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
    """A command failed, timed out or could not be started; the message says which and why.

    ``returncode`` is ``None`` when there is no exit status (not started, or killed after
    ``timeout``); ``timed_out`` tells those two apart.
    """

    def __init__(
        self,
        argv: Sequence[str],
        returncode: int | None,
        stdout: str,
        stderr: str,
        *,
        timed_out: float | None = None,
    ):
        self.argv = tuple(argv)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        self.timed_out = timed_out is not None
        if timed_out is not None:
            what = f"timed out after {timed_out:g} s and was killed"
        elif returncode is None:
            what = "could not be started"
        else:
            what = f"exited with {returncode}"
        detail = (stderr or stdout).strip()
        super().__init__(f"command {list(self.argv)!r} {what}" + (f": {detail}" if detail else ""))


def _text(data: str | bytes | None) -> str:
    """Partial output of a timed-out command: ``TimeoutExpired`` carries raw bytes."""
    if isinstance(data, bytes):
        return data.decode(errors="replace")
    return data or ""


def _check_argv(argv: Sequence[str]) -> list[str]:
    if isinstance(argv, str) or not argv:
        raise TypeError("argv must be a non-empty sequence of strings, not a shell string")
    out = []
    for i, item in enumerate(argv):
        value = os.fspath(item) if isinstance(item, str | os.PathLike) else item
        if not isinstance(value, str):
            raise TypeError(f"argv items must be strings or paths; argv[{i}] is {item!r}")
        out.append(value)
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
    except subprocess.TimeoutExpired as exc:
        # subprocess.run has killed and reaped the child; keep what it had printed so far.
        raise CommandError(
            args, None, _text(exc.stdout), _text(exc.stderr), timed_out=exc.timeout
        ) from exc
    except OSError as exc:  # not found, not executable, bad cwd, out of fds/memory ...
        raise CommandError(args, None, "", str(exc)) from exc
    result = CommandResult(tuple(args), proc.returncode, proc.stdout, proc.stderr)
    if check and proc.returncode != 0:
        raise CommandError(args, proc.returncode, proc.stdout, proc.stderr)
    return result


_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def _parent_death_hook(sig: int) -> Callable[[], None]:
    """A ``preexec_fn`` that makes the child get ``sig`` when the spawning thread dies.

    Everything that can fail or allocate much (loading libc, resolving ``prctl``, checking the
    signal) happens here, in the parent; between fork and exec the child only calls ``prctl`` and
    ``getppid``, so the hook cannot deadlock on a lock another thread held at fork time.

    The race: if the parent dies after the fork but before ``prctl``, no signal will ever come,
    because the child has already been reparented.  ``getppid()`` then differs from the pid
    recorded here, and the child delivers ``sig`` to itself (or exits 1 should ``sig`` be ignored)
    instead of running on as an orphan.
    """
    if not sys.platform.startswith("linux"):
        raise NotImplementedError(
            f"parent_death_signal needs Linux (prctl PR_SET_PDEATHSIG); this is {sys.platform}"
        )
    number = int(signal.Signals(sig))  # ValueError for a number that is no signal
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    parent = os.getpid()

    def hook() -> None:
        if prctl(_PR_SET_PDEATHSIG, number, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), number)
            os._exit(1)

    return hook


def spawn(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    stdout: IO[bytes] | int | None = None,
    stderr: IO[bytes] | int | None = None,
    pass_fds: Sequence[int] = (),
    new_session: bool = False,
    cwd: str | None = None,
    stdin: IO[bytes] | int | None = subprocess.DEVNULL,
    parent_death_signal: int | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` and return the process without waiting.

    ``new_session=True`` detaches it from the caller's terminal and process group, so it outlives a
    notebook kernel or a Jupyter server, and lets us signal the whole group later.  ``stdin`` is
    closed (``DEVNULL``) by default so a daemon never competes for the terminal; pass ``None`` to
    let a foreground child (``ctrlstack run``'s script) read the caller's stdin.

    ``parent_death_signal`` (Linux only, ``NotImplementedError`` elsewhere): the kernel sends this
    signal to the child when the caller dies, even by SIGKILL, which no cleanup code of the
    caller survives, so a foreground child (``ctrlstack run``'s script) never runs on orphaned.
    It fires when the *thread* that called ``spawn`` exits (a prctl rule), so call it from a
    thread that lives as long as the child should, e.g. the main thread.  It is not inherited by
    the child's own children, and it is cleared when the child executes a set-user-ID program.
    """
    args = _check_argv(argv)
    hook = None if parent_death_signal is None else _parent_death_hook(parent_death_signal)
    logger.debug("spawn %s", args)
    try:
        return subprocess.Popen(
            args,
            env=None if env is None else dict(env),
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            pass_fds=tuple(pass_fds),
            start_new_session=new_session,
            cwd=cwd,
            preexec_fn=hook,  # noqa: PLW1509 - the hook only calls prctl/getppid; see above
        )
    except OSError as exc:
        raise CommandError(args, None, "", str(exc)) from exc
    except subprocess.SubprocessError as exc:  # the hook failed in the child
        raise CommandError(args, None, "", f"{exc}: {exc.__cause__ or exc.__context__}") from exc
