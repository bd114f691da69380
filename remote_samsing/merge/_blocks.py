"""Per-block steps of the merge: summaries, faces, final ids, relabel.

Every function here sees one block (its staged chunk, or the small summaries
of it and its neighbours) and never the whole mosaic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .._arrays import unique, unique_pairs
from .._files import open_zarr_array
from ..tiling import TilingPlan, Window, block_label_offset
from ._config import MergeConfig
from ._parts import block_parts, part_map

# 4-connectivity, as the reference's post-processing
_CROSS = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], bool)
_SIDES = ("top", "bottom", "left", "right")
#: Neighbour offsets whose face a block owns (the other four belong to the neighbour).
FACE_OFFSETS = ((0, 1), (1, 0), (1, 1), (1, -1))
#: The two seam faces (right, down) the reference strategies read.
SEAM_OFFSETS = FACE_OFFSETS[:2]
_FACE_KIND = {(0, 1): "x", (1, 0): "y", (1, 1): "xy", (1, -1): "yx"}
# what the faces read of a block's summary, and what the final ids and the relabel read
_EARLY = ("offset", "edges", "comp_edges", "cand", "seam_comps", "seam_sizes", "comp_sizes", "part_edges")
_LATE = ("index", "offset", "values", "n_idx", "present", "label_comp", "comp_sizes", "parts")


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------
def _intersect(a: Window, b: Window) -> Window:
    return Window(max(a.y0, b.y0), min(a.y1, b.y1), max(a.x0, b.x0), min(a.x1, b.x1))


def _neighbour(plan: TilingPlan, index, off):
    iy, ix = index[0] + off[0], index[1] + off[1]
    ny, nx = plan.grid_shape
    if 0 <= iy < ny and 0 <= ix < nx:
        return (iy, ix)
    return None


def owned_faces(plan: TilingPlan, index, offsets):
    """The offsets in ``offsets`` that have a neighbour of ``index``, and those neighbours."""
    offs = [off for off in offsets if _neighbour(plan, index, off) is not None]
    return offs, [_neighbour(plan, index, off) for off in offs]


def _offset(plan: TilingPlan, index) -> np.uint64:
    return np.uint64(block_label_offset(plan.block_id(index)))


def _compact(core: np.ndarray):
    """Block labels as small indices (identity unless local labels are sparse)."""
    mx = int(core.max()) if core.size else 0
    if mx <= 4 * core.size + 1024:
        return core, None
    values, inv = unique(core, return_inverse=True)
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


@dataclass(frozen=True)
class StoredSlot:
    """One block's staged chunk in a Zarr store, read by the task that needs it.

    Passed as a plain argument instead of a separate read task: each task
    costs the scheduler about a millisecond, which bounds a fast merge.
    """

    path: str
    index: tuple[int, int]
    slot_shape: tuple[int, int]

    def load(self) -> np.ndarray:
        sy, sx = self.slot_shape
        iy, ix = self.index
        z = open_zarr_array(self.path, mode="r")
        return z[iy * sy : (iy + 1) * sy, ix * sx : (ix + 1) * sx]


def load_slot(slot):
    """The staged chunk: read now if it is a :class:`StoredSlot`, else as given."""
    return slot.load() if isinstance(slot, StoredSlot) else slot


def _cat64(parts) -> np.ndarray:
    return np.concatenate(parts).astype(np.uint64, copy=False) if parts else np.empty(0, np.uint64)


# ---------------------------------------------------------------------------
# summary: the one step besides the relabel that reads a block's pixels
# ---------------------------------------------------------------------------
def _summarize(slot, valid, *, plan: TilingPlan, index, cfg: MergeConfig):
    from .. import _merge_nb as nb

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
        lc_l, lc_c, _ = unique_pairs(out_l[:n].astype(np.uint64), out_c[:n].astype(np.uint64))
        info["comp_sizes"] = comp_sizes
        info["label_comp"] = (lc_l.astype(np.int64), lc_c.astype(np.int64))
        info["comp_edges"] = {s: _edge_line(comps, s) for s in sides}
        seam = unique(np.concatenate([info["comp_edges"][s] for s in sides])) if sides else np.empty(0, np.int32)
        seam = seam[seam > 0].astype(np.int64)
        info["seam_comps"] = seam
        info["seam_sizes"] = comp_sizes[seam]
    if cfg.absorb:
        info["cand"] = _enclosure_candidates(idx, values, areas, plan, index, cfg)
    if cfg.splits:
        info["part_edges"], info["parts"] = _block_parts(idx, values, info, comps if cfg.islands else None,
                                                         plan=plan, index=index, sides=sides, cfg=cfg, empty=empty)
    strips = _shared_strips(slot, plan=plan, index=index) if cfg.overlapping else None
    return info, strips, vbits


def _shared_strips(slot, *, plan: TilingPlan, index) -> dict:
    """The block's labels in the region its padded window shares with each neighbour's, packed."""
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
    return strips


def _block_parts(idx, values, info, comps, *, plan, index, sides, cfg: MergeConfig, empty: bool):
    """The block's part ids along its seam sides and its part records for the split (none for an
    empty core)."""
    if empty:
        return {s: np.zeros(_edge_line(idx, s).size, np.int32) for s in sides}, None
    cand_idx = None
    if "cand" in info:
        c = info["cand"]
        cand_idx = _to_idx(np.concatenate([c["local"], c["nb_m"]]), values)
    parts, records = block_parts(idx, comps, plan=plan, index=index, sides=sides, n_idx=info["n_idx"],
                                 min_area=cfg.split_min_area, cand_idx=cand_idx)
    return {s: _edge_line(parts, s) for s in sides}, records


def summarize(slot, valid, *, plan: TilingPlan, index, cfg: MergeConfig):
    """:func:`_summarize`, split into what the faces read and what the relabel reads."""
    info, strips, vbits = _summarize(load_slot(slot), valid, plan=plan, index=index, cfg=cfg)
    early = {k: info[k] for k in _EARLY if k in info}
    early["strips"] = strips
    late = {k: info[k] for k in _LATE if k in info}
    late["vbits"] = vbits
    return early, late


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

    if empty:  # no foreground: no components (a read-only view of one zero, no memory to fill)
        return np.broadcast_to(np.int32(0), idx.shape), 0
    comps, n = ndimage.label(idx > 0, structure=_CROSS)
    return comps.astype(np.int32, copy=False), int(n)


def _enclosure_candidates(idx, values, areas, plan, index, cfg):
    """Small labels whose in-block contacts are only other labels (or seams)."""
    from .. import _merge_nb as nb

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
    cand = unique(pl)
    cand = cand[~bad[cand]]
    keep = np.isin(pl, cand) & (pm > 0)
    nl, nm, _ = unique_pairs(pl[keep].astype(np.uint64), pm[keep].astype(np.uint64))
    return {
        "local": _to_local(cand, values),
        "area": areas[cand].astype(np.int64),
        "nb_l": _to_local(nl.astype(np.int64), values),
        "nb_m": _to_local(nm.astype(np.int64), values),
    }


# ---------------------------------------------------------------------------
# faces: the links between two neighbouring blocks (the seam decision)
# ---------------------------------------------------------------------------
def _seam_sides(off):
    return ("right", "left") if off == (0, 1) else ("bottom", "top")


def _seam_line_pairs(info_a, info_b, key: str, *, off):
    """Pairs of ids facing each other across one seam line (``info[key]``: per side, the ids along the
    block's core edge, 0 = none), as gids, with their contact counts."""
    sa, sb = _seam_sides(off)
    ea, eb = info_a[key][sa], info_b[key][sb]
    both = (ea > 0) & (eb > 0)
    ga = info_a["offset"] | ea[both].astype(np.uint64)
    return unique_pairs(ga, info_b["offset"] | eb[both].astype(np.uint64))


def _face_seam(info_a, info_b, *, off, want_comps: bool, want_adj: bool):
    """Foreground-component links and small-label contacts across one seam line."""
    sa, sb = _seam_sides(off)
    oa, ob = info_a["offset"], info_b["offset"]
    comp_pairs = adj = None
    if want_comps:
        comp_pairs = _seam_line_pairs(info_a, info_b, "comp_edges", off=off)[:2]
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
        s, d, _ = unique_pairs(np.concatenate(src), np.concatenate(dst))
        adj = (s, d)
    return comp_pairs, adj


def _face_stats(a, b, off, **extra) -> dict:
    return {"blocks": [list(a), list(b)], "kind": _FACE_KIND[off], "candidates": 0, "links": 0, "refused": 0,
            **extra}


def _shared_views(strips_a, strips_b, *, plan: TilingPlan, a, b, off):
    """Both blocks' labels in the region they share, and the labels each has in its own core part
    of it (the candidates); None when one side saw no labels there."""
    if strips_a[off][2] is None or strips_b[(-off[0], -off[1])][2] is None:
        return None
    la = _unpack(strips_a[off])
    lb = _unpack(strips_b[(-off[0], -off[1])])
    shared = _intersect(plan.padded_window(a), plan.padded_window(b))
    pres_a = unique(la[_intersect(plan.core_window(a), shared).relative_to(shared).slices])
    pres_b = unique(lb[_intersect(plan.core_window(b), shared).relative_to(shared).slices])
    return la, lb, pres_a, pres_b


def _face_overlap(strips_a, strips_b, *, plan: TilingPlan, a, b, off, min_iou: float):
    """Candidate pairs and IoU links inside the region both blocks saw."""
    stats = _face_stats(a, b, off)
    empty = (np.empty(0, np.uint64), np.empty(0, np.uint64))
    views = _shared_views(strips_a, strips_b, plan=plan, a=a, b=b, off=off)
    if views is None:
        return empty, stats
    la, lb, pres_a, pres_b = views
    both = (la > 0) & (lb > 0)
    pa, pb, inter = unique_pairs(la[both].astype(np.uint64), lb[both].astype(np.uint64))
    if pa.size == 0:
        return empty, stats
    cand = np.isin(pa, pres_a) & np.isin(pb, pres_b)
    ua, na = unique(la[la > 0], return_counts=True)
    ub, nb_ = unique(lb[lb > 0], return_counts=True)
    area_a = na[np.searchsorted(ua, pa)]
    area_b = nb_[np.searchsorted(ub, pb)]
    iou = inter / (area_a + area_b - inter)
    link = cand & (iou > min_iou)
    stats.update(candidates=int(cand.sum()), links=int(link.sum()), refused=int((cand & ~link).sum()))
    oa, ob = _offset(plan, a), _offset(plan, b)
    return (oa | pa[link], ob | pb[link]), stats


def _face_objects(own, other, *, plan: TilingPlan, a, b, off, strategy: str):
    """A face beside a recut block, in the merge of the recut blocks: labels that overlap in the shared
    region link where they stand for one object of the first merge (their summaries' ``objects``), so
    the recut moves boundaries and no link joins what the first merge kept apart."""
    from ._recut import _lookup

    # the statistics the strategy's other faces have (every face's the same keys)
    extra = {"disagreed": 0, "split_by_a": 0, "split_by_b": 0} if strategy == "overlap" else {}
    stats = _face_stats(a, b, off, **extra)
    empty = (np.empty(0, np.uint64), np.empty(0, np.uint64))
    views = _shared_views(own["strips"], other["strips"], plan=plan, a=a, b=b, off=off)
    if views is None:
        return empty, stats
    la, lb, pres_a, pres_b = views
    both = (la > 0) & (lb > 0)
    pa, pb, _ = unique_pairs(la[both].astype(np.uint64), lb[both].astype(np.uint64))
    cand = np.isin(pa, pres_a) & np.isin(pb, pres_b)  # labels in their own core's part, as the evidence's
    pa, pb = pa[cand], pb[cand]
    oa, ob = _lookup(own["objects"], pa.astype(np.int64)), _lookup(other["objects"], pb.astype(np.int64))
    link = (oa == ob) & (oa > 0)
    stats.update(candidates=int(pa.size), links=int(link.sum()), refused=int((~link).sum()))
    return (_offset(plan, a) | pa[link], _offset(plan, b) | pb[link]), stats


def _runs(labels: np.ndarray):
    """4-connected runs of equal non-zero labels: each label's pieces as one window sees them."""
    runs = part_map(labels)
    n = int(runs.max()) if runs.size else 0
    of = np.zeros(n + 1, labels.dtype)
    of[runs.ravel()] = labels.ravel()
    return runs, of, np.bincount(runs.ravel(), minlength=n + 1)


def _exclusions(pieces: np.ndarray, labels: np.ndarray):
    """Labels of one side that a single piece of the other side overlaps, grouped per piece
    (only pieces that overlap two or more): ``(member labels, group index)``."""
    pu, lu, _ = unique_pairs(pieces.astype(np.uint64), labels.astype(np.uint64))
    first = np.ones(pu.size, bool)
    first[1:] = pu[1:] != pu[:-1]
    group = np.cumsum(first) - 1
    size = np.bincount(group)
    keep = size[group] >= 2
    _, local = np.unique(group[keep], return_inverse=True)
    return lu[keep], local.astype(np.int64), int(keep.any() and local.max() + 1)


def _whole_cells(cell, n_cells: int, jitter: int, *, open_sides) -> np.ndarray:
    """Cells (numbered ``0..n_cells - 1`` in ``cell``, -1 elsewhere) that hold a ``(2 jitter + 1)``-px
    square: thicker than boundary jitter.

    ``open_sides`` (top, bottom, left, right): the region's sides where a window's view ends. Cells
    extend beyond those, since what lies there is unseen, not a boundary; at the mosaic's border they end.
    """
    from scipy import ndimage

    j, (h, w) = jitter, cell.shape
    grown = np.pad(cell, j, mode="edge")
    for side, is_open in zip(((slice(0, j), slice(None)), (slice(h + j, None), slice(None)),
                              (slice(None), slice(0, j)), (slice(None), slice(w + j, None))), open_sides):
        if not is_open:
            grown[side] = -2
    size = 2 * j + 1
    lo = ndimage.minimum_filter(grown, size=size, mode="constant", cval=-2)[j : j + h, j : j + w]
    hi = ndimage.maximum_filter(grown, size=size, mode="constant", cval=-2)[j : j + h, j : j + w]
    inner = (lo == hi) & (cell >= 0)
    out = np.zeros(n_cells, bool)
    out[cell[inner]] = True
    return out


def _pair_keys(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """One uint64 per ``(a, b)`` pair of ids below 2**32 (piece ids, block-local labels)."""
    return (a.astype(np.uint64) << np.uint64(32)) | b.astype(np.uint64)


def _against_other_label(piece, other_label, sel, n_pieces: int) -> np.ndarray:
    """Per pair: its piece also holds a selected cell of a label of the other side other than the pair's."""
    keys = unique(_pair_keys(piece[sel], other_label[sel]))
    per_piece = np.bincount((keys >> np.uint64(32)).astype(np.int64), minlength=n_pieces)
    return per_piece[piece] - np.isin(_pair_keys(piece, other_label), keys) > 0


def _view_edge(shared: Window, padded: Window, shape) -> np.ndarray:
    """Pixels of the shared region on the sides where the window ``padded`` ends inside the mosaic."""
    edge = np.zeros(shared.shape, bool)
    if shared.y0 == padded.y0 > 0:
        edge[0] = True
    if shared.y1 == padded.y1 < shape[0]:
        edge[-1] = True
    if shared.x0 == padded.x0 > 0:
        edge[:, 0] = True
    if shared.x1 == padded.x1 < shape[1]:
        edge[:, -1] = True
    return edge


def _cut_by_view(runs, edge: np.ndarray, n: int) -> np.ndarray:
    """Per piece: it reaches the side where its own window's view ends."""
    cut = np.zeros(n, bool)
    cut[runs[edge]] = True
    return cut


def _disagreements(ra, rb, pa, pb, fa, fb, inter, area_a, area_b, *, jitter: int, plan: TilingPlan, a, b
                   ) -> np.ndarray:
    """Per piece pair (cell): whether either piece holds a cell that the other side gives to another
    of its labels and that is more than boundary jitter: thicker than ``2 jitter`` px, or the whole
    of a piece of at least ``(2 jitter + 1)**2`` px that reaches the side where its own window's view
    ends (that window saw no more of it, so its width says nothing about jitter)."""
    every = np.ones(pa.size, bool)
    if not (_against_other_label(pa, fb, every, area_a.size) | _against_other_label(pb, fa, every, area_b.size)).any():
        return np.zeros(pa.size, bool)  # the windows agree here: nothing to weigh
    pad_a, pad_b = plan.padded_window(a), plan.padded_window(b)
    shared = _intersect(pad_a, pad_b)
    cut_a = _cut_by_view(ra, _view_edge(shared, pad_a, plan.shape), area_a.size)
    cut_b = _cut_by_view(rb, _view_edge(shared, pad_b, plan.shape), area_b.size)
    open_sides = (shared.y0 > 0, shared.y1 < plan.shape[0], shared.x0 > 0, shared.x1 < plan.shape[1])
    both = (ra > 0) & (rb > 0)
    cell = np.full(ra.shape, -1, np.int32)  # piece ids come from part_map, int32
    keys = _pair_keys(pa, pb)
    cell[both] = np.searchsorted(keys, _pair_keys(ra[both], rb[both]))
    least = (2 * jitter + 1) ** 2
    whole = (((inter == area_b[pb]) & (area_b[pb] >= least) & cut_b[pb])
             | ((inter == area_a[pa]) & (area_a[pa] >= least) & cut_a[pa]))
    evidence = whole | _whole_cells(cell, keys.size, jitter, open_sides=open_sides)
    return (_against_other_label(pa, fb, evidence, area_a.size)
            | _against_other_label(pb, fa, evidence, area_b.size))


def _face_evidence(strips_a, strips_b, *, plan: TilingPlan, a, b, off, min_iou: float, jitter: int):
    """Links and exclusions from the region both blocks saw, piece by piece.

    Each block's labels are cut into their 4-connected pieces inside the
    shared region. A piece of A and a piece of B whose IoU is above
    ``min_iou`` link their labels: where both windows segmented the same
    object the pieces coincide, whatever the object's shape outside the
    region (two pieces of one label of A may each match a different label of
    B: A saw the connection, outside B's window, that B could not). A piece
    of one side that overlaps two or more labels of the other is a split
    both windows saw: the splitting side's labels become an exclusion group
    that no chain of links may join. A link whose pieces hold more than
    boundary jitter that the other window gives to another label is refused
    (:func:`_disagreements`): the windows group objects differently there.
    """
    stats = _face_stats(a, b, off, disagreed=0, split_by_a=0, split_by_b=0)
    none = {"links": (np.empty(0, np.uint64), np.empty(0, np.uint64)), "weights": np.empty(0),
            "groups": (np.empty(0, np.uint64), np.empty(0, np.int64)), "n_groups": 0,
            "disputed": np.empty(0, np.uint64)}
    views = _shared_views(strips_a, strips_b, plan=plan, a=a, b=b, off=off)
    if views is None:
        return none, stats
    la, lb, pres_a, pres_b = views
    none["views"] = (la, lb)  # the unpacked strips, for the recut; never stored
    ra, of_a, area_a = _runs(la)
    rb, of_b, area_b = _runs(lb)
    both = (ra > 0) & (rb > 0)
    pa, pb, inter = unique_pairs(ra[both].astype(np.int64), rb[both].astype(np.int64))
    if pa.size == 0:
        return none, stats
    iou = inter / (area_a[pa] + area_b[pb] - inter)
    fa, fb = of_a[pa], of_b[pb]
    cand = np.isin(fa, pres_a) & np.isin(fb, pres_b)
    above = cand & (iou > min_iou)
    disputed = above & _disagreements(ra, rb, pa, pb, fa, fb, inter, area_a, area_b, jitter=jitter, plan=plan,
                                      a=a, b=b)
    link = above & ~disputed
    oa, ob = _offset(plan, a), _offset(plan, b)
    ma, ga, n_a = _exclusions(pb, fa)  # a piece of B over several labels of A: A's split
    mb, gb, n_b = _exclusions(pa, fb)  # and the other way round
    stats.update(candidates=int(cand.sum()), links=int(link.sum()), refused=int((cand & ~above).sum()),
                 disagreed=int(disputed.sum()), split_by_a=n_a, split_by_b=n_b)
    return {"links": (oa | fa[link].astype(np.uint64), ob | fb[link].astype(np.uint64)), "weights": iou[link],
            # for the recut, never stored
            "pieces": (of_a, of_b, area_a, area_b, pa, pb, inter), "views": (la, lb),
            "groups": (np.concatenate([oa | ma.astype(np.uint64), ob | mb.astype(np.uint64)]),
                       np.concatenate([ga, gb + n_a])),
            "n_groups": n_a + n_b,
            "disputed": np.concatenate([oa | fa[disputed].astype(np.uint64), ob | fb[disputed].astype(np.uint64)])}, stats


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
    pa, pb, cnt = unique_pairs(ga, gb)
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


def _seam_nodes(info):
    return info["offset"] | info["seam_comps"].astype(np.uint64), info["seam_sizes"]


def _block_cands(info):
    return info["offset"], info["cand"]


def island_flags(info, piece, *, min_area: int):
    """Per foreground component of a block: removed as a small island (the global solve decides those on seams)."""
    removed = info["comp_sizes"] < min_area
    removed[0] = False
    local, flags = piece
    removed[local] = flags
    return removed


def faces_overlap(own, others, *, plan: TilingPlan, index, offsets, cfg: MergeConfig):
    """Every face a block owns: overlap links (and exclusions), and seam contacts for the post-processing."""
    links_a, links_b, stats, comp_a, comp_b, adj_s, adj_d = [], [], [], [], [], [], []
    weights, faces, g_members, g_index, n_groups = [], [], [], [], 0
    part_pairs, disputed, recut = [], [], {}
    for k, (off, other) in enumerate(zip(offsets, others)):
        nb = (index[0] + off[0], index[1] + off[1])
        kw = dict(plan=plan, a=index, b=nb, off=off, min_iou=float(cfg.min_iou))
        ev = None
        if own.get("recut") or other.get("recut"):  # beside a recut block: the first merge's objects link
            (la, lb), st = _face_objects(own, other, plan=plan, a=index, b=nb, off=off, strategy=cfg.strategy)
            if cfg.strategy == "overlap":
                disputed.append(np.empty(0, np.uint64))
                weights.append(np.ones(la.size))
                faces.append(np.full(la.size, k, np.int64))
        elif cfg.strategy == "iou":
            (la, lb), st = _face_overlap(own["strips"], other["strips"], **kw)
        else:
            ev, st = _face_evidence(own["strips"], other["strips"], jitter=int(cfg.jitter), **kw)
            disputed.append(ev["disputed"])
            (la, lb), w = ev["links"], ev["weights"]
            weights.append(w)
            faces.append(np.full(w.size, k, np.int64))
            g_members.append(ev["groups"][0])
            g_index.append(ev["groups"][1] + n_groups)
            n_groups += ev["n_groups"]
        links_a.append(la)
        links_b.append(lb)
        stats.append(st)
        if cfg.recuts and off in SEAM_OFFSETS:
            keys = _recut_keys(own, other, ev, cfg=cfg, **kw)
            if keys is not None:  # the face disagrees: the recut reads its keys
                recut[off] = keys
        if off in ((0, 1), (1, 0)) and cfg.splits:
            part_pairs.append(_seam_line_pairs(own, other, "part_edges", off=off))
        if off in ((0, 1), (1, 0)) and (cfg.islands or cfg.absorb):
            cp, adj = _face_seam(own, other, off=off, want_comps=cfg.islands, want_adj=cfg.absorb)
            if cp is not None:
                comp_a.append(cp[0])
                comp_b.append(cp[1])
            if adj is not None:
                adj_s.append(adj[0])
                adj_d.append(adj[1])
    out = {"links": (_cat64(links_a), _cat64(links_b)), "stats": stats}
    if cfg.recuts:
        out["recut"] = recut
    if cfg.strategy == "overlap":
        out["weights"] = np.concatenate(weights) if weights else np.empty(0)
        out["faces"] = np.concatenate(faces) if faces else np.empty(0, np.int64)
        out["groups"] = (_cat64(g_members), np.concatenate(g_index) if g_index else np.empty(0, np.int64), n_groups)
        out["disputed"] = _cat64(disputed)
    if cfg.islands:
        out["comp_pairs"] = (_cat64(comp_a), _cat64(comp_b))
        out["seam_nodes"] = _seam_nodes(own)
    if cfg.absorb:
        out["adj"] = (_cat64(adj_s), _cat64(adj_d))
        out["cands"] = _block_cands(own)
    if cfg.splits:
        out["part_pairs"] = (_cat64([p[0] for p in part_pairs]), _cat64([p[1] for p in part_pairs]),
                             np.concatenate([p[2] for p in part_pairs]) if part_pairs else np.empty(0, np.int64))
    return out


def _recut_keys(own, other, ev, *, cfg: MergeConfig, plan, a, b, off, min_iou):
    """The face's link keys where the seam recut has something to do on it, else None (``ev``: its overlap
    evidence, if computed)."""
    from ._recut import recut_keys

    if ev is None:
        ev, _ = _face_evidence(own["strips"], other["strips"], plan=plan, a=a, b=b, off=off, min_iou=min_iou,
                               jitter=int(cfg.jitter))
    return recut_keys(ev, own["strips"], other["strips"], plan=plan, a=a, b=b, off=off)


def faces_comps(own, others, *, offsets):
    """Foreground-component links across the seams a block owns (island rule)."""
    pa, pb = [], []
    for off, other in zip(offsets, others):
        cp, _ = _face_seam(own, other, off=off, want_comps=True, want_adj=False)
        pa.append(cp[0])
        pb.append(cp[1])
    return {"comp_pairs": (_cat64(pa), _cat64(pb)), "seam_nodes": _seam_nodes(own)}


def faces_reference(own, rem, others, rems, *, index, neighbours, offsets, strategy, min_contact):
    """The reference's line-contact pairs on the seams a block owns."""
    la, lb, stats = [], [], []
    for off, other, rem_o, nb in zip(offsets, others, rems, neighbours):
        (a, b), st = _face_reference(own, other, rem, rem_o, a=index, b=nb, off=off, strategy=strategy,
                                     min_contact=min_contact)
        la.append(a)
        lb.append(b)
        stats.append(st)
    return {"links": (_cat64(la), _cat64(lb)), "stats": stats}


# ---------------------------------------------------------------------------
# final ids of one block
# ---------------------------------------------------------------------------
def _block_final(info, removed, piece):
    """Surviving block labels (as indices) and their merged pre-relabel ids."""
    present = info["present"]
    n_removed = 0
    if removed is not None and removed.any():
        lc_l, lc_c = info["label_comp"]
        surv = unique(lc_l[~removed[lc_c]])
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


def final_ids(late, removed, pieces, *, min_area: int):
    """Surviving labels of one block and their merged ids (see :func:`_block_final`)."""
    island_piece, merge_piece = pieces if pieces is not None else (None, None)
    if removed is None and island_piece is not None:
        removed = island_flags(late, island_piece, min_area=min_area)
    fin = _block_final(late, removed, merge_piece)
    fin["removed"] = removed
    return fin


# ---------------------------------------------------------------------------
# relabel
# ---------------------------------------------------------------------------
def codes_table(info, piece):
    """The seam-diagnostics code of each of a block's labels (1 linked, 2 absorbed; 0 untouched)."""
    codes = np.zeros(info["n_idx"], np.uint8)
    if piece is not None and piece[0].size:
        codes[_to_idx(piece[0], info["values"])] = piece[2]
    return codes


def apply_table(slot, vbits, removed, lut, *, plan: TilingPlan, index, diagnostics: bool = False, parts=None):
    """A block's core relabelled through ``lut`` (0 on removed islands; code 3 there with ``diagnostics``).

    ``parts``: ``(part ids, values)`` of the parts the split moved, written over the table's values.
    """
    from .. import _merge_nb as nb

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
    else:
        out = np.empty(idx.shape, np.uint32)
        nb.apply_lut(idx, comps, removed if use_comps else np.zeros(1, bool), lut, out)
    if parts is not None:
        pmap = part_map(idx)
        table = np.full(int(pmap.max()) + 1, -1, np.int64)
        table[parts[0]] = parts[1]
        nb.apply_parts(pmap, table, out)
    return out
