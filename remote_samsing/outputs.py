"""Writers for the final products: ``labels.zarr``, ``labels.tif`` (COG), JSON.

Locally every product is written under a temporary name and moved into
place when complete, so a crash never leaves a file that looks finished. On
an object store (no rename) files are uploaded whole and ``labels.zarr`` is
written in place; there ``run.json``'s ``"complete": true`` says it is
finished (see :mod:`remote_samsing._files`).

The COG is made from ``labels.zarr``, read a few chunks at a time into a
tiled GeoTIFF that GDAL turns into the product; labels not stored yet are
written in parallel as one small GeoTIFF per chunk, mosaicked by a VRT
(rioxarray cannot write a COG window by window; shared/design/stack.md §7).
"""

from __future__ import annotations

import functools
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr

from ._files import (consolidate_metadata, gdal_path, is_remote, list_names, location, open_zarr_array, open_zarr_kept,
                     remove_tree, replace_path, store_path, write_atomic, write_bytes)
from .io import configure_remote_reads, quiet_georeferencing

__all__ = ["to_cog", "plan_label_store", "LabelSink", "smallest_uint_dtype", "overview_factors"]


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


def _plan_label_store(labels, path, token=None):
    """Where and how the label store is made, without making it.

    Returns ``(out, tmp, labels with regular chunks, create)``: ``create()``
    writes ``<path>.partial`` with the labels' metadata and coordinates (no
    label data yet).
    """
    out = location(path)
    # on a store (no rename) the store is written in place; run.json says when it is complete
    tmp = out if is_remote(out) else out.with_name(out.name + ".partial")
    arr = labels.copy()
    if arr.chunks is not None:
        # Zarr needs regular chunks; the plan may have absorbed a thin remainder
        # into the last block, so split only that block off again.
        arr = arr.chunk({"y": arr.chunks[0][0], "x": arr.chunks[1][0]})
    arr.encoding = {}
    arr.attrs = {k: v for k, v in arr.attrs.items() if k not in ("_FillValue", "scale_factor", "add_offset")}
    # Metadata and coordinates from a cheap all-zero template; the labels
    # themselves are written block by block through LabelSink, by the tasks
    # that compute them (``to_zarr`` of the real graph would compute it again).
    import dask.array as da

    template = arr.copy(data=da.zeros(arr.shape, dtype=arr.dtype, chunks=arr.data.chunks))
    create = functools.partial(_create_label_store, template, store_path(tmp), token)
    return out, tmp, arr, create


def _created_marker(tmp: str) -> Path:
    """The file beside a partial store naming the run that created it (inside, Zarr would warn of it)."""
    return location(f"{tmp}.created")


def _create_label_store(template, tmp: str, token: str | None = None) -> None:
    """Write an empty label store (metadata, coordinates) at ``tmp``.

    With ``token``, a second call with the same token leaves the store as
    it is: a task creating the store may run again (the scheduler re-runs
    it when a lost worker held its result and a block still waits for it),
    possibly after blocks were written into it.
    """
    marker = _created_marker(tmp)
    if token is not None and marker.exists() and marker.read_text() == token and location(tmp).exists():
        return
    marker.unlink(missing_ok=True)  # a crashed run's
    remove_tree(tmp)
    template.to_dataset(name="labels").to_zarr(tmp, zarr_format=3, mode="w", consolidated=False, compute=False)
    if token is not None:
        write_bytes(marker, token.encode())


@dataclass(frozen=True)
class LabelSink:
    """Writes merged blocks into a label store being built (``<path>.partial``; on a store, ``<path>``).

    Made by :func:`plan_label_store`; called as ``sink(labels, window)`` by
    the worker that relabelled a block (``merge.merge_stored``): it writes
    the block into the Zarr array, calls ``also(labels, window)`` when
    given (work that needs each final block while it is in memory; what it
    returns, the call returns, for the merge to hand back).
    :meth:`commit` moves the finished store into place.
    ``token`` names the run: a worker keeps the array open between the
    blocks of one run.
    """

    store: str
    out: str
    name: str
    chunks: tuple[int, int]
    token: str = ""
    also: Callable | None = None

    def __call__(self, labels: np.ndarray, window):
        target = open_zarr_kept(self.store, path=self.name, mode="r+", token=self.token)
        target[window.y0 : window.y1, window.x0 : window.x1] = labels
        return self.also(labels, window) if self.also is not None else None

    def commit(self) -> Path:
        """Move the store into place (call once every block was written); on a store it is in place."""
        out = location(self.out)
        _created_marker(self.store).unlink(missing_ok=True)
        consolidate_metadata(self.store)
        if is_remote(out):  # written in place
            return out
        return replace_path(self.store, out)


def plan_label_store(labels: xr.DataArray, path: str | os.PathLike, *, token: str | None = None,
                     also: Callable | None = None) -> tuple[LabelSink, Callable[[], None]]:
    """A label store at ``<path>.partial`` (on a store, at ``<path>``) for blocks written one by one,
    not created yet.

    Parameters
    ----------
    labels : xarray.DataArray
        A (y, x) template with the output's shape, chunks, CRS and
        coordinates (its values are not read).
    path : path
        The final store; :meth:`LabelSink.commit` renames the partial store to it.
    token : str, optional
        Names this run: ``create`` called again with it (a task run again
        after a lost worker) keeps what was written since; a store left by
        another run, or any store without a token, is made anew.
    also : callable, optional
        Called as ``also(labels, window)`` with each final block, in the task
        that writes it (picklable); the sink returns what it returns.

    Returns
    -------
    The sink, and ``create``, a picklable function that creates the store:
    call it, anywhere, before the sink's first block. The merge runs it on a worker while its global steps run
    (``merge_stored(prepare_sink=...)``), so that its Zarr and xarray
    metadata work (about 30 ms on a 2-core machine) costs no time of its own.
    """
    _, tmp, arr, create = _plan_label_store(labels, path, token)
    sink = LabelSink(store=store_path(tmp), out=str(location(path)), name="labels",
                     chunks=(int(arr.chunks[0][0]), int(arr.chunks[1][0])), token=token or uuid.uuid4().hex,
                     also=also)
    return sink, create


def _per_chunk_job(data, func, *args, token: str):
    """A dask job running ``func(chunk, *args, block_info=...)`` on every chunk (each returns a
    1-count), and the total count it must reach.

    The job is the array of counts, summed after compute: a ``.sum()`` tree
    would add about one task per chunk, and on two cores the scheduler's
    per-task cost is a large part of a fast run.
    """
    from dask.base import tokenize
    from dask.utils import key_split

    nchunks = tuple((1,) * len(c) for c in data.chunks)
    # Named with its input's prefix: dask fuses each write into the task that
    # computes the chunk, and only when both names share that prefix does the
    # fused task keep the write's key instead of adding an alias task per chunk.
    name = f"{key_split(data.name)}-{tokenize(data.name, func, args, token)}"
    job = data.map_blocks(func, *args, chunks=nchunks, dtype=np.int64, meta=np.empty((0,) * data.ndim, np.int64),
                          name=name)
    return job, int(np.prod([len(c) for c in data.chunks]))


#: GDAL block cache (MB) for the COG copy in this process: GDAL's default
#: (5 % of RAM) makes the client grow with the raster size; 128 MB is as fast.
_GDAL_CACHE_MB = 128
#: Pieces the COG copy keeps open at once. GDAL's default pool (100 datasets)
#: makes the copy's memory grow with the number of pieces (a 20000² copy from
#: 400 pieces: 408 MB RSS, against ~300 MB with 16), and 16 is no slower.
_GDAL_POOL = 16


def _write_tif_piece(block, folder: str, profile: dict, block_info=None):
    """Write one chunk as its own small tiled GeoTIFF ``folder/{y0}_{x0}.tif``; returns a 1-count."""
    import rasterio

    (y0, y1), (x0, x1) = block_info[0]["array-location"]
    prof = dict(profile, height=y1 - y0, width=x1 - x0)
    if prof["transform"] is not None:
        prof["transform"] = prof["transform"] @ prof["transform"].translation(x0, y0)
    dest = location(folder) / f"{y0}_{x0}.tif"
    if not is_remote(dest):
        with quiet_georeferencing(), rasterio.open(dest, "w", **prof) as dst:
            dst.write(np.asarray(block, dtype=prof["dtype"]), 1)
        return np.ones((1, 1), np.int64)
    from rasterio.io import MemoryFile

    with quiet_georeferencing(), MemoryFile() as mem:  # one upload per piece, whole
        with mem.open(driver=prof.pop("driver", "GTiff"), **prof) as dst:
            dst.write(np.asarray(block, dtype=prof["dtype"]), 1)
        write_bytes(dest, mem.read())
    return np.ones((1, 1), np.int64)


def _georef(labels):
    try:
        transform = labels.rio.transform()
    except Exception:  # noqa: BLE001 - un-georeferenced arrays
        transform = None
    return labels.rio.crs, transform


def _piece_profile(labels, dtype: np.dtype, blocksize: int = 512) -> dict:
    """GeoTIFF profile of the COG's intermediate pieces (each piece sets its own size and origin)."""
    import rioxarray  # noqa: F401

    crs, transform = _georef(labels)
    bs = min(blocksize, 512)
    return dict(
        driver="GTiff", count=1, dtype=np.dtype(dtype).name, crs=crs, transform=transform, nodata=0, tiled=True,
        blockxsize=bs, blockysize=bs,
        # intermediate pieces: fast zstd-1 (25 % faster than deflate here, far
        # smaller on disk than no compression)
        compress="zstd", ZSTD_LEVEL=1,
    )


def _vrt_xml(pieces: list, *, height: int, width: int, dtype: np.dtype, crs, transform, blocksize: int) -> str:
    """A GDAL VRT mosaic of non-overlapping pieces ``(file, y0, x0, h, w)``.

    Written by hand because rasterio has no ``gdalbuildvrt`` and the GDAL
    Python bindings are not a dependency.
    """
    from xml.sax.saxutils import escape

    gdal_type = {"uint8": "Byte", "uint16": "UInt16", "uint32": "UInt32", "uint64": "UInt64"}[np.dtype(dtype).name]
    head = [f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">']
    if crs is not None:
        head.append(f"  <SRS>{escape(crs.to_wkt())}</SRS>")
    if transform is not None:
        t = transform
        head.append(f"  <GeoTransform>{t.c!r}, {t.a!r}, {t.b!r}, {t.f!r}, {t.d!r}, {t.e!r}</GeoTransform>")
    head.append(f'  <VRTRasterBand dataType="{gdal_type}" band="1" blockXSize="{blocksize}" '
                f'blockYSize="{blocksize}">')
    head.append("    <NoDataValue>0</NoDataValue>")
    body = [
        f'    <SimpleSource><SourceFilename relativeToVRT="1">{escape(f)}</SourceFilename>'
        f"<SourceBand>1</SourceBand>"
        f'<SrcRect xOff="0" yOff="0" xSize="{w}" ySize="{h}"/>'
        f'<DstRect xOff="{x0}" yOff="{y0}" xSize="{w}" ySize="{h}"/></SimpleSource>'
        for f, y0, x0, h, w in pieces
    ]
    return "\n".join(head + body + ["  </VRTRasterBand>", "</VRTDataset>", ""])


def overview_factors(height: int, width: int, blocksize: int) -> list[int]:
    """Overview levels as GDAL's COG driver picks them by default.

    Halve until the previous level fits in one ``blocksize`` tile both ways:
    e.g. 1000 x 700 at 512 → [2], 40000² → [2, 4, ..., 128].
    """
    factors: list[int] = []
    f = 2
    while -(-height // (f // 2)) > blocksize or -(-width // (f // 2)) > blocksize:
        factors.append(f)
        f *= 2
    return factors


#: What the COG's first pass writes: a plain tiled GeoTIFF (zstd-1 on all cores: the COG pass reads it once).
_BASE_OPTIONS = dict(driver="GTiff", tiled=True, compress="zstd", ZSTD_LEVEL=1, BIGTIFF="IF_SAFER",
                     NUM_THREADS="ALL_CPUS")


def _base_from_vrt(vrt: str, *, blocksize: int) -> Callable[[Path], None]:
    """The first pass from the pieces' VRT: GDAL copies it."""

    def write(base: Path) -> None:
        import rasterio.shutil

        rasterio.shutil.copy(vrt, base, blockxsize=blocksize, blockysize=blocksize, **_BASE_OPTIONS)

    return write


def _base_from_store(store: str, *, dtype: np.dtype, max_label: int, crs, transform,
                     blocksize: int) -> Callable[[Path], None]:
    """The first pass from a label store: its chunks, read a few ahead, written window by window."""

    def write(base: Path) -> None:
        import contextlib

        import rasterio
        from rasterio.windows import Window

        z = open_zarr_array(store, path="labels", mode="r")
        height, width = z.shape
        profile = dict(_BASE_OPTIONS, height=height, width=width, count=1, dtype=dtype.name, crs=crs,
                       transform=transform, nodata=0, blockxsize=blocksize, blockysize=blocksize)
        # Where chunks do not end on the tiles' rows, a chunk row leaves a row of tiles half written,
        # to be finished by the next chunk row; GDAL holds them in its block cache meanwhile. A cache
        # smaller than two rows of tiles would write them out half empty and rewrite them later.
        cache_mb = max(_GDAL_CACHE_MB, -(-2 * width * blocksize * dtype.itemsize // 2**20) + 16)
        # on a store, requests in flight hide its latency; on a local disk one thread reading ahead keeps
        # GDAL busy, and more only contend for Zarr's event loop and the GIL
        ahead = _CHUNKS_AHEAD if is_remote(store) else 1
        with (rasterio.Env(GDAL_CACHEMAX=cache_mb), quiet_georeferencing(), rasterio.open(base, "w", **profile) as dst,
              contextlib.closing(_chunks_ahead(z, dtype, max_label=max_label, ahead=ahead)) as chunks):
            for (y0, y1, x0, x1), chunk in chunks:
                dst.write(chunk, 1, window=Window(x0, y0, x1 - x0, y1 - y0))

    return write


#: Chunks of a label store read ahead of the COG's first pass: on an object store that many
#: requests are in flight at once; the memory held is about twice that many chunks (read, converted).
_CHUNKS_AHEAD = 8


def _chunks_ahead(z, dtype: np.dtype, *, max_label: int, ahead: int = _CHUNKS_AHEAD):
    """Yield ``((y0, y1, x0, x1), chunk as dtype)`` of every chunk of the 2-D Zarr array ``z``, row by row,
    while up to ``ahead`` later chunks are being read. A label above ``max_label`` that
    ``dtype`` cannot hold is an error, never a label wrapped round."""
    import collections
    import itertools
    from concurrent.futures import ThreadPoolExecutor

    (height, width), (cy, cx) = z.shape, z.chunks
    windows = ((y0, min(y0 + cy, height), x0, min(x0 + cx, width))
               for y0 in range(0, height, cy) for x0 in range(0, width, cx))

    narrowing = np.dtype(dtype).itemsize < np.dtype(z.dtype).itemsize

    def read(w):
        chunk = np.asarray(z[w[0] : w[1], w[2] : w[3]])
        if narrowing and chunk.size and int(chunk.max()) > max_label:
            from .exceptions import InputError

            raise InputError(f"label {int(chunk.max())} in rows {w[0]}:{w[1]}, columns {w[2]}:{w[3]} of the label "
                             f"store is above max_label {max_label}", hint="pass the store's largest label")
        return chunk.astype(dtype, copy=False)

    with ThreadPoolExecutor(ahead, thread_name_prefix="rs-cog-read") as pool:
        pending = collections.deque((w, pool.submit(read, w)) for w in itertools.islice(windows, ahead))
        while pending:
            w, future = pending.popleft()
            nxt = next(windows, None)
            if nxt is not None:
                pending.append((nxt, pool.submit(read, nxt)))
            yield w, future.result()


def _assemble_cog(write_base: Callable[[Path], None], dest: Path, *, height: int, width: int,
                  blocksize: int) -> None:
    """The COG in three passes whose memory does not grow with the raster.

    GDAL's COG driver, asked to compute the overviews itself, does so on all
    cores in strips as wide as the raster, so its peak grows with the
    mosaic's width. So:

    1. ``write_base(base)`` writes the labels into a plain tiled GeoTIFF
       (:data:`_BASE_OPTIONS`);
    2. its overviews are built in place (nearest: labels are categories; one
       thread, whose strips stay small);
    3. that is copied into the COG, keeping those overviews
       (``OVERVIEWS=FORCE_USE_EXISTING``; deflate, all cores).
    """
    import rasterio
    import rasterio.shutil
    from rasterio.enums import Resampling

    base = dest.with_name(dest.name + ".base.tif")
    base.unlink(missing_ok=True)  # a crashed run's
    env = dict(GDAL_CACHEMAX=_GDAL_CACHE_MB, GDAL_MAX_DATASET_POOL_SIZE=_GDAL_POOL)
    try:
        with rasterio.Env(**env):
            write_base(base)
        factors = overview_factors(height, width, blocksize)
        if factors:
            with rasterio.Env(**env, COMPRESS_OVERVIEW="ZSTD", ZSTD_LEVEL_OVERVIEW=1, BIGTIFF_OVERVIEW="IF_SAFER"):
                with rasterio.open(base, "r+") as dst:
                    dst.build_overviews(factors, Resampling.nearest)
        # the product: deflate (what every COG reader supports), compressed on
        # all cores (1.7-1.9x faster than one thread on 2 cores)
        with rasterio.Env(**env):
            rasterio.shutil.copy(
                base, dest, driver="COG", compress="deflate", blocksize=blocksize, overview_resampling="nearest",
                OVERVIEWS="FORCE_USE_EXISTING" if factors else "NONE", BIGTIFF="IF_SAFER", NUM_THREADS="ALL_CPUS",
            )
    finally:
        base.unlink(missing_ok=True)


def _piece_names(folder) -> set:
    """Names of the COG pieces (``{y0}_{x0}.tif``) in ``folder``."""
    return {name for name in list_names(folder) if name.endswith(".tif") and "_" in name}


def to_cog(
    labels: xr.DataArray,
    path: str | os.PathLike,
    *,
    max_label: int | None = None,
    blocksize: int = 512,
    store: str | os.PathLike | None = None,
) -> Path:
    """Write labels as a Cloud-Optimized GeoTIFF (nodata 0, smallest uint dtype).

    Labels already in a label store (``store``) are read from it a few
    chunks at a time into the COG's first pass. Otherwise every chunk is
    written in parallel (no lock) to its own small GeoTIFF, a VRT mosaics
    them and GDAL assembles the product from it. Either way the overviews
    are by nearest, the COG is deflate, the whole raster is never in memory
    and the assembly's memory does not grow with the raster.

    Parameters
    ----------
    labels : xarray.DataArray
        (y, x) labels with rioxarray CRS/transform; may be dask-backed.
    path : path
        Output ``.tif``.
    max_label : int, optional
        Largest label (computed if not given) — picks the dtype.
    blocksize : int
        Internal tile size (multiple of 16, at most 512).
    store : path, optional
        The label store (``labels.zarr``, from :func:`plan_label_store`)
        that holds ``labels``: the COG is made from its chunks instead of
        writing ``labels`` again, chunk by chunk, as pieces.
    """
    import rioxarray  # noqa: F401

    out = location(path)
    stored = _checked_store(store, labels.shape) if store is not None else None
    if max_label is None:
        max_label = int(labels.max().compute())
    dtype = smallest_uint_dtype(max_label)
    bs = min(blocksize, 512)
    height, width = labels.shape
    crs, transform = _georef(labels)
    if stored is not None:
        write_base = _base_from_store(stored, dtype=dtype, max_label=max_label, crs=crs, transform=transform,
                                      blocksize=bs)
        return write_atomic(out, functools.partial(_assemble_cog, write_base, height=height, width=width,
                                                   blocksize=bs))
    return _cog_via_pieces(labels, out, dtype=dtype, blocksize=bs, crs=crs, transform=transform)


def _cog_via_pieces(labels: xr.DataArray, out, *, dtype: np.dtype, blocksize: int, crs, transform) -> Path:
    """:func:`to_cog` of labels not stored yet: every chunk computed and written as a piece in parallel,
    a VRT of the pieces, the COG from it; a missing piece is an error, never a COG with a hole."""
    import dask
    import dask.array as da

    bs = blocksize
    height, width = labels.shape
    data = labels.data if isinstance(labels.data, da.Array) else da.from_array(labels.data, chunks=1024)
    pieces_dir = out.with_name(out.name + ".pieces.partial")
    remove_tree(pieces_dir)
    pieces_dir.mkdir(parents=True, exist_ok=True)
    job, expected = _per_chunk_job(data, _write_tif_piece, str(pieces_dir), _piece_profile(labels, dtype, bs),
                                   token="rs-write-labels-tif")
    n_written = int(np.sum(dask.compute(job)[0]))
    present = _piece_names(pieces_dir)  # one listing, also on a store
    if n_written != expected:
        from .exceptions import RemoteSamsingError

        raise RemoteSamsingError(f"{n_written} COG pieces for {expected} chunks of the labels: not every chunk "
                                 "reached the COG")
    ys = np.cumsum((0,) + data.chunks[0])
    xs = np.cumsum((0,) + data.chunks[1])
    tiles = [(f"{y0}_{x0}.tif", int(y0), int(x0), int(y1 - y0), int(x1 - x0))
             for y0, y1 in zip(ys[:-1], ys[1:]) for x0, x1 in zip(xs[:-1], xs[1:])]
    missing = [t[0] for t in tiles if t[0] not in present]
    if missing:
        from .exceptions import RemoteSamsingError

        raise RemoteSamsingError(f"COG pieces missing for {len(missing)} chunk(s), e.g. {missing[0]}")
    vrt = pieces_dir / "mosaic.vrt"  # beside the pieces, which it names relative to itself
    write_bytes(vrt, _vrt_xml(tiles, height=height, width=width, dtype=dtype, crs=crs, transform=transform,
                              blocksize=bs).encode())

    if is_remote(vrt):
        configure_remote_reads()  # GDAL reads the pieces from the store

    def assemble(tmp: Path) -> None:
        _assemble_cog(_base_from_vrt(gdal_path(vrt), blocksize=bs), tmp, height=height, width=width, blocksize=bs)
        remove_tree(pieces_dir)

    return write_atomic(out, assemble)


def _checked_store(store, shape: tuple) -> str:
    """``store`` as Zarr opens it, once it is known to hold a ``labels`` array of ``shape``."""
    from .exceptions import InputError

    path = store_path(store)
    try:  # zarr's "no array there" is a FileNotFoundError too; other failures (credentials) pass
        z = open_zarr_array(path, path="labels", mode="r")
    except FileNotFoundError:
        raise InputError(f"no label store at `{path}`",
                         hint="pass the labels.zarr that plan_label_store made") from None
    if tuple(z.shape) != tuple(shape) or np.dtype(z.dtype).kind != "u":
        raise InputError(f"the label store `{path}` holds {tuple(z.shape)} {z.dtype} labels, the labels are "
                         f"{tuple(shape)} unsigned integers")
    return path
