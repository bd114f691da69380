"""Global steps of the merge: arrays of fragment ids, never pixels.

The island rule and the union-find over the faces' links (one task), and the
ranking of merged ids into 1..N (one task). Each returns its result split per
block, so every block's later step receives only its own part.
"""

from __future__ import annotations

import functools

import numpy as np

from .._arrays import unique, unique_pairs
from ..tiling import LOCAL_BITS, block_label_offset
from ._config import MergeConfig

_LOCAL_MASK = np.uint64((1 << LOCAL_BITS) - 1)


# ---------------------------------------------------------------------------
# island rule and union-find
# ---------------------------------------------------------------------------
def split_by_block(gids: np.ndarray, n_blocks: int, *arrays):
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
    return union_nodes(nodes.size, np.searchsorted(nodes, a), np.searchsorted(nodes, b))


def union_nodes(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Each of nodes ``0..n-1``'s root after the union of the edges ``(a[k], b[k])`` (node indices)."""
    from .. import _merge_nb as nb

    parent = np.arange(n, dtype=np.int64)
    if a.size:
        nb.union_find(a.astype(np.int64), b.astype(np.int64), parent)
    return parent


def _islands_of(comp_pairs, seam_nodes, *, n_blocks: int, min_area: int):
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
    return tuple(split_by_block(nodes, n_blocks, removed))


def solve_islands(faces, *, n_blocks: int, min_area: int):
    """The island rule over every block's seam components; one piece per block."""
    return _islands_of([f["comp_pairs"] for f in faces], [f["seam_nodes"] for f in faces],
                          n_blocks=n_blocks, min_area=min_area)


def _root_of(g: np.ndarray, nodes: np.ndarray, root_gid: np.ndarray) -> np.ndarray:
    if nodes.size == 0:
        return g.copy()
    pos = np.minimum(np.searchsorted(nodes, g), nodes.size - 1)
    found = nodes[pos] == g
    return np.where(found, root_gid[pos], g)


def _solve_merge(links, cands, adj, *, n_blocks: int, cfg: MergeConfig, union=None, disputed=None):
    """Union-find over the links (``union(nodes, a, b)``, default plain), then the enclosed-object
    rule; split per block. ``disputed``: fragments with a link refused for a disagreement (code 4)."""
    a = np.concatenate([l_[0] for l_ in links]) if links else np.empty(0, np.uint64)
    b = np.concatenate([l_[1] for l_ in links]) if links else np.empty(0, np.uint64)
    nodes = unique(np.concatenate([a, b])).astype(np.uint64)
    parent, refused = (union or _union_plain)(nodes, a, b)
    root_gid = nodes[parent]
    codes = np.ones(nodes.size, np.uint8)
    if refused is not None:  # a fragment with a link refused by an exclusion
        codes[refused] = 4
    gids, finals, codes = [nodes], [root_gid], [codes]
    if disputed is not None and disputed.size:
        codes[0][np.isin(nodes, disputed)] = 4
        alone = np.setdiff1d(disputed, nodes)  # refused and linked nowhere: its own object
        gids.append(alone)
        finals.append(alone)
        codes.append(np.full(alone.size, 4, np.uint8))
    n_absorbed = 0
    if cfg.absorb and cands:
        absorbed = _absorb_enclosed(nodes, parent, root_gid, cands, adj, cfg=cfg)
        if absorbed is not None:
            n_absorbed, ag, af = absorbed
            gids.append(ag)
            finals.append(af)
            codes.append(np.full(ag.size, 2, np.uint8))
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
    return tuple(split_by_block(allg, n_blocks, allf, allc)) + (stats,)


def _absorb_enclosed(nodes, parent, root_gid, cands, adj, *, cfg: MergeConfig):
    """The enclosed-object rule on merged objects: ``(number absorbed, absorbed ids, their targets)``.

    A merged object is absorbed when all its fragments are candidates (small,
    in-block contacts only with labels or seams), its area is at most
    ``merge_enclosed_max_area``, and every contact, across seams too, is with
    one other object. None when no candidate exists.
    """
    comp_size = np.bincount(parent, minlength=nodes.size)
    cg = np.concatenate([off | c["local"].astype(np.uint64) for off, c in cands])
    carea = np.concatenate([c["area"] for _, c in cands])
    src = [off | c["nb_l"].astype(np.uint64) for off, c in cands] + [p[0] for p in adj]
    dst = [off | c["nb_m"].astype(np.uint64) for off, c in cands] + [p[1] for p in adj]
    src, dst = np.concatenate(src), np.concatenate(dst)
    if not cg.size:
        return None
    c_root = _root_of(cg, nodes, root_gid)
    roots, inv = unique(c_root, return_inverse=True)
    n_cand = np.bincount(inv, minlength=roots.size)
    area = np.bincount(inv, weights=carea, minlength=roots.size)
    pos = np.minimum(np.searchsorted(nodes, roots), max(nodes.size - 1, 0))
    in_nodes = (nodes[pos] == roots) if nodes.size else np.zeros(roots.size, bool)
    members = np.where(in_nodes, comp_size[pos] if nodes.size else 1, 1)
    ok = (n_cand == members) & (area <= cfg.merge_enclosed_max_area)
    s_root = _root_of(src, nodes, root_gid)
    d_root = np.where(dst > 0, _root_of(dst, nodes, root_gid), np.uint64(0))
    keep = s_root != d_root
    sr, dr, _ = unique_pairs(s_root[keep], d_root[keep])
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
    if not abs_roots.size:
        return 0, cg[:0], resolved[:0]
    cp = np.minimum(np.searchsorted(abs_roots, c_root), abs_roots.size - 1)
    hit = abs_roots[cp] == c_root
    return int(abs_roots.size), cg[hit], resolved[cp[hit]]


def solve(faces, *, n_blocks: int, cfg: MergeConfig):
    """The one global task: island rule (overlap strategy) and union-find; pieces per block.

    Returns ``n_blocks`` pieces ``(island piece or None, merge piece)`` and a
    statistics dict (with every face's statistics, in block order).
    """
    if cfg.overlapping and cfg.islands:
        islands = solve_islands(faces, n_blocks=n_blocks, min_area=cfg.min_mask_area)
    else:
        islands = (None,) * n_blocks
    links = [f["links"] for f in faces]
    cands = [f["cands"] for f in faces if "cands" in f]
    adj = [f["adj"] for f in faces if "adj" in f]
    face_stats = [st for f in faces for st in f["stats"]]
    union = _union_plain
    if cfg.strategy == "overlap":
        excluded = np.zeros(len(face_stats), np.int64)
        union = functools.partial(_union_excluding, faces=faces, excluded=excluded)
    disputed = unique(np.concatenate([f["disputed"] for f in faces if "disputed" in f] or [np.empty(0, np.uint64)]))
    *pieces, stats = _solve_merge(links, cands, adj, n_blocks=n_blocks, cfg=cfg, union=union, disputed=disputed)
    if cfg.strategy == "overlap":
        for st, n in zip(face_stats, excluded):
            st["excluded"] = int(n)
    stats["faces"] = face_stats
    return tuple(zip(islands, pieces)) + (stats,)


def _union_plain(nodes: np.ndarray, a: np.ndarray, b: np.ndarray):
    return _union(nodes, a, b), None


def _union_excluding(nodes: np.ndarray, a: np.ndarray, b: np.ndarray, *, faces, excluded: np.ndarray):
    """Union-find over the faces' links, strongest (highest IoU) first, refusing every link that
    would join two clusters holding labels of one exclusion group; counts the refusals per face
    into ``excluded``. Returns the parents and the node indices of refused links."""
    from .. import _merge_nb as nb

    weights = np.concatenate([f["weights"] for f in faces]) if faces else np.empty(0)
    # each link's face, numbered as the faces' statistics are listed
    starts = np.cumsum([0] + [len(f["stats"]) for f in faces])[:-1]
    face_of = np.concatenate([f["faces"] + s for f, s in zip(faces, starts)]) if faces else np.empty(0, np.int64)
    members, group, n_groups = _exclusion_groups(faces, nodes)
    ai, bi = np.searchsorted(nodes, a).astype(np.int64), np.searchsorted(nodes, b).astype(np.int64)
    order = np.lexsort((bi, ai, -weights)).astype(np.int64)
    parent = np.arange(nodes.size, dtype=np.int64)
    refused = np.zeros(a.size, bool)
    nb.union_find_mutex(ai, bi, order, members, group, n_groups, parent, refused)
    excluded += np.bincount(face_of[refused], minlength=excluded.size)
    return parent, np.concatenate([ai[refused], bi[refused]])


def _exclusion_groups(faces, nodes: np.ndarray):
    """Every face's exclusion groups, numbered globally, as (node index, group) pairs; members that
    no link touches are dropped (nothing can join them)."""
    members, group, base = [], [], 0
    for f in faces:
        m, g, n = f["groups"]
        members.append(m)
        group.append(g + base)
        base += n
    m = np.concatenate(members) if members else np.empty(0, np.uint64)
    g = np.concatenate(group) if group else np.empty(0, np.int64)
    pos = np.minimum(np.searchsorted(nodes, m), max(nodes.size - 1, 0))
    known = nodes[pos] == m if nodes.size else np.zeros(m.size, bool)
    return pos[known].astype(np.int64), g[known].astype(np.int64), base


# ---------------------------------------------------------------------------
# ranks: merged ids to 1..N
# ---------------------------------------------------------------------------
def rank_ids(gids: list, *, owners_per_step: int = 256) -> tuple:
    """Sequential ids 1..N: each block's merged ids ranked among all blocks' (per-block arrays), and N.

    ``gids`` holds each block's merged ids, or ``(sorted unique ids, inverse)``.

    Merged ids carry their owner block in the high bits, so the ranking
    goes through the id axis in steps of ``owners_per_step`` owner blocks:
    the distinct ids of one step are found, counted and dropped before the
    next. Beyond the blocks' own (unique) ids, memory is one step's ids,
    never a sorted copy of all of them.
    """
    # (sorted unique ids, inverse) per block; the final phase hands them over so
    uniq = [g if isinstance(g, tuple) else unique(g, return_inverse=True) for g in gids]
    ranks = [np.zeros(u.size, np.uint32) for u, _ in uniq]
    # ids of owner block o lie in [block_label_offset(o), block_label_offset(o + 1))
    n_owners = max((int(u[-1] >> np.uint64(LOCAL_BITS)) for u, _ in uniq if u.size), default=0)
    total = 0
    for o0 in range(0, n_owners, owners_per_step):
        lo = np.uint64(block_label_offset(o0))
        hi = np.uint64(block_label_offset(o0 + owners_per_step))
        bounds = [(np.searchsorted(u, lo), np.searchsorted(u, hi)) for u, _ in uniq]
        step = unique(np.concatenate([u[a:b] for (u, _), (a, b) in zip(uniq, bounds)]))
        for (u, _), r, (a, b) in zip(uniq, ranks, bounds):
            r[a:b] = np.searchsorted(step, u[a:b]) + 1 + total
        total += int(step.size)
    return tuple(r[inv.ravel()] for r, (_, inv) in zip(ranks, uniq)) + (total,)


# ---------------------------------------------------------------------------
# statistics
# ---------------------------------------------------------------------------
def face_totals(faces) -> dict:
    """Sums of the per-face statistics (the exclusion counts only where the strategy has them)."""
    keys = ["candidates", "links", "refused"]
    keys += [k for k in ("excluded", "disagreed", "split_by_a", "split_by_b") if faces and k in faces[0]]
    return {k: sum(f[k] for f in faces) for k in keys}


def collect_stats(solve_stats, finals, n_ids, *, strategy: str):
    """Per-face and total statistics; ``n_ids``: the number of merged ids.

    ``solve_stats`` has the per-face list (``"faces"``) or, when the solve
    wrote it to a file, only its sums (``"face_totals"``; ``"faces"`` is
    then None in the result).
    """
    if "face_totals" in solve_stats:  # the list went to a file
        faces, face_sums = None, solve_stats["face_totals"]
    else:
        faces = list(solve_stats.get("faces", []))
        face_sums = face_totals(faces)
    totals = {
        **face_sums,
        "labels_before": sum(f["n_before"] for f in finals),
        "labels_after": int(n_ids),
        "islands_removed": sum(f["islands_removed"] for f in finals),
    }
    totals.update({k: v for k, v in solve_stats.items() if k not in ("faces", "face_totals")})
    return {"strategy": strategy, "faces": faces, "totals": totals}
