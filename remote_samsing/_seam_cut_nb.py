"""Numba kernel of the seam recut: the minimum-error boundary cut.

Only numpy and numba are imported here; :mod:`remote_samsing.merge._recut`
validates inputs, builds the cost array and allocates ``out``. The cut is
the dynamic programme of image quilting (Efros & Freeman 2001, "Image
Quilting for Texture Synthesis and Transfer",
https://people.eecs.berkeley.edu/~efros/research/quilting/quilting.pdf),
with both ends of the path pinned to the seam so that neighbouring cuts
meet the untouched corners where the tiling put them.
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["min_cut_path"]


@njit(cache=True, nogil=True)
def min_cut_path(cost, start, out):
    """Write into ``out[y]`` the cut column of each row of ``cost`` (rows, cols).

    The path starts and ends at column ``start`` and moves at most one column
    between rows; it minimises the summed cost. Ties keep the column of the
    row below, then the one nearer ``start``, so the result is deterministic.
    """
    rows, cols = cost.shape
    acc = np.full((rows, cols), np.inf)
    back = np.zeros((rows, cols), np.int64)
    acc[0, start] = cost[0, start]
    for y in range(1, rows):
        for c in range(cols):
            best = np.inf
            arg = c
            # candidates in tie-break order: straight, toward start, away from it
            toward = c - 1 if c > start else c + 1
            away = c + 1 if c > start else c - 1
            for k in (c, toward, away):
                if 0 <= k < cols and acc[y - 1, k] < best:
                    best = acc[y - 1, k]
                    arg = k
            acc[y, c] = best + cost[y, c]
            back[y, c] = arg
    c = start
    for y in range(rows - 1, -1, -1):
        out[y] = c
        c = back[y, c]
