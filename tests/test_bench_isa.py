"""``benchmarks/ops.py --isa avx2``: both sides of the benchmark are pointed at AVX2 code."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "ops.py"

pytestmark = pytest.mark.skipif(not SCRIPT.exists(), reason="benchmarks/ not in this checkout")

_PROBE = """
import json, os, sys
sys.argv = ["ops.py"] + sys.argv[1:]
sys.path.insert(0, {bench!r})
import ops
from numpy._core._multiarray_umath import __cpu_dispatch__, __cpu_features__
keys = ("NUMBA_CPU_NAME", "NUMBA_CPU_FEATURES", "NPY_DISABLE_CPU_FEATURES", "OPENBLAS_CORETYPE")
print(json.dumps({{"env": {{k: os.environ.get(k) for k in keys}}, "note": ops.ISA_NOTE,
                   "dispatch": [t for t in __cpu_dispatch__ if __cpu_features__.get(t)]}}))
"""


def _probe(*args: str) -> subprocess.CompletedProcess[str]:
    code = _PROBE.format(bench=str(SCRIPT.parent))
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_avx2_proxy_removes_every_avx512_feature_before_numpy_loads() -> None:
    done = _probe("--isa", "avx2")
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout.strip().splitlines()[-1])
    env = got["env"]
    assert env["NUMBA_CPU_NAME"] in ("znver3", "skylake")
    features = env["NUMBA_CPU_FEATURES"].split(",")
    assert features
    assert not [f for f in features if f.startswith("+avx512")]
    assert "+avx2" in features or "-avx2" in features  # the host's own list, edited
    # NumPy read the variable at import: none of its enabled dispatch targets is AVX-512.
    assert not [t for t in got["dispatch"] if "AVX512" in t or t == "X86_V4"]
    assert env["OPENBLAS_CORETYPE"] in ("Zen", "Haswell")
    assert got["note"].startswith("AVX2 proxy")


def test_equals_form_is_read_too() -> None:
    done = _probe("--isa=avx2")
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["note"].startswith("AVX2 proxy")


def test_without_isa_nothing_is_set() -> None:
    done = _probe()
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["note"] == "host (no --isa)"
    assert got["env"]["NUMBA_CPU_NAME"] is None


def test_unknown_isa_is_refused_with_what_is_allowed() -> None:
    done = _probe("--isa", "sse9")
    assert done.returncode != 0
    assert "--isa 'sse9' is not supported; allowed: avx2" in done.stderr
    assert "Traceback" not in done.stderr
