"""Seam merge: tiled == untiled, anti-chaining, reference equivalence, post-processing."""

from __future__ import annotations

import pickle

import dask
import dask.array as da
import numpy as np
import pytest
from scipy import ndimage

from remote_samsing._reference import reference_merge, reference_pipeline, reference_postprocess
from remote_samsing.exceptions import ConfigError, InputError
from remote_samsing.merge import MergeConfig, merge_labels
from remote_samsing.testing import shaped_partition, touching_labels
from remote_samsing.tiling import TilingPlan

CROSS = ndimage.generate_binary_structure(2, 1)
FULL = ndimage.generate_binary_structure(2, 2)


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------
def _rank(labels: np.ndarray) -> np.ndarray:
    """Order-preserving relabel to 1..n (0 stays 0)."""
    u, inv = np.unique(labels, return_inverse=True)
    inv = inv.reshape(labels.shape)
    if u[0] != 0:
        inv = inv + 1
    return inv.astype(np.uint32)


def stage_from_function(image: np.ndarray, plan: TilingPlan, fn) -> da.Array:
    """Staged array as the pipeline builds it: ``fn(padded window)`` per block."""
    sy, sx = plan.slot_shape
    out = np.zeros(plan.staging_shape, np.uint32)
    for iy, ix in plan.block_ids():
        w = plan.padded_window((iy, ix))
        out[iy * sy : iy * sy + w.shape[0], ix * sx : ix * sx + w.shape[1]] = _rank(np.asarray(fn(image[w.slices])))
    return da.from_array(out, chunks=plan.slot_shape)


def stage_cores(premerge: np.ndarray, plan: TilingPlan) -> da.Array:
    """Stage a pre-merge mosaic: each block's core holds its crop, order kept, halo 0."""
    sy, sx = plan.slot_shape
    out = np.zeros(plan.staging_shape, np.uint32)
    for iy, ix in plan.block_ids():
        c = plan.core_in_padded((iy, ix))
        core = premerge[plan.core_window((iy, ix)).slices]
        out[iy * sy : iy * sy + c.y1, ix * sx : ix * sx + c.x1][c.slices] = _rank(core)
    return da.from_array(out, chunks=plan.slot_shape)


def assert_same_partition(got: np.ndarray, expected: np.ndarray) -> None:
    """Equal up to a permutation of the nonzero labels."""
    assert got.shape == expected.shape
    np.testing.assert_array_equal(got == 0, expected == 0)
    fg = expected > 0
    pairs = np.unique(np.stack([got[fg].astype(np.int64), expected[fg].astype(np.int64)]), axis=1)
    assert pairs.shape[1] == np.unique(got[fg]).size == np.unique(expected[fg]).size


def postprocess_whole(labels: np.ndarray, cfg: MergeConfig) -> np.ndarray:
    """The documented post-processing on a whole (merged) label image."""
    out = labels.astype(np.int64).copy()
    if cfg.absorb_enclosed:
        padded = np.pad(out, 1, constant_values=-1)  # -1: mosaic border
        src, dst = [], []
        for a, b in ((padded[:, :-1], padded[:, 1:]), (padded[:-1, :], padded[1:, :])):
            e = a != b
            src += [a[e], b[e]]
            dst += [b[e], a[e]]
        src, dst = np.concatenate(src), np.concatenate(dst)
        keep = src > 0
        pairs = np.unique(np.stack([src[keep], dst[keep]]), axis=1)
        area = np.bincount(out.ravel())
        target = {}
        for lab in np.unique(out[out > 0]):
            nbs = pairs[1, pairs[0] == lab]
            if area[lab] <= cfg.merge_enclosed_max_area and nbs.size == 1 and nbs[0] > 0:
                target[lab] = nbs[0]
        lut = np.arange(out.max() + 1)
        for lab in target:
            t = target[lab]
            while t in target:
                t = target[t]
            lut[lab] = t
        out = lut[out]
    if cfg.remove_small:
        comps, n = ndimage.label(out > 0, structure=CROSS)
        small = np.bincount(comps.ravel(), minlength=n + 1) < cfg.min_mask_area
        small[0] = False
        out[small[comps]] = 0
    if cfg.splits:
        out = split_whole(out, cfg.split_min_area)
    return out


def split_whole(labels: np.ndarray, min_area: int) -> np.ndarray:
    """The documented split on a whole label image, label by label: the largest 4-connected part keeps
    the label (ties: first pixel in raster order), other parts >= min_area get new labels, smaller ones
    join the kept neighbour with the most 4-neighbour pixel pairs (ties: first pixel first) or 0."""
    out = labels.astype(np.int64).copy()
    parts = np.zeros_like(out)
    info = []  # (label, area, first pixel) per part, numbered from 1
    for lab in np.unique(out[out > 0]):
        comp, n = ndimage.label(out == lab, structure=CROSS)
        for k in range(1, n + 1):
            where = np.flatnonzero((comp == k).ravel())
            parts.ravel()[where] = len(info) + 1
            info.append((lab, where.size, where[0]))
    final = {}
    small = []
    next_label = out.max() + 1
    for lab in {i[0] for i in info}:
        mine = sorted((-a, f, k + 1) for k, (l_, a, f) in enumerate(info) if l_ == lab)
        final[mine[0][2]] = lab
        for neg_area, _, p in mine[1:]:
            if -neg_area >= min_area:
                final[p] = next_label
                next_label += 1
            else:
                small.append(p)
    first = {k + 1: f for k, (_, _, f) in enumerate(info)}
    padded = np.pad(parts, 1)
    keepers = set(final)  # the parts that keep their pixels; small ones join only these
    for p in small:
        mask = np.pad(parts == p, 1)
        contact = {}
        for dy, dx in ((0, 1), (0, -1), (1, 0), (-1, 0)):
            nb = np.roll(padded, (-dy, -dx), axis=(0, 1))[mask]
            for q in nb[(nb > 0) & (nb != p)]:
                if q in keepers:
                    contact[q] = contact.get(q, 0) + 1
        best = min(contact, key=lambda q: (-contact[q], first[q])) if contact else None
        final[p] = final[best] if best is not None else 0
    lut = np.zeros(len(info) + 1, np.int64)
    for p, v in final.items():
        lut[p] = v
    return lut[parts]


def run_merge(staged, plan, **cfg):
    res = merge_labels(staged, plan=plan, config=MergeConfig(**cfg))
    labels, stats = dask.compute(res.labels, res.stats, scheduler="sync")
    assert labels.dtype == np.uint32
    assert res.labels.chunks == plan.chunks
    return labels, stats


def assert_sequential(labels: np.ndarray) -> None:
    u = np.unique(labels)
    np.testing.assert_array_equal(u[u > 0], np.arange(1, u[u > 0].size + 1))


def gridded_blobs(shape, *, cell, seed, density=0.5):
    """Random blobs confined to cells of ``cell - 1`` px (grid lines of 0 between cells)."""
    rng = np.random.default_rng(seed)
    img = ndimage.gaussian_filter(rng.random(shape), 1.5) > (1 - density) * 0.5 + 0.25
    oy, ox = rng.integers(0, cell, size=2)
    img[(np.arange(shape[0]) + oy) % cell == 0, :] = False
    img[:, (np.arange(shape[1]) + ox) % cell == 0] = False
    return img


# ---------------------------------------------------------------------------
# configuration and laziness
# ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs",
    [
        {"strategy": "union"},
        {"min_iou": 0.4},
        {"min_iou": 1.0},
        {"min_mask_area": -1},
        {"min_contact_pixels": 0},
        {"remove_small": "yes"},
        {"merge_enclosed_max_area": 1.5},
        {"jitter": -1},
        {"jitter": 1.5},
    ],
)
def test_config_rejects_bad_values(kwargs):
    with pytest.raises(ConfigError):
        MergeConfig(**kwargs)


def test_overlap_needs_padding_and_inputs_are_checked():
    plan = TilingPlan(shape=(20, 20), tile_size=10, padding=0)
    staged = da.zeros(plan.staging_shape, dtype=np.uint32, chunks=plan.slot_shape)
    with pytest.raises(ConfigError, match="padding"):
        merge_labels(staged, plan=plan, config=MergeConfig())
    merge_labels(staged, plan=plan, config=MergeConfig(strategy="min_contact"))  # fine
    with pytest.raises(InputError, match="shape"):
        merge_labels(staged[:-1], plan=plan, config=MergeConfig(strategy="none"))
    with pytest.raises(InputError, match="uint"):
        merge_labels(staged.astype(np.int64), plan=plan, config=MergeConfig(strategy="none"))


def test_building_the_result_computes_nothing():
    calls = []

    def scheduler(dsk, keys, **kwargs):
        calls.append(keys)
        raise AssertionError("computed while building the graph")

    plan = TilingPlan(shape=(60, 70), tile_size=20, padding=5)
    img = gridded_blobs(plan.shape, cell=5, seed=1)
    staged = stage_from_function(img, plan, lambda w: ndimage.label(w)[0])
    valid = da.ones(plan.shape, dtype=bool, chunks=plan.chunks)
    with dask.config.set(scheduler=scheduler):
        for strategy in ("overlap", "best_match", "none"):
            res = merge_labels(staged, plan=plan, config=MergeConfig(strategy=strategy, diagnostics=True), valid=valid)
            assert res.labels.shape == plan.shape
    assert calls == []


@pytest.mark.parametrize("recut", [False, True])
def test_each_relabel_task_gets_only_its_blocks_part_of_the_tables(recut):
    """No relabel task depends on a global task's whole output (the solve's
    lookup table, the ranking of merged ids): each gets its block's item."""
    plan = TilingPlan(shape=(60, 70), tile_size=20, padding=5)
    staged = stage_from_function(gridded_blobs(plan.shape, cell=5, seed=1), plan, lambda w: ndimage.label(w)[0])
    cfg = MergeConfig(seam_recut=recut)
    res = merge_labels(staged, plan=plan, config=cfg)
    from dask.core import get_dependencies

    dsk = dict(res.labels.__dask_graph__())
    globals_ = {k for k in dsk if isinstance(k, tuple) and len(k) == 1 and str(k[0]).endswith(("-solve", "-split", "-ids"))}
    assert len(globals_) == (6 if recut else 3)  # with the recut, the first merge's too
    relabel = [k for k in dsk if isinstance(k, tuple) and str(k[0]).startswith("rs-merged-labels-")]
    assert len(relabel) == plan.n_blocks
    for key in relabel:
        deps = get_dependencies(dsk, key)
        assert not deps & globals_
        # its own block's ranks and lookup table: per-block parts of the global results
        ranks = [d for d in deps if str(d[0]).endswith("-ranks")]
        assert [r[1:] for r in ranks] == [key[1:]]
        assert get_dependencies(dsk, ranks[0]) <= globals_
        for dep in deps:
            assert all(len(d) > 1 for d in get_dependencies(dsk, dep) - globals_)


# ---------------------------------------------------------------------------
# tiled == untiled
# ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "shape,tile,padding",
    [
        ((64, 64), 16, 6),
        ((100, 130), 32, 8),
        ((97, 61), 20, 9),  # remainders absorbed / own chunk
        ((70, 200), 25, 12),
        ((50, 50), 64, 8),  # single block
        ((128, 47), 16, 7),  # single column
    ],
)
@pytest.mark.parametrize("structure", [CROSS, FULL], ids=["conn4", "conn8"])
def test_tiled_equals_untiled_for_local_segmenter(shape, tile, padding, structure):
    plan = TilingPlan(shape=shape, tile_size=tile, padding=padding)
    img = gridded_blobs(shape, cell=padding, seed=sum(shape) + tile)  # objects < padding
    staged = stage_from_function(img, plan, lambda w: ndimage.label(w, structure=structure)[0])
    cfg = dict(min_mask_area=6, merge_enclosed_max_area=20)
    got, stats = run_merge(staged, plan, **cfg)
    expected = postprocess_whole(ndimage.label(img, structure=structure)[0], MergeConfig(**cfg))
    assert expected.max() > 5
    assert_same_partition(got, expected)
    assert_sequential(got)
    assert stats["totals"]["refused"] == 0
    # without post-processing too
    got, _ = run_merge(staged, plan, remove_small=False, absorb_enclosed=False)
    assert_same_partition(got, split_whole(ndimage.label(img, structure=structure)[0], 0))


@pytest.mark.parametrize("shape,tile,padding,seed", [((90, 90), 30, 5, 0), ((120, 77), 25, 3, 1), ((64, 130), 20, 9, 2)])
def test_tiled_equals_untiled_for_touching_labels_with_postprocessing(shape, tile, padding, seed):
    """Crop-of-truth segmenter: consistent views, large touching objects, islands and enclosed labels."""
    truth = touching_labels(shape, n_seeds=shape[0] * shape[1] // 150, seed=seed, hole_frac=0.01)
    rng = np.random.default_rng(seed)
    for k in range(12):  # small squares: enclosed ones get absorbed, isolated ones are islands
        y, x = rng.integers(2, shape[0] - 4), rng.integers(2, shape[1] - 4)
        if k % 3 == 0:
            truth[y - 1 : y + 3, x - 1 : x + 3] = 0
        truth[y : y + 2, x : x + 2] = truth.max() + 1
    plan = TilingPlan(shape=shape, tile_size=tile, padding=padding)
    staged = stage_from_function(truth, plan, lambda w: w)
    cfg = MergeConfig(min_mask_area=12, merge_enclosed_max_area=30)
    got, stats = run_merge(staged, plan, min_mask_area=12, merge_enclosed_max_area=30)
    expected = postprocess_whole(truth, cfg)
    assert_same_partition(got, expected)
    assert stats["totals"]["objects_absorbed"] > 0  # the holes leave enclosed single pixels
    assert stats["totals"]["islands_removed"] > 0


@pytest.mark.parametrize("strategy", ["overlap", "best_match"])
def test_tiled_equals_untiled_with_empty_blocks(strategy):
    """Blocks without labels (nodata, nothing found) take shortcuts in the
    summary, the faces and the relabel: next to blocks with objects, with an
    object whose halo reaches into an empty block's core, the result is still
    the untiled one."""
    # a whole number of tiles: the reference cuts a remainder strip as a tile of its own, the plan does not
    shape, tile, padding = (100, 125), 25, 6
    truth = touching_labels(shape, n_seeds=60, seed=7, hole_frac=0.0)
    truth[:, 50:100] = 0  # two columns of empty blocks ...
    truth[25:50, :] = 0  # ... and a row
    truth[60:70, 45:56] = truth.max() + 1  # crosses the seam at x=50 into an otherwise empty block
    plan = TilingPlan(shape=shape, tile_size=tile, padding=padding)
    staged = stage_from_function(truth, plan, lambda w: w)
    cores_empty = sum(not truth[plan.core_window(i).slices].any() for i in plan.block_ids())
    assert cores_empty >= 8
    if strategy == "overlap":
        got, _ = run_merge(staged, plan, min_mask_area=5, merge_enclosed_max_area=20)
        expected = postprocess_whole(truth, MergeConfig(min_mask_area=5, merge_enclosed_max_area=20))
        assert_same_partition(got, expected)
    else:
        # the reference sees tile-unique labels (its pre-merge mosaic)
        premerge = truth.copy()
        for k, idx in enumerate(plan.block_ids()):
            core = premerge[plan.core_window(idx).slices]
            core[core > 0] += (k + 1) * 10_000
        got, _ = run_merge(stage_cores(premerge, plan), plan, strategy="best_match", min_mask_area=5)
        assert_same_partition(got, reference_pipeline(premerge.astype(np.uint32), tile_size=tile, min_mask_area=5))
    assert_sequential(got)


def test_enclosed_absorbed_and_islands_removed_across_seams():
    truth = np.zeros((60, 60), np.int64)
    truth[2:28, 2:28] = 1  # 676 px block around a 3x3 hole ...
    truth[14:17, 14:17] = 2  # ... holding a 9-px label; the big label keeps 667 px
    truth[40:45, 25:35] = 3  # 50 px
    truth[45:48, 25:35] = 4  # 30 px touching it: an 80-px island across the seam at y=45
    truth[35:55, 45:55] = 5  # 200 px
    truth[50:52, 40:45] = 6  # 10 px touching 5 and background: kept
    assert (truth == 1).sum() == 667
    plan = TilingPlan(shape=truth.shape, tile_size=15, padding=5)  # seams at 15, 30, 45
    staged = stage_from_function(truth, plan, lambda w: w)
    got, stats = run_merge(staged, plan)
    expected = truth.copy()
    expected[expected == 2] = 1
    expected[(expected == 3) | (expected == 4)] = 0
    assert_same_partition(got, expected)
    assert stats["totals"]["objects_absorbed"] == 1
    # the reference-compatible mode keeps the enclosed label (the reference's step is a no-op)
    got_ref, _ = run_merge(staged, plan, strategy="best_match")
    ref = reference_pipeline(truth.astype(np.uint32), tile_size=15)
    assert np.unique(ref[truth == 2]).size == 1 and ref[16, 16] != ref[5, 5]
    assert_same_partition(got_ref, ref)


def test_valid_mask_zeroes_labels_and_diagnostics_codes():
    truth = np.zeros((40, 40), np.int64)
    truth[5:35, 8:30] = 1
    truth[18:21, 18:21] = 2  # enclosed, spans the seam at x=20
    truth[2:5, 36:39] = 3  # 9-px island
    plan = TilingPlan(shape=truth.shape, tile_size=20, padding=4)
    staged = stage_from_function(truth, plan, lambda w: w)
    valid = np.ones(truth.shape, bool)
    valid[30:, :] = False
    res = merge_labels(
        staged,
        plan=plan,
        config=MergeConfig(diagnostics=True, min_mask_area=10),
        valid=da.from_array(valid, chunks=10),
    )
    labels, diag = dask.compute(res.labels, res.diagnostics, scheduler="sync")
    assert (labels[~valid] == 0).all()
    assert np.unique(labels[(truth > 0) & valid & (truth != 3)]).size == 1  # 2 absorbed into 1
    assert (labels[truth == 3] == 0).all()
    assert diag.dtype == np.uint8
    assert (diag[2:5, 36:39] == 3).all()
    assert (diag[18:21, 18:21] == 2).all()
    assert (diag[5:18, 8:30] == 1).all()  # label 1 was linked across both seams
    assert (diag[truth == 0] == 0).all()


# ---------------------------------------------------------------------------
# chaining
# ---------------------------------------------------------------------------
def test_long_thin_object_across_twenty_tiles_is_one_label():
    truth = np.zeros((30, 200), np.int64)
    truth[14:16, 1:199] = 1
    truth[3:6, 3:6] = 2
    plan = TilingPlan(shape=truth.shape, tile_size=10, padding=3)
    assert plan.grid_shape[1] == 20
    staged = stage_from_function(truth, plan, lambda w: ndimage.label(w > 0)[0])
    got, stats = run_merge(staged, plan, min_mask_area=0)
    assert np.unique(got[truth == 1]).size == 1
    assert got.max() == 2
    assert stats["totals"]["links"] >= 19


def test_field_of_tile_sized_segments_is_not_chained():
    plan = TilingPlan(shape=(80, 100), tile_size=20, padding=5)
    truth = np.zeros(plan.shape, np.int64)
    for k, idx in enumerate(plan.block_ids()):
        truth[plan.core_window(idx).slices] = k + 1
    staged = stage_from_function(truth, plan, lambda w: w)
    got, stats = run_merge(staged, plan)
    assert got.max() == plan.n_blocks
    assert stats["totals"]["links"] == 0
    # the reference's best match chains them all into one mega-segment
    got_bm, stats_bm = run_merge(staged, plan, strategy="best_match")
    assert got_bm.max() == 1
    assert stats_bm["totals"]["links"] > 0


def test_overlap_refuses_fragments_whose_views_disagree():
    # block A sees one object across the strip; block B sees it split in two halves
    plan = TilingPlan(shape=(20, 40), tile_size=20, padding=6)
    truth = np.zeros(plan.shape, np.int64)
    truth[4:16, 12:28] = 1

    sy, sx = plan.slot_shape
    staged = np.zeros(plan.staging_shape, np.uint32)
    wa = plan.padded_window((0, 0))
    staged[: wa.shape[0], : wa.shape[1]] = truth[wa.slices]
    wb = plan.padded_window((0, 1))
    b = truth[wb.slices].copy()
    b[10:, :] *= 2  # B splits the object into a top and a bottom part
    staged[: wb.shape[0], sx : sx + wb.shape[1]] = _rank(b)
    got, stats = run_merge(da.from_array(staged, chunks=plan.slot_shape), plan, min_mask_area=0, seam_recut=False)
    assert stats["faces"][0]["candidates"] == 2
    assert stats["faces"][0]["links"] == 0 and stats["faces"][0]["refused"] == 2
    assert got.max() == 3
    # touch-based merging would have made one object
    got_mc, _ = run_merge(da.from_array(staged, chunks=plan.slot_shape), plan, strategy="min_contact", min_contact_pixels=1)
    assert got_mc.max() == 1


# ---------------------------------------------------------------------------
# reference equivalence
# ---------------------------------------------------------------------------
def _ref_check(premerge, tile, strategy, **kw):
    plan = TilingPlan(shape=premerge.shape, tile_size=tile, padding=1)
    got, stats = run_merge(stage_cores(premerge, plan), plan, strategy=strategy, **kw)
    ref = reference_pipeline(
        premerge.astype(np.uint32),
        tile_size=tile,
        strategy=strategy,
        min_contact=kw.get("min_contact_pixels", 20),
        min_mask_area=kw.get("min_mask_area", 100),
    )
    assert_same_partition(got, ref)
    return got, ref, stats


def test_reference_ties_go_to_the_lower_label():
    # reference.md §1.8: 4-row example, labels 1 and 2 each touch 7 and 8 once -> all one label
    m = np.zeros((4, 8), np.int64)
    m[0:2, 0:4], m[2:4, 0:4] = 1, 2
    m[[0, 2], 4:8], m[[1, 3], 4:8] = 7, 8
    got, ref, _ = _ref_check(m, 4, "best_match", min_mask_area=0)
    assert np.unique(ref[m > 0]).size == 1
    got, ref, _ = _ref_check(m, 4, "mutual_best", min_mask_area=0)
    assert np.unique(ref[m > 0]).size == 3  # only 1-7 is mutual best


def test_reference_n_to_one_and_one_pixel_contacts():
    m = np.zeros((12, 12), np.int64)
    m[0:3, 0:6], m[3:6, 0:6] = 1, 2  # both pick 3 across x = 6: N:1
    m[0:6, 6:12] = 3
    m[6:11, 0:6], m[11, 0:6] = 4, 6  # 6 touches 5 at one pixel
    m[6:12, 6:12] = 5
    for strategy in ("best_match", "mutual_best", "min_contact"):
        _ref_check(m, 6, strategy, min_mask_area=0, min_contact_pixels=3)
    got, ref, _ = _ref_check(m, 6, "best_match", min_mask_area=0)
    assert np.unique(ref[m > 0]).size == 1


def test_reference_islands_across_seams_are_removed_before_merging():
    m = np.zeros((20, 20), np.int64)
    m[12:16, 6:10] = 1  # 16 px + 16 px island cut by x = 10: removed (min 40)
    m[12:16, 10:14] = 2
    m[0:5, 0:10] = 3  # 50 px + 50 px across the seam: kept and merged
    m[0:5, 10:20] = 4
    got, ref, _ = _ref_check(m, 10, "best_match", min_mask_area=40)
    assert (ref[12:16, 6:14] == 0).all()
    assert np.unique(ref[0:5]).size == 1


@pytest.mark.parametrize("strategy", ["best_match", "mutual_best", "min_contact"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_reference_equivalence_on_random_mosaics(strategy, seed):
    rng = np.random.default_rng(seed)
    tile = int(rng.choice([8, 12, 16]))
    ny, nx = rng.integers(2, 6, size=2)
    shape = (int(ny) * tile, int(nx) * tile)
    premerge = np.zeros(shape, np.int64)
    plan = TilingPlan(shape=shape, tile_size=tile, padding=2)
    offset = 0
    for idx in plan.block_ids():  # per-tile labels, globally unique, reference order
        w = plan.core_window(idx)
        lab = touching_labels(w.shape, n_seeds=int(rng.integers(2, 9)), seed=int(rng.integers(1 << 30)), hole_frac=0.05)
        premerge[w.slices] = np.where(lab > 0, lab + offset, 0)
        offset = max(offset, int(premerge.max()))
    _ref_check(premerge, tile, strategy, min_mask_area=int(rng.integers(0, 30)), min_contact_pixels=3)


def test_reference_reimplementation_postprocess_facts():
    # reference.md §1.7: the enclosed 9-px label survives, 50+30 touching labels are removed together,
    # a 20-px label touching a large segment is kept
    m = np.zeros((60, 60), np.uint32)
    m[2:28, 2:28] = 1
    m[14:17, 14:17] = 2
    m[40:45, 0:10] = 3
    m[45:48, 0:10] = 4
    m[35:55, 40:60] = 5
    m[30:35, 40:44] = 6
    out = reference_postprocess(m)
    assert (out[m == 2] == 2).all()
    assert (out[(m == 3) | (m == 4)] == 0).all()
    assert (out[m == 6] == 6).all()
    merged, stats = reference_merge(out, tile_size=30)
    assert stats["pairs_found"] == 0  # nothing touches a seam line
    np.testing.assert_array_equal(merged, out)


# ---------------------------------------------------------------------------
# stats and none
# ---------------------------------------------------------------------------
def test_none_keeps_block_labels_and_stats_are_per_face():
    truth = np.zeros((30, 30), np.int64)
    truth[5:25, 5:25] = 1
    plan = TilingPlan(shape=truth.shape, tile_size=10, padding=3)
    staged = stage_from_function(truth, plan, lambda w: w)
    got, stats = run_merge(staged, plan, strategy="none")
    assert got.max() == 9  # one fragment per block
    assert stats["faces"] == []
    got, stats = run_merge(staged, plan)
    assert got.max() == 1
    kinds = sorted(f["kind"] for f in stats["faces"])
    assert kinds == sorted(["x"] * 6 + ["y"] * 6 + ["xy"] * 4 + ["yx"] * 4)
    assert stats["totals"]["links"] == sum(f["links"] for f in stats["faces"]) == 20
    assert stats["totals"]["labels_before"] == 9 and stats["totals"]["labels_after"] == 1


def test_reread_from_zarr_gives_same_labels(tmp_path):
    plan = TilingPlan(shape=(60, 80), tile_size=20, padding=4)
    img = gridded_blobs(plan.shape, cell=4, seed=5)
    staged = stage_from_function(img, plan, lambda w: ndimage.label(w)[0])
    staged.to_zarr(str(tmp_path / "s.zarr"))
    from_disk = da.from_zarr(str(tmp_path / "s.zarr"))
    a = merge_labels(from_disk, plan=plan, config=MergeConfig(min_mask_area=3), reread=True).labels.compute()
    b = merge_labels(staged, plan=plan, config=MergeConfig(min_mask_area=3), reread=False).labels.compute()
    np.testing.assert_array_equal(a, b)


def write_store(staged, plan: TilingPlan, path):
    """Staged labels into a Zarr store with one chunk per block, as the pipeline stages them."""
    import zarr

    z = zarr.create_array(store=str(path), shape=staged.shape, chunks=plan.slot_shape, dtype=staged.dtype,
                          fill_value=0, zarr_format=3)
    z[...] = np.asarray(staged)
    return path


def test_staged_store_path_gives_the_same_merge(tmp_path):
    """The pipeline passes the staging store's path: tasks read their chunks
    themselves, with the same result as the staged dask array; a store that
    does not match the plan is refused before anything runs."""
    import zarr

    shape, tile, padding = (90, 70), 25, 5
    truth = touching_labels(shape, n_seeds=40, seed=3, hole_frac=0.02)
    plan = TilingPlan(shape=shape, tile_size=tile, padding=padding)
    staged = stage_from_function(truth, plan, lambda w: w)
    path = write_store(staged, plan, tmp_path / "staged.zarr")
    cfg = MergeConfig(min_mask_area=5, merge_enclosed_max_area=20)
    from_path = merge_labels(str(path), plan=plan, config=cfg)
    from_array = merge_labels(staged, plan=plan, config=cfg)
    a, sa = dask.compute(from_path.labels, from_path.stats, scheduler="sync")
    b, sb = dask.compute(from_array.labels, from_array.stats, scheduler="sync")
    np.testing.assert_array_equal(a, b)
    assert sa["totals"] == sb["totals"] and sa["totals"]["links"] > 0
    wrong = tmp_path / "wrong.zarr"
    zarr.create_array(store=str(wrong), shape=staged.shape, chunks=(10, 10), dtype=staged.dtype, zarr_format=3)
    with pytest.raises(InputError, match="chunks"):
        merge_labels(str(wrong), plan=plan, config=cfg)
    with pytest.raises(InputError, match="cannot open"):
        merge_labels(str(tmp_path / "missing.zarr"), plan=plan, config=cfg)


def _counting_thread_map(calls: dict):
    """A ``map_blocks`` for ``merge_stored`` (two threads) recording how many items each phase got."""
    from remote_samsing.merge import thread_map

    def counting(func, items, *, name):
        calls[name] = len(items)
        return thread_map(2)(func, items, name=name)

    return counting


def _slot(staged, plan, index):
    """Block ``index``'s chunk of a staged array."""
    sy, sx = plan.slot_shape
    return staged[index[0] * sy:(index[0] + 1) * sy, index[1] * sx:(index[1] + 1) * sx]


class _CollectSink:
    """A sink keeping merged blocks in one array (the default map_blocks runs threads in this process)."""

    def __init__(self, shape):
        self.out = np.full(shape, -1, np.int64)
        self.calls = 0

    def __call__(self, labels, window):
        assert labels.dtype == np.uint32 and labels.shape == window.shape
        assert (self.out[window.slices] == -1).all()  # every pixel written once
        self.out[window.slices] = labels
        self.calls += 1


def test_what_the_sink_returns_for_each_block_comes_back_by_block(tmp_path):
    """``merge_stored``'s ``"sunk"``: each block's sink value, by block index (a run's seam line counts
    travel this way); a sink returning nothing adds no entry."""
    from remote_samsing.merge import merge_stored

    plan = TilingPlan(shape=(70, 90), tile_size=25, padding=5)
    truth = touching_labels((70, 90), n_seeds=30, seed=4, hole_frac=0.05)
    path = write_store(stage_from_function(truth, plan, lambda w: w), plan, tmp_path / "staged.zarr")
    out = np.zeros(plan.shape, np.int64)

    def sink(labels, window):
        out[window.slices] = labels
        return window.y0, window.x0, int(labels.max())

    stats = merge_stored(path, plan=plan, config=MergeConfig(), workdir=tmp_path / "spill", sink=sink)
    windows = {b: plan.core_window(b) for b in plan.block_ids()}
    assert stats["sunk"] == {b: (w.y0, w.x0, int(out[w.slices].max())) for b, w in windows.items()}
    plain = merge_stored(path, plan=plan, config=MergeConfig(), workdir=tmp_path / "spill2",
                         sink=_CollectSink(plan.shape))
    assert "sunk" not in plain


@pytest.mark.parametrize(("scene", "tile", "padding"), [("kampala_crop_3857.tif", 128, 16),
                                                         ("landsat_rgb.tif", 256, 32)])
def test_the_spill_folder_holds_less_than_the_room_a_local_spill_is_given(tmp_path, data_dir, scene, tile, padding):
    """``keep_workdir`` leaves the spill folder to the caller. On the Felzenszwalb labels of a real
    scene (windows that disagree, so the recut's files are there too) it holds less than
    ``_outdir.spill_bytes``, the room a run's local spill folder must have."""
    import rasterio

    from remote_samsing._outdir import spill_bytes
    from remote_samsing.merge import merge_stored
    from remote_samsing.segmenters.classical import FelzenszwalbSegmenter

    with rasterio.open(data_dir / scene) as src:
        image = np.moveaxis(src.read(), 0, -1)
    plan = TilingPlan(shape=image.shape[:2], tile_size=tile, padding=padding)
    seg = FelzenszwalbSegmenter()
    path = write_store(stage_from_function(image, plan, lambda w: seg.segment(w, block_info={})), plan,
                       tmp_path / "staged.zarr")
    stats = merge_stored(path, plan=plan, config=MergeConfig(), workdir=tmp_path / "spill",
                         sink=_CollectSink(plan.shape), keep_workdir=True)
    assert stats["totals"]["recut_blocks"] > 0
    held = sum(p.stat().st_size for p in (tmp_path / "spill").rglob("*") if p.is_file())
    assert 0 < held < spill_bytes(plan)


@pytest.mark.parametrize("strategy", ["overlap", "best_match", "mutual_best", "min_contact", "none"])
@pytest.mark.parametrize("shape,tile,padding,seed", [((90, 70), 25, 5, 3), ((61, 130), 30, 7, 8), ((40, 40), 64, 8, 1)])
def test_out_of_core_merge_equals_the_graph(tmp_path, strategy, shape, tile, padding, seed):
    """``merge_stored`` (phase by phase, spilled to disk: what the pipeline
    runs) gives exactly the labels and statistics of ``merge_labels``, for
    every strategy, and leaves no spill files behind."""
    from remote_samsing.merge import merge_stored

    truth = touching_labels(shape, n_seeds=40, seed=seed, hole_frac=0.05)
    truth[: shape[0] // 2, :tile] = 0  # an empty block (the relabel's fast path)
    plan = TilingPlan(shape=shape, tile_size=tile, padding=padding)
    staged = stage_from_function(truth, plan, lambda w: w)
    path = write_store(staged, plan, tmp_path / "staged.zarr")
    cfg = MergeConfig(strategy=strategy, min_mask_area=5, merge_enclosed_max_area=20, min_contact_pixels=2)
    graph = merge_labels(str(path), plan=plan, config=cfg)
    expected, expected_stats = dask.compute(graph.labels, graph.stats, scheduler="sync")
    sink = _CollectSink(shape)
    stats = merge_stored(path, plan=plan, config=cfg, workdir=tmp_path / "spill", sink=sink)
    assert sink.calls == plan.n_blocks
    np.testing.assert_array_equal(sink.out, expected)  # the same ids, not only the same partition
    timings = stats.pop("phase_seconds")
    assert stats == expected_stats
    assert {"final", "ids", "relabel"} <= set(timings) and ("first-summarize" if cfg.recuts else "summarize") in timings
    assert not (tmp_path / "spill").exists()
    if strategy != "none" and plan.n_blocks > 1:
        assert stats["totals"]["links"] > 0
    # per-face statistics to a file: the same list, only the sums returned
    import json

    sink = _CollectSink(shape)
    to_file = merge_stored(path, plan=plan, config=cfg, workdir=tmp_path / "spill", sink=sink,
                           faces_path=tmp_path / "faces.json")
    to_file.pop("phase_seconds")
    assert json.loads((tmp_path / "faces.json").read_text()) == json.loads(json.dumps(expected_stats["faces"]))
    assert to_file["faces"] is None and to_file["totals"] == expected_stats["totals"]


@pytest.mark.parametrize("strategy", ["overlap", "best_match"])
def test_out_of_core_merge_with_a_token_reads_each_spill_file_once_per_process(tmp_path, monkeypatch, strategy):
    """With a run token, a process reads back no spill file it wrote or read
    before (a neighbour's summary, a group file): fewer reads, the very same
    labels and statistics; another token reads the folder again."""
    from remote_samsing.merge import _stored, merge_stored

    shape, tile, padding = (90, 70), 25, 5
    truth = touching_labels(shape, n_seeds=40, seed=5, hole_frac=0.05)
    plan = TilingPlan(shape=shape, tile_size=tile, padding=padding)
    path = write_store(stage_from_function(truth, plan, lambda w: w), plan, tmp_path / "staged.zarr")
    cfg = MergeConfig(strategy=strategy, min_mask_area=5, merge_enclosed_max_area=20, min_contact_pixels=2)
    read = []
    real = _stored.read_many

    def counting(paths, **kw):
        paths = list(paths)
        read.extend(paths)
        return real(paths, **kw)

    monkeypatch.setattr(_stored, "read_many", counting)
    results = {}
    for token in (None, "run-a", "run-b"):
        read.clear()
        sink = _CollectSink(shape)
        stats = merge_stored(path, plan=plan, config=cfg, workdir=tmp_path / "spill", sink=sink, token=token)
        stats.pop("phase_seconds")
        results[token] = (sink.out, stats, len(read))
    plain, held, again = results[None], results["run-a"], results["run-b"]
    for got in (held, again):
        np.testing.assert_array_equal(got[0], plain[0])
        assert got[1] == plain[1]
    assert held[2] < plain[2] and again[2] == held[2]


def test_out_of_core_merge_empties_a_spill_folder_of_another_layout(tmp_path):
    """A folder stamped for the same plan and configuration by another spill layout (a resumed run after
    an upgrade) is emptied, not read: its files would not decode."""
    from dask.base import tokenize

    from remote_samsing.merge import merge_stored

    shape, plan, path, cfg, plain, expected = _plain_merge(tmp_path, "overlap", False, seed=2)
    work = tmp_path / "old"
    work.mkdir()
    (work / "config.token").write_text(tokenize(plan, cfg))
    for index in plan.block_ids():
        (work / f"faces_{index[0]}_{index[1]}.pkl").write_bytes(pickle.dumps({"faces": []}))
    sink = _CollectSink(shape)
    got = merge_stored(path, plan=plan, config=cfg, workdir=work, sink=sink)
    np.testing.assert_array_equal(sink.out, plain.out)
    got.pop("phase_seconds"), expected.pop("phase_seconds")
    assert got == expected


def test_held_spill_files_are_bounded_and_of_one_run():
    from remote_samsing.merge._stored import _Held

    held = _Held(10)
    held.put("a", "x", b"1234")
    held.put("a", "y", b"5678")
    assert held.get("a", "x") == b"1234"  # the most recently used from here on
    held.put("a", "z", b"9abc")  # 12 bytes: the least recently used goes
    assert held.get("a", "y") is None and held.get("a", "x") == b"1234" and held.get("a", "z") == b"9abc"
    assert held.get("b", "x") is None  # another run's token sees nothing
    held.put("b", "w", b"00")
    assert held.get("a", "x") is None and held.get("b", "w") == b"00" and held.nbytes == 2


def _plain_merge(tmp_path, strategy, remove_small, *, seed):
    """A staged 90 x 70 mosaic of touching labels at tile 25 and its phase-by-phase merge (``merge_stored``):
    (shape, plan, staged path, config, the sink holding the merged labels, the statistics)."""
    from remote_samsing.merge import merge_stored

    shape, tile, padding = (90, 70), 25, 5
    truth = touching_labels(shape, n_seeds=40, seed=seed, hole_frac=0.05)
    plan = TilingPlan(shape=shape, tile_size=tile, padding=padding)
    path = write_store(stage_from_function(truth, plan, lambda w: w), plan, tmp_path / "staged.zarr")
    cfg = MergeConfig(strategy=strategy, remove_small=remove_small, min_mask_area=5, merge_enclosed_max_area=20,
                      min_contact_pixels=2)
    plain = _CollectSink(shape)
    expected = merge_stored(path, plan=plan, config=cfg, workdir=tmp_path / "a", sink=plain)
    return shape, plan, path, cfg, plain, expected


@pytest.mark.parametrize(("strategy", "remove_small"), [("overlap", False), ("best_match", True), ("none", False)])
def test_out_of_core_merge_hands_its_phases_over_at_once(tmp_path, strategy, remove_small):
    """With ``map_phases`` the merge hands every phase over in one call, in
    the order they must run, each waiting for the one before, except the
    sink's preparation, which waits for nothing and is waited for by the
    relabel: it runs once, before the first block reaches the sink. The
    labels and statistics are those of the phase-by-phase merge."""
    from remote_samsing.merge import merge_stored, thread_map

    shape, plan, path, cfg, plain, expected = _plain_merge(tmp_path, strategy, remove_small, seed=4)
    handed = []
    events = []

    def map_phases(phases):
        handed.extend((name, len(items), *after) for name, func, items, *after in phases)
        run = thread_map(2)
        return [run(func, items, name=name) for name, func, items, *_ in phases], {p[0]: 0.5 for p in phases}

    class Sink(_CollectSink):
        def __call__(self, labels, window):
            events.append("block")
            super().__call__(labels, window)

    sink = Sink(shape)
    got = merge_stored(path, plan=plan, config=cfg, workdir=tmp_path / "b", sink=sink, map_phases=map_phases,
                       prepare_sink=lambda: events.append("prepared"))
    n = plan.n_blocks
    chain = [("merge-summarize", n)]
    if strategy == "best_match":
        chain += [("merge-comps", n), ("merge-islands", 1)]
    if strategy != "none":
        chain += [("merge-faces", n), ("merge-solve", 1)]
    chain += [("merge-final", n)] + ([("merge-split", 1)] if strategy == "overlap" else [])
    chain += [("merge-ids", 1)]
    if cfg.recuts:  # the first merge to its ids, the recut, then the merge of the recut blocks (summarized)
        chain = [(f"merge-first-{name[len('merge-'):]}", k) for name, k in chain] + [("merge-recut", n)] + chain[1:]
    chain += [("merge-sink", 1, ()), ("merge-relabel", n, ("merge-ids", "merge-sink"))]
    assert handed == chain
    assert events == ["prepared"] + ["block"] * n
    np.testing.assert_array_equal(sink.out, plain.out)
    assert got.pop("phase_seconds") == {name[len("merge-"):]: 0.5 for name, *_ in chain}
    expected.pop("phase_seconds")
    assert got == expected


@pytest.mark.parametrize(("strategy", "remove_small"), [("overlap", True), ("best_match", True), ("none", False)])
def test_out_of_core_merge_phases_may_run_again(tmp_path, strategy, remove_small):
    """The scheduler runs a task again when a lost worker held its result and
    a later task still needs it, also once later phases have run: every
    phase, run a second time on its own after all of them ran, finds its
    inputs and gives the same results, and the sink gets the same blocks
    again."""
    from remote_samsing.merge import merge_stored, thread_map

    shape, plan, path, cfg, plain, expected = _plain_merge(tmp_path, strategy, remove_small, seed=9)
    run = thread_map(2)
    firsts = []

    def twice(phases):
        firsts.extend(run(func, items, name=name) for name, func, items, *_ in phases)
        # then each phase alone, the last first: every one after all the others ran
        again = [run(func, items, name=name) for name, func, items, *_ in reversed(phases)][::-1]
        assert again == firsts
        return again, {}

    class Again:
        def __init__(self):
            self.out = np.zeros(shape, np.int64)
            self.calls = 0

        def __call__(self, labels, window):
            if self.calls >= plan.n_blocks:  # the second time round: the very same block
                np.testing.assert_array_equal(self.out[window.slices], labels)
            self.out[window.slices] = labels
            self.calls += 1

    sink = Again()
    got = merge_stored(path, plan=plan, config=cfg, workdir=tmp_path / "b", sink=sink, map_phases=twice,
                       prepare_sink=lambda: None)
    assert sink.calls == 2 * plan.n_blocks
    np.testing.assert_array_equal(sink.out, plain.out)
    got.pop("phase_seconds"), expected.pop("phase_seconds")
    assert got == expected
    assert not (tmp_path / "b").exists()


def test_out_of_core_merge_uses_summaries_written_at_staging(tmp_path):
    """Blocks summarized when staged (``stage_summary``, as the pipeline's
    segment tasks do) are not read back by the merge's first phase; the
    result is the same. A spill folder made for another configuration is
    emptied, never reused."""
    from remote_samsing.merge import merge_stored, prepare_workdir, stage_summary

    shape, tile, padding = (90, 70), 25, 5
    truth = touching_labels(shape, n_seeds=40, seed=4, hole_frac=0.05)
    plan = TilingPlan(shape=shape, tile_size=tile, padding=padding)
    staged = stage_from_function(truth, plan, lambda w: w).compute()
    path = write_store(staged, plan, tmp_path / "staged.zarr")
    cfg = MergeConfig(min_mask_area=5, merge_enclosed_max_area=20)
    calls = {}
    counting = _counting_thread_map(calls)

    plain = _CollectSink(shape)
    expected = merge_stored(path, plan=plan, config=cfg, workdir=tmp_path / "a", sink=plain, map_blocks=counting)
    first = "merge-first-" if cfg.recuts else "merge-"  # the recut's first merge summarizes the staged blocks
    assert calls[f"{first}summarize"] == plan.n_blocks
    with pytest.raises(ConfigError, match="sink"):
        merge_stored(path, plan=plan, config=cfg, workdir=tmp_path / "c", sink="labels.zarr")
    with pytest.raises(InputError, match="cannot open"):
        merge_stored(tmp_path / "missing.zarr", plan=plan, config=cfg, workdir=tmp_path / "c", sink=plain)
    assert not (tmp_path / "c").exists()  # refused before anything was created
    work = tmp_path / "b"
    # a stale folder of another configuration: its files must not be used
    prepare_workdir(work, plan=plan, config=MergeConfig(min_mask_area=50))
    (work / "late_0_0.pkl").write_bytes(b"stale")
    prepare_workdir(work, plan=plan, config=cfg)
    assert not (work / "late_0_0.pkl").exists()
    skipped = list(plan.block_ids())[:-2]  # two blocks left for the summary phase
    for index in skipped:
        stage_summary(_slot(staged, plan, index), plan=plan, index=index, config=cfg, workdir=work)
    calls.clear()
    sink = _CollectSink(shape)
    got = merge_stored(path, plan=plan, config=cfg, workdir=work, sink=sink, map_blocks=counting)
    assert calls[f"{first}summarize"] == 2 and calls["merge-relabel"] == plan.n_blocks
    np.testing.assert_array_equal(sink.out, plain.out)
    got.pop("phase_seconds"), expected.pop("phase_seconds")
    assert got == expected


@pytest.mark.parametrize("strategy,remove_small", [("overlap", True), ("min_contact", False), ("best_match", True),
                                                   ("none", True)])
def test_out_of_core_merge_uses_faces_computed_ahead(tmp_path, strategy, remove_small):
    """Faces computed while blocks were still being staged (``face_schedule``
    says when a block's faces are ready, ``stage_faces`` writes them, as the
    pipeline's segmentation stage does) are not computed again by the merge,
    and the result is the same. Each block's faces are handed out exactly
    once, as soon as the block and every neighbour they read are staged;
    never where the faces need the global island solve first."""
    from remote_samsing.merge import face_schedule, merge_stored, prepare_workdir, stage_faces, stage_summary
    from remote_samsing.merge._blocks import owned_faces

    shape, tile, padding = (90, 70), 25, 5
    truth = touching_labels(shape, n_seeds=40, seed=6, hole_frac=0.05)
    plan = TilingPlan(shape=shape, tile_size=tile, padding=padding)
    staged = stage_from_function(truth, plan, lambda w: w).compute()
    path = write_store(staged, plan, tmp_path / "staged.zarr")
    cfg = MergeConfig(strategy=strategy, remove_small=remove_small, min_mask_area=5, merge_enclosed_max_area=20,
                      min_contact_pixels=2)
    calls = {}
    counting = _counting_thread_map(calls)

    plain = _CollectSink(shape)
    expected = merge_stored(path, plan=plan, config=cfg, workdir=tmp_path / "a", sink=plain, map_blocks=counting)
    ready = face_schedule(plan, cfg)
    work = tmp_path / "b"
    prepare_workdir(work, plan=plan, config=cfg)
    if strategy == "none" or (strategy == "best_match" and remove_small):
        assert ready is None  # no faces, or faces that wait for the island solve
        stage_summary(_slot(staged, plan, (0, 0)), plan=plan, index=(0, 0), config=cfg, workdir=work)
        assert stage_faces((0, 0), plan=plan, config=cfg, workdir=work) is False
        return
    offsets = ((0, 1), (1, 0), (1, 1), (1, -1)) if strategy == "overlap" else ((0, 1), (1, 0))
    order = list(plan.block_ids())
    np.random.default_rng(1).shuffle(order)
    done, handed = set(), []
    # a block whose neighbour is not summarized yet: nothing written
    first = order[0]
    stage_summary(_slot(staged, plan, first), plan=plan, index=first, config=cfg, workdir=work)
    if owned_faces(plan, first, offsets)[1]:
        assert stage_faces(first, plan=plan, config=cfg, workdir=work) is False
        assert not (work / f"faces_{first[0]}_{first[1]}.pkl").exists()
    for iy, ix in order:
        stage_summary(_slot(staged, plan, (iy, ix)), plan=plan, index=(iy, ix), config=cfg, workdir=work)
        done.add((iy, ix))
        for b in ready((iy, ix)):
            needs = {b, *owned_faces(plan, b, offsets)[1]}
            assert needs <= done and (iy, ix) in needs  # ready exactly when its last input is staged
            assert stage_faces(b, plan=plan, config=cfg, workdir=work) is True
            handed.append(b)
    assert sorted(handed) == sorted(plan.block_ids())  # every block once
    calls.clear()
    sink = _CollectSink(shape)
    got = merge_stored(path, plan=plan, config=cfg, workdir=work, sink=sink, map_blocks=counting)
    first = "merge-first-" if cfg.recuts else "merge-"  # the recut's first merge reads them
    assert calls[f"{first}summarize"] == 0 and calls[f"{first}faces"] == 0
    assert calls["merge-relabel"] == plan.n_blocks
    np.testing.assert_array_equal(sink.out, plain.out)
    got.pop("phase_seconds"), expected.pop("phase_seconds")
    assert got == expected


def test_ranking_merged_ids_step_by_step_equals_a_global_sort():
    """The relabel's sequential ids: the stepwise ranking (bounded memory)
    gives exactly each id's rank among all blocks' distinct ids."""
    from remote_samsing.merge._solve import rank_ids
    from remote_samsing.tiling import block_label_offset

    rng = np.random.default_rng(0)
    for _ in range(30):
        n_blocks = int(rng.integers(1, 900))
        gids = []
        for _ in range(int(rng.integers(0, 30))):
            n = int(rng.integers(0, 50))
            owners, local = rng.integers(0, n_blocks, n), rng.integers(1, 20, n)
            gids.append(np.array([block_label_offset(o) | v for o, v in zip(owners, local)], np.uint64))
        *ranks, n_ids = rank_ids(gids, owners_per_step=int(rng.integers(1, 300)))
        everything = np.unique(np.concatenate(gids)) if gids else np.empty(0, np.uint64)
        assert n_ids == everything.size
        for g, r in zip(gids, ranks):
            assert r.dtype == np.uint32
            np.testing.assert_array_equal(r, np.searchsorted(everything, g) + 1)


# ---------------------------------------------------------------------------
# exact wherever the windows agree, whatever the objects' size and shape
# ---------------------------------------------------------------------------
def _components(window):
    """The segmenter whose windows agree: 4-connected components of the partition in the window."""
    from skimage.measure import label

    return label(window, background=0, connectivity=1)


@pytest.mark.parametrize("seed", range(12))
def test_tiled_equals_untiled_for_any_object_size_and_shape(seed):
    rng = np.random.default_rng(100 + seed)
    shape = (int(rng.integers(60, 140)), int(rng.integers(60, 140)))
    tile = int(rng.integers(12, 40))
    padding = int(rng.integers(1, tile // 2 + 1))
    truth = shaped_partition(shape, seed=seed)
    plan = TilingPlan(shape=shape, tile_size=tile, padding=padding)
    staged = stage_from_function(truth, plan, _components)
    got, stats = run_merge(staged, plan, remove_small=False, absorb_enclosed=False)
    assert_same_partition(got, truth)
    assert stats["totals"]["excluded"] == 0 and stats["totals"]["split_by_a"] == stats["totals"]["split_by_b"] == 0
    cfg = dict(min_mask_area=8, merge_enclosed_max_area=25)
    got, _ = run_merge(staged, plan, **cfg)
    assert_same_partition(got, postprocess_whole(truth, MergeConfig(**cfg)))


@pytest.mark.parametrize("threshold", [40, 55, 70])
@pytest.mark.parametrize("tile,padding", [(37, 1), (64, 8), (97, 20)])
def test_thresholded_real_scene_is_rebuilt_exactly(data_dir, threshold, tile, padding):
    """Connected components of a real scene's bright regions (objects far larger than the padding)."""
    import rasterio

    with rasterio.open(data_dir / "neon_osbs.tif") as f:
        grey = f.read().mean(axis=0)
    img = grey > np.percentile(grey, threshold)
    plan = TilingPlan(shape=img.shape, tile_size=tile, padding=padding)
    staged = stage_from_function(img, plan, lambda w: ndimage.label(w, structure=CROSS)[0])
    got, _ = run_merge(staged, plan, remove_small=False, absorb_enclosed=False)
    assert_same_partition(got, ndimage.label(img, structure=CROSS)[0])
    if padding < 10:  # the first-generation rule compares whole fragments inside the strip: it splits some
        old, _ = run_merge(staged, plan, strategy="iou", remove_small=False, absorb_enclosed=False)
        assert old.max() > got.max()


def test_u_shape_whose_arms_join_outside_one_window_is_one_object():
    """The left block sees two separate pieces of one object (their connection lies beyond its
    window); the right block sees them joined. The left block's view of each piece agrees with
    the right's, so both link."""
    plan = TilingPlan(shape=(40, 60), tile_size=20, padding=8)
    truth = np.zeros(plan.shape, np.int64)
    truth[5:31, 13:15] = 1  # first arm, in the left core
    truth[30:32, 13:37] = 1  # joined below ...
    truth[10:32, 35:37] = 1  # ... and up on the right, beyond the left window (x < 28)
    truth[10:12, 17:37] = 1  # back to the left
    truth[10:26, 17:19] = 1  # second arm, in the left core
    staged = stage_from_function(truth, plan, _components)
    assert _components(truth[plan.padded_window((0, 0)).slices]).max() == 2  # two pieces for the left block
    got, stats = run_merge(staged, plan, remove_small=False, absorb_enclosed=False)
    assert_same_partition(got, truth)
    assert stats["totals"]["excluded"] == 0
    # comparing whole fragments inside the strip refuses the smaller piece
    old, _ = run_merge(staged, plan, strategy="iou", remove_small=False, absorb_enclosed=False)
    assert old.max() == 2


# ---------------------------------------------------------------------------
# where windows disagree: never worse than the worst single window
# ---------------------------------------------------------------------------
def _pair_fusing(truth, plan, *, parity):
    """Staged labels of windows that each fuse a different pair of neighbouring true objects:
    window (iy, ix) fuses objects k and k + 1 where k has the window's parity (true objects are
    numbered along a row)."""
    sy, sx = plan.slot_shape
    out = np.zeros(plan.staging_shape, np.uint32)
    for iy, ix in plan.block_ids():
        w = plan.padded_window((iy, ix))
        t = truth[w.slices].copy()
        p = (iy + ix + parity) % 2
        fused = np.where((t > 0) & ((t - 1) % 2 == p), t + 1, t)  # k (with k - 1 = p mod 2) joins k + 1
        out[iy * sy : iy * sy + w.shape[0], ix * sx : ix * sx + w.shape[1]] = _rank(fused)
    return da.from_array(out, chunks=plan.slot_shape)


def _most_true_objects(got, truth):
    pairs = np.unique(np.stack([got[truth > 0], truth[truth > 0]]), axis=1)
    pairs = pairs[:, pairs[0] > 0]
    return int(np.bincount(pairs[0]).max())


@pytest.mark.parametrize("parity", [0, 1])
@pytest.mark.parametrize("diagonal", [False, True])
def test_windows_fusing_alternating_pairs_do_not_chain(parity, diagonal):
    plan = TilingPlan(shape=(60, 120), tile_size=20, padding=6)
    truth = np.zeros(plan.shape, np.int64)
    # touching vertical stripes 4 px wide, numbered left to right (diagonal: slanted stripes)
    yy, xx = np.mgrid[: plan.shape[0], : plan.shape[1]]
    truth[:] = ((xx + (yy if diagonal else 0)) // 4) + 1
    staged = _pair_fusing(truth, plan, parity=parity)
    got, stats = run_merge(staged, plan, remove_small=False, absorb_enclosed=False, seam_recut=False)
    assert _most_true_objects(got, truth) <= 2
    assert stats["totals"]["split_by_a"] + stats["totals"]["split_by_b"] > 0
    cut, _ = run_merge(staged, plan, remove_small=False, absorb_enclosed=False)  # the recut keeps that bound
    assert _most_true_objects(cut, truth) <= 2
    # the first-generation rule chains them
    old, _ = run_merge(staged, plan, strategy="iou", remove_small=False, absorb_enclosed=False)
    assert _most_true_objects(old, truth) >= _most_true_objects(got, truth)


def test_big_segments_seen_by_each_window_do_not_make_a_mega_segment():
    """Each window sees one big segment over its own core and small tiles elsewhere."""
    plan = TilingPlan(shape=(80, 100), tile_size=20, padding=6)
    yy, xx = np.mgrid[: plan.shape[0], : plan.shape[1]]
    truth = (yy // 5) * 100 + (xx // 5) + 1  # a field of 5 px tiles
    sy, sx = plan.slot_shape
    staged = np.zeros(plan.staging_shape, np.uint32)
    for iy, ix in plan.block_ids():
        w = plan.padded_window((iy, ix))
        t = truth[w.slices].copy()
        core = plan.core_in_padded((iy, ix))
        t[core.slices] = truth.max() + 1  # the big segment
        staged[iy * sy : iy * sy + w.shape[0], ix * sx : ix * sx + w.shape[1]] = _rank(t)
    got, _ = run_merge(da.from_array(staged, chunks=plan.slot_shape), plan, remove_small=False,
                       absorb_enclosed=False)
    sizes = np.bincount(got.ravel())[1:]
    assert sizes.max() <= max(plan.core_window(i).shape[0] * plan.core_window(i).shape[1] for i in plan.block_ids())


def _seam_det(out, truth, plan):
    """Det@0.5 (greedy oracle) and SS-Det@0.5, in %, of the true objects with pixels in two or more cores."""
    from remote_samsing._arrays import unique_pairs
    from remote_samsing.metrics import greedy_oracle

    owner = np.zeros(truth.shape, np.int64)
    for k, idx in enumerate(plan.block_ids()):
        owner[plan.core_window(idx).slices] = k
    fg = truth > 0
    t, _, _ = unique_pairs(truth[fg].astype(np.int64), owner[fg])
    seam = np.unique(t[1:][t[1:] == t[:-1]])
    both = (out > 0) & fg
    pt, po, n = unique_pairs(truth[both].astype(np.int64), out[both].astype(np.int64))
    seg, obj = np.bincount(out.ravel()), np.bincount(truth.ravel())
    det = ss = 0
    for o in seam:
        sel = pt == o
        _, iou = greedy_oracle(n[sel], seg[po[sel]], int(obj[o]))
        det += iou >= 0.5
        ss += sel.any() and (n[sel] / (seg[po[sel]] + obj[o] - n[sel])).max() >= 0.5
    return 100.0 * det / seam.size, 100.0 * ss / seam.size, seam.size


def _tiled_vs_one_window(truth, image, *, tile, padding, seeds):
    from remote_samsing.testing import SAMLikeWindows, stage_windows
    from remote_samsing.tiling import Window

    plan = TilingPlan(shape=truth.shape, tile_size=tile, padding=padding)
    drops = []
    for seed in seeds:
        seg = SAMLikeWindows(truth=truth, image=image, seed=seed)
        staged = da.from_array(stage_windows(plan, seg), chunks=plan.slot_shape)
        got, _ = run_merge(staged, plan, remove_small=False, absorb_enclosed=False)
        one = seg(Window(0, truth.shape[0], 0, truth.shape[1]))
        det, ss, n = _seam_det(got, truth, plan)
        det1, ss1, _ = _seam_det(one, truth, plan)
        drops.append((n, det1 - det, ss1 - ss))
    n = sum(d[0] for d in drops)
    return n, sum(d[0] * d[1] for d in drops) / n, sum(d[0] * d[2] for d in drops) / n


def test_sam_like_disagreement_keeps_seam_objects_as_one_window_does():
    """A stand-in for SAM2 (not SAM2): objects with window-dependent boundary jitter, misses and
    splits; seam-crossing objects are detected tiled as in one window over the whole mosaic."""
    truth = touching_labels((320, 320), n_seeds=60, seed=4, hole_frac=0.0)
    truth[ndimage.binary_dilation(ndimage.morphological_gradient(truth, size=2) > 0)] = 0  # gaps between objects
    n, det_drop, ss_drop = _tiled_vs_one_window(truth, None, tile=96, padding=16, seeds=range(3))
    assert n >= 60
    assert det_drop <= 1.0 and ss_drop <= 1.0


def test_sam_like_disagreement_on_real_buildings(data_dir):
    """The same on real buildings over their imagery (SpaceNet Atlanta crop, Felzenszwalb stuff between
    them), five stand-in seeds. The committed 512 px crop takes T = 128, P = 16 to have seams worth
    counting; the benchmark runs T = 256, P = 32 on the larger shared scenes."""
    import rasterio

    from remote_samsing.metrics import load_ground_truth

    with rasterio.open(data_dir / "atlanta_crop_32616.tif") as f:
        image = f.read(1).astype(np.float64)
        truth = load_ground_truth(data_dir / "atlanta_crop_buildings.geojson", shape=image.shape, crs=f.crs,
                                  transform=f.transform).instances
    n, det_drop, ss_drop = _tiled_vs_one_window(truth, image / image.max(), tile=128, padding=16, seeds=range(5))
    assert n >= 40
    assert abs(det_drop) <= 1.0 and abs(ss_drop) <= 1.0


def _square_split_by_one_block():
    """A square over four blocks; block (0, 1) splits it in two along a diagonal, the others see it whole."""
    plan = TilingPlan(shape=(40, 40), tile_size=20, padding=6)
    truth = np.zeros(plan.shape, np.int64)
    truth[8:32, 8:32] = 1
    yy, xx = np.mgrid[:40, :40]
    sy, sx = plan.slot_shape
    staged = np.zeros(plan.staging_shape, np.uint32)
    for iy, ix in plan.block_ids():
        w = plan.padded_window((iy, ix))
        t = truth[w.slices].copy()
        if (iy, ix) == (0, 1):
            t[(t == 1) & ((yy + xx)[w.slices] >= 37)] = 2
        staged[iy * sy : iy * sy + w.shape[0], ix * sx : ix * sx + w.shape[1]] = t
    return plan, staged


def test_a_split_both_windows_saw_is_not_undone_by_a_chain_elsewhere():
    """With the disagreement rule out of the way (a jitter tolerance wider than the square), the
    two halves of block (0, 1) each link to the whole square through a different face, but the
    halves are an exclusion group (the other blocks' pieces overlap both inside (0, 1)'s window):
    the second link is refused, counted on its face and coded 4 in the diagnostics."""
    plan, staged = _square_split_by_one_block()
    res = merge_labels(da.from_array(staged, chunks=plan.slot_shape), plan=plan,
                       config=MergeConfig(remove_small=False, absorb_enclosed=False, diagnostics=True, jitter=50,
                                          seam_recut=False))
    got, diag, stats = dask.compute(res.labels, res.diagnostics, res.stats, scheduler="sync")
    assert got.max() == 2  # the whole square, and block (0, 1)'s second half
    assert stats["totals"]["excluded"] == 1 and stats["totals"]["disagreed"] == 0
    assert sum(f["excluded"] for f in stats["faces"]) == 1
    refused = diag == 4
    assert set(np.unique(got[refused]).tolist()) == {1, 2}  # both ends of the refused link
    # the first-generation rule has no exclusions: the chain joins both halves
    old, _ = run_merge(da.from_array(staged, chunks=plan.slot_shape), plan, strategy="iou", remove_small=False,
                       absorb_enclosed=False)
    assert old.max() == 1


def test_a_link_across_a_disagreement_thicker_than_the_jitter_is_refused():
    """By default the whole square's pieces hold the other half of block (0, 1)'s split, a region
    far thicker than boundary jitter: every link of the halves is refused (``disagreed``, code 4),
    so the halves stay apart and neither joins the square the other blocks see."""
    plan, staged = _square_split_by_one_block()
    res = merge_labels(da.from_array(staged, chunks=plan.slot_shape), plan=plan,
                       config=MergeConfig(remove_small=False, absorb_enclosed=False, diagnostics=True,
                                          seam_recut=False))
    got, diag, stats = dask.compute(res.labels, res.diagnostics, res.stats, scheduler="sync")
    assert got.max() == 3
    block01 = plan.core_window((0, 1)).slices
    assert np.unique(got[block01][got[block01] > 0]).size == 2
    assert np.unique(got[got > 0][~np.isin(got[got > 0], np.unique(got[block01]))]).size == 1
    # the three faces of block (0, 1) each refuse one link for the disagreement
    t = stats["totals"]
    assert t["disagreed"] == 3 and t["excluded"] == 0
    assert t["candidates"] == t["links"] + t["refused"] + t["disagreed"]
    assert sorted(tuple(map(tuple, f["blocks"])) for f in stats["faces"] if f["disagreed"]) == [
        ((0, 0), (0, 1)), ((0, 1), (1, 0)), ((0, 1), (1, 1))]
    assert set(np.unique(got[diag == 4]).tolist()) == {1, 2, 3}


@pytest.mark.parametrize(("x0", "refused"), [(18, False), (14, True)])
def test_a_thin_whole_piece_is_evidence_only_where_its_window_view_ends(x0, refused):
    """Two blocks see one object; the right block also labels a 2-px sliver (28 px) inside it. The
    sliver is thinner than the jitter, so it refuses the link only where it is all that block saw of
    its label because the block's view ends there (it touches the block's left window edge, x = 14)."""
    plan = TilingPlan(shape=(20, 40), tile_size=20, padding=6)
    sy, sx = plan.slot_shape
    staged = np.zeros(plan.staging_shape, np.uint32)
    for iy, ix in plan.block_ids():
        w = plan.padded_window((iy, ix))
        t = np.ones(w.shape, np.uint32)
        if ix == 1:
            t[3:17, x0 - w.x0 : x0 - w.x0 + 2] = 2
        staged[iy * sy : iy * sy + w.shape[0], ix * sx : ix * sx + w.shape[1]] = t
    got, stats = run_merge(da.from_array(staged, chunks=plan.slot_shape), plan, remove_small=False,
                           absorb_enclosed=False, split_parts=False, seam_recut=False)
    assert stats["totals"]["disagreed"] == int(refused)
    assert np.unique(got[:, :20]).size == 1 and np.unique(got[:, 20:]).size == 1
    assert (got[0, 0] != got[0, 39]) == refused


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("parity", [0, 1])
def test_windows_fusing_pairs_of_unequal_objects_do_not_chain(seed, parity):
    """Pair-fusing windows over stripes of unequal widths (5 to 12 px, all wider than twice the
    jitter): where one window fuses two stripes the other keeps apart, in the region both saw, the
    link is refused, so no output label holds more than the two objects a window fused. Without the
    disagreement rule (a tolerance wider than the stripes) labels collect three."""
    plan = TilingPlan(shape=(60, 120), tile_size=20, padding=6)
    widths = np.random.default_rng(seed).integers(5, 13, 60)
    stripe = np.searchsorted(np.cumsum(widths), np.arange(plan.shape[1]), side="right") + 1
    truth = np.broadcast_to(stripe, plan.shape).astype(np.int64)
    staged = _pair_fusing(truth, plan, parity=parity)
    got, stats = run_merge(staged, plan, remove_small=False, absorb_enclosed=False, seam_recut=False)
    assert _most_true_objects(got, truth) <= 2
    assert stats["totals"]["disagreed"] > 0
    cut, _ = run_merge(staged, plan, remove_small=False, absorb_enclosed=False)  # the recut keeps that bound
    assert _most_true_objects(cut, truth) <= 2
    tolerant, _ = run_merge(staged, plan, remove_small=False, absorb_enclosed=False, jitter=13, seam_recut=False)
    assert _most_true_objects(tolerant, truth) == 3


def _union_find_mutex_reference(a, b, order, members, groups, n):
    """Plain Python: clusters as sets, a link refused when both clusters hold a member of one group."""
    cluster = {i: {i} for i in range(n)}
    of = list(range(n))
    group_of = {}
    for m, g in zip(members, groups):
        group_of.setdefault(m, set()).add(g)
    refused = np.zeros(len(a), bool)
    for k in order:
        x, y = of[a[k]], of[b[k]]
        if x == y:
            continue
        gx = set().union(*(group_of.get(i, set()) for i in cluster[x]))
        gy = set().union(*(group_of.get(i, set()) for i in cluster[y]))
        if gx & gy:
            refused[k] = True
            continue
        lo, hi = min(x, y), max(x, y)
        for i in cluster[hi]:
            of[i] = lo
        cluster[lo] |= cluster.pop(hi)
    return np.array(of), refused


@pytest.mark.parametrize("seed", range(20))
def test_union_find_mutex_kernel_matches_its_reference(seed):
    from remote_samsing._merge_nb import union_find_mutex

    rng = np.random.default_rng(seed)
    n, m, k = int(rng.integers(2, 40)), int(rng.integers(0, 60)), int(rng.integers(0, 30))
    a, b = rng.integers(0, n, m), rng.integers(0, n, m)
    order = rng.permutation(m)
    members = rng.integers(0, n, k)
    groups = rng.integers(0, max(1, k // 3), k)
    parent, refused = np.arange(n), np.zeros(m, bool)
    union_find_mutex(a, b, order, members, groups, int(groups.max() + 1) if k else 0, parent, refused)
    want_parent, want_refused = _union_find_mutex_reference(a, b, order, members, groups, n)
    np.testing.assert_array_equal(parent, want_parent)
    np.testing.assert_array_equal(refused, want_refused)


# ---------------------------------------------------------------------------
# one 4-connected segment per label
# ---------------------------------------------------------------------------
def _parts_per_label(labels: np.ndarray) -> dict:
    return {int(v): ndimage.label(labels == v, structure=CROSS)[1] for v in np.unique(labels[labels > 0])}


def test_a_label_touching_only_at_corners_is_split_as_documented():
    from remote_samsing.testing import stage_windows

    img = np.ones((20, 20), np.int64)  # label 1 everywhere else
    img[10:15, 2:7] = 2  # label 2: a 5x5 square...
    img[3:6, 12:15][np.eye(3, dtype=bool)] = 2  # ... and a diagonal of single pixels
    img[2:6, 2:6] = 3  # label 3: two 4x4 squares meeting at a corner
    img[6:10, 6:10] = 3
    plan = TilingPlan(shape=img.shape, tile_size=20, padding=0)
    staged = da.from_array(stage_windows(plan, lambda w: img[w.slices]), chunks=plan.slot_shape)
    got, stats = run_merge(staged, plan, absorb_enclosed=False, min_mask_area=10)
    expected = img.copy()
    expected[3:6, 12:15][np.eye(3, dtype=bool)] = 1  # each diagonal pixel joins its only neighbour
    expected[6:10, 6:10] = 4  # equal areas: the square whose first pixel comes later gets a label of its own
    assert_same_partition(got, expected)
    assert set(_parts_per_label(got).values()) == {1}
    t = stats["totals"]
    assert (t["labels_split"], t["parts_relabelled"], t["parts_joined"], t["parts_cleared"]) == (2, 1, 3, 0)
    # without the island rule no part is too small: each diagonal pixel becomes a label
    got, _ = run_merge(staged, plan, absorb_enclosed=False, remove_small=False, min_mask_area=10)
    assert len(np.unique(got[got > 0])) == 3 + 1 + 3
    # switched off, the labels keep their parts
    got, _ = run_merge(staged, plan, absorb_enclosed=False, min_mask_area=10, split_parts=False)
    assert_same_partition(got, img)


def test_small_parts_touching_only_each_other_become_background():
    """Two 3-px crumbs of two labels touch only each other: both move, so neither has a label to join."""
    from remote_samsing.testing import stage_windows

    img = np.zeros((20, 20), np.int64)
    img[1:7, 1:7] = 1
    img[1:7, 12:18] = 2
    img[7, 7:10] = 1  # meets label 1 at a corner only
    img[8, 7:10] = 2  # nowhere near label 2's square
    plan = TilingPlan(shape=img.shape, tile_size=20, padding=0)
    staged = da.from_array(stage_windows(plan, lambda w: img[w.slices]), chunks=plan.slot_shape)
    got, stats = run_merge(staged, plan, min_mask_area=5, absorb_enclosed=False)  # the crumbs' island is 6 px
    expected = img.copy()
    expected[7:9] = 0
    assert_same_partition(got, expected)
    assert stats["totals"]["parts_cleared"] == 2 and stats["totals"]["islands_removed"] == 0


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("remove_small", [True, False])
def test_the_split_is_the_documented_rule_applied_after_the_merge(tmp_path, seed, remove_small):
    """Disagreeing windows (the SAM-like stand-in) and 8-connected labels leave merged labels in parts,
    also across seams (core crops that do not touch); tiled, the split equals the whole-image rule
    applied to the merge without it, and every label is one 4-connected region."""
    from remote_samsing.testing import SAMLikeWindows, stage_windows

    truth = touching_labels((150, 170), n_seeds=40, seed=seed, hole_frac=0.02)
    rng = np.random.default_rng(seed)
    diag = rng.random(truth.shape) < 0.03  # corner-touching crumbs of one label
    src = np.roll(truth, (1, 1), axis=(0, 1))  # the up-left neighbour's label
    truth[diag & (src > 0)] = src[diag & (src > 0)]
    plan = TilingPlan(shape=truth.shape, tile_size=40, padding=8)
    seg = SAMLikeWindows(truth=truth, image=None, seed=seed)
    staged = da.from_array(stage_windows(plan, seg), chunks=plan.slot_shape)
    cfg = dict(min_mask_area=12, merge_enclosed_max_area=40, remove_small=remove_small)
    merged, _ = run_merge(staged, plan, split_parts=False, **cfg)
    assert max(_parts_per_label(merged).values()) > 1  # the case exists
    got, stats = run_merge(staged, plan, **cfg)
    assert_same_partition(got, split_whole(merged, MergeConfig(**cfg).split_min_area))
    assert set(_parts_per_label(got).values()) == {1}
    assert stats["totals"]["labels_split"] > 0
    # the out-of-core merge gives the same ids
    from remote_samsing.merge import merge_stored

    sink = _CollectSink(truth.shape)
    merge_stored(write_store(staged, plan, tmp_path / "staged.zarr"), plan=plan, config=MergeConfig(**cfg),
                 workdir=tmp_path / "spill", sink=sink)
    np.testing.assert_array_equal(sink.out, got)


def test_label_runs_kernel_numbers_runs_like_scikit_image():
    """The part kernel: 4-connected runs of equal labels, numbered in raster order, exactly as
    skimage.measure.label(connectivity=1) numbers them."""
    from skimage.measure import label

    from remote_samsing.merge._parts import part_map

    rng = np.random.default_rng(0)
    for _ in range(100):
        h, w = rng.integers(1, 30, 2)
        a = rng.integers(0, rng.integers(1, 5), (h, w)).astype(np.uint32)
        np.testing.assert_array_equal(part_map(a), label(a, background=0, connectivity=1))
