"""Mask acceptance speed: bounding-box acceptance vs the reference's full-window one.

Both sides get the identical list of masks (full-window bool arrays with
SAM-style XYWH boxes, in the same order) and must produce identical labels.

* **full window** re-implements the reference's acceptance
  (``osmarluiz/sam-mosaic``, ``core/multipass.py``; shared/design/reference.md
  §1.4.4): per mask a connected-components labelling of the whole window, then
  per component whole-window boolean operations for area, overlap, union and
  label assignment.
* **bbox** is :func:`remote_samsing.multipass.accept_masks`: the same rules,
  computed only inside each mask's bounding box.

Target: >= 10x on 300 masks over an 1100² window.

    python -m benchmarks.bench_multipass           # 300 masks, 1100²
    python -m benchmarks.bench_multipass --quick   # 100 masks, 600²
    python -m benchmarks.bench_multipass --sam2    # + per-pass SAM2 time breakdown

``run_sam2_passes`` runs the whole multi-pass segmenter with random-weight
SAM2.1 Hiera-T (bf16 + TF32 on CUDA) on a synthetic 1100² window and returns
each pass's encoder / decoder / acceptance seconds. ``run()`` includes it
automatically where CUDA is available (on the CPU it takes minutes; ask for it
with ``--sam2``). Random weights make few, meaningless masks: the numbers are
timings, not quality.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from benchmarks._util import machine


def make_masks(n_masks: int, side: int, *, seed: int = 0) -> list[dict]:
    """SAM-like masks: ellipses of 5-80 px radius, some with a detached second blob and holes."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:side, 0:side]
    records = []
    for _ in range(n_masks):
        m = np.zeros((side, side), bool)
        for _blob in range(1 + int(rng.random() < 0.3)):
            ry, rx = rng.integers(5, 80, size=2)
            cy, cx = rng.integers(0, side, size=2)
            y0, y1, x0, x1 = max(0, cy - ry), min(side, cy + ry + 1), max(0, cx - rx), min(side, cx + rx + 1)
            sub = ((yy[y0:y1, x0:x1] - cy) / ry) ** 2 + ((xx[y0:y1, x0:x1] - cx) / rx) ** 2 <= 1
            m[y0:y1, x0:x1] |= sub
        if rng.random() < 0.3:  # a hole, as real masks have
            cy, cx = rng.integers(0, side, size=2)
            m[max(0, cy - 4) : cy + 4, max(0, cx - 4) : cx + 4] = False
        ys, xs = np.nonzero(m)
        if ys.size == 0:
            continue
        records.append({
            "segmentation": m,
            "bbox": [float(xs.min()), float(ys.min()), float(xs.max() - xs.min()), float(ys.max() - ys.min())],
            "area": int(ys.size),
            "predicted_iou": float(rng.uniform(0.6, 1.0)),
        })
    records.sort(key=lambda r: -r["predicted_iou"])  # SAM2's order
    return records


def accept_full_window(records, *, valid, min_mask_area=100, overlap_reject=0.5):
    """The reference's acceptance: full-window labelling and boolean ops per mask/component."""
    from scipy import ndimage

    shape = valid.shape
    union = np.zeros(shape, bool)
    labels = np.zeros(shape, np.uint32)
    next_label = 1
    for rec in records:
        m = np.asarray(rec["segmentation"]).astype(np.uint8) & valid  # the reference keeps uint8 masks
        comp, n = ndimage.label(m)
        for c in range(1, n + 1):
            cm = comp == c
            area = int(cm.sum())
            if area < min_mask_area:
                continue
            if int((cm & union).sum()) >= overlap_reject * area:
                continue
            union |= cm
            labels[cm & (labels == 0)] = next_label
            next_label += 1
    return labels


def run(
    quick: bool = False, *, n_masks: int | None = None, side: int | None = None, repeat: int = 3,
    sam2: bool | None = None,
) -> dict:
    """Time both acceptances on identical masks; returns a JSON-able dict.

    ``sam2=None`` adds :func:`run_sam2_passes` only where CUDA is available.
    """
    from remote_samsing.multipass import accept_masks

    n_masks = n_masks or (100 if quick else 300)
    side = side or (600 if quick else 1100)
    t0 = time.perf_counter()
    records = make_masks(n_masks, side)
    valid = np.ones((side, side), bool)
    gen_s = time.perf_counter() - t0

    def ours():
        labels = np.zeros((side, side), np.uint32)
        accept_masks(records, labels=labels, valid=valid, next_label=1)
        return labels

    def theirs():
        return accept_full_window(records, valid=valid)

    ours()  # warm-up (scipy import)
    t_ours, t_full = [], []
    for _ in range(repeat):
        t = time.perf_counter()
        a = ours()
        t_ours.append(time.perf_counter() - t)
    for _ in range(max(1, repeat - 2) if not quick else repeat):
        t = time.perf_counter()
        b = theirs()
        t_full.append(time.perf_counter() - t)
    identical = bool(np.array_equal(a, b))
    ours_s, full_s = min(t_ours), min(t_full)
    extra = {}
    if sam2 is None:
        try:
            import torch

            sam2 = bool(torch.cuda.is_available())
        except ImportError:
            sam2 = False
    if sam2:
        extra["sam2_passes"] = run_sam2_passes(
            side=600 if quick else 1100, points_per_side=16 if quick else 32, max_passes=2 if quick else 3
        )
    return {
        "n_masks": len(records),
        "side": side,
        "n_labels": int(a.max()),
        "identical": identical,
        "bbox_s": ours_s,
        "full_window_s": full_s,
        "speedup": full_s / ours_s,
        "target_speedup": 10.0,
        "mask_generation_s": gen_s,
        **machine(),
        **extra,
    }


def run_sam2_passes(
    *, device: str = "auto", side: int = 1100, image_size: int | None = None,
    points_per_side: int = 32, max_passes: int = 3,
) -> dict:
    """Per-pass encoder / decoder / acceptance seconds of the SAM2 segmenter (random weights)."""
    from remote_samsing.segmenters.sam2 import SAM2Segmenter

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:side, 0:side]
    image = np.stack([(np.sin(yy / 23.0) * 60 + 128), (np.cos(xx / 31.0) * 60 + 128),
                      rng.integers(0, 50, (side, side))], axis=-1).astype(np.uint8)
    # thresholds 0 so random weights still return masks to accept
    seg = SAM2Segmenter(
        random_weights=True, model_cfg="tiny", device=device, image_size=image_size,
        points_per_side=points_per_side, max_passes=max_passes,
        iou_start=0.0, iou_end=0.0, stability_start=0.0, stability_end=0.0,
    )
    block_info = {"window": (0, side, 0, side), "valid": np.ones((side, side), bool)}
    t = time.perf_counter()
    seg.segment(image, block_info=block_info)  # warm-up: model build, kernels, autotuning
    warmup_s = time.perf_counter() - t
    t = time.perf_counter()
    seg.segment(image, block_info=block_info)
    total_s = time.perf_counter() - t
    st = seg.last_stats
    keys = ("pass", "n_prompts", "masks_generated", "accepted", "encoder_s", "decoder_s", "accept_s")
    return {
        "device": st["device"],
        "side": side,
        "image_size": st["image_size"],
        "points_per_side": points_per_side,
        "warmup_s": warmup_s,
        "total_s": total_s,
        "passes": [{k: p.get(k) for k in keys} for p in st["pass_stats"]],
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--sam2", action="store_true", help="also time SAM2 passes (minutes on a CPU)")
    ap.add_argument("--json", help="write the result here too (benchmarks/results/multipass-cpu-2core.json)")
    args = ap.parse_args(argv)
    res = run(quick=args.quick, sam2=True if args.sam2 else None)
    text = json.dumps(res, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text)
    print(
        f"acceptance of {res['n_masks']} masks on {res['side']}²: bbox {res['bbox_s'] * 1e3:.1f} ms, "
        f"full window {res['full_window_s'] * 1e3:.1f} ms -> {res['speedup']:.1f}x "
        f"(target >= 10x), identical labels: {res['identical']}"
    )
    return 0 if res["identical"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
