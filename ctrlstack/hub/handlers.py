"""The hub-side end of the port rendezvous: ``POST /hub/api/ctrlstack/rendezvous/<user>[/<server>]``.

Why a handler of its own rather than batchspawner's: its ``/api/batchspawner`` handler applies
``setattr(spawner, key, value)`` for any key in the body and is registered by mutating
JupyterHub's handler list at import.  This one is registered by the admin's config
(:func:`extra_handlers`, for ``c.JupyterHub.extra_handlers``), reads exactly two fields (``ip``,
``port``), checks their types, and accepts them only

* with the ``users:activity`` scope on that user (what the server's own token carries), and
* from the bearer of the very API token the hub handed to *that* server's job (compared in
  constant time), while that spawner is waiting for its port.

So another user, or the same user's browser session, cannot redirect a server.
"""

from __future__ import annotations

import hmac
import ipaddress
import re
from typing import Any

from jupyterhub.apihandlers.base import APIHandler
from jupyterhub.scopes import needs_scope
from tornado import web

__all__ = ["RendezvousHandler", "extra_handlers", "parse_rendezvous"]

_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9-]{1,63})*$")


def parse_rendezvous(body: Any) -> tuple[str, int]:
    """Whitelist and check the body (``ValueError``/``TypeError`` say what is wrong): ``{"ip": "10.0.0.5", "port": 43121}`` -> ``(ip, port)``."""
    if not isinstance(body, dict):
        raise TypeError("body must be a JSON object")
    extra = sorted(set(body) - {"ip", "port"})
    if extra:
        raise ValueError(f"unknown fields {extra}; only ip and port are accepted")
    port = body.get("port")
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ValueError(f"port must be an integer 1–65535, got {port!r}")
    ip = body.get("ip")
    if not isinstance(ip, str):
        raise TypeError(f"ip must be a string, got {ip!r}")
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        if not _HOSTNAME.match(ip):
            raise ValueError(f"ip {ip!r} is neither an IP address nor a host name") from None
    else:
        if address.is_unspecified or address.is_multicast:
            raise ValueError(f"ip {ip!r} is not an address the proxy can reach")
    return ip, port


class RendezvousHandler(APIHandler):
    """Receives ``ip``/``port`` from a starting job and hands them to its spawner."""

    @needs_scope("users:activity")
    async def post(self, user_name: str, server_name: str | None = "") -> None:
        user = self.find_user(user_name)
        if user is None:
            raise web.HTTPError(404, "no such user")
        spawner = user.spawners.get(server_name or "")
        if spawner is None or not hasattr(spawner, "rendezvous"):
            raise web.HTTPError(404, "no ctrlstack server of that name")
        token = self.get_auth_token() or ""
        if not spawner.api_token or not hmac.compare_digest(token, spawner.api_token):
            raise web.HTTPError(403, "only the server's own job may report its address")
        try:
            ip, port = parse_rendezvous(self.get_json_body())
        except (ValueError, TypeError) as exc:
            raise web.HTTPError(400, "%s", str(exc)) from None
        if not spawner.rendezvous(ip, port):
            raise web.HTTPError(409, "this server is not waiting for its address")
        self.set_status(201)
        # The job's end, when squeue already told: the server shows it (see .session).
        self.write({"ip": ip, "port": port, "end_time": spawner.job_end_time()})


def extra_handlers() -> list[tuple[str, type[web.RequestHandler]]]:
    """For ``c.JupyterHub.extra_handlers`` (JupyterHub prefixes them with ``/hub``)."""
    return [(r"/api/ctrlstack/rendezvous/([^/]+)(?:/([^/]*))?", RendezvousHandler)]
