"""Numba kernel that interleaves band-sequential RGB into the pipeline's (y, x, 4) RGBA blocks.

Only numpy and numba are imported here; :func:`remote_samsing.io._to_rgba_block`
chooses the bands and allocates ``out``. Each pixel is written as one 32-bit
word: numpy's strided copy of a moved axis byte by byte is most of a light
block's read.
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["pack_rgba"]


@njit(cache=True, nogil=True)
def pack_rgba(r, g, b, valid, shifts, out):
    """Write ``(r, g, b, valid)`` of every pixel into ``out`` (y, x) uint32, a view of (y, x, 4) bytes.

    ``shifts`` gives each byte's bit offset in the word (the machine's byte
    order); an invalid pixel is all zeros (black, validity 0).
    """
    ny, nx = r.shape
    sr, sg, sb, sa = np.uint32(shifts[0]), np.uint32(shifts[1]), np.uint32(shifts[2]), np.uint32(shifts[3])
    one = np.uint32(1) << sa
    for y in range(ny):
        for x in range(nx):
            if valid[y, x]:
                out[y, x] = ((np.uint32(r[y, x]) << sr) | (np.uint32(g[y, x]) << sg)
                             | (np.uint32(b[y, x]) << sb) | one)
            else:
                out[y, x] = 0
