"""Seam merge: put objects cut by the tiling back together, out of core.

Input is the *staged* label array of the pipeline: one ``plan.slot_shape``
chunk per block holding that block's local labels (0 = none, 1..n) for its
whole padded window. Every pixel's final label comes from the block whose
core contains it; neighbouring blocks both segmented their shared halo, and
that double view is the evidence the default strategy merges on.

Strategies (``MergeConfig.strategy``)
-------------------------------------
``"overlap"`` (default)
    For each pair of neighbouring blocks (4 edge and 4 corner neighbours) take
    the region both padded windows cover (the ``2·padding`` strip around the
    seam, or the ``2P × 2P`` square at a corner). A *candidate* pair is a
    fragment ``a`` of block A and ``b`` of block B that overlap there, where
    ``a`` has pixels in A's core part of the region and ``b`` in B's. The pair
    is linked when the IoU of A's view of ``a`` and B's view of ``b`` inside
    the shared region is **strictly above** ``min_iou`` (default 0.5). That is
    the anti-chaining guard: IoU > 0.5 implies the intersection holds more
    than half of each segment, so a fragment can link at most one partner per
    face; segments that merely touch at the seam (no overlap) never link, and
    a small fragment cannot link to a large one whose view disagrees with it.
    Candidates that are not linked count as *refused* in the statistics.
    Needs ``padding > 0``.
``"best_match"``, ``"mutual_best"``, ``"min_contact"``
    The reference's rules (osmarluiz/sam-mosaic,
    ``merge/discontinuity.py``; ``shared/design/reference.md`` §1.8),
    reproduced exactly on the two one-pixel lines on either side of each
    seam of the core mosaic: contact counts of label pairs along the line;
    ``best_match`` links each label on either side to its partner of largest
    contact (ties to the lower label, union of both directions),
    ``mutual_best`` keeps pairs that are each other's best, ``min_contact``
    keeps pairs with at least ``min_contact_pixels`` of contact. Island
    removal runs *before* the merge, as in the reference, and
    ``absorb_enclosed`` is not applied (the reference's version of that step
    never fires, §1.7), so on the same pre-merge labels the result equals the
    reference's up to a label permutation. ``best_match`` chains: an object
    that ends at a seam is merged with whatever it touches across it.
``"none"``
    No merge and no post-processing: block-unique labels cropped to cores.

Post-processing (switchable; not applied with ``"none"``)
----------------------------------------------------------
absorb_enclosed (``"overlap"`` only)
    A merged object of at most ``merge_enclosed_max_area`` pixels whose
    4-neighbours outside itself all belong to one other object (no
    background, no nodata, not on the mosaic border) is relabelled to that
    object. Decided on the merged mosaic, all objects at once; an object
    absorbed into an object that is itself absorbed ends in the outer one.
remove_small
    Islands are 4-connected components of the foreground (``labels > 0``,
    whatever their labels), measured whole across seams. An island of fewer
    than ``min_mask_area`` pixels is set to 0. So two touching small labels
    with no other neighbour are removed together, while a small label
    touching a large one survives (unless enclosed and absorbed). This is the
    reference's island rule (§1.7); merging and absorbing change labels, not
    the foreground, so the islands are the same before and after them.

The reduction graph
-------------------
:func:`merge_labels` builds it as one lazy graph of eight tasks per block
(the small ``getitem`` tasks that hand each block its part of a result
included; ten when ``staged`` is a dask array, whose chunk is then computed
and re-read); :func:`merge_stored` runs the same steps phase by phase with
each block's results spilled to disk (what ``pipeline.run`` uses):

1. Per block (one task reading one staged chunk): core crop, foreground
   components, label areas, small-label contacts, the core edge lines and
   (``"overlap"``) the shared-region crops for the neighbours. Its output is
   split in two: what the faces read (released once they ran) and what the
   relabel reads.
2. Per block: every face the block owns (right, down and the two lower
   corners): candidate pairs and links, seam contacts.
3. One task: the island rule and union-find (numba) over the links, then the
   enclosed-object rule; the resulting table maps pre-merge ids to merged ids
   and is split per block, so each block only ever receives its part. (The
   reference strategies solve islands first, as the reference does.)
4. Per block: surviving merged ids. One task ranks them all (the sorted
   union of merged ids; ``searchsorted``) and splits the ranks per block.
5. Per block: re-read the staged chunk and relabel it 1..N with its lookup
   table (its own ranks only: no task receives a global table).

Pre-merge ids are ``block_label_offset(block_id) | local`` (uint64), so no
sequential offset chain exists between blocks (the bit split is dask-image
PR #409's idea, https://github.com/dask/dask-image/pull/409). The faces →
graph → lookup table → ``map_blocks`` relabel shape follows dask-image's
``ndmeasure.label`` (``dask_image/ndmeasure/_utils/_label.py``), with the one
global ``connected_components`` task replaced by union-find over fragment
links only and the table shipped per block.
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np

from .exceptions import ConfigError, InputError
from .tiling import LOCAL_BITS, TilingPlan, Window, block_label_offset

__all__ = ["MergeConfig", "MergeResult", "merge_labels", "merge_stored", "prepare_workdir", "stage_summary",
           "stage_faces", "face_schedule", "STRATEGIES"]

#: Accepted values of ``MergeConfig.strategy``.
STRATEGIES = ("overlap", "best_match", "mutual_best", "min_contact", "none")
_REFERENCE = ("best_match", "mutual_best", "min_contact")
_LOCAL_MASK = np.uint64((1 << LOCAL_BITS) - 1)
# 4-connectivity, as the reference's post-processing
_CROSS = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], bool)
_SIDES = ("top", "bottom", "left", "right")
# neighbour offsets whose face a block "owns" (the other four belong to the neighbour)
_FACE_OFFSETS = ((0, 1), (1, 0), (1, 1), (1, -1))
_FACE_KIND = {(0, 1): "x", (1, 0): "y", (1, 1): "xy", (1, -1): "yx"}


# ---------------------------------------------------------------------------
# configuration and result
# ---------------------------------------------------------------------------
def _check_int(name: str, value: Any, lo: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ConfigError(f"`{name}` must be an integer, got {value!r}")
    if value < lo:
        raise ConfigError(f"`{name}` must be >= {lo}, got {value}")


def _check_bool(name: str, value: Any) -> None:
    if not isinstance(value, (bool, np.bool_)):
        raise ConfigError(f"`{name}` must be true or false, got {value!r}")


@dataclass(frozen=True, kw_only=True)
class MergeConfig:
    """How fragments are linked across seams and how the result is cleaned.

    Parameters
    ----------
    strategy : str
        ``"overlap"`` (default), ``"best_match"``, ``"mutual_best"``,
        ``"min_contact"`` or ``"none"``; see the module docstring.
    min_contact_pixels : int
        ``"min_contact"`` only: least contact (pixels along one seam line)
        that links two labels. The reference's default is 20.
    min_iou : float
        ``"overlap"`` only: a candidate pair links when its IoU inside the
        shared region is strictly above this, in [0.5, 1). Values >= 0.5
        guarantee at most one partner per fragment and face.
    absorb_enclosed : bool
        Absorb small enclosed objects into their encloser (``"overlap"``).
    merge_enclosed_max_area : int
        Largest object (pixels) that can be absorbed.
    remove_small : bool
        Remove foreground islands smaller than ``min_mask_area``.
    min_mask_area : int
        Smallest island (pixels, 4-connected, across seams) that is kept.
    diagnostics : bool
        Also build the seam-diagnostics raster (``MergeResult.diagnostics``).
    """

    strategy: str = "overlap"
    min_contact_pixels: int = 20
    min_iou: float = 0.5
    absorb_enclosed: bool = True
    merge_enclosed_max_area: int = 500
    remove_small: bool = True
    min_mask_area: int = 100
    diagnostics: bool = False

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ConfigError(
                f"unknown merge strategy `{self.strategy}`", hint=f"choose one of {', '.join(STRATEGIES)}"
            )
        _check_int("min_contact_pixels", self.min_contact_pixels, 1)
        _check_int("merge_enclosed_max_area", self.merge_enclosed_max_area, 0)
        _check_int("min_mask_area", self.min_mask_area, 0)
        if isinstance(self.min_iou, bool) or not isinstance(self.min_iou, (int, float, np.floating)):
            raise ConfigError(f"`min_iou` must be a number, got {self.min_iou!r}")
        if not 0.5 <= float(self.min_iou) < 1.0:
            raise ConfigError(
                f"`min_iou` must be in [0.5, 1), got {self.min_iou}",
                hint="below 0.5 one fragment could link several partners on one face",
            )
        for name in ("absorb_enclosed", "remove_small", "diagnostics"):
            _check_bool(name, getattr(self, name))

    @property
    def islands(self) -> bool:
        return bool(self.remove_small) and self.strategy != "none"

    @property
    def absorb(self) -> bool:
        return bool(self.absorb_enclosed) and self.strategy == "overlap"


@dataclass(frozen=True)
class MergeResult:
    """Lazy outputs of :func:`merge_labels`.

    Attributes
    ----------
    labels : dask.array.Array
        (H, W) uint32 labels 1..N (0 = none), chunked like ``plan.chunks``.
    stats : dask.delayed.Delayed
        Computes to a dict: ``strategy``, ``faces`` (one entry per face with
        ``blocks``, ``kind``, ``candidates``, ``links``, ``refused``) and
        ``totals``.
    diagnostics : dask.array.Array or None
        (H, W) uint8: 0 untouched, 1 fragment linked across a seam,
        2 absorbed into its encloser, 3 removed as a small island.
    """

    labels: Any
    stats: Any
    diagnostics: Any = None


# ---------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------
def _intersect(a: Window, b: Window) -> Window:
    return Window(max(a.y0, b.y0), min(a.y1, b.y1), max(a.x0, b.x0), min(a.x1, b.x1))


def _neighbour(plan: TilingPlan, index, off):
    iy, ix = index[0] + off[0], index[1] + off[1]
    ny, nx = plan.grid_shape
    if 0 <= iy < ny and 0 <= ix < nx:
        return (iy, ix)
    return None


def _offset(plan: TilingPlan, index) -> np.uint64:
    return np.uint64(block_label_offset(plan.block_id(index)))


def _compact(core: np.ndarray):
    """Block labels as small indices (identity unless local labels are sparse)."""
    mx = int(core.max()) if core.size else 0
    if mx <= 4 * core.size + 1024:
        return core, None
    values, inv = np.unique(core, return_inverse=True)
    inv = inv.reshape(core.shape).astype(np.uint32)
    if values[0] != 0:
        values = np.concatenate([[0], values]).astype(values.dtype)
        inv += 1
    return inv, values.astype(np.uint32)


def _to_local(idx: np.ndarray, values) -> np.ndarray:
    return idx.astype(np.uint32) if values is None else values[idx]


def _to_idx(local: np.ndarray, values) -> np.ndarray:
    return local.astype(np.int64) if values is None else np.searchsorted(values, local)


def _core(slot, vbits, *, plan, index):
    pw = plan.padded_window(index)
    cw = plan.core_in_padded(index)
    core = np.array(np.asarray(slot)[: pw.shape[0], : pw.shape[1]][cw.slices], dtype=np.uint32)
    if vbits is not None:
        v = np.unpackbits(vbits, count=core.size).reshape(core.shape).astype(bool)
        core[~v] = 0
    return core


def _edge_line(a: np.ndarray, side: str) -> np.ndarray:
    return {"top": a[0], "bottom": a[-1], "left": a[:, 0], "right": a[:, -1]}[side].copy()


def _has_side(plan: TilingPlan, index, side: str) -> bool:
    off = {"top": (-1, 0), "bottom": (1, 0), "left": (0, -1), "right": (0, 1)}[side]
    return _neighbour(plan, index, off) is not None


def _unique_pairs(a: np.ndarray, b: np.ndarray):
    """Unique (a, b) uint64 pairs and their counts."""
    if a.size == 0:
        e = np.empty(0, np.uint64)
        return e, e, np.empty(0, np.int64)
    order = np.lexsort((b, a))
    a, b = a[order], b[order]
    new = np.ones(a.size, bool)
    new[1:] = (a[1:] != a[:-1]) | (b[1:] != b[:-1])
    starts = np.flatnonzero(new)
    counts = np.diff(np.append(starts, a.size))
    return a[starts], b[starts], counts


# ---------------------------------------------------------------------------
# 1. per-block summary (the only first-wave task that reads pixels)
# ---------------------------------------------------------------------------
def _summarize(slot, valid, *, plan: TilingPlan, index, cfg: MergeConfig):
    from . import _merge_nb as nb

    index = tuple(index)
    vbits = None
    if valid is not None:
        v = np.asarray(valid, bool)
        if not v.all():
            vbits = np.packbits(v.ravel())
    core = _core(slot, vbits, plan=plan, index=index)
    idx, values = _compact(core)
    # a core without labels (nodata, nothing segmented) skips the per-pixel passes
    empty = not idx.any()
    areas = np.bincount(idx.ravel()) if idx.size and not empty else np.array([idx.size], np.int64)
    present = np.flatnonzero(areas)
    present = present[present > 0]
    info: dict[str, Any] = {
        "index": index,
        "offset": _offset(plan, index),
        "values": values,
        "n_idx": int(areas.size),
        "present": present,
    }
    sides = [s for s in _SIDES if _has_side(plan, index, s)]
    info["edges"] = {s: _to_local(_edge_line(idx, s), values) for s in sides}
    if cfg.islands:
        comps, ncomp = _label_fg(idx, empty=empty)
        comp_sizes = np.bincount(comps.ravel(), minlength=ncomp + 1) if not empty else areas.copy()
        last = np.full(areas.size, -1, np.int32)
        out_l = np.empty(idx.size, np.uint32)
        out_c = np.empty(idx.size, np.int32)
        n = nb.label_comp_pairs(idx, comps, last, out_l, out_c) if not empty else 0
        lc_l, lc_c, _ = _unique_pairs(out_l[:n].astype(np.uint64), out_c[:n].astype(np.uint64))
        info["comp_sizes"] = comp_sizes
        info["label_comp"] = (lc_l.astype(np.int64), lc_c.astype(np.int64))
        info["comp_edges"] = {s: _edge_line(comps, s) for s in sides}
        seam = np.unique(np.concatenate([info["comp_edges"][s] for s in sides])) if sides else np.empty(0, np.int32)
        seam = seam[seam > 0].astype(np.int64)
        info["seam_comps"] = seam
        info["seam_sizes"] = comp_sizes[seam]
    if cfg.absorb:
        info["cand"] = _enclosure_candidates(idx, values, areas, plan, index, cfg)
    strips = None
    if cfg.strategy == "overlap":
        pw = plan.padded_window(index)
        padded = np.asarray(slot)[: pw.shape[0], : pw.shape[1]]
        strips = {}
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                other = _neighbour(plan, index, (dy, dx)) if (dy, dx) != (0, 0) else None
                if other is None:
                    continue
                shared = _intersect(pw, plan.padded_window(other))
                strips[(dy, dx)] = _pack(padded[shared.relative_to(pw).slices])
    return info, strips, vbits


def _pack(a: np.ndarray):
    """Compress a label strip: strips wait for the neighbour's summary, and
    label strips are long runs, so zlib at level 1 shrinks them ~20x cheaply."""
    import zlib

    if not a.any():  # no labels in the strip: nothing to store
        return a.shape, None, None
    a = np.ascontiguousarray(a, dtype=np.uint16 if a.max() < 65536 else np.uint32)
    return a.shape, a.dtype.str, zlib.compress(a.tobytes(), 1)


def _unpack(packed) -> np.ndarray:
    import zlib

    shape, dtype, data = packed
    if data is None:
        return np.zeros(shape, np.uint32)
    return np.frombuffer(zlib.decompress(data), dtype=dtype).reshape(shape).astype(np.uint32)


def _label_fg(idx: np.ndarray, *, empty: bool = False):
    from scipy import ndimage

    if empty:  # no foreground: no components (np.zeros costs nothing until touched)
        return np.zeros(idx.shape, np.int32), 0
    comps, n = ndimage.label(idx > 0, structure=_CROSS)
    return comps.astype(np.int32, copy=False), int(n)


def _enclosure_candidates(idx, values, areas, plan, index, cfg):
    """Small labels whose in-block contacts are only other labels (or seams)."""
    from . import _merge_nb as nb

    small = (areas > 0) & (areas <= cfg.merge_enclosed_max_area)
    small[0] = False
    empty = {
        "local": np.empty(0, np.uint32),
        "area": np.empty(0, np.int64),
        "nb_l": np.empty(0, np.uint32),
        "nb_m": np.empty(0, np.uint32),
    }
    if not small.any():
        return empty
    sides = np.array(
        [nb.NEIGHBOUR_SEAM if _has_side(plan, index, s) else nb.NEIGHBOUR_BORDER for s in _SIDES], np.int64
    )
    cap = int(4 * areas[small].sum())
    out_l = np.empty(cap, np.int64)
    out_m = np.empty(cap, np.int64)
    n = nb.enclosure_pairs(idx, small, sides, out_l, out_m)
    pl, pm = out_l[:n], out_m[:n]
    bad = np.zeros(areas.size, bool)
    bad[pl[(pm == 0) | (pm == nb.NEIGHBOUR_BORDER)]] = True
    cand = np.unique(pl)
    cand = cand[~bad[cand]]
    keep = np.isin(pl, cand) & (pm > 0)
    nl, nm, _ = _unique_pairs(pl[keep].astype(np.uint64), pm[keep].astype(np.uint64))
    return {
        "local": _to_local(cand, values),
        "area": areas[cand].astype(np.int64),
        "nb_l": _to_local(nl.astype(np.int64), values),
        "nb_m": _to_local(nm.astype(np.int64), values),
    }


# ---------------------------------------------------------------------------
# 2. faces
# ---------------------------------------------------------------------------
_OPPOSITE = {"right": "left", "bottom": "top"}


def _seam_sides(off):
    return ("right", "left") if off == (0, 1) else ("bottom", "top")


def _face_seam(info_a, info_b, *, off, want_comps: bool, want_adj: bool):
    """Foreground-component links and small-label contacts across one seam line."""
    sa, sb = _seam_sides(off)
    oa, ob = info_a["offset"], info_b["offset"]
    comp_pairs = adj = None
    if want_comps:
        ca, cb = info_a["comp_edges"][sa], info_b["comp_edges"][sb]
        both = (ca > 0) & (cb > 0)
        ga = oa | ca[both].astype(np.uint64)
        gb = ob | cb[both].astype(np.uint64)
        ga, gb, _ = _unique_pairs(ga, gb)
        comp_pairs = (ga, gb)
    if want_adj:
        la, lb = info_a["edges"][sa], info_b["edges"][sb]
        src, dst = [], []
        for line, other, cand, o_self, o_other in (
            (la, lb, info_a["cand"]["local"], oa, ob),
            (lb, la, info_b["cand"]["local"], ob, oa),
        ):
            hit = np.isin(line, cand)
            s = o_self | line[hit].astype(np.uint64)
            d = other[hit].astype(np.uint64)
            d = np.where(d > 0, o_other | d, np.uint64(0))
            src.append(s)
            dst.append(d)
        s, d, _ = _unique_pairs(np.concatenate(src), np.concatenate(dst))
        adj = (s, d)
    return comp_pairs, adj


def _face_overlap(strips_a, strips_b, *, plan: TilingPlan, a, b, off, min_iou: float):
    """Candidate pairs and IoU links inside the region both blocks saw."""
    stats = {"blocks": [list(a), list(b)], "kind": _FACE_KIND[off], "candidates": 0, "links": 0, "refused": 0}
    empty = (np.empty(0, np.uint64), np.empty(0, np.uint64))
    if strips_a[off][2] is None or strips_b[(-off[0], -off[1])][2] is None:
        return empty, stats  # one side saw no labels there: no candidate pairs
    la = _unpack(strips_a[off])
    lb = _unpack(strips_b[(-off[0], -off[1])])
    shared = _intersect(plan.padded_window(a), plan.padded_window(b))
    part_a = _intersect(plan.core_window(a), shared).relative_to(shared)
    part_b = _intersect(plan.core_window(b), shared).relative_to(shared)
    pres_a = np.unique(la[part_a.slices])
    pres_b = np.unique(lb[part_b.slices])
    both = (la > 0) & (lb > 0)
    pa, pb, inter = _unique_pairs(la[both].astype(np.uint64), lb[both].astype(np.uint64))
    if pa.size == 0:
        return empty, stats
    cand = np.isin(pa, pres_a) & np.isin(pb, pres_b)
    ua, na = np.unique(la[la > 0], return_counts=True)
    ub, nb_ = np.unique(lb[lb > 0], return_counts=True)
    area_a = na[np.searchsorted(ua, pa)]
    area_b = nb_[np.searchsorted(ub, pb)]
    iou = inter / (area_a + area_b - inter)
    link = cand & (iou > min_iou)
    stats.update(candidates=int(cand.sum()), links=int(link.sum()), refused=int((cand & ~link).sum()))
    oa, ob = _offset(plan, a), _offset(plan, b)
    return (oa | pa[link], ob | pb[link]), stats


def _face_reference(info_a, info_b, rem_a, rem_b, *, a, b, off, strategy: str, min_contact: int):
    """The reference's pair selection on the two pixel lines at one seam."""
    sa, sb = _seam_sides(off)
    la, lb = info_a["edges"][sa].copy(), info_b["edges"][sb].copy()
    for line, rem, info, side in ((la, rem_a, info_a, sa), (lb, rem_b, info_b, sb)):
        if rem is not None:
            line[rem[info["comp_edges"][side]]] = 0
    both = (la > 0) & (lb > 0)
    ga = info_a["offset"] | la[both].astype(np.uint64)
    gb = info_b["offset"] | lb[both].astype(np.uint64)
    pa, pb, cnt = _unique_pairs(ga, gb)
    stats = {"blocks": [list(a), list(b)], "kind": _FACE_KIND[off], "candidates": int(pa.size)}
    if pa.size == 0:
        keep = np.zeros(0, bool)
    elif strategy == "min_contact":
        keep = cnt >= min_contact
    else:
        # best partner of each side-1 label: largest count, ties to the lower label
        o1 = np.lexsort((pb, -cnt, pa))
        first1 = np.ones(o1.size, bool)
        first1[1:] = pa[o1][1:] != pa[o1][:-1]
        best1 = np.zeros(pa.size, bool)
        best1[o1[first1]] = True
        o2 = np.lexsort((pa, -cnt, pb))
        first2 = np.ones(o2.size, bool)
        first2[1:] = pb[o2][1:] != pb[o2][:-1]
        best2 = np.zeros(pa.size, bool)
        best2[o2[first2]] = True
        keep = (best1 | best2) if strategy == "best_match" else (best1 & best2)
    stats.update(links=int(keep.sum()), refused=int(pa.size - keep.sum()))
    return (pa[keep], pb[keep]), stats


# ---------------------------------------------------------------------------
# 3. global solves (arrays of labels, never pixels)
# ---------------------------------------------------------------------------
def _split_by_block(gids: np.ndarray, n_blocks: int, *arrays):
    """Split rows sorted by gid into one piece per block (local ids + arrays)."""
    bounds = np.searchsorted(
        gids, np.array([block_label_offset(i) for i in range(n_blocks + 1)], dtype=np.uint64)
    )
    pieces = []
    for i in range(n_blocks):
        lo, hi = bounds[i], bounds[i + 1]
        pieces.append(((gids[lo:hi] & _LOCAL_MASK).astype(np.int64),) + tuple(a[lo:hi] for a in arrays))
    return pieces


def _union(nodes: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    from . import _merge_nb as nb

    parent = np.arange(nodes.size, dtype=np.int64)
    if a.size:
        nb.union_find(np.searchsorted(nodes, a).astype(np.int64), np.searchsorted(nodes, b).astype(np.int64), parent)
    return parent


def _solve_islands(comp_pairs, seam_nodes, *, n_blocks: int, min_area: int):
    """Which foreground components touching a seam belong to a small island."""
    nodes = np.concatenate([n for n, _ in seam_nodes]) if seam_nodes else np.empty(0, np.uint64)
    sizes = np.concatenate([s for _, s in seam_nodes]) if seam_nodes else np.empty(0, np.int64)
    order = np.argsort(nodes, kind="stable")
    nodes, sizes = nodes[order], sizes[order]
    a = np.concatenate([p[0] for p in comp_pairs]) if comp_pairs else np.empty(0, np.uint64)
    b = np.concatenate([p[1] for p in comp_pairs]) if comp_pairs else np.empty(0, np.uint64)
    parent = _union(nodes, a, b)
    total = np.bincount(parent, weights=sizes, minlength=nodes.size)
    removed = total[parent] < min_area
    return tuple(_split_by_block(nodes, n_blocks, removed))


def _seam_nodes(info):
    return info["offset"] | info["seam_comps"].astype(np.uint64), info["seam_sizes"]


def _block_cands(info):
    return info["offset"], info["cand"]


def _block_removed(info, piece, *, min_area: int):
    removed = info["comp_sizes"] < min_area
    removed[0] = False
    local, flags = piece
    removed[local] = flags
    return removed


def _root_of(g: np.ndarray, nodes: np.ndarray, root_gid: np.ndarray) -> np.ndarray:
    if nodes.size == 0:
        return g.copy()
    pos = np.minimum(np.searchsorted(nodes, g), nodes.size - 1)
    found = nodes[pos] == g
    return np.where(found, root_gid[pos], g)


def _solve_merge(links, cands, adj, *, n_blocks: int, cfg: MergeConfig):
    """Union-find over the links, then the enclosed-object rule; split per block."""
    a = np.concatenate([l_[0] for l_ in links]) if links else np.empty(0, np.uint64)
    b = np.concatenate([l_[1] for l_ in links]) if links else np.empty(0, np.uint64)
    nodes = np.unique(np.concatenate([a, b])).astype(np.uint64)
    parent = _union(nodes, a, b)
    root_gid = nodes[parent]
    comp_size = np.bincount(parent, minlength=nodes.size)
    gids = [nodes]
    finals = [root_gid]
    codes = [np.ones(nodes.size, np.uint8)]
    n_absorbed = 0
    if cfg.absorb and cands:
        cg = np.concatenate([off | c["local"].astype(np.uint64) for off, c in cands])
        carea = np.concatenate([c["area"] for _, c in cands])
        src = [off | c["nb_l"].astype(np.uint64) for off, c in cands] + [p[0] for p in adj]
        dst = [off | c["nb_m"].astype(np.uint64) for off, c in cands] + [p[1] for p in adj]
        src, dst = np.concatenate(src), np.concatenate(dst)
        if cg.size:
            c_root = _root_of(cg, nodes, root_gid)
            roots, inv = np.unique(c_root, return_inverse=True)
            n_cand = np.bincount(inv, minlength=roots.size)
            area = np.bincount(inv, weights=carea, minlength=roots.size)
            pos = np.minimum(np.searchsorted(nodes, roots), max(nodes.size - 1, 0))
            in_nodes = (nodes[pos] == roots) if nodes.size else np.zeros(roots.size, bool)
            members = np.where(in_nodes, comp_size[pos] if nodes.size else 1, 1)
            ok = (n_cand == members) & (area <= cfg.merge_enclosed_max_area)
            s_root = _root_of(src, nodes, root_gid)
            d_root = np.where(dst > 0, _root_of(dst, nodes, root_gid), np.uint64(0))
            keep = s_root != d_root
            sr, dr, _ = _unique_pairs(s_root[keep], d_root[keep])
            ri = np.searchsorted(roots, sr)
            inr = (ri < roots.size) & (roots[np.minimum(ri, roots.size - 1)] == sr)
            sr, dr, ri = sr[inr], dr[inr], ri[inr]
            n_nb = np.bincount(ri, minlength=roots.size)
            touches0 = np.zeros(roots.size, bool)
            touches0[ri[dr == 0]] = True
            target = np.zeros(roots.size, np.uint64)
            target[ri] = dr
            ok &= (n_nb == 1) & ~touches0
            abs_roots, abs_target = roots[ok], target[ok]
            # an object absorbed into an absorbed object ends in the outer one
            resolved = abs_target.copy()
            for _ in range(abs_roots.size):
                p = np.minimum(np.searchsorted(abs_roots, resolved), max(abs_roots.size - 1, 0))
                hit = abs_roots[p] == resolved if abs_roots.size else np.zeros(0, bool)
                if not hit.any():
                    break
                resolved = np.where(hit, abs_target[p], resolved)
            n_absorbed = int(abs_roots.size)
            if abs_roots.size:
                cp = np.searchsorted(abs_roots, c_root)
                cp = np.minimum(cp, abs_roots.size - 1)
                hit = abs_roots[cp] == c_root
                gids.append(cg[hit])
                finals.append(resolved[cp[hit]])
                codes.append(np.full(int(hit.sum()), 2, np.uint8))
    allg = np.concatenate(gids)
    allf = np.concatenate(finals)
    allc = np.concatenate(codes)
    # absorbed entries come last: keep the last entry per gid
    order = np.lexsort((np.arange(allg.size), allg))
    allg, allf, allc = allg[order], allf[order], allc[order]
    last = np.ones(allg.size, bool)
    last[:-1] = allg[1:] != allg[:-1]
    allg, allf, allc = allg[last], allf[last], allc[last]
    stats = {"fragments_linked": int(nodes.size), "objects_absorbed": n_absorbed}
    return tuple(_split_by_block(allg, n_blocks, allf, allc)) + (stats,)


# ---------------------------------------------------------------------------
# 4. sequential relabel
# ---------------------------------------------------------------------------
def _block_final(info, removed, piece):
    """Surviving block labels (as indices) and their merged pre-relabel ids."""
    present = info["present"]
    n_removed = 0
    if removed is not None and removed.any():
        lc_l, lc_c = info["label_comp"]
        surv = np.unique(lc_l[~removed[lc_c]])
        n_removed = int(removed.sum())
    else:
        surv = present
    local = _to_local(surv, info["values"])
    gids = info["offset"] | local.astype(np.uint64)
    if piece is not None and piece[0].size:
        p_local, p_final = piece[0], piece[1]
        pos = np.minimum(np.searchsorted(p_local, local), p_local.size - 1)
        hit = p_local[pos] == local
        gids[hit] = p_final[pos[hit]]
    return {"idx": surv, "gids": gids, "n_before": int(present.size), "islands_removed": n_removed}


class _FlatGraph:
    """A flat task dict with readable keys: ``(name, *parts)``.

    ``task`` adds a task and returns a reference to its output; ``item``
    adds a ``getitem`` task for functions that return tuples.
    """

    def __init__(self, name: str):
        self.name = name
        self.dsk: dict = {}

    def key(self, parts: tuple):
        if parts and isinstance(parts[0], str) and parts[0].startswith("rs-"):
            return parts  # an output array's own key
        return (self.name + "-" + str(parts[0]),) + tuple(parts[1:])

    def ref(self, key):
        from dask._task_spec import TaskRef

        return TaskRef(key)

    def task(self, parts: tuple, func, *args, **kwargs):
        from dask._task_spec import Task, parse_input

        key = self.key(parts)
        # parse_input turns lists of references into graph nodes dask resolves
        args = tuple(parse_input(a) if isinstance(a, list) else a for a in args)
        self.dsk[key] = Task(key, func, *args, **kwargs)
        return self.ref(key)

    def item(self, ref, k: int):
        import operator

        return self.task(("item", *_flat_key_parts(ref.key), k), operator.getitem, ref, k)


def _flat_key_parts(key) -> tuple:
    return tuple(key) if isinstance(key, tuple) else (key,)


def _block_lut(info, fin, ranks):
    lut = np.zeros(info["n_idx"], np.uint32)
    lut[fin["idx"]] = ranks
    return lut


def _rank_gids(gids: list, *, owners_per_step: int = 256) -> tuple:
    """Sequential ids 1..N: each block's merged ids ranked among all blocks' (per-block arrays), and N.

    ``gids`` holds each block's merged ids, or ``(sorted unique ids, inverse)``.

    Merged ids carry their owner block in the high bits, so the ranking
    goes through the id axis in steps of ``owners_per_step`` owner blocks:
    the distinct ids of one step are found, counted and dropped before the
    next. Beyond the blocks' own (unique) ids, memory is one step's ids,
    never a sorted copy of all of them (a 2-gigapixel merge's ranking peaked
    46 MB above its per-block phases with ``np.unique`` over everything).
    """
    # (sorted unique ids, inverse) per block; the final phase hands them over so
    uniq = [g if isinstance(g, tuple) else np.unique(g, return_inverse=True) for g in gids]
    ranks = [np.zeros(u.size, np.uint32) for u, _ in uniq]
    # ids of owner block o lie in [block_label_offset(o), block_label_offset(o + 1))
    n_owners = max((int(u[-1] >> np.uint64(LOCAL_BITS)) for u, _ in uniq if u.size), default=0)
    total = 0
    for o0 in range(0, n_owners, owners_per_step):
        lo = np.uint64(block_label_offset(o0))
        hi = np.uint64(block_label_offset(o0 + owners_per_step))
        bounds = [(np.searchsorted(u, lo), np.searchsorted(u, hi)) for u, _ in uniq]
        step = np.unique(np.concatenate([u[a:b] for (u, _), (a, b) in zip(uniq, bounds)]))
        for (u, _), r, (a, b) in zip(uniq, ranks, bounds):
            r[a:b] = np.searchsorted(step, u[a:b]) + 1 + total
        total += int(step.size)
    return tuple(r[inv.ravel()] for r, (_, inv) in zip(ranks, uniq)) + (total,)


def _block_codes(info, piece):
    codes = np.zeros(info["n_idx"], np.uint8)
    if piece is not None and piece[0].size:
        codes[_to_idx(piece[0], info["values"])] = piece[2]
    return codes


# ---------------------------------------------------------------------------
# per-block and global graph tasks (thin: they route the pieces above)
# ---------------------------------------------------------------------------
_EARLY = ("offset", "edges", "comp_edges", "cand", "seam_comps", "seam_sizes", "comp_sizes")
_LATE = ("index", "offset", "values", "n_idx", "present", "label_comp", "comp_sizes")


@dataclass(frozen=True)
class _StoredSlot:
    """One block's staged chunk in a Zarr store, read by the task that needs it.

    Passed as a plain argument instead of a separate read task: two fewer
    tasks per block, and the scheduler's per-task cost is what bounds a fast
    merge (issue 4's overhead benchmark).
    """

    path: str
    index: tuple[int, int]
    slot_shape: tuple[int, int]

    def load(self) -> np.ndarray:
        import zarr

        sy, sx = self.slot_shape
        iy, ix = self.index
        z = zarr.open_array(store=self.path, mode="r")
        return z[iy * sy : (iy + 1) * sy, ix * sx : (ix + 1) * sx]


def _load(slot):
    return slot.load() if isinstance(slot, _StoredSlot) else slot


def _summarize_split(slot, valid, *, plan: TilingPlan, index, cfg: MergeConfig):
    """:func:`_summarize`, split into what the faces read and what the relabel reads."""
    info, strips, vbits = _summarize(_load(slot), valid, plan=plan, index=index, cfg=cfg)
    early = {k: info[k] for k in _EARLY if k in info}
    early["strips"] = strips
    late = {k: info[k] for k in _LATE if k in info}
    late["vbits"] = vbits
    return early, late


def _block_faces_overlap(own, others, *, plan: TilingPlan, index, offsets, cfg: MergeConfig):
    """Every face a block owns: overlap links, and seam contacts for the post-processing."""
    links_a, links_b, stats, comp_a, comp_b, adj_s, adj_d = [], [], [], [], [], [], []
    for off, other in zip(offsets, others):
        nb = (index[0] + off[0], index[1] + off[1])
        (la, lb), st = _face_overlap(own["strips"], other["strips"], plan=plan, a=index, b=nb, off=off,
                                     min_iou=float(cfg.min_iou))
        links_a.append(la)
        links_b.append(lb)
        stats.append(st)
        if off in ((0, 1), (1, 0)) and (cfg.islands or cfg.absorb):
            cp, adj = _face_seam(own, other, off=off, want_comps=cfg.islands, want_adj=cfg.absorb)
            if cp is not None:
                comp_a.append(cp[0])
                comp_b.append(cp[1])
            if adj is not None:
                adj_s.append(adj[0])
                adj_d.append(adj[1])
    out = {"links": (_cat64(links_a), _cat64(links_b)), "stats": stats}
    if cfg.islands:
        out["comp_pairs"] = (_cat64(comp_a), _cat64(comp_b))
        out["seam_nodes"] = _seam_nodes(own)
    if cfg.absorb:
        out["adj"] = (_cat64(adj_s), _cat64(adj_d))
        out["cands"] = _block_cands(own)
    return out


def _block_faces_comps(own, others, *, offsets):
    """Foreground-component links across the seams a block owns (island rule)."""
    pa, pb = [], []
    for off, other in zip(offsets, others):
        cp, _ = _face_seam(own, other, off=off, want_comps=True, want_adj=False)
        pa.append(cp[0])
        pb.append(cp[1])
    return {"comp_pairs": (_cat64(pa), _cat64(pb)), "seam_nodes": _seam_nodes(own)}


def _block_faces_reference(own, rem, others, rems, *, index, neighbours, offsets, strategy, min_contact):
    """The reference's line-contact pairs on the seams a block owns."""
    la, lb, stats = [], [], []
    for off, other, rem_o, nb in zip(offsets, others, rems, neighbours):
        (a, b), st = _face_reference(own, other, rem, rem_o, a=index, b=nb, off=off, strategy=strategy,
                                     min_contact=min_contact)
        la.append(a)
        lb.append(b)
        stats.append(st)
    return {"links": (_cat64(la), _cat64(lb)), "stats": stats}


def _cat64(parts) -> np.ndarray:
    return np.concatenate(parts).astype(np.uint64, copy=False) if parts else np.empty(0, np.uint64)


def _solve_islands_blocks(faces, *, n_blocks: int, min_area: int):
    return _solve_islands([f["comp_pairs"] for f in faces], [f["seam_nodes"] for f in faces],
                          n_blocks=n_blocks, min_area=min_area)


def _solve_blocks(faces, *, n_blocks: int, cfg: MergeConfig):
    """The one global task: island rule (overlap strategy) and union-find; pieces per block.

    Returns ``n_blocks`` pieces ``(island piece or None, merge piece)`` and a
    statistics dict (with every face's statistics, in block order).
    """
    if cfg.strategy == "overlap" and cfg.islands:
        islands = _solve_islands_blocks(faces, n_blocks=n_blocks, min_area=cfg.min_mask_area)
    else:
        islands = (None,) * n_blocks
    links = [f["links"] for f in faces]
    cands = [f["cands"] for f in faces if "cands" in f]
    adj = [f["adj"] for f in faces if "adj" in f]
    *pieces, stats = _solve_merge(links, cands, adj, n_blocks=n_blocks, cfg=cfg)
    stats["faces"] = [st for f in faces for st in f["stats"]]
    return tuple(zip(islands, pieces)) + (stats,)


def _final_task(late, removed, pieces, *, min_area: int):
    """Surviving labels of one block and their merged ids (see :func:`_block_final`)."""
    island_piece, merge_piece = pieces if pieces is not None else (None, None)
    if removed is None and island_piece is not None:
        removed = _block_removed(late, island_piece, min_area=min_area)
    fin = _block_final(late, removed, merge_piece)
    fin["removed"] = removed
    return fin


def _rank_finals(finals):
    return _rank_gids([f["gids"] for f in finals])


def _apply_task(slot, late, fin, ranks, *, plan: TilingPlan, index):
    lut = _block_lut(late, fin, ranks)
    return _apply(_load(slot), late["vbits"], fin["removed"], lut, plan=plan, index=index)


def _apply_codes_task(slot, late, fin, pieces, *, plan: TilingPlan, index):
    codes = _block_codes(late, pieces[1] if pieces is not None else None)
    return _apply(_load(slot), late["vbits"], fin["removed"], codes, plan=plan, index=index, diagnostics=True)


# ---------------------------------------------------------------------------
# 5. apply
# ---------------------------------------------------------------------------
def _apply(slot, vbits, removed, lut, *, plan: TilingPlan, index, diagnostics: bool = False):
    from . import _merge_nb as nb

    core = _core(slot, vbits, plan=plan, index=index)
    if not core.any():  # nothing to relabel
        return np.zeros(core.shape, np.uint8 if diagnostics else np.uint32)
    idx, _ = _compact(core)
    use_comps = removed is not None and removed.any()
    comps = _label_fg(idx)[0] if use_comps else np.empty((0, 0), np.int32)
    if diagnostics:
        out = lut[idx]
        if use_comps:
            out[removed[comps]] = 3
        return out
    out = np.empty(idx.shape, np.uint32)
    nb.apply_lut(idx, comps, removed if use_comps else np.zeros(1, bool), lut, out)
    return out


def _face_totals(faces) -> dict:
    return {k: sum(f[k] for f in faces) for k in ("candidates", "links", "refused")}


def _collect_stats(solve_stats, finals, n_ids, *, strategy: str):
    """Per-face and total statistics; ``n_ids``: the number of merged ids.

    ``solve_stats`` has the per-face list (``"faces"``) or, when the solve
    wrote it to a file, only its sums (``"face_totals"``; ``"faces"`` is
    then None in the result).
    """
    if "face_totals" in solve_stats:  # the list went to a file
        faces, face_sums = None, solve_stats["face_totals"]
    else:
        faces = list(solve_stats.get("faces", []))
        face_sums = _face_totals(faces)
    totals = {
        **face_sums,
        "labels_before": sum(f["n_before"] for f in finals),
        "labels_after": int(n_ids),
        "islands_removed": sum(f["islands_removed"] for f in finals),
    }
    totals.update({k: v for k, v in solve_stats.items() if k not in ("faces", "face_totals")})
    return {"strategy": strategy, "faces": faces, "totals": totals}


# ---------------------------------------------------------------------------
# public entry point
# ---------------------------------------------------------------------------
def _validate_inputs(staged, plan, config, valid):
    if not isinstance(plan, TilingPlan):
        raise ConfigError(f"`plan` must be a TilingPlan, got {type(plan).__name__}")
    if not isinstance(config, MergeConfig):
        raise ConfigError(f"`config` must be a MergeConfig, got {type(config).__name__}")
    if isinstance(staged, (str, os.PathLike)):
        import zarr

        try:
            z = zarr.open_array(store=os.fspath(staged), mode="r")
        except Exception as exc:  # noqa: BLE001 - any zarr failure means a bad staging store
            raise InputError(f"cannot open the staged labels `{os.fspath(staged)}`: {exc}") from None
        if tuple(z.chunks) != tuple(plan.slot_shape):
            raise InputError(
                f"staged labels `{os.fspath(staged)}` have chunks {tuple(z.chunks)}, the plan's slots are "
                f"{plan.slot_shape}",
                hint="stage one chunk per block with the same TilingPlan",
            )
        shape, dtype = tuple(z.shape), np.dtype(z.dtype)
    else:
        shape, dtype = tuple(staged.shape), np.dtype(staged.dtype)
    if shape != tuple(plan.staging_shape):
        raise InputError(
            f"staged labels have shape {shape}, the plan expects {plan.staging_shape}",
            hint="stage with remote_samsing.graph.stage_blocks and the same TilingPlan",
        )
    if not np.issubdtype(dtype, np.unsignedinteger) or dtype.itemsize > 4:
        raise InputError(f"staged labels must be uint8/16/32, got {dtype}")
    sy, sx = plan.slot_shape
    ny, nx = plan.grid_shape
    if not isinstance(staged, (str, os.PathLike)) and staged.chunks != ((sy,) * ny, (sx,) * nx):
        staged = staged.rechunk((sy, sx))
    if valid is not None:
        if tuple(valid.shape) != tuple(plan.shape):
            raise InputError(f"`valid` has shape {tuple(valid.shape)}, the mosaic is {plan.shape}")
        if valid.dtype != bool:
            raise InputError(f"`valid` must be a boolean mask, got {valid.dtype}")
        if valid.chunks != plan.chunks:
            valid = valid.rechunk(plan.chunks)
    if config.strategy == "overlap" and plan.padding == 0 and plan.n_blocks > 1:
        raise ConfigError(
            "merge strategy `overlap` needs padding > 0: blocks without a shared halo give no overlap evidence",
            hint="set padding (e.g. 50) or use merge='min_contact'",
        )
    return staged, valid


def merge_labels(staged, *, plan: TilingPlan, config: MergeConfig, valid=None, reread: bool = True) -> MergeResult:
    """Merge staged block labels across seams; relabel 1..N. Computes nothing.

    Parameters
    ----------
    staged : dask.array.Array or path
        ``plan.staging_shape`` unsigned labels, one ``plan.slot_shape`` chunk
        per block holding that block's local labels for its padded window
        at the slot's top-left corner. A path names such an array in a Zarr
        store (the pipeline's staging store); the tasks that need a block's
        chunk then read it themselves (twice: ``reread`` is implied).
    plan : TilingPlan
    config : MergeConfig
    valid : dask.array.Array of bool, optional
        (H, W) validity mask; labels are 0 where it is False.
    reread : bool
        Read each staged chunk again for the final relabel (through
        ``dask.graph_manipulation.clone``) instead of keeping it in memory
        until the global tables are known. Keep True when ``staged`` is read
        from storage (memory then stays independent of the mosaic size); set
        False when ``staged`` is an expensive lazy computation.

    Returns
    -------
    MergeResult
        Lazy labels, statistics and (optionally) diagnostics.

    Examples
    --------
    >>> import numpy as np, dask.array as da
    >>> from remote_samsing.tiling import TilingPlan
    >>> plan = TilingPlan(shape=(4, 4), tile_size=4, padding=0)
    >>> staged = da.from_array(np.eye(4, dtype=np.uint32), chunks=plan.slot_shape)
    >>> res = merge_labels(staged, plan=plan, config=MergeConfig(strategy="none"))
    >>> res.labels.compute().max()
    np.uint32(1)
    """
    import dask.array as da
    from dask.base import tokenize
    from dask.delayed import Delayed
    from dask.highlevelgraph import HighLevelGraph

    staged, valid = _validate_inputs(staged, plan, config, valid)
    cfg = config
    n_blocks = plan.n_blocks
    ids_list = list(plan.block_ids())
    # a store's path says nothing about its content: such graphs get fresh keys
    fresh = uuid.uuid4().hex if isinstance(staged, (str, os.PathLike)) else None
    token = tokenize(staged, plan, cfg, valid, reread, fresh)
    # The graph is written as one flat dict of tasks. Building it from
    # per-block `dask.delayed` calls merges graph layers pairwise and costs
    # O(blocks²) (34 s for 400 blocks, minutes for 2500); a flat dict is linear.
    g = _FlatGraph(f"rs-merge-{token}")
    stored = isinstance(staged, (str, os.PathLike))
    sources = [] if stored else [staged]
    if stored:
        reread_src = staged = os.fspath(staged)
    elif reread:
        from dask.graph_manipulation import clone

        reread_src = clone(staged)
        sources.append(reread_src)
    else:
        reread_src = staged
    if valid is not None:
        sources.append(valid)

    def chunk(arr, idx):
        if stored:
            return _StoredSlot(arr, tuple(int(i) for i in idx), tuple(plan.slot_shape))
        return g.ref((arr.name,) + tuple(idx))

    # Per block the graph has: summarize, two small items (the part only the
    # faces read, and the part the relabel reads, so each is released as soon
    # as its readers ran), one task for the faces the block owns, one item of
    # the global solve, final, apply. Fewer, fatter tasks: the scheduler's
    # per-task cost dominated a no-op run (issue 4's overhead benchmark).
    early, late = {}, {}
    for idx in ids_list:
        v = chunk(valid, idx) if valid is not None else None
        out = g.task(("summarize",) + idx, _summarize_split, chunk(staged, idx), v, plan=plan, index=idx, cfg=cfg)
        early[idx], late[idx] = g.item(out, 0), g.item(out, 1)

    def owned(idx, offsets):
        offs = [off for off in offsets if _neighbour(plan, idx, off) is not None]
        return offs, [_neighbour(plan, idx, off) for off in offs]

    seam_offsets = _FACE_OFFSETS[:2]
    removed = {idx: None for idx in ids_list}
    faces = []
    if cfg.strategy == "overlap":
        for idx in ids_list:
            offs, nbs = owned(idx, _FACE_OFFSETS)
            faces.append(g.task(("faces",) + idx, _block_faces_overlap, early[idx], [early[n] for n in nbs],
                                plan=plan, index=idx, offsets=offs, cfg=cfg))
    elif cfg.strategy in _REFERENCE:
        if cfg.islands:
            comps = []
            for idx in ids_list:
                offs, nbs = owned(idx, seam_offsets)
                comps.append(g.task(("face-comps",) + idx, _block_faces_comps, early[idx],
                                    [early[n] for n in nbs], offsets=offs))
            pieces = g.task(("islands",), _solve_islands_blocks, comps, n_blocks=n_blocks, min_area=cfg.min_mask_area)
            for k, idx in enumerate(ids_list):
                removed[idx] = g.task(("removed",) + idx, _block_removed, early[idx], g.item(pieces, k),
                                      min_area=cfg.min_mask_area)
        for idx in ids_list:
            offs, nbs = owned(idx, seam_offsets)
            faces.append(g.task(("faces",) + idx, _block_faces_reference, early[idx], removed[idx],
                                [early[n] for n in nbs], [removed[n] for n in nbs], index=idx, neighbours=nbs,
                                offsets=offs, strategy=cfg.strategy, min_contact=int(cfg.min_contact_pixels)))
    if cfg.strategy != "none":
        solved = g.task(("solve",), _solve_blocks, faces, n_blocks=n_blocks, cfg=cfg)
        pieces_of = {idx: g.item(solved, k) for k, idx in enumerate(ids_list)}
        solve_stats = g.item(solved, n_blocks)
    else:
        pieces_of = {idx: None for idx in ids_list}
        solve_stats = {"faces": []}

    finals = {idx: g.task(("final",) + idx, _final_task, late[idx], removed[idx], pieces_of[idx],
                          min_area=cfg.min_mask_area)
              for idx in ids_list}
    # one task ranks every block's merged ids; each relabel gets its block's ranks only
    ranked = g.task(("ranks",), _rank_finals, [finals[idx] for idx in ids_list])
    n_ids = g.item(ranked, n_blocks)

    labels_name = f"rs-merged-labels-{token}"
    for k, idx in enumerate(ids_list):
        g.task((labels_name,) + idx, _apply_task, chunk(reread_src, idx), late[idx], finals[idx],
               g.item(ranked, k), plan=plan, index=idx)
    diag_name = f"rs-merge-diagnostics-{token}"
    if cfg.diagnostics:
        for idx in ids_list:
            g.task((diag_name,) + idx, _apply_codes_task, chunk(reread_src, idx), late[idx], finals[idx],
                   pieces_of[idx], plan=plan, index=idx)
    stats_name = f"rs-merge-stats-{token}"
    g.task((stats_name,), _collect_stats, solve_stats, [finals[idx] for idx in ids_list], n_ids,
           strategy=cfg.strategy)

    # one layer for the inner tasks, one per output (what dask's culling and
    # collections expect), on top of the input arrays' own layers
    from dask.highlevelgraph import MaterializedLayer

    base = HighLevelGraph.merge(*[src.__dask_graph__() for src in sources])
    layers, deps = dict(base.layers), {k: set(v) for k, v in base.dependencies.items()}
    src_layers = {name for src in sources for name in src.__dask_layers__()}
    parts = {name: {} for name in (g.name, labels_name, diag_name, stats_name)}
    for key, task in g.dsk.items():
        parts[key[0] if key[0] in parts else g.name][key] = task
    for name, tasks in parts.items():
        if tasks:
            layers[name] = MaterializedLayer(tasks)
            deps[name] = set(src_layers) | ({g.name} if name != g.name else set())
    hlg = HighLevelGraph(layers, deps)
    labels = da.Array(hlg, labels_name, chunks=plan.chunks, dtype=np.uint32, meta=np.empty((0, 0), np.uint32))
    diagnostics = None
    if cfg.diagnostics:
        diagnostics = da.Array(hlg, diag_name, chunks=plan.chunks, dtype=np.uint8, meta=np.empty((0, 0), np.uint8))
    stats = Delayed((stats_name,), hlg, layer=stats_name)
    return MergeResult(labels=labels, stats=stats, diagnostics=diagnostics)


# ---------------------------------------------------------------------------
# out of core, phase by phase: what pipeline.run uses
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class _Spill:
    """The folder where one out-of-core merge keeps its per-block results.

    Every phase task reads what it needs from here and writes its own
    result here, so the scheduler and the client hold nothing per block
    between phases (their memory then does not grow with the mosaic).
    Files are written under a temporary name and renamed: a task that
    re-runs after a lost worker overwrites a whole file, never half of one.
    No phase removes its inputs (the folder goes once the merge is done):
    the scheduler runs a task again when a lost worker held its result and a
    later task still needs it, also once later phases have run, and it must
    then find its inputs (the largest, the block summaries, are needed until
    the finals anyway).
    """

    root: str

    def path(self, kind: str, index=None) -> str:
        tail = kind if index is None else f"{kind}_{index[0]}_{index[1]}"
        return os.path.join(self.root, tail + ".pkl")

    def save(self, obj, kind: str, index=None) -> None:
        import pickle

        path = self.path(kind, index)
        tmp = f"{path}.{uuid.uuid4().hex[:8]}.partial"
        with open(tmp, "wb") as f:
            pickle.dump(obj, f, protocol=5)
        os.replace(tmp, path)

    def load(self, kind: str, index=None):
        import pickle

        with open(self.path(kind, index), "rb") as f:
            return pickle.load(f)


def _owned(plan: TilingPlan, index, offsets):
    offs = [off for off in offsets if _neighbour(plan, index, off) is not None]
    return offs, [_neighbour(plan, index, off) for off in offs]


def _phase_summarize(index, *, staged: str, spill: _Spill, plan: TilingPlan, cfg: MergeConfig) -> None:
    _save_summary(_StoredSlot(staged, tuple(index), tuple(plan.slot_shape)).load(), spill, plan=plan,
                  index=tuple(index), cfg=cfg)


def _has_summary(spill: _Spill, index) -> bool:
    return os.path.exists(spill.path("early", index)) and os.path.exists(spill.path("late", index))


def _save_summary(slot, spill: _Spill, *, plan: TilingPlan, index, cfg: MergeConfig) -> None:
    early, late = _summarize_split(slot, None, plan=plan, index=index, cfg=cfg)
    # "late" last: the summary phase checks both
    spill.save(early, "early", index)
    spill.save(late, "late", index)


def _workdir_token(plan: TilingPlan, cfg: MergeConfig) -> str:
    from dask.base import tokenize

    return tokenize(plan, cfg)


def prepare_workdir(workdir: str | os.PathLike, *, plan: TilingPlan, config: MergeConfig) -> None:
    """Create the spill folder of :func:`merge_stored`, keeping what it holds if it was made for the
    same plan and configuration (block summaries from :func:`stage_summary`), emptying it otherwise."""
    import shutil

    root = os.path.abspath(os.fspath(workdir))
    stamp = os.path.join(root, "config.token")
    token = _workdir_token(plan, config)
    if os.path.isdir(root):
        try:
            with open(stamp) as f:
                same = f.read() == token
        except OSError:
            same = False
        if same:
            return
        shutil.rmtree(root)
    os.makedirs(root)
    tmp = f"{stamp}.{uuid.uuid4().hex[:8]}.partial"
    with open(tmp, "w") as f:
        f.write(token)
    os.replace(tmp, stamp)


def stage_summary(slot: np.ndarray, *, plan: TilingPlan, index, config: MergeConfig,
                  workdir: str | os.PathLike) -> None:
    """Summarize one block's staged labels for :func:`merge_stored` while they are in memory.

    The pipeline calls this in the task that segmented the block, right
    after staging its chunk: the merge then skips its first phase for that
    block instead of reading the chunk back (one task and one read fewer per
    block). ``workdir`` must have been made by :func:`prepare_workdir` with
    the same plan and configuration.

    Parameters
    ----------
    slot : ndarray
        The block's staged chunk (``plan.slot_shape``, local labels).
    plan : TilingPlan
    index : (int, int)
    config : MergeConfig
    workdir : path
    """
    _save_summary(np.asarray(slot), _Spill(os.path.abspath(os.fspath(workdir))), plan=plan,
                  index=tuple(int(i) for i in index), cfg=config)


def _removed_from_spill(spill: _Spill, info, index, cfg: MergeConfig):
    """The reference strategies' island flags of one block (solved before their faces)."""
    if cfg.strategy in _REFERENCE and cfg.islands:
        return _block_removed(info, spill.load("islands", index), min_area=cfg.min_mask_area)
    return None


def _phase_faces(index, *, spill: _Spill, plan: TilingPlan, cfg: MergeConfig) -> None:
    index = tuple(index)
    own = spill.load("early", index)
    if cfg.strategy == "overlap":
        offs, nbs = _owned(plan, index, _FACE_OFFSETS)
        out = _block_faces_overlap(own, [spill.load("early", n) for n in nbs], plan=plan, index=index, offsets=offs,
                                   cfg=cfg)
    else:
        offs, nbs = _owned(plan, index, _FACE_OFFSETS[:2])
        others = [spill.load("early", n) for n in nbs]
        out = _block_faces_reference(own, _removed_from_spill(spill, own, index, cfg), others,
                                     [_removed_from_spill(spill, o, n, cfg) for o, n in zip(others, nbs)],
                                     index=index, neighbours=nbs, offsets=offs, strategy=cfg.strategy,
                                     min_contact=int(cfg.min_contact_pixels))
    spill.save(out, "faces", index)


def _face_offsets(cfg: MergeConfig):
    """The neighbours whose summaries a block's faces read, or None where the faces wait for a global step
    (the reference strategies' island solve) or there are none (``"none"``)."""
    if cfg.strategy == "none" or (cfg.strategy in _REFERENCE and cfg.islands):
        return None
    return _FACE_OFFSETS if cfg.strategy == "overlap" else _FACE_OFFSETS[:2]


def stage_faces(index, *, plan: TilingPlan, config: MergeConfig, workdir: str | os.PathLike) -> bool:
    """Compute one block's seam faces for :func:`merge_stored` ahead of the merge, if their inputs are there.

    The faces a block owns read only its own and its neighbours' summaries
    (:func:`stage_summary`), so they can run as soon as those blocks are
    staged, while other blocks are still being segmented; the merge then
    skips its faces phase for the block. The pipeline starts them that way
    (:func:`face_schedule`), on workers that would otherwise idle behind the
    last blocks. Nothing is written when a summary is missing (the merge
    computes those faces itself) or when the strategy's faces need a global
    step first (see :func:`face_schedule`).

    Parameters
    ----------
    index : (int, int)
    plan : TilingPlan
    config : MergeConfig
    workdir : path
        Made by :func:`prepare_workdir` with the same plan and configuration.

    Returns
    -------
    bool
        Whether the block's faces were written.
    """
    offs = _face_offsets(config)
    if offs is None:
        return False
    index = tuple(int(i) for i in index)
    spill = _Spill(os.path.abspath(os.fspath(workdir)))
    _, nbs = _owned(plan, index, offs)
    if not all(os.path.exists(spill.path("early", b)) for b in [index, *nbs]):
        return False
    _phase_faces(index, spill=spill, plan=plan, cfg=config)
    return True


def face_schedule(plan: TilingPlan, config: MergeConfig):
    """A tracker of which blocks' faces (:func:`stage_faces`) are ready as blocks get staged.

    Returns ``ready(index) -> list of block indices``: call it once per
    staged block; it returns the blocks whose faces that block completed
    (the block itself and those owning a face with it, each once). None
    when the configuration's faces cannot run ahead of the merge: strategy
    ``"none"``, or a reference strategy with ``islands`` (its faces need
    the global island solve).
    """
    offs = _face_offsets(config)
    if offs is None:
        return None
    ny, nx = plan.grid_shape
    # a byte per block, not a set of tuples: the client's memory stays small on huge mosaics
    done = np.zeros((ny, nx), bool)
    sent = np.zeros((ny, nx), bool)

    def ready(index) -> list:
        index = tuple(int(i) for i in index)
        done[index] = True
        out = []
        # the faces this block completes: its own, and those of the blocks owning a face with it
        for cand in [index] + [(index[0] - dy, index[1] - dx) for dy, dx in offs]:
            if not (0 <= cand[0] < ny and 0 <= cand[1] < nx) or sent[cand]:
                continue
            if done[cand] and all(done[n] for n in _owned(plan, cand, offs)[1]):
                sent[cand] = True
                out.append(cand)
        return out

    return ready


def _phase_comps(index, *, spill: _Spill, plan: TilingPlan) -> None:
    index = tuple(index)
    offs, nbs = _owned(plan, index, _FACE_OFFSETS[:2])
    out = _block_faces_comps(spill.load("early", index), [spill.load("early", n) for n in nbs], offsets=offs)
    spill.save(out, "comps", index)


def _phase_solve_islands(_, *, spill: _Spill, plan: TilingPlan, cfg: MergeConfig) -> None:
    ids = list(plan.block_ids())
    pieces = _solve_islands_blocks([spill.load("comps", i) for i in ids], n_blocks=plan.n_blocks,
                                   min_area=cfg.min_mask_area)
    for i, piece in zip(ids, pieces):
        spill.save(piece, "islands", i)


def _write_json(path: str, data) -> None:
    import json

    tmp = f"{path}.{uuid.uuid4().hex[:8]}.partial"
    with open(tmp, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)


def _phase_solve(_, *, spill: _Spill, plan: TilingPlan, cfg: MergeConfig, faces_path: str | None) -> dict:
    ids = list(plan.block_ids())
    *pieces, stats = _solve_blocks([spill.load("faces", i) for i in ids], n_blocks=plan.n_blocks, cfg=cfg)
    for i, piece in zip(ids, pieces):
        spill.save(piece, "pieces", i)
    if faces_path is not None:
        # per-face statistics grow with the mosaic: to a file, not through the client
        _write_json(faces_path, stats["faces"])
        stats["face_totals"] = _face_totals(stats.pop("faces"))
    return stats


def _phase_final(index, *, spill: _Spill, cfg: MergeConfig) -> dict:
    index = tuple(index)
    late = spill.load("late", index)
    pieces = spill.load("pieces", index) if cfg.strategy != "none" else None
    fin = _final_task(late, _removed_from_spill(spill, late, index, cfg), pieces, min_area=cfg.min_mask_area)
    spill.save({"idx": fin["idx"], "removed": fin["removed"]}, "final", index)
    # unique ids and the inverse (uint32): what the ranking needs, computed here in parallel
    ug, inv = np.unique(fin["gids"], return_inverse=True)
    spill.save((ug, inv.astype(np.uint32)), "gids", index)
    return {"n_before": fin["n_before"], "islands_removed": fin["islands_removed"]}


def _phase_ranks(_, *, spill: _Spill, plan: TilingPlan) -> int:
    """Global sequential ids: every block's merged ids → their rank among all (1..N), per block."""
    ids = list(plan.block_ids())
    *ranks, n_ids = _rank_gids([spill.load("gids", i) for i in ids])
    for i, r in zip(ids, ranks):
        spill.save(r, "ranks", i)
    return n_ids


def _phase_apply(index, *, staged: str, spill: _Spill, plan: TilingPlan, sink) -> int:
    index = tuple(index)
    late, fin, ranks = spill.load("late", index), spill.load("final", index), spill.load("ranks", index)
    lut = np.zeros(late["n_idx"], np.uint32)
    lut[fin["idx"]] = ranks
    if late["present"].size:
        slot = _StoredSlot(staged, index, tuple(plan.slot_shape)).load()
        labels = _apply(slot, late["vbits"], fin["removed"], lut, plan=plan, index=index)
    else:  # no label in the core (nodata, nothing found): no need to read the chunk
        labels = np.zeros(plan.core_window(index).shape, np.uint32)
    sink(labels, plan.core_window(index))
    return 1


def _call(func, _item):
    """A one-item phase running ``func()``."""
    return func()


def _thread_map(threads: int):
    """A ``map_blocks`` for :func:`merge_stored` without a cluster: a thread pool."""

    def map_blocks(func, items, *, name: str):
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=max(1, int(threads))) as pool:
            return list(pool.map(func, items))

    return map_blocks


def merge_stored(
    staged: str | os.PathLike,
    *,
    plan: TilingPlan,
    config: MergeConfig,
    workdir: str | os.PathLike,
    sink,
    map_blocks=None,
    faces_path: str | os.PathLike | None = None,
    map_phases=None,
    prepare_sink=None,
) -> dict:
    """Merge staged block labels across seams and hand each merged block to ``sink``, out of core.

    The same merge as :func:`merge_labels` (same labels, same statistics),
    run phase by phase instead of as one task graph: per block, summarize →
    faces → (global solve) → final ids → (global ranks) → relabel. Every
    per-block result is spilled to ``workdir`` and read back by the next
    phase, so nothing per block is held between phases by the scheduler,
    the client or the workers: with a bounded ``map_blocks`` (the pipeline
    passes :func:`remote_samsing.cluster.run_in_waves`) memory stays flat as
    the mosaic grows. The two global steps hold arrays of seam fragments
    and of merged ids (never pixels). Blocks already summarized
    (:func:`stage_summary`) or whose faces were already computed
    (:func:`stage_faces`) in ``workdir`` skip those phases.

    Parameters
    ----------
    staged : path
        A Zarr array of ``plan.staging_shape`` with one ``plan.slot_shape``
        chunk per block (the pipeline's ``staging/labels.zarr``).
    plan : TilingPlan
    config : MergeConfig
    workdir : path
        A folder for the spilled per-block results; created (see
        :func:`prepare_workdir`: block summaries already there from
        :func:`stage_summary` are used), and removed when the merge finished.
    sink : callable
        ``sink(labels, window)`` receives each block's merged (core) labels,
        uint32 1..N, and its :class:`~remote_samsing.tiling.Window` in the
        mosaic; called in the worker that relabelled the block, so it must
        be picklable (e.g. :class:`remote_samsing.outputs.LabelSink`).
    map_blocks : callable, optional
        ``map_blocks(func, items, name=...)`` → ``[func(i) for i in items]``,
        run anywhere; default: two threads in this process.
    faces_path : path, optional
        Write the per-face statistics (a JSON list) here instead of
        returning them: they grow with the mosaic (4 faces per block), and
        the client then only receives their sums (``"faces"`` is None).
    map_phases : callable, optional
        ``map_phases([(name, func, items[, after]), ...])`` → ``(results,
        seconds)``: runs the phases in order, each once the phases it waits
        for have finished (``after``: their names; default, the phase just
        before), and returns each phase's ``[func(i) for i in items]`` and
        wall time by name. Given, it replaces ``map_blocks``: the pipeline
        passes :func:`remote_samsing.cluster.run_in_phases`, which chains
        small phases on the scheduler without round trips to the client in
        between. A phase may run again after later ones (a lost worker's
        result): none removes its inputs.
    prepare_sink : callable, optional
        Called once with no argument (on a worker; picklable) before any
        block reaches ``sink``; chained, beside the global steps (e.g. the
        ``create`` of :func:`remote_samsing.outputs.plan_label_store`).

    Returns
    -------
    dict
        Merge statistics, as ``merge_labels(...).stats`` computes them, and
        ``"phase_seconds"``: wall time of each phase.
    """
    import shutil

    staged, _ = _validate_inputs(os.fspath(staged), plan, config, None)
    if not callable(sink):
        raise ConfigError(f"`sink` must be callable as sink(labels, window), got {type(sink).__name__}")
    cfg = config
    run = map_blocks or _thread_map(2)
    root = os.path.abspath(os.fspath(workdir))
    prepare_workdir(root, plan=plan, config=cfg)
    spill = _Spill(root)
    import functools

    ids = list(plan.block_ids())
    # Every phase reads what the one before spilled; the item lists are known
    # now (blocks summarized, or whose faces were computed, while blocks were
    # staged skip those phases), so the phases can be handed over at once.
    phases = [("summarize", functools.partial(_phase_summarize, staged=staged, spill=spill, plan=plan, cfg=cfg),
               [i for i in ids if not _has_summary(spill, i)])]
    faces_file = os.path.abspath(os.fspath(faces_path)) if faces_path is not None else None
    if faces_file is not None and cfg.strategy == "none":
        _write_json(faces_file, [])
    if cfg.strategy in _REFERENCE and cfg.islands:
        phases += [("comps", functools.partial(_phase_comps, spill=spill, plan=plan), ids),
                   ("islands", functools.partial(_phase_solve_islands, spill=spill, plan=plan, cfg=cfg), [0])]
    if cfg.strategy != "none":
        phases += [("faces", functools.partial(_phase_faces, spill=spill, plan=plan, cfg=cfg),
                    [i for i in ids if not os.path.exists(spill.path("faces", i))]),
                   ("solve", functools.partial(_phase_solve, spill=spill, plan=plan, cfg=cfg, faces_path=faces_file),
                    [0])]
    phases += [("final", functools.partial(_phase_final, spill=spill, cfg=cfg), ids),
               ("ids", functools.partial(_phase_ranks, spill=spill, plan=plan), [0])]
    relabel = ("relabel", functools.partial(_phase_apply, staged=staged, spill=spill, plan=plan, sink=sink), ids)
    if prepare_sink is not None:
        # waits for nothing: chained (map_phases), it runs beside the global steps
        phases += [("sink", functools.partial(_call, prepare_sink), [0], ()), relabel + (("ids", "sink"),)]
    else:
        phases.append(relabel)
    if map_phases is not None:
        named = []
        for name, func, items, *after in phases:  # task names on the dashboard: merge-<phase>
            named.append((f"merge-{name}", func, items, *[tuple(f"merge-{a}" for a in w) for w in after]))
        results, seconds = map_phases(named)
        seconds = {name[len("merge-"):]: v for name, v in seconds.items()}
    else:
        results, seconds = [], {}
        for name, func, items, *_ in phases:  # in order: each waits for what is before it
            t0 = time.perf_counter()
            results.append(run(func, items, name=f"merge-{name}"))
            seconds[name] = time.perf_counter() - t0
    out = {p[0]: r for p, r in zip(phases, results)}
    timings = {p[0]: round(seconds.get(p[0], 0.0), 3) for p in phases}
    solve_stats = out["solve"][0] if "solve" in out else {"faces": []}
    if faces_file is not None and cfg.strategy == "none":
        solve_stats = {"face_totals": _face_totals([])}
    finals, n_ids, done = out["final"], out["ids"][0], out["relabel"]
    if sum(done) != len(ids):
        from .exceptions import RemoteSamsingError

        # never let a partial product look complete
        raise RemoteSamsingError(f"the merge relabelled {sum(done)} of {len(ids)} blocks")
    shutil.rmtree(root, ignore_errors=True)
    stats = _collect_stats(solve_stats, finals, int(n_ids), strategy=cfg.strategy)
    stats["phase_seconds"] = timings
    return stats
