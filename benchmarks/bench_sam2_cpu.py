"""Seconds per block of SAM2 on a CPU: the default settings against the CPU recipe.

One padded block of a real scene (``--tile`` core plus ``--padding``, as a run
would hand a worker) goes through :class:`remote_samsing.segmenters.SAM2Segmenter`
in this process, with randomly initialised weights from sam2's own config
(``sam2.1_hiera_tiny``). Printed per setting: seconds of each pass, the passes
the block took, and seconds per block.

* **recipe**: ``image_size=256, points_per_side=16`` (``PREVIEW_PARAMS``, what the
  run's estimate line suggests on a CPU), every pass the multi-pass rule asks for;
* **1024 px, 16 x 16**: the default model input with the recipe's point grid,
  first pass only; the default 64 x 64 grid asks the decoder 16 times as many
  prompts per pass (a default block takes tens of minutes here).

Random weights make meaningless masks, so the number of passes differs from a
trained model's (a trained model accepts masks and stops earlier or later);
the seconds per pass are what the code path costs, **never SAM2 quality**.

    python -m benchmarks.bench_sam2_cpu                # 320-px block, padding 32
    python -m benchmarks.bench_sam2_cpu --skip-default # the recipe only
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from ._util import ROOT, machine, result_path

SCENE = ROOT / "tests" / "data" / "neon_osbs.tif"


def _block(tile: int, padding: int) -> np.ndarray:
    """The first padded window of the scene, as uint8 RGB (y, x, 3)."""
    import rasterio

    side = tile + 2 * padding
    with rasterio.open(SCENE) as src:
        rgb = src.read([1, 2, 3], window=((0, min(side, src.height)), (0, min(side, src.width))))
    return np.moveaxis(rgb, 0, -1).astype(np.uint8)


def _one(ckpt: Path, block: np.ndarray, *, padding: int, params: dict) -> dict:
    """One block through SAM2 on the CPU, after an untimed tiny warm-up (model build and load)."""
    from remote_samsing.segmenters.sam2 import SAM2Segmenter

    seg = SAM2Segmenter(checkpoint=ckpt, device="cpu", **params)
    h, w = block.shape[:2]
    seg.segment(block[:64, :64], block_info={"valid": np.ones((64, 64), bool)})  # loads the model
    info = {"valid": np.ones((h, w), bool), "window": (0, h, 0, w),
            "core": (padding, h - padding, padding, w - padding), "block_id": (0, 0)}
    t0 = time.perf_counter()
    res = seg.segment_with_stats(block, block_info=info)
    seconds = time.perf_counter() - t0
    per_pass = [round(p["generate_s"] + p["accept_s"], 2) for p in res.summary()["pass_stats"]]
    return {"params": params, "seconds_per_block": seconds, "passes": len(per_pass), "seconds_per_pass": per_pass}


def run(*, tile: int = 320, padding: int = 32, default: bool = True) -> dict:
    from remote_samsing.segmenters.sam2 import PREVIEW_PARAMS, write_random_checkpoint

    block = _block(tile, padding)
    settings = {"recipe": dict(PREVIEW_PARAMS)}
    if default:
        settings["1024 px, 16 x 16 (first pass)"] = {"points_per_side": 16, "max_passes": 1}
    with tempfile.TemporaryDirectory(prefix="rs-bench-sam2-cpu-") as d:
        ckpt = write_random_checkpoint(Path(d) / "sam2.1_hiera_tiny.pt", model_cfg="tiny", seed=0)
        rows = {name: _one(ckpt, block, padding=padding, params=p) for name, p in settings.items()}
    for name, r in rows.items():
        print(f"{name} {r['params']}: {r['seconds_per_block']:.1f} s per {block.shape[0]}x{block.shape[1]} block, "
              f"{r['passes']} pass(es), seconds per pass {r['seconds_per_pass']}")
    import torch

    return {"name": "sam2_cpu", "note": "random-weight SAM2 (sam2.1_hiera_tiny): speed of the code path, not "
            "SAM2 quality; a trained model takes another number of passes", "machine": machine(),
            "torch_threads": torch.get_num_threads(), "tile_size": tile, "padding": padding,
            "block_shape": list(block.shape[:2]), "scene": str(SCENE.relative_to(ROOT)), "rows": rows}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tile", type=int, default=320)
    ap.add_argument("--padding", type=int, default=32)
    ap.add_argument("--skip-default", action="store_true", help="time the recipe only, not the 1024-px input")
    ap.add_argument("--json", help="write the result here (default: benchmarks/results/sam2-<machine>.json)")
    args = ap.parse_args()
    result = run(tile=args.tile, padding=args.padding, default=not args.skip_default)
    target = Path(args.json) if args.json else result_path("sam2")
    target.write_text(json.dumps(result, indent=2))
    print(f"wrote {target}", flush=True)
