"""Pairwise distances and brute-force kNN against SciPy / scikit-learn.

Tolerances (absolute; data in [0, 1), d <= 16; the float32 bound comes from the
``|x|^2 - 2 x.y + |y|^2`` form, whose error scales with ``|x|^2 + |y|^2``):

| kernel                  | reference                                   | float64 | float32 |
|-------------------------|---------------------------------------------|---------|---------|
| pairwise euclidean      | scipy cdist                                 | 1e-12   | 1e-5    |
| pairwise sqeuclidean    | scipy cdist                                 | 1e-12   | 1e-5    |
| pairwise cosine         | sklearn pairwise_distances (zero rows: 1.0) | 1e-12   | 1e-6    |
| rows with NaN / inf     | scipy cdist (computed directly)             | equal   | equal   |
| knn distances           | NearestNeighbors(algorithm="brute")         | 1e-12   | 1e-5    |
| knn indices             | same (no ties in random data)               | equal   | equal   |
"""

from __future__ import annotations

from typing import Any, cast

import numpy as np
import pytest

from ctrlstack.ops.distances import METRICS, knn, pairwise_distances

cdist = pytest.importorskip("scipy.spatial.distance").cdist
sk_metrics = pytest.importorskip("sklearn.metrics")
sk_neighbors = pytest.importorskip("sklearn.neighbors")

ATOL: dict[Any, float] = {np.float64: 1e-12, np.float32: 1e-5}


def data(m: int, n: int, d: int, dtype: Any = np.float64, seed: int = 0) -> tuple:
    rng = np.random.default_rng(seed)
    return rng.random((m, d)).astype(dtype), rng.random((n, d)).astype(dtype)


def reference(X: np.ndarray, Y: np.ndarray, metric: str) -> np.ndarray:
    X64, Y64 = X.astype(np.float64), Y.astype(np.float64)
    if metric == "cosine":
        return sk_metrics.pairwise_distances(X64, Y64, metric="cosine")
    return cdist(X64, Y64, metric=metric)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("metric", METRICS)
def test_pairwise_matches_reference(dtype: Any, metric: str) -> None:
    X, Y = data(300, 257, 13, dtype)
    D = pairwise_distances(X, Y, metric=metric, threads=2)
    assert D.dtype == dtype
    assert D.shape == (300, 257)
    np.testing.assert_allclose(D, reference(X, Y, metric), atol=ATOL[dtype], rtol=0)
    same = pairwise_distances(X, metric=metric)
    np.testing.assert_allclose(same, reference(X, X, metric), atol=ATOL[dtype], rtol=0)
    np.testing.assert_array_equal(np.diag(same), 0.0)


def test_out_buffer_layouts_and_int_input() -> None:
    X, Y = data(70, 40, 5)
    out = np.full((70, 40), -1.0)
    assert pairwise_distances(X, Y, out=out) is out
    np.testing.assert_allclose(out, cdist(X, Y), atol=1e-12)
    np.testing.assert_allclose(
        pairwise_distances(np.asfortranarray(X), Y[::-1]), cdist(X, Y[::-1]), atol=1e-12
    )
    wide = np.zeros((70, 10))
    wide[:, ::2] = X
    np.testing.assert_allclose(pairwise_distances(wide[:, ::2], Y), cdist(X, Y), atol=1e-12)
    Xi = np.arange(12).reshape(6, 2)
    Di = pairwise_distances(Xi, metric="sqeuclidean")
    assert Di.dtype == np.float64
    np.testing.assert_array_equal(Di, cdist(Xi, Xi, "sqeuclidean"))
    # mixed float32/float64 computes in float64
    assert pairwise_distances(X.astype(np.float32), Y).dtype == np.float64


@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean"])
def test_nan_and_inf_rows_follow_cdist(metric: str) -> None:
    X, Y = data(6, 5, 3)
    X[1, 0] = np.nan
    X[2, 2] = np.inf
    Y[3, 1] = -np.inf
    with np.errstate(invalid="ignore"):
        expected = cdist(X, Y, metric)
    D = pairwise_distances(X, Y, metric=metric)
    np.testing.assert_allclose(D, expected, atol=1e-12)
    assert np.isnan(D[1]).all()
    assert np.isposinf(D[2, 0])
    assert np.isposinf(D[2, 3])


def test_cosine_zero_vector_is_at_distance_one() -> None:
    X = np.array([[0.0, 0.0], [1.0, 0.0]])
    D = pairwise_distances(X, np.array([[0.0, 2.0], [0.0, 0.0]]), metric="cosine")
    np.testing.assert_allclose(D, [[1.0, 1.0], [1.0, 1.0]])


def test_empty_and_length_one() -> None:
    assert pairwise_distances(np.zeros((0, 3)), np.ones((4, 3))).shape == (0, 4)
    assert pairwise_distances(np.ones((2, 3)), np.zeros((0, 3))).shape == (2, 0)
    np.testing.assert_allclose(pairwise_distances([[3.0, 4.0]], [[0.0, 0.0]]), [[5.0]])


@pytest.mark.parametrize(
    ("call", "exc", "match"),
    [
        (lambda: pairwise_distances(np.ones((2, 3)), np.ones((2, 4))), ValueError, "columns"),
        (lambda: pairwise_distances(np.ones(3)), ValueError, "X must be 2-D"),
        (lambda: pairwise_distances(np.ones((2, 2)), metric="manhattan"), ValueError, "metric"),
        (lambda: pairwise_distances(np.ones((2, 2), bool)), TypeError, "X must hold"),
        (lambda: pairwise_distances(np.ones((2, 2)), out=np.empty((2, 3))), ValueError, "out"),
        (
            lambda: pairwise_distances(np.ones((2, 2)), out=np.empty((2, 2), np.float32)),
            TypeError,
            "out must have dtype float64",
        ),
        (
            lambda: pairwise_distances(np.ones((2, 2)), out=np.empty((2, 2), order="F")[:, :2]),
            ValueError,
            "out must be C-contiguous",
        ),
        (lambda: pairwise_distances(np.ones((2, 2)), out=cast(Any, [[0, 0]])), TypeError, "out"),
        (lambda: knn(np.ones((3, 2))), TypeError, "needs k"),
        (lambda: knn(np.ones((3, 2)), k=3), ValueError, "k must be <="),
        (lambda: knn(np.ones((3, 2)), np.ones((2, 2)), 3), ValueError, "k must be <="),
        (lambda: knn(np.ones((3, 2)), k=0), ValueError, "k must be >= 1"),
        (lambda: knn(np.ones((3, 2)), k=1, metric="l1"), ValueError, "metric"),
    ],
)
def test_errors_name_the_argument(call: object, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        call()  # type: ignore[operator]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("metric", METRICS)
def test_knn_matches_sklearn_brute(dtype: Any, metric: str) -> None:
    X, Y = data(211, 390, 9, dtype, seed=2)
    d, i = knn(X, Y, 7, metric=metric, threads=2)
    nn = sk_neighbors.NearestNeighbors(n_neighbors=7, algorithm="brute", metric=metric)
    rd, ri = nn.fit(Y.astype(np.float64)).kneighbors(X.astype(np.float64))
    assert d.dtype == dtype
    assert i.shape == (211, 7)
    np.testing.assert_array_equal(i, ri)
    np.testing.assert_allclose(d, rd, atol=ATOL[dtype])


def test_knn_self_excludes_the_point_like_sklearn() -> None:
    X, _ = data(150, 1, 4, seed=3)
    d, i = knn(X, k=4)
    rd, ri = sk_neighbors.NearestNeighbors(n_neighbors=4, algorithm="brute").fit(X).kneighbors()
    np.testing.assert_array_equal(i, ri)
    np.testing.assert_allclose(d, rd, atol=1e-12)
    assert not (i == np.arange(150)[:, None]).any()


def test_knn_ties_are_ordered_by_index_and_nan_ranks_last() -> None:
    Y = np.array([[1.0], [-1.0], [1.0], [np.nan], [-1.0], [0.5]])
    d, i = knn(np.array([[0.0]]), Y, 6)
    assert i.tolist() == [[5, 0, 1, 2, 4, 3]]
    np.testing.assert_array_equal(d[0, :5], [0.5, 1, 1, 1, 1])
    assert np.isnan(d[0, 5])


def test_knn_layouts_and_int_input() -> None:
    X, Y = data(40, 60, 3, seed=4)
    base = knn(X, Y, 3)
    for other in (knn(np.asfortranarray(X), Y, 3), knn(X, np.asfortranarray(Y), 3)):
        np.testing.assert_array_equal(other[1], base[1])
    di, _ii = knn(np.arange(10).reshape(5, 2), k=1)
    assert di.dtype == np.float64
    np.testing.assert_allclose(di[:, 0], np.sqrt(8.0))
    assert knn(np.zeros((0, 2)), np.ones((3, 2)), 2)[1].shape == (0, 2)


def test_dask_is_lazy_and_matches_numpy() -> None:
    da = pytest.importorskip("dask.array")
    X, Y = data(500, 80, 6, seed=5)
    Xd = da.from_array(X, chunks=(120, 3))
    D = pairwise_distances(Xd, Y, metric="cosine")
    assert isinstance(D, da.Array)
    np.testing.assert_allclose(D.compute(), pairwise_distances(X, Y, metric="cosine"), atol=1e-14)
    d, i = knn(Xd, Y, 4)
    assert isinstance(d, da.Array)
    assert isinstance(i, da.Array)
    ed, ei = knn(X, Y, 4)
    np.testing.assert_array_equal(i.compute(), ei)
    np.testing.assert_allclose(d.compute(), ed, atol=1e-14)
    with pytest.raises(ValueError, match="pass Y explicitly"):
        pairwise_distances(Xd)
    with pytest.raises(TypeError, match="in-memory"):
        knn(Xd, da.from_array(Y), 2)


def test_knn_across_several_y_tiles() -> None:
    # d=300 makes Y^T tiles of 256 columns, so 700 candidates span three tiles
    rng = np.random.default_rng(6)
    X = rng.random((40, 300))
    Y = rng.random((700, 300))
    Y[600] = Y[100]  # an exact tie in different tiles: the lower index must come first
    X[0] = Y[100]
    d, i = knn(X, Y, 5)
    rd, ri = sk_neighbors.NearestNeighbors(n_neighbors=5, algorithm="brute").fit(Y).kneighbors(X)
    # d=300 puts |x|^2 near 100: both sides use the |x|^2 - 2x.y + |y|^2 form, whose error
    # (~1e-13 here) is in the *squared* distance; an exact duplicate comes out as 0 or as
    # sqrt(1e-13) ~ 3e-7 depending on the BLAS's summation order, so compare squares.
    np.testing.assert_allclose(d**2, rd**2, atol=1e-10)
    np.testing.assert_array_equal(i[1:], ri[1:])
    assert i[0, :2].tolist() == [100, 600]
    self_d, self_i = knn(Y, k=3, metric="cosine")
    nn = sk_neighbors.NearestNeighbors(n_neighbors=3, algorithm="brute", metric="cosine")
    ref_d, _ = nn.fit(Y).kneighbors()
    np.testing.assert_allclose(self_d, ref_d, atol=1e-10)
    assert not (self_i == np.arange(700)[:, None]).any()
    assert self_i[100, 0] == 600
    assert self_i[600, 0] == 100


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_below_mask_and_lowest_bit_match_numpy(dtype: Any) -> None:
    import numba

    from ctrlstack.ops._simd import MASK_WIDTH, below_mask, lowest_bit

    @numba.njit
    def set_bits(row: np.ndarray, off: int, bound: float) -> np.ndarray:
        m = below_mask(row, off, bound)
        out = np.zeros(MASK_WIDTH, dtype=np.bool_)
        while m != 0:
            out[lowest_bit(m)] = True
            m &= m - 1
        return out

    rng = np.random.default_rng(11)
    row = rng.integers(0, 8, size=3 * MASK_WIDTH).astype(dtype)
    row[5] = np.nan  # NaN is never below
    for off, bound in ((0, 3.0), (MASK_WIDTH + 7, 0.5), (2 * MASK_WIDTH, 100.0), (1, -1.0)):
        expected = row[off : off + MASK_WIDTH] < bound
        np.testing.assert_array_equal(set_bits(row, off, bound), expected)
    # float32 values against a float64 bound between two float32 neighbours: compared exactly
    f32 = np.full(MASK_WIDTH, 1.0, dtype=np.float32)
    if dtype == np.float32:
        assert set_bits(f32, 0, 1.0 + 1e-12).all()
        assert not set_bits(f32, 0, 1.0).any()


def test_knn_with_many_hits_per_screen_block() -> None:
    # Keys falling steadily down the row make every candidate a hit of its screen block:
    # each one must be inserted, in index order, whatever the block boundaries.
    n = 5 * 64 + 13
    Y = np.linspace(10.0, 0.0, n)[:, None]
    X = np.zeros((3, 1))
    d, i = knn(X, Y, 9)
    assert i[0].tolist() == list(range(n - 1, n - 10, -1))
    np.testing.assert_allclose(d[0], Y[n - 1 : n - 10 : -1, 0])
    Y32 = Y.astype(np.float32)
    d32, i32 = knn(X.astype(np.float32), Y32, 9)
    assert i32[0].tolist() == i[0].tolist()
    np.testing.assert_allclose(d32[0], Y32[n - 1 : n - 10 : -1, 0])


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_knn_register_blocked_and_blas_paths_agree(
    metric: str, dtype: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Finite rows take the register-blocked search; the BLAS path (long or non-finite rows)
    must find the same neighbours, with the same tie order, padding never leaking in."""
    from ctrlstack.ops import distances

    calls: list[str] = []
    real = distances._knn_fused

    def spy(*args: Any) -> None:
        calls.append("fused")
        real(*args)

    monkeypatch.setattr(distances, "_knn_fused", spy)
    rng = np.random.default_rng(12)
    # 7 queries and 37 candidates: neither a multiple of the block's rows nor of its columns
    X = rng.integers(0, 3, size=(7, 5)).astype(dtype)  # small integers: many exact ties
    Y = rng.integers(0, 3, size=(37, 5)).astype(dtype)
    fused = knn(X, Y, 37, metric=metric)
    self_fused = knn(Y, k=36, metric=metric)
    assert calls == ["fused", "fused"]
    monkeypatch.setattr(distances, "_FUSED_MAX_DEPTH", 0)
    blas = knn(X, Y, 37, metric=metric)
    self_blas = knn(Y, k=36, metric=metric)
    assert calls == ["fused", "fused"]
    for got, want in ((fused, blas), (self_fused, self_blas)):
        np.testing.assert_array_equal(got[1], want[1])
        np.testing.assert_allclose(got[0], want[0], atol=ATOL[dtype])
    # every candidate exactly once per row: no padding column, no repeat
    assert (np.sort(fused[1], axis=1) == np.arange(37)).all()
    assert (
        np.sort(self_fused[1], axis=1)
        == np.sort(np.array([[j for j in range(37) if j != i] for i in range(37)]), axis=1)
    ).all()
    # equal distances in increasing index order
    d, i = fused
    tie = (np.diff(d, axis=1) == 0) & (np.diff(i, axis=1) < 0)
    assert not tie.any()


def test_knn_non_finite_rows_take_the_blas_path(monkeypatch: pytest.MonkeyPatch) -> None:
    from ctrlstack.ops import distances

    monkeypatch.setattr(distances, "_knn_fused", None)  # calling it would raise TypeError
    X, Y = data(20, 50, 4, seed=13)
    Y[7, 2] = np.inf
    d, i = knn(X, Y, 50)
    assert (i[:, -1] == 7).all()
    assert np.isinf(d[:, -1]).all()


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_dot_block_below_matches_numpy(dtype: Any) -> None:
    import numba

    from ctrlstack.ops._simd import DOT_ROWS, dot_block_below, dot_block_cols

    rows, cols, depth = DOT_ROWS, dot_block_cols(np.dtype(dtype).itemsize), 13

    @numba.njit
    def block(xp: Any, yp: Any, bound: Any, out: Any, masks: Any) -> int:
        # the second group of each operand: offsets are honoured
        return dot_block_below(xp, depth * rows, yp, depth * cols, depth, bound, 1, out, masks)

    rng = np.random.default_rng(14)
    X = rng.random((2 * rows, depth)).astype(dtype)
    Y = rng.random((2 * cols, depth)).astype(dtype)
    xp = np.ascontiguousarray(X.reshape(2, rows, depth).transpose(0, 2, 1)).ravel()
    yp = np.ascontiguousarray(Y.reshape(2, cols, depth).transpose(0, 2, 1)).ravel()
    want = X[rows:].astype(np.float64) @ Y[cols:].T.astype(np.float64)
    bound = np.concatenate([[np.nan], np.median(want, axis=1)])  # read from offset 1
    out = np.empty(rows * cols, dtype=dtype)
    masks = np.empty(rows, dtype=np.int64)
    total = block(xp, yp, bound, out, masks)
    got = out.reshape(rows, cols)
    np.testing.assert_allclose(got, want, rtol=1e-6 if dtype == np.float32 else 1e-14)
    below = got.astype(np.float64) < bound[1:, None]
    bits = [int(sum(1 << c for c in range(cols) if below[r, c])) for r in range(rows)]
    assert [int(m) & (2**64 - 1) for m in masks] == bits
    assert int(total) & (2**64 - 1) == np.bitwise_or.reduce(bits)


def test_block_width_follows_the_features_numba_targets(monkeypatch: pytest.MonkeyPatch) -> None:
    from numba.core import config

    from ctrlstack.ops import _simd

    monkeypatch.setattr(config, "CPU_FEATURES", "+avx2,+fma,-avx512f", raising=False)
    assert _simd._vector_bytes() == 32
    monkeypatch.setattr(config, "CPU_FEATURES", "+avx2,+fma,+avx512f", raising=False)
    assert _simd._vector_bytes() == 64
    assert _simd.dot_block_cols(8) == 2 * _simd.VECTOR_BYTES // 8


def test_pairwise_out_may_overlap_its_inputs_and_must_be_writeable() -> None:
    X, Y = data(300, 300, 300, seed=15)  # square: out can be X or Y itself
    want_xx = pairwise_distances(X)
    want_xy = pairwise_distances(X, Y)
    Xc, Yc = X.copy(), Y.copy()
    assert pairwise_distances(Xc, out=Xc) is Xc
    np.testing.assert_allclose(Xc, want_xx, atol=1e-12)
    assert pairwise_distances(X, Yc, out=Yc) is Yc
    np.testing.assert_allclose(Yc, want_xy, atol=1e-12)
    frozen = np.empty((300, 300))
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match="out must be writeable"):
        pairwise_distances(X, out=frozen)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_transpose_block_matches_numpy(dtype: Any) -> None:
    import numba

    from ctrlstack.ops._simd import transpose_block, transpose_width

    t = transpose_width(np.dtype(dtype).itemsize)

    @numba.njit
    def block(src: Any, dst: Any) -> None:
        transpose_block(src, 3, 5, dst, 7, 2)

    src = np.arange(40 * 50, dtype=dtype).reshape(40, 50)
    dst = np.zeros((60, 70), dtype=dtype)
    block(src, dst)
    want = np.zeros_like(dst)
    want[7 : 7 + t, 2 : 2 + t] = src[3 : 3 + t, 5 : 5 + t].T
    np.testing.assert_array_equal(dst, want)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_pairwise_self_over_many_tiles_is_exactly_symmetric(dtype: Any) -> None:
    # 1001 rows: several output tiles, ragged against both the tile and the transpose block
    X = np.random.default_rng(17).random((1001, 7)).astype(dtype)
    D = pairwise_distances(X, threads=2)
    np.testing.assert_array_equal(D, D.T)
    assert (np.diag(D) == 0).all()
    ref = cdist(X.astype(np.float64), X.astype(np.float64))
    np.testing.assert_allclose(D, ref, atol=ATOL[dtype])
