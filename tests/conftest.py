"""Shared fixtures: an isolated ctrlstack state dir per test, so tests never see real clusters."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import dask
import pytest

# Register ctrlstack's config defaults before any test calls dask.config.set: a set() on a
# namespace that does not exist yet removes the whole namespace again when it exits.
import ctrlstack.config  # noqa: F401

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private registry for this test, visible to subprocesses (CLI, scripts) too."""
    path = tmp_path / "state"
    monkeypatch.setenv("DASK_CTRLSTACK__STATE_DIR", str(path))
    with dask.config.set({"ctrlstack.state-dir": str(path)}):
        yield path
    # Whatever a test left running is a bug in the test or the code: clean it up and say so.
    from ctrlstack.deploy import lifecycle
    from ctrlstack.deploy.registry import Registry

    leftovers = []
    registry = Registry(path)
    for status in lifecycle.sweep(registry):
        if status.state in ("starting", "running", "stopping"):
            leftovers.append(status.name)
            lifecycle.stop(registry, status.name)
    assert not leftovers, f"test left clusters running: {leftovers}"


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment for ctrlstack subprocesses in tests."""
    env = dict(os.environ)
    env.update(extra)
    return env


# The real single-node Slurm for tests marked `slurm` (fixtures `slurm`, `slurm_session`).
pytest_plugins = ["slurm_plugin"]
