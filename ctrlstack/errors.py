"""One error table for every door: which failures are the user's to fix, which are the system's.

Why one module: the CLI maps errors to exit codes, the Jupyter server extension to HTTP statuses,
the Hub spawner to form errors.  If each door kept its own table they would drift, and a user
error would surface as a 500 in one door and as exit 2 in another.  Every public ctrlstack
exception derives from one of the classes below; :func:`classify` also places foreign
exceptions (a ``ValueError`` from validation is the user's; anything else is a failure).

* :class:`UserError` — bad input or a request that cannot be met as asked (a profile field, a
  plan that does not fit, an unknown cluster, a name already taken).  CLI exit 2, HTTP 4xx.
  Nothing was changed.
* :class:`Failure` — the system could not do what was asked (a supervisor that did not start,
  a scheduler that does not answer, a batch command that failed).  CLI exit 1, HTTP 5xx.

This module imports nothing of ctrlstack, so every layer may import it.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "ConflictError",
    "CtrlstackError",
    "ErrorClass",
    "Failure",
    "NotFoundError",
    "UnreachableError",
    "UserError",
    "classify",
    "message",
]


class CtrlstackError(Exception):
    """Base of every ctrlstack exception; ``exit_code`` and ``http_status`` say how doors report it."""

    exit_code: int = 1
    http_status: int = 500


class UserError(CtrlstackError, ValueError):
    """The request is wrong as given; the message says which field, what was wrong, what is allowed."""

    exit_code = 2
    http_status = 400


class NotFoundError(UserError, LookupError):
    """The named thing (cluster, profile, job) does not exist for this user."""

    http_status = 404


class ConflictError(UserError):
    """The request conflicts with existing state (a cluster of that name runs already)."""

    http_status = 409


class Failure(CtrlstackError, RuntimeError):
    """The system failed to do something valid; the message carries the cause (and a log tail)."""

    exit_code = 1
    http_status = 500


class UnreachableError(Failure, ConnectionError):
    """A cluster's scheduler (or another service) did not answer in time."""

    http_status = 503


@dataclass(frozen=True)
class ErrorClass:
    """How a door reports one exception."""

    kind: str  # "user" or "failure"
    exit_code: int
    http_status: int
    message: str


def message(exc: BaseException) -> str:
    """The exception's message as a door shows it (its type's name if the message is empty).

    ctrlstack messages are one line, except failures that append a log tail after it.
    """
    text = str(exc).strip()
    if not text:
        return type(exc).__name__
    return text


def classify(exc: BaseException) -> ErrorClass:
    """Place any exception in the table.

    ctrlstack's own exceptions carry their class attributes.  Among foreign ones, ``ValueError``
    and ``TypeError`` raised by validation are the user's (exit 2 / 400), ``LookupError`` is a
    404, ``TimeoutError``/``ConnectionError`` are unreachable services (503), the rest failures.
    """
    if isinstance(exc, CtrlstackError):
        kind = "user" if isinstance(exc, UserError) else "failure"
        return ErrorClass(kind, exc.exit_code, exc.http_status, message(exc))
    if isinstance(exc, LookupError):
        return ErrorClass("user", 2, 404, message(exc))
    if isinstance(exc, ValueError | TypeError):
        return ErrorClass("user", 2, 400, message(exc))
    if isinstance(exc, TimeoutError | ConnectionError):
        return ErrorClass("failure", 1, 503, message(exc))
    return ErrorClass("failure", 1, 500, message(exc))
