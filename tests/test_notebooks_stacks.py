"""The stack notebooks (ML, science, topology) run top to bottom in a real kernel."""

from __future__ import annotations

from pathlib import Path

import nbclient
import nbformat
import pytest

import ctrlstack

pytestmark = pytest.mark.slow

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def _run(name: str) -> str:
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}
    ).execute()
    return "\n".join(
        o.get("text", "") + str(o.get("data", {}).get("text/plain", ""))
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.outputs
    )


def test_ml_notebook_runs() -> None:
    text = _run("ml.ipynb")
    assert "labels agree with the NumPy path: 1.0" in text
    assert "knn matches brute force: True" in text


def test_science_notebook_runs() -> None:
    text = _run("science.ipynb")
    assert "heat conserved inside the plate: 7225.0 -> 7225.0" in text
    assert "moving mean matches xarray rolling: True" in text
    assert "chunks: ((4,), (146, 146, 146, 146, 146))" in text


def test_topology_notebook_runs(state_dir: Path) -> None:
    text = _run("topology.ipynb")
    assert text.count("every worker confined to its own CPUs:") == 2
    assert "every worker confined to its own CPUs: True" in text  # the pinned cluster
    assert "unpinned:" in text
    assert "pinned:" in text
    assert "clusters left running: 0" in text
    assert ctrlstack.clusters() == []


@pytest.mark.slurm
def test_batch_notebook_submits_the_science_analysis_to_slurm(
    slurm: object, state_dir: Path, tmp_path: Path
) -> None:
    """notebooks/batch.ipynb against the real Slurm: the executed science notebook comes back
    from the job (copied to a temp dir so the run's outputs do not land in the checkout)."""
    import shutil

    for name in ("batch.ipynb", "science.ipynb"):
        shutil.copy(NOTEBOOKS / name, tmp_path / name)
    nb = nbformat.read(tmp_path / "batch.ipynb", as_version=4)
    nbclient.NotebookClient(
        nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    text = "\n".join(
        o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs
    )
    assert " succeeded batch job " in text, text
    assert "moving mean matches xarray rolling: True" in text, text
    assert "heat conserved inside the plate" in text, text
    executed = sorted(tmp_path.glob("science.*.ipynb"))
    assert len(executed) == 1, executed
