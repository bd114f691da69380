"""Per-GPU throughput of the SAM2 job on dask-cuda workers, random weights.

The directory job (``pipeline.run``, what ``remote-samsing segment`` runs) with
the ``sam2`` segmenter on a real scene, on ``dask_cuda.LocalCUDACluster`` with
one worker per GPU (``cluster.make_client(device="cuda")``, the product's own
cluster): an untimed run first (each worker loads the model once), then a
timed one. Prints Mpx/s in all and per GPU, seconds per block, SAM2 passes and
each worker's peak GPU memory; with several GPUs also 1 GPU against all.

The weights are randomly initialised from sam2's own config: the masks are
meaningless and the number of passes differs from a trained model's, so these
are timings of the code path (encoder, decoder, acceptance, merge, I/O),
**never SAM2 quality**. Where no NVIDIA GPU is visible it says so, measures
nothing and returns ``{"skipped": ...}``; ``--device cpu`` runs the same path
on CPU workers (use ``--quick``: a small scene and a coarse point grid), to
check the plumbing on a machine without a GPU.

    python -m benchmarks.bench_gpu                                  # every GPU, sam2.1 tiny
    python -m benchmarks.bench_gpu --model large --json benchmarks/results/gpu-large-h100.json
    python -m benchmarks.bench_gpu --device cpu --quick             # plumbing, no GPU
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from benchmarks._util import NEON_OSBS, OAM_TCD, ROOT, PeakRSS, machine, no_segment_expected

MODELS = ("tiny", "small", "base_plus", "large")


def _scene(image: str | None, quick: bool) -> Path:
    if image:
        return Path(image)
    return NEON_OSBS if quick or not OAM_TCD.exists() else OAM_TCD


def _gpu_peaks(client) -> dict:
    """Each worker's peak GPU memory (MB) and device name, then reset for the next run."""

    def peak():
        import torch

        out = {"name": torch.cuda.get_device_name(0), "peak_mb": torch.cuda.max_memory_allocated(0) / 2**20}
        torch.cuda.reset_peak_memory_stats(0)
        return out

    return client.run(peak)


def _one_cluster(image: Path, ckpt: Path, *, device: str, gpus, n_workers, params: dict, tile: int,
                 padding: int, tmp: Path) -> dict:
    from remote_samsing.cluster import ClusterConfig, make_client
    from remote_samsing.execute import scheduler_workers
    from remote_samsing.config import RunConfig
    from remote_samsing.pipeline import run as run_job

    cfg = RunConfig(segmenter="sam2", segmenter_params={"checkpoint": str(ckpt), **params}, tile_size=tile,
                    padding=padding, device=device, gpus=list(gpus) if gpus else None, vectors=False,
                    progress=False)
    ccfg = ClusterConfig(device=device, gpus=tuple(gpus) if gpus else None, n_workers=n_workers, dashboard=False)
    # random weights (the only ones here) find nothing: the run's warning of it is expected
    with make_client(ccfg, needs_gpu=device == "cuda") as c, no_segment_expected():
        workers = scheduler_workers(c)
        t0 = time.perf_counter()
        run_job(image, tmp / "warm-up", config=cfg, client=c)  # each worker loads the model once
        warm_s = time.perf_counter() - t0
        if device == "cuda":
            _gpu_peaks(c)
        with PeakRSS() as rss:
            t0 = time.perf_counter()
            rec = run_job(image, tmp / "timed", config=cfg, client=c)
            wall = time.perf_counter() - t0
        gpu = _gpu_peaks(c) if device == "cuda" else None
    blocks = [b for b in rec["blocks"] if not b.get("skipped")]
    passes = [b["segmenter"]["passes"] for b in blocks if b.get("segmenter")]
    mpx = rec["shape"][0] * rec["shape"][1] / 1e6
    shutil.rmtree(tmp / "warm-up", ignore_errors=True)
    shutil.rmtree(tmp / "timed", ignore_errors=True)
    n = len(workers)
    return {
        "workers": n,
        "worker_resources": sorted(str(w.get("resources", {})) for w in workers.values()),
        "mpx": mpx,
        "first_run_s": warm_s,
        "job_s": wall,
        "stages_s": rec["timings"],
        "mpx_per_s": mpx / wall,
        "mpx_per_s_per_worker": mpx / wall / n,
        "segmentation_mpx_per_s": mpx / rec["timings"]["segment_s"],
        "blocks": len(blocks),
        "block_seconds": {"min": min(b["seconds"] for b in blocks), "max": max(b["seconds"] for b in blocks),
                          "mean": sum(b["seconds"] for b in blocks) / len(blocks)},
        "passes": {"min": min(passes), "max": max(passes)} if passes else None,
        "peak_rss_mb": rss.peak_mb,
        "gpu": gpu,
    }


def run(quick: bool = False, *, device: str = "cuda", model: str = "tiny", image: str | None = None,
        tile: int | None = None, padding: int = 50, points_per_side: int | None = None, gpus=None) -> dict:
    from remote_samsing.cluster import detect_gpus

    if device == "cuda":
        found = detect_gpus()
        if gpus:
            found = [g for g in found if g.index in set(gpus)]
        if not found:
            msg = "no NVIDIA GPU visible: nothing measured (run this where a GPU is lent, or use --device cpu)"
            print(msg)
            return {"name": "gpu_throughput", "skipped": msg, "machine": machine()}
        gpus = [g.index for g in found]
    scene = _scene(image, quick)
    tile = tile or (200 if quick else 1000)
    params: dict = {"points_per_side": points_per_side or (4 if quick else 32)}
    if quick:
        # a small model input and two passes: the plumbing, in minutes on CPU
        params.update(image_size=256, max_passes=2)
    tmp = Path(tempfile.mkdtemp(prefix="rs-bench-gpu-"))
    try:
        from remote_samsing.segmenters.sam2 import write_random_checkpoint

        ckpt = write_random_checkpoint(tmp / f"sam2.1_hiera_{model}.pt", model_cfg=model)
        n_cpu = 1 if device == "cpu" else None
        rows = {"all": _one_cluster(scene, ckpt, device=device, gpus=gpus, n_workers=n_cpu, params=params,
                                    tile=tile, padding=padding, tmp=tmp)}
        if device == "cuda" and len(gpus) > 1:
            rows["one"] = _one_cluster(scene, ckpt, device=device, gpus=gpus[:1], n_workers=None, params=params,
                                       tile=tile, padding=padding, tmp=tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    import torch

    result = {
        "name": "gpu_throughput",
        "note": "random-weight SAM2: timings of the code path, not SAM2 quality",
        "device": device,
        "gpus": gpus,
        "model": f"sam2.1_hiera_{model} (random weights)",
        "scene": str(scene.relative_to(ROOT.parent)) if scene.is_relative_to(ROOT.parent) else str(scene),
        "tile_size": tile,
        "padding": padding,
        "segmenter_params": params,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "runs": rows,
        "machine": machine(),
    }
    if "one" in rows:
        result["speedup_all_vs_one_gpu"] = rows["one"]["job_s"] / rows["all"]["job_s"]
    for key, r in rows.items():
        gpu = ""
        if r["gpu"]:
            gpu = "; peak GPU memory " + ", ".join(f"{v['name']} {v['peak_mb']:.0f} MB" for v in r["gpu"].values())
        print(f"{device} x{r['workers']} ({key}): {r['mpx']:.1f} Mpx in {r['job_s']:.1f} s = {r['mpx_per_s']:.2f} "
              f"Mpx/s ({r['mpx_per_s_per_worker']:.2f} per worker), segmentation {r['segmentation_mpx_per_s']:.2f} "
              f"Mpx/s, {r['blocks']} blocks of {r['block_seconds']['mean']:.2f} s on average, passes "
              f"{r['passes']}, first run (model load) {r['first_run_s']:.1f} s{gpu}")
    if "speedup_all_vs_one_gpu" in result:
        print(f"{len(gpus)} GPUs vs 1: {result['speedup_all_vs_one_gpu']:.2f}x")
    return result


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--model", choices=MODELS, default="tiny")
    ap.add_argument("--image", help="scene (default: ../shared/data oam-tcd, or tests/data/neon_osbs.tif)")
    ap.add_argument("--tile", type=int, help="tile size (default 1000; 200 with --quick)")
    ap.add_argument("--padding", type=int, default=50)
    ap.add_argument("--points-per-side", type=int, help="SAM2 point grid (default 32; 4 with --quick)")
    ap.add_argument("--gpus", help="comma-separated GPU indices (default: every GPU)")
    ap.add_argument("--quick", action="store_true", help="small scene, coarse grid, 256-px model input")
    ap.add_argument("--json", help="write the result here too")
    args = ap.parse_args()
    res = run(args.quick, device=args.device, model=args.model, image=args.image, tile=args.tile,
              padding=args.padding, points_per_side=args.points_per_side,
              gpus=[int(g) for g in args.gpus.split(",")] if args.gpus else None)
    text = json.dumps(res, indent=2, default=str)
    print(text)
    if args.json:
        Path(args.json).write_text(text)
