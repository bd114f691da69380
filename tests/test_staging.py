"""Staging: one block through the segmenter (process_block), the lazy staged array, and the resumable store."""

from __future__ import annotations

import json

import numpy as np
import pytest

from _helpers import blob_image
from remote_samsing.exceptions import BlockFailedError, ConfigError
from remote_samsing.staging import (
    STAGED_DTYPE,
    _block_attributes,
    _count_labels,
    block_marker,
    collect_block_stats,
    create_store,
    process_block,
    read_segment_and_stage,
    resolve_segmenter,
    segment_and_stage,
    stage_block,
    stage_blocks,
)
from remote_samsing.testing import ThresholdSegmenter, count_calls
from remote_samsing.tiling import TilingPlan


def _rgba(grey: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    out = np.repeat(grey[..., None], 4, axis=2).astype(np.uint8)
    out[..., 3] = 255 if valid is None else np.where(valid, 255, 0)
    return out


def _window(rgba: np.ndarray, plan: TilingPlan, index) -> np.ndarray:
    return rgba[plan.padded_window(index).slices]


class _Constant:
    """Labels every pixel with ``value``; counts its calls."""

    def __init__(self, value, *, fail: int = 0, shape=None, dtype=np.int64):
        self.value, self.fail, self.shape, self.dtype, self.calls = value, fail, shape, dtype, 0

    def segment(self, block, *, block_info):
        self.calls += 1
        assert not block.flags.writeable  # a read-only view: a retry sees the same input
        if self.calls <= self.fail:
            raise RuntimeError(f"attempt {self.calls} failed")
        return np.full(self.shape or block.shape[:2], self.value, self.dtype)


# ---------------------------------------------------------------------------
# process_block
# ---------------------------------------------------------------------------
def test_process_block_stats_and_validity():
    plan = TilingPlan(shape=(64, 96), tile_size=32, padding=4)
    grey = blob_image((64, 96), seed=2)
    valid = np.ones((64, 96), bool)
    valid[:, 70:] = False
    rgba = _rgba(grey, valid)
    index = (1, 2)
    labels, stats = process_block(_window(rgba, plan, index), index, plan=plan, segmenter=ThresholdSegmenter())
    pw = plan.padded_window(index)
    assert labels.dtype == STAGED_DTYPE and labels.shape == pw.shape
    assert (labels[~valid[pw.slices]] == 0).all()  # nothing outside the valid pixels
    core = plan.core_in_padded(index)
    assert stats["block"] == [1, 2] and stats["window"] == list(pw.as_tuple())
    assert stats["core"] == list(plan.core_window(index).as_tuple())
    assert stats["skipped"] is False and stats["attempts"] == 1 and stats["seconds"] >= 0
    assert stats["n_labels"] == len(set(np.unique(labels[core.slices])) - {0})


def test_process_block_skips_a_block_without_valid_core_pixels(tmp_path):
    plan = TilingPlan(shape=(64, 96), tile_size=32, padding=4)
    valid = np.ones((64, 96), bool)
    valid[:, :32] = False  # the cores of column 0; its halo (x 32..35) stays valid
    rgba = _rgba(np.full((64, 96), 200, np.uint8), valid)
    seg = ThresholdSegmenter(threshold=0, log_dir=str(tmp_path))
    labels, stats = process_block(_window(rgba, plan, (0, 0)), (0, 0), plan=plan, segmenter=seg)
    assert stats["skipped"] is True and stats["n_labels"] == 0 and stats["attempts"] == 0
    assert not labels.any() and labels.dtype == STAGED_DTYPE
    assert count_calls(tmp_path) == 0  # the segmenter was never called


def test_threshold_segmenter_holds_exactly_the_calls_after_the_nth(tmp_path, monkeypatch):
    """Calls that start together each take a place of their own: exactly the first n go on, the others
    wait until the run is killed (the integration tests stop runs at a known point that way)."""
    import threading
    import time

    from remote_samsing.testing import HOLD_AFTER

    monkeypatch.setenv(HOLD_AFTER, "5")
    for attempt in range(10):  # rounds of calls started together: a race shows in few of them
        calls = tmp_path / f"calls{attempt}"
        seg = ThresholdSegmenter(threshold=0, log_dir=str(calls))
        together = threading.Barrier(8)
        finished: list = []

        def call(i, seg=seg, together=together, finished=finished):
            together.wait()
            seg.segment(np.zeros((8, 8, 3), np.uint8), block_info={"block_id": (0, i)})
            finished.append(f"0_{i}")

        for i in range(8):  # daemons: the held ones wait for good
            threading.Thread(target=call, args=(i,), daemon=True).start()
        deadline = time.monotonic() + 10
        while (count_calls(calls) < 8 or len(finished) < 5) and time.monotonic() < deadline:
            time.sleep(0.01)
        # every call logged itself under its own ordinal, and those that went on are the first five
        names = sorted(p.name for p in calls.iterdir())
        assert names == [f"{k:06d}" for k in range(1, 9)]
        assert sorted(finished) == sorted((calls / n).read_text().strip() for n in names[:5])


def test_process_block_retries_then_reports_the_block():
    plan = TilingPlan(shape=(40, 40), tile_size=20, padding=4)
    rgba = _rgba(np.full((40, 40), 100, np.uint8))
    seg = _Constant(3, fail=2)
    labels, stats = process_block(_window(rgba, plan, (0, 1)), (0, 1), plan=plan, segmenter=seg, retries=2)
    assert stats["attempts"] == 3 and (labels == 3).all() and stats["n_labels"] == 1
    seg = _Constant(3, fail=5)
    with pytest.raises(BlockFailedError, match=r"block \(0, 1\) \(window y 0:24, x 16:40\) after 2 attempt\(s\)"
                                               r": RuntimeError: attempt 2 failed") as err:
        process_block(_window(rgba, plan, (0, 1)), (0, 1), plan=plan, segmenter=seg, retries=1)
    assert isinstance(err.value.__cause__, RuntimeError) and seg.calls == 2


@pytest.mark.parametrize(
    "seg, fragment",
    [
        (_Constant(1, shape=(3, 3)), "shape"),
        (_Constant(1.5, dtype=np.float32), "integers expected"),
        (_Constant(-1), "negative"),
    ],
)
def test_process_block_rejects_bad_labels(seg, fragment):
    plan = TilingPlan(shape=(40, 40), tile_size=20, padding=4)
    rgba = _rgba(np.full((40, 40), 100, np.uint8))
    with pytest.raises(BlockFailedError, match=fragment):
        process_block(_window(rgba, plan, (0, 0)), (0, 0), plan=plan, segmenter=seg)


def test_process_block_relabels_ids_beyond_the_staged_dtype_and_accepts_bools():
    plan = TilingPlan(shape=(20, 20), tile_size=20, padding=0)
    rgba = _rgba(np.full((20, 20), 100, np.uint8))

    class Big:
        def segment(self, block, *, block_info):
            out = np.zeros(block.shape[:2], np.int64)
            out[:10] = 2**40
            out[10:] = 7
            return out

    labels, stats = process_block(rgba, (0, 0), plan=plan, segmenter=Big())
    assert labels.dtype == STAGED_DTYPE and stats["n_labels"] == 2
    assert len(np.unique(labels[:10])) == 1 and len(np.unique(labels[10:])) == 1 and labels[0, 0] != labels[-1, 0]
    labels, _ = process_block(rgba, (0, 0), plan=plan, segmenter=_Constant(True, dtype=bool))
    assert (labels == 1).all()


@pytest.mark.parametrize("top", [5, 10**6, 2**31])
def test_count_labels_dense_and_sparse(top):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 50, (30, 30)).astype(np.uint32)
    labels[labels == 7] = top
    expected = len(set(labels.ravel().tolist()) - {0})
    assert _count_labels(labels) == expected
    assert _count_labels(np.zeros((0, 3), np.uint32)) == 0 and _count_labels(np.zeros((4, 4), np.uint32)) == 0


def test_resolve_segmenter():
    seg = resolve_segmenter("threshold", {"threshold": 10})
    assert isinstance(seg, ThresholdSegmenter) and seg.threshold == 10
    mine = ThresholdSegmenter()
    assert resolve_segmenter(mine) is mine
    with pytest.raises(ConfigError, match="only apply"):
        resolve_segmenter(mine, {"threshold": 3})


def test_stage_blocks_holds_each_blocks_labels_in_its_slot():
    plan = TilingPlan(shape=(70, 50), tile_size=32, padding=6)
    rgba = _rgba(blob_image((70, 50), seed=7))
    import dask.array as da

    staged = stage_blocks(da.from_array(rgba, chunks=(*plan.chunks, 4)), plan=plan, segmenter=ThresholdSegmenter())
    assert staged.shape == plan.staging_shape and staged.dtype == STAGED_DTYPE
    staged = staged.compute()
    sy, sx = plan.slot_shape
    for index in plan.block_ids():
        labels, _ = process_block(_window(rgba, plan, index), index, plan=plan, segmenter=ThresholdSegmenter())
        slot = staged[index[0] * sy:(index[0] + 1) * sy, index[1] * sx:(index[1] + 1) * sx]
        np.testing.assert_array_equal(slot[:labels.shape[0], :labels.shape[1]], labels)
        assert slot.sum() == labels.sum()  # the rest of the slot stays empty


# ---------------------------------------------------------------------------
# the store
# ---------------------------------------------------------------------------
class _Attributed(ThresholdSegmenter):
    """ThresholdSegmenter exposing per-label attributes, as SAM2 does."""

    def segment(self, block, *, block_info):
        labels = super().segment(block, block_info=block_info)
        object.__setattr__(self, "last_attributes", {"score": np.arange(labels.max() + 1) / 10})
        return labels


def test_stage_block_writes_chunk_summary_attributes_then_marker_and_never_twice(tmp_path):
    import zarr

    plan = TilingPlan(shape=(64, 64), tile_size=32, padding=4)
    rgba = _rgba(blob_image((64, 64), seed=3))
    staging = create_store(tmp_path / "staging", plan)
    z = zarr.open_array(staging / "labels.zarr", mode="r")
    assert z.shape == plan.staging_shape and z.chunks == plan.slot_shape and z.dtype == STAGED_DTYPE
    assert create_store(staging, plan) == staging  # again: kept as it is
    assert collect_block_stats(staging, plan) == [None] * 4

    summaries = []
    loads = []

    def load(index):
        def _load():
            loads.append(index)
            return _window(rgba, plan, index)
        return _load

    kw = dict(plan=plan, segmenter=_Attributed(), retries=0, staging=str(staging), run_id="r1",
              summarize=lambda slot, *, index: summaries.append((index, slot.copy())))
    assert stage_block((1, 0), load((1, 0)), **kw) == 1
    assert stage_block((1, 0), load((1, 0)), **kw) == 0  # staged already: not even loaded
    assert loads == [(1, 0)]
    labels, stats = process_block(_window(rgba, plan, (1, 0)), (1, 0), plan=plan, segmenter=ThresholdSegmenter())
    sy, sx = plan.slot_shape
    slot = zarr.open_array(staging / "labels.zarr", mode="r")[sy:2 * sy, 0:sx]
    np.testing.assert_array_equal(slot[:labels.shape[0], :labels.shape[1]], labels)
    assert [i for i, _ in summaries] == [(1, 0)]
    np.testing.assert_array_equal(summaries[0][1], slot)
    marker = block_marker(staging, (1, 0))
    assert marker == staging / "blocks" / "1_0.json"
    written = json.loads(marker.read_text())
    assert written["run_id"] == "r1" and written["n_labels"] == stats["n_labels"]
    attrs = np.load(staging / "attributes" / "1_0.npz")
    np.testing.assert_array_equal(attrs["score"], np.arange(labels.max() + 1) / 10)
    assert sorted(p.name for p in (staging / "attributes").iterdir()) == ["1_0.npz"]  # no temporary left
    assert sorted(p.name for p in (staging / "blocks").iterdir()) == ["1_0.json"]
    got = collect_block_stats(staging, plan)
    assert got[:2] == [None, None] and got[2] == written and got[3] is None  # plan.block_ids() order
    # what a run's tasks returned is taken as it is; only the other blocks' markers are read
    assert collect_block_stats(staging, plan, known=[{"mine": 1}, None, None, None]) == [{"mine": 1}, None, written,
                                                                                          None]
    assert collect_block_stats(staging, plan, known=[{"a": 1}] * 4) == [{"a": 1}] * 4


def test_the_two_stage_tasks_stage_the_same_labels(tmp_path):
    """``read_segment_and_stage`` (a block reading its own window) and
    ``segment_and_stage`` (a map_overlap task) stage the same slot."""
    import zarr

    plan = TilingPlan(shape=(64, 64), tile_size=32, padding=4)
    rgba = _rgba(blob_image((64, 64), seed=4))

    class Reader:
        def checked_read(self, window, limits, *, block):
            assert limits == "limits" and window == plan.padded_window(block).as_tuple()
            y0, y1, x0, x1 = window
            return rgba[y0:y1, x0:x1]

    slots = []
    for k, task in enumerate(("read", "map")):
        staging = create_store(tmp_path / task, plan)
        kw = dict(plan=plan, segmenter=ThresholdSegmenter(), retries=0, staging=str(staging), run_id=f"r{k}")
        if task == "read":  # the statistics its marker holds, as a reader of the marker gets them
            stats = read_segment_and_stage((0, 1), reader=Reader(), limits="limits", **kw)
            assert stats == json.loads(block_marker(staging, (0, 1)).read_text()) and stats["run_id"] == "r0"
            assert read_segment_and_stage((0, 1), reader=Reader(), limits="limits", **kw) is None  # staged already
        else:
            out = segment_and_stage(_window(rgba, plan, (0, 1)), block_info={None: {"chunk-location": (0, 1)}}, **kw)
            assert out.shape == (1, 1) and out[0, 0] == 1
        slots.append(zarr.open_array(staging / "labels.zarr", mode="r")[...])
        assert block_marker(staging, (0, 1)).exists()
    np.testing.assert_array_equal(*slots)
    assert slots[0].any()


def test_block_attributes_come_from_the_largest_fragment_of_each_object(tmp_path):
    plan = TilingPlan(shape=(4, 6), tile_size=6, padding=0)
    core = plan.core_in_padded((0, 0))
    local = np.array([[1, 1, 2, 2, 0, 3],
                      [1, 1, 2, 2, 0, 3],
                      [4, 4, 4, 2, 0, 3],
                      [4, 4, 4, 0, 0, 3]], np.uint32)
    final = np.array([[9, 9, 9, 9, 0, 5],
                      [9, 9, 9, 9, 0, 5],
                      [9, 9, 9, 9, 0, 0],
                      [9, 9, 9, 0, 0, 5]], np.uint32)
    path = tmp_path / "0_0.npz"
    np.savez(path, score=np.array([0.0, 0.1, 0.2, 0.3, 0.4]))
    got = _block_attributes(local, final, str(path), core)
    # label 9: fragments 1 (4 px), 2 (5 px), 4 (6 px) → 4 wins; label 5: fragment 3 (3 px)
    np.testing.assert_array_equal(got["label"], [5, 9])
    np.testing.assert_array_equal(got["_px"], [3, 6])
    np.testing.assert_allclose(got["score"], [0.3, 0.4])
    assert _block_attributes(local, final, str(tmp_path / "missing.npz"), core) is None
    assert _block_attributes(np.zeros_like(local), final, str(path), core) is None


def test_a_marker_that_is_absent_failed_or_not_json_means_stage_again_and_a_read_error_is_said(tmp_path,
                                                                                                monkeypatch):
    import remote_samsing.staging as staging_mod

    plan = TilingPlan(shape=(64, 64), tile_size=32, padding=4)
    rgba = _rgba(blob_image((64, 64), seed=3))
    staging = create_store(tmp_path / "staging", plan)
    kw = dict(plan=plan, segmenter=ThresholdSegmenter(), retries=0, staging=str(staging), run_id="r1")
    marker = block_marker(staging, (0, 1))
    marker.parent.mkdir(parents=True, exist_ok=True)
    for content in ('{"failed": true, "error": "x"}', '{"block": [0, 1'):  # a failed block's, then cut short
        marker.write_text(content)
        assert stage_block((0, 1), lambda: _window(rgba, plan, (0, 1)), **kw) == 1
        assert json.loads(marker.read_text())["run_id"] == "r1"
    assert stage_block((0, 1), lambda: _window(rgba, plan, (0, 1)), **kw) == 0

    def denied(path):
        raise PermissionError(f"Access Denied: {path}")

    monkeypatch.setattr(staging_mod, "read_bytes", denied)
    with pytest.raises(PermissionError):  # never taken for "not staged": that would segment it again
        stage_block((0, 1), lambda: _window(rgba, plan, (0, 1)), **kw)


def test_stage_block_into_a_store_made_anew_for_another_plan_under_the_same_run_id(tmp_path):
    import shutil

    import zarr

    rgba = _rgba(blob_image((64, 64), seed=3))
    for tile in (32, 16):  # the same folder and run id, the store made anew for each plan
        plan = TilingPlan(shape=(64, 64), tile_size=tile, padding=4)
        shutil.rmtree(tmp_path / "staging", ignore_errors=True)
        staging = create_store(tmp_path / "staging", plan)
        assert stage_block((1, 1), lambda: _window(rgba, plan, (1, 1)), plan=plan, segmenter=ThresholdSegmenter(),
                           retries=0, staging=str(staging), run_id="r1") == 1
        labels, _ = process_block(_window(rgba, plan, (1, 1)), (1, 1), plan=plan, segmenter=ThresholdSegmenter())
        sy, sx = plan.slot_shape
        slot = zarr.open_array(staging / "labels.zarr", mode="r")[sy:2 * sy, sx:2 * sx]
        np.testing.assert_array_equal(slot[:labels.shape[0], :labels.shape[1]], labels)
