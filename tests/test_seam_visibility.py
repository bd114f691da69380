"""Tests for remote_samsing.metrics.seam_visibility: hand-computed shares on tiny label images."""

from __future__ import annotations

from pathlib import Path

import dask.array as da
import numpy as np
import pytest

from remote_samsing.exceptions import ConfigError, InputError
from remote_samsing.metrics import seam_line_shares, seam_visibility, seam_visibility_ratio


def _two_by_two() -> np.ndarray:
    """8 x 8 labels for tile 4, padding 1 (seams after column 3 and row 3).

    Top block row: label 2 from column 5 on (a boundary on the line 4|5, offset +1).
    Bottom block row: label 3 in rows 4-5 from column 4 on (half of the line 3|4).
    """
    lab = np.ones((8, 8), np.uint32)
    lab[0:4, 5:] = 2
    lab[4:6, 4:] = 3
    return lab


def test_hand_computed_shares_offsets_and_mean():
    vis = seam_visibility(_two_by_two(), tile_size=4, padding=1)
    # faces in block order: (0,0)->right, (0,0)->below, (0,1)->below, (1,0)->right
    assert vis.kind == ("x", "y", "y", "x")
    assert vis.blocks.tolist() == [[[0, 0], [0, 1]], [[0, 0], [1, 0]], [[0, 1], [1, 1]], [[1, 0], [1, 1]]]
    assert vis.lengths.tolist() == [4, 4, 4, 4]
    # top x-face: 4/4 on the line 4|5; left y-face: no boundary (tie -> offset 0);
    # right y-face: rows 3|4 differ in all 4 columns; bottom x-face: rows 4-5 of 4 on the line 3|4
    np.testing.assert_allclose(vis.values, [1.0, 0.0, 1.0, 0.5], rtol=1e-6)
    assert vis.offsets.tolist() == [1, 0, 0, 0]
    np.testing.assert_allclose(vis.mean, (4 + 0 + 4 + 2) / 16, rtol=1e-6)


def test_boundary_on_the_seam_scores_one_at_offset_zero_in_both_directions():
    lab = np.ones((8, 8), np.uint32)
    lab[:, 4:] = 2
    vis = seam_visibility(lab, tile_size=4, padding=1)
    assert vis.values[[0, 3]].tolist() == [1.0, 1.0] and vis.offsets.tolist() == [0, 0, 0, 0]
    turned = seam_visibility(lab.T, tile_size=4, padding=1)
    assert turned.values[[1, 2]].tolist() == [1.0, 1.0] and turned.values[[0, 3]].tolist() == [0.0, 0.0]
    # a boundary two pixels off the seam lies outside ±1
    lab[:, 4:] = 1
    lab[:, 6:] = 2
    assert seam_visibility(lab, tile_size=4, padding=1).mean == 0.0


def test_background_pairs_are_not_counted():
    lab = np.zeros((8, 8), np.uint32)
    lab[:, :4] = 1  # labelled left half, background right half
    vis = seam_visibility(lab, tile_size=4, padding=1)
    # x-faces: 3|4 is 1 vs 0 (4/4); 4|5 is 0 vs 0 (no pair); right y-face: nothing labelled
    np.testing.assert_array_equal(vis.values, [1.0, 0.0, np.nan, 1.0])
    np.testing.assert_allclose(vis.mean, (4 + 0 + 4) / 12, rtol=1e-6)
    # one labelled pixel: the right y-face's lines 2|3 and 3|4 have one labelled pair each
    lab[3, 6] = 5
    vis = seam_visibility(lab, tile_size=4, padding=1)
    assert vis.values[2] == 1.0 and vis.offsets[2] == 0
    np.testing.assert_allclose(vis.mean, (4 + 0 + 4 + 4) / 16, rtol=1e-6)
    empty = seam_visibility(np.zeros((8, 8), np.uint32), tile_size=4, padding=1)
    assert np.isnan(empty.values).all() and np.isnan(empty.mean)
    assert [r["seam_visibility"] for r in empty.to_records()] == [None] * 4


def test_line_shares():
    counted, boundary = seam_line_shares(np.array([[1, 1, 2], [1, 0, 0], [0, 0, 0]]))
    assert counted.tolist() == [2, 1] and boundary.tolist() == [1, 1]


def test_lines_stay_inside_a_thin_last_block():
    # 14 = 6 + 6 + 2: the last chunk is `padding` wide, so the lines right of the seam at 12 stop at 12|13
    lab = np.ones((6, 14), np.uint32)
    lab[:, 13:] = 2
    vis = seam_visibility(lab, tile_size=6, padding=2)
    assert vis.kind == ("x", "x") and vis.lengths.tolist() == [6, 6]
    assert vis.values.tolist() == [0.0, 1.0] and vis.offsets.tolist() == [0, 1]


def test_one_block_has_no_seam():
    vis = seam_visibility(np.ones((8, 8), np.uint32), tile_size=16, padding=2)
    assert vis.values.size == 0 and np.isnan(vis.mean) and vis.to_records() == []


def test_ratio():
    lab = _two_by_two()
    assert seam_visibility_ratio(lab, lab, tile_size=4, padding=1) == 1.0
    one = np.ones((8, 8), np.uint32)
    one[:, 4:] = 2  # 0.5
    np.testing.assert_allclose(seam_visibility_ratio(lab, one, tile_size=4, padding=1), 0.625 / 0.5, rtol=1e-6)
    assert seam_visibility_ratio(one[:, :1].repeat(8, 1), one[:, :1].repeat(8, 1), tile_size=4, padding=1) == 1.0
    assert seam_visibility_ratio(lab, np.ones((8, 8), np.uint32), tile_size=4, padding=1) == float("inf")


class _Recording:
    """An array-like that records the size of every read."""

    def __init__(self, arr):
        self.arr, self.shape, self.dtype, self.reads = arr, arr.shape, arr.dtype, []

    def __getitem__(self, key):
        out = self.arr[key]
        self.reads.append(out.size)
        return out


def test_dask_and_array_likes_are_read_core_by_core():
    rng = np.random.default_rng(0)
    lab = rng.integers(0, 4, (64, 96)).astype(np.uint32)
    want = seam_visibility(lab, tile_size=16, padding=3)
    got = seam_visibility(da.from_array(lab, chunks=16), tile_size=16, padding=3)
    np.testing.assert_array_equal(got.values, want.values)
    assert got.mean == want.mean
    rec = _Recording(lab)
    assert seam_visibility(rec, tile_size=16, padding=3).mean == want.mean
    assert max(rec.reads) == 16 * 16 and len(rec.reads) == (64 // 16) * (96 // 16)  # each core once


def test_bad_inputs():
    with pytest.raises(InputError, match="2-D integer"):
        seam_visibility(np.zeros((2, 8, 8), np.uint32), tile_size=4, padding=1)
    with pytest.raises(InputError, match="2-D integer"):
        seam_visibility(np.zeros((8, 8)), tile_size=4, padding=1)
    with pytest.raises(ConfigError, match="padding"):
        seam_visibility(np.zeros((8, 8), np.uint32), tile_size=4, padding=2)


def test_the_demo_scene_shows_no_tile_grid():
    """``make demo``'s settings on its bundled scene: with the default merge (which recuts the seams) the
    seams carry at most 1.25 times the boundaries the scene segmented as one window has along the same
    lines; with the overlap rule alone the grid shows (far more)."""
    from remote_samsing import demo
    from remote_samsing.pipeline import build_graph

    image = Path(__file__).resolve().parents[1] / demo.SCENE
    kw = dict(segmenter=demo.SEGMENTER, segmenter_params=demo.SEGMENTER_PARAMS, tile_size=demo.TILE,
              padding=demo.PADDING, merge="overlap")
    ratio = {recut: demo.seam_visibility_over_one_window(
        image, build_graph(image, **kw, merge_params={} if recut else {"seam_recut": False}).labels.values)
        for recut in (True, False)}
    assert ratio[True] <= 1.25 < 1.5 < ratio[False]
