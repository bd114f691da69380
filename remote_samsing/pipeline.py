"""The whole job: input → tiling → segmenter → staging → merge → outputs.

Two entry points:

* :func:`segment` builds the lazy graph and returns a lazy labels
  DataArray (nothing is computed until you ask), or, with ``store=``, runs the
  job into an output directory and returns the written labels;
* :func:`run` is the resumable, directory-based job behind
  ``remote-samsing segment INPUT OUTDIR``.

Output directory layout (``run``)::

    OUTDIR/
      run.json             parameters, versions, checkpoint hash, per-block
                           stats, merge stats; "complete": true written last
      staging/labels.zarr  local labels of every padded block, one chunk per
                           block (the resume state)
      staging/blocks/      one JSON of statistics per finished block, written
                           after its chunk (its existence marks the block done)
      labels.zarr          final labels (y, x) with CRS
      labels.tif           Cloud-Optimized GeoTIFF, nodata 0
      segments.parquet     polygons (when vectors are on)
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import hashlib
import json
import os
import platform
import shutil
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr

from .config import RunConfig
from .exceptions import (
    BlockFailedError,
    ConfigError,
    FingerprintMismatchError,
    OutputExistsError,
)
from .cluster import segment_resources
from .graph import STAGED_DTYPE, map_padded_blocks, process_block, resolve_segmenter, stage_blocks
from .io import _as_band_yx, open_mosaic, prepare_rgb, rgb_band_indices, window_reader
from .tiling import TilingPlan

__all__ = ["segment", "run", "build_graph", "SegmentGraph", "library_versions"]

_RESULT_AFFECTING = (
    "segmenter", "segmenter_params", "tile_size", "padding", "bands", "nodata", "percentiles",
    "merge", "merge_params",
)


# ---------------------------------------------------------------------------
# lazy graph
# ---------------------------------------------------------------------------
@dataclass
class SegmentGraph:
    """The lazy pieces of one segmentation: plan, inputs, staged and final labels."""

    plan: TilingPlan
    image: xr.DataArray
    rgba: da.Array
    staged: da.Array
    labels: xr.DataArray
    merge_stats: Any
    diagnostics: Any = None


def _open_input(image, *, bands, nodata, tile_size) -> xr.DataArray:
    if isinstance(image, (str, os.PathLike)):
        return open_mosaic(image, bands=bands, nodata=nodata, chunks=tile_size)
    arr = _as_band_yx(image)
    if bands is not None:
        from .io import _check_bands

        b = _check_bands(bands, arr.sizes["band"], "the array")
        arr = arr.isel(band=[i - 1 for i in b])
        arr.attrs["source_bands"] = list(range(1, len(b) + 1))
        arr.attrs.setdefault("alpha_band", None)
    if nodata is not None:
        import rioxarray  # noqa: F401

        arr = arr.rio.write_nodata(nodata, encoded=False)
    arr.attrs.setdefault("alpha_band", None)
    arr.attrs.setdefault("source_bands", list(range(1, arr.sizes["band"] + 1)))
    return arr


def _merge_config(merge: str, merge_params: dict | None):
    from .merge import MergeConfig

    try:
        return MergeConfig(strategy=merge, **dict(merge_params or {}))
    except TypeError as exc:
        raise ConfigError(f"bad merge parameters {merge_params!r}: {exc}") from None


def _wrap_labels(data: da.Array, like: xr.DataArray) -> xr.DataArray:
    import rioxarray  # noqa: F401

    coords = {}
    for dim in ("y", "x"):
        if dim in like.coords:
            coords[dim] = like.coords[dim].values
    out = xr.DataArray(data, dims=("y", "x"), coords=coords, name="labels")
    crs = like.rio.crs
    if crs is not None:
        out = out.rio.write_crs(crs)
    try:
        if "y" in like.coords and "x" in like.coords:
            out = out.rio.write_transform(like.rio.transform())
    except Exception:  # noqa: BLE001 - un-georeferenced arrays have no transform
        pass
    out = out.rio.write_nodata(0, encoded=False)
    return out


def build_graph(
    image,
    *,
    segmenter: Any = "felzenszwalb",
    segmenter_params: dict | None = None,
    tile_size: int = 1000,
    padding: int = 50,
    merge: str = "overlap",
    merge_params: dict | None = None,
    bands=None,
    nodata=None,
    percentiles=(2.0, 98.0),
    retries: int = 2,
    staged: da.Array | str | os.PathLike | None = None,
) -> SegmentGraph:
    """Build (but do not compute) the full segmentation graph.

    All validation happens here, before anything runs. ``staged`` replaces the
    segmentation stage with already staged labels (a dask array, or the path
    of a staging Zarr array such as a run's ``staging/labels.zarr``).
    """
    from .tiling import validate_tiling

    validate_tiling(tile_size, padding)
    arr = _open_input(image, bands=bands, nodata=nodata, tile_size=tile_size)
    rgb_band_indices(arr)  # two-band images fail here, before any work
    seg = resolve_segmenter(segmenter, segmenter_params)
    mcfg = _merge_config(merge, merge_params)
    plan = TilingPlan(shape=tuple(arr.shape[1:]), tile_size=tile_size, padding=padding)
    rgba = prepare_rgb(arr, chunks=plan.chunks, percentiles=tuple(percentiles))
    # staged labels read from a store can be read twice cheaply (bounded memory);
    # a lazy segmentation must not run twice
    reread = staged is not None
    if staged is None:
        staged = stage_blocks(
            rgba, plan=plan, segmenter=seg, retries=retries, resources=segment_resources(seg)
        )
    from .merge import merge_labels

    # No `valid=` here: staged labels are already 0 on invalid pixels
    # (process_block), and the merge never paints background, so passing the
    # mask would only read and stretch the whole input a second time.
    result = merge_labels(staged, plan=plan, config=mcfg, reread=reread)
    labels = _wrap_labels(result.labels, arr)
    return SegmentGraph(
        plan=plan,
        image=arr,
        rgba=rgba,
        staged=da.from_zarr(os.fspath(staged)) if isinstance(staged, (str, os.PathLike)) else staged,
        labels=labels,
        merge_stats=result.stats,
        diagnostics=getattr(result, "diagnostics", None),
    )


def segment(
    image,
    *,
    segmenter: Any = "felzenszwalb",
    tile_size: int = 1000,
    padding: int = 50,
    merge: str = "overlap",
    store: str | os.PathLike | None = None,
    client=None,
    bands=None,
    nodata=None,
    percentiles=(2.0, 98.0),
    segmenter_params: dict | None = None,
    merge_params: dict | None = None,
    retries: int = 2,
    overwrite: bool = False,
) -> xr.DataArray:
    """Segment a mosaic block by block; labels 0 = unsegmented.

    Parameters
    ----------
    image : path, DataArray (band, y, x), or numpy/dask array (y, x) or (y, x, band)
        The mosaic.
    segmenter : str or object
        A registry name (``"felzenszwalb"``, ``"slic"``, ``"sam2"``) or any
        object with ``segment(block, *, block_info)``.
    tile_size, padding : int
        Core tile size T and context P (``map_overlap`` depth).
    merge : str
        Seam merge strategy (see :class:`remote_samsing.merge.MergeConfig`).
    store : path, optional
        Output directory. When given, the job runs now (resumably, on
        ``client`` or an embedded cluster) and the written labels are
        returned. When None, the result is lazy.
    client : distributed.Client, optional
        Cluster to run on when ``store`` is given.
    bands : list of int, optional
        1-based bands for RGB, or one band for grey.
    nodata : float, optional
        Nodata value overriding the file's.
    percentiles : (float, float)
        Global stretch percentiles for non-uint8 input.
    segmenter_params, merge_params : dict, optional
        Extra keyword arguments for the segmenter and the merge.
    retries : int
        Extra attempts for a failing block.
    overwrite : bool
        With ``store``: replace an existing output directory.

    Returns
    -------
    xarray.DataArray
        (y, x) integer labels with the input's CRS and transform, nodata 0.

    Examples
    --------
    >>> import numpy as np
    >>> img = np.zeros((60, 60), np.uint8); img[10:30, 10:50] = 200
    >>> labels = segment(img, segmenter="felzenszwalb", tile_size=32, padding=8,
    ...                  segmenter_params={"scale": 10, "min_size": 5})
    >>> labels.dims, labels.shape
    (('y', 'x'), (60, 60))
    """
    if store is None:
        return build_graph(
            image,
            segmenter=segmenter,
            segmenter_params=segmenter_params,
            tile_size=tile_size,
            padding=padding,
            merge=merge,
            merge_params=merge_params,
            bands=bands,
            nodata=nodata,
            percentiles=percentiles,
            retries=retries,
        ).labels
    if not isinstance(segmenter, str):
        raise ConfigError("with `store=`, `segmenter` must be a registry name so the run can be resumed")
    cfg = RunConfig(
        segmenter=segmenter,
        segmenter_params=dict(segmenter_params or {}),
        tile_size=tile_size,
        padding=padding,
        merge=merge,
        merge_params=dict(merge_params or {}),
        bands=bands,
        nodata=nodata,
        percentiles=tuple(percentiles),
        retries=retries,
        overwrite=overwrite,
        vectors=False,
        progress=False,
    )
    run(image, store, config=cfg, client=client)
    from .io import open_labels

    return open_labels(Path(store) / "labels.zarr")


# ---------------------------------------------------------------------------
# resumable run into a directory
# ---------------------------------------------------------------------------
def library_versions() -> dict[str, str | None]:
    """Versions of the libraries that shape results (read without importing them)."""
    import re
    from importlib.metadata import PackageNotFoundError, distribution

    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in (
        "remote_samsing", "numpy", "dask", "distributed", "zarr", "xarray", "rioxarray", "rasterio",
        "numba", "scikit-image", "scipy", "shapely", "geopandas", "torch", "torchvision", "sam2",
        "dask-cuda",
    ):
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            out[name] = None
            continue
        # the header's Version field: importlib's own `version` parses the
        # whole file as an e-mail message, ~5x slower (one-off measurement)
        head = (dist.read_text("METADATA") or dist.read_text("PKG-INFO") or "").split("\n\n", 1)[0]
        found = re.search(r"^Version:[ \t]*(\S+)", head, re.M)
        out[name] = found.group(1) if found else dist.version
    return out


def _file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


def _input_identity(image) -> dict:
    if isinstance(image, (str, os.PathLike)):
        p = Path(os.fspath(image)).resolve()
        if p.is_dir():
            files = sorted(q for q in p.rglob("*") if q.is_file())
            size = sum(q.stat().st_size for q in files)
            mtime = max((q.stat().st_mtime_ns for q in files), default=0)
        else:
            size, mtime = p.stat().st_size, p.stat().st_mtime_ns
        return {"path": str(p), "bytes": size, "mtime_ns": mtime}
    token = dask.base.tokenize(image)
    return {"array_token": token}


def _fingerprint(cfg: RunConfig, identity: dict, plan: TilingPlan, ckpt_hash: str | None) -> str:
    payload = {
        "config": {k: cfg.to_dict()[k] for k in _RESULT_AFFECTING},
        "input": identity,
        "shape": list(plan.shape),
        "checkpoint_sha256": ckpt_hash,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _segment_and_stage(rgba, *, plan, block_info=None, **kwargs):
    """``map_overlap`` task: segment one block unless already staged (see :func:`_stage_block`)."""
    iy, ix = block_info[None]["chunk-location"][:2]
    n = _stage_block((iy, ix), lambda: rgba, plan=plan, **kwargs)
    return np.full((1, 1), n, np.int64)


def _read_segment_and_stage(index, *, reader, limits, plan, **kwargs) -> int:
    """Task: read one padded window from the mosaic file, segment and stage it (one task per block)."""
    window = plan.padded_window(index).as_tuple()
    return _stage_block(index, lambda: reader.read_rgba(window, limits), plan=plan, **kwargs)


def _stage_block(index, load, *, plan, segmenter, retries, staging, run_id, merge_config=None) -> int:
    """Segment block ``index`` unless already staged; write its chunk, its merge summary, then its stats.

    ``load()`` gives the padded (y, x, 4) window; it is not called for a
    block an earlier run staged. With ``merge_config``, the block's merge
    summary is written to ``staging/merge`` while its labels are in memory
    (:func:`remote_samsing.merge.stage_summary`), so the merge need not read
    the chunk back to start. Returns 1 if the block was segmented now.
    """
    import zarr

    from .outputs import write_json_atomic

    iy, ix = index
    marker = Path(staging) / "blocks" / f"{iy}_{ix}.json"
    if marker.exists():  # staged by an earlier (interrupted) run: never segment twice
        return 0
    labels, stats = process_block(load(), (iy, ix), plan=plan, segmenter=segmenter, retries=retries)
    sy, sx = plan.slot_shape
    slot = np.zeros((sy, sx), STAGED_DTYPE)
    slot[: labels.shape[0], : labels.shape[1]] = labels
    z = zarr.open_array(Path(staging) / "labels.zarr", mode="r+")
    # one Zarr chunk per slot: chunk-aligned writes from different workers never overlap
    z[iy * sy : (iy + 1) * sy, ix * sx : (ix + 1) * sx] = slot
    if merge_config is not None:
        from .merge import stage_summary

        stage_summary(slot, plan=plan, index=(iy, ix), config=merge_config, workdir=Path(staging) / "merge")
    attrs = getattr(segmenter, "last_attributes", None)
    if attrs and not stats.get("skipped"):
        # per-label attributes (SAM2: pass, predicted IoU, stability) for the vectors
        tmp = Path(staging) / "attributes" / f"{iy}_{ix}.partial.npz"
        tmp.parent.mkdir(exist_ok=True)
        np.savez(tmp, **{k: np.asarray(v) for k, v in attrs.items()})
        os.replace(tmp, tmp.with_name(f"{iy}_{ix}.npz"))
    stats["run_id"] = run_id
    write_json_atomic(marker, stats)
    return 1


def _prepare_outdir(outdir: Path, fingerprint: str, overwrite: bool) -> dict | None:
    """Decide fresh / resume / refuse. Returns the previous run.json when resuming."""
    if not outdir.exists():
        return None
    if overwrite:
        shutil.rmtree(outdir)
        return None
    run_json = outdir / "run.json"
    if run_json.exists():
        try:
            prev = json.loads(run_json.read_text())
        except json.JSONDecodeError:
            prev = {}
        if prev.get("fingerprint") != fingerprint:
            raise FingerprintMismatchError(
                f"`{outdir}` holds a run with a different configuration or input",
                hint="use another output directory, or --overwrite to start fresh",
            )
        if prev.get("complete"):
            raise OutputExistsError(
                f"`{outdir}` already holds a complete run of this job",
                hint="use --overwrite to recompute, or another output directory",
            )
        return prev
    if any(outdir.iterdir()):
        raise OutputExistsError(
            f"output directory `{outdir}` exists and is not a remote-samsing run",
            hint="choose a new directory or pass --overwrite",
        )
    return None


@contextlib.contextmanager
def _client_for(cfg: RunConfig, client, *, needs_gpu: bool, log):
    """The run's client, made the current one: every ``dask.compute`` of the
    run (vectors, attributes) goes to it even when the process holds others."""
    if client is not None:
        with client.as_current():
            yield client
        return
    from .cluster import ClusterConfig, make_client

    ccfg = ClusterConfig(
        scheduler=cfg.scheduler, device=cfg.device, gpus=tuple(cfg.gpus) if cfg.gpus else None,
        n_workers=cfg.n_workers,
    )
    # make_client logs the plan, notes, and the dashboard link when one really runs
    with make_client(ccfg, needs_gpu=needs_gpu, log=log) as c, c.as_current():
        yield c


def run(
    image,
    outdir: str | os.PathLike,
    *,
    config: RunConfig | None = None,
    client=None,
    log=None,
) -> dict:
    """Run a segmentation job into ``outdir``, resuming if it was interrupted.

    Parameters
    ----------
    image : path or array
        The mosaic (a path for resumable runs).
    outdir : path
        Output directory (layout in the module docstring).
    config : RunConfig
        All parameters.
    client : distributed.Client, optional
        Use this cluster instead of starting one.
    log : callable, optional
        Receives one-line progress messages (the CLI passes ``click.echo``).

    Returns
    -------
    dict
        The final ``run.json`` content.
    """
    cfg = config or RunConfig()
    log = log or (lambda msg: None)
    t_start = time.perf_counter()
    outdir = Path(os.fspath(outdir))

    # -- 1. validate everything cheap, before any cluster or model starts
    arr = _open_input(image, bands=cfg.bands, nodata=cfg.nodata, tile_size=cfg.tile_size)
    rgb_band_indices(arr)
    seg = resolve_segmenter(cfg.segmenter, _segmenter_params(cfg))
    mcfg = _merge_config(cfg.merge, cfg.merge_params)
    plan = TilingPlan(shape=tuple(arr.shape[1:]), tile_size=cfg.tile_size, padding=cfg.padding)
    ckpt = cfg.segmenter_params.get("checkpoint")
    ckpt_hash = _file_sha256(Path(ckpt)) if ckpt and Path(ckpt).is_file() else None
    identity = _input_identity(image)
    fingerprint = _fingerprint(cfg, identity, plan, ckpt_hash)
    prev = _prepare_outdir(outdir, fingerprint, cfg.overwrite)

    # -- 2. the run record, "complete": false until the very end
    outdir.mkdir(parents=True, exist_ok=True)
    staging = outdir / "staging"
    (staging / "blocks").mkdir(parents=True, exist_ok=True)
    import zarr

    if not (staging / "labels.zarr").exists():
        zarr.create_array(
            store=str(staging / "labels.zarr"),
            shape=plan.staging_shape,
            chunks=plan.slot_shape,
            dtype=STAGED_DTYPE,
            fill_value=0,
            zarr_format=3,
        )
    # the merge's spill folder: block summaries are written there as blocks are staged
    from .merge import prepare_workdir

    prepare_workdir(staging / "merge", plan=plan, config=mcfg)
    run_id = uuid.uuid4().hex
    record: dict[str, Any] = {
        "complete": False,
        "fingerprint": fingerprint,
        "run_id": run_id,
        "resumed": prev is not None,
        "started": _dt.datetime.now(_dt.timezone.utc).isoformat(),
        "input": identity,
        "shape": list(plan.shape),
        "crs": str(arr.rio.crs) if arr.rio.crs is not None else None,
        "parameters": cfg.to_dict(),
        "segmenter_config": _segmenter_description(seg),
        "checkpoint_sha256": ckpt_hash,
        "tiling": {
            "chunks": [list(c) for c in plan.chunks],
            "n_blocks": plan.n_blocks,
            "slot_shape": list(plan.slot_shape),
        },
        "versions": library_versions(),
        "platform": {"machine": platform.machine(), "system": platform.system(), "python": sys.version},
        "command": sys.argv,
    }
    from .cluster import _threads_of, run_in_phases, scheduler_workers
    from .merge import merge_stored
    from .outputs import plan_label_store, to_cog, write_json_atomic

    write_json_atomic(outdir / "run.json", record)

    # block tasks read their windows from the file itself when there is one
    reader = window_reader(arr) if isinstance(image, (str, os.PathLike)) else None
    needs_gpu = bool(segment_resources(seg))
    with _client_for(cfg, client, needs_gpu=needs_gpu, log=log) as c:
        # -- 3. segment and stage every block not staged yet
        res = _check_resources(c, segment_resources(seg), device=cfg.device)
        _register_trim(c)
        # the workers, asked once (a scheduler round trip): their threads size
        # the waves of every stage, and the merge's chained phases spread over them
        workers = scheduler_workers(c)
        threads = _threads_of(workers)
        t0 = time.perf_counter()
        log(f"segmenting {plan.n_blocks} block(s) of {cfg.tile_size} px (padding {cfg.padding})")
        try:
            _stage_all(arr, reader, c, plan=plan, seg=seg, cfg=cfg, mcfg=mcfg, res=res, staging=staging,
                       run_id=run_id, threads=threads)
        except BlockFailedError as exc:
            record["error"] = {"type": type(exc).__name__, "message": str(exc)}
            record["blocks"] = _collect_block_stats(staging, plan)
            write_json_atomic(outdir / "run.json", record)
            raise
        t_segment = time.perf_counter() - t0
        _trim_here()
        blocks = _collect_block_stats(staging, plan)
        missing = [b for b, s in zip(plan.block_ids(), blocks) if s is None]
        if missing:
            raise BlockFailedError(f"{len(missing)} block(s) were not staged, e.g. {missing[:3]}")

        # -- 4. merge from the staged blocks only, phase by phase in bounded
        # waves (merge.merge_stored): no task graph over all blocks, so the
        # scheduler's and the client's memory does not grow with the mosaic
        t0 = time.perf_counter()
        log("merging seams and writing labels.zarr")
        template = _wrap_labels(da.zeros(plan.shape, dtype=np.uint32, chunks=plan.chunks), arr)
        # the tasks writing labels.zarr also write the COG's pieces (no second pass)
        pieces = outdir / "labels.tif.pieces.partial"
        # the store is created by a task beside the merge's global steps
        sink, create_store = plan_label_store(template, outdir / "labels.zarr", cog_pieces=pieces, token=run_id)
        # the merge's per-block phases are light: several blocks per task; small
        # enough, its phases follow each other on the scheduler (run_in_phases)
        in_phases = functools.partial(run_in_phases, c, progress=cfg.progress, batch="auto", workers=workers)
        # per-face statistics grow with the mosaic: the solve task writes them
        # to their own file; only their totals come back and go to run.json
        merge_stats = merge_stored(staging / "labels.zarr", plan=plan, config=mcfg, workdir=staging / "merge",
                                   sink=sink, map_phases=in_phases, faces_path=outdir / "merge_faces.json",
                                   prepare_sink=create_store)
        sink.commit()
        from .io import open_labels

        written = open_labels(outdir / "labels.zarr")
        max_label = int(merge_stats["totals"]["labels_after"])  # labels are 1..N
        merge_stats = {k: v for k, v in merge_stats.items() if k != "faces"}
        merge_stats["faces_file"] = "merge_faces.json"
        t_merge = time.perf_counter() - t0
        _trim_here()

        # -- 5. COG and vectors, from the written labels (no recomputation)
        t0 = time.perf_counter()
        log("writing labels.tif (COG)")
        to_cog(written, outdir / "labels.tif", max_label=max_label, pieces=pieces)
        vectors_path = None
        if cfg.vectors:
            log("vectorizing")
            valid = prepare_rgb(arr, chunks=plan.chunks, percentiles=cfg.percentiles)[..., 3] > 0
            attributes = _segment_attributes(staging, plan, written)
            vectors_path = _write_vectors(outdir, written, valid=valid, progress=cfg.progress,
                                          attributes=attributes)
        t_outputs = time.perf_counter() - t0

    # -- 6. finish the record; "complete" is the last thing written
    n_labels = max_label
    core_px = sum(
        (s["core"][1] - s["core"][0]) * (s["core"][3] - s["core"][2]) for s in blocks if s is not None
    )
    record.update(
        blocks=blocks,
        blocks_segmented_this_run=sum(1 for s in blocks if s and s.get("run_id") == run_id),
        blocks_skipped_nodata=sum(1 for s in blocks if s and s.get("skipped")),
        merge_stats=merge_stats,
        n_segments=n_labels,
        pixels=core_px,
        timings={
            "segment_s": t_segment,
            "merge_and_zarr_s": t_merge,
            "outputs_s": t_outputs,
            "total_s": time.perf_counter() - t_start,
        },
        outputs={
            "labels_zarr": "labels.zarr",
            "labels_tif": "labels.tif",
            "vectors": vectors_path.name if vectors_path else None,
        },
        finished=_dt.datetime.now(_dt.timezone.utc).isoformat(),
    )
    write_json_atomic(outdir / "run.json", record)
    record["complete"] = True
    write_json_atomic(outdir / "run.json", record)
    return record


def _stage_all(arr, reader, client, *, plan, seg, cfg, mcfg, res, staging, run_id, threads=None) -> None:
    """Segment and stage every block not staged yet.

    A mosaic file is read by the block tasks themselves, each its own padded
    window (:class:`~remote_samsing.io.WindowReader`): one task per block and
    no neighbour strips passed between workers. ``map_overlap`` builds the
    same windows as ~12 tasks per block, and on two cores the scheduler's
    ~1.5 ms per task was most of a no-op run (issue 4's benchmark). Mosaics
    that exist only in memory go through ``map_overlap``.
    """
    kwargs = dict(plan=plan, segmenter=seg, retries=cfg.retries, staging=str(staging), run_id=run_id,
                  merge_config=mcfg)
    if reader is None:
        rgba = prepare_rgb(arr, chunks=plan.chunks, percentiles=cfg.percentiles)
        done = map_padded_blocks(_segment_and_stage, rgba, chunks=(1, 1), dtype=np.int64, resources=res,
                                 token="remote-samsing-segment-stage", **kwargs)
        _compute(done, client, progress=cfg.progress, optimize_graph=False)
        return
    from .io import _passes_through, stretch_limits

    # the stretch is decided once per mosaic, before any block runs
    lazy_limits = stretch_limits(arr, percentiles=cfg.percentiles)
    if _passes_through(arr):  # no stretch, no pixel read: not worth a round trip to the cluster
        limits = np.asarray(lazy_limits.compute(scheduler="sync"))
    else:
        limits = np.asarray(_compute(lazy_limits, client, progress=False))
    from .cluster import run_in_waves
    from .merge import face_schedule, stage_faces

    # through a partial: `client.map` keeps keywords such as `retries` for itself;
    # in bounded waves, so the scheduler never holds a task per block
    task = functools.partial(_read_segment_and_stage, reader=reader, limits=limits, **kwargs)
    # each seam face starts as soon as its blocks are staged: the merge's faces
    # phase then runs behind the segmentation, on workers otherwise idle there
    then = None
    ready = face_schedule(plan, mcfg) if mcfg is not None else None
    if ready is not None:
        then = (functools.partial(stage_faces, plan=plan, config=mcfg, workdir=str(Path(staging) / "merge")), ready)
    run_in_waves(client, task, list(plan.block_ids()), name="segment-stage", resources=res, progress=cfg.progress,
                 then=then, threads=threads, results=False)


def _segmenter_params(cfg: RunConfig) -> dict:
    """Segmenter parameters, with the run's --device passed on to SAM2."""
    params = dict(cfg.segmenter_params)
    if cfg.segmenter == "sam2" and cfg.device != "auto":
        params.setdefault("device", cfg.device)
    return params


def _check_resources(client, res: dict | None, *, device: str) -> dict | None:
    """Keep the segment tasks' resource request only if some worker can meet it.

    A task asking for ``GPU=1`` on a cluster where no worker advertises that
    resource would wait forever. With ``device="cpu"`` the request is dropped
    on purpose; otherwise this is an error that says how to fix it.
    """
    if not res or client is None:
        return res
    from .cluster import scheduler_workers

    workers = scheduler_workers(client)
    offered = [w.get("resources", {}) for w in workers.values()]
    if any(all(r.get(k, 0) >= v for k, v in res.items()) for r in offered):
        return res
    if device == "cpu":
        return None
    from .exceptions import BackendUnavailableError

    raise BackendUnavailableError(
        f"the segmenter needs worker resources {res}, but no worker of the cluster offers them",
        hint="start GPU workers with `--resources GPU=1` (dask-cuda does this), or pass --device cpu",
    )


def _trim_here() -> None:
    """Hand this process's freed heap back between stages (the client, and the
    scheduler of an embedded cluster, released a stage's task graph)."""
    from .cluster import _malloc_trim

    _malloc_trim()


def _register_trim(client) -> None:
    """Keep worker RSS from ratcheting up over a long run (cluster.trim_memory_plugin)."""
    from .cluster import trim_memory_plugin

    try:
        client.register_plugin(trim_memory_plugin())
    except Exception as exc:  # noqa: BLE001 - a cluster refusing plugins still runs the job
        import logging

        logging.getLogger(__name__).warning("could not register the memory-trim worker plugin: %s", exc)


def _segmenter_description(seg) -> dict:
    import dataclasses

    d: dict[str, Any] = {"class": f"{type(seg).__module__}.{type(seg).__qualname__}"}
    if dataclasses.is_dataclass(seg):
        try:
            d["params"] = {k: (v if isinstance(v, (int, float, str, bool, type(None), list, dict)) else str(v))
                           for k, v in dataclasses.asdict(seg).items()}
        except TypeError:
            pass
    elif hasattr(seg, "describe"):
        d["params"] = seg.describe()
    return d


def _collect_block_stats(staging: Path, plan: TilingPlan) -> list:
    out = []
    for iy, ix in plan.block_ids():
        p = staging / "blocks" / f"{iy}_{ix}.json"
        out.append(json.loads(p.read_text()) if p.exists() else None)
    return out


def _compute(x, client, *, progress: bool, optimize_graph: bool = True):
    if client is None:
        return x.compute()
    fut = client.compute(x, optimize_graph=optimize_graph)
    if progress:
        from distributed import progress as _progress

        _progress(fut, notebook=False)
        print(file=sys.stderr)
    return fut.result()


def _block_attributes(slot, final, attrs_path, core):
    """(final label, pixels, attribute values...) of the largest local fragment per final label."""
    if not Path(attrs_path).exists():
        return None
    attrs = dict(np.load(attrs_path))
    local = np.asarray(slot)[core.slices].ravel()
    final = np.asarray(final).ravel()
    keep = (local > 0) & (final > 0)
    if not keep.any():
        return None
    pairs, counts = np.unique(np.stack([final[keep], local[keep]]), axis=1, return_counts=True)
    order = np.lexsort((-counts, pairs[0]))  # per final label, the biggest fragment first
    pairs, counts = pairs[:, order], counts[order]
    first = np.r_[True, pairs[0, 1:] != pairs[0, :-1]]
    fin, loc, cnt = pairs[0, first], pairs[1, first], counts[first]
    out = {"label": fin.astype(np.int64), "_px": cnt}
    for k, v in attrs.items():
        v = np.asarray(v)
        out[k] = v[np.clip(loc, 0, len(v) - 1)] if len(v) else np.full(len(loc), np.nan)
    return out


def _segment_attributes(staging: Path, plan: TilingPlan, labels: xr.DataArray):
    """Per-object segmenter attributes (from the block holding most of the object), or None."""
    import pandas as pd

    adir = staging / "attributes"
    if not adir.exists() or not any(adir.glob("*.npz")):
        return None
    staged = da.from_zarr(str(staging / "labels.zarr")).to_delayed(optimize_graph=False)
    final = labels.data.rechunk(plan.chunks).to_delayed(optimize_graph=False)
    parts = [
        dask.delayed(_block_attributes)(staged[iy, ix], final[iy, ix], str(adir / f"{iy}_{ix}.npz"),
                                        plan.core_in_padded((iy, ix)))
        for iy, ix in plan.block_ids()
    ]
    rows = [pd.DataFrame(p) for p in dask.compute(*parts) if p is not None]
    if not rows:
        return None
    df = pd.concat(rows).sort_values(["label", "_px"], ascending=[True, False])
    df = df.drop_duplicates("label").drop(columns="_px")
    return df.rename(columns={"predicted_iou": "pred_iou", "stability_score": "stability"}).reset_index(drop=True)


def _write_vectors(outdir: Path, labels: xr.DataArray, *, valid=None, progress: bool = False,
                   attributes=None) -> Path | None:
    from .vectorize import to_polygons

    out = outdir / "segments.parquet"
    tmp = outdir / "segments.partial.parquet"
    to_polygons(labels, out=tmp, valid=valid, progress=progress, attributes=attributes)
    os.replace(tmp, out)
    return out
