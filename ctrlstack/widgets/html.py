"""HTML of the widgets' views, from Jinja templates: the fallback where no widget manager runs.

Why the same HTML inside the widgets: a notebook saved with widget state shows the widget in
JupyterLab and this HTML in nbviewer, GitHub or a frontend without ipywidgets — one picture.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from typing import Any

from ctrlstack.display import render

__all__ = ["cluster_colour", "load_colour", "topology_html"]


def load_colour(percent: float) -> str:
    """Green (idle) to red (busy), as in the JupyterLab sidebar."""
    p = max(0.0, min(100.0, float(percent)))
    return f"hsl({round(120 - 1.2 * p)}, 70%, {round(88 - 0.3 * p)}%)"


def cluster_colour(name: str) -> str:
    """A stable colour per cluster name (not the sidebar's hash, but stable across sessions)."""
    return f"hsl({zlib.crc32(name.encode()) % 360}, 65%, 45%)"


def _cpus(text: str | None) -> list[int]:
    from ctrlstack.topology.cpuset import parse_cpulist

    return sorted(parse_cpulist(text or ""))


def topology_html(data: Mapping[str, Any]) -> str:
    """The map of :func:`ctrlstack.occupancy.occupancy` output as an HTML fragment."""
    machine = data["machine"]
    load = data.get("load", {})
    owners = data.get("owners", {})
    crowded = set(data.get("crowded", []))
    cores = [_cpus(c) for c in machine["cores"]]

    def cpu(c: int) -> dict[str, Any]:
        own = owners.get(str(c), [])
        busy = float(load.get(str(c), 0.0))
        who = ", ".join(f"{o['cluster']}/{o['worker']}" for o in own)
        return {
            "id": c,
            "colour": load_colour(busy),
            "owner": own[0]["cluster"] if own else None,
            "owner_colour": cluster_colour(own[0]["cluster"]) if own else None,
            "crowded": c in crowded,
            "title": f"CPU {c}: {busy:.0f}% busy" + (f"; worker {who}" if who else ""),
        }

    packages = []
    for pkg_id, pkg_cpus in machine["packages"].items():
        in_pkg = set(_cpus(pkg_cpus))
        numa_ids = [n for n, cs in machine["numa_nodes"].items() if in_pkg & set(_cpus(cs))]
        groups: list[tuple[str, int | None]] = [(f"NUMA {n}", int(n)) for n in numa_ids]
        groups = groups or [("memory", None)]
        numa_boxes = []
        for label, numa in groups:
            l3_boxes = []
            for leaf in machine["leaves"]:
                if leaf["package"] != int(pkg_id) or leaf["numa"] != numa:
                    continue
                leaf_cpus = set(_cpus(leaf["cpus"]))
                l3_boxes.append(
                    {
                        "label": "no L3" if leaf["l3"] is None else f"L3 {leaf['l3']}",
                        "cores": [[cpu(c) for c in core] for core in cores if core[0] in leaf_cpus],
                    }
                )
            numa_boxes.append({"label": label, "l3": l3_boxes})
        packages.append({"id": pkg_id, "numa": numa_boxes})
    names = sorted({o["cluster"] for entries in owners.values() for o in entries})
    return render(
        "topology.html.j2",
        packages=packages,
        legend=[(n, cluster_colour(n)) for n in names],
        crowded=sorted(crowded),
        unpinned=[f"{o['cluster']}/{o['worker']}" for o in data.get("unpinned", [])],
    )
