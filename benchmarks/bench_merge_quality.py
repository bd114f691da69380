"""Seam-merge quality: strategies × cases × measures, in one table.

Cases (each tiled, merged, and compared with what one window over the whole
mosaic gives):

* ``partition``: a random partition with objects far larger than a tile
  (spirals, U-shapes, rings, bars across the mosaic, 1-px bridges, big
  loops); the segmenter is connected components, so every window agrees;
* ``threshold/<scene>``: connected components of a real scene's bright
  regions (the scenes in ``tests/data``): agreeing windows on real shapes;
* ``pair-fusing``: touching stripes; each window fuses a different pair of
  neighbours (windows that disagree, both parities); ``pair-fusing-uneven``:
  the same with stripes 5 to 12 px wide;
* ``sam-like/<scene>``: :class:`remote_samsing.testing.SAMLikeWindows` on a
  scene with ground-truth buildings from ``../shared/data`` (skipped where
  absent): boundary jitter, misses, splits and Felzenszwalb stuff that
  depend on the window. A stand-in, **not SAM2**;
* ``felzenszwalb/<scene>``: the package's Felzenszwalb segmenter (default
  parameters) on the real scenes of ``tests/data`` (and ``../shared/data``
  where present) with tile 256 and padding 32; windows
  disagree, and the truth is the one-window Felzenszwalb result.

Measures, against the truth (the untiled components, or the ground truth):

* ``false``: output labels holding two or more true objects (an object is
  held by the label that has the majority of its pixels);
* ``missed``: true objects whose pixels are spread over two or more output
  labels with none holding 90 % of them (agreeing cases: any split);
* ``most``: the most true objects one output label holds;
* ``det_drop``: seam-crossing objects' Det@0.5 (greedy oracle) of one window
  minus the tiled result's, in percentage points (``ss_det_drop``: the
  same with the best single segment);
* ``seam_vis``: seam visibility (:func:`remote_samsing.metrics.seam_visibility`)
  of the result: for each seam face between two block cores, the share of the
  labelled 4-neighbour pairs (at least one pixel > 0) across a straight line
  that carry a label boundary, at the worst line within ``±padding`` of the
  seam, averaged over faces weighted by length; ``seam_vis_ratio``: the same
  over the one-window result's value on the same seams (goal ≤ 1.25;
  1 where the tile grid does not show).

Strategies: ``overlap`` (default, with its seam recut: a first merge up to its
ids says which labels are one object, each block by a disagreeing face is
recut so that each seam's boundary runs along the views' own boundaries, then
the recut blocks are merged, pieces of one first-merge object linking),
``overlap-nocut`` (``seam_recut=False``: the overlap rule alone),
``iou`` (the first-generation overlap rule),
``best_match`` (the reference's), ``none``, and dask-image's
``ndmeasure.label`` where the segmenter is connected components of a
binary image.

    python -m benchmarks.bench_merge_quality [--quick] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from ._util import ROOT

STRATEGIES = ("overlap", "overlap-nocut", "iou", "best_match", "none")
SHARED = ROOT.parent / "shared" / "data"


# ---------------------------------------------------------------------------
# cases: (truth, one-window labels, staged labels, plan, binary image or None)
# ---------------------------------------------------------------------------
def _components(labels):
    from skimage.measure import label

    return label(labels, background=0, connectivity=1)


def case_partition(quick: bool):
    from remote_samsing.testing import shaped_partition, stage_windows
    from remote_samsing.tiling import TilingPlan

    truth = shaped_partition((256, 256) if quick else (512, 512), seed=3)
    plan = TilingPlan(shape=truth.shape, tile_size=48, padding=6)
    return truth, truth, stage_windows(plan, lambda w: _components(truth[w.slices])), plan, None


def case_threshold(name: str, tile: int, padding: int):
    import rasterio

    from remote_samsing.testing import stage_windows
    from remote_samsing.tiling import TilingPlan

    with rasterio.open(ROOT / "tests" / "data" / name) as f:
        grey = f.read().astype(np.float64).mean(axis=0)
    img = grey > np.percentile(grey[grey > 0], 60)
    truth = _components(img)
    plan = TilingPlan(shape=img.shape, tile_size=tile, padding=padding)
    return truth, truth, stage_windows(plan, lambda w: _components(img[w.slices])), plan, img


def case_pair_fusing(parity: int, *, uneven: bool = False):
    from remote_samsing.testing import stage_windows
    from remote_samsing.tiling import TilingPlan

    plan = TilingPlan(shape=(120, 240), tile_size=20, padding=6)
    xx = np.arange(plan.shape[1])[None, :].repeat(plan.shape[0], 0)
    truth = xx // 4 + 1  # touching stripes, numbered left to right
    if uneven:  # 5 to 12 px wide: thicker than the default jitter tolerance
        edges = np.cumsum(np.random.default_rng(parity).integers(5, 13, plan.shape[1]))
        truth = np.searchsorted(edges, xx, side="right") + 1

    def fuse(w):
        t = truth[w.slices]
        iy, ix = (w.y0 + plan.padding) // 20, (w.x0 + plan.padding) // 20
        p = (iy + ix + parity) % 2
        return np.where((t - 1) % 2 == p, t + 1, t)

    one = np.where((truth - 1) % 2 == parity, truth + 1, truth)  # one window fuses one parity
    return truth, one, stage_windows(plan, fuse), plan, None


def _rgb(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """8-bit RGB of a scene (other types stretched over 2-98 %) and its validity."""
    import rasterio

    with rasterio.open(path) as f:
        bands, nodata = f.read(), f.nodata
    valid = ~(bands == nodata).all(axis=0) if nodata is not None else np.ones(bands.shape[1:], bool)
    if bands.dtype != np.uint8:
        lo, hi = np.percentile(bands[:, valid], (2, 98))
        bands = np.clip((bands - lo) * 255.0 / max(hi - lo, 1), 0, 255).astype(np.uint8)
    rgb = np.moveaxis(np.broadcast_to(bands, (3,) + bands.shape[1:]) if bands.shape[0] == 1 else bands[:3], 0, -1)
    return np.ascontiguousarray(rgb), valid


def case_felzenszwalb(path: Path):
    from remote_samsing.segmenters import get_segmenter
    from remote_samsing.testing import stage_windows
    from remote_samsing.tiling import TilingPlan, Window

    rgb, valid = _rgb(path)
    seg = get_segmenter("felzenszwalb")

    def window(w):
        lab = seg.segment(rgb[w.slices], block_info={"window": w.as_tuple(), "valid": valid[w.slices]})
        return np.where(valid[w.slices], lab, 0)

    one = window(Window(0, rgb.shape[0], 0, rgb.shape[1]))
    plan = TilingPlan(shape=one.shape, tile_size=256, padding=32)
    return one, one, stage_windows(plan, window), plan, None


FELZENSZWALB_SCENES = {
    "neon": ROOT / "tests" / "data" / "neon_osbs.tif",
    "atlanta": ROOT / "tests" / "data" / "atlanta_crop_32616.tif",
    "landsat": ROOT / "tests" / "data" / "landsat_rgb.tif",
    "kampala-b": SHARED / "kampala-b" / "mosaic_B_z21_epsg3857.tif",
    "atlanta-900": SHARED / "spacenet-pan-atlanta" / "sample_geotiff.tif",
    "oam-tcd": SHARED / "oam-tcd" / "5b90f92da0d7280005fab355_4310.tif",
}
#: --quick: two scenes of tests/data and one of ../shared/data
FELZENSZWALB_QUICK = ("atlanta", "landsat", "kampala-b")


def case_sam_like(name: str, seed: int = 1):
    import rasterio

    from remote_samsing.metrics import load_ground_truth
    from remote_samsing.testing import SAMLikeWindows, stage_windows
    from remote_samsing.tiling import TilingPlan, Window

    image_path, gt_path = SAM_LIKE_SCENES[name]
    with rasterio.open(image_path) as f:
        image = np.moveaxis(f.read(), 0, -1)
        crs, transform = f.crs, f.transform
    if image.shape[-1] == 1:
        image = image[..., 0]
    truth = load_ground_truth(gt_path, shape=image.shape[:2], crs=crs, transform=transform).instances
    seg = SAMLikeWindows(truth=truth, image=image, seed=seed)
    one = seg(Window(0, truth.shape[0], 0, truth.shape[1]))
    plan = TilingPlan(shape=truth.shape, tile_size=256, padding=32)
    return truth, one, stage_windows(plan, seg), plan, None


SAM_LIKE_SCENES = {
    "kampala-b": (SHARED / "kampala-b" / "mosaic_B_z21_epsg3857.tif", SHARED / "kampala-b" / "labels.geojson"),
    "atlanta": (SHARED / "spacenet-pan-atlanta" / "sample_geotiff.tif",
                SHARED / "spacenet-pan-atlanta" / "geotiff_labels.geojson"),
}


# ---------------------------------------------------------------------------
# measures
# ---------------------------------------------------------------------------
def _pairs(out: np.ndarray, truth: np.ndarray):
    from remote_samsing._arrays import unique_pairs

    both = (out > 0) & (truth > 0)
    return unique_pairs(truth[both].astype(np.int64), out[both].astype(np.int64))


def _merges(out: np.ndarray, truth: np.ndarray, *, exact: bool) -> dict:
    t, o, n = _pairs(out, truth)
    size = np.bincount(truth.ravel())
    if exact:  # agreeing windows: any shared pixel counts
        held_by = o
        held_t = t
        split = np.bincount(t, minlength=size.size) > 1
    else:
        share = n / size[t]
        major = share > 0.5
        held_by, held_t = o[major], t[major]
        best = np.zeros(size.size)
        np.maximum.at(best, t, share)
        split = (np.bincount(t, minlength=size.size) > 1) & (best < 0.9)
    per_label = np.bincount(held_by) if held_by.size else np.zeros(1, np.int64)
    return {"false": int((per_label >= 2).sum()), "missed": int(split[1:].sum()),
            "most": int(per_label.max()) if held_t.size else 0}


def _seam_objects(truth: np.ndarray, plan) -> np.ndarray:
    """Ids of true objects with pixels in two or more blocks' cores."""
    from remote_samsing._arrays import unique_pairs

    owner = np.zeros(truth.shape, np.int64)
    for k, idx in enumerate(plan.block_ids()):
        owner[plan.core_window(idx).slices] = k
    fg = truth > 0
    t, _, _ = unique_pairs(truth[fg].astype(np.int64), owner[fg])
    return np.unique(t[np.r_[False, t[1:] == t[:-1]]])


def _det(out: np.ndarray, truth: np.ndarray, objects: np.ndarray) -> tuple[float, float]:
    """Det@0.5 (greedy oracle) and SS-Det@0.5 over ``objects``."""
    from remote_samsing.metrics import greedy_oracle

    if objects.size == 0:
        return float("nan"), float("nan")
    t, o, n = _pairs(out, truth)
    seg_size = np.bincount(out.ravel())
    obj_size = np.bincount(truth.ravel())
    det = ss = 0
    for obj in objects:
        sel = t == obj
        inter, sizes = n[sel], seg_size[o[sel]]
        _, iou = greedy_oracle(inter, sizes, int(obj_size[obj]))
        best = (inter / (sizes + obj_size[obj] - inter)).max() if inter.size else 0.0
        det += iou >= 0.5
        ss += best >= 0.5
    return 100.0 * det / objects.size, 100.0 * ss / objects.size


# ---------------------------------------------------------------------------
# the table
# ---------------------------------------------------------------------------
def _merged(strategy: str, staged: np.ndarray, plan, img) -> np.ndarray:
    import dask.array as da

    if strategy == "ndmeasure.label":
        from dask_image import ndmeasure

        return ndmeasure.label(da.from_array(img, chunks=plan.chunks))[0].compute(scheduler="sync")
    from remote_samsing.merge import MergeConfig, merge_labels

    cfg = MergeConfig(strategy=strategy.removesuffix("-nocut"), remove_small=False, absorb_enclosed=False,
                      seam_recut=False if strategy.endswith("-nocut") else None)
    if strategy.startswith("overlap"):  # the out-of-core merge, as a run merges (and timed alike)
        return _stored(staged, plan, cfg)
    return merge_labels(da.from_array(staged, chunks=plan.slot_shape), plan=plan, config=cfg).labels.compute(
        scheduler="sync")


def _stored(staged: np.ndarray, plan, cfg) -> np.ndarray:
    """``merge_stored`` of ``staged`` (written to a temporary Zarr store), as one array."""
    import tempfile

    import zarr

    from remote_samsing.merge import merge_stored

    out = np.zeros(plan.shape, np.uint32)

    def sink(labels, window):
        out[window.slices] = labels

    with tempfile.TemporaryDirectory(prefix="rs-bench-recut-") as d:
        z = zarr.create_array(store=f"{d}/staged.zarr", shape=staged.shape, chunks=plan.slot_shape,
                              dtype=np.uint32, fill_value=0, zarr_format=3)
        z[...] = np.asarray(staged, np.uint32)
        merge_stored(f"{d}/staged.zarr", plan=plan, config=cfg, workdir=f"{d}/spill", sink=sink)
    return out


def _seam_vis(out: np.ndarray, one: np.ndarray, plan) -> dict:
    """``seam_vis`` of ``out`` and its ratio over the one window's on the same seams."""
    from remote_samsing.metrics import seam_visibility, seam_visibility_ratio

    vis = seam_visibility(out, tile_size=plan.tile_size, padding=plan.padding).mean
    ratio = seam_visibility_ratio(out, one, tile_size=plan.tile_size, padding=plan.padding)
    return {"seam_vis": round(vis, 4), "seam_vis_ratio": round(ratio, 3)}


def measure(name: str, truth, one, staged, plan, img, *, exact: bool) -> list[dict]:
    seam = _seam_objects(truth, plan)
    det_one, ss_one = _det(one, truth, seam)
    rows = [{"case": name, "strategy": "one window", **_merges(one, truth, exact=exact), "det_drop": 0.0,
             "ss_det_drop": 0.0, **_seam_vis(one, one, plan), "seam_objects": int(seam.size), "seconds": 0.0}]
    for strategy in STRATEGIES + (("ndmeasure.label",) if img is not None else ()):
        t0 = time.perf_counter()
        out = _merged(strategy, staged, plan, img)
        seconds = time.perf_counter() - t0
        det, ss = _det(out, truth, seam)
        rows.append({"case": name, "strategy": strategy, **_merges(out, truth, exact=exact),
                     "det_drop": round(det_one - det, 2), "ss_det_drop": round(ss_one - ss, 2),
                     **_seam_vis(out, one, plan), "seam_objects": int(seam.size),
                     "seconds": round(seconds, 3)})
    return rows


def cases(quick: bool):
    yield "partition", case_partition(quick), True
    for scene, tile, padding in (("neon_osbs.tif", 64, 8), ("kampala_crop_3857.tif", 48, 6),
                                 ("landsat_rgb.tif", 96, 12))[: 2 if quick else 3]:
        yield f"threshold/{scene.split('_')[0]}", case_threshold(scene, tile, padding), True
    for parity in (0, 1):
        yield f"pair-fusing/{parity}", case_pair_fusing(parity), True
    for parity in (0, 1):
        yield f"pair-fusing-uneven/{parity}", case_pair_fusing(parity, uneven=True), True
    for scene, (image, gt) in SAM_LIKE_SCENES.items():
        if image.exists() and gt.exists() and not (quick and scene != "kampala-b"):
            for seed in range(1 if quick else 5):
                yield f"sam-like/{scene}/{seed}", case_sam_like(scene, seed), False
    for scene, path in FELZENSZWALB_SCENES.items():
        if path.exists() and not (quick and scene not in FELZENSZWALB_QUICK):
            yield f"felzenszwalb/{scene}", case_felzenszwalb(path), False


def summary(rows: list[dict]) -> dict:
    """The headline numbers of the default strategy: agreeing windows, pair fusion, SAM-like (weighted by objects)."""
    ov = [r for r in rows if r["strategy"] == "overlap"]
    agreeing = [r for r in ov if r["case"].startswith(("partition", "threshold"))]
    sam = [r for r in ov if r["case"].startswith("sam-like")]
    n = sum(r["seam_objects"] for r in sam)
    out = {
        "overlap_false_merges_agreeing": sum(r["false"] for r in agreeing),
        "overlap_missed_merges_agreeing": sum(r["missed"] for r in agreeing),
        "overlap_most_objects_pair_fusing": max((r["most"] for r in ov if r["case"].startswith("pair")), default=0),
    }
    if n:
        out["overlap_sam_like_seam_objects"] = n
        out["overlap_sam_like_det_drop_pp"] = sum(r["det_drop"] * r["seam_objects"] for r in sam) / n
        out["overlap_sam_like_ss_det_drop_pp"] = sum(r["ss_det_drop"] * r["seam_objects"] for r in sam) / n
    felz = [r["seam_vis_ratio"] for r in ov if r["case"].startswith("felzenszwalb")]
    if felz:  # the goal: <= 1.25 on every scene
        out["overlap_felzenszwalb_seam_vis_ratio_max"] = max(felz)
        # what the recut costs where windows disagree: the merge's seconds with it over without it
        secs = {s: sum(r["seconds"] for r in rows if r["strategy"] == s and r["case"].startswith("felzenszwalb"))
                for s in ("overlap", "overlap-nocut")}
        out["overlap_felzenszwalb_seconds_over_nocut"] = round(secs["overlap"] / secs["overlap-nocut"], 2)
    return out


def run(quick: bool = True) -> dict:
    rows = []
    for name, case, exact in cases(quick):
        rows += measure(name, *case, exact=exact)
    return {**summary(rows), "rows": rows}


def markdown(rows: list[dict]) -> str:
    lines = ["| case | strategy | false | missed | most | det drop (pp) | SS-det drop (pp) | seam vis | seam vis ratio "
             "| seam objects |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['case']} | {r['strategy']} | {r['false']} | {r['missed']} | {r['most']} | "
                     f"{r['det_drop']:.1f} | {r['ss_det_drop']:.1f} | {r['seam_vis']:.3f} | "
                     f"{r['seam_vis_ratio']:.2f} | {r['seam_objects']} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller partition, two threshold scenes")
    ap.add_argument("--json", help="write the rows here (and a Markdown table beside it)")
    args = ap.parse_args(argv)
    res = run(args.quick)
    table = markdown(res["rows"])
    print(table)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
        Path(args.json).with_suffix(".md").write_text(table)


if __name__ == "__main__":
    main()
