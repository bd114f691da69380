"""Numba kernel of the multi-pass mask acceptance (imports numpy and numba only).

One call handles one mask inside its bounding box: 4-connected component
labelling (two-pass union-find, components numbered in raster order of their
first pixel, like ``scipy.ndimage.label``), per-component area and
already-labelled counts, the min-area / overlap decision, and the first-come
label write. See :func:`remote_samsing.multipass.accept_masks` for the rules.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def _find(parent, i):
    root = i
    while parent[root] != root:
        root = parent[root]
    while parent[i] != root:  # path compression
        nxt = parent[i]
        parent[i] = root
        i = nxt
    return root


@njit(cache=True)
def _provisional_labels(seg, valid, y0, y1, x0, x1):
    """Pass 1 of the labelling: provisional labels of ``seg & valid`` in the box and their union-find parents.

    The root of a set is always its smallest label.
    """
    h = y1 - y0
    w = x1 - x0
    prov = np.zeros((h, w), np.int32)
    parent = np.empty(h * w // 2 + 2, np.int32)
    parent[0] = 0
    n_prov = 0
    for y in range(h):
        for x in range(w):
            if not (seg[y0 + y, x0 + x] and valid[y0 + y, x0 + x]):
                continue
            up = prov[y - 1, x] if y > 0 else 0
            left = prov[y, x - 1] if x > 0 else 0
            if up == 0 and left == 0:
                n_prov += 1
                parent[n_prov] = n_prov
                prov[y, x] = n_prov
            elif up == 0:
                prov[y, x] = left
            elif left == 0 or left == up:
                prov[y, x] = up
            else:
                a = _find(parent, up)
                b = _find(parent, left)
                if a < b:
                    parent[b] = a
                    prov[y, x] = a
                elif b < a:
                    parent[a] = b
                    prov[y, x] = b
                else:
                    prov[y, x] = a
    return prov, parent, n_prov


@njit(cache=True)
def _compact_ids(parent, n_prov):
    """Map provisional labels to compact component ids 1..n, in raster order of their first pixel."""
    comp_of = np.zeros(n_prov + 1, np.int32)
    n = 0
    for i in range(1, n_prov + 1):
        r = _find(parent, i)
        if r == i:
            n += 1
            comp_of[i] = n
    for i in range(1, n_prov + 1):
        comp_of[i] = comp_of[_find(parent, i)]
    return comp_of, n


@njit(cache=True)
def accept_mask_box(seg, valid, labels, y0, y1, x0, x1, next_label, min_area, overlap_reject, out):
    """Accept the components of ``seg & valid`` inside ``[y0:y1, x0:x1]``.

    Parameters
    ----------
    seg, valid : 2-D bool arrays (full window)
    labels : 2-D uint32 array (full window), updated in place
    y0, y1, x0, x1 : int
        Exclusive bounding box of the mask.
    next_label : int
        First label to give.
    min_area : int
    overlap_reject : float
        A component with ``covered >= overlap_reject * area`` is rejected.
    out : int64 array of length 4
        Receives (components, accepted, rejected_small, rejected_overlap).

    Returns
    -------
    int
        The next free label.
    """
    h = y1 - y0
    w = x1 - x0
    prov, parent, n_prov = _provisional_labels(seg, valid, y0, y1, x0, x1)
    if n_prov == 0:
        return next_label
    comp_of, n = _compact_ids(parent, n_prov)
    area = np.zeros(n + 1, np.int64)
    covered = np.zeros(n + 1, np.int64)
    for y in range(h):
        for x in range(w):
            p = prov[y, x]
            if p:
                c = comp_of[p]
                area[c] += 1
                if labels[y0 + y, x0 + x] != 0:
                    covered[c] += 1
    new_label = np.zeros(n + 1, np.int64)
    n_ok = 0
    out[0] += n
    for c in range(1, n + 1):
        if area[c] < min_area:
            out[2] += 1
        elif covered[c] >= overlap_reject * area[c]:
            out[3] += 1
        else:
            new_label[c] = next_label + n_ok
            n_ok += 1
    out[1] += n_ok
    if n_ok == 0:
        return next_label
    for y in range(h):
        for x in range(w):
            p = prov[y, x]
            if p:
                lab = new_label[comp_of[p]]
                if lab and labels[y0 + y, x0 + x] == 0:  # earlier segments keep their pixels
                    labels[y0 + y, x0 + x] = lab
    return next_label + n_ok
