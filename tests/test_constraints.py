"""The test environment's pins (ci/constraints.txt) agree with every stack's lock.

The slow stack tests launch clusters in built stacks from this environment and expect no version
mismatch; that holds only while this environment has the wire packages at the locks' versions.
A new Dask on PyPI once broke CI that way, so `make setup` installs ci/dev-lock.txt (resolved
under these constraints by scripts/lock-dev), and these fast tests say which pin or lock to
update when someone relocks.
"""

from __future__ import annotations

import importlib.metadata
import pathlib

import pytest

from ctrlstack.stacks.lock import canonical, pinned
from ctrlstack.stacks.versions import PACKAGES

ROOT = pathlib.Path(__file__).resolve().parent.parent
CONSTRAINTS = ROOT / "ci" / "constraints.txt"
DEV_LOCK = ROOT / "ci" / "dev-lock.txt"
WIRE = [p for p in PACKAGES if p not in ("python", "ctrlstack")]
LOCKS = [*sorted((ROOT / "environments").glob("*.lock")), ROOT / "tests/stacks/tiny.lock"]


def constraints() -> dict[str, str]:
    """The wire packages' pins (the file also pins the lint and type-check tools)."""
    wire = {canonical(p) for p in WIRE}
    return {k: v for k, v in pinned(CONSTRAINTS.read_text()).items() if k in wire}


def test_constraints_pin_every_wire_package() -> None:
    assert sorted(constraints()) == sorted(canonical(p) for p in WIRE)


def test_the_lint_tools_are_pinned_too() -> None:
    pins = pinned(CONSTRAINTS.read_text())
    assert {"ruff", "mypy"} <= set(pins), pins
    assert all(importlib.metadata.version(t) == pins[t] for t in ("ruff", "mypy"))


@pytest.mark.parametrize("lock", LOCKS, ids=lambda p: p.name)
def test_every_lock_pins_the_constraints_versions(lock: pathlib.Path) -> None:
    locked = pinned(lock.read_text())
    differ = {
        name: (version, locked.get(name))
        for name, version in constraints().items()
        if locked.get(name) != version
    }
    assert not differ, f"{lock.name} vs ci/constraints.txt (constraint, lock): {differ}"


def test_the_dev_lock_was_resolved_under_the_constraints() -> None:
    lock = pinned(DEV_LOCK.read_text())
    differ = {n: (v, lock.get(n)) for n, v in pinned(CONSTRAINTS.read_text()).items()
              if lock.get(n) != v}  # fmt: skip
    assert not differ, f"re-run scripts/lock-dev (constraint, dev lock): {differ}"
    assert "ctrlstack" not in lock


def test_this_environment_has_the_dev_locks_versions() -> None:
    lock = pinned(DEV_LOCK.read_text())
    have = {}
    for name in lock:
        try:
            have[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            have[name] = None
    differ = {n: (v, have[n]) for n, v in lock.items() if have[n] != v}
    assert not differ, f"re-run `make setup` (dev lock, installed): {differ}"
