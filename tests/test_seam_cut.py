"""The seam recut: the minimum-error cut kernel and :func:`remote_samsing.merge._recut.recut_staged`."""

from __future__ import annotations

import itertools

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
    cfg = MergeConfig(strategy="overlap", remove_small=False, absorb_enclosed=False)
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
