"""Stack build time (uv vs pip, cold and warm cache) and pinned vs plain kernel start.

    python benchmarks/stacks.py [--stack tiny] [--repeat 5] [--skip-cold]

Builds go into fresh temporary prefixes.  "cold" points the tool at an empty cache directory
(everything is downloaded and unpacked), "warm" uses the tool's normal cache after a first
build.  Kernel start: the same built stack, once through ctrlstack's launcher (plan, pin, exec
ipykernel) and once as a plain ``python -m ipykernel_launcher`` kernelspec; each start is timed
until the kernel answers ``kernel_info``, interleaved, median of ``--repeat``.  The stack
defaults to ``tests/stacks/tiny.toml`` (ctrlstack's own requirements + ipykernel).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import sys
import tempfile
import time
from typing import Any

import dask

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _stack(name: str) -> Any:
    from ctrlstack.stacks.model import get_stack

    path = ROOT / "tests" / "stacks" / f"{name}.toml"
    if path.is_file():
        with dask.config.set({"ctrlstack.stacks": {name: {"file": str(path)}}}):
            return get_stack(name)
    return get_stack(name)


def build_time(stack: Any, tool: str, cold: bool, root: pathlib.Path) -> float:
    from ctrlstack.stacks.build import build

    prefix = pathlib.Path(tempfile.mkdtemp(dir=root)) / "venv"
    saved = dict(os.environ)
    if cold:
        cache = tempfile.mkdtemp(dir=root)
        os.environ["UV_CACHE_DIR" if tool == "uv" else "PIP_CACHE_DIR"] = cache
    try:
        t0 = time.perf_counter()
        result = build(stack, prefix, tool=tool)
        assert result.changed
        return time.perf_counter() - t0
    finally:
        os.environ.clear()
        os.environ.update(saved)


def kernel_start(name: str) -> float:
    from jupyter_client.manager import start_new_kernel

    t0 = time.perf_counter()
    km, kc = start_new_kernel(kernel_name=name, startup_timeout=120)
    elapsed = time.perf_counter() - t0
    kc.stop_channels()
    km.shutdown_kernel(now=True)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--stack", default="tiny")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--skip-cold", action="store_true")
    parser.add_argument("--skip-builds", action="store_true", help="kernel start only")
    args = parser.parse_args()
    stack = _stack(args.stack)
    out: dict[str, Any] = {
        "machine": {"cpus": len(os.sched_getaffinity(0)), "kernel": platform.release(),
                    "python": platform.python_version(), "load": os.getloadavg()},
        "stack": stack.name,
    }  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(tmp)
        builds: dict[str, float] = {}
        for tool in () if args.skip_builds else ("uv", "pip"):
            if not args.skip_cold:
                builds[f"{tool} cold"] = build_time(stack, tool, True, root)
            build_time(stack, tool, False, root)  # fill the cache
            builds[f"{tool} warm"] = build_time(stack, tool, False, root)
            print(f"{tool}: " + ", ".join(f"{k} {v:.1f} s" for k, v in builds.items() if tool in k))
        out["build_seconds"] = builds

        from jupyter_client.kernelspec import KernelSpecManager

        from ctrlstack.stacks.build import build
        from ctrlstack.stacks.kernelspec import install

        prefix = root / "kernel-stack"
        build(stack, prefix)
        install(stack, prefix, jupyter_prefix=str(root / "jp"))
        plain = root / "plain"
        plain.mkdir()
        python = str(prefix / "bin" / "python")
        (plain / "kernel.json").write_text(json.dumps({
            "argv": [python, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "plain", "language": "python",
        }))  # fmt: skip
        KernelSpecManager().install_kernel_spec(str(plain), "plain", prefix=str(root / "jp"))
        os.environ["JUPYTER_PATH"] = str(root / "jp" / "share" / "jupyter")
        names = {"pinned": f"ctrlstack-{stack.name}", "plain": "plain"}
        for name in names.values():
            kernel_start(name)  # warm-up: bytecode, page cache
        times: dict[str, list[float]] = {k: [] for k in names}
        for r in range(args.repeat):
            for key in list(names)[r % 2 :] + list(names)[: r % 2]:
                times[key].append(kernel_start(names[key]))
        medians = {k: statistics.median(v) for k, v in times.items()}
        out["kernel_start_seconds"] = medians
        out["kernel_start_ratio"] = medians["pinned"] / medians["plain"]
        print(f"kernel start: pinned {medians['pinned']:.2f} s, plain {medians['plain']:.2f} s, "
              f"ratio {out['kernel_start_ratio']:.2f}")  # fmt: skip
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    sys.exit(main())
