"""Smoke test of a plain ``pip install ctrlstack`` (no extras): every public op, every command.

Run by ``make test-minimal`` with the interpreter of ``.venv-min``, a venv holding ctrlstack's base
install only.  The dev venv has every extra (scipy, pandas, JupyterLab ...), so the test suite
cannot see an op or command that imports something only an extra brings; this script can.

It is a plain script, not a pytest module (pytest collects ``test_*.py`` only): it must run
where pytest is not installed.  It checks, in order:

1. the venv holds the base install only (no package outside ctrlstack's dependency closure),
   and ``ctrlstack`` is imported from that install, not from a source tree;
2. each public op of ``ctrlstack.ops`` once on small NumPy data, against plain NumPy;
3. each CLI command, against a private state dir, checking exit codes and output.

Every failure is reported and counted; the exit status is 1 if anything failed.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import textwrap
import traceback
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

FAILURES: list[str] = []
CHECKED: set[str] = set()


def check(name: str, *covers: str) -> Callable[[Callable[[], None]], Callable[[], None]]:
    """Run the decorated function now; record a failure (with its traceback) instead of stopping."""

    def run(func: Callable[[], None]) -> Callable[[], None]:
        CHECKED.update(covers)
        try:
            func()
        except Exception as exc:  # noqa: BLE001 - report every check, then fail at the end
            FAILURES.append(f"{name}: {type(exc).__name__}: {exc}")
            print(f"FAIL {name}\n{textwrap.indent(traceback.format_exc(), '    ')}", flush=True)
        else:
            print(f"ok   {name}", flush=True)
        return func

    return run


# ------------------------------------------------------------------------ 1. the install itself
def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _closure(root: str) -> set[str]:
    """Names of ``root`` and everything its (non-extra) requirements pull in, recursively."""
    from packaging.requirements import Requirement  # a dependency of dask

    seen: set[str] = set()
    todo: list[tuple[str, frozenset[str]]] = [(root, frozenset())]
    while todo:
        name, extras = todo.pop()
        key = f"{_normal(name)}[{','.join(sorted(extras))}]"
        if key in seen:
            continue
        seen.add(key)
        for text in metadata.requires(name) or []:
            req = Requirement(text)
            if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in {"", *extras}):
                todo.append((req.name, frozenset(req.extras)))
    return {k.partition("[")[0] for k in seen}


@check("venv holds ctrlstack's base install only")
def _() -> None:
    import ctrlstack

    here = Path(ctrlstack.__file__).resolve()
    assert Path(sys.prefix).resolve() in here.parents, f"ctrlstack imported from {here}"
    installed = {_normal(d.metadata["Name"]) for d in metadata.distributions()}
    extra = installed - _closure("ctrlstack") - {"pip", "setuptools", "wheel"}
    assert not extra, f"packages beyond the base install: {sorted(extra)}"


# ----------------------------------------------------------------------------- 2. public ops
rng = np.random.default_rng(0)
X = rng.normal(size=(40, 3))
Y = rng.normal(size=(7, 3))


def _sqdist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)


def close(actual: Any, expected: Any, what: str = "") -> None:
    np.testing.assert_allclose(np.asarray(actual), np.asarray(expected), rtol=1e-9, atol=1e-12,
                               err_msg=what)  # fmt: skip


@check("ops.kmeans, kmeans_predict, assign", "kmeans", "kmeans_predict", "assign")
def _() -> None:
    from ctrlstack import ops

    blobs = np.concatenate([rng.normal(c, 0.1, size=(20, 2)) for c in (0.0, 5.0, 10.0)])
    init = blobs[[0, 20, 40]]
    result = ops.kmeans(blobs, 3, init=init)
    labels = _sqdist(blobs, result.centers).argmin(1)
    assert (result.labels == labels).all()
    close(result.centers, [blobs[labels == j].mean(0) for j in range(3)], "centers")
    close(result.inertia, _sqdist(blobs, result.centers).min(1).sum(), "inertia")
    assert (ops.kmeans_predict(Y[:, :2], result.centers) == _sqdist(Y[:, :2], init).argmin(1)).all()
    assert (ops.assign(blobs, result.centers) == labels).all()


@check("ops.pairwise_distances", "pairwise_distances")
def _() -> None:
    from ctrlstack import ops

    close(ops.pairwise_distances(X, Y), np.sqrt(_sqdist(X, Y)))
    close(ops.pairwise_distances(X, Y, metric="sqeuclidean"), _sqdist(X, Y))
    cos = 1 - (X @ Y.T) / np.linalg.norm(X, axis=1)[:, None] / np.linalg.norm(Y, axis=1)
    close(ops.pairwise_distances(X, Y, metric="cosine"), np.clip(cos, 0, 2))


@check("ops.knn", "knn")
def _() -> None:
    from ctrlstack import ops

    distances, indices = ops.knn(X, Y, 3)
    full = np.sqrt(_sqdist(X, Y))
    order = np.argsort(full, axis=1, kind="stable")[:, :3]
    assert (indices == order).all()
    close(distances, np.take_along_axis(full, order, 1))


@check("ops.group_*", *(f"group_{op}" for op in ("sum", "mean", "var", "min", "max", "count")))
def _() -> None:
    from ctrlstack import ops

    values = rng.normal(size=(2, 30))
    values[0, 3] = np.nan
    labels = rng.integers(0, 4, size=30)
    for op, ref in [
        ("sum", np.nansum),
        ("mean", np.nanmean),
        ("var", lambda v, axis: np.nanvar(v, axis=axis, ddof=1)),
        ("min", np.nanmin),
        ("max", np.nanmax),
        ("count", lambda v, axis: (~np.isnan(v)).sum(axis)),
    ]:
        got = getattr(ops, f"group_{op}")(values, labels, 4)
        expected = np.stack([ref(values[:, labels == g], axis=1) for g in range(4)], axis=1)
        close(got, expected, f"group_{op}")


@check("ops.moving_*", *(f"moving_{op}" for op in ("sum", "mean", "var", "std", "min", "max")))
def _() -> None:
    from ctrlstack import ops

    a = rng.normal(size=25)
    windows = np.lib.stride_tricks.sliding_window_view(a, 4)
    for op, ref in [
        ("sum", np.sum),
        ("mean", np.mean),
        ("var", np.var),
        ("std", np.std),
        ("min", np.min),
        ("max", np.max),
    ]:
        got = getattr(ops, f"moving_{op}")(a, 4)
        assert np.isnan(got[:3]).all(), f"moving_{op}: first window - 1 outputs must be NaN"
        close(got[3:], ref(windows, axis=1), f"moving_{op}")


@check("ops.histogram, histogram2d", "histogram", "histogram2d")
def _() -> None:
    from ctrlstack import ops

    a, b = rng.normal(size=200), rng.normal(size=200)
    hist, edges = ops.histogram(a, bins=8, range=(-3, 3))
    ref_hist, ref_edges = np.histogram(a, bins=8, range=(-3, 3))
    assert (hist == ref_hist).all()
    close(edges, ref_edges)
    h2, xe, ye = ops.histogram2d(a, b, bins=5)
    ref2, rxe, rye = np.histogram2d(a, b, bins=5)
    close(h2, ref2)
    close(xe, rxe)
    close(ye, rye)


@check("ops.jacobi_step, heat_diffusion", "jacobi_step", "heat_diffusion")
def _() -> None:
    from ctrlstack import ops

    u = rng.normal(size=(6, 7))

    def step(v: np.ndarray, alpha: float) -> np.ndarray:
        w = v.copy()
        c = v[1:-1, 1:-1]
        neighbours = v[:-2, 1:-1] + v[2:, 1:-1] + v[1:-1, :-2] + v[1:-1, 2:]
        w[1:-1, 1:-1] = c + alpha * (neighbours - 4 * c)
        return w

    close(ops.jacobi_step(u), step(u, 0.25), "jacobi_step")
    close(ops.heat_diffusion(u, 3, alpha=0.1), step(step(step(u, 0.1), 0.1), 0.1), "heat")


@check("ops.logistic_loss_grad", "logistic_loss_grad")
def _() -> None:
    from ctrlstack import ops

    w = rng.normal(size=3)
    y = (rng.random(40) < 0.5).astype(float)
    z = X @ w
    loss = np.mean(np.logaddexp(0, z) - y * z) + 0.1 / 2 * w @ w
    grad = X.T @ (1 / (1 + np.exp(-z)) - y) / len(y) + 0.1 * w
    got_loss, got_grad = ops.logistic_loss_grad(w, X, y, l2=0.1)
    close(got_loss, loss, "loss")
    close(got_grad, grad, "grad")


@check("ops.mlp_forward", "mlp_forward")
def _() -> None:
    from ctrlstack import ops

    weights = [rng.normal(size=(3, 5)), rng.normal(size=(5, 2))]
    biases = [rng.normal(size=5), rng.normal(size=2)]
    h = np.maximum(X @ weights[0] + biases[0], 0)
    logits = h @ weights[1] + biases[1]
    p = np.exp(logits - logits.max(1, keepdims=True))
    close(ops.mlp_forward(X, weights, biases), p / p.sum(1, keepdims=True))


@check("ops.warm", "warm")
def _() -> None:
    from ctrlstack import ops

    # Loads (or compiles into) Numba's on-disk cache; a second call is a cache load.
    assert ops.warm(["jacobi_step"]) == ["jacobi_step"]
    message = ""
    try:
        ops.warm(["no-such-op"])
    except ValueError as exc:  # no pytest in the minimal venv
        message = str(exc)
    assert "no-such-op" in message, "warm() accepted an unknown op"


@check("every public op is covered above")
def _() -> None:
    from ctrlstack import ops

    public = {name for name in ops.__all__ if callable(getattr(ops, name))} - {"KMeansResult"}
    missing = public - CHECKED
    assert not missing, f"public ops without a smoke check: {sorted(missing)}"


# ---------------------------------------------------------------------------------- 3. the CLI
STATE = tempfile.mkdtemp(prefix="ctrlstack-smoke-")
CLI_ENV = {k: v for k, v in os.environ.items() if not k.startswith("DASK_")}
CLI_ENV.pop("PYTHONPATH", None)  # the installed package, not a source tree
CLI_ENV["DASK_CTRLSTACK__STATE_DIR"] = os.path.join(STATE, "state")
CTRLSTACK = str(Path(sys.executable).with_name("ctrlstack"))  # the console script pip installed


def cli(*args: str, expect: str = "", code: int = 0, timeout: float = 180) -> str:
    """Run ``ctrlstack ARGS``; check the exit status and that ``expect`` (a regex) is printed."""
    result = subprocess.run(
        [CTRLSTACK, *args], capture_output=True, text=True, env=CLI_ENV, timeout=timeout,
        check=False, cwd=STATE,
    )  # fmt: skip
    detail = f"ctrlstack {' '.join(args)} -> {result.returncode}\n{result.stdout}{result.stderr}"
    assert result.returncode == code, detail
    assert "Traceback" not in result.stderr, detail
    assert re.search(expect, result.stdout), f"{expect!r} not in output of: {detail}"
    return result.stdout


SCRIPT = Path(STATE) / "job.py"
SCRIPT.write_text(
    "import os\nfrom distributed import Client\n"
    "with Client() as c:\n"
    "    print('cluster', os.environ['CTRLSTACK_CLUSTER'], 'sum', c.submit(sum, [1, 2, 3]).result())\n"
)


@check("ctrlstack topology")
def _() -> None:
    cli("topology", expect=r"(?m)^package 0")


@check("ctrlstack plan")
def _() -> None:
    cli("plan", "-w", "1", "-t", "1", expect=r"1 worker × 1 thread")


@check("ctrlstack profiles")
def _() -> None:
    cli("profiles", expect=r"(?m)^local\s+backend=local")


@check("ctrlstack script")
def _() -> None:
    cli("script", "slurm-cpu", expect=r"(?m)^#SBATCH --partition=debug$")


@check("ctrlstack worker")
def _() -> None:  # outside a job, without credentials: one clear line, exit 2
    cli("worker", "tls://127.0.0.1:1", "--name", "x", code=2)


try:

    @check("ctrlstack launch")
    def _() -> None:
        cli(
            "launch",
            "local",
            "--name",
            "smoke",
            "-w",
            "1",
            "-t",
            "1",
            expect=r"cluster smoke running",
        )

    @check("ctrlstack list")
    def _() -> None:
        cli("list", expect=r"(?m)^smoke\s+local\s+running")

    @check("ctrlstack status")
    def _() -> None:
        cli("status", "smoke", expect=r"smoke: running, 1/1 workers up")

    @check("ctrlstack scale")
    def _() -> None:
        cli("scale", "smoke", "1", expect=r"smoke: scaling to 1 workers")

    @check("ctrlstack adapt")
    def _() -> None:
        cli("adapt", "smoke", "--min", "0", "--max", "1", expect=r"adaptive between 0 and 1")

    @check("ctrlstack crowding")
    def _() -> None:
        cli("crowding", "smoke", expect=r"\S")

    @check("ctrlstack run")
    def _() -> None:
        cli("run", "--profile", "local", "-w", "1", "-t", "1", str(SCRIPT),
            expect=r"cluster run-\d+ sum 6")  # fmt: skip

finally:

    @check("ctrlstack stop")
    def _() -> None:
        cli("stop", "smoke", expect=r"stopped smoke")
        cli("list", expect=r"no clusters")


print(f"\n{len(FAILURES)} failure(s)" + "".join(f"\n  {f}" for f in FAILURES))
sys.exit(1 if FAILURES else 0)
