"""unique and unique_pairs sort where np.unique hashes; their results equal np.unique's."""

import numpy as np
import pytest

from remote_samsing._arrays import unique, unique_pairs

rng = np.random.default_rng(0)
ARRAYS = {
    "empty": np.empty(0, np.uint32),
    "bool": rng.random(50) > 0.5,
    "uint8": rng.integers(0, 256, 300).astype(np.uint8),
    "uint32-2d": rng.integers(0, 40, (17, 23)).astype(np.uint32),
    "uint64": rng.integers(0, 2**63, 200, dtype=np.uint64) * np.uint64(2),  # beyond int64
    "int64": rng.integers(-1000, 1000, (9, 11)),
    "ids": rng.integers(0, 2**31, 20_000).astype(np.uint32),  # high cardinality
}


@pytest.mark.parametrize("values", ARRAYS.values(), ids=ARRAYS.keys())
@pytest.mark.parametrize("inverse,counts", [(False, False), (True, False), (False, True), (True, True)])
def test_unique_equals_np_unique(values, inverse, counts):
    got = unique(values, return_inverse=inverse, return_counts=counts)
    expected = np.unique(values, return_inverse=inverse, return_counts=counts)
    if not (inverse or counts):
        got, expected = (got,), (expected,)
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g.dtype == e.dtype
        np.testing.assert_array_equal(g, e, strict=True)
    if inverse:
        assert got[1].shape == values.shape
        np.testing.assert_array_equal(got[0][got[1]], values)


def test_unique_tiny_example():
    values, inverse = unique(np.array([[3, 1], [3, 0]]), return_inverse=True)
    np.testing.assert_array_equal(values, [0, 1, 3])
    np.testing.assert_array_equal(inverse, [[2, 1], [2, 0]])


@pytest.mark.parametrize("n,high", [(0, 5), (1, 5), (1000, 5), (5000, 10**9)])
def test_unique_pairs_equals_np_unique_of_stacked_pairs(n, high):
    r = np.random.default_rng(n)
    a = r.integers(0, high, n).astype(np.uint32)
    b = r.integers(0, high, n).astype(np.uint32)
    a_u, b_u, counts = unique_pairs(a, b)
    pairs, expected_counts = np.unique(np.stack([a, b]), axis=1, return_counts=True)
    np.testing.assert_array_equal(a_u, pairs[0], strict=True)
    np.testing.assert_array_equal(b_u, pairs[1], strict=True)
    np.testing.assert_array_equal(counts, expected_counts, strict=True)
    assert counts.dtype == np.int64 and counts.sum() == n
