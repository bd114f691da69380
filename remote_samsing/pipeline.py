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
      staging/merge/       the merge's spill folder, removed behind the outputs
                           (in a local temporary folder instead when OUTDIR is
                           on a store and the cluster runs on this machine)
      staging/attributes/  per-label segmenter attributes of each block
      merge_faces.json     per-face merge statistics and seam visibility
      labels.zarr          final labels (y, x) with CRS
      labels.tif           Cloud-Optimized GeoTIFF, nodata 0
      segments.parquet     polygons (when vectors are on)
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import datetime as _dt
import functools
import hashlib
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
import uuid
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr

from ._files import is_remote, list_names, location, remove_tree, store_variables, write_bytes, write_json_atomic
from ._outdir import (absolute, check_local_writable, check_room, check_shared, disk_full_error, estimate_bytes,
                      find_disk_full, format_size, free_bytes, spill_bytes)
from ._progress import counted, in_notebook
from ._validate import check_nodata
from .cluster import ClusterConfig, gpu_slots, make_client, malloc_trim, on_this_machine, trim_memory_plugin
from .config import RunConfig
from .exceptions import (
    BackendUnavailableError,
    BlockFailedError,
    ConfigError,
    FingerprintMismatchError,
    OutputAccessError,
    OutputExistsError,
    RemoteSamsingError,
    RemoteSamsingWarning,
    WindowReadError,
)
from .execute import (
    compute,
    errors_as_values,
    on_a_worker,
    on_every_worker,
    run_in_phases,
    run_in_waves,
    scheduler_workers,
    threads_of,
)
from .io import (
    open_resolved,
    as_band_yx,
    check_bands,
    error_chain,
    is_url,
    open_labels,
    open_run_labels,
    open_mosaic,
    passes_through,
    prepare_rgb,
    read_valid_mask,
    release_kept_chunks,
    rgb_band_indices,
    stretch_limits,
    window_reader,
)
from .merge import (
    MergeConfig,
    face_schedule,
    merge_labels,
    merge_stored,
    prepare_workdir,
    stage_faces,
    stage_summary,
)
from .staging import (
    collect_block_stats,
    create_store,
    map_padded_blocks,
    read_segment_and_stage,
    resolve_segmenter,
    segment_and_stage,
    segment_attributes,
    stage_blocks,
    unstage,
)
from .segmenters import segment_resources
from .sources import DEFAULT_RESAMPLING, RASTER_SUFFIXES, TILE_INDEX, resolve_mosaic, write_tile_index
from .tiling import TilingPlan, validate_tiling
from .vectorize import NoCRSWarning

__all__ = ["segment", "run", "inspect_mosaic", "build_graph", "SegmentGraph", "library_versions"]

_RESULT_AFFECTING = (
    "segmenter", "segmenter_params", "tile_size", "padding", "bands", "nodata", "percentiles",
    "merge", "merge_params", "recursive", "asset", "crs", "resolution", "resampling",
)

#: What of the input may change between runs into one OUTDIR: a rerun redoes the blocks it touches.
_RERUN_KEYS = ("sources", "nodata")

#: How many files make one mosaic: the keywords of :func:`~remote_samsing.sources.resolve_mosaic` a run passes on.
_MOSAIC_OPTIONS = ("recursive", "asset", "crs", "resolution", "resampling")


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


def _is_named(image) -> bool:
    """``image`` names files (a path, a URL, or a list of them), rather than holding pixels."""
    if isinstance(image, (str, os.PathLike)):
        return True
    return isinstance(image, (list, tuple)) and bool(image) and all(isinstance(i, (str, os.PathLike)) for i in image)


def _open_input(image, *, bands, nodata, tile_size, mosaic_options=None):
    """The mosaic as a (band, y, x) DataArray, and the :class:`~remote_samsing.sources.Mosaic` it was read
    from (None for pixels in memory)."""
    if _is_named(image):
        mosaic = resolve_mosaic(image, nodata=nodata, **(mosaic_options or {}))
        return open_resolved(mosaic, bands=bands, nodata=nodata, chunks=tile_size), mosaic
    arr = as_band_yx(image)
    if bands is not None:
        b = check_bands(bands, arr.sizes["band"], "the array")
        arr = arr.isel(band=[i - 1 for i in b])
        arr.attrs["source_bands"] = list(range(1, len(b) + 1))
        arr.attrs.setdefault("alpha_band", None)
    if nodata is not None:
        import rioxarray  # noqa: F401

        check_nodata(nodata, np.dtype(arr.dtype), "the array")
        arr = arr.rio.write_nodata(nodata, encoded=False)
    arr.attrs.setdefault("alpha_band", None)
    arr.attrs.setdefault("source_bands", list(range(1, arr.sizes["band"] + 1)))
    return arr, None


def _merge_config(merge: str, merge_params: dict | None, *, stored: bool = False):
    return MergeConfig.from_params(strategy=merge, params=merge_params, stored=stored)


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
    segmenter: Any = "sam2",
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
    **mosaic_options,
) -> SegmentGraph:
    """Build (but do not compute) the full segmentation graph.

    All validation happens here, before anything runs. ``staged`` replaces the
    segmentation stage with already staged labels (a dask array, or the path
    of a staging Zarr array such as a run's ``staging/labels.zarr``). ``mosaic_options`` (``recursive``,
    ``asset``, ``crs``, ``resolution``, ``resampling``) say how many files make one mosaic.
    """
    validate_tiling(tile_size, padding)
    arr, _ = _open_input(image, bands=bands, nodata=nodata, tile_size=tile_size, mosaic_options=mosaic_options)
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
        diagnostics=result.diagnostics,
    )


def segment(
    image,
    *,
    segmenter: Any = "sam2",
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
    recursive: bool = False,
    asset: str | None = None,
    crs: str | None = None,
    resolution=None,
    resampling: str = DEFAULT_RESAMPLING,
) -> xr.DataArray:
    """Segment a mosaic block by block; labels 0 = unsegmented.

    Parameters
    ----------
    image : path, list of paths, DataArray (band, y, x), or numpy/dask array (y, x) or (y, x, band)
        The mosaic: one raster or many (files, folders, globs, ``@FILE``
        lists, VRT/GTI, STAC; see :func:`remote_samsing.io.open_mosaic`).
    segmenter : str or object
        A registry name (``"sam2"``, the default, or the classical baselines
        ``"felzenszwalb"`` and ``"slic"``) or any object with
        ``segment(block, *, block_info)``. SAM2 finds its checkpoint as
        :func:`remote_samsing.segmenters.sam2.find_checkpoint` says.
    tile_size, padding : int
        Core tile size T and context P (``map_overlap`` depth).
    merge : str
        Seam merge strategy (see :class:`remote_samsing.merge.MergeConfig`).
    store : path or URL, optional
        Output directory, local or on an object store (``s3://...``). When given, the job runs now (resumably, on
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
    recursive, asset, crs, resolution, resampling
        How many files make one mosaic (:class:`~remote_samsing.config.RunConfig`).

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
    common = dict(segmenter_params=segmenter_params, tile_size=tile_size, padding=padding, merge=merge,
                  merge_params=merge_params, bands=bands, nodata=nodata, retries=retries, recursive=recursive,
                  asset=asset, crs=crs, resolution=resolution, resampling=resampling)
    if store is None:
        return build_graph(image, segmenter=segmenter, percentiles=percentiles, **common).labels
    if not isinstance(segmenter, str):
        raise ConfigError("with `store=`, `segmenter` must be a registry name so the run can be resumed")
    common.update(segmenter_params=dict(segmenter_params or {}), merge_params=dict(merge_params or {}))
    cfg = RunConfig(segmenter=segmenter, percentiles=tuple(percentiles), overwrite=overwrite, vectors=False,
                    progress=False, **common)
    run(image, store, config=cfg, client=client)
    return open_labels(location(store) / "labels.zarr")


def inspect_mosaic(
    image,
    *,
    tile_size: int = 1000,
    padding: int = 50,
    bands=None,
    nodata=None,
    recursive: bool = False,
    asset: str | None = None,
    crs: str | None = None,
    resolution=None,
    resampling: str = DEFAULT_RESAMPLING,
    vectors: bool = True,
) -> dict:
    """What a run on ``image`` would see, without reading a pixel or starting a cluster.

    Returns
    -------
    dict
        ``sources`` (count), ``crs`` and ``resolutions`` of the sources (and
        ``resolutions_by_crs``, (CRS, resolution) pairs, where the CRSs differ),
        the target ``grid`` (CRS, resolution, bounds, size in pixels, bands,
        dtype, nodata, resampling), ``blocks`` at ``tile_size``/``padding``
        (with ``reading_nothing``: those whose padded window touches no
        source, so reads only nodata),
        and ``output_bytes``: what a run writes, by product, with ``total``
        and ``least``, as the run's own disk-space check estimates it
        (:func:`remote_samsing._outdir.estimate_bytes`; ``vectors`` as the
        run's).
    """
    validate_tiling(tile_size, padding)
    mosaic = resolve_mosaic(image, nodata=nodata, recursive=recursive, asset=asset, crs=crs,
                            resolution=resolution, resampling=resampling)
    arr = open_resolved(mosaic, bands=bands, nodata=nodata, chunks=tile_size)
    rgb_band_indices(arr)
    plan = TilingPlan(shape=tuple(arr.shape[1:]), tile_size=tile_size, padding=padding)
    t = arr.rio.transform()
    return {
        "sources": len(mosaic.sources) or 1,
        "crs": mosaic.crss or [str(arr.rio.crs)],
        # a Zarr mosaic is its own one source, on the grid
        "resolutions": sorted({res for _, res in mosaic.resolutions_by_crs}) or [(abs(t.a), abs(t.e))],
        "resolutions_by_crs": mosaic.resolutions_by_crs,
        "grid": {"crs": arr.rio.crs.to_string() if arr.rio.crs else None, "resolution": (abs(t.a), abs(t.e)),
                 "bounds": tuple(arr.rio.bounds()) if arr.rio.crs else None, "size": tuple(plan.shape),
                 "bands": int(arr.sizes["band"]), "dtype": str(arr.dtype), "nodata": arr.rio.nodata,
                 "resampling": resampling},
        "blocks": {"count": plan.n_blocks, "grid": tuple(plan.grid_shape), "tile_size": tile_size,
                   "padding": padding, "reading_nothing": plan.n_blocks - _blocks_reading(plan, mosaic)},
        "output_bytes": estimate_bytes(plan, vectors=vectors),
    }


def _blocks_reading(plan: TilingPlan, mosaic) -> int:
    """How many blocks' padded windows touch a source's footprint (all of them for one raster)."""
    if not mosaic.windows:
        return plan.n_blocks
    return len({b for w in mosaic.windows for b in plan.blocks_touching(tuple(w))})


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
        # whole file as an e-mail message, ~5x slower
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


def _input_identity(image, arr: xr.DataArray, mosaic) -> dict:
    """Which mosaic a run segments: the inputs as named with the grid's structure (bands, size, dtype,
    CRS, transform), plus every source read with its stamp and footprint; an array by its dask token.

    The run's fingerprint covers all but the sources (:func:`_fingerprint_payload`): sources edited,
    added or removed on the same grid make a rerun redo the blocks they touch
    (:func:`_changed_blocks`), while other inputs or another grid are another job.
    """
    if mosaic is None:
        return {"array_token": dask.base.tokenize(image)}
    crs = arr.rio.crs
    path = mosaic.inputs[0] if len(mosaic.inputs) == 1 else list(mosaic.inputs)
    return {"path": path, "bands": int(arr.sizes["band"]),
            "size": [int(arr.sizes["y"]), int(arr.sizes["x"])], "dtype": str(arr.dtype),
            "crs": crs.to_string() if crs is not None else None,
            "transform": [round(v, 12) for v in tuple(arr.rio.transform())[:6]],
            "nodata": arr.rio.nodata,
            "sources": [{**s.identity(), "window": list(w)} for s, w in zip(mosaic.sources, mosaic.windows)]}


def _fingerprint_payload(cfg: RunConfig, identity: dict, plan: TilingPlan, ckpt_hash: str | None) -> dict:
    """What a run's result depends on: the result-affecting parameters, the input and the checkpoint.

    The checkpoint counts by its content (SHA-256), not by the path it was
    found at: the same file given by ``--checkpoint``, the environment or
    the models directory is the same job.
    """
    params = cfg.to_dict()
    config = {k: params[k] for k in _RESULT_AFFECTING}
    config["segmenter_params"] = {k: v for k, v in config["segmenter_params"].items() if k != "checkpoint"}
    grid = {k: v for k, v in identity.items() if k not in _RERUN_KEYS}
    return {"config": config, "input": grid, "shape": list(plan.shape), "checkpoint_sha256": ckpt_hash}


def _fingerprint(payload: dict) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _differences(prev: dict, payload: dict) -> list[str]:
    """``name: old -> new`` for each thing a previous run.json holds differently from ``payload``."""
    def norm(v):
        return json.loads(json.dumps(v, default=str))

    if not prev.get("parameters"):
        return []  # damaged, or from another version: nothing to compare
    old_params = {**prev["parameters"]}
    old_params["segmenter_params"] = {k: v for k, v in (old_params.get("segmenter_params") or {}).items()
                                      if k != "checkpoint"}
    pairs = [(k, old_params.get(k), v) for k, v in payload["config"].items()]
    old_input = {k: v for k, v in prev.get("input", {}).items() if k not in _RERUN_KEYS}
    new_input = norm(payload["input"])
    pairs += [(f"input {k}", old_input.get(k), new_input.get(k)) for k in sorted(set(old_input) | set(new_input))]
    pairs += [("shape", prev.get("shape"), payload["shape"]),
              ("checkpoint_sha256", prev.get("checkpoint_sha256"), payload["checkpoint_sha256"])]
    return [f"{name}: {old!r} -> {new!r}" for name, old, new in pairs if norm(old) != norm(new)]


#: What a run writes at OUTDIR's top level: a folder holding only these is a run's, even before its
#: run.json exists, and ``--overwrite`` may remove it.
#: Where the solve writes the per-face statistics: they take the final name once the seam visibility is
#: in them, so that an interrupted run leaves no merge_faces.json of a merge that did not finish.
_FACES_PARTIAL = "merge_faces.json.partial"
_RUN_ENTRIES = frozenset({"run.json", "staging", "labels.zarr", "labels.tif", "merge_faces.json", _FACES_PARTIAL,
                          "segments.parquet", TILE_INDEX})


def _foreign_entries(names: set) -> list[str]:
    """Of OUTDIR's top-level ``names``, those no run writes (its probes start with ``.remote-samsing``);
    none where it holds a run.json."""
    if "run.json" in names:
        return []
    return sorted(n for n in names - _RUN_ENTRIES if not n.startswith(".remote-samsing"))


def _check_overwritable(outdir: Path) -> None:
    """``--overwrite`` replaces a run, never a folder of other files (a mistyped OUTDIR, a folder of
    tiles given as the last argument): those are refused, and nothing is removed."""
    others = _foreign_entries(list_names(outdir))
    if others:
        shown = ", ".join(f"`{n}`" for n in others[:3]) + (", ..." if len(others) > 3 else "")
        raise OutputExistsError(f"output directory `{outdir}` holds files that no run wrote ({shown}); "
                                "--overwrite replaces only a remote-samsing run",
                                hint="choose a new directory, or empty this one yourself")


def _sources_said(prev: dict, identity: dict) -> list[str]:
    """The sources added, removed or edited since ``prev``, as a refusal names them: what grew the grid."""
    changes = _changed_sources(prev, identity)
    said = []
    for kind in ("added", "removed", "edited"):
        names = [c["location"] for c in changes if c["change"] == kind]
        if names:
            said.append(f"sources {kind}: " + ", ".join(f"`{n}`" for n in names[:3])
                        + (f" and {len(names) - 3} more" if len(names) > 3 else ""))
    return said


def _prepare_outdir(outdir: Path, payload: dict, overwrite: bool, *, identity: dict) -> dict | None:
    """Decide fresh / resume / nothing to do / refuse. Returns the previous run.json when there is one
    for this job (complete or not)."""
    if not outdir.exists():
        return None
    if overwrite:
        _check_overwritable(outdir)
        remove_tree(outdir)
        return None
    run_json = outdir / "run.json"
    if run_json.exists():
        try:
            prev = json.loads(run_json.read_text())
        except json.JSONDecodeError:
            prev = {}
        if prev.get("fingerprint") != _fingerprint(payload):
            diff = _differences(prev, payload) or ["run.json cannot be compared (damaged or from another version)"]
            diff += _sources_said(prev, identity)
            raise FingerprintMismatchError(
                f"`{outdir}` holds a run with a different configuration or input: " + "; ".join(diff),
                hint="use another output directory, or --overwrite to start fresh",
            )
        return prev
    names = list_names(outdir)
    if names:
        raise OutputExistsError(
            f"output directory `{outdir}` exists and is not a remote-samsing run",
            hint="choose a new directory" if _foreign_entries(names) else "pass --overwrite to start afresh",
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
    ccfg = ClusterConfig(
        scheduler=cfg.scheduler, device=cfg.device, gpus=tuple(cfg.gpus) if cfg.gpus else None,
        n_workers=cfg.n_workers,
    )
    # make_client logs the plan, notes, and the dashboard link when one really runs
    with make_client(ccfg, needs_gpu=needs_gpu, log=log) as c, c.as_current():
        yield c


@dataclass
class _Job:
    """One run's validated pieces, handed from step to step of :func:`run`."""

    cfg: RunConfig
    image: Any
    arr: xr.DataArray
    seg: Any
    mcfg: Any
    plan: TilingPlan
    outdir: Path
    log: Callable[[str], None]
    identity: dict
    ckpt_hash: str | None
    fingerprint: str
    prev: dict | None
    mosaic: Any = None
    changes: list = field(default_factory=list)
    redo: list = field(default_factory=list)
    run_id: str = ""
    record: dict = field(default_factory=dict)
    space: dict = field(default_factory=dict)  # the bytes it writes (_outdir.estimate_bytes); local OUTDIR only
    spill: Path | None = None  # the merge's spill folder, chosen once the cluster is known (_spill_folder)

    @property
    def staging(self) -> Path:
        return self.outdir / "staging"

    def write_record(self) -> None:
        write_json_atomic(self.outdir / "run.json", self.record)


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
    image : path, URL or array
        The mosaic (a path or URL for resumable runs).
    outdir : path or URL
        Output directory (layout in the module docstring), local or on an
        object store (``s3://``, ``gs://``, ``az://``): there products are
        written in place, and ``run.json``'s ``"complete": true`` says they
        are finished.
    config : RunConfig
        All parameters.
    client : distributed.Client, optional
        Use this cluster instead of starting one.
    log : callable, optional
        Receives one-line progress messages (the CLI passes ``click.echo``);
        default: none, except in a notebook, where they are printed (the
        embedded cluster's dashboard link among them).

    Returns
    -------
    dict
        The final ``run.json`` content.
    """
    cfg = config or RunConfig()
    t_start = time.perf_counter()
    # -- 1. validate everything cheap, before any cluster or model starts
    _check_outdir_is_folder(location(outdir))
    mcfg = _merge_config(cfg.merge, cfg.merge_params, stored=True)  # before any header read or model load
    outdir = _outdir_location(outdir)
    _check_outdir_writable(outdir)
    job = _open_job(image, outdir, cfg, log if log is not None else _default_log(), mcfg=mcfg)
    if _up_to_date(job):  # the same job, finished: nothing to do (Make/Snakemake-style reruns)
        # no line here: the caller says it once, from the record (the CLI: "up to date: ...")
        return {**job.prev, "blocks_segmented_this_run": 0, "up_to_date": True}
    with _disk_full_said(job):
        with _client_for(cfg, client, needs_gpu=bool(segment_resources(job.seg)), log=job.log) as c:
            if not is_remote(job.outdir):  # before anything is written there
                check_shared(job.outdir, c)
            # the workers, asked once (a scheduler round trip): where they run decides where the merge
            # spills, their threads size the waves of every stage, and the merge's phases spread over them
            workers = scheduler_workers(c)
            with _spill_folder(job, c, workers):
                steps = _run_steps(job, c, workers)
        # -- 6. finish the record; "complete" is the last thing written
        steps["timings"]["total_s"] = time.perf_counter() - t_start
        _warn_if_nothing_found(job, steps["blocks"], steps["n_labels"])
        return _finish_record(job, **steps)


def _warn_if_nothing_found(job: _Job, blocks, n_labels: int) -> None:
    """Warn of a run whose labels are all 0 where it read pixels: labels.tif all 0 looks like a finished run.
    Either the segmenter found nothing (most often wrong weights or thresholds), or the merge removed all
    it found (every segment smaller than ``min_mask_area``)."""
    read = [s for s in blocks if s and not s.get("skipped") and not s.get("failed")]
    if n_labels or not read:
        return
    found = sum(int(s.get("n_labels", 0)) for s in read)
    if found:
        said = (f"the merge removed every segment the segmenter found ({found} in {counted(len(read), 'blocks')}): "
                f"all were smaller than min_mask_area ({job.mcfg.min_mask_area} px; lower it, or pass --merge-param "
                "remove_small=false)")
    else:
        said = (f"the segmenter found no segment in any of the {counted(len(read), 'blocks')} it read: every label "
                f"is 0 (segmenter {job.cfg.segmenter}; check its checkpoint and parameters, e.g. SAM2's "
                "pred_iou_thresh and stability_score_thresh)")
    warnings.warn(said, RemoteSamsingWarning, stacklevel=3)


def _run_steps(job: _Job, c, workers: dict) -> dict:
    """Steps 2 to 5 on client ``c`` and its ``workers``; returns what :func:`_finish_record` takes."""
    # -- 2. the run record, "complete": false until the very end; blocks of changed sources unstaged
    _forget_changed_blocks(job)
    _start_record(job, workers)
    _put_tile_index(job)
    # block tasks read their windows from the file itself when there is one
    reader = window_reader(job.arr, run=job.run_id) if job.mosaic is not None else None
    # -- 3. segment and stage every block not staged yet
    res = _check_resources(c, segment_resources(job.seg), device=job.cfg.device)
    _register_trim(c)
    blocks, t_segment = _segment_step(job, c, reader, res=res, threads=threads_of(workers))
    # -- 4. merge from the staged blocks only, phase by phase
    written, merge_stats, max_label, t_merge = _merge_step(job, c, workers)
    # -- 5. COG and vectors, from the written labels (no recomputation), while the merge's spill
    # folder goes
    with _removed_behind(job.spill, job.log):
        vectors_path, t_outputs = _outputs_step(job, c, written, max_label)
    timings = {"segment_s": t_segment, "merge_and_zarr_s": t_merge, "outputs_s": t_outputs}
    return dict(blocks=blocks, merge_stats=merge_stats, n_labels=max_label, vectors_path=vectors_path,
                timings=timings)


@contextlib.contextmanager
def _spill_folder(job: _Job, client, workers: dict):
    """Set ``job.spill``, the merge's spill folder, for the run on ``client`` and its ``workers``.

    It is ``staging/merge`` in OUTDIR, which every worker sees, unless OUTDIR is on a store, every
    worker runs on this machine and its temporary folder (Dask's ``temporary-directory``) has room
    for the spill (``_outdir.spill_bytes``): then the spill goes there, since its thousands of small
    files are scratch, rebuilt from the staged blocks if the run is cut short, and on a store each
    costs a request to write, one to read and one to delete. The local folder is named after OUTDIR,
    so a run killed before removing it leaves it to the next run into the same OUTDIR, which starts
    by removing it; any other end of the run removes it.
    """
    scratch = Path(dask.config.get("temporary-directory") or tempfile.gettempdir()).absolute()
    if not is_remote(job.outdir) or not on_this_machine(client, workers) or not _room_for_spill(job, scratch):
        job.spill = job.staging / "merge"
        yield
        return
    name = hashlib.sha256(str(job.outdir).encode()).hexdigest()[:16]
    job.spill = scratch / f"remote-samsing-merge-{name}"
    remove_tree(job.spill)  # a killed run's
    remove_tree(job.staging / "merge")  # what an earlier run spilled on the store: never read again
    try:
        yield
    finally:
        # tasks cancelled by a failure may still be writing there: what they leave is not an error
        shutil.rmtree(job.spill, ignore_errors=True)


def _room_for_spill(job: _Job, scratch: Path) -> bool:
    """Whether ``scratch`` has room for the merge's spill; if not, the run says so once."""
    need, free = spill_bytes(job.plan), free_bytes(scratch)
    if free >= need:
        return True
    job.log(f"the merge spills on the store: the temporary folder `{scratch}` has {format_size(free)} free, "
            f"less than the {format_size(need)} its files may take (Dask's `temporary-directory` sets another)")
    return False


@contextlib.contextmanager
def _removed_behind(folder, log: Callable[[str], None]):
    """Remove ``folder`` on a thread of its own while the ``with`` block runs, and wait for it at the
    end: on a store, deleting the thousands of objects of a merge's spill folder takes seconds of
    requests that need not hold the next step back. The folder holds scratch only: a removal that
    fails is said, and the run finishes."""
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="remote-samsing-remove") as pool:
        removed = pool.submit(remove_tree, folder)
        yield
        try:
            removed.result()
        except Exception as exc:  # noqa: BLE001 - a store's errors come in many types; the products are whole
            log(f"warning: the merge's scratch folder `{folder}` was not removed ({error_chain(exc)}); "
                "nothing reads it again: delete it")


def _outdir_location(outdir):
    """OUTDIR as the workers are told it: a local path made absolute, since a relative one would name a
    folder in each worker's own working folder."""
    loc = location(outdir)
    return loc if is_remote(loc) else absolute(loc)


@contextlib.contextmanager
def _disk_full_said(job: _Job):
    """A full disk met in the run, by a task or by this process, raised as one
    :class:`DiskFullError` naming the device and its free space. Staged blocks
    stay, so the same command resumes once there is room."""
    try:
        yield
    except RemoteSamsingError:
        raise
    except Exception as exc:
        full = find_disk_full(exc)
        if full is None:
            raise
        error = disk_full_error(full, job.outdir, need=job.space.get("total"))
    else:
        return
    _record_error(job, error)
    raise error  # outside the handler: nothing of the OSError is chained to it


def _record_error(job: _Job, error: Exception) -> None:
    """Say in run.json why the run stopped, if there is room left for that."""
    if not job.record:
        return
    job.record["error"] = {"type": type(error).__name__, "message": Exception.__str__(error)}
    with contextlib.suppress(OSError):
        job.write_record()


def _open_job(image, outdir: Path, cfg: RunConfig, log, *, mcfg) -> _Job:
    """Step 1: open and check the input and every parameter; decide fresh / resume / refuse."""
    options = {k: getattr(cfg, k) for k in _MOSAIC_OPTIONS}
    arr, mosaic = _open_input(image, bands=cfg.bands, nodata=cfg.nodata, tile_size=cfg.tile_size,
                              mosaic_options={**options, "exclude": None if is_remote(outdir) else outdir})
    _check_inputs_outside(mosaic, outdir)
    rgb_band_indices(arr)
    if arr.rio.crs is None:  # said once here; the vectors step does not repeat it
        name = mosaic.inputs[0] if mosaic is not None and len(mosaic.inputs) == 1 else image
        warnings.warn(f"input `{name}` has no CRS: labels.tif and the polygons are in pixel coordinates "
                      "(x = column, y = row) with no CRS", NoCRSWarning, stacklevel=3)
    seg = resolve_segmenter(cfg.segmenter, _segmenter_params(cfg))
    plan = TilingPlan(shape=tuple(arr.shape[1:]), tile_size=cfg.tile_size, padding=cfg.padding)
    # the file the segmenter found (parameter, environment or models directory), not only a given one
    ckpt = getattr(seg, "checkpoint", None)
    ckpt_hash = _file_sha256(Path(ckpt)) if ckpt and Path(ckpt).is_file() else None
    identity = _input_identity(image, arr, mosaic)
    payload = _fingerprint_payload(cfg, identity, plan, ckpt_hash)
    fingerprint = _fingerprint(payload)
    space = {}
    if not is_remote(outdir):  # before --overwrite removes anything: what OUTDIR holds counts as room
        space = estimate_bytes(plan, vectors=cfg.vectors)
        check_room(outdir, space)
    prev = _prepare_outdir(outdir, payload, cfg.overwrite, identity=identity)
    changes = _changed_sources(prev, identity)
    return _Job(cfg=cfg, image=image, arr=arr, seg=seg, mcfg=mcfg, plan=plan, outdir=outdir, log=log,
                identity=identity, ckpt_hash=ckpt_hash, fingerprint=fingerprint, prev=prev, mosaic=mosaic,
                changes=changes, redo=_changed_blocks(plan, changes, prev), space=space)


def _changed_sources(prev: dict | None, identity: dict) -> list[dict]:
    """The sources edited, added or removed since the run ``prev`` recorded: location, what changed, and
    their footprints then and now."""
    if not prev or "sources" not in prev.get("input", {}) or "sources" not in identity:
        return []  # no earlier run, or one that recorded no sources: nothing to compare
    old = {e["location"]: json.loads(json.dumps(e, default=str)) for e in prev["input"]["sources"]}
    new = {e["location"]: json.loads(json.dumps(e, default=str)) for e in identity["sources"]}
    out = []
    for loc in list(old) + [n for n in new if n not in old]:
        if loc not in new:
            out.append({"location": loc, "change": "removed", "windows": [old[loc]["window"]]})
        elif loc not in old:
            out.append({"location": loc, "change": "added", "windows": [new[loc]["window"]]})
        elif old[loc] != new[loc]:
            out.append({"location": loc, "change": "edited", "windows": [old[loc]["window"], new[loc]["window"]]})
    if prev["input"].get("nodata", identity.get("nodata")) != identity.get("nodata"):
        # a gap opened or closed where no source declares nodata: every block may read it differently
        out.append({"location": "(the mosaic's nodata)", "change": f"{prev['input'].get('nodata')} -> "
                    f"{identity.get('nodata')}", "windows": [[0, identity["size"][0], 0, identity["size"][1]]]})
    return out


def _changed_blocks(plan: TilingPlan, changes: list[dict], prev: dict | None) -> list[tuple[int, int]]:
    """The blocks whose padded windows touch a changed source's footprint (then or now).

    A source the previous run named in a read error (a damaged file, now repaired in place) is taken
    as repaired, not edited: only its failed blocks are segmented again, as a resumed run does, since
    the blocks read before the failure read its intact part.
    """
    failed = _read_errors(prev)
    redo = set()
    for change in changes:
        if change["change"] == "edited" and any(change["location"] in text for text in failed):
            continue
        for window in change["windows"]:
            redo.update(plan.blocks_touching(tuple(window)))
    return sorted(redo)


def _read_errors(prev: dict | None) -> list[str]:
    """The messages of the previous run's failed blocks and of the error that stopped it."""
    if not prev:
        return []
    texts = [str(b.get("error", "")) for b in prev.get("failed_blocks") or []]
    return texts + [str((prev.get("error") or {}).get("message", ""))]


def _forget_changed_blocks(job: _Job) -> None:
    """Unstage the blocks of changed sources and drop the merge's spill folder, whose per-block
    summaries and faces may be of the blocks' old labels; the merge runs again from the staged blocks."""
    if not job.changes:
        return
    for index in job.redo:
        unstage(job.staging, index)
    remove_tree(job.spill)
    counts = Counter(c["change"] for c in job.changes)
    said = f"sources changed since the last run ({', '.join(f'{n} {k}' for k, n in counts.items())})"
    # a file repaired after a read error touches no block staged from it: its failed blocks are retried
    job.log(f"{said}: segmenting again the {counted(len(job.redo), 'blocks')} they touch" if job.redo
            else f"{said}: no staged block was read from them")


def _put_tile_index(job: _Job) -> None:
    """Write the tile index of a mosaic of many files into OUTDIR, where every worker reads it, and read
    the mosaic through it from now on."""
    if job.mosaic is None or job.mosaic.direct is not None:
        return
    target = job.outdir / TILE_INDEX
    if is_remote(target):
        with tempfile.TemporaryDirectory() as tmp:
            local = write_tile_index(job.mosaic, Path(tmp) / TILE_INDEX)
            write_bytes(target, local.read_bytes())
    else:
        write_tile_index(job.mosaic, target)
    job.arr = open_resolved(job.mosaic, bands=job.cfg.bands, nodata=job.cfg.nodata, chunks=job.cfg.tile_size,
                            index=str(target))


def _check_outdir_is_folder(outdir) -> None:
    """An OUTDIR that is an existing file (the last of several inputs, taken as OUTDIR) is refused, and
    never written to or removed."""
    try:
        is_file = outdir.is_file()  # on a store: an object at OUTDIR's own key (one request)
        exists = is_file or outdir.exists()
    except Exception:  # noqa: BLE001 - a store this installation cannot reach: _check_writable says why
        is_file = exists = False
    usage = "the last argument is the output folder: `remote-samsing segment INPUT [INPUT ...] OUTDIR`"
    if is_file:
        raise OutputExistsError(f"OUTDIR `{outdir}` is an existing file, not a folder", hint=usage)
    # a raster's name as OUTDIR: the output folder forgotten (the last input taken for it, perhaps mistyped)
    if str(outdir).lower().rstrip("/").endswith(RASTER_SUFFIXES) and not exists:
        raise ConfigError(f"OUTDIR `{outdir}` is named as a raster, not as a folder",
                          hint=f"{usage}; to write into a folder of that name, create it first")


def _check_inputs_outside(mosaic, outdir) -> None:
    """No input lies in OUTDIR: ``--overwrite`` empties it, and a rerun would read the run's own products."""
    if mosaic is None or is_remote(outdir):
        return
    inside = os.path.join(os.path.abspath(outdir), "")
    named = [n.lstrip("@") for n in mosaic.inputs] + [s.location for s in mosaic.sources]
    for path in named:
        if "://" not in path and os.path.join(os.path.abspath(path), "").startswith(inside):
            raise ConfigError(f"input `{path}` lies in OUTDIR `{outdir}`",
                              hint="write the run's outputs to a folder that holds none of its inputs")


def _check_outdir_writable(outdir) -> None:
    """OUTDIR can be written, said before any input is read or model loaded (a probe made and removed)."""
    if is_remote(outdir):
        _check_writable(outdir)
    else:
        check_local_writable(outdir)


def _check_writable(outdir) -> None:
    """Write and remove one empty object in OUTDIR on a store: a missing bucket, a missing permission,
    missing credentials or an unreachable endpoint is said here, before any cluster starts. A bucket's
    root is refused: ``--overwrite`` removes everything under OUTDIR."""
    if "/" not in outdir.path.strip("/"):
        root = str(outdir).rstrip("/")
        raise ConfigError(f"OUTDIR `{root}` is a bucket's root", hint=f"give a prefix in it, e.g. {root}/run")
    probe = outdir / ".remote-samsing-write-check"
    try:
        outdir.fs.invalidate_cache(outdir.path)  # listings an earlier run in this process cached are stale
        write_bytes(probe, b"")
        probe.unlink()
    except Exception as exc:  # noqa: BLE001 - fsspec's stores raise many types for the same cause
        cause = error_chain(exc)
    else:
        return
    raise OutputAccessError(
        f"cannot write to `{outdir}`: {cause}",
        hint=f"check that the bucket exists and that these credentials may write there: "
             f"{store_variables(str(outdir))}")


def _default_log():
    """Where ``run``'s one-line messages go without a ``log``: printed in a notebook (the embedded
    cluster's dashboard link among them), nowhere otherwise."""
    return print if in_notebook() else (lambda msg: None)


def _up_to_date(job: _Job) -> bool:
    """OUTDIR holds this job complete, from the same sources, with no failed block to retry and every
    product asked for."""
    prev = job.prev
    return prev is not None and bool(prev.get("complete")) and not prev.get("failed_blocks") \
        and not job.changes and _products_present(job)


def _products_present(job: _Job) -> bool:
    """The products this configuration asks for exist (a complete run without vectors is not up to
    date for a rerun that asks for them)."""
    names = ["labels.zarr", "labels.tif"] + (["segments.parquet"] if job.cfg.vectors else [])
    return all((job.outdir / n).exists() for n in names)


def _start_record(job: _Job, workers: dict) -> None:
    """Step 2: the staging store, the merge's spill folder, and run.json with ``"complete": false``.

    Besides the parameters as given, run.json holds the merge's settings with every default filled in
    and the cluster the run had, which the results depend on as much."""
    job.outdir.mkdir(parents=True, exist_ok=True)
    create_store(job.staging, job.plan)
    # the merge's spill folder: block summaries are written there as blocks are staged
    prepare_workdir(job.spill, plan=job.plan, config=job.mcfg)
    job.run_id = uuid.uuid4().hex
    crs = job.arr.rio.crs
    job.record = {
        "complete": False,
        "fingerprint": job.fingerprint,
        "run_id": job.run_id,
        "resumed": job.prev is not None,
        "sources_changed": [{k: c[k] for k in ("location", "change")} for c in job.changes],
        "blocks_redone": [list(b) for b in job.redo],
        "started": _dt.datetime.now(_dt.timezone.utc).isoformat(),
        "input": job.identity,
        "shape": list(job.plan.shape),
        "crs": str(crs) if crs is not None else None,
        "parameters": job.cfg.to_dict(),
        "segmenter_config": _segmenter_description(job.seg),
        "merge_config": dataclasses.asdict(job.mcfg),
        "cluster": {"workers": len(workers), "threads": threads_of(workers),
                    "gpus": sum(gpu_slots(w) for w in workers.values())},
        "checkpoint": str(job.seg.checkpoint) if getattr(job.seg, "checkpoint", None) else None,
        "checkpoint_source": getattr(job.seg, "checkpoint_source", None),
        "checkpoint_sha256": job.ckpt_hash,
        "tiling": {
            "chunks": [list(c) for c in job.plan.chunks],
            "n_blocks": job.plan.n_blocks,
            "slot_shape": list(job.plan.slot_shape),
        },
        "versions": library_versions(),
        "platform": {"machine": platform.machine(), "system": platform.system(), "python": sys.version},
        "command": sys.argv,
    }
    job.write_record()


def _segment_step(job: _Job, client, reader, *, res, threads) -> tuple[list, float]:
    """Step 3: stage every block not staged yet; returns every block's statistics and the seconds."""
    plan = job.plan
    t0 = time.perf_counter()
    staged = _staged_count(job)
    job.log(_segmenting_line(job, staged))
    try:
        # nothing left to segment: the stage only passes the staged blocks on, and no progress is shown
        known = _stage_all(job, client, reader, res=res, threads=threads, progress=staged < plan.n_blocks)
    except BlockFailedError as exc:
        job.record["error"] = {"type": type(exc).__name__, "message": Exception.__str__(exc),
                               "block": list(exc.block) if getattr(exc, "block", None) else None,
                               "window": list(exc.window) if getattr(exc, "window", None) else None}
        job.record["blocks"] = collect_block_stats(job.staging, plan)
        job.write_record()
        raise
    seconds = time.perf_counter() - t0
    malloc_trim()  # hand back the heap of the stage just done (its task graph is released)
    blocks = collect_block_stats(job.staging, plan, known=known)
    missing = [b for b, s in zip(plan.block_ids(), blocks) if s is None]
    if missing:
        raise BlockFailedError(f"{len(missing)} block(s) were not staged, e.g. {missing[:3]}")
    return blocks, seconds


def _staged_count(job: _Job) -> int:
    """The blocks an earlier run staged already (a block failed under ``skip_failed_blocks`` is not)."""
    if job.prev is None:  # a fresh OUTDIR has no marker to read
        return 0
    return sum(1 for s in collect_block_stats(job.staging, job.plan) if s is not None and not s.get("failed"))


def _segmenting_line(job: _Job, staged: int) -> str:
    """What the segment step has to do, said before it starts: on a resumed run, how many blocks an
    earlier run staged already."""
    plan, cfg = job.plan, job.cfg
    what = f"of {cfg.tile_size} px (padding {cfg.padding})"
    if not staged:
        return f"segmenting {counted(plan.n_blocks, 'blocks')} {what}"
    todo = plan.n_blocks - staged
    return (f"{staged}/{counted(plan.n_blocks, 'blocks')} staged; "
            + (f"segmenting {todo} {what}" if todo else "nothing left to segment"))


def _stage_all(job: _Job, client, reader, *, res, threads=None, progress: bool = True) -> list | None:
    """Segment and stage every block not staged yet; returns each block's statistics where its task
    staged it (None where an earlier run did), or None for ``map_overlap``'s tasks.

    A mosaic file is read by the block tasks themselves, each its own padded
    window (:class:`~remote_samsing.io.WindowReader`): tasks of one or more
    blocks and no neighbour strips passed between workers, where ``map_overlap`` builds
    the same windows as ~12 tasks per block, and on two cores the
    scheduler's ~1.7 ms per task (bench_scheduler) is most of a light run. Mosaics that exist
    only in memory go through ``map_overlap``.
    """
    plan, cfg = job.plan, job.cfg
    # each block's merge summary is written by the task that staged it, from the labels in memory
    summarize = functools.partial(stage_summary, plan=plan, config=job.mcfg, workdir=job.spill,
                                  token=job.run_id)
    kwargs = dict(plan=plan, segmenter=job.seg, retries=cfg.retries, staging=str(job.staging), run_id=job.run_id,
                  summarize=summarize, skip_failed=cfg.skip_failed_blocks)
    if reader is None:
        rgba = prepare_rgb(job.arr, chunks=plan.chunks, percentiles=cfg.percentiles)
        done = map_padded_blocks(segment_and_stage, rgba, chunks=(1, 1), dtype=np.int64, resources=res,
                                 token="remote-samsing-segment-stage", **kwargs)
        compute(done, client, progress=cfg.progress and progress, optimize_graph=False, label="segment-stage")
        return None
    # through a partial: `client.map` keeps keywords such as `retries` for itself;
    # in bounded waves, so the scheduler never holds a task per block
    limits = _stretch_limits(job, client)
    progress = _forget_if_stretch_changed(job, limits) or progress
    task = functools.partial(read_segment_and_stage, reader=reader, limits=limits, **kwargs)
    task = errors_as_values(task, (BlockFailedError,))  # reported once, by the client
    try:
        # adaptive: a SAM2 block keeps a task of its own; blocks of milliseconds (a light baseline, a
        # no-op) share tasks, whose scheduler cost would otherwise exceed their work
        return run_in_waves(client, task, list(plan.block_ids()), name="segment-stage", resources=res,
                            batch="adaptive", progress=cfg.progress and progress, then=_face_follow_ups(job),
                            threads=threads)
    finally:
        if reader.keeps_chunks:  # the chunks each worker kept for the blocks' reads
            on_every_worker(client, release_kept_chunks)


def _stretch_limits(job: _Job, client) -> np.ndarray:
    """The mosaic's stretch, decided once before any block runs."""
    lazy_limits = stretch_limits(job.arr, percentiles=job.cfg.percentiles)
    if passes_through(job.arr):  # no stretch, no pixel read: not worth a round trip to the cluster
        return np.asarray(lazy_limits.compute(scheduler="sync"))
    try:
        return np.asarray(compute(lazy_limits, client, progress=False))
    except Exception as exc:  # noqa: BLE001 - the sampled windows' read errors come in many types
        cause = error_chain(exc)
    # raised outside the handler, so nothing of the library's error is chained to it
    raise WindowReadError(
        f"cannot read `{job.image}` to sample its stretch percentiles: {cause}",
        hint="the file may be truncated or damaged: check it (e.g. `gdalinfo -checksum`), repair or fetch it again "
             "and rerun the same command; for 8-bit RGB input no stretch (and no sampling) is needed")


def _forget_if_stretch_changed(job: _Job, limits: np.ndarray) -> bool:
    """Record the stretch; when sources changed it (a non-8-bit mosaic's percentiles), every block is
    segmented again, since each block's RGB depends on it: returns whether so."""
    before = (job.prev or {}).get("stretch_limits")
    job.record["stretch_limits"] = np.asarray(limits).tolist()
    if before is not None and not passes_through(job.arr) and not np.array_equal(np.asarray(before), limits):
        job.log("the sources changed the mosaic's stretch, which every block's RGB depends on: segmenting "
                "every block again")
        job.redo = list(job.plan.block_ids())
        for index in job.redo:
            unstage(job.staging, index)
        remove_tree(job.spill)
        prepare_workdir(job.spill, plan=job.plan, config=job.mcfg)
        job.record["blocks_redone"] = [list(b) for b in job.redo]
        job.write_record()
        return True
    job.write_record()
    return False


def _face_follow_ups(job: _Job):
    """``run_in_waves(then=...)`` computing each seam face as soon as its blocks are staged.

    The merge's faces phase then runs behind the segmentation, on workers otherwise idle there.
    """
    ready = face_schedule(job.plan, job.mcfg)
    if ready is None:
        return None
    workdir = str(job.spill)
    return functools.partial(stage_faces, plan=job.plan, config=job.mcfg, workdir=workdir, token=job.run_id), ready


def _merge_step(job: _Job, client, workers) -> tuple[xr.DataArray, dict, int, float]:
    """Step 4: merge the staged blocks into labels.zarr.

    Phase by phase (``merge.merge_stored``), the phases chained on the
    scheduler (``execute.run_in_phases``): every per-block result goes to
    disk between phases, so the scheduler's and the client's memory does
    not grow with the mosaic. Returns the written labels, the merge statistics
    for run.json, the largest label and the seconds.
    """
    from .outputs import plan_label_store

    plan, outdir = job.plan, job.outdir
    t0 = time.perf_counter()
    job.log("merging seams and writing labels.zarr")
    # an earlier merge's faces go first: a merge stopped from here on leaves none that looks like this one's
    (outdir / "merge_faces.json").unlink(missing_ok=True)
    template = _wrap_labels(da.zeros(plan.shape, dtype=np.uint32, chunks=plan.chunks), job.arr)
    # the store is created by a task beside the merge's global steps; each final block also gives its
    # seams' line counts, measured while it is in memory; they come back with the relabel's results
    # (no file a block)
    sink, create_store_task = plan_label_store(template, outdir / "labels.zarr", token=job.run_id,
                                               also=functools.partial(_seam_parts, plan.padding))
    # the merge's per-block phases are light: several blocks per task; small
    # enough, its phases follow each other on the scheduler (run_in_phases)
    in_phases = functools.partial(run_in_phases, client, progress=job.cfg.progress, batch="auto", workers=workers,
                                  label="merge")
    # per-face statistics grow with the mosaic: the solve task writes them
    # to their own file; only their totals come back and go to run.json
    merge_stats = merge_stored(job.staging / "labels.zarr", plan=plan, config=job.mcfg,
                               workdir=job.spill, sink=sink, map_phases=in_phases,
                               faces_path=outdir / _FACES_PARTIAL, prepare_sink=create_store_task,
                               token=job.run_id, keep_workdir=True)  # removed behind the outputs
    sink.commit()
    written = open_run_labels(outdir / "labels.zarr")  # complete, though run.json is not yet
    max_label = int(merge_stats["totals"]["labels_after"])  # labels are 1..N
    seams = merge_stats.pop("sunk")
    merge_stats = {k: v for k, v in merge_stats.items() if k != "faces"}
    merge_stats["faces_file"] = "merge_faces.json"
    merge_stats["seam_visibility"] = _record_seam_visibility(outdir, plan, seams)
    seconds = time.perf_counter() - t0
    malloc_trim()  # hand back the heap of the stage just done (its task graph is released)
    return written, merge_stats, max_label, seconds


def _seam_parts(padding: int, labels: np.ndarray, window) -> dict:
    """Sink hook: one final block reduced to its seams' line counts, for :func:`_record_seam_visibility`."""
    from .metrics import seam_block_parts

    return seam_block_parts(labels, padding=padding)


def _record_seam_visibility(outdir: Path, plan: TilingPlan, parts: dict) -> float | None:
    """Seam visibility of the run's labels (None where no seam has a labelled pair), from the line
    counts of each block (:func:`_seam_parts`, by block index); each edge face of ``merge_faces.json``
    gets its value (``seam_visibility``) and the offset of its worst line (``seam_offset``), see
    :func:`remote_samsing.metrics.seam_visibility`."""
    from ._files import read_bytes
    from .metrics import seam_visibility_from_parts

    vis = seam_visibility_from_parts(plan, parts)
    partial = outdir / _FACES_PARTIAL
    if partial.exists():
        per_face = {(tuple(r["blocks"][0]), tuple(r["blocks"][1]), r["kind"]): r for r in vis.to_records()}
        faces = json.loads(read_bytes(partial))
        for face in faces:
            record = per_face.get((tuple(face["blocks"][0]), tuple(face["blocks"][1]), face["kind"]))
            if record is not None:  # the corner faces have no seam line
                face.update(seam_visibility=record["seam_visibility"], seam_offset=record["seam_offset"])
        write_json_atomic(outdir / "merge_faces.json", faces, indent=None)
        partial.unlink()
    return None if np.isnan(vis.mean) else vis.mean


def _outputs_step(job: _Job, client, written: xr.DataArray, max_label: int) -> tuple[Path | None, float]:
    """Step 5: labels.tif from labels.zarr's chunks, then the vectors if asked for.

    On a store a worker assembles labels.tif (it reads labels.zarr a few chunks at a time), so the
    driver, often a small pod, needs no temporary space for it.
    """
    from .outputs import to_cog

    t0 = time.perf_counter()
    job.log("writing labels.tif (COG)")
    cog = functools.partial(to_cog, written, str(job.outdir / "labels.tif"), max_label=max_label,
                            store=str(job.outdir / "labels.zarr"))
    if is_remote(job.outdir):
        on_a_worker(client, cog)
    else:
        cog()
    vectors_path = None
    if job.cfg.vectors:
        job.log("vectorizing")
        valid = _valid_mask(job)
        attributes = segment_attributes(job.staging, job.plan, written)
        vectors_path = _write_vectors(job.outdir, written, valid=valid, progress=job.cfg.progress,
                                      attributes=attributes)
    return vectors_path, time.perf_counter() - t0


def _valid_mask(job: _Job) -> da.Array:
    """The mosaic's validity, read window by window from the file when there is one."""
    reader = window_reader(job.arr) if job.mosaic is not None else None
    if reader is not None:
        return read_valid_mask(reader, chunks=job.plan.chunks)
    return prepare_rgb(job.arr, chunks=job.plan.chunks, percentiles=job.cfg.percentiles)[..., 3] > 0


def _failed_blocks(blocks) -> list[dict]:
    """The blocks ``skip_failed_blocks`` left unsegmented: block, window and error of each."""
    return [{"block": s["block"], "window": s["window"], "error": s["error"]} for s in blocks if s and s.get("failed")]


def _finish_record(job: _Job, *, blocks, merge_stats, n_labels, vectors_path, timings) -> dict:
    """Step 6: the final run.json, written once more with ``"complete": true``."""
    core_px = sum(
        (s["core"][1] - s["core"][0]) * (s["core"][3] - s["core"][2]) for s in blocks if s is not None
    )
    record = job.record
    record.update(
        blocks=blocks,
        blocks_segmented_this_run=sum(1 for s in blocks if s and s.get("run_id") == job.run_id),
        blocks_skipped_nodata=sum(1 for s in blocks if s and s.get("skipped")),
        failed_blocks=_failed_blocks(blocks),
        partial=bool(_failed_blocks(blocks)),
        merge_stats=merge_stats,
        n_segments=n_labels,
        pixels=core_px,
        timings=timings,
        outputs={
            "labels_zarr": "labels.zarr",
            "labels_tif": "labels.tif",
            "vectors": vectors_path.name if vectors_path else None,
        },
        finished=_dt.datetime.now(_dt.timezone.utc).isoformat(),
    )
    job.write_record()
    record["complete"] = True
    job.write_record()
    return record


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
    workers = scheduler_workers(client)
    offered = [w.get("resources", {}) for w in workers.values()]
    if any(all(r.get(k, 0) >= v for k, v in res.items()) for r in offered):
        return res
    if device == "cpu":
        return None
    raise BackendUnavailableError(
        f"the segmenter needs worker resources {res}, but no worker of the cluster offers them",
        hint="start GPU workers with `--resources GPU=1` (dask-cuda does this), or pass --device cpu",
    )


def _register_trim(client) -> None:
    """Keep worker RSS from ratcheting up over a long run (:func:`~remote_samsing.cluster.trim_memory_plugin`)."""
    try:
        client.register_plugin(trim_memory_plugin())
    except Exception as exc:  # noqa: BLE001 - a cluster refusing plugins still runs the job
        logging.getLogger(__name__).warning("could not register the memory-trim worker plugin: %s", exc)


def _segmenter_description(seg) -> dict:
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


def _write_vectors(outdir: Path, labels: xr.DataArray, *, valid=None, progress: bool = False,
                   attributes=None) -> Path | None:
    from .vectorize import to_polygons

    out = outdir / "segments.parquet"
    with warnings.catch_warnings():  # the run said it once, when it opened the input
        warnings.simplefilter("ignore", NoCRSWarning)
        to_polygons(labels, out=out, valid=valid, progress=progress, attributes=attributes)  # written atomically
    return out
