"""The multi-pass loop, driven by a scripted mask generator with hand-computed expectations."""

from __future__ import annotations

import numpy as np
import pytest

from remote_samsing.exceptions import ConfigError, InputError
from remote_samsing.multipass import (
    MaskGenerator,
    MultipassConfig,
    accept_masks,
    dense_grid_prompts,
    grid_prompts,
    kmeans_prompts,
    run_multipass,
    threshold_schedule,
)


class ScriptedGenerator:
    """Test double with SAM2's automatic-mask-generator interface.

    ``script[i]`` is the list of masks returned on call i (``[]`` after the
    script ends). Like SAM2 it drops masks with predicted IoU <= the IoU
    threshold or stability < the stability threshold. Every call is recorded.
    """

    def __init__(self, script, *, with_bbox=True):
        self.script = list(script)
        self.with_bbox = with_bbox
        self.calls = []

    def generate(self, image, *, points, pred_iou_thresh, stability_score_thresh):
        self.calls.append(
            {"image": image.copy(), "points": np.array(points), "iou": pred_iou_thresh, "stab": stability_score_thresh}
        )
        i = len(self.calls) - 1
        out = []
        for m in self.script[i] if i < len(self.script) else []:
            if m["predicted_iou"] > pred_iou_thresh and m["stability_score"] >= stability_score_thresh:
                rec = dict(m)
                seg = rec["segmentation"]
                rec["area"] = int(seg.sum())
                if self.with_bbox and seg.any():
                    ys, xs = np.nonzero(seg)
                    rec["bbox"] = [float(xs.min()), float(ys.min()), float(xs.max() - xs.min()), float(ys.max() - ys.min())]
                out.append(rec)
        return out


def mask(shape, *boxes, iou=0.99, stab=0.99):
    m = np.zeros(shape, bool)
    for y0, y1, x0, x1 in boxes:
        m[y0:y1, x0:x1] = True
    return {"segmentation": m, "predicted_iou": iou, "stability_score": stab}


def img(shape, value=200):
    rng = np.random.default_rng(0)
    return rng.integers(1, 255, size=shape + (3,), dtype=np.uint8) if value is None else np.full(shape + (3,), value, np.uint8)


def test_scripted_generator_satisfies_protocol():
    assert isinstance(ScriptedGenerator([]), MaskGenerator)


# ------------------------------------------------------------------ schedule and stop rules


def test_threshold_schedule_has_no_drift():
    values = [threshold_schedule(start=0.93, end=0.60, step=0.01, n=n) for n in range(40)]
    assert values[:3] == [0.93, 0.92, 0.91]
    assert values[33] == 0.60 and values[34] == 0.60
    assert len(set(values)) == 34  # 0.93 ... 0.60: 34 levels


def test_thresholds_decay_only_on_stagnation():
    shape = (100, 100)  # 10,000 valid pixels: 0.1 pp = 10 px
    script = [
        [mask(shape, (0, 50, 0, 100))],  # pass 0: 50 % (gain 50): not stagnant
        [],  # pass 1: no masks -> stagnant, decay to .92
        [mask(shape, (50, 60, 0, 100), iou=0.925)],  # pass 2 at .92: +10 %, IoU .925 > .92 -> kept
        [mask(shape, (60, 61, 0, 9))],  # pass 3: +9 px = 0.09 pp < 0.1 -> stagnant although accepted
        [mask(shape, (61, 62, 0, 100), iou=0.915)],  # pass 4 at .91: +1 %
    ]
    gen = ScriptedGenerator(script)
    cfg = MultipassConfig(points_per_side=4, min_mask_area=1, max_passes=5)
    res = run_multipass(img(shape), generator=gen, config=cfg)
    assert [c["iou"] for c in gen.calls] == [0.93, 0.93, 0.92, 0.92, 0.91]
    assert [c["stab"] for c in gen.calls] == [0.93, 0.93, 0.92, 0.92, 0.91]
    assert [s["stagnated"] for s in res.pass_stats] == [False, True, False, True, False]
    assert [s["accepted"] for s in res.pass_stats] == [1, 0, 1, 1, 1]
    assert res.pass_stats[3]["gain"] == pytest.approx(0.09)
    assert [s["coverage"] for s in res.pass_stats] == pytest.approx([50, 50, 60, 60.09, 61.09])
    assert res.stop_reason == "max_passes" and len(gen.calls) == 5


def test_iou_mask_at_threshold_is_dropped_like_sam2():
    shape = (20, 20)
    gen = ScriptedGenerator([[mask(shape, (0, 20, 0, 20), iou=0.93)]])
    res = run_multipass(img(shape), generator=gen, config=MultipassConfig(points_per_side=2, max_passes=1))
    assert res.n_labels == 0 and res.pass_stats[0]["masks_generated"] == 0


def test_stops_on_stagnation_at_floor():
    cfg = MultipassConfig(points_per_side=2, iou_end=0.91, stability_end=0.91)
    gen = ScriptedGenerator([])
    res = run_multipass(img((10, 10)), generator=gen, config=cfg)
    assert [c["iou"] for c in gen.calls] == [0.93, 0.92, 0.91]
    assert res.stop_reason == "stagnation"


def test_floor_needs_both_thresholds():
    # the reference stops when IoU hits its floor; here stability keeps decaying to its own floor
    cfg = MultipassConfig(points_per_side=2, iou_end=0.92, stability_start=0.95, stability_end=0.92)
    gen = ScriptedGenerator([])
    run_multipass(img((10, 10)), generator=gen, config=cfg)
    assert [c["iou"] for c in gen.calls] == [0.93, 0.92, 0.92, 0.92]
    assert [c["stab"] for c in gen.calls] == [0.95, 0.94, 0.93, 0.92]


def test_default_schedule_runs_34_levels_when_every_pass_stagnates():
    gen = ScriptedGenerator([])
    res = run_multipass(img((8, 8)), generator=gen, config=MultipassConfig(points_per_side=2))
    assert len(gen.calls) == 34 and gen.calls[-1]["iou"] == 0.60
    assert res.stop_reason == "stagnation"


def test_adaptive_false_keeps_thresholds_and_stops_at_first_stagnation():
    shape = (100, 100)
    script = [[mask(shape, (0, 30, 0, 100))], [mask(shape, (30, 40, 0, 100))], []]
    gen = ScriptedGenerator(script)
    res = run_multipass(img(shape), generator=gen, config=MultipassConfig(points_per_side=4, adaptive=False))
    assert [c["iou"] for c in gen.calls] == [0.93, 0.93, 0.93]
    assert res.stop_reason == "stagnation" and len(res.pass_stats) == 3
    # adaptive=True on the same script goes on decaying after the empty pass
    gen2 = ScriptedGenerator(script)
    run_multipass(img(shape), generator=gen2, config=MultipassConfig(points_per_side=4, max_passes=5))
    assert [c["iou"] for c in gen2.calls] == [0.93, 0.93, 0.93, 0.92, 0.91]


def test_stop_at_target_coverage():
    shape = (10, 10)
    gen = ScriptedGenerator([[mask(shape, (0, 10, 0, 10))], [mask(shape, (0, 1, 0, 1))]])
    res = run_multipass(img(shape), generator=gen, config=MultipassConfig(points_per_side=2, min_mask_area=1))
    assert res.stop_reason == "target_coverage" and len(gen.calls) == 1
    assert res.coverage_core == 100.0


def test_stop_when_no_prompt_left():
    # 10×10, k=2 -> prompts only at the four corners; pass 0 covers everything but a
    # central 3×3 hole (91 %), so Dense Grid has no prompt for pass 1
    shape = (10, 10)
    m = mask(shape, (0, 10, 0, 10))
    m["segmentation"][4:7, 4:7] = False
    gen = ScriptedGenerator([[m]])
    res = run_multipass(img(shape), generator=gen, config=MultipassConfig(points_per_side=2, min_mask_area=1))
    assert res.stop_reason == "no_prompts" and len(gen.calls) == 1
    assert res.coverage_core == pytest.approx(91.0)


def test_max_passes_is_respected():
    shape = (100, 100)
    script = [[mask(shape, (10 * i, 10 * i + 10, 0, 100))] for i in range(10)]
    gen = ScriptedGenerator(script)
    res = run_multipass(img(shape), generator=gen, config=MultipassConfig(points_per_side=8, max_passes=2))
    assert len(gen.calls) == 2 and res.stop_reason == "max_passes" and res.n_labels == 2


def test_each_pass_is_reported_as_soon_as_it_is_done():
    shape = (100, 100)
    script = [[mask(shape, (10 * i, 10 * i + 10, 0, 100))] for i in range(10)]
    gen = ScriptedGenerator(script)
    seen = []

    def on_pass(stats):
        seen.append((stats, len(gen.calls)))  # called before the next pass generates

    res = run_multipass(img(shape), generator=gen, on_pass=on_pass,
                        config=MultipassConfig(points_per_side=8, max_passes=3, min_mask_area=1))
    assert [calls for _, calls in seen] == [1, 2, 3]
    assert [s for s, _ in seen] == res.pass_stats  # the same entries as the result's (copies)
    assert [s["coverage"] for s, _ in seen] == [10.0, 20.0, 30.0] and seen[0][0]["n_prompts"] == 64


# ------------------------------------------------------------------ acceptance


def test_overlap_rejection_at_exactly_half():
    shape = (10, 40)
    script = [[
        mask(shape, (0, 10, 0, 10)),   # A: 100 px -> label 1
        mask(shape, (0, 10, 5, 15)),   # B: 50 of 100 covered = 50 % -> rejected
        mask(shape, (0, 10, 6, 16)),   # C: 40 of 100 covered -> accepted, owns x 10..15
    ]]
    gen = ScriptedGenerator(script)
    cfg = MultipassConfig(points_per_side=2, min_mask_area=1, max_passes=1)
    res = run_multipass(img(shape), generator=gen, config=cfg)
    s = res.pass_stats[0]
    assert (s["accepted"], s["rejected_overlap"], s["rejected_small"]) == (2, 1, 0)
    expected = np.zeros(shape, np.uint32)
    expected[:, :10] = 1
    expected[:, 10:16] = 2
    np.testing.assert_array_equal(res.labels, expected)


def test_overlap_just_below_half_is_accepted():
    shape = (10, 40)
    a = mask(shape, (0, 10, 0, 10))
    b = mask(shape, (0, 10, 5, 15))
    b["segmentation"][0, 5] = False  # 49 of 99 covered < 50 %
    gen = ScriptedGenerator([[a, b]])
    res = run_multipass(img(shape), generator=gen, config=MultipassConfig(points_per_side=2, min_mask_area=1, max_passes=1))
    assert res.pass_stats[0]["accepted"] == 2
    assert (res.labels == 2).sum() == 50


def test_min_area_rejection_per_component():
    shape = (30, 30)
    two = mask(shape, (0, 10, 0, 10), (20, 29, 20, 30))  # components of 100 and 90 px
    small = mask(shape, (12, 21, 0, 11))  # 99 px
    gen = ScriptedGenerator([[two, small]])
    res = run_multipass(img(shape), generator=gen, config=MultipassConfig(points_per_side=2, max_passes=1))
    s = res.pass_stats[0]
    assert (s["components"], s["accepted"], s["rejected_small"]) == (3, 1, 2)
    assert (res.labels == 1).sum() == 100 and res.n_labels == 1


def test_components_are_4_connected():
    shape = (20, 20)
    m = np.zeros(shape, bool)
    m[0:5, 0:5] = True
    m[5:10, 5:10] = True  # touches the first square only diagonally
    gen = ScriptedGenerator([[{"segmentation": m, "predicted_iou": 1.0, "stability_score": 1.0}]])
    res = run_multipass(img(shape), generator=gen, config=MultipassConfig(points_per_side=2, min_mask_area=1, max_passes=1))
    assert res.n_labels == 2
    assert set(np.unique(res.labels[0:5, 0:5])) == {1} and set(np.unique(res.labels[5:10, 5:10])) == {2}


def test_first_come_pixel_ownership_across_passes():
    shape = (10, 20)
    script = [
        [mask(shape, (0, 10, 0, 10))],
        [mask(shape, (0, 10, 7, 17))],  # 30 % already covered: accepted, owns only x 10..16
    ]
    gen = ScriptedGenerator(script)
    res = run_multipass(img(shape), generator=gen, config=MultipassConfig(points_per_side=3, min_mask_area=1, max_passes=2))
    expected = np.zeros(shape, np.uint32)
    expected[:, :10] = 1
    expected[:, 10:17] = 2
    np.testing.assert_array_equal(res.labels, expected)
    assert res.attributes["pass"].tolist() == [-1, 0, 1]


def test_sort_by_area_reverses_priority():
    shape = (10, 30)
    big = mask(shape, (0, 10, 0, 20), iou=0.99)  # 200 px, higher IoU: first in SAM2 order
    small = mask(shape, (0, 10, 10, 25), iou=0.95)  # 150 px; 50 % under big
    # generator order: big (label 1), small rejected (100/150 covered); by area: small first
    gen = ScriptedGenerator([[big, small]])
    res = run_multipass(img(shape), generator=gen, config=MultipassConfig(points_per_side=2, min_mask_area=1, max_passes=1))
    assert res.n_labels == 1 and res.labels[0, 22] == 0
    gen = ScriptedGenerator([[big, small]])
    res = run_multipass(
        img(shape), generator=gen, config=MultipassConfig(points_per_side=2, min_mask_area=1, max_passes=1, sort_by_area=True)
    )
    # small (150 px) first -> label 1 on x 10..24; big: 100 of 200 covered = 50 % -> rejected
    assert res.n_labels == 1 and res.labels[0, 22] == 1 and res.labels[0, 5] == 0


def test_attributes_follow_labels():
    shape = (10, 30)
    script = [[mask(shape, (0, 10, 0, 10), iou=0.97, stab=0.95), mask(shape, (0, 10, 10, 20), iou=0.96, stab=0.94)]]
    gen = ScriptedGenerator(script)
    res = run_multipass(img(shape), generator=gen, config=MultipassConfig(points_per_side=2, min_mask_area=1, max_passes=1))
    np.testing.assert_allclose(res.attributes["predicted_iou"][1:], [0.97, 0.96], rtol=1e-6)
    np.testing.assert_allclose(res.attributes["stability_score"][1:], [0.95, 0.94], rtol=1e-6)
    off = run_multipass(
        img(shape), generator=ScriptedGenerator(script),
        config=MultipassConfig(points_per_side=2, min_mask_area=1, max_passes=1, keep_attributes=False),
    )
    assert off.attributes == {}
    np.testing.assert_array_equal(off.labels, res.labels)


def _naive_accept(records, shape, valid, min_area, ratio):
    """Full-window oracle: label each mask, then test every component on the whole window."""
    from scipy import ndimage

    labels = np.zeros(shape, np.uint32)
    nxt = 1
    for r in records:
        comp, n = ndimage.label(r["segmentation"] & valid)
        for c in range(1, n + 1):
            cm = comp == c
            a = cm.sum()
            if a < min_area or (cm & (labels > 0)).sum() >= ratio * a:
                continue
            labels[cm & (labels == 0)] = nxt
            nxt += 1
    return labels


@pytest.mark.parametrize("with_bbox", [True, False])
def test_bbox_acceptance_equals_full_window_oracle(with_bbox):
    rng = np.random.default_rng(3)
    shape = (120, 130)
    valid = np.ones(shape, bool)
    valid[:, 60:63] = False
    records = []
    for _ in range(60):
        y, x = rng.integers(0, 110), rng.integers(0, 120)
        h, w = rng.integers(3, 40, size=2)
        m = np.zeros(shape, bool)
        m[y : y + h, x : x + w] = True
        m &= rng.random(shape) > 0.1  # holes and fragments
        rec = {"segmentation": m}
        if with_bbox:
            ys, xs = np.nonzero(m)
            rec["bbox"] = [xs.min(), ys.min(), xs.max() - xs.min(), ys.max() - ys.min()]
        records.append(rec)
    labels = np.zeros(shape, np.uint32)
    accept_masks(records, labels=labels, valid=valid, next_label=1, min_mask_area=20, overlap_reject=0.5)
    np.testing.assert_array_equal(labels, _naive_accept(records, shape, valid, 20, 0.5))


# ------------------------------------------------------------------ black mask and prompts


def test_black_mask_image_per_pass():
    shape = (10, 20)
    image = img(shape, value=None)
    valid = np.ones(shape, bool)
    valid[:, 19] = False
    script = [[mask(shape, (0, 10, 0, 10))], [mask(shape, (0, 10, 10, 15))], []]
    gen = ScriptedGenerator(script)
    run_multipass(image, valid=valid, generator=gen, config=MultipassConfig(points_per_side=20, min_mask_area=1, max_passes=3))
    np.testing.assert_array_equal(gen.calls[0]["image"], image)
    want1 = image.copy()
    want1[:, :10] = 0
    np.testing.assert_array_equal(gen.calls[1]["image"], want1)
    want2 = image.copy()
    want2[:, :15] = 0  # invalid column 19 keeps its values: only segmented pixels turn black
    np.testing.assert_array_equal(gen.calls[2]["image"], want2)
    gen = ScriptedGenerator(script)
    run_multipass(
        image, valid=valid, generator=gen,
        config=MultipassConfig(points_per_side=20, min_mask_area=1, max_passes=3, use_black_mask=False),
    )
    for c in gen.calls:
        np.testing.assert_array_equal(c["image"], image)


def test_grid_prompt_placement():
    # 9×9, k=3: edge-to-edge x, y in {0, 4, 8}; x varies fastest (SAM's order)
    assert grid_prompts((9, 9), points_per_side=3).tolist() == [
        [0, 0], [4, 0], [8, 0], [0, 4], [4, 4], [8, 4], [0, 8], [4, 8], [8, 8]
    ]
    # 1100 px, k=64: linspace(0, 1099, 64) truncated, spacing 17.4 px as in the reference
    xs = np.unique(grid_prompts((1100, 1100), points_per_side=64)[:, 0])
    assert xs.size == 64 and xs[0] == 0 and xs[-1] == 1099 and xs[1] == 17 and xs[2] == 34
    # k larger than the window: no duplicate prompts
    assert len(grid_prompts((3, 3), points_per_side=10)) == 9


def test_dense_grid_prompt_placement_in_loop():
    shape = (9, 9)
    gen = ScriptedGenerator([[mask(shape, (0, 9, 0, 5))]])
    cfg = MultipassConfig(points_per_side=3, min_mask_area=1, max_passes=2)
    run_multipass(img(shape), generator=gen, config=cfg)
    assert gen.calls[0]["points"].tolist() == grid_prompts(shape, points_per_side=3).tolist()
    # left half (x 0..4) segmented: only the column x=8 is left
    assert gen.calls[1]["points"].tolist() == [[8, 0], [8, 4], [8, 8]]


def test_dense_grid_erosion_removes_edge_points():
    free = np.zeros((9, 9), bool)
    free[:, 5:] = True
    assert dense_grid_prompts(free, points_per_side=3).tolist() == [[8, 0], [8, 4], [8, 8]]
    # one erosion with the border counting as segmented leaves x 6..7, y 1..7: no grid point
    assert dense_grid_prompts(free, points_per_side=3, erosion_iterations=1).shape == (0, 2)
    free = np.ones((9, 9), bool)
    assert dense_grid_prompts(free, points_per_side=3, erosion_iterations=1).tolist() == [[4, 4]]


def test_kmeans_prompts_deterministic_and_on_residual():
    rng = np.random.default_rng(1)
    free = rng.random((200, 200)) > 0.3
    a = kmeans_prompts(free, n_points=64, seed=42)
    b = kmeans_prompts(free, n_points=64, seed=42)
    np.testing.assert_array_equal(a, b)
    assert 0 < len(a) <= 64
    xs, ys = a[:, 0].astype(int), a[:, 1].astype(int)
    assert free[ys, xs].all()
    assert not np.array_equal(a, kmeans_prompts(free, n_points=64, seed=7))


def test_kmeans_prompts_find_two_blobs():
    free = np.zeros((30, 40), bool)
    free[0:5, 0:5] = True  # centre (x=2, y=2)
    free[20:25, 30:35] = True  # centre (x=32, y=22)
    got = sorted(map(tuple, kmeans_prompts(free, n_points=2).tolist()))
    assert got == [(2.0, 2.0), (32.0, 22.0)]


def test_kmeans_strategy_in_loop():
    shape = (40, 40)
    gen = ScriptedGenerator([[mask(shape, (0, 40, 0, 20))]])
    cfg = MultipassConfig(points_per_side=4, point_strategy="kmeans", kmeans_points=8, min_mask_area=1, max_passes=2)
    run_multipass(img(shape), generator=gen, config=cfg)
    pts = gen.calls[1]["points"]
    assert len(pts) == 8 and (pts[:, 0] >= 20).all()
    gen2 = ScriptedGenerator([[mask(shape, (0, 40, 0, 20))]])
    run_multipass(img(shape), generator=gen2, config=cfg)
    np.testing.assert_array_equal(pts, gen2.calls[1]["points"])


# ------------------------------------------------------------------ nodata and coverage region


def test_nodata_never_prompted_counted_or_labelled():
    shape = (10, 10)
    valid = np.ones(shape, bool)
    valid[:, 5:] = False
    m = mask(shape, (0, 10, 0, 10))  # covers the invalid half too
    gen = ScriptedGenerator([[m]])
    res = run_multipass(img(shape), valid=valid, generator=gen, config=MultipassConfig(points_per_side=3, min_mask_area=1))
    assert (gen.calls[0]["points"][:, 0] < 5).all()  # grid x {0, 4, 9}: x=9 dropped
    assert len(gen.calls[0]["points"]) == 6
    assert res.labels[:, 5:].max() == 0 and (res.labels[:, :5] == 1).all()
    assert res.coverage_core == 100.0 and res.stop_reason == "target_coverage"


def test_nodata_splits_components():
    shape = (10, 21)
    valid = np.ones(shape, bool)
    valid[:, 10] = False
    gen = ScriptedGenerator([[mask(shape, (0, 10, 0, 21))]])
    res = run_multipass(img(shape), valid=valid, generator=gen, config=MultipassConfig(points_per_side=2, max_passes=1))
    assert res.n_labels == 2 and res.pass_stats[0]["components"] == 2


def test_all_invalid_window_calls_nothing():
    gen = ScriptedGenerator([])
    res = run_multipass(img((8, 8)), valid=np.zeros((8, 8), bool), generator=gen)
    assert res.stop_reason == "nothing_to_cover" and gen.calls == [] and res.n_labels == 0


def test_coverage_on_core_vs_window():
    shape = (20, 20)
    core = (5, 15, 5, 15)
    script = [[mask(shape, (5, 15, 5, 15))], []]
    gen = ScriptedGenerator(script)
    res = run_multipass(img(shape), core=core, generator=gen, config=MultipassConfig(points_per_side=4, min_mask_area=1))
    assert res.stop_reason == "target_coverage" and len(gen.calls) == 1
    assert res.pass_stats[0]["coverage"] == 100.0 and res.pass_stats[0]["coverage_window"] == 25.0
    gen = ScriptedGenerator(script)
    cfg = MultipassConfig(points_per_side=4, min_mask_area=1, coverage_on="window", iou_end=0.92, stability_end=0.92)
    res = run_multipass(img(shape), core=core, generator=gen, config=cfg)
    # window coverage 25 %: goes on; pass 1 empty -> .92; pass 2 empty at floor -> stop
    assert len(gen.calls) == 3 and res.stop_reason == "stagnation"
    assert res.pass_stats[0]["coverage"] == 25.0 and res.coverage_core == 100.0


def test_prompt_halo_restricts_prompts():
    shape = (20, 20)
    gen = ScriptedGenerator([])
    cfg = MultipassConfig(points_per_side=20, max_passes=1, prompt_halo=1)
    run_multipass(img(shape), core=(5, 15, 5, 15), generator=gen, config=cfg)
    pts = gen.calls[0]["points"]
    assert pts.min() == 4 and pts.max() == 15 and len(pts) == 12 * 12


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    "kw",
    [
        {"iou_start": 1.2},
        {"iou_end": -0.1},
        {"stability_start": 1.5},
        {"stability_end": -1},
        {"iou_start": 0.5, "iou_end": 0.6},
        {"stability_start": 0.5, "stability_end": 0.6},
        {"step": 0},
        {"step": -0.01},
        {"points_per_side": 0},
        {"points_per_side": 2.5},
        {"point_strategy": "random"},
        {"kmeans_points": 0},
        {"erosion_iterations": -1},
        {"overlap_reject": 0},
        {"overlap_reject": 1.5},
        {"min_mask_area": -1},
        {"target_coverage": 0},
        {"target_coverage": 101},
        {"max_passes": 0},
        {"coverage_on": "tile"},
        {"adaptive": "yes"},
        {"stagnation_gain": -1},
        {"prompt_halo": -1},
    ],
)
def test_bad_config(kw):
    with pytest.raises(ConfigError):
        MultipassConfig(**kw)


def test_bad_inputs():
    gen = ScriptedGenerator([])
    with pytest.raises(InputError, match="uint8"):
        run_multipass(np.zeros((4, 4, 3), np.float32), generator=gen)
    with pytest.raises(InputError, match="valid"):
        run_multipass(img((4, 4)), valid=np.ones((5, 4), bool), generator=gen)
    with pytest.raises(InputError, match="core"):
        run_multipass(img((4, 4)), core=(0, 5, 0, 4), generator=gen)
    with pytest.raises(ConfigError, match="generate"):
        run_multipass(img((4, 4)), generator=object())
    bad = ScriptedGenerator([[{"segmentation": np.ones((3, 3), bool), "predicted_iou": 1, "stability_score": 1}]])
    with pytest.raises(InputError, match="shape"):
        run_multipass(img((4, 4)), generator=bad)
