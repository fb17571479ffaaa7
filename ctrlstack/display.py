"""HTML views of the status shape, from Jinja templates (escaped by default).

Why templates: markup in f-strings mixes escaping into logic and drifts between the notebook
repr, the widgets' HTML fallback and anything else that shows a cluster.  jinja2 comes with
distributed, so this costs no dependency.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import jinja2

    from ctrlstack.deploy.status import ClusterStatus

__all__ = ["render", "status_html"]


@functools.cache
def _environment() -> jinja2.Environment:
    import jinja2

    return jinja2.Environment(
        loader=jinja2.PackageLoader("ctrlstack", "templates"),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render(template: str, **context: Any) -> str:
    """Render one of ``ctrlstack/templates/`` (HTML-escaped)."""
    return _environment().get_template(template).render(**context)


def status_html(status: ClusterStatus) -> str:
    """One cluster as an HTML fragment (notebook ``_repr_html_``, widget fallback)."""
    return render("cluster.html.j2", s=status)
