"""``ctrlstack.ops._aligned``: kernel scratch and partials start on cache lines."""

from __future__ import annotations

import numpy as np
import pytest

from ctrlstack.ops import _aligned


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.int64])
@pytest.mark.parametrize("shape", [1, 7, (3, 5), (2, 3, 512)])
def test_empty_starts_on_a_line_with_the_asked_shape(shape: object, dtype: type) -> None:
    for _ in range(8):  # malloc would give 16-byte alignment most of these times
        a = _aligned.empty(shape, dtype)  # type: ignore[arg-type]
        assert a.ctypes.data % _aligned.LINE == 0
        assert a.shape == ((shape,) if isinstance(shape, int) else shape)
        assert a.dtype == np.dtype(dtype)
        assert a.flags.c_contiguous
        assert a.flags.writeable


@pytest.mark.parametrize(
    ("width", "dtype"), [(1, np.float64), (16, np.float64), (33, np.int64), (5, np.float32)]
)
def test_line_rows_gives_every_row_its_own_lines(width: int, dtype: type) -> None:
    rows = _aligned.line_rows(3, width, dtype)
    assert rows.flags.c_contiguous
    assert rows.shape[0] == 3
    assert rows.shape[1] >= width
    assert (rows.shape[1] * rows.itemsize) % _aligned.LINE == 0
    for r in range(3):
        assert rows[r].ctypes.data % _aligned.LINE == 0
    assert not rows.any()


def test_logistic_gradient_does_not_depend_on_where_the_partials_land() -> None:
    """The partials' padding columns must not leak into the gradient (they stay zero)."""
    from ctrlstack.ops import logistic_loss_grad

    rng = np.random.default_rng(3)
    X = rng.standard_normal((5000, 7))
    y = (rng.random(5000) < 0.5).astype(np.float64)
    w = rng.standard_normal(7) * 0.3
    z = X @ w
    p = 1.0 / (1.0 + np.exp(-z))
    want = X.T @ (p - y) / len(y)
    for threads in (1, 2):
        loss, grad = logistic_loss_grad(w, X, y, threads=threads)
        assert grad.shape == (7,)
        np.testing.assert_allclose(grad, want, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(loss, np.mean(np.logaddexp(0.0, z) - y * z), rtol=1e-12)
