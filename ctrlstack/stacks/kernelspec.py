"""Jupyter kernelspecs for built stacks, installed with jupyter_client's own machinery.

``kernels/<stack>/kernel.json`` is a template: ``@PYTHON@`` becomes the built stack's Python and
the stack's kernel environment (threading layer, OpenMP/BLAS settings) is merged into ``env``.
A stack without a template (a site stack) gets the generic one in ``kernels/_default``.  The
spec's ``metadata.ctrlstack.stack`` says which stack a kernel runs (``stack check`` reads it).
"""

from __future__ import annotations

import importlib.resources
import json
import pathlib
import shutil
import tempfile
from typing import Any

from .build import read_stamp, stack_python
from .model import Stack, StackError

__all__ = ["install", "installed_kernels", "kernel_name", "render"]

PLACEHOLDER = "@PYTHON@"


def kernel_name(stack: str) -> str:
    return f"ctrlstack-{stack}".lower()


def template_dirs() -> list[pathlib.Path]:
    package = pathlib.Path(str(importlib.resources.files("ctrlstack")))
    return [d for d in (package / "kernels", package.parent / "kernels") if d.is_dir()]


def _template(stack: str) -> pathlib.Path:
    for base in template_dirs():
        for name in (stack, "_default"):
            if (base / name / "kernel.json").is_file():
                return base / name
    raise StackError("no kernelspec templates found (kernels/ is missing from the installation)")


def render(template: dict[str, Any], stack: Stack, python: pathlib.Path) -> dict[str, Any]:
    """The kernel.json of ``stack`` built at ``python`` (pure)."""
    spec = json.loads(json.dumps(template).replace("@STACK@", stack.name))
    spec["argv"] = [str(python) if a == PLACEHOLDER else a for a in spec["argv"]]
    spec["env"] = {**spec.get("env", {}), **stack.kernel_env()}
    meta = spec.setdefault("metadata", {}).setdefault("ctrlstack", {})
    meta.update(stack=stack.name, prefix=str(python.parent.parent))
    return spec


def install(
    stack: Stack,
    prefix: pathlib.Path | None = None,
    *,
    user: bool = False,
    jupyter_prefix: str | None = None,
) -> str:
    """Install the kernelspec of ``stack`` (built at ``prefix``); return where it went.

    ``user``/``jupyter_prefix`` as for ``jupyter kernelspec install`` (neither: the system-wide
    location, usually ``sys.prefix`` of a venv'd Jupyter when given as ``jupyter_prefix``).
    """
    from jupyter_client.kernelspec import KernelSpecManager

    prefix = pathlib.Path(prefix or stack.prefix or "")
    if read_stamp(prefix) is None:
        raise StackError(
            f"stack {stack.name!r} is not built at {prefix}; run 'ctrlstack stack build {stack.name}'"
        )
    source = _template(stack.name)
    spec = render(json.loads((source / "kernel.json").read_text()), stack, stack_python(prefix))
    with tempfile.TemporaryDirectory() as tmp:
        target = pathlib.Path(tmp) / kernel_name(stack.name)
        shutil.copytree(source, target)
        (target / "kernel.json").write_text(json.dumps(spec, indent=2) + "\n")
        return str(
            KernelSpecManager().install_kernel_spec(
                str(target), kernel_name(stack.name), user=user, prefix=jupyter_prefix
            )
        )


def installed_kernels() -> dict[str, str]:
    """``{kernel name: stack}`` of every installed kernelspec made by :func:`install`."""
    try:
        from jupyter_client.kernelspec import KernelSpecManager
    except ImportError:  # no Jupyter here: no kernels either
        return {}
    out = {}
    for name, info in KernelSpecManager().get_all_specs().items():
        meta = (info.get("spec") or {}).get("metadata") or {}
        stack = (meta.get("ctrlstack") or {}).get("stack")
        if isinstance(stack, str):
            out[name] = stack
    return out
