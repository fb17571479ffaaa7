"""The Jupyter door's server side: a jupyter_server extension exposing ctrlstack over REST.

Why a package of three modules: :mod:`.manager` talks to the public API off the event loop and
knows no web framework (tested directly); :mod:`.handlers` only parse, call and serialise;
:mod:`.extension` wires routes.  Enabled automatically by
``jupyter-config/jupyter_server_config.d/ctrlstack.json`` when ctrlstack is installed with the
``lab`` extra.
"""

from __future__ import annotations

from typing import Any

__all__ = ["_jupyter_server_extension_points", "_load_jupyter_server_extension"]


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": "ctrlstack.server"}]


def _load_jupyter_server_extension(server_app: Any) -> None:
    from ctrlstack.server.extension import load

    load(server_app)
