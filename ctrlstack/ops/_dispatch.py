"""Input dispatch shared by the kernel families: which kind of array came in, and labels back.

Every public op takes NumPy arrays, dask arrays and xarray ``DataArray`` objects.  The kernels
only ever see NumPy; this module recognises the other two and, for the row-oriented ML families
(clustering, distances, linear models), takes a ``(sample, feature)`` DataArray apart into its
row-major data and its labels and puts the labels back on the result, so those families handle
xarray the same way (the scientific families lift a 1-D loop along ``dim=`` with
``xarray.apply_ufunc`` in their own modules).  Dask and xarray are imported only when such an
input arrives.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ctrlstack.ops._runtime import is_dask, is_xarray

__all__ = ["Rows", "is_dask", "is_xarray", "labelled", "unpack_rows", "values_of"]


@dataclass(frozen=True)
class Rows:
    """A 2-D DataArray taken apart: ``data`` is (sample, feature), NumPy or dask."""

    data: Any
    sample: str
    feature: str
    sample_coords: dict[str, Any]
    feature_coords: dict[str, Any]


def unpack_rows(X: Any, name: str, feature_dim: str | None = None) -> Rows:
    """Split a 2-D DataArray into row-major data and labels; ``feature_dim`` defaults to the last.

    Raises ValueError for other dimensionalities or an unknown ``feature_dim`` (naming ``name``).
    """
    if X.ndim != 2:
        raise ValueError(f"{name} must be a 2-D DataArray (sample, feature), got dims {X.dims}")
    feature = X.dims[-1] if feature_dim is None else feature_dim
    if feature not in X.dims:
        raise ValueError(f"feature_dim={feature!r} is not a dimension of {name} {X.dims}")
    sample = next(d for d in X.dims if d != feature)
    Xt = X.transpose(sample, feature)
    return Rows(
        data=Xt.data,
        sample=str(sample),
        feature=str(feature),
        sample_coords=_coords_on(Xt, sample),
        feature_coords=_coords_on(Xt, feature),
    )


def _coords_on(X: Any, dim: Any) -> dict[str, Any]:
    """Coordinates of ``X`` that live on ``dim`` only (they can follow that dim to a result)."""
    return {str(k): v.variable for k, v in X.coords.items() if v.dims == (dim,)}


def labelled(data: Any, dims: tuple[str, ...], *coords: dict[str, Any]) -> Any:
    """A DataArray over ``dims`` carrying the given coordinate maps (dask data stays lazy)."""
    import xarray as xr

    merged: dict[str, Any] = {}
    for c in coords:
        merged.update(c)
    return xr.DataArray(data, dims=dims, coords=merged)


def values_of(x: Any) -> Any:
    """The data of a DataArray (NumPy or dask), anything else unchanged."""
    return x.data if is_xarray(x) else x
