"""Numba kernels of the seam merge (plain arrays in, results written into ``out``).

Only numpy and numba are imported here; :mod:`remote_samsing.merge` validates
inputs, allocates the outputs and wires the kernels into the dask graph. The
kernel-module split follows numbagg (https://github.com/numbagg/numbagg,
``numbagg/grouped.py``) and scikit-image's ``_watershed_cy``.
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = [
    "union_find",
    "union_find_mutex",
    "enclosure_pairs",
    "label_comp_pairs",
    "apply_lut",
    "part_stats",
    "part_pairs",
    "apply_parts",
    "label_runs",
    "NEIGHBOUR_BORDER",
    "NEIGHBOUR_SEAM",
]

#: Neighbour code of a pixel on the mosaic border (nothing beyond it).
NEIGHBOUR_BORDER = -1
#: Neighbour code of a pixel on a core edge shared with another block.
NEIGHBOUR_SEAM = -2


@njit(cache=True, nogil=True)
def _find(parent, i):
    # path halving: every visited node skips to its grandparent
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


@njit(cache=True, nogil=True)
def union_find(a, b, out):
    """Union the edges ``(a[k], b[k])`` of nodes ``0..n-1``; write each node's root.

    ``out`` must hold ``arange(n)`` on entry. The smaller index always becomes
    the root (callers sort nodes by id, so the smaller *label* wins, as in the
    reference). On return ``out[i]`` is the root of node ``i``.
    """
    for k in range(a.shape[0]):
        ra = _find(out, a[k])
        rb = _find(out, b[k])
        if ra < rb:
            out[rb] = ra
        elif rb < ra:
            out[ra] = rb
    for i in range(out.shape[0]):
        out[i] = _find(out, i)


@njit(cache=True, nogil=True)
def union_find_mutex(a, b, order, g_node, g_group, n_groups, out, refused):
    """Union-find with mutual exclusions: the edges in ``order``, each refused where it would join
    two clusters that hold members of one exclusion group.

    An exclusion group is a set of nodes no two of which may share a cluster
    (the mutex watershed's repulsive edges, Wolf et al. 2018,
    https://arxiv.org/abs/1805.12279, kept here as groups instead of pairs);
    ``(g_node[j], g_group[j])`` says node ``g_node[j]`` belongs to group
    ``g_group[j]`` (groups ``0..n_groups-1``). ``out`` must hold ``arange(n)``
    on entry; on return ``out[i]`` is the root of node ``i`` (the smallest
    index of its cluster) and ``refused[k]`` is True for each refused edge.
    """
    n = out.shape[0]
    m = g_node.shape[0]
    # each root's groups as a linked list of entries: head, tail, next
    head = np.full(n, -1, np.int64)
    tail = np.full(n, -1, np.int64)
    nxt = np.full(m, -1, np.int64)
    for j in range(m):
        v = g_node[j]
        if head[v] < 0:
            head[v] = j
        else:
            nxt[tail[v]] = j
        tail[v] = j
    stamp = np.zeros(n_groups, np.int64)
    tick = 0
    for k in order:
        ra = _find(out, a[k])
        rb = _find(out, b[k])
        if ra == rb:
            continue
        if head[ra] >= 0 and head[rb] >= 0:
            tick += 1
            e = head[ra]
            while e >= 0:
                stamp[g_group[e]] = tick
                e = nxt[e]
            e = head[rb]
            clash = False
            while e >= 0:
                if stamp[g_group[e]] == tick:
                    clash = True
                    break
                e = nxt[e]
            if clash:
                refused[k] = True
                continue
        lo, hi = (ra, rb) if ra < rb else (rb, ra)
        out[hi] = lo
        if head[hi] >= 0:  # the merged cluster holds both lists
            if head[lo] < 0:
                head[lo] = head[hi]
            else:
                nxt[tail[lo]] = head[hi]
            tail[lo] = tail[hi]
    for i in range(n):
        out[i] = _find(out, i)


@njit(cache=True, nogil=True)
def enclosure_pairs(labels, small, sides, out_l, out_m):
    """(label, neighbour) pairs of every 4-neighbour contact of a small label.

    Parameters
    ----------
    labels : 2-D integer array
        Compact block labels (0 = background).
    small : 1-D bool array
        ``small[l]`` marks labels whose pairs are wanted.
    sides : int64 array of 4
        What lies beyond the top, bottom, left, right edge: ``NEIGHBOUR_BORDER``
        or ``NEIGHBOUR_SEAM``.
    out_l, out_m : int64 arrays
        Receive the pairs; must hold ``4 * (pixels of small labels)`` entries.

    Returns
    -------
    int
        Number of pairs written (with repeats; callers deduplicate).
    """
    h, w = labels.shape
    n = 0
    for y in range(h):
        for x in range(w):
            lab = labels[y, x]
            if lab == 0 or not small[lab]:
                continue
            # up, down, left, right
            for k in range(4):
                if k == 0:
                    yy, xx = y - 1, x
                elif k == 1:
                    yy, xx = y + 1, x
                elif k == 2:
                    yy, xx = y, x - 1
                else:
                    yy, xx = y, x + 1
                if yy < 0 or yy >= h or xx < 0 or xx >= w:
                    m = sides[k]
                else:
                    m = np.int64(labels[yy, xx])
                    if m == lab:
                        continue
                # skip an immediate repeat: runs along a boundary emit the same pair
                if n > 0 and out_l[n - 1] == lab and out_m[n - 1] == m:
                    continue
                out_l[n] = lab
                out_m[n] = m
                n += 1
    return n


@njit(cache=True, nogil=True)
def label_comp_pairs(labels, comps, last, out_l, out_c):
    """(label, component) pairs: which foreground components each label lies in.

    ``last`` (length max label + 1, filled with -1) remembers the component
    last seen for a label so runs emit once. ``out_l``/``out_c`` need one
    entry per pixel in the worst case. Returns the number written.
    """
    h, w = labels.shape
    n = 0
    for y in range(h):
        for x in range(w):
            lab = labels[y, x]
            if lab == 0:
                continue
            c = comps[y, x]
            if last[lab] != c:
                last[lab] = c
                out_l[n] = lab
                out_c[n] = c
                n += 1
    return n


@njit(cache=True, nogil=True)
def apply_lut(labels, comps, removed, lut, out):
    """``out = lut[labels]``, and 0 where ``removed[comps]``.

    Pass a 0x0 ``comps`` (and any ``removed``) when no component is removed.
    """
    h, w = labels.shape
    use_comps = comps.shape[0] == h and comps.shape[1] == w
    for y in range(h):
        for x in range(w):
            lab = labels[y, x]
            if lab == 0 or (use_comps and removed[comps[y, x]]):
                out[y, x] = 0
            else:
                out[y, x] = lut[lab]


@njit(cache=True, nogil=True)
def part_stats(labels, parts, out_label, out_area, out_first):
    """Per part (4-connected run of one label, ids 1..n in ``parts``): its label, area and first pixel.

    ``out_first`` receives the raster index (``y * width + x``) of each
    part's first pixel in row-major order; fill it with -1 on entry.
    """
    h, w = labels.shape
    for y in range(h):
        for x in range(w):
            p = parts[y, x]
            if p == 0:
                continue
            out_area[p] += 1
            if out_first[p] < 0:
                out_first[p] = y * w + x
                out_label[p] = labels[y, x]


@njit(cache=True, nogil=True)
def part_pairs(parts, want, out_a, out_b):
    """4-adjacent pixel pairs of two different parts (both > 0), one per pair of pixels, where
    ``want[a] or want[b]``. ``out_a``/``out_b`` need ``2 * parts.size`` entries in the worst
    case. Returns the number written."""
    h, w = parts.shape
    n = 0
    for y in range(h):
        for x in range(w):
            p = parts[y, x]
            if p == 0:
                continue
            for yy, xx in ((y, x + 1), (y + 1, x)):  # the right and the lower neighbour
                if yy >= h or xx >= w:
                    continue
                q = parts[yy, xx]
                if q != 0 and q != p and (want[p] or want[q]):
                    out_a[n] = p
                    out_b[n] = q
                    n += 1
    return n


@njit(cache=True, nogil=True)
def apply_parts(parts, table, out):
    """``out[y, x] = table[parts[y, x]]`` where that is >= 0 (parts moved by the split)."""
    h, w = parts.shape
    for y in range(h):
        for x in range(w):
            v = table[parts[y, x]]
            if v >= 0:
                out[y, x] = v


@njit(cache=True, nogil=True)
def label_runs(labels, parts, parent):
    """4-connected runs of one nonzero label, numbered 1..n in raster order of their first pixel.

    Two passes (union-find over provisional ids, then sequential ids), as
    scikit-image's ``label`` does, but joining only equal labels. ``parts``
    receives the ids (0 on label 0); ``parent`` is scratch of at least
    ``labels.size + 1`` entries. Returns n.
    """
    h, w = labels.shape
    n = 0
    for y in range(h):
        for x in range(w):
            v = labels[y, x]
            if v == 0:
                parts[y, x] = 0
                continue
            left = parts[y, x - 1] if x > 0 and labels[y, x - 1] == v else 0
            up = parts[y - 1, x] if y > 0 and labels[y - 1, x] == v else 0
            if left == 0 and up == 0:
                n += 1
                parent[n] = n
                parts[y, x] = n
            elif left == 0:
                parts[y, x] = up
            else:
                parts[y, x] = left
                if up == 0 or up == left:
                    continue
                ra = _find(parent, left)
                rb = _find(parent, up)
                # the smaller provisional id (created first, in raster order) stays the root
                if ra < rb:
                    parent[rb] = ra
                elif rb < ra:
                    parent[ra] = rb
    # sequential ids: a root is the smallest provisional id of its run, so roots come in raster order
    for i in range(1, n + 1):
        parent[i] = _find(parent, i)
    k = 0
    for i in range(1, n + 1):
        r = parent[i]
        if r == i:
            k += 1
            parent[i] = -k
        else:  # r < i: already numbered
            parent[i] = parent[r]
    for y in range(h):
        for x in range(w):
            p = parts[y, x]
            if p != 0:
                parts[y, x] = -parent[p]
    return k
