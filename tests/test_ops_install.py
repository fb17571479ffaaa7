"""A plain install runs every public op, and ``ops.warm`` fills the on-disk cache.

* issue 6: ``pip install ctrlstack`` brings no SciPy; the ML ops used to call Numba's ``np.dot``,
  which needs SciPy's BLAS.  A subprocess with ``sys.modules["scipy"] = None`` (so any import of
  SciPy raises ImportError) runs one call of every public op.
* issue 11: ``warm()`` compiles into ``NUMBA_CACHE_DIR``; a fresh process then loads every
  kernel of the warmed op from that cache (no compile: zero cache misses).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ctrlstack import ops

REPO = Path(__file__).resolve().parents[1]

_NO_SCIPY = """
import sys
sys.modules["scipy"] = None  # any `import scipy...` now raises ImportError
import numpy as np
import ctrlstack.ops as ops

rng = np.random.default_rng(0)
X = rng.random((300, 5))
y = (rng.random(300) < 0.5).astype(float)
lab = np.arange(300) % 4
calls = {
    "kmeans": lambda: ops.kmeans(X, 3, seed=0).centers.shape == (3, 5),
    "kmeans_predict": lambda: ops.kmeans_predict(X, X[:3]).shape == (300,),
    "pairwise_distances": lambda: ops.pairwise_distances(X, X[:7]).shape == (300, 7),
    "knn": lambda: ops.knn(X, X[:20], 3)[1].shape == (300, 3),
    "logistic_loss_grad": lambda: ops.logistic_loss_grad(np.ones(5), X, y)[1].shape == (5,),
    "mlp_forward": lambda: ops.mlp_forward(X, [np.ones((5, 4)), np.ones((4, 2))],
                                           [np.ones(4), np.ones(2)]).shape == (300, 2),
    "histogram": lambda: ops.histogram(X[:, 0], 8)[0].sum() == 300,
    "histogram2d": lambda: ops.histogram2d(X[:, 0], X[:, 1], 4)[0].sum() == 300,
    "jacobi_step": lambda: ops.jacobi_step(np.ones((8, 8))).shape == (8, 8),
    "heat_diffusion": lambda: ops.heat_diffusion(np.ones((8, 8)), 2, alpha=None).shape == (8, 8),
}
for name in ("sum", "mean", "var", "std", "min", "max"):
    fn = getattr(ops, "moving_" + name)
    calls["moving_" + name] = lambda fn=fn: fn(X[:, 0], 5).shape == (300,)
for name in ("sum", "mean", "var", "min", "max", "count"):
    fn = getattr(ops, "group_" + name)
    calls["group_" + name] = lambda fn=fn: fn(X[:, 0], lab, 4).shape == (4,)
result = {name: bool(call()) for name, call in calls.items()}
loaded = sorted(m for m in sys.modules if m.startswith("scipy") and sys.modules[m] is not None)
print(json.dumps({"ok": result, "scipy_loaded": loaded}))
"""


def _run(script: str, **env: str) -> dict:
    full_env = dict(os.environ, PYTHONPATH=str(REPO), **env)
    proc = subprocess.run(
        [sys.executable, "-c", "import json\n" + script],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_every_public_op_runs_without_scipy() -> None:
    out = _run(_NO_SCIPY)
    assert out["scipy_loaded"] == []
    public_ops = {n for n in ops.__all__ if n[0].islower() and n not in ("assign", "warm")}
    assert set(out["ok"]) == public_ops
    assert all(out["ok"].values()), out["ok"]


def test_warm_validates_names() -> None:
    with pytest.raises(ValueError, match="unknown op name"):
        ops.warm(["kmeans", "no_such_op"])
    with pytest.raises(TypeError, match="single string"):
        ops.warm("kmeans")
    assert ops.warm(["assign", "kmeans_predict"]) == ["kmeans_predict"]


_WARM = """
import ctrlstack.ops as ops
print(json.dumps({"warmed": ops.warm(["moving_mean", "kmeans_predict"])}))
"""

_FIRST_CALL = """
import numpy as np
import numba
import ctrlstack.ops as ops
from ctrlstack.ops import _kmeans_core, moving

x = np.random.default_rng(0).random((2, 300))
ops.moving_mean(x[0], 5)  # the one-task path
ops.moving_mean(x, 5)  # the parallel driver
ops.moving_mean(x, 5, threads=1)  # the serial driver
ops.kmeans_predict(x.T, x.T[:3])
ops.kmeans_predict(x.T.astype(np.float32).copy(), x.T[:3])
hits = misses = 0
for module in (moving, _kmeans_core):
    for obj in vars(module).values():
        if isinstance(obj, numba.core.registry.CPUDispatcher):
            hits += sum(obj.stats.cache_hits.values())
            misses += sum(obj.stats.cache_misses.values())
print(json.dumps({"hits": hits, "misses": misses}))
"""


def test_warm_fills_the_cache_for_a_fresh_process(tmp_path: Path) -> None:
    cache = str(tmp_path / "numba-cache")
    assert _run(_WARM, NUMBA_CACHE_DIR=cache)["warmed"] == ["moving_mean", "kmeans_predict"]
    assert any(p.suffix == ".nbi" for p in Path(cache).rglob("*"))
    stats = _run(_FIRST_CALL, NUMBA_CACHE_DIR=cache)
    assert stats["hits"] > 0
    assert stats["misses"] == 0, stats
