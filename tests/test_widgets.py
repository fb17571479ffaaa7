"""The notebook widgets build, drive the real API, and fall back to HTML without ipywidgets."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ctrlstack.widgets import ClusterView, Launcher, TopologyView
from tests.labserver import REPO

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def test_topology_view_shows_every_cpu(state_dir: Path) -> None:
    from ctrlstack.topology.discover import discover

    view = TopologyView()
    bundle = view._repr_mimebundle_()
    assert WIDGET_VIEW in bundle
    for cpu in discover().cpus:
        assert f'data-cpu="{cpu}"' in bundle["text/html"]
    assert view.data["owners"] == {}


def test_launcher_fields_come_from_the_schema(state_dir: Path) -> None:
    launcher = Launcher()
    paths = [f.path for f in launcher.fields()]
    assert paths[:2] == ["workers", "threads"]
    assert {"policy", "adapt.minimum", "adapt.maximum", "local.host"} <= set(paths)
    assert not {"env", "backend", "worker-options"} & set(paths)
    launcher.set("workers", "3")
    launcher.set("policy", "l3")  # unchanged from the profile: not sent
    launcher.set("adapt.maximum", "4")
    assert launcher.overrides() == {"workers": 3, "adapt": {"minimum": None, "maximum": 4}}


def test_launcher_shows_bad_field_and_starts_nothing(state_dir: Path) -> None:
    import ctrlstack

    launcher = Launcher()
    launcher.set("threads", "0")
    assert launcher.launch() is None
    assert "threads" in launcher.errors
    assert ">= 1" in launcher.errors["threads"]
    slot = launcher._error_slots["threads"].value
    assert "is not allowed" in slot
    assert ctrlstack.clusters() == []


@pytest.mark.slow
def test_launcher_and_cluster_view_drive_a_cluster(state_dir: Path) -> None:
    import ctrlstack

    launcher = Launcher()
    launcher.set("name", "wid")
    launcher.set("workers", "1")
    launcher.set("threads", "1")
    cluster = launcher.launch()
    assert cluster is not None
    assert launcher.errors == {}
    try:
        view = launcher.views[0]
        assert isinstance(view, ClusterView)
        assert view.widget in launcher.widget.children
        assert view.status is not None
        assert view.status.connected == 1
        assert view._progress.value == 1

        status = view.scale(2)
        assert status is not None
        assert status.requested == 2
        status = view.wait(60)
        assert status is not None
        assert status.connected == 2
        assert view._progress.value == view._progress.max == 2

        topo = TopologyView()
        owners = {o["cluster"] for v in topo.data["owners"].values() for o in v}
        assert owners == {"wid"}

        assert view.scale(10_000) is not None  # shown, not raised
        assert "fit" in view.message
        assert [c.name for c in ctrlstack.clusters()] == ["wid"]
    finally:
        launcher.views[0].stop()
    assert launcher.views[0].message == ""
    assert ctrlstack.clusters() == []


def test_everything_imports_and_renders_without_ipywidgets(tmp_path: Path) -> None:
    """`import ctrlstack` and the widgets' HTML fallback work where ipywidgets is absent."""
    code = (
        "import sys; sys.modules['ipywidgets'] = None\n"
        "import ctrlstack, ctrlstack.widgets as w\n"
        "t = w.TopologyView(); assert t.widget is None\n"
        "b = t._repr_mimebundle_(); assert 'text/html' in b and len(b) == 2, sorted(b)\n"
        "assert 'data-cpu=\"0\"' in t._repr_html_()\n"
        "l = w.Launcher(); assert l.widget is None and 'workers' in l.html()\n"
        "print('ok')\n"
    )
    env = {
        "PYTHONPATH": str(REPO),
        "DASK_CTRLSTACK__STATE_DIR": str(tmp_path / "state"),
        "PATH": "/usr/bin:/bin",
    }
    result = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
