"""Recut: move the boundary between two disagreeing windows off the seam line.

Where two neighbouring windows segment their shared strip differently and
their fragments are not linked, the ``overlap`` merge leaves the boundary on
the straight seam, so the tile grid shows. :func:`recut_staged` rewrites the
staged views first, face by face (a block and its right neighbour, a block
and its lower neighbour):

1. the face's links come from the merge's own evidence on the unchanged
   views (:func:`remote_samsing.merge._blocks._face_evidence`);
2. in the part of the shared strip that no other face touches (the core
   rows at least ``padding`` from the cores' ends; the ``2P × 2P`` corner
   squares stay as they are) a cut runs from the seam back to the seam,
   moving at most one pixel per row. It is the minimum-error boundary cut of
   image quilting (Efros & Freeman 2001,
   https://people.eecs.berkeley.edu/~efros/research/quilting/quilting.pdf):
   free where the label left of it and the one right of it are linked, cheap
   where either view has a boundary, dear where it would split a segment;
3. both slots then hold the same mix there: A's labels before the cut, B's
   after. A label of the other view is written in the slot's own ids: the
   slot's label where the two are linked there, else the linked label of
   largest overlap, else a fresh id (one per label and face).

A face's links alone miss objects that the merge joins through a chain of
other faces: two labels that end up in one merged object but whose pieces do
not match at this face would get a cut (and fresh ids) between them, which
puts the boundary back on the seam. Given ``merged``, the labels of a first
``overlap`` merge of the same views, a pair also counts as linked when both
labels' core pixels lie mostly in one merged object.

Where the windows agree every pixel's two labels are linked, so nothing
changes and the ``overlap`` merge of the result is that of the input.

A face's cut depends on its two windows alone, so :func:`recut_block`
recuts one block from its own and its four edge neighbours' windows (what a
task per block does out of core); :func:`recut_staged` is that for every
block.

Limits: the merge links a fresh id to its label only where their pieces
coincide over the whole shared strip; a piece that runs on into a corner
square, where the views still disagree, can fall to IoU <= ``min_iou`` and
leave that stretch of the boundary on the seam. A disagreement without
boundaries across the strip (stripes parallel to the seam's normal) leaves
no cheaper cut than the seam itself.
"""

from __future__ import annotations

import functools

import numpy as np

from .._arrays import unique, unique_pairs
from .._validate import check_int, check_number
from ..exceptions import InputError
from ..tiling import TilingPlan, Window
from ._blocks import _face_evidence, _intersect, _neighbour, _pack, _pair_keys, _runs

__all__ = ["recut_block", "recut_phases", "recut_staged"]

#: Cost of a cut between two pixels: linked labels (or none), a boundary of either view, a split segment.
_FREE, _BOUNDARY, _SPLIT = 0.0, 0.1, 1.0
_LOCAL = np.uint64(0xFFFFFFFF)


def recut_staged(staged: np.ndarray, *, plan: TilingPlan, min_iou: float = 0.5, jitter: int = 2,
                 merged: np.ndarray | None = None) -> np.ndarray:
    """Staged labels with each seam's boundary cut along the views' own boundaries.

    Parameters
    ----------
    staged : ndarray
        ``plan.staging_shape`` non-negative integer labels, one ``plan.slot_shape``
        slot per block (its padded window's local labels at the slot's top left).
    plan : TilingPlan
    min_iou, jitter : float, int
        The ``overlap`` merge's link evidence (see :class:`~remote_samsing.merge.MergeConfig`).
    merged : ndarray, optional
        ``plan.shape`` labels of an ``overlap`` merge of ``staged``: two labels whose core
        pixels lie mostly in one merged object count as linked on every face.

    Returns
    -------
    ndarray
        A recut copy, same shape and dtype; equal to ``staged`` where windows agree.

    Examples
    --------
    >>> from remote_samsing.testing import stage_windows
    >>> plan = TilingPlan(shape=(16, 16), tile_size=8, padding=2)
    >>> staged = stage_windows(plan, lambda w: np.ones(w.shape, int))
    >>> bool((recut_staged(staged, plan=plan) == staged).all())
    True
    """
    staged = _check_staged(staged, plan)
    ids = _merged_ids(staged, merged, plan) if merged is not None else None
    out = staged.copy()
    for index in plan.block_ids():
        windows = {n: _padded(staged, plan, n) for n in [index, *_edge_neighbours(plan, index)]}
        _padded(out, plan, index)[...] = recut_block(index, windows, plan=plan, min_iou=min_iou, jitter=jitter,
                                                     tables=ids)
    return out


def recut_block(index, windows, *, plan: TilingPlan, min_iou: float = 0.5, jitter: int = 2,
                tables=None) -> np.ndarray:
    """Block ``index``'s staged window with its four edge faces recut, from its own and its neighbours' windows.

    What :func:`recut_staged` writes into the block's slot, computed from
    five windows only, so a task per block can do it out of core: each face's
    cut depends on the two windows alone, so the block and its neighbour
    compute the same cut and write the same mix, each in its own ids.

    Parameters
    ----------
    index : (int, int)
    windows : mapping
        Block index → staged padded window (local labels) for the block and
        each of its edge neighbours.
    plan : TilingPlan
    min_iou, jitter : float, int
        As for :func:`recut_staged`.
    tables : mapping, optional
        Block index → ``(labels with core pixels, sorted; the merged id most of
        each one's pixels hold)`` for the same blocks: labels of one merged
        object count as linked on every face (``merged=`` of :func:`recut_staged`).

    Returns
    -------
    ndarray
        A recut copy of the block's own window.
    """
    check_number("min_iou", min_iou, minimum=0.5, maximum=1, open_max=True)
    check_int("jitter", jitter, minimum=0)
    index = tuple(int(i) for i in index)
    own = np.asarray(windows[index])
    out = own.copy()
    fresh = [int(own.max()) + 1 if own.size else 1]  # ids for labels of the other view with no link here
    for a, b, off in _faces_of(plan, index):
        _recut_face(np.asarray(windows[a]), np.asarray(windows[b]), out, plan=plan, a=a, b=b, off=off, own=index,
                    min_iou=float(min_iou), jitter=int(jitter), fresh=fresh, ids=tables)
    return out


def _edge_neighbours(plan: TilingPlan, index) -> list:
    return [n for off in ((-1, 0), (0, -1), (0, 1), (1, 0)) if (n := _neighbour(plan, index, off)) is not None]


def _faces_of(plan: TilingPlan, index) -> list:
    """The block's edge faces as ``(a, b, offset of b from a)``, upper and left ones first: the order in which
    a pass over the blocks in row-major order meets them, so fresh ids come out the same."""
    faces = []
    for off in ((1, 0), (0, 1)):  # the faces where the block is the lower or the right one
        a = _neighbour(plan, index, (-off[0], -off[1]))
        if a is not None:
            faces.append((a, index, off))
    for off in ((0, 1), (1, 0)):
        b = _neighbour(plan, index, off)
        if b is not None:
            faces.append((index, b, off))
    return faces


def _merged_ids(staged: np.ndarray, merged, plan: TilingPlan) -> dict:
    """Per block: its labels with core pixels (sorted) and the merged id most of those pixels hold."""
    merged = np.asarray(merged)
    if merged.shape != plan.shape:
        raise InputError(f"`merged` has shape {merged.shape}, the plan's shape is {plan.shape}")
    ids = {}
    for idx in plan.block_ids():
        core = plan.core_window(idx)
        own = _padded(staged, plan, idx)[core.relative_to(plan.padded_window(idx)).slices].ravel()
        lab, mid, cnt = unique_pairs(own.astype(np.int64), merged[core.slices].ravel().astype(np.int64))
        order = np.lexsort((-cnt, lab))  # per label, its most common merged id first
        lab, mid = lab[order], mid[order]
        first = np.r_[True, lab[1:] != lab[:-1]] if lab.size else np.zeros(0, bool)
        ids[idx] = (lab[first], mid[first])
    return ids


def _lookup(table, labels: np.ndarray) -> np.ndarray:
    """Merged id of each of ``labels`` in a block's ``table``; -1 where the label has no core pixel."""
    lab, mid = table
    if lab.size == 0:
        return np.full(labels.shape, -1, np.int64)
    pos = np.minimum(np.searchsorted(lab, labels), lab.size - 1)
    return np.where(lab[pos] == labels, mid[pos], -1)


def _check_staged(staged, plan: TilingPlan) -> np.ndarray:
    if not isinstance(plan, TilingPlan):
        raise InputError(f"`plan` must be a TilingPlan, got {type(plan).__name__}")
    staged = np.asarray(staged)
    if staged.shape != plan.staging_shape:
        raise InputError(f"`staged` has shape {staged.shape}, the plan's staging shape is {plan.staging_shape}")
    if staged.dtype.kind not in "ui" or (staged.dtype.kind == "i" and staged.size and staged.min() < 0):
        raise InputError(f"`staged` must hold non-negative integer labels, got dtype {staged.dtype}")
    return staged


def _padded(arr: np.ndarray, plan: TilingPlan, index) -> np.ndarray:
    """The padded window of block ``index`` in its slot (a view)."""
    sy, sx = plan.slot_shape
    h, w = plan.padded_window(index).shape
    return arr[index[0] * sy : index[0] * sy + h, index[1] * sx : index[1] * sx + w]


def _recut_region(plan: TilingPlan, a, b, off) -> Window | None:
    """The part of the shared strip of ``a`` and ``b`` that only this face rewrites (None if empty)."""
    shared = _intersect(plan.padded_window(a), plan.padded_window(b))
    core, pad = plan.core_window(a), plan.padding
    if off == (0, 1):
        y0 = core.y0 + (pad if _neighbour(plan, a, (-1, 0)) else 0)
        y1 = core.y1 - (pad if _neighbour(plan, a, (1, 0)) else 0)
        region = Window(y0, y1, shared.x0, shared.x1)
    else:
        x0 = core.x0 + (pad if _neighbour(plan, a, (0, -1)) else 0)
        x1 = core.x1 - (pad if _neighbour(plan, a, (0, 1)) else 0)
        region = Window(shared.y0, shared.y1, x0, x1)
    return region if min(region.shape) > 0 else None


def _face_links(la: np.ndarray, lb: np.ndarray, *, plan: TilingPlan, a, b, off, min_iou, jitter, ids=None):
    """The label pairs ``(a, b)`` this face links, or whose pieces coincide, as pair keys, with their
    overlap in the shared strip.

    Coinciding pieces count even where the merge does not link them (a label seen only in the other
    block's core part): the two views agree on those pixels, so the recut keeps them. With ``ids``
    (:func:`_merged_ids`) pairs in one merged object count too."""
    ev, _ = _face_evidence({off: _pack(la)}, {(-off[0], -off[1]): _pack(lb)}, plan=plan, a=a, b=b, off=off,
                           min_iou=min_iou, jitter=jitter)
    ra, of_a, area_a = _runs(la)
    rb, of_b, area_b = _runs(lb)
    both = (ra > 0) & (rb > 0)
    pa, pb, inter = unique_pairs(ra[both].astype(np.int64), rb[both].astype(np.int64))
    same = (inter == area_a[pa]) & (inter == area_b[pb])
    keys = unique(np.concatenate([_pair_keys(ev["links"][0] & _LOCAL, ev["links"][1] & _LOCAL),
                                  _pair_keys(of_a[pa[same]], of_b[pb[same]])]))
    both = (la > 0) & (lb > 0)
    pa, pb, cnt = unique_pairs(la[both].astype(np.uint64), lb[both].astype(np.uint64))
    if ids is not None:
        ma, mb = _lookup(ids[a], pa.astype(np.int64)), _lookup(ids[b], pb.astype(np.int64))
        joined = (ma == mb) & (ma > 0)  # -1: no core pixel; 0: the merge left it background
        keys = unique(np.concatenate([keys, _pair_keys(pa[joined], pb[joined])]))
    pos = np.searchsorted(_pair_keys(pa, pb), keys)  # every pair in ``keys`` overlaps, so it is there
    return keys, cnt[pos] if keys.size else np.empty(0, np.int64)


def _recut_face(win_a, win_b, out, *, plan: TilingPlan, a, b, off, own, min_iou, jitter, fresh: list,
                ids=None) -> None:
    """Cut one face's region between the windows of ``a`` and ``b``; write ``own``'s side of the mix into
    ``out`` (``own``'s window)."""
    region = _recut_region(plan, a, b, off)
    if region is None:
        return
    pad_a, pad_b = plan.padded_window(a), plan.padded_window(b)
    shared = _intersect(pad_a, pad_b)
    la, lb = win_a[shared.relative_to(pad_a).slices], win_b[shared.relative_to(pad_b).slices]
    keys, cnt = _face_links(la, lb, plan=plan, a=a, b=b, off=off, min_iou=min_iou, jitter=jitter, ids=ids)
    src_a = win_a[region.relative_to(pad_a).slices]
    src_b = win_b[region.relative_to(pad_b).slices]
    dst = out[region.relative_to(pad_a if own == a else pad_b).slices]
    seam = plan.core_window(a).x1 - region.x0 if off == (0, 1) else plan.core_window(a).y1 - region.y0
    if off == (1, 0):  # the same cut across columns: work on the transposed views
        src_a, src_b, dst = src_a.T, src_b.T, dst.T
    linked = _linked(src_a, src_b, keys)
    if linked.all():  # the windows agree here: nothing to move
        return
    cut = seam_cut(_cut_costs(src_a, src_b, keys), start=seam)
    after = np.arange(src_a.shape[1])[None, :] >= cut[:, None]
    # A's labels before the cut, B's after: each block writes the other's part of its own side
    fill, other, flip = (after, src_b, False) if own == a else (~after, src_a, True)
    need = fill & ~linked
    dst[need] = _translate(other[need], keys, cnt, flip=flip, fresh=fresh).astype(dst.dtype)


def _linked(la: np.ndarray, lb: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Per pixel: its two labels are linked, or both are 0."""
    return np.isin(_pair_keys(la, lb), keys) | ((la == 0) & (lb == 0))


def _cut_costs(la: np.ndarray, lb: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Cost of a cut before column ``c`` (``0..width``) of each row: A's pixel at ``c - 1`` meets B's at ``c``."""
    left, right = la[:, :-1], lb[:, 1:]
    free = _linked(left, right, keys)
    boundary = (la[:, :-1] != la[:, 1:]) | (lb[:, :-1] != lb[:, 1:])
    cost = np.full((la.shape[0], la.shape[1] + 1), _SPLIT)
    cost[:, 1:-1] = np.where(free, _FREE, np.where(boundary, _BOUNDARY, _SPLIT))
    return cost


def seam_cut(cost: np.ndarray, *, start: int) -> np.ndarray:
    """Column of the minimum-cost cut per row, from ``start`` back to ``start`` (|step| <= 1).

    Among cuts of equal cost the one nearest ``start`` wins: a penalty of
    ``|c - start|`` too small to outweigh any real cost difference is added.

    Examples
    --------
    >>> cost = np.ones((5, 5)); cost[1:4, 3] = 0
    >>> seam_cut(cost, start=2).tolist()
    [2, 3, 3, 3, 2]
    """
    from .. import _seam_cut_nb as nb

    cost = np.asarray(cost, np.float64)
    if cost.ndim != 2 or cost.size == 0:
        raise InputError(f"`cost` must be a non-empty 2-D array, got shape {cost.shape}")
    check_int("start", start, minimum=0, maximum=cost.shape[1] - 1)
    positive = cost[cost > 0]
    eps = (positive.min() if positive.size else 1.0) / (2.0 * cost.size)
    cost = cost + eps * np.abs(np.arange(cost.shape[1]) - start)[None, :]
    out = np.empty(cost.shape[0], np.int64)
    nb.min_cut_path(cost, int(start), out)
    return out


def _translate(labels: np.ndarray, keys: np.ndarray, cnt: np.ndarray, *, flip: bool, fresh: list):
    """The other view's ``labels`` in a slot's own ids: the linked label of largest overlap, else a fresh id
    (``fresh[0]``, counted on)."""
    own = (keys >> np.uint64(32)) if not flip else (keys & _LOCAL)
    other = (keys & _LOCAL) if not flip else (keys >> np.uint64(32))
    values, inv = np.unique(labels, return_inverse=True)
    mapped = np.zeros(values.size, np.uint64)
    for k, v in enumerate(values):
        if v == 0:
            continue
        sel = np.flatnonzero(other == np.uint64(v))
        if sel.size:
            mapped[k] = own[sel[np.argmax(cnt[sel])]]
        else:
            mapped[k] = fresh[0]
            fresh[0] += 1
    return mapped[inv.ravel()]


# ---------------------------------------------------------------------------
# the recut as merge phases, out of core
# ---------------------------------------------------------------------------
def recut_phases(plan: TilingPlan, cfg, *, out: str, token: str) -> list:
    """The two phases between a first merge (up to its ids) and the merge of the recut blocks.

    ``tables``: each block's labels with core pixels and the merged id the
    first merge gives them (the chain-aware "same object" evidence of
    ``merged=`` in :func:`recut_staged`, without a pixel); ``recut``: each
    block's window recut from its own and its edge neighbours' windows and
    tables (:func:`recut_block`), written into its slot of the Zarr array ``out``
    (kept open in each worker for the tasks with the same ``token``).
    """
    from ._phases import Phase

    extra = ("ranks", "moves") if cfg.splits else ("ranks",)
    return [Phase("tables", _tables, functools.partial(_reads_tables, extra=extra), ("tables",)),
            Phase("recut", functools.partial(_recut_step, plan=plan, cfg=cfg, out=out, token=token),
                  functools.partial(_reads_recut, plan=plan), report=True)]


def _reads_tables(index, *, extra: tuple):
    return [("late", index), ("final", index)] + [(e, index) for e in extra]


def _tables(index, late, final, ranks, moves=None):
    """(labels with core pixels, sorted; their merged ids) of one block, from the first merge's outputs."""
    label_ranks = ranks[0] if moves is not None else ranks  # after a split: (labels' ranks, moved parts' ranks)
    lut = np.zeros(late["n_idx"], np.int64)
    lut[final["idx"]] = label_ranks
    present = late["present"]
    labels = present if late["values"] is None else late["values"][present]
    return ((np.asarray(labels, np.int64), lut[present]),)


def _reads_recut(index, *, plan: TilingPlan):
    blocks = [tuple(index), *_edge_neighbours(plan, index)]
    return [("staged", n) for n in blocks] + [("tables", n) for n in blocks]


def _recut_step(index, *values, plan: TilingPlan, cfg, out: str, token: str):
    from .._files import open_zarr_kept
    from ._blocks import load_slot

    index = tuple(index)
    blocks = [index, *_edge_neighbours(plan, index)]
    slots, tables = values[: len(blocks)], values[len(blocks):]
    windows = {}
    for n, slot in zip(blocks, slots):
        h, w = plan.padded_window(n).shape
        windows[n] = np.asarray(load_slot(slot))[:h, :w]
    recut = recut_block(index, windows, plan=plan, min_iou=cfg.min_iou, jitter=cfg.jitter,
                        tables=dict(zip(blocks, tables)))
    sy, sx = plan.slot_shape
    slot = np.zeros((sy, sx), recut.dtype)
    slot[: recut.shape[0], : recut.shape[1]] = recut
    z = open_zarr_kept(out, mode="r+", token=token)
    z[index[0] * sy : (index[0] + 1) * sy, index[1] * sx : (index[1] + 1) * sx] = slot
    return (1,)
