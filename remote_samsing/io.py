"""Input: open any GDAL raster or our Zarr as a georeferenced dask DataArray,
write mosaics to Zarr v3, and turn raw radiometry into the 8-bit RGB that
segmenters see.

Radiometry is decided **once per mosaic**: uint8 passes through; every other
dtype is stretched per band between global percentiles (default 2–98 %)
estimated from a sample of blocks, with NaN and nodata excluded. The reference
instead rescales each tile on its own (shared/design/reference.md §1.2), so one
object can look different on both sides of a seam.

The stretch parameters stay lazy (a tiny dask array), so building the
segmentation graph computes nothing.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import sys
import threading
import contextlib
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr

from ._files import (REMOTE_SCHEMES, check_url, consolidate_metadata, gcs_emulator, gdal_path, is_remote, is_url,
                     list_names, location, replace_path, store_path, store_variables, temporary_name, open_zarr_array,
                     open_zarr_cached, url_to_fs)
from ._progress import compute_tracked
from ._validate import check_int, check_nodata, check_number
from .exceptions import (
    BandSelectionError,
    ConfigError,
    IncompleteOutputError,
    InputError,
    InputNotFoundError,
    UnsupportedDtypeError,
    WindowReadError,
)
from .sources import DEFAULT_RESAMPLING

__all__ = [
    "open_mosaic",
    "open_resolved",
    "to_zarr",
    "open_labels",
    "prepare_rgb",
    "stretch_params",
    "stretch_limits",
    "WindowReader",
    "release_kept_chunks",
    "window_reader",
    "read_valid_mask",
    "quiet_georeferencing",
    "ignore_shapes_georeferencing",
    "is_url",
    "configure_remote_reads",
    "error_chain",
    "as_band_yx",
    "check_bands",
    "check_percentiles",
    "passes_through",
    "rgb_band_indices",
    "SUPPORTED_DTYPES",
]

#: dtypes we know how to bring to uint8.
SUPPORTED_DTYPES = (
    "uint8", "uint16", "int16", "uint32", "int32", "float32", "float64", "int8",
)

_MOSAIC_VAR = "mosaic"



def ignore_shapes_georeferencing() -> None:
    """Filter, from here on, the warning rasterio's ``shapes()`` at times gives of an in-memory raster
    without a geotransform when threads trace blocks at once, though every block passes its exact
    transform. A filter set around each call would not be thread-safe (warning filters are process-wide),
    so callers set this one around all the threads, or for a whole worker process."""
    warnings.filterwarnings("ignore", message="Dataset has no geotransform", module="rasterio.features")


@contextlib.contextmanager
def quiet_georeferencing():
    """Filter rasterio's ``NotGeoreferencedWarning`` where a raster is opened or written.

    An image without georeferencing is reported once per run by the tool's
    own :class:`~remote_samsing.vectorize.NoCRSWarning`, in words a user can
    act on; rasterio would repeat it at every open, with its source lines.
    """
    from rasterio.errors import NotGeoreferencedWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        yield


def _is_zarr(path: Path) -> bool:
    return path.suffix == ".zarr" or (path / "zarr.json").exists()


def configure_remote_reads() -> None:
    """Derive GDAL's store settings from the standard variables of each store, once per process.

    GDAL names some settings differently from the cloud SDKs; they are set in
    this process's environment unless the user set them, so every reader of
    the process (workers call this before their first read) and every process
    it starts see the same store:

    * ``AWS_ENDPOINT_URL`` (or ``AWS_ENDPOINT_URL_S3``) for an S3-compatible
      store → GDAL's ``AWS_S3_ENDPOINT`` (host and port), ``AWS_HTTPS`` and
      ``AWS_VIRTUAL_HOSTING``;
    * ``STORAGE_EMULATOR_HOST`` (Google's variable for a local GCS emulator)
      → ``CPL_GS_ENDPOINT``, with unsigned requests, as emulators take none;
    * ``AZURE_STORAGE_ACCOUNT_NAME`` and ``AZURE_STORAGE_ACCOUNT_KEY`` (what
      adlfs reads) → GDAL's ``AZURE_STORAGE_ACCOUNT`` and
      ``AZURE_STORAGE_ACCESS_KEY``.

    Other credentials are never touched: GDAL reads ``AWS_ACCESS_KEY_ID``,
    ``GOOGLE_APPLICATION_CREDENTIALS``, ``AZURE_STORAGE_CONNECTION_STRING``
    and the rest itself.
    """
    env = os.environ
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    if endpoint and "://" in endpoint:
        scheme, rest = endpoint.split("://", 1)
        env.setdefault("AWS_S3_ENDPOINT", rest.rstrip("/"))
        env.setdefault("AWS_HTTPS", "YES" if scheme.lower() == "https" else "NO")
        env.setdefault("AWS_VIRTUAL_HOSTING", "FALSE")  # path-style addressing, as custom stores expect
    emulator = gcs_emulator()
    if emulator:
        env.setdefault("CPL_GS_ENDPOINT", emulator + "/")
        env.setdefault("GS_NO_SIGN_REQUEST", "YES")
    for ours, gdal in (("AZURE_STORAGE_ACCOUNT_NAME", "AZURE_STORAGE_ACCOUNT"),
                       ("AZURE_STORAGE_ACCOUNT_KEY", "AZURE_STORAGE_ACCESS_KEY")):
        if env.get(ours):
            env.setdefault(gdal, env[ours])


def open_mosaic(
    path,
    *,
    bands: Sequence[int] | None = None,
    nodata: float | None = None,
    chunks: int | tuple[int, int] | None = 1024,
    recursive: bool = False,
    asset: str | None = None,
    crs=None,
    resolution=None,
    resampling: str = DEFAULT_RESAMPLING,
) -> xr.DataArray:
    """Open a raster mosaic lazily as a (band, y, x) DataArray.

    Parameters
    ----------
    path : str, path-like, or a sequence of them
        Any GDAL raster (GeoTIFF, COG, JPEG/PNG with or without
        georeferencing, VRT, GTI tile index) or a Zarr written by
        :func:`to_zarr`; the URL of one on a store (``s3://``, ``gs://``,
        ``az://``, ``abfs://``, ``https://``), read through GDAL's virtual
        file systems with the credentials and endpoint of the standard
        variables (see :func:`configure_remote_reads`); or many rasters:
        several of these, a folder, a glob, an ``@FILE`` list or a STAC
        Item/ItemCollection, mosaicked on one grid as
        :mod:`remote_samsing.sources` says. A mosaic of many files is read
        through a tile index kept in the per-user cache folder, which
        processes of this machine see; :func:`remote_samsing.run` writes it
        into OUTDIR for a cluster elsewhere.
    bands : sequence of int, optional
        1-based band numbers to keep, in order (e.g. ``[4, 3, 2]``).
    nodata : float, optional
        Nodata value overriding the file's.
    chunks : int or (int, int), optional
        Spatial chunk size (all bands in one chunk).
    recursive, asset, crs, resolution, resampling
        How many files make one mosaic: see
        :func:`remote_samsing.sources.resolve_mosaic`.

    Returns
    -------
    xarray.DataArray
        Dask-backed, dims (band, y, x), with ``.rio.crs``,
        ``.rio.transform()`` and ``.rio.nodata`` set where known. Its
        ``attrs["alpha_band"]`` holds the 1-based index of an alpha band
        if the file has one.

    Raises
    ------
    InputNotFoundError
        The path does not exist or GDAL cannot read it.
    BandSelectionError
        A requested band does not exist.
    """
    from .sources import resolve_mosaic

    mosaic = resolve_mosaic(path, recursive=recursive, asset=asset, crs=crs, resolution=resolution,
                            resampling=resampling, nodata=nodata)
    return open_resolved(mosaic, bands=bands, nodata=nodata, chunks=chunks)


def open_resolved(mosaic, *, bands=None, nodata=None, chunks=1024, index=None) -> xr.DataArray:
    """Open a :class:`~remote_samsing.sources.Mosaic`: its one file as it is, or its sources through the
    tile index at ``index`` (default: the per-user cache's copy)."""
    from .sources import cached_index, naming_inputs

    if mosaic.direct is not None:
        arr = _open_path(mosaic.direct, nodata=nodata, chunks=chunks, bands=bands)
    else:
        index = os.fspath(index) if index is not None else str(cached_index(mosaic))
        with naming_inputs(mosaic, index):  # the index is a file of ours: errors name the user's inputs
            arr = _open_path(index, nodata=nodata, chunks=chunks, bands=bands)
        arr.attrs["tile_index"] = True  # ours: it holds each source's footprint in pixels
    return arr


def _open_path(path: str, *, nodata, chunks, bands) -> xr.DataArray:
    """One raster file, Zarr mosaic or URL of one as a (band, y, x) DataArray."""
    import rioxarray  # noqa: F401  (registers the .rio accessor)

    cy, cx = (chunks, chunks) if isinstance(chunks, (int, np.integer)) or chunks is None else chunks
    if is_url(path):
        p = check_url(path)
        configure_remote_reads()
        if p.rstrip("/").endswith(".zarr"):  # through fsspec (s3fs, gcsfs, adlfs), as zarr opens URLs
            arr, nodata, alpha_band = _open_zarr_mosaic(p, nodata, cy, cx)
        else:
            arr, alpha_band = _open_gdal_mosaic(p, cy, cx)
        return _finish_mosaic(arr, p, bands=bands, nodata=nodata, alpha_band=alpha_band)
    p = Path(os.fspath(path))
    if not p.exists() and not str(p).lower().startswith("gti:"):  # GDAL's prefix for a tile index
        raise InputNotFoundError(f"input `{p}` does not exist", hint="check the path")
    if _is_zarr(p):
        arr, nodata, alpha_band = _open_zarr_mosaic(p, nodata, cy, cx)
    else:
        arr, alpha_band = _open_gdal_mosaic(p, cy, cx)
    return _finish_mosaic(arr, p, bands=bands, nodata=nodata, alpha_band=alpha_band)


def _finish_mosaic(arr, p, *, bands, nodata, alpha_band) -> xr.DataArray:
    """Check the dtype, select ``bands``, set nodata and the attributes the readers need."""
    if isinstance(arr, xr.Dataset):  # multi-subdataset files
        raise InputError(f"`{p}` holds several subdatasets; open one of them")
    dtype = np.dtype(arr.dtype)
    if dtype.name not in SUPPORTED_DTYPES:
        raise UnsupportedDtypeError(
            f"`{p}` has dtype {dtype.name}, which cannot be converted to 8-bit RGB",
            hint=f"supported dtypes: {', '.join(SUPPORTED_DTYPES)}",
        )
    nbands = arr.sizes["band"]
    if bands is not None:
        bands = check_bands(bands, nbands, p)
        arr = arr.isel(band=[b - 1 for b in bands])
        arr = arr.assign_coords(band=np.asarray(bands))
        if alpha_band is not None and alpha_band in bands:
            alpha_band = bands.index(alpha_band) + 1
    if nodata is not None:
        check_nodata(nodata, dtype, p)
        arr = arr.rio.write_nodata(nodata, encoded=False)
    arr.attrs["alpha_band"] = alpha_band
    arr.attrs["source"] = str(p)
    arr.attrs["source_bands"] = list(bands) if bands is not None else list(range(1, nbands + 1))
    return arr


def _open_zarr_mosaic(p: Path | str, nodata, cy, cx):
    """(band, y, x) array, nodata and alpha band of a Zarr written by :func:`to_zarr`."""
    try:
        ds = xr.open_zarr(p, zarr_format=3, consolidated=False, mask_and_scale=False)
    except Exception as exc:  # noqa: BLE001 - any zarr failure is a bad input
        raise InputNotFoundError(f"cannot read Zarr `{p}`: {exc}") from None
    if is_url(str(p)) and not ds.attrs.get(_COMPLETE_ATTR):
        raise InputError(f"Zarr `{p}` is not a complete mosaic (an ingest that did not finish?)",
                         hint="run `remote-samsing ingest` again with --overwrite")
    if _MOSAIC_VAR not in ds and "labels" in ds:
        raise InputError(f"Zarr `{p}` holds segment labels (a remote-samsing output), not a mosaic",
                         hint="open it with remote_samsing.open_labels")
    if _MOSAIC_VAR not in ds:
        raise InputError(f"Zarr `{p}` has no `{_MOSAIC_VAR}` array; was it written by remote-samsing ingest?")
    arr = ds[_MOSAIC_VAR]
    if "band" not in arr.dims:
        arr = arr.expand_dims("band")
    if nodata is None:
        nodata = arr.attrs.get("_FillValue_nodata", arr.rio.nodata)
    if cy is not None:
        arr = arr.chunk({"band": -1, "y": cy, "x": cx})
    return arr, nodata, arr.attrs.get("alpha_band")


def _open_gdal_mosaic(p: Path, cy, cx):
    """(band, y, x) array and 1-based alpha band (or None) of any GDAL raster."""
    try:
        with quiet_georeferencing():
            arr = rioxarray.open_rasterio(
                p,
                chunks={"band": -1, "y": cy or -1, "x": cx or -1},
                lock=False,
                masked=False,
            )
    except Exception as exc:  # noqa: BLE001 - rasterio raises many types
        raise unreadable_raster(p, str(exc)) from None
    alpha_band = None
    try:
        import rasterio

        with quiet_georeferencing(), rasterio.open(p) as src:
            for i, c in enumerate(src.colorinterp, start=1):
                if c.name == "alpha":
                    alpha_band = i
    except Exception:  # noqa: BLE001 - no colour interpretation: no alpha band
        alpha_band = None
    return arr, alpha_band


def unreadable_raster(location, cause: str) -> InputNotFoundError:
    """The error for a raster GDAL cannot open: names it, says why, and what to check."""
    return InputNotFoundError(
        f"cannot read raster `{location}`: {cause}",
        hint=(f"check the URL and what reaches its store: {store_variables(str(location))}"
              if is_url(str(location)) else "is it a valid GeoTIFF/COG/JPEG/PNG? try `gdalinfo` on it"),
    )


def check_bands(bands, nbands: int, path) -> list[int]:
    """``bands`` (1-based, one or three of them) checked against a raster of ``nbands`` bands."""
    if isinstance(bands, (int, np.integer)):
        bands = [int(bands)]
    try:
        out = [int(b) for b in bands]
    except (TypeError, ValueError):
        raise BandSelectionError(f"`bands` must be a list of integers, got {bands!r}") from None
    if len(out) == 0:
        raise BandSelectionError("`bands` is empty", hint="give 1 or 3 band numbers, e.g. 4,3,2")
    if len(out) not in (1, 3):
        raise BandSelectionError(
            f"`bands` must name 1 or 3 bands, got {len(out)} ({out})",
            hint="give three bands for RGB (e.g. 4,3,2) or one for a grey image",
        )
    for b in out:
        if b < 1 or b > nbands:
            raise BandSelectionError(
                f"band {b} is out of range: `{path}` has {nbands} band(s), numbered 1..{nbands}",
                hint="band numbers are 1-based, as in GDAL",
            )
    return out


def rgb_band_indices(arr: xr.DataArray) -> list[int]:
    """0-based positions in ``arr`` of the bands that make up RGB.

    One band → repeated as grey; three → as given; more than three → the first
    three that are not alpha; two → BandSelectionError.
    """
    alpha = arr.attrs.get("alpha_band")
    sel = arr.attrs.get("source_bands") or list(range(1, arr.sizes["band"] + 1))
    positions = [i for i, b in enumerate(sel) if b != alpha] if alpha else list(range(arr.sizes["band"]))
    if len(positions) == 1:
        return positions * 3
    if len(positions) == 2:
        raise BandSelectionError(
            "the image has two bands; SAM2 needs one (grey) or three (RGB)",
            hint="choose bands explicitly, e.g. --bands 1 or --bands 1,2,1",
        )
    if len(positions) == 0:
        raise BandSelectionError("no usable band (only an alpha band)")
    return positions[:3]


# ---------------------------------------------------------------------------
# radiometry
# ---------------------------------------------------------------------------
def _sample_percentiles(blocks, nodata, lo_pct, hi_pct):
    """Per-band (lo, hi) percentiles over the valid pixels of sampled blocks (arrays, or lists of them)."""
    flat = [b for item in blocks for b in (item if isinstance(item, list) else [item])]
    stacked = np.concatenate([b.reshape(b.shape[0], -1) for b in flat], axis=1).astype("float64")
    out = np.zeros((stacked.shape[0], 2), dtype="float64")
    for i, band in enumerate(stacked):
        keep = np.isfinite(band)
        if nodata is not None and np.isfinite(nodata):
            keep &= band != nodata
        vals = band[keep]
        if vals.size == 0:
            out[i] = (0.0, 1.0)
            continue
        lo, hi = np.percentile(vals, [lo_pct, hi_pct])
        if hi <= lo:  # flat band: keep it mid-grey instead of dividing by zero
            hi = lo + 1.0
        out[i] = (lo, hi)
    return out


def stretch_params(
    arr: xr.DataArray,
    *,
    percentiles: tuple[float, float] = (2.0, 98.0),
    lattice: int = 32,
    window: int = 64,
) -> da.Array:
    """Lazy per-band stretch limits, computed once for the whole mosaic.

    The sample is a ``lattice`` x ``lattice`` grid of ``window``-pixel
    windows spread evenly over the mosaic (4 Mpx by default), decided by the
    mosaic's size alone: the same pixels are sampled whether the mosaic is
    one file, many files on its grid, or an array in memory, so all of them
    give the same limits; and every source of a mosaic of many files that
    spans at least 1/32 of it along each axis holds a window. A file is read
    window by window on the workers (:class:`WindowReader`), 64 windows a
    task.

    Returns
    -------
    dask.array.Array
        Shape (band, 2): lower and upper limits per band.
    """
    lo_pct, hi_pct = percentiles
    windows = _sample_windows(tuple(arr.shape[1:]), lattice=lattice, window=window)
    reader = window_reader(arr) if arr.attrs.get("source") else None
    if reader is not None:
        read = dask.delayed(_read_raw_windows, pure=True)
        samples = [read(reader, windows[i: i + 64]) for i in range(0, len(windows), 64)]
    else:
        data = arr.data if isinstance(arr.data, da.Array) else da.from_array(arr.data, chunks=(-1, 1024, 1024))
        samples = [data[:, y0:y1, x0:x1] for y0, y1, x0, x1 in windows]
    d = dask.delayed(_sample_percentiles, pure=True)(samples, arr.rio.nodata, lo_pct, hi_pct)
    return da.from_delayed(d, shape=(arr.shape[0], 2), dtype="float64")


def _sample_windows(shape: tuple[int, int], *, lattice: int, window: int) -> list[tuple[int, int, int, int]]:
    """``(y0, y1, x0, x1)`` windows of at most ``window`` pixels a side, centred on a ``lattice`` x
    ``lattice`` grid over ``shape`` (fewer, without repeats, along a short axis)."""
    def starts(n: int) -> np.ndarray:
        centres = (np.arange(lattice) + 0.5) * n / lattice
        return np.unique(np.clip(np.floor(centres).astype(int) - window // 2, 0, max(0, n - window)))

    ys, xs = starts(shape[0]), starts(shape[1])
    return [(int(y), int(min(shape[0], y + window)), int(x), int(min(shape[1], x + window))) for y in ys for x in xs]


def _read_raw_windows(reader: "WindowReader", windows) -> list[np.ndarray]:
    """(band, y, x) raw values of each window, read from the mosaic's file."""
    return [reader.read(w) for w in windows]


def _valid_block(block, *, band_idx, alpha_pos, nodata) -> np.ndarray:
    """(band, y, x) raw block → (y, x) bool: finite, not nodata in every RGB band, alpha > 0."""
    # band by band, on views: no copy of the RGB bands, no reduction across them
    bands = [block[i] for i in band_idx]
    valid = np.ones(block.shape[1:], dtype=bool)
    if np.issubdtype(block.dtype, np.floating):
        for band in bands:
            valid &= np.isfinite(band)
    if nodata is not None and not (isinstance(nodata, float) and np.isnan(nodata)):
        # a pixel is nodata when all its (RGB) bands carry the nodata value
        data = bands[0] != nodata
        for band in bands[1:]:
            data |= band != nodata
        valid &= data
    if alpha_pos is not None:
        valid &= block[alpha_pos] > 0
    return valid


def _to_rgba_block(block, lohi, *, band_idx, alpha_pos, nodata, passthrough):
    """(band, y, x) raw block → (y, x, 4) uint8: RGB + validity in channel 3."""
    from . import _rgba_nb

    valid = _valid_block(block, band_idx=band_idx, alpha_pos=alpha_pos, nodata=nodata)
    if passthrough:
        rgb = [block[i].astype(np.uint8, copy=False) for i in band_idx]
    else:
        lo = lohi[band_idx, 0][:, None, None]
        hi = lohi[band_idx, 1][:, None, None]
        scaled = (block[band_idx].astype("float64") - lo) * (255.0 / (hi - lo))
        scaled = np.nan_to_num(scaled, nan=0.0)
        rgb = list(np.clip(np.rint(scaled), 0, 255).astype(np.uint8))
    out = np.empty(block.shape[1:] + (4,), dtype=np.uint8)
    _rgba_nb.pack_rgba(*rgb, valid, _BYTE_SHIFTS, out.view(np.uint32)[..., 0])
    return out


#: The bit offset of each byte of an RGBA pixel in a 32-bit word, in this machine's byte order.
_BYTE_SHIFTS = np.array([0, 8, 16, 24] if sys.byteorder == "little" else [24, 16, 8, 0], np.int64)


def _rgba_params(arr: xr.DataArray) -> dict:
    """How :func:`_to_rgba_block` turns this mosaic's raw bands into RGB + validity."""
    band_idx = rgb_band_indices(arr)
    alpha = arr.attrs.get("alpha_band")
    sel = arr.attrs.get("source_bands") or list(range(1, arr.sizes["band"] + 1))
    return {
        "band_idx": tuple(int(i) for i in band_idx),
        "alpha_pos": sel.index(alpha) if alpha in sel else None,
        "nodata": arr.rio.nodata,
        "passthrough": passes_through(arr),
    }


def passes_through(arr: xr.DataArray) -> bool:
    """Whether the mosaic's bands go to RGB unstretched (uint8): its stretch limits read no pixel."""
    return np.dtype(arr.dtype) == np.uint8


def check_percentiles(percentiles) -> tuple[float, float]:
    """The stretch percentiles as two floats, ``0 <= low < high <= 100``."""
    try:
        lo, hi = (check_number("percentiles", p) for p in percentiles)
    except (TypeError, ValueError):  # not iterable, not two items, not numbers
        raise ConfigError(f"`percentiles` must be two numbers, got {percentiles!r}") from None
    if not 0 <= lo < hi <= 100:
        raise ConfigError(f"`percentiles` must satisfy 0 <= low < high <= 100, got {percentiles!r}")
    return lo, hi


def stretch_limits(arr: xr.DataArray, *, percentiles: tuple[float, float] = (2.0, 98.0)) -> da.Array:
    """Lazy (band, 2) stretch limits of the mosaic: zeros for uint8 (passed through)."""
    check_percentiles(percentiles)
    if passes_through(arr):
        return da.zeros((arr.sizes["band"], 2), dtype="float64", chunks=-1)
    return stretch_params(arr, percentiles=percentiles)


def prepare_rgb(
    arr: xr.DataArray,
    *,
    chunks: tuple[tuple[int, ...], tuple[int, ...]],
    percentiles: tuple[float, float] = (2.0, 98.0),
) -> da.Array:
    """Lazy (y, x, 4) uint8 array: stretched RGB plus a validity channel.

    Parameters
    ----------
    arr : xarray.DataArray
        (band, y, x) as returned by :func:`open_mosaic`.
    chunks : tuple
        Spatial chunks from the tiling plan.
    percentiles : (float, float)
        Global stretch percentiles for non-uint8 data.
    """
    lohi = stretch_limits(arr, percentiles=percentiles)  # validates the percentiles
    params = _rgba_params(arr)
    data = arr.data if isinstance(arr.data, da.Array) else da.asarray(arr.data)
    data = data.rechunk({0: -1, 1: chunks[0], 2: chunks[1]})
    return da.map_blocks(
        _to_rgba_block,
        data,
        lohi,
        band_idx=np.asarray(params["band_idx"]),
        alpha_pos=params["alpha_pos"],
        nodata=params["nodata"],
        passthrough=params["passthrough"],
        dtype=np.uint8,
        chunks=(chunks[0], chunks[1], (4,)),
        new_axis=[2],
        drop_axis=[0],
        meta=np.empty((0, 0, 0), np.uint8),
        token="remote-samsing-rgba",
    )


@dataclass(frozen=True)
class WindowReader:
    """Reads any window of a mosaic file straight from storage, as RGB + validity.

    What a worker needs to rebuild exactly what :func:`prepare_rgb` gives for
    that window, from the file itself: a path and a few numbers, never an
    open handle (build one with :func:`window_reader`). A task that reads its
    own padded window this way needs no neighbour data from other tasks.

    Attributes
    ----------
    path : str
        The mosaic file or Zarr store, absolute (workers may run elsewhere
        than the client's working directory).
    kind : {"zarr", "gdal"}
    bands : tuple of int
        1-based bands of the file, in the mosaic's band order.
    band_idx, alpha_pos, nodata, passthrough
        The RGB conversion (see :func:`prepare_rgb`).
    transform : tuple of 6 float, optional
        The affine transform (a, b, c, d, e, f), to name a window in map
        coordinates.
    crs : str, optional
    tile_index : bool
        ``path`` is a tile index written by
        :func:`remote_samsing.sources.write_tile_index`. GDAL's GTI driver
        leaves out a source it cannot open (the window reads as nodata, with
        no error), so a read first opens each source its window touches, found
        in the index: a missing one is an error naming it.
    run : str, optional
        The run that reads: a Zarr mosaic on a store then keeps the chunks it reads in each process
        for the rest of that run (each chunk is read by up to nine blocks' padded windows).
    """

    path: str
    kind: str
    bands: tuple[int, ...]
    band_idx: tuple[int, ...]
    alpha_pos: int | None
    nodata: float | None
    passthrough: bool
    transform: tuple | None = None
    crs: str | None = None
    tile_index: bool = False
    run: str | None = None

    @property
    def keeps_chunks(self) -> bool:
        """Whether each process keeps the chunks it reads for the run (a Zarr mosaic on a store, read by a
        run): then :func:`release_kept_chunks` drops them once the run's blocks are read."""
        return self.kind == "zarr" and self.run is not None and is_url(self.path)

    def where(self, window: tuple[int, int, int, int]) -> str:
        """``window`` in pixels and, with a transform, in map coordinates."""
        y0, y1, x0, x1 = (int(v) for v in window)
        text = f"rows {y0}:{y1}, columns {x0}:{x1}"
        if self.transform is not None:
            from affine import Affine

            t = Affine(*self.transform)
            (ax, ay), (bx, by) = t * (x0, y0), t * (x1, y1)
            text += (f" (x {min(ax, bx):.10g} to {max(ax, bx):.10g}, y {min(ay, by):.10g} to {max(ay, by):.10g}"
                     + (f" in {self.crs})" if self.crs else ")"))
        return text

    def checked_read(self, window: tuple[int, int, int, int], limits, *, block=None) -> np.ndarray:
        """:meth:`read_rgba`, any failure to read turned into a :class:`WindowReadError` naming the file
        and the window."""
        try:
            return self.read_rgba(window, limits)
        except Exception as exc:  # noqa: BLE001 - GDAL, zarr and store errors come in many types
            cause = error_chain(exc)
        # raised outside the handler: no chained library exception to pickle back to the client
        err = WindowReadError(
            f"cannot read {self._what_failed(window, cause)} at {self.where(window)}"
            + (f" (block {tuple(block)})" if block is not None else "") + f": {cause}",
            hint="the file may be truncated or damaged (an interrupted download?): check it (e.g. `gdalinfo "
                 "-checksum`), repair or fetch it again and rerun the same command to resume; or pass "
                 "--skip-failed-blocks to finish without these blocks",
        )
        err.block, err.window = (tuple(block) if block is not None else None), tuple(window)
        raise err

    def _what_failed(self, window: tuple[int, int, int, int], cause: str) -> str:
        """The file a failed read of ``window`` names: for a tile index, the source GDAL's message names (else
        the sources the window reads), since what is damaged is a source, not the index."""
        if not self.tile_index:
            return f"`{self.path}`"
        try:
            names = [name for name, _ in self._touched(window)]
        except Exception:  # noqa: BLE001 - the index itself unreadable: it is what the message names
            names = []
        named = [n for n in names if re.search(rf"(?<![\w.-]){re.escape(os.path.basename(n))}", cause)]
        if len(named) == 1:
            return f"`{named[0]}`"
        if not names:
            return f"`{self.path}`"
        named = named or names
        shown = ", ".join(f"`{n}`" for n in named[:3]) + (f" (and {len(named) - 3} more)" if len(named) > 3 else "")
        return f"one of {shown} (read through `{self.path}`)"

    def _touched(self, window: tuple[int, int, int, int]) -> list[tuple[str, tuple | None]]:
        """The tile index's sources whose footprints ``window`` touches, with their header stamps (or None)."""
        y0, y1, x0, x1 = (int(v) for v in window)
        names, spans, stamps = _index_sources(self.path)
        touched = (spans[:, 0] < y1) & (y0 < spans[:, 1]) & (spans[:, 2] < x1) & (x0 < spans[:, 3])
        return [(str(names[i]), None if stamps is None else tuple(stamps[i])) for i in np.flatnonzero(touched)]

    def read(self, window: tuple[int, int, int, int]) -> np.ndarray:
        """Raw (band, y, x) values of ``window = (y0, y1, x0, x1)``."""
        y0, y1, x0, x1 = (int(v) for v in window)
        if self.kind == "zarr":
            z = _zarr_cached(self.path, self.run) if self.keeps_chunks else _zarr_mosaic(self.path)
            if z.ndim == 2:
                return np.asarray(z[y0:y1, x0:x1])[None]
            raw = np.asarray(z[:, y0:y1, x0:x1])
            return raw[[b - 1 for b in self.bands]]
        from rasterio.windows import Window as RioWindow

        if self.tile_index:
            for name, stamp in self._touched(window):
                _check_source(name, stamp)
        src = _gdal_dataset(self.path)
        return src.read(indexes=list(self.bands), window=RioWindow(x0, y0, x1 - x0, y1 - y0))

    def read_valid(self, window: tuple[int, int, int, int]) -> np.ndarray:
        """(y, x) bool of ``window``: the validity channel of :meth:`read_rgba`.

        A window that cannot be read is all invalid: a run reads the
        validity only after segmenting, where such a window was already
        reported (it belongs to a block ``--skip-failed-blocks`` left empty).
        """
        try:
            raw = self.read(window)
        except Exception:  # noqa: BLE001 - GDAL, zarr and store errors come in many types
            y0, y1, x0, x1 = (int(v) for v in window)
            return np.zeros((y1 - y0, x1 - x0), bool)
        return _valid_block(raw, band_idx=np.asarray(self.band_idx), alpha_pos=self.alpha_pos, nodata=self.nodata)

    def read_rgba(self, window: tuple[int, int, int, int], limits) -> np.ndarray:
        """(y, x, 4) uint8 of ``window``: what :func:`prepare_rgb` holds there."""
        return _to_rgba_block(
            self.read(window), np.asarray(limits), band_idx=np.asarray(self.band_idx), alpha_pos=self.alpha_pos,
            nodata=self.nodata, passthrough=self.passthrough,
        )


#: open GDAL datasets, per thread (a rasterio dataset must not be read from two threads at once)
_GDAL_HANDLES = threading.local()
_GDAL_HANDLES_PER_THREAD = 8


def _file_stamp(path: str):
    try:
        st = os.stat(path)
    except OSError:  # a GDAL virtual path (/vsis3/..., a URL): nothing to compare
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


#: (source, file stamp) of each tile-index source this process opened once
_SOURCES_SEEN: set = set()


def _check_source(path: str, header_stamp: tuple | None = None) -> None:
    """Make a missing or damaged tile-index source raise, naming it, where the GTI driver would skip it.

    A readable local file whose size and modification time are still
    ``header_stamp`` (the index's :data:`~remote_samsing.sources.STAMP_FIELDS`)
    is the file the run's header read opens, so it is not opened again; any
    other source is opened once per process and file version. No handle is
    kept (the GTI driver keeps its own).
    """
    stamp = _file_stamp(path)
    if (stamp is not None and header_stamp is not None and (stamp[1], stamp[0]) == tuple(header_stamp)
            and os.access(path, os.R_OK)):
        return
    key = (path, stamp)
    if key in _SOURCES_SEEN:
        return
    import rasterio

    if is_url(path) or path.startswith("/vsi"):
        configure_remote_reads()
    with quiet_georeferencing(), rasterio.open(path):
        pass
    _SOURCES_SEEN.add(key)


def _gdal_dataset(path: str):
    """This thread's open rasterio dataset for ``path``, reopened when the file changed.

    Kept open between windows so that GDAL's block cache serves the next
    window. A strip-organised GeoTIFF (common from drone and aerial software)
    stores rows the full mosaic width: with a handle closed after each window,
    every window would decode again each strip it crosses, neighbours' included.
    """
    import rasterio

    cache = getattr(_GDAL_HANDLES, "datasets", None)
    if cache is None or _GDAL_HANDLES.pid != os.getpid():
        # new thread, or a forked child: a handle inherited through fork shares
        # its file offset with the parent's, so the child opens its own
        cache = _GDAL_HANDLES.datasets = {}
        _GDAL_HANDLES.pid = os.getpid()
    stamp = _file_stamp(path)
    entry = cache.pop(path, None)
    if entry is not None:
        if entry[0] == stamp and not entry[1].closed:
            cache[path] = entry  # most recently used last
            return entry[1]
        entry[1].close()
    while len(cache) >= _GDAL_HANDLES_PER_THREAD:
        cache.pop(next(iter(cache)))[1].close()
    if is_url(path) or path.startswith("/vsi"):
        configure_remote_reads()  # a worker's first read of a store: GDAL's settings from the AWS variables
    with quiet_georeferencing():
        src = rasterio.open(path)
    cache[path] = (stamp, src)
    return src


@functools.lru_cache(maxsize=8)
def _index_table(path: str, stamp):
    from .sources import index_source_stamps, index_sources

    name = gdal_path(path) if is_url(path) else path
    return (*index_sources(name), index_source_stamps(name))


def _index_sources(path: str):
    """The sources of a tile index, their pixel footprints and header stamps (or None), read once per
    process and index version."""
    return _index_table(path, _file_stamp(path))


#: Bytes of a store mosaic's objects a process keeps during one run (:func:`_zarr_cached`): about three
#: rows of chunks of a 20,000-pixel-wide mosaic, enough for a window's chunks above to be still there
#: when the blocks below are read.
MOSAIC_CACHE_BYTES = 192 << 20


@functools.lru_cache(maxsize=8)
def _zarr_array(path: str, stamp: int):
    return open_zarr_array(path, path=_MOSAIC_VAR, mode="r")


@functools.lru_cache(maxsize=1)
def _zarr_cached(path: str, run: str):
    # one run's at a time: its objects are never read by another run, whose mosaic may have changed
    return open_zarr_cached(path, path=_MOSAIC_VAR, max_bytes=MOSAIC_CACHE_BYTES)


def release_kept_chunks() -> None:
    """Drop the store mosaic's chunks this process keeps for a run (:attr:`WindowReader.run`): called on
    every worker once the run's blocks are read, so the memory is not held through the merge."""
    _zarr_cached.cache_clear()


def _zarr_mosaic(path: str):
    # opened once per process and file version (metadata parsing costs ~1 ms a block); a store's
    # objects have no cheap version stamp: opened once per process
    if is_url(path):
        return _zarr_array(path, 0)
    meta = Path(path) / _MOSAIC_VAR / "zarr.json"
    return _zarr_array(path, meta.stat().st_mtime_ns)


def window_reader(arr: xr.DataArray, *, run: str | None = None) -> WindowReader | None:
    """A :class:`WindowReader` for a mosaic opened by :func:`open_mosaic`, or None.

    None when ``arr`` is not a file opened by :func:`open_mosaic` (an array
    in memory, or one changed after opening): such mosaics only exist as a
    dask graph, and their windows come from ``map_overlap``. ``run`` names
    the run that reads (:attr:`WindowReader.run`).
    """
    src = arr.attrs.get("source")
    if not src or tuple(arr.dims) != ("band", "y", "x"):
        return None
    p = src if is_url(src) else Path(src)
    kind = "zarr" if (src.rstrip("/").endswith(".zarr") if is_url(src) else _is_zarr(p)) else "gdal"
    if kind == "zarr":
        if not is_url(src) and not (p / _MOSAIC_VAR / "zarr.json").exists():
            return None
        dims = _zarr_mosaic(str(p)).metadata.dimension_names
        if dims is not None and tuple(d for d in dims if d != "band") != ("y", "x"):
            return None
        if dims is not None and "band" in dims and dims[0] != "band":
            return None
        shape = _zarr_mosaic(str(p)).shape[-2:]
    else:
        import rasterio

        with quiet_georeferencing(), rasterio.open(p) as ds:
            shape = (ds.height, ds.width)
    if tuple(shape) != (arr.sizes["y"], arr.sizes["x"]):
        return None
    params = _rgba_params(arr)
    crs = arr.rio.crs
    transform = tuple(arr.rio.transform())[:6] if crs is not None else None
    return WindowReader(
        path=src if is_url(src) or src.lower().startswith("gti:") else str(p.resolve()), kind=kind,
        bands=tuple(int(b) for b in arr.attrs["source_bands"]),
        transform=transform, crs=crs.to_string() if crs is not None else None,
        tile_index=bool(arr.attrs.get("tile_index")), run=run, **params
    )


def error_chain(exc: BaseException) -> str:
    """``Type: first line`` of an exception and of what caused it (rasterio's "Read failed" names GDAL's
    reason only in its cause; a store's refusal is said in one line, :func:`remote_samsing._objects.one_line`)."""
    from ._objects import one_line

    parts, seen = [], set()
    while exc is not None and id(exc) not in seen and len(parts) < 3:
        seen.add(id(exc))
        text = one_line(exc)[:200]
        parts.append(f"{type(exc).__name__}: {text}")
        exc = exc.__cause__ or exc.__context__
    return " <- ".join(parts)


def read_valid_mask(reader: WindowReader, *, chunks) -> da.Array:
    """Lazy (y, x) validity mask of a mosaic file, each chunk read through ``reader`` (by the task that
    needs it, on the worker)."""
    shape = (sum(chunks[0]), sum(chunks[1]))
    return da.zeros(shape, chunks=chunks, dtype=bool).map_blocks(_read_valid_chunk, reader=reader, dtype=bool)


def _read_valid_chunk(block, *, reader: WindowReader, block_info=None) -> np.ndarray:
    (y0, y1), (x0, x1) = block_info[0]["array-location"]
    return reader.read_valid((y0, y1, x0, x1))


def as_band_yx(image: Any) -> xr.DataArray:
    """Wrap a numpy/dask (y, x) or (y, x, band) array as a (band, y, x) DataArray."""
    if isinstance(image, xr.DataArray):
        if set(image.dims) != {"band", "y", "x"}:
            if image.ndim == 2 and set(image.dims) == {"y", "x"}:
                return image.expand_dims("band").assign_coords(band=[1])
            raise InputError(f"DataArray dims must be (band, y, x), got {image.dims}")
        return image.transpose("band", "y", "x")
    if isinstance(image, (np.ndarray, da.Array)):
        if image.ndim == 2:
            data = image[None]
        elif image.ndim == 3:
            data = image.transpose(2, 0, 1) if isinstance(image, da.Array) else np.moveaxis(image, -1, 0)
        else:
            raise InputError(f"array input must be (y, x) or (y, x, band), got shape {image.shape}")
        nb = data.shape[0]
        out = xr.DataArray(
            data,
            dims=("band", "y", "x"),
            coords={"band": np.arange(1, nb + 1)},
        )
        out.attrs["alpha_band"] = None
        out.attrs["source_bands"] = list(range(1, nb + 1))
        if np.dtype(out.dtype).name not in SUPPORTED_DTYPES and np.dtype(out.dtype) != bool:
            raise UnsupportedDtypeError(
                f"array dtype {np.dtype(out.dtype).name} cannot be converted to 8-bit RGB",
                hint=f"supported dtypes: {', '.join(SUPPORTED_DTYPES)}",
            )
        return out
    raise InputError(
        f"cannot segment an object of type {type(image).__name__}",
        hint="pass a path, an xarray DataArray (band, y, x), or a numpy/dask array",
    )


def to_zarr(
    mosaic: xr.DataArray | str | os.PathLike,
    store: str | os.PathLike,
    *,
    tile_size: int = 1000,
    overwrite: bool = False,
    progress: bool = False,
) -> Path | str:
    """Write a mosaic as a Zarr v3 array chunked to the tile size.

    CRS and transform are kept (rioxarray's ``spatial_ref`` convention), so
    :func:`open_mosaic` and rioxarray read them back. Chunks are written
    whole and unsharded (sharded writes through dask's path form lose data:
    shared/design/stack.md §6).

    Parameters
    ----------
    mosaic : DataArray, or what :func:`open_mosaic` takes
        (band, y, x) mosaic, or its input: a path or URL, a folder, a glob, an
        ``@list``, or a list of them (read as :func:`open_mosaic` reads them).
    store : path or URL
        Output ``*.zarr`` directory, or a URL on an object store
        (``s3://bucket/mosaic.zarr``, through fsspec). A store has no atomic
        rename, so there the mosaic is written in place and marked complete
        last; :func:`open_mosaic` refuses a store at a URL without that mark.
    tile_size : int
        Spatial chunk size.
    overwrite : bool
        Replace an existing store.
    """
    from .exceptions import OutputExistsError

    check_int("tile_size", tile_size, minimum=1)
    if is_url(os.fspath(store)):
        check_url(os.fspath(store))
        configure_remote_reads()
    if not isinstance(mosaic, xr.DataArray):
        mosaic = open_mosaic(mosaic, chunks=tile_size)
    arr = mosaic.chunk({"band": -1, "y": tile_size, "x": tile_size})
    # scale/offset/_FillValue attributes would make xarray decode to float on read
    drop = {"source_bands", "tile_index", "scale_factor", "add_offset", "_FillValue", "missing_value"}
    attrs = {k: v for k, v in arr.attrs.items() if v is not None and k not in drop}
    arr = arr.copy()
    arr.attrs = attrs
    nodata = mosaic.rio.nodata
    arr.encoding = {}
    ds = arr.to_dataset(name=_MOSAIC_VAR)
    if nodata is not None:
        ds[_MOSAIC_VAR].attrs["_FillValue_nodata"] = float(nodata)
    if is_url(os.fspath(store)):
        return _to_zarr_url(ds, os.fspath(store), overwrite=overwrite, progress=progress)
    out = Path(os.fspath(store))
    _check_replaceable(out, source=mosaic.attrs.get("source"))
    if out.exists() and not overwrite:
        raise OutputExistsError(f"`{out}` already exists", hint="pass overwrite=True / --overwrite")
    tmp = temporary_name(out)
    try:
        _write_mosaic_store(ds, str(tmp), progress=progress)
        replace_path(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


#: Files whose presence makes a folder a Zarr store (v3, v2).
_ZARR_METADATA = ("zarr.json", ".zgroup", ".zarray")


def _check_replaceable(out: Path, *, source: str | None) -> None:
    """Refuse, whatever ``overwrite`` says, an ``out`` that is the mosaic read, a file, or a folder holding
    anything but a Zarr store: replacing it would destroy data that is no earlier output."""
    from .exceptions import OutputExistsError

    hint = "name a new path for the Zarr mosaic, e.g. mosaic.zarr"
    if source is not None and not is_url(source) and os.path.abspath(source) == os.path.abspath(out):
        raise OutputExistsError(f"OUT `{out}` is the mosaic being read", hint=hint)
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"OUT `{out}` is an existing file, not a Zarr folder", hint=hint)
    if out.is_dir() and list_names(out) and not any((out / m).exists() for m in _ZARR_METADATA):
        raise OutputExistsError(f"OUT `{out}` is a folder holding other files, not a Zarr store", hint=hint)


#: Root attribute written last into a mosaic store: the store is complete.
_COMPLETE_ATTR = "remote_samsing_complete"


def _write_mosaic_store(ds: xr.Dataset, target: str, *, progress: bool) -> None:
    """Write ``ds`` into the Zarr store ``target``, then mark it complete and consolidate its metadata."""
    import zarr

    job = ds.to_zarr(target, zarr_format=3, mode="w", consolidated=False, compute=False)
    compute_tracked([job], label="zarr", enabled=progress)
    zarr.open_group(target, mode="r+", zarr_format=3).attrs[_COMPLETE_ATTR] = True
    consolidate_metadata(target)  # after the mark, which it then holds: xr.open_zarr(OUT) opens it as it is


def _to_zarr_url(ds: xr.Dataset, url: str, *, overwrite: bool, progress: bool) -> str:
    """:func:`to_zarr` onto an object store: in place (a store has no rename), marked complete last."""
    from .exceptions import OutputExistsError

    fs, root = url_to_fs(url)
    if fs.exists(root):
        if not overwrite:
            raise OutputExistsError(f"`{url}` already exists", hint="pass overwrite=True / --overwrite")
        fs.rm(root, recursive=True)
    _write_mosaic_store(ds, url, progress=progress)
    return url


def open_labels(path: str | os.PathLike) -> xr.DataArray:
    """Open a label raster written by remote_samsing (``labels.zarr`` or ``.tif``), local or at a URL.

    A product of a run (a ``run.json`` beside it) is opened only once that run
    is complete: products on a store are written in place, so before then
    they may be partly written.

    Returns a dask-backed (y, x) DataArray with CRS and transform.
    """
    p = location(path)
    if not p.exists():
        raise InputNotFoundError(f"labels `{p}` do not exist")
    check_run_complete(p)
    return open_run_labels(p)


def check_run_complete(product) -> None:
    """Raise :class:`IncompleteOutputError` if ``product`` belongs to a run (``run.json`` beside it)
    that has not finished."""
    record = location(product).parent / "run.json"
    if not record.exists():
        return
    try:
        data = json.loads(record.read_text())
    except ValueError:
        data = {"fingerprint": None}  # a run's record, damaged: not complete
    if not isinstance(data, dict) or "fingerprint" not in data:
        return  # some other program's run.json
    if data.get("complete") is not True:
        raise IncompleteOutputError(
            f"`{product}` belongs to a run that has not finished (`{record}` does not say complete)",
            hint="rerun the same `remote-samsing segment` command: it resumes and completes the outputs")


def open_run_labels(path) -> xr.DataArray:
    """:func:`open_labels` without the completeness check: for the run that is writing them."""
    import rioxarray  # noqa: F401

    p = location(path)
    if _is_zarr(p):
        ds = xr.open_zarr(store_path(p), zarr_format=3, consolidated=False, mask_and_scale=False)
        if "labels" not in ds:
            raise InputError(f"Zarr `{p}` has no `labels` array")
        return ds["labels"]
    if is_remote(p):
        configure_remote_reads()  # GDAL reads the COG from the store
    try:
        with quiet_georeferencing():
            arr = rioxarray.open_rasterio(store_path(p), chunks={"band": -1, "y": 1024, "x": 1024}, lock=False)
    except Exception as exc:  # noqa: BLE001
        raise InputNotFoundError(f"cannot read label raster `{p}`: {exc}") from None
    if arr.sizes["band"] != 1:
        raise InputError(f"label raster `{p}` must have one band, has {arr.sizes['band']}")
    return arr.isel(band=0, drop=True)
