"""Numba kernels for ML and scientific hot loops, on NumPy, Dask and xarray inputs.

Every kernel is a small compiled loop plus a validating wrapper that allocates in NumPy, applies
the thread budget (:mod:`ctrlstack.ops._runtime`) and dispatches Dask arrays to blockwise or tree
reductions and xarray objects to ``apply_ufunc``.  :func:`warm` precompiles the kernels into
Numba's on-disk cache (shared by the workers of a cluster).  See ``docs/ops.md`` for semantics, tolerances
and measured speed against the references.
"""

from __future__ import annotations

from ._warm import warm
from .clustering import KMeansResult, assign, kmeans, kmeans_predict
from .distances import METRICS, knn, pairwise_distances
from .grouped import group_count, group_max, group_mean, group_min, group_sum, group_var
from .histograms import histogram, histogram2d
from .linear import ACTIVATIONS, logistic_loss_grad, mlp_forward
from .moving import (
    moving_max,
    moving_mean,
    moving_min,
    moving_std,
    moving_sum,
    moving_var,
)
from .stencils import heat_diffusion, jacobi_step

__all__ = [
    "ACTIVATIONS",
    "METRICS",
    "KMeansResult",
    "assign",
    "group_count",
    "group_max",
    "group_mean",
    "group_min",
    "group_sum",
    "group_var",
    "heat_diffusion",
    "histogram",
    "histogram2d",
    "jacobi_step",
    "kmeans",
    "kmeans_predict",
    "knn",
    "logistic_loss_grad",
    "mlp_forward",
    "moving_max",
    "moving_mean",
    "moving_min",
    "moving_std",
    "moving_sum",
    "moving_var",
    "pairwise_distances",
    "warm",
]
