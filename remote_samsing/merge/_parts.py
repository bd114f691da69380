"""One 4-connected segment per label: the split that follows the merge.

After the merge, the enclosed-object rule and the island rule, a label can
still hold several 4-connected *parts*: pixels a segmenter gave one label
that touch only at corners, or fragments linked across a seam whose core
crops do not touch. Every part of such a label is resolved by one rule:

* the largest part keeps the label (equal areas: the part whose first pixel
  comes first in raster order);
* every other part of at least ``min_mask_area`` pixels becomes a label of
  its own;
* a smaller part joins the label it shares the most border with (pairs of
  4-neighbouring pixels; ties: the one whose part's first pixel comes first),
  among the labels that keep their pixels; a part that touches none of them
  becomes background (0).

Parts are measured whole, across seams, so the result does not depend on the
tiling. Per block only the parts that can matter are described (those of
labels with several parts in the block, near a seam, or in the enclosed-object
rule, and the neighbours of the small ones); one global step over those
records decides, and each block receives only its own moves.
"""

from __future__ import annotations

import numpy as np

from .._arrays import unique, unique_pairs
from ..tiling import LOCAL_BITS, TilingPlan
from . import _solve as s

__all__ = ["part_map", "block_parts", "part_records", "split_parts"]


_NONE = np.empty(0, np.int64)
_NO_PARTS = {"local": _NONE, "label": _NONE, "area": _NONE, "first": _NONE, "comp": _NONE,
             "pairs": (_NONE, _NONE, _NONE)}


def part_map(idx: np.ndarray) -> np.ndarray:
    """The 4-connected runs of one label in a block's core, numbered 1..n in raster order (int32)."""
    from .. import _merge_nb as nb

    parts = np.empty(idx.shape, np.int32)
    nb.label_runs(idx, parts, np.empty(idx.size + 1, np.int64))
    return parts


def _interesting(idx, p_label, n_idx: int, *, plan: TilingPlan, sides, cand_idx):
    """Labels whose parts the global step needs: several parts in the block, pixels near a seam
    (they can be linked to other blocks' fragments), or a part in the enclosed-object rule."""
    wanted = np.bincount(p_label[1:], minlength=n_idx) > 1
    band = max(int(plan.padding), 1)
    bands = {"top": idx[:band], "bottom": idx[-band:], "left": idx[:, :band], "right": idx[:, -band:]}
    for side in sides:
        wanted[unique(bands[side])] = True
    if cand_idx is not None:
        wanted[cand_idx] = True
    wanted[0] = False
    return wanted


def block_parts(idx, comps, *, plan: TilingPlan, index, sides, n_idx: int, min_area: int, cand_idx=None):
    """One block's part map and part records (for the final step).

    The records are the described parts (local part id, label index, area,
    first pixel in the mosaic's raster order, foreground component) and
    their in-block contacts (part pairs and the number of 4-neighbour pixel
    pairs).
    """
    from .. import _merge_nb as nb

    parts = part_map(idx)
    n = int(parts.max()) if parts.size else 0
    p_label = np.zeros(n + 1, np.int64)
    p_area = np.zeros(n + 1, np.int64)
    p_first = np.full(n + 1, -1, np.int64)
    nb.part_stats(idx, parts, p_label, p_area, p_first)
    inter = _interesting(idx, p_label, n_idx, plan=plan, sides=sides, cand_idx=cand_idx)[p_label]
    inter[0] = False
    small = inter & (p_area < min_area)
    out_a = np.empty(2 * parts.size, np.int32)  # at most two pairs per pixel; part ids fit 32 bits
    out_b = np.empty(2 * parts.size, np.int32)
    k = nb.part_pairs(parts, inter, out_a, out_b)
    a, b = np.minimum(out_a[:k], out_b[:k]), np.maximum(out_a[:k], out_b[:k])
    keep = (inter[a] & inter[b]) | small[a] | small[b]
    a, b, counts = unique_pairs(a[keep].astype(np.int64), b[keep].astype(np.int64))
    described = inter.copy()
    described[a] = True
    described[b] = True
    local = np.flatnonzero(described)
    w = parts.shape[1] if parts.size else 1
    core = plan.core_window(index)
    first = p_first[local]
    first = (core.y0 + first // w) * plan.shape[1] + core.x0 + first % w
    comp = comps.ravel()[p_first[local]] if comps is not None and local.size else np.zeros(local.size, np.int64)
    late = {"local": local, "label": p_label[local], "area": p_area[local], "first": first,
            "comp": comp.astype(np.int64), "pairs": (a.astype(np.int64), b.astype(np.int64), counts)}
    return parts, late


def part_records(late_parts: dict, offset, *, n_idx: int, idx, gids, removed):
    """A block's described parts with their merged ids (0: removed), as gids, for :func:`split_parts`."""
    if late_parts is None:  # an empty core
        late_parts = _NO_PARTS
    lut = np.zeros(n_idx, np.uint64)
    lut[idx] = gids
    m = lut[late_parts["label"]]
    if removed is not None and removed.any():
        m[removed[late_parts["comp"]]] = 0
    keep = m > 0
    local = late_parts["local"]
    a, b, counts = late_parts["pairs"]
    alive = np.zeros(int(local.max(initial=0)) + 1, bool)
    alive[local[keep]] = True
    ok = alive[a] & alive[b]
    return {"part": offset | local[keep].astype(np.uint64), "merged": m[keep], "area": late_parts["area"][keep],
            "first": late_parts["first"][keep],
            "pairs": (offset | a[ok].astype(np.uint64), offset | b[ok].astype(np.uint64), counts[ok])}


def _cat(arrays, dtype) -> np.ndarray:
    return np.concatenate(arrays).astype(dtype, copy=False) if arrays else np.empty(0, dtype)


def _clusters(records, seam_pairs):
    """Every described part, its merged id, and its cluster (the 4-connected component of its merged
    label); edges as node indices with their contact counts."""
    part = _cat([r["part"] for r in records], np.uint64)
    merged = _cat([r["merged"] for r in records], np.uint64)
    area = _cat([r["area"] for r in records], np.int64)
    first = _cat([r["first"] for r in records], np.int64)
    pairs = [r["pairs"] for r in records] + list(seam_pairs)
    ea, eb = _cat([p[0] for p in pairs], np.uint64), _cat([p[1] for p in pairs], np.uint64)
    ec = _cat([p[2] for p in pairs], np.int64)
    ia = np.minimum(np.searchsorted(part, ea), max(part.size - 1, 0))
    ib = np.minimum(np.searchsorted(part, eb), max(part.size - 1, 0))
    known = (part[ia] == ea) & (part[ib] == eb) if part.size else np.zeros(ea.size, bool)
    ia, ib, ec = ia[known], ib[known], ec[known]
    same = merged[ia] == merged[ib]
    parent = s.union_nodes(part.size, ia[same], ib[same])
    return part, merged, area, first, parent, (ia[~same], ib[~same], ec[~same])


def split_parts(records, faces, *, n_blocks: int, min_area: int):
    """The global split: every block's moves ``(part ids, new merged ids)`` and statistics.

    ``records`` are the blocks' :func:`part_records`; ``faces`` their faces'
    outputs (``"part_pairs"``: the contacts across the seams).
    """
    seam = [f["part_pairs"] for f in faces if "part_pairs" in f]
    part, merged, area, first, parent, (ea, eb, ec) = _clusters(records, seam)
    c_area = np.bincount(parent, weights=area, minlength=part.size).astype(np.int64)
    first_node = _first_nodes(parent, first, part.size)  # per cluster root: the node of its first pixel
    c_first = first[first_node]
    roots = np.flatnonzero(parent == np.arange(part.size))
    # per merged id, its clusters by area (largest first), then first pixel
    order = roots[np.lexsort((c_first[roots], -c_area[roots], merged[roots]))]
    head = np.ones(order.size, bool)
    head[1:] = merged[order][1:] != merged[order][:-1]
    split = order[~head]  # every cluster but the kept one of its merged id
    final = merged.copy()  # per cluster root: its merged id after the split
    large = split[c_area[split] >= min_area]
    # a new label's id: its first part's gid, moved past every block's own ids
    final[large] = part[first_node[large]] + np.uint64(n_blocks << LOCAL_BITS)
    small = split[c_area[split] < min_area]
    final[small] = _targets(small, parent, ea, eb, ec, c_first, final, part.size)
    moved = np.zeros(part.size, bool)
    moved[split] = True
    node_moved = moved[parent]
    moves = s.split_by_block(part[node_moved], n_blocks, final[parent[node_moved]])
    stats = {"labels_split": int(np.count_nonzero(head[:-1] & ~head[1:])),
             "parts_relabelled": int(large.size), "parts_joined": int(np.count_nonzero(final[small])),
             "parts_cleared": int(np.count_nonzero(final[small] == 0))}
    return list(moves), stats


def _first_nodes(parent, first, n: int) -> np.ndarray:
    """Per cluster root, the node holding the cluster's first pixel."""
    order = np.lexsort((first, parent))
    head = np.ones(n, bool)
    head[1:] = parent[order][1:] != parent[order][:-1]
    out = np.zeros(n, np.int64)
    out[parent[order][head]] = order[head]
    return out


def _targets(small, parent, ea, eb, ec, c_first, final, n: int) -> np.ndarray:
    """The merged id each small cluster joins: the neighbouring cluster that keeps its pixels with the
    most contact (ties: first pixel first), or 0."""
    if not small.size:
        return np.empty(0, np.uint64)
    is_small = np.zeros(n, bool)
    is_small[small] = True
    ca, cb = parent[ea], parent[eb]
    src = np.concatenate([ca, cb])
    dst = np.concatenate([cb, ca])
    cnt = np.concatenate([ec, ec])
    ok = is_small[src] & ~is_small[dst]
    # contact summed per (small cluster, neighbour cluster)
    keys, inverse = unique(src[ok].astype(np.int64) * n + dst[ok], return_inverse=True)
    total = np.bincount(inverse.ravel(), weights=cnt[ok], minlength=keys.size)
    key_s, key_d = keys // n, keys % n
    # best per source: most contact, then first pixel first
    best = np.lexsort((c_first[key_d], -total, key_s))
    head = np.ones(best.size, bool)
    head[1:] = key_s[best][1:] != key_s[best][:-1]
    target = np.zeros(n, np.uint64)
    target[key_s[best][head]] = final[key_d[best][head]]
    return target[small]
