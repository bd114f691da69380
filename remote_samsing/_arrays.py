"""Array helpers for label and id arrays.

numpy >= 2.3 computes a plain ``np.unique(x)`` of integers with a hash table,
which on high-cardinality id arrays is 25-60x slower than sorting on a
2-core machine (numpy/numpy#28375, numpy/numpy#31970). Label and id arrays
here have many distinct values, so they go through :func:`unique`, which
sorts. Its results equal ``np.unique``'s (sorted values, inverse, counts).
"""

from __future__ import annotations

import numpy as np

__all__ = ["unique", "unique_pairs"]


def unique(values, *, return_inverse: bool = False, return_counts: bool = False):
    """Sorted distinct values of ``values`` (flattened), by sorting; like ``np.unique``.

    Parameters
    ----------
    values : array_like
    return_inverse : bool
        Also return indices into the distinct values that rebuild ``values``
        (with ``values``' shape).
    return_counts : bool
        Also return how often each distinct value occurs.

    Returns
    -------
    ndarray or tuple of ndarray
        As ``np.unique(values, return_inverse=..., return_counts=...)``.

    Examples
    --------
    >>> unique(np.array([[3, 1], [3, 0]]), return_inverse=True)
    (array([0, 1, 3]), array([[2, 1],
           [2, 0]]))
    """
    values = np.asarray(values)
    flat = values.ravel()
    if return_inverse:
        order = np.argsort(flat, kind="stable")
        ordered = flat[order]
    else:
        ordered = np.sort(flat)
    first = _firsts(ordered)
    out = [ordered[first]]
    if return_inverse:
        inverse = np.empty(flat.size, np.intp)
        inverse[order] = np.cumsum(first) - 1
        out.append(inverse.reshape(values.shape))
    if return_counts:
        out.append(_counts(first))
    return out[0] if len(out) == 1 else tuple(out)


def unique_pairs(a: np.ndarray, b: np.ndarray):
    """Distinct ``(a[i], b[i])`` pairs sorted by ``a`` then ``b``, and their counts.

    Returns
    -------
    a_u, b_u : ndarray
        The pairs' components.
    counts : ndarray of int64
    """
    a, b = np.asarray(a), np.asarray(b)
    if a.size == 0:
        return a[:0], b[:0], np.empty(0, np.int64)
    if _fits_32_bits(a) and _fits_32_bits(b):
        # one 64-bit key per pair: a plain sort, about 3x faster than lexsort on two arrays
        keys = np.sort((a.astype(np.uint64) << np.uint64(32)) | b.astype(np.uint64))
        first = _firsts(keys)
        u = keys[first]
        return (u >> np.uint64(32)).astype(a.dtype), (u & np.uint64(0xFFFFFFFF)).astype(b.dtype), _counts(first)
    order = np.lexsort((b, a))
    a, b = a[order], b[order]
    new = np.ones(a.size, bool)
    new[1:] = (a[1:] != a[:-1]) | (b[1:] != b[:-1])
    return a[new], b[new], _counts(new)


def _firsts(ordered: np.ndarray) -> np.ndarray:
    """True where a sorted array starts a run of equal values."""
    first = np.empty(ordered.size, bool)
    first[:1] = True
    np.not_equal(ordered[1:], ordered[:-1], out=first[1:])
    return first


def _counts(first: np.ndarray) -> np.ndarray:
    """Length of each run, from the run starts of a sorted array."""
    return np.diff(np.append(np.flatnonzero(first), first.size)).astype(np.int64)


def _fits_32_bits(x: np.ndarray) -> bool:
    """Non-negative integers below 2**32 (bools and floats excluded)."""
    if x.dtype.kind not in "iu":
        return False
    if x.dtype.itemsize <= 4 and x.dtype.kind == "u":
        return True
    return bool(x.min() >= 0 and x.max() < 2**32)
