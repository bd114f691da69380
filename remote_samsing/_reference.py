"""Whole-mosaic numpy re-implementation of the reference's post-processing and seam merge.

An oracle for tests and benchmarks, not part of the pipeline: it holds the
whole mosaic in memory, exactly as the reference does. Behaviour follows
``shared/design/reference.md`` §1.7–1.8 (osmarluiz/sam-mosaic,
``src/sam_mosaic/merge/combined.py`` and ``merge/discontinuity.py``),
written anew here:

* post-processing labels the 4-connected components of ``labels > 0``;
  the "enclosed" phase looks for small components whose only non-background
  neighbour is one label (it never finds one, since a foreground component's
  outside neighbours are all background), then components smaller than
  ``min_mask_area`` are set to 0;
* the merge compares the two pixel lines at every seam ``x = T, 2T, … < W``
  and ``y = T, 2T, … < H``, selects pairs by contact count and unions them
  with the smaller label as root.
"""

from __future__ import annotations

import numpy as np

from ._arrays import unique, unique_pairs

__all__ = ["reference_postprocess", "reference_merge", "reference_pipeline"]

_CROSS = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], bool)


def reference_postprocess(labels: np.ndarray, *, merge_enclosed_max_area: int = 500, min_mask_area: int = 100):
    """The reference's single-pass "enclosed + small" step on a whole mosaic."""
    from scipy import ndimage

    if labels.max() == 0:
        return labels.copy()
    comps, n = ndimage.label(labels > 0, structure=_CROSS)
    sizes = np.bincount(comps.ravel(), minlength=n + 1)
    action = np.full(n + 1, -1, np.int64)
    small = (sizes > 0) & (sizes <= merge_enclosed_max_area)
    small[0] = False
    if small.any():
        # every (component, neighbouring label) contact across a component edge
        src, nbr = [], []
        for c0, c1, l0, l1 in (
            (comps[:, :-1], comps[:, 1:], labels[:, :-1], labels[:, 1:]),
            (comps[:-1, :], comps[1:, :], labels[:-1, :], labels[1:, :]),
        ):
            edge = c0 != c1
            src += [c0[edge], c1[edge]]
            nbr += [l1[edge], l0[edge]]
        src, nbr = np.concatenate(src), np.concatenate(nbr)
        keep = small[src]
        pairs = np.stack(unique_pairs(src[keep].astype(np.int64), nbr[keep].astype(np.int64))[:2], axis=1)
        if pairs.size:
            touches_bg = np.zeros(n + 1, bool)
            touches_bg[pairs[pairs[:, 1] == 0, 0]] = True
            fg = pairs[pairs[:, 1] > 0]
            n_nb = np.bincount(fg[:, 0], minlength=n + 1)
            enclosed = small & (n_nb == 1) & ~touches_bg
            hit = enclosed[fg[:, 0]]
            action[fg[hit, 0]] = fg[hit, 1]
    remove = (sizes > 0) & (sizes < min_mask_area) & (action == -1)
    remove[0] = False
    out = labels.copy()
    for c in np.flatnonzero(action > 0):
        out[comps == c] = action[c]
    if remove.any():
        out[remove[comps]] = 0
    return out


def _line_pairs(s1: np.ndarray, s2: np.ndarray, strategy: str, min_contact: int):
    ok = (s1 != s2) & (s1 > 0) & (s2 > 0)
    if not ok.any():
        return [], 0
    a, b = s1[ok].astype(np.int64), s2[ok].astype(np.int64)
    if strategy == "min_contact":
        lo, hi = np.minimum(a, b), np.maximum(a, b)
        ulo, uhi, cnt = unique_pairs(lo, hi)
        up = np.stack([ulo, uhi], 1)
        return [tuple(p) for p in up[cnt >= min_contact].tolist()], len(up)
    ua, ub, cnt = unique_pairs(a, b)
    up = np.stack([ua, ub], 1)
    best1: dict = {}
    best2: dict = {}
    # lexicographic scan, strictly larger replaces: ties go to the lower label
    for (x, y), c in zip(up.tolist(), cnt.tolist()):
        if x not in best1 or c > best1[x][1]:
            best1[x] = (y, c)
        if y not in best2 or c > best2[y][1]:
            best2[y] = (x, c)
    if strategy == "mutual_best":
        pairs = {(min(x, y), max(x, y)) for x, (y, _) in best1.items() if best2.get(y, (None,))[0] == x}
    else:
        pairs = {(min(x, y), max(x, y)) for x, (y, _) in best1.items()}
        pairs |= {(min(x, y), max(x, y)) for y, (x, _) in best2.items()}
    return sorted(pairs), len(up)


def reference_merge(labels: np.ndarray, *, tile_size: int, strategy: str = "best_match", min_contact: int = 20):
    """The reference's tile-boundary merge; returns (labels, stats)."""
    h, w = labels.shape
    stats = {"pairs_found": 0, "pairs_after_filter": 0}
    pairs: list = []
    lines = [(labels[:, x - 1], labels[:, x]) for x in range(tile_size, w, tile_size)]
    lines += [(labels[y - 1, :], labels[y, :]) for y in range(tile_size, h, tile_size)]
    for s1, s2 in lines:
        p, n = _line_pairs(s1, s2, strategy, min_contact)
        stats["pairs_found"] += n
        stats["pairs_after_filter"] += len(p)
        pairs += p
    if not pairs:
        return labels.copy(), stats
    lut = np.arange(int(labels.max()) + 1, dtype=labels.dtype)

    def find(x):
        r = x
        while lut[r] != r:
            r = lut[r]
        while lut[x] != r:
            lut[x], x = r, lut[x]
        return r

    for a, b in set(pairs):
        ra, rb = find(a), find(b)
        if ra != rb:
            if ra < rb:
                lut[rb] = ra
            else:
                lut[ra] = rb
    for lab in unique(labels):
        if lab:
            lut[lab] = find(lab)
    return lut[labels], stats


def reference_pipeline(
    labels: np.ndarray,
    *,
    tile_size: int,
    strategy: str = "best_match",
    min_contact: int = 20,
    merge_enclosed_max_area: int = 500,
    min_mask_area: int = 100,
):
    """Post-process then merge, as the reference's pipeline does (``none`` skips both)."""
    if strategy == "none":
        return labels.copy()
    pp = reference_postprocess(labels, merge_enclosed_max_area=merge_enclosed_max_area, min_mask_area=min_mask_area)
    return reference_merge(pp, tile_size=tile_size, strategy=strategy, min_contact=min_contact)[0]
