"""Recut: move the boundary between two disagreeing windows off the seam line.

Where two neighbouring windows segment their shared strip differently and
their fragments are not linked, the ``overlap`` merge leaves the boundary on
the straight seam, so the tile grid shows. :func:`recut_staged` rewrites the
staged views first, face by face (a block and its right neighbour, a block
and its lower neighbour):

1. the face's links come from the merge's own evidence on the unchanged
   views (:func:`remote_samsing.merge._blocks._face_evidence`);
2. across the shared strip, along the two cores (from one end of the cores
   to the other, so at a corner where four windows meet each block's
   quadrant of the ``2P × 2P`` square is cut by both its faces, and the
   cuts of two faces in line meet on the seam at the corner), a cut runs
   from the seam back to the seam, moving at most one pixel per row. It is
   the minimum-error boundary cut of image quilting (Efros & Freeman 2001,
   https://people.eecs.berkeley.edu/~efros/research/quilting/quilting.pdf):
   free where the label left of it and the one right of it are linked, cheap
   where either view has a boundary, dear where it would split a segment;
3. both slots then hold the same mix there: A's labels before the cut, B's
   after (in a corner quadrant, the later of the block's two faces there, in
   :func:`_faces_of`'s fixed order, writes over the earlier). A label of the other view is written in the
   slot's own ids: the slot's label where the two are linked there, else the
   linked label of largest overlap, else a fresh id (one per label and face).

A face's links alone miss objects that the merge joins through a chain of
other faces: two labels that end up in one merged object but whose pieces do
not match at this face would get a cut (and fresh ids) between them, which
puts the boundary back on the seam. Given ``merged``, the labels of a first
``overlap`` merge of the same views, a pair also counts as linked when both
labels' core pixels lie mostly in one merged object.

Where the windows agree every pixel's two labels are linked, so nothing
changes and the ``overlap`` merge of the result is that of the input.

A face's cut depends on its two windows alone, so :func:`recut_block`
recuts one block from its own and its four edge neighbours' windows, and
:func:`recut_window` from its own window and their summaries' strips (what
the merge's recut step does); :func:`recut_staged` is that for every block.
The merge (``merge_stored``, ``merge_labels``) then merges the recut blocks
linking, on faces by a recut block, pieces that stand for one object of the
first merge (:func:`recut_step` tags each label with it).

Limits: two labels that the first merge kept apart and that both fill the
strip (one "stuff" region that the two windows split differently inside)
leave no cut cheaper than the seam itself; nor does a disagreement without
boundaries across the strip (stripes parallel to the seam's normal).
"""

from __future__ import annotations

import numpy as np

from .._arrays import unique, unique_pairs
from .._validate import check_int, check_number
from ..exceptions import InputError
from ..tiling import TilingPlan, Window
from ._blocks import _face_evidence, _intersect, _neighbour, _pack, _pair_keys, _unpack, load_slot, summarize

__all__ = ["recut_block", "recut_window", "recut_staged", "recut_flags", "recut_reads", "recut_step",
           "recut_outputs", "recut_keys", "second_config", "KEPT", "BESIDE", "RECUT"]

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
        A recut copy, same shape, uint32 (fresh ids may exceed a narrower input's range); equal to
        ``staged`` where windows agree.

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
    out = staged.astype(np.uint32)  # fresh ids may exceed a narrower input dtype
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

    def strip(n, other):  # block n's labels in the region its window shares with block other's
        shared = _intersect(plan.padded_window(n), plan.padded_window(other))
        return np.asarray(windows[n])[shared.relative_to(plan.padded_window(n)).slices]

    return _recut(np.asarray(windows[index]), index, strip, plan=plan, min_iou=float(min_iou), jitter=int(jitter),
                  tables=tables)[0]


def recut_window(index, window, strips, *, plan: TilingPlan, cfg, tables, face_keys=None):
    """:func:`recut_block` from the block's window and its edge neighbours' shared strips (their summaries'
    ``strips``: packed labels of the region each shares with each of its neighbours), as the merge's
    recut step has them.

    Returns
    -------
    window : ndarray
        The recut window, uint32.
    objects : (ndarray, ndarray)
        Its labels (sorted) and the first merge's object each one stands for
        (a fresh id: that of the other view's label it holds; -1: none).

    ``face_keys``: ``{(a, b): keys}`` of the block's edge faces that disagree
    (:func:`recut_keys`, from the first merge's faces); the others are left alone.
    """
    index = tuple(int(i) for i in index)
    window = np.asarray(window)

    def strip(n, other):
        if n == index:
            shared = _intersect(plan.padded_window(n), plan.padded_window(other))
            return window[shared.relative_to(plan.padded_window(n)).slices]
        return _unpack(strips[n][(other[0] - n[0], other[1] - n[1])])

    return _recut(window, index, strip, plan=plan, min_iou=float(cfg.min_iou), jitter=int(cfg.jitter),
                  tables=tables, face_keys=face_keys)


def _recut(own: np.ndarray, index, strip, *, plan: TilingPlan, min_iou: float, jitter: int, tables,
           face_keys=None):
    """The recut copy of ``own`` (block ``index``'s window), ``strip(n, other)`` giving block ``n``'s labels
    in the region it shares with ``other`` (``face_keys``: as for :func:`recut_window`)."""
    out = own.astype(np.uint32)
    # ids for labels of the other view with no link here, and the first merge's object of each
    fresh = [int(own.max()) + 1 if own.size else 1, {}]
    for a, b, off in _faces_of(plan, index):
        keys = face_keys.get((a, b)) if face_keys is not None else None
        if face_keys is not None and keys is None:  # the face agrees
            continue
        _recut_face(strip(a, b), strip(b, a), out, plan=plan, a=a, b=b, off=off, own=index, min_iou=min_iou,
                    jitter=jitter, fresh=fresh, ids=tables, keys=keys)
    if tables is None:
        return out, None
    labels = unique(out[out > 0]).astype(np.int64)
    objects = _lookup(tables[index], labels)
    made = np.isin(labels, list(fresh[1]))
    objects[made] = [fresh[1][int(v)] for v in labels[made]]
    return out, (labels, objects)


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
    """The part of the shared strip of ``a`` and ``b`` that this face rewrites: across the strip, along the
    cores (None if empty)."""
    shared = _intersect(plan.padded_window(a), plan.padded_window(b))
    core = plan.core_window(a)
    if off == (0, 1):
        region = Window(core.y0, core.y1, shared.x0, shared.x1)
    else:
        region = Window(shared.y0, shared.y1, core.x0, core.x1)
    return region if min(region.shape) > 0 else None


def _face_links(la: np.ndarray, lb: np.ndarray, *, plan: TilingPlan, a, b, off, min_iou, jitter, ids=None,
                keys=None):
    """The label pairs ``(a, b)`` this face links, or whose pieces coincide, as pair keys, with their
    overlap in the shared strip.

    Coinciding pieces count even where the merge does not link them (a label seen only in the other
    block's core part): the two views agree on those pixels, so the recut keeps them. With ``ids``
    (:func:`_merged_ids`) pairs in one merged object count too. ``keys``: those of the face's evidence,
    if known (:func:`recut_keys`)."""
    if keys is None:
        ev, _ = _face_evidence({off: _pack(la)}, {(-off[0], -off[1]): _pack(lb)}, plan=plan, a=a, b=b, off=off,
                               min_iou=min_iou, jitter=jitter)
        keys = _link_keys(ev)
    both = (la > 0) & (lb > 0)
    pa, pb, cnt = unique_pairs(la[both].astype(np.uint64), lb[both].astype(np.uint64))
    if ids is not None:
        ma, mb = _lookup(ids[a], pa.astype(np.int64)), _lookup(ids[b], pb.astype(np.int64))
        joined = (ma == mb) & (ma > 0)  # -1: no core pixel; 0: the merge left it background
        keys = unique(np.concatenate([keys, _pair_keys(pa[joined], pb[joined])]))
    pos = np.searchsorted(_pair_keys(pa, pb), keys)  # every pair in ``keys`` overlaps, so it is there
    return keys, cnt[pos] if keys.size else np.empty(0, np.int64)


def _link_keys(ev: dict) -> np.ndarray:
    """The label pairs a face's evidence ``ev`` links, and those whose pieces coincide, as pair keys."""
    keys = [_pair_keys(ev["links"][0] & _LOCAL, ev["links"][1] & _LOCAL)]
    if "pieces" in ev:  # no overlapping pieces, no coinciding ones
        of_a, of_b, area_a, area_b, pa, pb, inter = ev["pieces"]
        same = (inter == area_a[pa]) & (inter == area_b[pb])
        keys.append(_pair_keys(of_a[pa[same]], of_b[pb[same]]))
    return unique(np.concatenate(keys))


def recut_keys(ev: dict, strips_a: dict, strips_b: dict, *, plan: TilingPlan, a, b, off):
    """The face's link keys (:func:`_link_keys`) where the recut has something to do on the face of ``a``
    and ``b`` (``b`` at ``off`` from ``a``), else None.

    ``ev``: the face's overlap evidence (``_blocks._face_evidence``) from the
    two blocks' packed ``strips``. Without the first merge's tables fewer
    pairs count as linked, so a face that agrees here agrees in the recut
    too: a block none of whose edge faces disagrees keeps its window.
    """
    region = _recut_region(plan, a, b, off)
    packed_a, packed_b = strips_a[off], strips_b[(-off[0], -off[1])]
    if region is None or packed_a[2] is None or packed_b[2] is None:
        # a window without a label in the whole strip (a failed or skipped block, nodata) gives no view to
        # cut along, and its pixels must stay unlabelled
        return None
    sl = region.relative_to(_intersect(plan.padded_window(a), plan.padded_window(b))).slices
    la, lb = ev["views"] if "views" in ev else (_unpack(packed_a), _unpack(packed_b))
    la, lb = la[sl], lb[sl]
    fg = la > 0
    keys = _link_keys(ev)
    if (fg != (lb > 0)).any():  # a label against background
        return keys
    if not fg.any():
        return None
    if "pieces" in ev:  # every pixel pair of the strip belongs to one pair of pieces: often all linked
        of_a, of_b, _, _, pa, pb, _ = ev["pieces"]
        if np.isin(_pair_keys(of_a[pa], of_b[pb]), keys).all():
            return None
    return None if _linked(la, lb, keys).all() else keys


#: What the recut does to a block (:func:`recut_flags`): nothing; it shares a face with a recut block (its
#: summary gets its labels' objects); it recuts it (one of its edge faces disagrees).
KEPT, BESIDE, RECUT = 0, 1, 2


def recut_flags(faces: list, *, plan: TilingPlan) -> list:
    """Per block (``plan.block_ids()`` order): :data:`RECUT` where one of its edge faces disagrees (its
    faces' ``"recut"`` offsets, and those of its upper and left neighbours), :data:`BESIDE` where one of
    its eight neighbours is recut, else :data:`KEPT`; with whether any block is recut (where none is, the
    merge of the recut blocks has nothing to redo)."""
    from scipy import ndimage

    cut = np.zeros(plan.grid_shape, bool)
    for index, face in zip(plan.block_ids(), faces):
        for off in face.get("recut", ()):
            cut[index] = cut[index[0] + off[0], index[1] + off[1]] = True
    flags = np.where(cut, RECUT, np.where(ndimage.binary_dilation(cut, np.ones((3, 3), bool)), BESIDE, KEPT))
    any_cut = bool(cut.any())
    return [(int(flags[i]), any_cut) for i in plan.block_ids()]


def _recut_face(la, lb, out, *, plan: TilingPlan, a, b, off, own, min_iou, jitter, fresh: list,
                ids=None, keys=None) -> None:
    """Cut one face's region between ``la`` and ``lb`` (the labels of ``a`` and ``b`` in the region their
    windows share); write ``own``'s side of the mix into ``out`` (``own``'s window)."""
    region = _recut_region(plan, a, b, off)
    if region is None or not la.any() or not lb.any():  # as recut_keys: no view to cut along
        return
    pad_a, pad_b = plan.padded_window(a), plan.padded_window(b)
    shared = _intersect(pad_a, pad_b)
    keys, cnt = _face_links(la, lb, plan=plan, a=a, b=b, off=off, min_iou=min_iou, jitter=jitter, ids=ids,
                            keys=keys)
    src_a = la[region.relative_to(shared).slices]
    src_b = lb[region.relative_to(shared).slices]
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
    other_block = b if own == a else a
    objects = (lambda v: int(_lookup(ids[other_block], np.array([v]))[0])) if ids is not None else None
    dst[need] = _translate(other[need], keys, cnt, flip=flip, fresh=fresh, objects=objects).astype(dst.dtype)


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


def _translate(labels: np.ndarray, keys: np.ndarray, cnt: np.ndarray, *, flip: bool, fresh: list, objects=None):
    """The other view's ``labels`` in a slot's own ids: the linked label of largest overlap, else a fresh id
    (``fresh[0]``, counted on; ``fresh[1][id]``: ``objects(label)``, the first merge's object of the other
    view's label, when given)."""
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
            if objects is not None:
                fresh[1][fresh[0]] = objects(v)
            fresh[0] += 1
    return mapped[inv.ravel()]


# ---------------------------------------------------------------------------
# the recut as a step between two merges
# ---------------------------------------------------------------------------
def second_config(cfg):
    """The configuration of the merge of the recut blocks: the same rules, no second recut."""
    import dataclasses

    return dataclasses.replace(cfg, seam_recut=False)


def recut_reads(index, *, plan: TilingPlan, cfg, flag: int = RECUT) -> list:
    """What block ``index``'s recut step reads of the first merge: its flag (:func:`recut_flags`), its
    staged chunk, its own and (for a block to recut) its edge neighbours' summaries (their ``strips``)
    and what their tables (:func:`_tables`) are made of."""
    index = tuple(index)
    blocks = [index, *(_edge_neighbours(plan, index) if flag == RECUT else [])]
    extra = ("ranks", "moves") if cfg.splits else ("ranks",)
    return ([("flags", index), ("staged", index)] + [("faces", n) for n in _face_owners(plan, index, flag)]
            + [("early", n) for n in blocks] + [(k, n) for n in blocks for k in ("late", "final", *extra)])


def _face_owners(plan: TilingPlan, index, flag) -> list:
    """The blocks whose faces hold block ``index``'s edge faces' keys (itself, its upper and left
    neighbours), for a block to recut."""
    if flag != RECUT:
        return []
    return [index] + [n for off in ((-1, 0), (0, -1)) if (n := _neighbour(plan, index, off)) is not None]


def recut_step(index, flag, slot, *values, plan: TilingPlan, cfg):
    """Block ``index``'s part in the recut, ``values`` as :func:`recut_reads` names them.

    Returns
    -------
    (window, extra) or None
        None for a block the recut leaves alone (:data:`KEPT`). Otherwise its
        window (uint32; None where ``flag`` is :data:`BESIDE`: as staged) and
        what its summary for the faces of the merge of the recut blocks adds:
        ``objects``, its labels and the first merge's object of each, and
        ``recut``, whether it was recut.
    """
    if flag == KEPT:
        return None
    index = tuple(index)
    owners = _face_owners(plan, index, flag)
    faces, values = values[: len(owners)], values[len(owners):]
    k = 4 if cfg.splits else 3  # late, final, ranks (and moves) per block
    n = len(values) // (1 + k)  # the block alone, or with its edge neighbours
    early, rest = values[:n], values[n:]
    if flag == BESIDE:
        return None, {"objects": _tables(*rest[:k]), "recut": False}
    blocks = [index, *_edge_neighbours(plan, index)]
    tables = {b: _tables(*rest[j * k : (j + 1) * k]) for j, b in enumerate(blocks)}
    h, w = plan.padded_window(index).shape
    window = np.asarray(load_slot(slot))[:h, :w]
    strips = {b: e["strips"] for b, e in zip(blocks, early)}
    face_keys = {(o, (o[0] + off[0], o[1] + off[1])): keys for o, face in zip(owners, faces)
                 for off, keys in face.get("recut", {}).items()}
    window, objects = recut_window(index, window, strips, plan=plan, cfg=cfg, tables=tables, face_keys=face_keys)
    return window, {"objects": objects, "recut": True}


def _tables(late, final, ranks, moves=None):
    """(labels with core pixels, sorted; their merged ids) of one block, from the first merge's outputs."""
    label_ranks = ranks[0] if moves is not None else ranks  # after a split: (labels' ranks, moved parts' ranks)
    lut = np.zeros(late["n_idx"], np.int64)
    lut[final["idx"]] = label_ranks
    present = late["present"]
    labels = present if late["values"] is None else late["values"][present]
    return np.asarray(labels, np.int64), lut[present]


def recut_outputs(index, flag, slot, *values, plan: TilingPlan, cfg, valid=None, summaries: bool = True):
    """Block ``index``'s recut chunk and the summaries the merge of the recut blocks reads for it.

    Parameters
    ----------
    index : (int, int)
    flag : int
        The block's :func:`recut_flags` flag.
    slot : ndarray or StoredSlot
        Its staged chunk.
    *values
        What :func:`recut_reads` names for ``flag`` after the flags and the staged chunk.
    plan : TilingPlan
    cfg : MergeConfig
    valid : ndarray of bool, optional
        Its validity mask (the lazy graph's).
    summaries : bool
        Summarize a recut chunk (else its summaries are None).

    Returns
    -------
    (chunk, early, late) or None
        None where the recut leaves the block alone. ``chunk``: the recut
        chunk (``plan.slot_shape``, uint32), None where the block keeps its
        staged one; ``early``, ``late``: its summaries, each label tagged with
        the first merge's object it stands for.
    """
    step = recut_step(index, flag, slot, *values, plan=plan, cfg=cfg)
    if step is None:
        return None
    window, extra = step
    if window is None:  # beside a recut block: the first merge's summaries, tagged
        given = dict(zip(recut_reads(index, plan=plan, cfg=cfg, flag=flag)[2:], values))
        return None, dict(given[("early", tuple(index))], **extra), given[("late", tuple(index))]
    chunk = plan.in_slot(window)
    if not summaries:
        return chunk, None, None
    early, late = summarize(chunk, valid, plan=plan, index=tuple(index), cfg=second_config(cfg))
    return chunk, dict(early, **extra), late
