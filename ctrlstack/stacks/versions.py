"""Do client, scheduler and workers run the same software?  One message if they do not.

distributed already compares versions on connect, but prints a wide table per package and
side, for a fixed list of packages.  With stacks the common mistake is one specific thing — the
notebook kernel runs another stack than the cluster — so ctrlstack states it in one sentence:
which package, on which side, which version, and how to fix it.  :func:`compare` is pure (it
reads :meth:`distributed.Client.get_versions` output); :func:`check_client` asks the cluster
and acts on ``ctrlstack.version-mismatch`` (``warn``, ``error`` or ``ignore``).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from ctrlstack.errors import UserError

__all__ = [
    "PACKAGES",
    "Mismatch",
    "VersionMismatchError",
    "VersionMismatchWarning",
    "check_client",
    "compare",
    "message",
]

#: Packages whose versions must agree: pickles, the wire protocol and compiled kernels.
PACKAGES = (
    "python", "dask", "distributed", "cloudpickle", "msgpack", "toolz", "tornado", "numpy",
    "numba", "ctrlstack",
)  # fmt: skip


class VersionMismatchWarning(UserWarning):
    """Client, scheduler and workers run different versions of packages that must agree."""


class VersionMismatchError(UserError):
    """Raised instead of the warning when ``ctrlstack.version-mismatch`` is ``error``."""


@dataclass(frozen=True)
class Mismatch:
    """One package: its version on each side (``None``: not installed there).

    ``workers`` maps each distinct worker version to how many workers run it.
    """

    package: str
    client: str | None
    scheduler: str | None
    workers: Mapping[str | None, int]

    def __str__(self) -> str:
        def show(v: str | None) -> str:
            return "not installed" if v is None else v

        parts = [f"client {show(self.client)}", f"scheduler {show(self.scheduler)}"]
        total = sum(self.workers.values())
        for version, count in sorted(self.workers.items(), key=lambda kv: str(kv[0])):
            parts.append(f"workers {show(version)} ({count} of {total})")
        return f"{self.package}: " + ", ".join(parts)


def _version(side: Mapping[str, Any] | None, package: str) -> str | None:
    packages = (side or {}).get("packages") or {}
    value = packages.get(package)
    if value is None:
        return None
    text = str(value)
    if package == "python":  # "3.11.7.final.0": the minor version decides what loads
        return ".".join(text.split(".")[:2])
    return text


def compare(versions: Mapping[str, Any], packages: tuple[str, ...] = PACKAGES) -> list[Mismatch]:
    """Packages that differ anywhere between client, scheduler and workers (pure).

    A package absent everywhere is not a difference; absent on one side only is.
    """
    workers = versions.get("workers") or {}
    out = []
    for package in packages:
        client = _version(versions.get("client"), package)
        scheduler = _version(versions.get("scheduler"), package)
        counts: dict[str | None, int] = {}
        for info in workers.values():
            if isinstance(info, Mapping):
                v = _version(info, package)
                counts[v] = counts.get(v, 0) + 1
        seen = {client, scheduler, *counts}
        if len(seen) > 1:
            out.append(Mismatch(package, client, scheduler, counts))
    return out


def message(mismatches: list[Mismatch], cluster: str | None = None) -> str:
    """The one message for a list of mismatches."""
    where = f"cluster {cluster!r}" if cluster else "the cluster"
    return (
        f"this client and {where} run different software — "
        + "; ".join(str(m) for m in mismatches)
        + ". Run the notebook in the kernel of the cluster's stack (profile field 'stack'), or "
        "rebuild the stacks from their locks ('ctrlstack stack check'); "
        "ctrlstack.version-mismatch: error|warn|ignore sets what happens"
    )


def _mode() -> str:
    import dask.config

    import ctrlstack.config  # noqa: F401 - registers the packaged default

    mode = dask.config.get("ctrlstack.version-mismatch", default="warn")
    if mode not in ("warn", "error", "ignore"):
        raise UserError(
            f"ctrlstack.version-mismatch = {mode!r} is invalid; expected warn, error or ignore"
        )
    return str(mode)


def ctrlstack_version() -> str:
    """``ctrlstack.__version__`` of the calling process (run remotely by :func:`_add_ctrlstack`)."""
    from ctrlstack import __version__

    return __version__


def _add_ctrlstack(client: Any, versions: dict[str, Any]) -> None:
    """ctrlstack's version on every side, from the imported module rather than package
    metadata: a source checkout on ``sys.path`` has none, and it is the code that runs."""
    versions.setdefault("client", {}).setdefault("packages", {})["ctrlstack"] = ctrlstack_version()
    scheduler = client.run_on_scheduler(ctrlstack_version)
    versions.setdefault("scheduler", {}).setdefault("packages", {})["ctrlstack"] = scheduler
    for address, version in client.run(ctrlstack_version, on_error="ignore").items():
        if isinstance(version, str) and address in versions.get("workers", {}):
            versions["workers"][address].setdefault("packages", {})["ctrlstack"] = version


def check_client(client: Any, cluster: str | None = None) -> list[Mismatch]:
    """Compare versions over ``client`` and warn, raise or stay silent as configured."""
    mode = _mode()
    if mode == "ignore":
        return []
    extra = [p for p in PACKAGES if p not in ("python", "ctrlstack")]
    versions = client.get_versions(packages=extra)
    _add_ctrlstack(client, versions)
    found = compare(versions)
    if found:
        text = message(found, cluster)
        if mode == "error":
            raise VersionMismatchError(text)
        warnings.warn(text, VersionMismatchWarning, stacklevel=3)
    return found


@contextlib.contextmanager
def quiet_distributed() -> Iterator[None]:
    """Silence distributed's own version table while a client connects: :func:`check_client`
    reports the same facts as one message (and can make them an error)."""
    if _mode() == "ignore":
        yield
        return
    from distributed.versions import VersionMismatchWarning as Table

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Table)
        yield
