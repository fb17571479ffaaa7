"""``GET <base_url>ctrlstack/api/session``: the Slurm job a spawned server runs in and its end.

Why the server answers this itself (and not the hub): the sidebar talks only to its own server,
and a polling sidebar per user must not become one ``squeue`` per user.  The end time is handed
to the server once, at start, by :mod:`.singleuser` (the hub's answer to the port rendezvous
carries Slurm's ``EndTime`` when the hub already knows it; otherwise the wrapper's estimate,
its own start + the requested walltime).  Outside a hub job every field is ``null``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

__all__ = ["END_VAR", "JOB_VAR", "WARNING_VAR", "routes", "session_info"]

END_VAR = "CTRLSTACK_JOB_END_TIME"
WARNING_VAR = "CTRLSTACK_WALLTIME_WARNING"
JOB_VAR = "SLURM_JOB_ID"


def _number(text: str | None) -> float | None:
    try:
        value = float(text) if text else None
    except ValueError:
        return None
    return value if value is not None and value > 0 else None


def session_info(env: Mapping[str, str], now: float | None = None) -> dict[str, Any]:
    """JSON for the sidebar: ``job_id``, ``end_time`` (epoch s), ``left_seconds``, ``warning``.

    ``now`` is included so a browser whose clock is off still counts down correctly.
    """
    now = time.time() if now is None else now
    end = _number(env.get(END_VAR))
    warn = _number(env.get(WARNING_VAR)) or 0.0
    left = None if end is None else max(0.0, end - now)
    return {
        "job_id": env.get(JOB_VAR) if end is not None else None,
        "end_time": end,
        "now": now,
        "left_seconds": left,
        "warning_seconds": warn if end is not None else None,
        "warning": left is not None and left <= warn,
    }


def routes(prefix: str) -> list[tuple[str, Any]]:
    """The route for the server extension (``prefix``: base URL + ``ctrlstack/api``)."""
    import os

    import tornado.web
    from jupyter_server.base.handlers import APIHandler

    class SessionHandler(APIHandler):
        @tornado.web.authenticated
        def get(self) -> None:
            self.set_header("Content-Type", "application/json")
            self.finish(json.dumps(session_info(os.environ)))

    return [(f"{prefix}/session", SessionHandler)]
