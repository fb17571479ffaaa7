"""Numba kernels for ML and scientific hot loops (NumPy, Dask and xarray inputs).

Each family lives in its own module; see ``docs/ops.md`` for the list, semantics and tolerances.
"""

from __future__ import annotations
