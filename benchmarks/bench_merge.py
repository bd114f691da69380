"""Seam merge benchmark: out-of-core merge vs the reference's whole-mosaic numpy code.

A synthetic label mosaic (rectangular objects on a 40-px cell grid, ~60k
objects per 100 Mpx, some spanning two cells across a seam, some ending
exactly at a seam and touching their neighbour there, some small islands) is
segmented "perfectly" by every block (its local labels are the relabelled
crop of the truth over the padded window) and staged to a temporary Zarr,
as the pipeline does. Then, each in its own process with peak RSS sampled by
psutil over the process tree:

* ours: ``merge_stored`` (strategy ``overlap``, post-processing on), what
  ``remote-samsing segment`` runs: phase by phase, each block's results
  spilled to disk, reading the staged Zarr and writing the labels to a Zarr,
  2 threads (``--graph`` also times ``merge_labels``, the lazy graph that
  ``segment()`` builds);
* reference: ``_reference.reference_pipeline`` (post-process + best match)
  on the whole pre-merge mosaic already in memory (loading it is not timed).

Correctness at scale: for every output, count *false merges* (one output
label covering several truth objects) and *missed merges* (one truth object
split over several output labels), after the truth's small islands are
removed. The reference's best match merges objects that end at a seam with
their neighbour across it.

Usage::

    python benchmarks/bench_merge.py --quick          # < 1 min
    python benchmarks/bench_merge.py                  # 100 Mpx and 400 Mpx
    python benchmarks/bench_merge.py --gigapixel      # adds 2 Gpx (ours only; long, ~GBs of temp disk)
    python benchmarks/bench_merge.py --megapixels 100,2000   # the memory comparison alone
    python benchmarks/bench_merge.py --megapixels 100,400,2000   # every size and measure in one run
    python benchmarks/bench_merge.py --versus iou --repeats 5      # overlap vs the first-generation rule, 100 Mpx
    python benchmarks/bench_merge.py --versus nosplit --repeats 5  # the cost of one polygon per segment
    python benchmarks/bench_merge.py --versus recut --repeats 3    # the cost of the seam recut
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CELL = 40
TILE = 1000
PADDING = 50
MIN_AREA = 100
_SEED = 12345


# ---------------------------------------------------------------------------
# synthetic truth, procedurally for any window
# ---------------------------------------------------------------------------
def _hash(cy, cx):
    h = (cy.astype(np.uint64) * np.uint64(73856093)) ^ (cx.astype(np.uint64) * np.uint64(19349663))
    h ^= np.uint64(_SEED)
    h = (h ^ (h >> np.uint64(13))) * np.uint64(0x5BD1E995)
    return h ^ (h >> np.uint64(15))


def truth_window(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """Truth object ids (uint64, 0 = background) over a window of the infinite mosaic."""
    y = np.arange(y0, y1)[:, None]
    x = np.arange(x0, x1)[None, :]
    cy, cx = y // CELL, x // CELL
    h = _hash(cy, cx)
    # pairs: (even row, cx % 4 == 0) joins its right cell; (even row, cx % 4 == 2) joins the cell below
    left = (cy % 2 == 0) & (cx % 4 == 1) & (_hash(cy, cx - 1) % np.uint64(3) == 0)
    up = (cy % 2 == 1) & (cx % 4 == 2) & (_hash(cy - 1, cx) % np.uint64(3) == 0)
    oy = np.where(up, cy - 1, cy)
    ox = np.where(left, cx - 1, cx)
    ho = _hash(oy, ox)
    pair_h = (oy % 2 == 0) & (ox % 4 == 0) & (ho % np.uint64(3) == 0)
    pair_v = (oy % 2 == 0) & (ox % 4 == 2) & (ho % np.uint64(3) == 0)
    ny = np.where(pair_v, 2, 1)
    nx = np.where(pair_h, 2, 1)
    # margins 0 (touching the neighbour, often exactly at a seam) or 1..6
    def margin(shift):
        m = (ho >> np.uint64(shift)) % np.uint64(10)
        return np.where(m < 4, 0, m - 3).astype(np.int64)

    mt, mb, ml, mr = margin(8), margin(12), margin(16), margin(20)
    small = (ho >> np.uint64(24)) % np.uint64(16) == 5  # an 8x8 island in the middle of its cell
    ry = y - oy * CELL
    rx = x - ox * CELL
    inside = (ry >= mt) & (ry < ny * CELL - mb) & (rx >= ml) & (rx < nx * CELL - mr)
    core_small = (np.abs(ry - CELL // 2) < 4) & (np.abs(rx - CELL // 2) < 4)
    inside = np.where(small & ~pair_h & ~pair_v, core_small, inside)
    ids = (oy.astype(np.uint64) << np.uint64(24)) + ox.astype(np.uint64) + np.uint64(1)
    del h
    return np.where(inside, ids, np.uint64(0))


def _rank(a):
    u, inv = np.unique(a, return_inverse=True)
    inv = inv.reshape(a.shape)
    return (inv if u[0] == 0 else inv + 1).astype(np.uint32)


def write_staged(path: str, plan) -> None:
    """Each block's local labels = the relabelled truth over its padded window."""
    import zarr

    from concurrent.futures import ThreadPoolExecutor

    sy, sx = plan.slot_shape
    z = zarr.open_array(path, mode="w", shape=plan.staging_shape, chunks=(sy, sx), dtype=np.uint32)

    def one(index):
        iy, ix = index
        w = plan.padded_window((iy, ix))
        slot = np.zeros((sy, sx), np.uint32)
        slot[: w.shape[0], : w.shape[1]] = _rank(truth_window(*w.as_tuple()))
        z[iy * sy : (iy + 1) * sy, ix * sx : (ix + 1) * sx] = slot  # one chunk per block: no overlap

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(one, plan.block_ids()))


def _expected_truth(w) -> np.ndarray:
    """Truth over a core window with islands (< MIN_AREA) removed; objects never cross the window."""
    from scipy import ndimage

    t = truth_window(*w)
    comps, n = ndimage.label(t > 0)
    small = np.bincount(comps.ravel(), minlength=n + 1) < MIN_AREA
    small[0] = False
    # islands are whole cells or cell pairs, so an island is never cut by the window of a
    # 1000-px core whose edges are cell edges: measuring it inside the window is exact
    t[small[comps]] = 0
    return t


def _pairs(out: np.ndarray, truth: np.ndarray) -> np.ndarray:
    fg = (out > 0) | (truth > 0)
    return np.unique(np.stack([out[fg].astype(np.uint64), truth[fg].astype(np.uint64)]), axis=1)


def _score(pairs: np.ndarray) -> dict:
    pairs = np.unique(pairs, axis=1)
    both = (pairs[0] > 0) & (pairs[1] > 0)
    lone = int(((pairs[0] == 0) ^ (pairs[1] == 0)).sum())
    o, t = pairs[0][both], pairs[1][both]
    _, co = np.unique(o, return_counts=True)
    _, ct = np.unique(t, return_counts=True)
    return {
        "false_merges": int((co - 1).sum()),
        "missed_merges": int((ct - 1).sum()),
        "pixels_disagreeing_on_foreground": lone,
        "objects": int(np.unique(t).size),
    }


# ---------------------------------------------------------------------------
# the two contenders, each run in a child process
# ---------------------------------------------------------------------------
def _warm_up() -> None:
    """Load the cached numba kernels once (the reference has no JIT to load)."""
    import dask.array as da

    from remote_samsing.merge import MergeConfig, merge_labels
    from remote_samsing.tiling import TilingPlan

    plan = TilingPlan(shape=(8, 8), tile_size=4, padding=1)
    staged = da.ones(plan.staging_shape, dtype=np.uint32, chunks=plan.slot_shape)
    merge_labels(staged, plan=plan, config=MergeConfig(min_mask_area=2)).labels.compute(scheduler="sync")


class _ZarrSink:
    """Writes each merged block into a Zarr array (picklable: a path)."""

    def __init__(self, path: str):
        self.path = path

    def __call__(self, labels, window) -> None:
        import zarr

        zarr.open_array(self.path, mode="r+")[window.slices] = labels


def _run_ours(staged_path: str, out_path: str, shape, graph: bool, q, config: dict | None = None) -> None:
    import zarr

    from remote_samsing.merge import MergeConfig, merge_labels, merge_stored, thread_map
    from remote_samsing.tiling import TilingPlan

    plan = TilingPlan(shape=tuple(shape), tile_size=TILE, padding=PADDING)
    cfg = MergeConfig(**{"min_mask_area": MIN_AREA, **(config or {})})
    _warm_up()
    q.put({"loaded": True})  # imports and jitted kernels in memory: the baseline
    t0 = time.perf_counter()
    if graph:
        import dask

        # the lazy graph (`segment()`'s merge), from the staging store's path
        res = merge_labels(staged_path, plan=plan, config=cfg)
        store = res.labels.to_zarr(out_path, compute=False)
        _, stats = dask.compute(store, res.stats, scheduler="threads", num_workers=2)
    else:
        # what `remote-samsing segment` runs: phase by phase, per-block results
        # spilled to disk, two threads
        zarr.create_array(store=out_path, shape=plan.shape, chunks=(TILE, TILE), dtype=np.uint32, fill_value=0,
                          zarr_format=3)
        stats = merge_stored(staged_path, plan=plan, config=cfg, workdir=out_path + ".spill",
                             sink=_ZarrSink(out_path), map_blocks=thread_map(2))
    q.put({"seconds": time.perf_counter() - t0, "totals": stats["totals"],
           "phase_seconds": stats.get("phase_seconds")})


def _run_reference(staged_path: str, shape, q) -> None:
    import zarr

    from remote_samsing._reference import reference_pipeline
    from remote_samsing.tiling import TilingPlan

    plan = TilingPlan(shape=tuple(shape), tile_size=TILE, padding=PADDING)
    z = zarr.open_array(staged_path, mode="r")
    sy, sx = plan.slot_shape
    mosaic = np.zeros(plan.shape, np.uint32)
    offset = 0
    for iy, ix in plan.block_ids():  # the reference's numbering: running offset, row-major
        c = plan.core_in_padded((iy, ix))
        core = np.asarray(z[iy * sy : iy * sy + c.y1, ix * sx : ix * sx + c.x1])[c.slices]
        core = _rank(core).astype(np.uint32)
        mosaic[plan.core_window((iy, ix)).slices] = np.where(core > 0, core + np.uint32(offset), 0)
        offset = max(offset, int(mosaic.max()))
    q.put({"loaded": True})
    t0 = time.perf_counter()
    out = reference_pipeline(mosaic, tile_size=TILE, strategy="best_match", min_mask_area=MIN_AREA)
    seconds = time.perf_counter() - t0
    del mosaic
    pairs = [
        _pairs(out[plan.core_window(i).slices], _expected_truth(plan.core_window(i).as_tuple()))
        for i in plan.block_ids()
    ]
    q.put({"seconds": seconds, "score": _score(np.concatenate(pairs, axis=1))})


def _measure(target, args, kwargs=None) -> dict:
    """Run ``target`` in a fresh process; sample the tree's RSS until it ends."""
    import psutil

    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=target, args=args + (q,), kwargs=kwargs or {})
    p.start()
    proc = psutil.Process(p.pid)
    peak = base = 0
    results = {}
    while p.is_alive() or not q.empty():
        try:
            rss = sum(x.memory_info().rss for x in [proc] + proc.children(recursive=True))
        except psutil.Error:
            rss = 0
        peak = max(peak, rss)
        while not q.empty():
            msg = q.get()
            if msg.get("loaded"):
                # ours: imports + kernels loaded; reference: also the input mosaic in memory
                base = peak
            results.update(msg)
        time.sleep(0.02)
    p.join()
    results.pop("loaded", None)
    results.update(peak_rss_mb=peak / 2**20, rss_at_start_mb=base / 2**20, rss_growth_mb=(peak - base) / 2**20)
    return results


def _score_ours(out_path: str, shape) -> dict:
    """Score the written labels block by block (two threads reading the Zarr directly).

    (A dask graph of one delayed call per ``out.blocks[i]`` cost O(blocks²)
    to build: most of the 2-gigapixel benchmark's 35 minutes.)
    """
    from concurrent.futures import ThreadPoolExecutor

    import zarr

    from remote_samsing.tiling import TilingPlan

    plan = TilingPlan(shape=tuple(shape), tile_size=TILE, padding=PADDING)
    z = zarr.open_array(out_path, mode="r")

    def one(index):
        w = plan.core_window(index)
        return _pairs(np.asarray(z[w.slices]), _expected_truth(w.as_tuple()))

    with ThreadPoolExecutor(2) as ex:
        pairs = list(ex.map(one, plan.block_ids()))
    return _score(np.concatenate(pairs, axis=1))


def bench_size(side_y: int, side_x: int, *, reference: bool, workdir: str, keep_staged: bool = False,
               graph: bool = False) -> dict:
    from remote_samsing.tiling import TilingPlan

    shape = (side_y, side_x)
    plan = TilingPlan(shape=shape, tile_size=TILE, padding=PADDING)
    staged = os.path.join(workdir, f"staged_{side_y}x{side_x}.zarr")
    t0 = time.perf_counter()
    if not (keep_staged and os.path.exists(staged)):
        write_staged(staged, plan)
    row = {"megapixels": side_y * side_x / 1e6, "blocks": plan.n_blocks, "staging_s": time.perf_counter() - t0}
    out = os.path.join(workdir, f"labels_{side_y}x{side_x}.zarr")
    row["ours"] = _measure(_run_ours, (staged, out, shape, False))
    row["ours"]["score"] = _score_ours(out, shape)
    if graph:
        import shutil

        shutil.rmtree(out, ignore_errors=True)
        row["ours_graph"] = _measure(_run_ours, (staged, out, shape, True))
        row["ours_graph"]["score"] = _score_ours(out, shape)
    if reference:
        row["reference"] = _measure(_run_reference, (staged, shape))
        row["time_ratio_reference_over_ours"] = row["reference"]["seconds"] / row["ours"]["seconds"]
        row["rss_ratio_ours_over_reference"] = row["ours"]["peak_rss_mb"] / row["reference"]["peak_rss_mb"]
        # working memory: ours above its imports, the reference above the interpreter + scipy (~60 MB)
        row["rss_growth_ratio_ours_over_reference"] = row["ours"]["rss_growth_mb"] / (
            row["reference"]["peak_rss_mb"] - 60.0
        )
    import shutil

    if not keep_staged:
        shutil.rmtree(staged, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    return row


#: ``--versus`` choices: the configuration timed against the default ``overlap`` (both without the
#: split of labels into 4-connected parts when comparing seam rules, so the ratio is the rule's alone)
_VERSUS = {
    "iou": ({"split_parts": False}, {"strategy": "iou", "split_parts": False}),
    "best_match": ({"split_parts": False}, {"strategy": "best_match"}),
    "none": ({}, {"strategy": "none"}),
    "nosplit": ({}, {"split_parts": False}),
    "recut": ({"seam_recut": False}, {}),  # the overlap rule alone against the default, which recuts
}


def versus(side_y: int, side_x: int, *, other: str, repeats: int, workdir: str) -> dict:
    """The default ``overlap`` against ``_VERSUS[other]`` on one staged mosaic, ``repeats`` alternating pairs.

    Both run ``merge_stored`` in fresh processes on the same staged Zarr, so
    the ratio (other's seconds / overlap's, median over the pairs) compares
    the two configurations alone, in one run.
    """
    import shutil
    import statistics

    from remote_samsing.tiling import TilingPlan

    shape = (side_y, side_x)
    plan = TilingPlan(shape=shape, tile_size=TILE, padding=PADDING)
    staged = os.path.join(workdir, "staged.zarr")
    write_staged(staged, plan)
    out = os.path.join(workdir, "labels.zarr")
    configs = dict(zip(("overlap", other), _VERSUS[other]))
    runs = {"overlap": [], other: []}
    for i in range(repeats):
        for name in (("overlap", other) if i % 2 == 0 else (other, "overlap")):
            shutil.rmtree(out, ignore_errors=True)
            shutil.rmtree(out + ".spill", ignore_errors=True)
            r = _measure(_run_ours, (staged, out, shape, False), {"config": configs[name]})
            r["score"] = _score_ours(out, shape)
            runs[name].append(r)
            print(f"{name:>10}: {r['seconds']:.2f} s, peak RSS {r['peak_rss_mb']:.0f} MB, {r['score']}", flush=True)
    sec = {k: [r["seconds"] for r in v] for k, v in runs.items()}
    rss = {k: [r["peak_rss_mb"] for r in v] for k, v in runs.items()}
    pairs = [o / n for o, n in zip(sec[other], sec["overlap"])]
    return {"megapixels": side_y * side_x / 1e6, "blocks": plan.n_blocks, "repeats": repeats,
            "configs": configs, "runs": runs,
            "time_ratio_other_over_overlap_median": statistics.median(pairs), "time_ratio_per_pair": pairs,
            "rss_ratio_other_over_overlap": statistics.median(rss[other]) / statistics.median(rss["overlap"])}


def graph_build(sides=(10, 20, 50)) -> list[dict]:
    """Seconds to *build* (not compute) the merge graph for n×n blocks: must grow linearly."""
    import dask.array as da

    from remote_samsing.merge import MergeConfig, merge_labels
    from remote_samsing.tiling import TilingPlan

    rows = []
    for n in sides:
        plan = TilingPlan(shape=(n * 1000, n * 1000), tile_size=1000, padding=50)
        staged = da.zeros(plan.staging_shape, chunks=plan.slot_shape, dtype=np.uint32)
        t0 = time.perf_counter()
        res = merge_labels(staged, plan=plan, config=MergeConfig())
        dt = time.perf_counter() - t0
        rows.append({"blocks": plan.n_blocks, "build_s": dt, "tasks": len(res.labels.__dask_graph__())})
        print(f"merge graph for {plan.n_blocks} blocks built in {dt:.2f} s ({rows[-1]['tasks']} tasks)")
    return rows


#: mosaic shapes by megapixels; the reference runs up to 400 Mpx (at 2 Gpx it needs ~32 GB)
_SHAPES = {4: (2000, 2000), 16: (4000, 4000), 100: (10000, 10000), 400: (20000, 20000), 2000: (40000, 50000)}


def run(quick: bool = True, *, gigapixel: bool = False, megapixels=None, graph: bool = False) -> dict:
    """Benchmark rows; ``quick`` uses 4 and 16 Mpx, else 100 and 400 Mpx (+2 Gpx with ``gigapixel``);
    ``megapixels`` picks sizes from ``_SHAPES`` instead; ``graph`` also times the lazy graph."""
    if megapixels:
        sizes = [(*_SHAPES[m], m <= 400) for m in megapixels]
    else:
        sizes = [(2000, 2000, True), (4000, 4000, True)] if quick else [(10000, 10000, True), (20000, 20000, True)]
    if gigapixel and not quick and not megapixels:
        sizes.append((40000, 50000, False))
    with tempfile.TemporaryDirectory(prefix="bench_merge_") as workdir:
        rows = [bench_size(y, x, reference=ref, workdir=workdir, graph=graph) for y, x, ref in sizes]
    build = graph_build((10, 20) if quick else (10, 20, 50))
    return {"benchmark": "merge", "quick": quick, "tile_size": TILE, "padding": PADDING, "rows": rows,
            "graph_build": build}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (< 1 min)")
    ap.add_argument("--gigapixel", action="store_true", help="also merge a 2-gigapixel mosaic (ours only)")
    ap.add_argument("--megapixels", help=f"comma-separated sizes out of {sorted(_SHAPES)}, e.g. 100,2000")
    ap.add_argument("--graph", action="store_true",
                    help="also time the lazy merge graph (merge_labels, what segment() builds)")
    ap.add_argument("--versus", choices=sorted(_VERSUS),
                    help="time the default overlap against another configuration of ours instead (iou: the "
                         "first-generation rule; nosplit: overlap without the split into 4-connected parts), "
                         "alternating, on one staged mosaic (the first --megapixels size, default 100)")
    ap.add_argument("--repeats", type=int, default=3, help="--versus: pairs of runs (default 3)")
    ap.add_argument("--json", help="write the result here too")
    args = ap.parse_args(argv)
    mpx = [int(m) for m in args.megapixels.split(",")] if args.megapixels else None
    if mpx and any(m not in _SHAPES for m in mpx):
        ap.error(f"--megapixels: choose among {sorted(_SHAPES)}")
    if args.versus:
        with tempfile.TemporaryDirectory(prefix="bench_merge_") as workdir:
            result = versus(*_SHAPES[(mpx or [100])[0]], other=args.versus, repeats=args.repeats, workdir=workdir)
    else:
        result = run(args.quick, gigapixel=args.gigapixel, megapixels=mpx, graph=args.graph)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text)


if __name__ == "__main__":
    main()
