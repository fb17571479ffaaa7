"""Every ``ctrlstack.ops`` kernel side by side with its fastest reference, in one process.

Usage::

    python benchmarks/ops.py [--family clustering,linear] [--quick] [--markdown]
                             [--threads 1,2] [--no-compile] [--keep-openblas-env]
                             [--isa avx2]

What it prints (the table recorded in ``docs/benchmarks.md``):

* a header describing the machine: CPU model, usable cores, kernel, Python and library versions,
  the BLAS libraries threadpoolctl sees (with the OpenBLAS core type actually selected), Numba's
  threading layer, and what was done with ``OPENBLAS_CORETYPE`` / ``OPENBLAS_L2_SIZE``;
* the same-run physical limits per thread count: STREAM-style triad (GB/s) and NumPy GEMM
  (GFLOP/s, float64 and float32);
* per kernel and thread count: size, fastest reference and its median time, our median time,
  ratio ``ref / ours`` (> 1 means ctrlstack is faster), and our throughput as GB/s vs triad
  (bandwidth-bound kernels) or GFLOP/s vs GEMM of the same dtype (compute-bound kernels), plus
  whether our result matched the reference;
* compile latency: first call in a fresh subprocess with an empty ``NUMBA_CACHE_DIR`` (cold
  compile) and again with that cache filled (cached), so the ``cache=True`` saving is visible;
  then, after ``ctrlstack.ops.warm([op])`` (what ``ctrlstack ops warm`` does), the first call
  inside each worker of a fresh 2-worker ``LocalCluster`` sharing that cache (the slower worker
  is reported), once plain and once with the ``ctrlstack.ops.preload`` worker preload loading
  the op while the workers start (with both clusters' start-up times): the target is "no more
  than the cached first call".

Cases come from ``benchmarks/ops_ml.py`` and ``benchmarks/ops_sci.py`` (``cases()`` returning
``harness.Case`` objects; optional ``compile_probes()``).  Thread counts are applied to both
sides: ``CTRLSTACK_THREAD_BUDGET`` (read by every ctrlstack kernel) and ``numba.set_num_threads``
for ours, threadpoolctl (BLAS and OpenMP) for the references.

**OpenBLAS environment.**  Some machines of this project set ``OPENBLAS_CORETYPE`` and
``OPENBLAS_L2_SIZE`` so that old OpenBLAS builds stay correct; with a current NumPy they select a
slower GEMM kernel (perf.md: ~29 vs ~37 GFLOP/s).  The references would then be handicapped, so
this script removes both variables from *its own* environment before NumPy loads OpenBLAS (and
from the compile-latency subprocesses it starts), and says so in the header.  Nothing else is
changed; ``--keep-openblas-env`` keeps them.

**``--isa avx2``: AVX2 code on an AVX-512 machine.**  Issue 11 asks for every kernel to win on
both CPU kinds (AVX-512 and AVX2) without tuning to one; when only an AVX-512 machine is at
hand, this flag makes *both sides* generate and dispatch AVX2 code before anything is loaded:
Numba (ours and numbagg) compiles for ``NUMBA_CPU_NAME`` (``znver3`` on AMD, ``skylake`` on
Intel) with the host's features minus every ``avx512*``, with its own on-disk cache; NumPy's
dispatch drops its AVX-512 targets (``NPY_DISABLE_CPU_FEATURES``); OpenBLAS (NumPy's, SciPy's,
scikit-learn's) runs its Haswell kernels (``OPENBLAS_CORETYPE``); bottleneck and pandas have
no AVX-512 paths.  It is a proxy for the *code* an AVX2 machine runs, not for that machine's
latencies and caches: record such runs as such.  The header says what was set.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

_OPENBLAS_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def _apply_openblas_policy(argv: list[str]) -> str:
    """Unset the OpenBLAS overrides for this process (must run before NumPy is imported)."""
    found = {name: os.environ[name] for name in _OPENBLAS_VARS if name in os.environ}
    if not found:
        return "OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE: not set in this environment (nothing changed)"
    shown = ", ".join(f"{k}={v}" for k, v in found.items())
    if "--keep-openblas-env" in argv:
        return f"{shown}: kept as set (--keep-openblas-env); BLAS references may be slowed"
    for name in found:
        del os.environ[name]
    return f"{shown} were set: UNSET for this benchmark process and its subprocesses only"


OPENBLAS_NOTE = _apply_openblas_policy(sys.argv)


def _numpy_avx512_targets() -> str:
    """NumPy's AVX-512 dispatch targets, asked of a child (NumPy must not load here yet)."""
    code = (
        "from numpy._core._multiarray_umath import __cpu_dispatch__ as d;"
        "print(' '.join(t for t in d if 'AVX512' in t or t == 'X86_V4'))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    return done.stdout.strip()


def _apply_isa_policy(argv: list[str]) -> str:
    """``--isa avx2``: make Numba, NumPy and OpenBLAS use AVX2 code (before NumPy loads)."""
    given = [a.split("=", 1)[1] for a in argv if a.startswith("--isa=")]
    if "--isa" in argv:
        i = argv.index("--isa")
        given.append(argv[i + 1] if i + 1 < len(argv) else "")
    if not given:
        return "host (no --isa)"
    isa = given[-1]
    if isa != "avx2":
        sys.exit(f"ops.py: --isa {isa!r} is not supported; allowed: avx2")
    import llvmlite.binding as ll

    amd = "AuthenticAMD" in Path("/proc/cpuinfo").read_text()
    flags = ll.get_host_cpu_features()
    os.environ["NUMBA_CPU_NAME"] = "znver3" if amd else "skylake"
    os.environ["NUMBA_CPU_FEATURES"] = ",".join(
        ("-" if k.startswith("avx512") or k == "evex512" or not on else "+") + k
        for k, on in flags.items()
    )
    os.environ["NUMBA_CACHE_DIR"] = os.path.join(
        tempfile.gettempdir(), "ctrlstack-bench-avx2-cache"
    )
    os.environ["NPY_DISABLE_CPU_FEATURES"] = _numpy_avx512_targets()
    os.environ["OPENBLAS_CORETYPE"] = "Zen" if amd else "Haswell"
    return (
        f"AVX2 proxy (--isa avx2): NUMBA_CPU_NAME={os.environ['NUMBA_CPU_NAME']} without avx512*, "
        f"NPY_DISABLE_CPU_FEATURES={os.environ['NPY_DISABLE_CPU_FEATURES']!r}, "
        f"OPENBLAS_CORETYPE={os.environ['OPENBLAS_CORETYPE']}"
    )


ISA_NOTE = _apply_isa_policy(sys.argv)

import argparse
import inspect
import json
import platform
import time
from collections.abc import Sequence
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
from harness import (
    Case,
    fmt_table,
    gemm_gflops,
    median_time,
    set_threads,
    triad_gbs,
)

from ctrlstack.topology.budget import BUDGET_ENV

CASE_MODULES = ("ops_ml", "ops_sci")
COLUMNS = (
    "family",
    "kernel",
    "size",
    "thr",
    "fastest reference",
    "ref ms",
    "ours ms",
    "ratio",
    "ours rate",
    "% of limit",
    "check",
)


# --------------------------------------------------------------------------------------------
# machine description


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(name: str) -> str:
    try:
        module = __import__(name)
        return str(getattr(module, "__version__", "?"))
    except ImportError:
        return "not installed"


def _threading_layer(numba: Any) -> str:
    try:
        return str(numba.threading_layer())  # the layer actually in use (after a parallel call)
    except ValueError:
        return f"not started yet (requested: {numba.config.THREADING_LAYER})"


def machine_header() -> list[tuple[str, str]]:
    """(item, value) pairs describing this machine and software stack."""
    import numba
    from threadpoolctl import threadpool_info

    blas = [
        f"{i.get('filepath', '').rsplit('/', 1)[-1]} {i.get('version')} "
        f"(core {i.get('architecture')}, {i.get('threading_layer')}, {i.get('num_threads')} thr)"
        for i in threadpool_info()
        if i.get("user_api") == "blas"
    ]
    openmp = [
        f"{i.get('prefix')} ({i.get('num_threads')} thr)"
        for i in threadpool_info()
        if i.get("user_api") == "openmp"
    ]
    return [
        ("CPU", _cpu_model()),
        ("usable cores", f"{len(os.sched_getaffinity(0))} (os.cpu_count()={os.cpu_count()})"),
        ("kernel", f"{platform.system()} {platform.release()}"),
        ("python", platform.python_version()),
        (
            "versions",
            ", ".join(
                f"{m} {_version(m)}"
                for m in ("numpy", "numba", "scipy", "sklearn", "pandas", "bottleneck", "numbagg")
            ),
        ),
        ("BLAS (threadpoolctl)", "; ".join(blas) or "none found"),
        ("OpenMP runtimes", "; ".join(openmp) or "none loaded yet"),
        ("numba threading layer", _threading_layer(numba)),
        ("OpenBLAS env", OPENBLAS_NOTE),
        ("instruction set", ISA_NOTE),
    ]


# --------------------------------------------------------------------------------------------
# cases


def load_cases(quick: bool, families: set[str] | None) -> tuple[list[Case], list[Any], list[str]]:
    """Cases from every case module that exists; returns (cases, modules, notes)."""
    import importlib

    cases: list[Case] = []
    modules: list[Any] = []
    notes: list[str] = []
    for name in CASE_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            notes.append(f"{name}: not loaded ({exc})")
            continue
        fn = module.cases
        found = fn(quick=quick) if "quick" in inspect.signature(fn).parameters else fn()
        if quick:
            for case in found:
                case.repeat = min(case.repeat, 2)
        selected = [c for c in found if families is None or c.family in families]
        if selected:  # its compile probes run only when some of its families were selected
            modules.append(module)
        cases.extend(selected)
    return cases, modules, notes


def _ms(t: float) -> str:
    """Milliseconds, 3 significant digits without exponent notation."""
    ms = t * 1e3
    return f"{ms:.0f}" if ms >= 100 else f"{ms:.3g}"


def run_case(case: Case, threads: int, limits: dict[str, float], check: bool) -> dict[str, Any]:
    """Time ours and every reference interleaved; one table row."""
    status = ""
    if check and case.check is not None:
        try:
            case.check(case.ours(), next(iter(case.references.values()))())
            status = "ok"
        except (AssertionError, ValueError, TypeError) as exc:  # report it, keep running
            status = f"FAIL: {str(exc).splitlines()[0][:60]}"
    names = list(case.references)
    times = median_time([case.ours, *case.references.values()], case.repeat)
    ours_t, ref_ts = times[0], times[1:]
    best = min(range(len(names)), key=lambda i: ref_ts[i])
    if case.kind == "bandwidth":
        rate = case.work / ours_t / 1e9
        rate_s, limit = f"{rate:.1f} GB/s", limits["triad"]
    elif case.kind == "compute":
        rate = case.work / ours_t / 1e9
        dtype = case.extra.get("dtype", "float64")
        rate_s, limit = f"{rate:.1f} GFLOP/s", limits[f"gemm_{dtype}"]
    else:
        rate, rate_s, limit = 0.0, "-", 0.0
    others = ", ".join(
        f"{n} {_ms(t)}" for i, (n, t) in enumerate(zip(names, ref_ts, strict=False)) if i != best
    )
    return {
        "family": case.family,
        "kernel": case.name,
        "size": case.size,
        "thr": threads,
        "fastest reference": names[best],
        "ref ms": _ms(ref_ts[best]),
        "ours ms": _ms(ours_t),
        "ratio": f"{ref_ts[best] / ours_t:.2f}",
        "ours rate": rate_s,
        "% of limit": f"{100 * rate / limit:.0f} %" if limit else "-",
        "check": status,
        "_others": others,
    }


# --------------------------------------------------------------------------------------------
# compile latency

_PROBE = """
import time
t0 = time.perf_counter()
{setup}
t1 = time.perf_counter()
{call}
t2 = time.perf_counter()
{call}
t3 = time.perf_counter()
import json
print(json.dumps({{"import_s": t1 - t0, "first_s": t2 - t1, "second_s": t3 - t2}}))
"""


_CLUSTER_PROBE = """
import json
import time

SETUP = {setup!r}
CALL = {call!r}


def probe():
    ns = {{}}
    exec(SETUP, ns)
    t0 = time.perf_counter()
    exec(CALL, ns)
    return time.perf_counter() - t0


if __name__ == "__main__":
    from distributed import Client, LocalCluster

    t0 = time.perf_counter()
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
        preload={preload!r},
    ) as cluster, Client(cluster) as client:
        client.wait_for_workers(2)
        start = time.perf_counter() - t0
        times = client.run(probe)
    print(json.dumps({{"first_s": max(times.values()), "start_s": start}}))
"""


def _run_probe(
    setup: str, call: str, cache_dir: str, cluster: bool = False, preload_op: str | None = None
) -> dict[str, float]:
    """One fresh process (or fresh 2-worker cluster) timing the first and second call.

    ``preload_op``: the cluster's workers load that op's kernels while they start
    (``ctrlstack.ops.preload``), so their first call should be no more than a warm call.
    """
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir, PYTHONPATH=str(REPO))
    preload: list[str] = []
    if preload_op is not None:
        env["DASK_CTRLSTACK__OPS__PRELOAD"] = preload_op
        preload = ["ctrlstack.ops.preload"]
    if cluster:
        script = _CLUSTER_PROBE.format(setup=setup, call=call, preload=preload)
    else:
        script = _PROBE.format(setup=setup, call=call)
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed")
    result: dict[str, float] = json.loads(proc.stdout.strip().splitlines()[-1])
    result["wall_s"] = wall
    return result


_COMPILE_COLUMNS = (
    "kernel",
    "cold first call",
    "cached first call",
    "fresh 2-worker cluster first call",
    "same, ops preload",
    "cluster start plain / preload",
    "second call",
    "imports",
    "process wall cold / cached",
)


def compile_latency(modules: Sequence[Any]) -> list[dict[str, Any]]:
    rows = []
    for module in modules:
        probes = getattr(module, "compile_probes", None)
        if probes is None:
            continue
        for name, (setup, call) in probes().items():
            with tempfile.TemporaryDirectory(prefix="numba-cache-") as cache:
                try:
                    cold = _run_probe(setup, call, cache)
                    warm = _run_probe(setup, call, cache)
                    # probe names are op names, optionally with a shape ("heat_diffusion 2-D")
                    op = name.split()[0]
                    # the documented step before a cluster starts: `ctrlstack ops warm <op>`
                    # (every dtype and shape of the op, not only the probe's)
                    _run_probe("from ctrlstack.ops import warm", f"warm([{op!r}])", cache)
                    worker = _run_probe(setup, call, cache, cluster=True)
                    pre = _run_probe(setup, call, cache, cluster=True, preload_op=op)
                except (RuntimeError, subprocess.TimeoutExpired, ValueError) as exc:
                    rows.append(dict.fromkeys(_COMPILE_COLUMNS, "-") | {"kernel": name})
                    rows[-1]["cold first call"] = f"error: {exc}"
                    continue
            rows.append(
                {
                    "kernel": name,
                    "cold first call": f"{cold['first_s']:.2f} s",
                    "cached first call": f"{warm['first_s']:.3f} s",
                    "fresh 2-worker cluster first call": f"{worker['first_s']:.3f} s",
                    "same, ops preload": f"{pre['first_s']:.3f} s",
                    "cluster start plain / preload": (
                        f"{worker['start_s']:.2f} / {pre['start_s']:.2f} s"
                    ),
                    "second call": f"{warm['second_s'] * 1e3:.2f} ms",
                    "imports": f"{warm['import_s']:.2f} s",
                    "process wall cold / cached": f"{cold['wall_s']:.1f} / {warm['wall_s']:.1f} s",
                }
            )
    return rows


# --------------------------------------------------------------------------------------------
# output


def fmt_plain(rows: list[dict[str, Any]], columns: Sequence[str]) -> str:
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    lines = ["  ".join(c.ljust(widths[c]) for c in columns)]
    lines.append("  ".join("-" * widths[c] for c in columns))
    lines += ["  ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join(lines)


def render(rows: list[dict[str, Any]], columns: Sequence[str], markdown: bool) -> str:
    if not rows:
        return "(none)"
    return fmt_table(rows, columns) if markdown else fmt_plain(rows, columns)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", help="comma-separated families to run (default: all)")
    parser.add_argument("--quick", action="store_true", help="small sizes, 2 repeats (smoke run)")
    parser.add_argument("--markdown", action="store_true", help="print Markdown tables")
    parser.add_argument("--threads", default="1,2", help="thread counts to run (default 1,2)")
    parser.add_argument("--no-compile", action="store_true", help="skip the compile section")
    parser.add_argument("--keep-openblas-env", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--isa", choices=("avx2",), help="AVX2 code on an AVX-512 machine (both sides; see top)"
    )
    args = parser.parse_args(argv)
    families = set(args.family.split(",")) if args.family else None
    allowed = len(os.sched_getaffinity(0))
    thread_counts = sorted({min(int(t), allowed) for t in args.threads.split(",")})

    cases, modules, notes = load_cases(args.quick, families)
    title = "## " if args.markdown else ""
    print(f"{title}ctrlstack.ops benchmark ({time.strftime('%Y-%m-%d %H:%M:%S %Z')})\n")
    if not cases:
        print("no cases selected; families available come from", ", ".join(CASE_MODULES))
        return 1

    limit_rows: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    for i, nt in enumerate(thread_counts):
        os.environ[BUDGET_ENV] = str(nt)
        with set_threads(nt):
            limits = {
                "triad": triad_gbs(n=5_000_000 if args.quick else 20_000_000),
                "gemm_float64": gemm_gflops(np.float64, n=1024 if args.quick else 2048),
                "gemm_float32": gemm_gflops(np.float32, n=1024 if args.quick else 2048),
            }
            limit_rows.append(
                {
                    "threads": nt,
                    "triad GB/s": f"{limits['triad']:.1f}",
                    "GEMM f64 GFLOP/s": f"{limits['gemm_float64']:.1f}",
                    "GEMM f32 GFLOP/s": f"{limits['gemm_float32']:.1f}",
                }
            )
            for case in cases:
                print(f"  running {case.family}/{case.name} at {nt} thread(s)...", file=sys.stderr)
                rows.append(run_case(case, nt, limits, check=i == 0))

    header = machine_header()
    if args.markdown:
        print("| item | value |\n|---|---|")
        print("\n".join(f"| {k} | {v} |" for k, v in header))
    else:
        print("\n".join(f"{k:>22}: {v}" for k, v in header))
    for note in notes:
        print(f"note: {note}")
    print(f"\n{title}Same-run limits\n")
    print(render(limit_rows, list(limit_rows[0]), args.markdown))
    print(f"\n{title}Kernels (ratio = fastest reference / ours; > 1 means ctrlstack is faster)\n")
    print(render(rows, COLUMNS, args.markdown))
    print("\nOther references (median):")
    for r in rows:
        if r["_others"] and r["thr"] == thread_counts[0]:
            print(f"  {r['kernel']}: {r['_others']}")
    case_notes = {c.name: c.notes for c in cases if c.notes}
    for name, note in case_notes.items():
        print(f"  {name}: {note}")
    if not args.no_compile:
        print(f"\n{title}Compile latency (fresh subprocesses; cold = empty NUMBA_CACHE_DIR)\n")
        comp = compile_latency(modules)
        print(render(comp, _COMPILE_COLUMNS, args.markdown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
