"""dask-jobqueue, imported without its side effect on the importing process.

Why: ``dask_jobqueue/runner.py`` runs ``signal.signal(SIGINT, lambda *_: sys.exit())`` at import
time.  In a process that imports it (the supervisor, the CLI, the Jupyter server, a notebook
kernel) Ctrl-C then becomes a silent ``SystemExit(None)`` — exit status 0 — and outside the main
thread the import fails outright (``signal only works in main thread``), which is where the
Jupyter server's executor would import it.  Every ctrlstack module takes dask-jobqueue from
here; while it is imported, its attempt to install a SIGINT handler is ignored.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

__all__ = ["JobQueueCluster", "PBSJob", "SLURMJob"]


@contextlib.contextmanager
def _sigint_untouched() -> Iterator[None]:
    real = signal.signal

    def guarded(signalnum: Any, handler: Any) -> Any:
        if signalnum == signal.SIGINT:
            return signal.getsignal(signal.SIGINT)
        if threading.current_thread() is not threading.main_thread():
            return signal.getsignal(signalnum)
        return real(signalnum, handler)

    signal.signal = guarded
    try:
        yield
    finally:
        signal.signal = real


with _sigint_untouched():
    from dask_jobqueue import JobQueueCluster
    from dask_jobqueue.pbs import PBSJob
    from dask_jobqueue.slurm import SLURMJob
