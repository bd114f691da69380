"""The seam recut: the minimum-error cut kernel and :func:`remote_samsing.merge._recut.recut_staged`."""

from __future__ import annotations

import itertools
from dataclasses import replace

import dask.array as da
import numpy as np
import pytest

from remote_samsing.exceptions import ConfigError, InputError
from remote_samsing.merge import MergeConfig, merge_labels
from remote_samsing.merge._recut import _padded, _recut_region, recut_staged, seam_cut
from remote_samsing.metrics import seam_line_shares
from remote_samsing.testing import assert_equivalent_labels, shaped_partition, stage_windows
from remote_samsing.tiling import TilingPlan


def _brute_force_cost(cost: np.ndarray, start: int) -> float:
    """The least summed cost over every path from ``start`` back to ``start`` with |step| <= 1."""
    rows, cols = cost.shape
    best = np.inf
    for steps in itertools.product((-1, 0, 1), repeat=rows - 1):
        path = start + np.concatenate([[0], np.cumsum(steps)])
        if path[-1] == start and path.min() >= 0 and path.max() < cols:
            best = min(best, cost[np.arange(rows), path].sum())
    return best


def _check_path(path: np.ndarray, rows: int, start: int) -> None:
    assert path.shape == (rows,)
    assert path[0] == start and path[-1] == start
    assert np.abs(np.diff(path)).max(initial=0) <= 1


# ---------------------------------------------------------------------------
# the kernel
# ---------------------------------------------------------------------------
def test_cut_follows_a_zero_cost_valley():
    cost = np.ones((9, 7))
    valley = [3, 4, 5, 5, 6, 6, 5, 4, 3]
    cost[np.arange(9), valley] = 0.0
    path = seam_cut(cost, start=3)
    _check_path(path, 9, 3)
    assert path.tolist() == valley


def test_uniform_cost_keeps_the_seam():
    path = seam_cut(np.ones((12, 9)), start=4)
    assert path.tolist() == [4] * 12


def test_ties_go_to_the_path_nearest_the_seam():
    # two equally cheap valleys, 1 and 3 columns from the seam: the nearer wins
    cost = np.ones((7, 9))
    cost[1:6, 5] = 0.0
    cost[1:6, 1] = 0.0
    path = seam_cut(cost, start=4)
    _check_path(path, 7, 4)
    assert path[3] == 5


@pytest.mark.parametrize("seed", range(20))
def test_cut_is_optimal_against_brute_force(seed):
    rng = np.random.default_rng(seed)
    rows, cols = rng.integers(2, 9), rng.integers(1, 6)
    cost = rng.choice([0.0, 0.1, 1.0], size=(rows, cols))
    start = int(rng.integers(0, cols))
    path = seam_cut(cost, start=start)
    _check_path(path, rows, start)
    assert cost[np.arange(rows), path].sum() == pytest.approx(_brute_force_cost(cost, start))


def test_cut_rejects_bad_inputs():
    with pytest.raises(InputError, match="cost"):
        seam_cut(np.ones(5), start=0)
    with pytest.raises(ConfigError, match="start"):
        seam_cut(np.ones((3, 4)), start=4)


# ---------------------------------------------------------------------------
# agreeing windows: nothing changes
# ---------------------------------------------------------------------------
def _components(labels):
    from skimage.measure import label

    return label(labels, background=0, connectivity=1)


def _overlap(staged: np.ndarray, plan: TilingPlan) -> np.ndarray:
    cfg = MergeConfig(strategy="overlap", remove_small=False, absorb_enclosed=False, seam_recut=False)
    return merge_labels(da.from_array(staged, chunks=plan.slot_shape), plan=plan, config=cfg).labels.compute(
        scheduler="sync")


@pytest.mark.parametrize("shape, tile, padding", [((96, 96), 24, 4), ((100, 70), 32, 8), ((64, 64), 20, 6)])
def test_agreeing_windows_are_left_bit_identical(shape, tile, padding):
    truth = shaped_partition(shape, seed=3)
    plan = TilingPlan(shape=shape, tile_size=tile, padding=padding)
    staged = stage_windows(plan, lambda w: _components(truth[w.slices]))
    recut = recut_staged(staged, plan=plan)
    assert recut.dtype == staged.dtype and recut.shape == staged.shape
    np.testing.assert_array_equal(recut, staged)
    assert_equivalent_labels(_overlap(recut, plan), truth)


def test_recut_staged_validates_its_inputs():
    plan = TilingPlan(shape=(32, 32), tile_size=16, padding=2)
    staged = np.zeros(plan.staging_shape, np.uint32)
    with pytest.raises(InputError, match="staging shape"):
        recut_staged(staged[:-1], plan=plan)
    with pytest.raises(InputError, match="integer"):
        recut_staged(staged.astype(float), plan=plan)
    with pytest.raises(ConfigError, match="min_iou"):
        recut_staged(staged, plan=plan, min_iou=0.2)
    with pytest.raises(InputError, match="plan"):
        recut_staged(staged, plan=None)


# ---------------------------------------------------------------------------
# disagreeing windows: the boundary leaves the seam line
# ---------------------------------------------------------------------------
def _voronoi(shape, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    pts = rng.uniform(0, 1, (n, 2)) * shape
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    d = (yy[..., None] - pts[:, 0]) ** 2 + (xx[..., None] - pts[:, 1]) ** 2
    return d.argmin(-1) + 1


def _voronoi_windows(seed: int = 0):
    """Each window sees its own random Voronoi partition of the whole mosaic."""
    plan = TilingPlan(shape=(96, 96), tile_size=32, padding=8)
    parts = {idx: _voronoi(plan.shape, 150, seed=100 * seed + plan.block_id(idx)) for idx in plan.block_ids()}

    def segment(w):
        return next(parts[idx][w.slices] for idx in plan.block_ids() if plan.padded_window(idx) == w)

    return plan, stage_windows(plan, segment)


def _faces(plan):
    for a in plan.block_ids():
        for off in ((0, 1), (1, 0)):
            b = (a[0] + off[0], a[1] + off[1])
            if b[0] < plan.grid_shape[0] and b[1] < plan.grid_shape[1]:
                yield a, b, off


def _region_views(arr, plan, a, b, off):
    """Both slots' labels in the face's recut region, the seam across columns (y faces transposed)."""
    r = _recut_region(plan, a, b, off)
    va = _padded(arr, plan, a)[r.relative_to(plan.padded_window(a)).slices]
    vb = _padded(arr, plan, b)[r.relative_to(plan.padded_window(b)).slices]
    return (va, vb, r) if off == (0, 1) else (va.T, vb.T, r)


def _seam_share(out, plan, a, b, off) -> float:
    """Share of the recut region's rows whose labels differ across the straight seam line."""
    r = _recut_region(plan, a, b, off)
    view = out[r.slices] if off == (0, 1) else out[r.slices].T
    return float(seam_line_shares(view)[1][plan.padding - 1] / view.shape[0])


@pytest.mark.parametrize("seed", [0, 1])
def test_disagreeing_windows_lose_the_straight_seam(seed):
    plan, staged = _voronoi_windows(seed)
    recut = recut_staged(staged, plan=plan)
    for a, b, off in _faces(plan):  # the recut mix has no boundary along a whole seam line
        mix = _region_views(recut, plan, a, b, off)[0]
        assert seam_line_shares(mix)[1][plan.padding - 1] < mix.shape[0]
    before, after = _overlap(staged, plan), _overlap(recut, plan)
    shares = np.array([[_seam_share(o, plan, *f) for f in _faces(plan)] for o in (before, after)])
    assert shares[1].mean() < 0.6 * shares[0].mean()  # and the merged seam lines carry far fewer


@pytest.mark.parametrize("seed", [0, 1])
def test_merged_disagreeing_windows_have_no_straight_seam_line(seed):
    """The default merge (recut, then pieces of one first-merge object linked wherever they overlap)
    leaves no seam line a boundary along its whole length, and far fewer boundaries on the seam lines
    than the overlap rule alone."""
    plan, staged = _voronoi_windows(seed)
    cfg = MergeConfig(strategy="overlap", remove_small=False, absorb_enclosed=False)
    after = merge_labels(da.from_array(staged, chunks=plan.slot_shape), plan=plan, config=cfg).labels.compute(
        scheduler="sync")
    shares = [_seam_share(after, plan, *f) for f in _faces(plan)]
    assert max(shares) < 1
    before = [_seam_share(_overlap(staged, plan), plan, *f) for f in _faces(plan)]
    assert np.mean(before) > 2 * np.mean(shares) and max(before) == 1


@pytest.mark.parametrize("seed", [0, 1])
def test_each_pixel_of_the_strip_takes_its_side_of_the_cut(seed):
    from remote_samsing.merge._blocks import _intersect
    from remote_samsing.merge._recut import _cut_costs, _face_links

    plan, staged = _voronoi_windows(seed)
    recut = recut_staged(staged, plan=plan)
    for a, b, off in _faces(plan):
        shared = _intersect(plan.padded_window(a), plan.padded_window(b))
        la = _padded(staged, plan, a)[shared.relative_to(plan.padded_window(a)).slices]
        lb = _padded(staged, plan, b)[shared.relative_to(plan.padded_window(b)).slices]
        keys, _ = _face_links(la, lb, plan=plan, a=a, b=b, off=off, min_iou=0.5, jitter=2)
        oa, ob, _ = _region_views(staged, plan, a, b, off)
        ra, rb, _ = _region_views(recut, plan, a, b, off)
        cut = seam_cut(_cut_costs(oa, ob, keys), start=plan.padding)
        after = np.arange(oa.shape[1])[None, :] >= cut[:, None]
        # outside the corner quadrants, which the crossing faces' cuts rewrite too
        rows = slice(plan.padding, oa.shape[0] - plan.padding)
        ra, rb, oa, ob, after = ra[rows], rb[rows], oa[rows], ob[rows], after[rows]
        np.testing.assert_array_equal(ra[~after], oa[~after])  # A's side: A's labels
        np.testing.assert_array_equal(rb[after], ob[after])  # B's side: B's labels
        assert_equivalent_labels(ra, rb)  # both slots hold the same mix


def _pair_fusing(parity: int, uneven: bool):
    """Touching stripes; each window fuses a different pair of neighbours (as the quality benchmark)."""
    plan = TilingPlan(shape=(120, 240), tile_size=20, padding=6)
    xx = np.arange(plan.shape[1])[None, :].repeat(plan.shape[0], 0)
    truth = xx // 4 + 1
    if uneven:
        edges = np.cumsum(np.random.default_rng(parity).integers(5, 13, plan.shape[1]))
        truth = np.searchsorted(edges, xx, side="right") + 1

    def fuse(w):
        t = truth[w.slices]
        iy, ix = (w.y0 + plan.padding) // 20, (w.x0 + plan.padding) // 20
        return np.where((t - 1) % 2 == (iy + ix + parity) % 2, t + 1, t)

    return truth, plan, stage_windows(plan, fuse)


@pytest.mark.parametrize("parity", [0, 1])
@pytest.mark.parametrize("uneven", [False, True])
def test_pair_fusing_windows_hold_at_most_two_objects_per_label(parity, uneven):
    from remote_samsing._arrays import unique_pairs

    truth, plan, staged = _pair_fusing(parity, uneven)
    out = _overlap(recut_staged(staged, plan=plan), plan)
    _, o, _ = unique_pairs(truth.ravel().astype(np.int64), out.ravel().astype(np.int64))
    assert np.bincount(o).max() <= 2  # true objects touching one label, as the benchmark counts them


# ---------------------------------------------------------------------------
# labels the merge joins through other faces
# ---------------------------------------------------------------------------
def _stuff_with_one_seen_object():
    """One label over the whole mosaic in every window; only the top right window also sees a small object
    on the top seam. The top face disputes the big label's link (the object's pixels are more than jitter);
    the other three faces link it, so the merge joins it all the same."""
    plan = TilingPlan(shape=(64, 64), tile_size=32, padding=8)
    square = np.zeros(plan.shape, bool)
    square[12:18, 29:35] = True

    def segment(w):
        out = np.ones(w.shape, np.int64)
        if w == plan.padded_window((0, 1)):
            out[square[w.slices]] = 2
        return out

    return plan, square, stage_windows(plan, segment)


def test_labels_the_merge_joins_elsewhere_are_not_cut_apart():
    plan, square, staged = _stuff_with_one_seen_object()
    first = _overlap(staged, plan)
    recut = recut_staged(staged, plan=plan, merged=first)
    changed = np.zeros(plan.shape, bool)  # mosaic pixels whose label changed in some slot
    for idx in plan.block_ids():
        pad = plan.padded_window(idx)
        changed[pad.slices] |= _padded(recut, plan, idx) != _padded(staged, plan, idx)
    assert not changed[~square].any()  # the big label stays one, so only the object's pixels may move
    top = _seam_share(_overlap(recut, plan), plan, (0, 0), (0, 1), (0, 1))
    assert top <= _seam_share(first, plan, (0, 0), (0, 1), (0, 1))


def test_merged_must_have_the_mosaic_shape():
    plan, _, staged = _stuff_with_one_seen_object()
    with pytest.raises(InputError, match="merged"):
        recut_staged(staged, plan=plan, merged=np.ones((3, 3), np.int64))


@pytest.mark.parametrize("with_tables", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_a_block_recut_from_its_five_windows_is_its_slot_of_the_whole_recut(seed, with_tables):
    """Out of core, a task holds only a block's window and its four edge neighbours' (and, with a first
    merge, their label tables): its recut equals the block's slot of the whole-mosaic recut, which moves
    pixels here."""
    from remote_samsing.merge._recut import _edge_neighbours, _merged_ids, recut_block

    plan, staged = _voronoi_windows(seed)
    staged = np.asarray(staged)
    first = _overlap(staged, plan) if with_tables else None
    whole = recut_staged(staged, plan=plan, merged=first)
    tables = _merged_ids(staged, first, plan) if with_tables else None
    assert (whole != staged).any()
    for idx in plan.block_ids():
        near = [idx, *_edge_neighbours(plan, idx)]
        windows = {n: _padded(staged, plan, n).copy() for n in near}
        got = recut_block(idx, windows, plan=plan, tables={n: tables[n] for n in near} if tables else None)
        np.testing.assert_array_equal(got, _padded(whole, plan, idx))
        assert all(np.array_equal(windows[n], _padded(staged, plan, n)) for n in near)  # inputs untouched


class _Mosaic:
    """A sink keeping the merged blocks in one array."""

    def __init__(self, shape):
        self.out = np.zeros(shape, np.int64)

    def __call__(self, labels, window):
        self.out[window.slices] = labels


def _stored_merge(staged, plan, tmp_path, cfg, **kw):
    import zarr

    from remote_samsing.merge import merge_stored

    path = tmp_path / "staged.zarr"
    if not path.exists():
        z = zarr.create_array(store=str(path), shape=staged.shape, chunks=plan.slot_shape, dtype=np.uint32,
                              fill_value=0, zarr_format=3)
        z[...] = np.asarray(staged, np.uint32)
    sink = _Mosaic(plan.shape)
    stats = merge_stored(path, plan=plan, config=cfg, workdir=tmp_path / "spill", sink=sink, **kw)
    stats.pop("phase_seconds")
    assert not (tmp_path / "spill").exists()
    return sink.out, stats


@pytest.mark.parametrize("seed", [0, 1])
def test_the_stored_merge_with_recut_loses_most_straight_seam_lines(tmp_path, seed):
    """``merge_stored`` with ``seam_recut`` (first merge to its ids, the recut per block, the merge proper) gives
    labels with far fewer boundaries along the seam lines than the merge alone, each one 4-connected
    region, numbered 1..N."""
    plan, staged = _voronoi_windows(seed)
    cfg = MergeConfig(strategy="overlap", remove_small=False, absorb_enclosed=False, seam_recut=False)
    plain, _ = _stored_merge(staged, plan, tmp_path, cfg)
    cut, stats = _stored_merge(staged, plan, tmp_path, replace(cfg, seam_recut=True))
    shares = np.array([[_seam_share(o, plan, *f) for f in _faces(plan)] for o in (plain, cut)])
    assert shares[1].mean() < 0.6 * shares[0].mean()
    ids = np.unique(cut[cut > 0])
    assert ids.tolist() == list(range(1, ids.size + 1)) and stats["totals"]["labels_after"] == ids.size
    assert _components(cut).max() == ids.size  # one 4-connected region per label


def test_the_stored_merge_with_recut_leaves_agreeing_windows_as_they_are(tmp_path):
    truth = shaped_partition((96, 96), seed=3)
    plan = TilingPlan(shape=(96, 96), tile_size=24, padding=4)
    staged = stage_windows(plan, lambda w: _components(truth[w.slices]))
    cfg = MergeConfig(strategy="overlap", seam_recut=False)
    plain, plain_stats = _stored_merge(staged, plan, tmp_path, cfg)
    cut, cut_stats = _stored_merge(staged, plan, tmp_path, replace(cfg, seam_recut=True))
    np.testing.assert_array_equal(cut, plain)
    assert cut_stats["totals"].pop("recut_blocks") == 0  # no face disagrees: no block is taken up again
    assert cut_stats == plain_stats
    assert_equivalent_labels(cut, _components(truth))


def test_the_seam_recut_is_on_for_overlap_and_needs_an_overlap_strategy():
    assert MergeConfig().recuts and MergeConfig(strategy="iou", seam_recut=True).recuts
    assert not MergeConfig(strategy="iou").recuts and not MergeConfig(strategy="best_match").recuts
    assert not MergeConfig(seam_recut=False).recuts
    with pytest.raises(ConfigError, match="seam_recut"):
        MergeConfig(strategy="best_match", seam_recut=True)


@pytest.mark.parametrize("seed, reread", [(0, True), (1, False)])
def test_the_lazy_merge_recuts_as_the_stored_one(tmp_path, seed, reread):
    """The lazy graph (first merge, recut, merge of the recut blocks) gives the stored merge's labels and
    statistics; only blocks with a disagreeing edge face are taken up again."""
    import dask

    plan, staged = _voronoi_windows(seed)
    cfg = MergeConfig(remove_small=False, absorb_enclosed=False)
    stored, stats = _stored_merge(staged, plan, tmp_path, cfg)
    res = merge_labels(da.from_array(np.asarray(staged), chunks=plan.slot_shape), plan=plan, config=cfg,
                       reread=reread)
    lazy, lazy_stats = dask.compute(res.labels, res.stats, scheduler="sync")
    np.testing.assert_array_equal(lazy, stored)
    assert lazy_stats == stats
    assert 0 < stats["totals"]["recut_blocks"] <= plan.n_blocks
    plain = _overlap(staged, plan)
    assert not np.array_equal(plain, stored)  # the recut changed something


def test_only_blocks_by_a_disagreeing_face_are_recut_and_the_rest_is_the_first_merges(tmp_path):
    """Windows that agree but for one block's: the stored merge recuts that block and its edge neighbours
    only (the others' summaries, faces and staged chunks are read in the first merge's folder), and its
    labels and statistics are those of the lazy graph, which computes every block's again."""
    import dask

    truth = shaped_partition((120, 120), seed=5)
    plan = TilingPlan(shape=(120, 120), tile_size=24, padding=6)
    odd = _voronoi(plan.shape, 60, seed=9)

    def segment(w):
        mine = odd if w == plan.padded_window((2, 2)) else truth
        return _components(mine[w.slices])

    staged = stage_windows(plan, segment)
    cfg = MergeConfig(strategy="overlap", remove_small=False, absorb_enclosed=False)
    stored, stats = _stored_merge(staged, plan, tmp_path, cfg)
    assert stats["totals"]["recut_blocks"] == 5  # the odd block and its four edge neighbours
    res = merge_labels(da.from_array(np.asarray(staged), chunks=plan.slot_shape), plan=plan, config=cfg)
    lazy, lazy_stats = dask.compute(res.labels, res.stats, scheduler="sync")
    np.testing.assert_array_equal(stored, lazy)
    assert stats == lazy_stats
    ids = np.unique(stored[stored > 0])
    assert ids.tolist() == list(range(1, ids.size + 1)) and _components(stored).max() == ids.size
    far = (slice(0, 24), slice(0, 24))  # a block no recut window reaches: as without the recut
    np.testing.assert_array_equal(stored[far], _overlap(staged, plan)[far])


def test_a_block_without_labels_is_not_recut_nor_filled(tmp_path):
    """A block whose window holds no label (a failed or skipped block, nodata) stays unlabelled: no face
    of it is recut, so its neighbours' labels never fill its core, and theirs keep their own."""
    import dask

    plan, staged = _voronoi_windows(0)
    staged = np.array(staged)
    _padded(staged, plan, (1, 1))[...] = 0
    cfg = MergeConfig(remove_small=False, absorb_enclosed=False)
    stored, stats = _stored_merge(staged, plan, tmp_path, cfg)
    assert not stored[plan.core_window((1, 1)).slices].any()
    assert stats["totals"]["recut_blocks"] > 0  # the other blocks' faces still disagree
    for n in ((0, 1), (1, 0), (1, 2), (2, 1)):
        assert stored[plan.core_window(n).slices].all()  # a Voronoi partition: every pixel labelled
    res = merge_labels(da.from_array(staged, chunks=plan.slot_shape), plan=plan, config=cfg)
    np.testing.assert_array_equal(dask.compute(res.labels, scheduler="sync")[0], stored)


@pytest.mark.parametrize("strategy", ["overlap", "iou"])
def test_a_recut_of_some_blocks_gives_the_strategys_statistics_and_the_lazy_result(tmp_path, strategy):
    """One block's window disagrees with its neighbours', the others agree: faces beside the recut block
    carry the strategy's own statistics (the totals sum every face), and the stored merge equals the lazy one."""
    import dask

    plan = TilingPlan(shape=(120, 120), tile_size=24, padding=6)
    truth, odd = shaped_partition(plan.shape, seed=5), _voronoi(plan.shape, 60, seed=9)
    staged = stage_windows(plan, lambda w: _components((odd if w == plan.padded_window((0, 0)) else truth)[w.slices]))
    cfg = MergeConfig(strategy=strategy, seam_recut=True)
    stored, stats = _stored_merge(staged, plan, tmp_path, cfg)
    res = merge_labels(da.from_array(np.asarray(staged), chunks=plan.slot_shape), plan=plan, config=cfg)
    lazy, lazy_stats = dask.compute(res.labels, res.stats, scheduler="sync")
    np.testing.assert_array_equal(stored, lazy)
    assert stats == lazy_stats and 0 < stats["totals"]["recut_blocks"] < plan.n_blocks
    assert {frozenset(f) for f in stats["faces"]} == {frozenset(stats["faces"][0])}  # the same keys on every face


def test_recut_staged_of_a_narrow_dtype_gives_uint32_without_wrapping_fresh_ids():
    plan, staged = _voronoi_windows(0)
    staged = np.asarray(staged)
    top = np.where(staged > 0, staged + (255 - staged.max()), 0)  # labels up to 255: fresh ids go beyond
    wide = recut_staged(top.astype(np.uint32), plan=plan)
    narrow = recut_staged(top.astype(np.uint8), plan=plan)
    assert narrow.dtype == np.uint32 and wide.max() > 255
    np.testing.assert_array_equal(narrow, wide)
