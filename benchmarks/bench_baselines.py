"""Classical baselines through the full pipeline, scored with the paper's metrics.

**These are baselines (Felzenszwalb, SLIC), not SAM2.** Each scene of
``../shared/data`` that has ground truth is segmented whole (one block) and
tiled (T = 256 and 512, with and without the seam merge), through
``remote_samsing.segment(...)``, and scored by
:func:`remote_samsing.metrics.evaluate`. The gap between "tiled, no merge"
and "tiled, merge" is what the boundary merge recovers; "whole" is the
no-seam ceiling for the same segmenter.

Run: ``.venv/bin/python benchmarks/bench_baselines.py [--quick]``. Reports
(JSON, Markdown, PNG) go to ``benchmarks/out/baselines/``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
OUT = Path(__file__).resolve().parent / "out" / "baselines"

# name -> (image, ground truth, evaluate() keyword arguments)
SCENES = {
    "kampala-b": ("kampala-b/mosaic_B_z21_epsg3857.tif", "kampala-b/labels.geojson", {}),
    "spacenet-pan-atlanta": ("spacenet-pan-atlanta/sample_geotiff.tif", "spacenet-pan-atlanta/geotiff_labels.geojson", {}),
    "dubai-semantic": (
        "dubai-semantic/t1_image_part_008.jpg",
        "dubai-semantic/t1_image_part_008.png",
        {"colour_table": "DUBAI_COLOURS", "ignore_classes": ("Unlabeled",)},
    ),
    "neon-trees": ("neon-trees/OSBS_029.tif", "neon-trees/OSBS_029.csv", {"image_name": "OSBS_029.tif"}),
}

# Felzenszwalb: the paper's sigma/min_size; the scale is per-scene in the paper
# (calibrated to SAMsing counts); 300 suits these 0.07-0.5 m scenes.
FELZ = {"scale": 300.0, "sigma": 0.5, "min_size": 50}
# SLIC: compactness 10 as in the paper; density of one superpixel per ~1600 px.
SLIC_PX_PER_SEGMENT = 1600
SLIC_COMPACTNESS = 10.0


def _image_shape(path: Path) -> tuple[int, int]:
    import warnings

    import rasterio
    import rasterio.errors

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(path) as src:
            return src.height, src.width


def _segmenter(name: str, block_px: int):
    from remote_samsing.segmenters import get_segmenter

    if name == "felzenszwalb":
        return get_segmenter("felzenszwalb", **FELZ)
    # keep the superpixel density constant whatever the block size
    n = max(1, round(block_px / SLIC_PX_PER_SEGMENT))
    return get_segmenter("slic", n_segments=n, compactness=SLIC_COMPACTNESS)


def _configs(shape, quick: bool):
    whole = max(shape)
    out = [("whole", whole, 0, False)]
    for t in (256,) if quick else (256, 512):
        if t < whole:
            out += [(f"T={t} no merge", t, 32, False), (f"T={t} merge", t, 32, True)]
    return out


def run(quick: bool = False) -> dict:
    """Run the baselines; returns ``{scene: {segmenter: {config: summary}}}``.

    ``quick`` limits the run to two scenes and T = 256.
    """
    import remote_samsing
    from remote_samsing import metrics

    segment = getattr(remote_samsing, "segment", None)
    if segment is None:
        raise RuntimeError("remote_samsing.segment is not available yet: the pipeline must land first")
    scenes = ["kampala-b", "neon-trees"] if quick else list(SCENES)
    results: dict = {}
    rows = []
    for scene in scenes:
        img_rel, gt_rel, kw = SCENES[scene]
        img, gt = DATA / img_rel, DATA / gt_rel
        if not img.exists() or not gt.exists():
            print(f"skip {scene}: {img} or {gt} missing")
            continue
        kw = dict(kw)
        if kw.get("colour_table") == "DUBAI_COLOURS":
            kw["colour_table"] = metrics.DUBAI_COLOURS
        shape = _image_shape(img)
        for seg_name in ("felzenszwalb", "slic"):
            for cfg_name, tile, pad, merge in _configs(shape, quick):
                block_px = (tile + 2 * pad) ** 2 if cfg_name != "whole" else shape[0] * shape[1]
                t0 = time.perf_counter()
                labels = segment(
                    str(img), segmenter=_segmenter(seg_name, block_px), tile_size=tile, padding=pad,
                    merge=("overlap" if merge else "none") if isinstance(merge, bool) else merge,
                )
                labels = labels.compute()
                t_seg = time.perf_counter() - t0
                rep = metrics.evaluate(labels, gt, **kw)
                stem = f"{scene}_{seg_name}_{cfg_name.replace(' ', '_').replace('=', '')}"
                metrics.write_report(rep, OUT / f"{stem}.json", title=f"{scene} / {seg_name} / {cfg_name} (baseline, not SAM2)")
                s = dict(rep.summary, seconds=round(t_seg, 2))
                results.setdefault(scene, {}).setdefault(seg_name, {})[cfg_name] = s
                rows.append((scene, seg_name, cfg_name, s))
    _print_table(rows)
    return results


def _print_table(rows) -> None:
    def f(v, pct=False):
        if v is None or v != v:
            return "–"
        return f"{100 * v:5.1f}" if pct else f"{v:.3f}"

    print()
    print("BASELINES (Felzenszwalb, SLIC) — NOT SAM2 — through remote_samsing.segment")
    print("| scene | segmenter | config | segments | cov % | ASA | Det@0.5 % | SS-Det % | mIoU | BIoU | n̄ | s |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for scene, seg, cfg, s in rows:
        print(
            f"| {scene} | {seg} | {cfg} | {s['n_segments']} | {s['coverage_pct']:.1f} | {f(s['asa'])} | "
            f"{f(s['det50'], True)} | {f(s['ss_det50'], True)} | {f(s['miou'])} | {f(s['biou'])} | "
            f"{s['n_bar']:.2f} | {s['seconds']} |"
        )


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="two scenes, T = 256 only")
    run(quick=ap.parse_args().quick)
