"""Writers for the final products: ``labels.zarr``, ``labels.tif`` (COG), JSON.

Every product is written under a temporary name and moved into place when
complete, so a crash never leaves a file that looks finished.

The COG is made the way shared/design/stack.md §7 measured to work for large
rasters: a tiled GeoTIFF written window by window in parallel (each task
reopens the file under a lock), then ``rasterio.shutil.copy(driver="COG")``,
because rioxarray cannot write a COG window by window.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

__all__ = ["to_label_zarr", "to_cog", "write_json_atomic", "smallest_uint_dtype"]


def smallest_uint_dtype(max_label: int) -> np.dtype:
    """The smallest unsigned dtype holding ``max_label``.

    Examples
    --------
    >>> smallest_uint_dtype(255).name, smallest_uint_dtype(256).name, smallest_uint_dtype(70000).name
    ('uint8', 'uint16', 'uint32')
    """
    for dt in (np.uint8, np.uint16, np.uint32, np.uint64):
        if max_label <= np.iinfo(dt).max:
            return np.dtype(dt)
    raise ValueError(f"label {max_label} does not fit uint64")


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    """Write JSON to ``path`` through a temporary file and an atomic rename."""
    p = Path(os.fspath(path))
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=_json_default))
    os.replace(tmp, p)


def _json_default(obj):
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (Path,)):
        return str(obj)
    if isinstance(obj, tuple):
        return list(obj)
    return str(obj)


def _replace_dir(tmp: Path, out: Path) -> None:
    if out.exists():
        shutil.rmtree(out) if out.is_dir() else out.unlink()
    os.replace(tmp, out)


def to_label_zarr(
    labels: xr.DataArray,
    path: str | os.PathLike,
    *,
    also: Any = None,
    client: Any = None,
    progress: bool = False,
) -> Any:
    """Write a (y, x) label DataArray with its CRS to a Zarr v3 store.

    Written to ``<path>.partial`` first, then renamed.

    Parameters
    ----------
    labels : xarray.DataArray
    path : path
    also : dask collection, optional
        Computed in the same graph as the write (e.g. merge statistics that
        share the per-block work) and returned.
    client : distributed.Client, optional
        Compute on this client (without low-level fusion, which would drop
        worker-resource annotations).
    progress : bool
        Show a progress bar.

    Returns
    -------
    The computed ``also`` (or None).
    """
    out = Path(os.fspath(path))
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    arr = labels.copy()
    if arr.chunks is not None:
        # Zarr needs regular chunks; the plan may have absorbed a thin remainder
        # into the last block, so split only that block off again.
        arr = arr.chunk({"y": arr.chunks[0][0], "x": arr.chunks[1][0]})
    arr.encoding = {}
    arr.attrs = {k: v for k, v in arr.attrs.items() if k not in ("_FillValue", "scale_factor", "add_offset")}
    # Metadata and coordinates from a cheap all-zero template; the labels
    # themselves are written by our own per-chunk tasks. Handing the real
    # graph to ``to_zarr(compute=False)`` would wrap it in ``dask.delayed``,
    # which renames every key (ProhibitReuse): computed next to ``also``, the
    # whole merge would then run twice.
    import dask
    import dask.array as da

    template = arr.copy(data=da.zeros(arr.shape, dtype=arr.dtype, chunks=arr.data.chunks))
    template.to_dataset(name="labels").to_zarr(tmp, zarr_format=3, mode="w", consolidated=False, compute=False)
    nchunks = tuple((1,) * len(c) for c in arr.data.chunks)
    written = arr.data.map_blocks(
        _write_chunk, str(tmp), "labels", chunks=nchunks, dtype=np.int64, token="rs-write-labels-zarr",
        meta=np.empty((0, 0), np.int64),
    )
    job = written.sum()
    if client is not None:
        futs = client.compute([job, also], optimize_graph=True)
        if progress:
            import sys

            from distributed import progress as _progress

            _progress(futs, notebook=False)
            print(file=sys.stderr)
        n_written, extra = client.gather(futs)
    else:
        n_written, extra = dask.compute(job, also)
    if int(n_written) != int(np.prod([len(c) for c in arr.data.chunks])):
        from .exceptions import RemoteSamsingError

        # never move a partial store into place
        raise RemoteSamsingError(f"wrote {n_written} label chunks, expected one per chunk")
    _replace_dir(tmp, out)
    return extra


def _write_chunk(block, store: str, name: str, block_info=None):
    """Write one chunk into the Zarr array ``store/name``; returns a 1-count."""
    import zarr

    target = zarr.open_array(store=store, path=name, mode="r+")
    target[tuple(slice(a, b) for a, b in block_info[0]["array-location"])] = block
    return np.ones((1,) * block.ndim, np.int64)


def to_cog(
    labels: xr.DataArray,
    path: str | os.PathLike,
    *,
    max_label: int | None = None,
    blocksize: int = 512,
    lock: Any = None,
) -> Path:
    """Write labels as a Cloud-Optimized GeoTIFF (nodata 0, smallest uint dtype).

    Parameters
    ----------
    labels : xarray.DataArray
        (y, x) labels with rioxarray CRS/transform; may be dask-backed.
    path : path
        Output ``.tif``.
    max_label : int, optional
        Largest label (computed if not given) — picks the dtype.
    blocksize : int
        Internal tile size (multiple of 16).
    lock : lock, optional
        Lock serialising window writes (a ``distributed.Lock`` on a cluster);
        a threading lock is used by default.
    """
    import threading

    import rasterio.shutil
    import rioxarray  # noqa: F401

    out = Path(os.fspath(path))
    if max_label is None:
        max_label = int(labels.max().compute())
    dtype = smallest_uint_dtype(max_label)
    arr = labels.astype(dtype)
    arr = arr.rio.write_nodata(0, encoded=False)
    tiled = out.with_name(out.name + ".tiled.partial.tif")
    tmp = out.with_name(out.name + ".partial.tif")
    for p in (tiled, tmp):
        if p.exists():
            p.unlink()
    bs = min(blocksize, 512)
    # rioxarray writes per dask chunk (reopening the file under `lock`), so
    # the whole raster is never in memory.
    arr.rio.to_raster(
        tiled,
        driver="GTiff",
        tiled=True,
        blockxsize=bs,
        blockysize=bs,
        # an intermediate file: fast zstd-1 (measured 25 % faster than deflate
        # here, and far smaller on disk than no compression)
        compress="zstd",
        ZSTD_LEVEL=1,
        lock=lock if lock is not None else threading.Lock(),
        BIGTIFF="IF_SAFER",
    )
    # the product: deflate (what every COG reader supports), compressed on all
    # cores (measured 1.7-1.9x faster than one thread on 2 cores)
    rasterio.shutil.copy(
        tiled, tmp, driver="COG", compress="deflate", blocksize=bs, overview_resampling="nearest", BIGTIFF="IF_SAFER",
        NUM_THREADS="ALL_CPUS",
    )
    tiled.unlink()
    os.replace(tmp, out)
    return out
