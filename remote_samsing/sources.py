"""Sources: what a user points at, turned into the rasters of one mosaic and its target grid.

A mosaic may come as one file, many files, a folder, a glob, an ``@list``
file, a GDAL VRT or GTI tile index, or a STAC Item/ItemCollection, in one or
several CRSs and resolutions. :func:`resolve_mosaic` expands those forms into
sources, reads each source's header (never its pixels), checks that bands and
dtype agree, chooses one target grid, and describes the sources to GDAL as a
tile index for its GTI driver (https://gdal.org/en/stable/drivers/raster/gti.html).
GDAL then mosaics and warps each window read from only the sources the window
touches, found through the index's R-tree: no mosaic file is written and no
warping is done here.

* **Target grid.** The CRS with the largest share of the sources' pixels, then
  the resolution with the largest share among the sources in that CRS, with
  its pixel edges aligned to the first source on it, so sources that already
  share a grid keep it pixel for pixel. It covers the union of the footprints;
  what no source covers is nodata. A grid without pixels or too large to read
  (a ``resolution`` in the wrong units) is refused; sources that cover less
  than 1 % of it (far apart, or one in a wrong CRS), and a source that covers
  less than one pixel of it, are warned of.
* **Overlaps.** Where footprints overlap, the source listed last wins, as in a
  VRT (the index's sort field is the source's position).
* **Resampling** (only where a source is not on the target grid):
  ``bilinear`` by default. Nearest neighbour turns an upsampled source into
  blocks of equal pixels whose straight edges a segmenter outlines as objects;
  bilinear keeps edges where the image has them.
* **Nodata.** Each source's own nodata and alpha are transparent. The mosaic's
  nodata is the value most sources declare; when none declares one and the
  footprints leave gaps, it is 0.
* **Tile indexes GDAL cannot open.** rasterio's GDAL has no FlatGeobuf or
  Parquet driver, so a GTI index in FlatGeobuf (``.gti.fgb``) or GeoParquet
  (``.gti.parquet``, ``GTI:x.parquet``) is read with pyogrio or pyarrow
  instead and counts as the list of its rasters, in the order GTI draws them
  (ascending ``SORT_FIELD`` of its layer metadata, else feature order): the
  grid is then chosen as for any list, not taken from the index.
"""

from __future__ import annotations

import copy
import glob as _glob
import hashlib
import json
import math
import os
import uuid
import warnings
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from ._files import check_url, gdal_path, is_url, join_location, store_variables
from ._progress import counted
from .exceptions import (ConfigError, InputError, InputNotFoundError, RemoteSamsingError, RemoteSamsingWarning,
                         UnsupportedDtypeError)

__all__ = [
    "Source",
    "Grid",
    "Mosaic",
    "resolve_mosaic",
    "expand_inputs",
    "describe_sources",
    "target_grid",
    "write_tile_index",
    "cached_index",
    "naming_inputs",
    "TILE_INDEX",
    "WINDOW_FIELDS",
    "index_source_stamps",
    "index_sources",
    "RASTER_SUFFIXES",
    "RESAMPLINGS",
    "DEFAULT_RESAMPLING",
]

#: What a folder's listing keeps (PNG/JPEG only with georeferencing beside them, see _georeferenced).
RASTER_SUFFIXES = (".tif", ".tiff", ".jp2", ".vrt", ".png", ".jpg", ".jpeg")
#: GDAL's resampling methods the GTI driver takes.
RESAMPLINGS = ("nearest", "bilinear", "cubic", "cubicspline", "lanczos", "average", "mode")
DEFAULT_RESAMPLING = "bilinear"

_SIDECARS = (".aux.xml", ".wld", ".pgw", ".pngw", ".jgw", ".jpgw")
_INDEX_LAYER = "sources"
_GTI_SUFFIX = ".gti.gpkg"
#: Names GDAL's GTI driver recognises as a tile index.
_GTI_SUFFIXES = (_GTI_SUFFIX, ".gti.fgb", ".gti.parquet", ".gti")
#: A tile index's vector format by suffix: the GDAL driver that reads it (for rasterio's GDAL to have).
_INDEX_DRIVERS = {".gpkg": "GPKG", ".fgb": "FlatGeobuf", ".parquet": "Parquet"}
#: How deep ``@FILE`` lists may name other lists (deeper: a list that names itself).
_LIST_DEPTH = 8
#: The most pixels a target grid may have a side (GDAL's raster size is a C int) and in all.
_MAX_GRID_SIDE = 2**31 - 1
_MAX_GRID_PIXELS = 2**40
#: The fields of a tile index's features holding each source's footprint in pixels of the grid.
WINDOW_FIELDS = ("row_start", "row_stop", "col_start", "col_stop")
#: Each local source's size and modification time as the run's header read finds them (-1 for a store's
#: object): a worker that finds them unchanged knows the source opens without opening it.
STAMP_FIELDS = ("source_size", "source_mtime_ns")
#: The tile index's name in a run's OUTDIR.
TILE_INDEX = "sources" + _GTI_SUFFIX


@dataclass(frozen=True, kw_only=True)
class Source:
    """One raster of a mosaic, as its header describes it.

    Attributes
    ----------
    location : str
        Absolute path or URL.
    stamp : dict
        What changes when the file does: size and modification time, or a
        store's ETag; under ``via``, those of the VRTs and tile indexes it is
        read through.
    crs : str or None
        The CRS as WKT.
    transform : tuple of 6 float
        Affine (a, b, c, d, e, f).
    shape : (int, int)
        (height, width).
    count : int
    dtype : str
    nodata : float or None
    colorinterp : tuple of str
    """

    location: str
    stamp: dict
    crs: str | None
    transform: tuple
    shape: tuple
    count: int
    dtype: str
    nodata: float | None
    colorinterp: tuple = ()

    @property
    def pixels(self) -> int:
        return int(self.shape[0]) * int(self.shape[1])

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) in the source's CRS."""
        a, _, c, _, e, f = self.transform
        xs, ys = (c, c + a * self.shape[1]), (f, f + e * self.shape[0])
        return min(xs), min(ys), max(xs), max(ys)

    def identity(self) -> dict:
        """The record of this source in ``run.json``: where, its stamp, and its raster structure."""
        return {"location": self.location, **self.stamp, "bands": self.count, "dtype": self.dtype,
                "shape": list(self.shape), "crs": _short_crs(self.crs),
                "transform": [round(v, 12) for v in self.transform], "nodata": self.nodata}


@dataclass(frozen=True, kw_only=True)
class Grid:
    """The pixel grid a mosaic is read on: CRS, transform, size, bands, dtype, nodata, resampling."""

    crs: str | None
    transform: tuple
    shape: tuple
    count: int
    dtype: str
    nodata: float | None
    resampling: str = DEFAULT_RESAMPLING
    colorinterp: tuple = ()

    def identity(self) -> dict:
        return {"crs": _short_crs(self.crs), "transform": [round(v, 12) for v in self.transform],
                "size": list(self.shape), "bands": self.count, "dtype": self.dtype, "nodata": self.nodata,
                "resampling": self.resampling}

    def window_of(self, source: Source) -> tuple[int, int, int, int]:
        """``(y0, y1, x0, x1)``: the pixels of this grid that ``source``'s footprint covers (clipped)."""
        from rasterio.warp import transform_bounds

        left, bottom, right, top = source.bounds
        if source.crs and self.crs and not _same_crs(source.crs, self.crs):
            left, bottom, right, top = transform_bounds(source.crs, self.crs, left, bottom, right, top,
                                                        densify_pts=21)
        a, _, c, _, e, f = self.transform
        cols = sorted(((left - c) / a, (right - c) / a))
        rows = sorted(((top - f) / e, (bottom - f) / e))
        x0, x1 = max(0, math.floor(cols[0] + 1e-6)), min(self.shape[1], math.ceil(cols[1] - 1e-6))
        y0, y1 = max(0, math.floor(rows[0] + 1e-6)), min(self.shape[0], math.ceil(rows[1] - 1e-6))
        return (y0, max(y0, y1), x0, max(x0, x1))


@dataclass(frozen=True, kw_only=True)
class Mosaic:
    """The sources of one mosaic, its grid, and what GDAL opens to read it.

    Attributes
    ----------
    inputs : tuple of str
        The inputs as the user named them (absolute): a run's identity.
    sources : tuple of Source
        Every raster a run reads. A VRT or tile index counts as the rasters
        it reads; their stamps hold its own.
    grid : Grid
    direct : str or None
        The one file GDAL reads as it is (a single raster, a VRT, a GTI index
        or a Zarr mosaic); None when a tile index is written for the sources.
    windows : tuple
        Each source's footprint on the grid, ``(y0, y1, x0, x1)``.
    """

    inputs: tuple
    sources: tuple
    grid: Grid
    direct: str | None
    windows: tuple = field(default=())

    @property
    def crss(self) -> list[str]:
        return sorted({_short_crs(s.crs) or "none" for s in self.sources})

    @property
    def resolutions_by_crs(self) -> list[tuple[str, tuple[float, float]]]:
        """The sources' (CRS, (x, y) resolution) pairs, each once."""
        return sorted({(_short_crs(s.crs) or "none", _resolution_of(s)) for s in self.sources})

    @property
    def label(self) -> str:
        """The mosaic as messages name it: its sources and the inputs that name them."""
        names = ", ".join(f"`{i}`" for i in self.inputs[:2])
        more = f" and {len(self.inputs) - 2} more" if len(self.inputs) > 2 else ""
        return f"the mosaic of {counted(len(self.sources), 'sources')} ({names}{more})"

    def token(self) -> str:
        """A digest of everything the tile index holds: the file name of a cached index."""
        text = json.dumps({"grid": self.grid.identity(), "colorinterp": self.grid.colorinterp,
                           "sources": [[s.identity(), w] for s, w in zip(self.sources, self.windows)]},
                          sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:20]


@contextmanager
def naming_inputs(mosaic: Mosaic, index: str):
    """Errors raised in the block name ``mosaic`` by the user's inputs, not by ``index``, the tile index
    file written for it: that file is no name the user knows."""
    try:
        yield
    except RemoteSamsingError as exc:
        if index not in str(exc.args[0]):
            raise
        renamed = copy.copy(exc)
        renamed.args = (str(exc.args[0]).replace(f"`{index}`", mosaic.label).replace(index, mosaic.label),)
        raise renamed from None


def _short_crs(crs: str | None) -> str | None:
    """``EPSG:n`` where the CRS has a code, else its WKT: what run.json and messages show."""
    if not crs:
        return None
    from rasterio.crs import CRS

    c = CRS.from_user_input(crs)
    epsg = c.to_epsg()
    return f"EPSG:{epsg}" if epsg else c.to_wkt()


def _same_crs(a: str, b: str) -> bool:
    from rasterio.crs import CRS

    return CRS.from_user_input(a) == CRS.from_user_input(b)


# ---------------------------------------------------------------------------
# the forms of INPUT
# ---------------------------------------------------------------------------
def _has_magic(text: str) -> bool:
    return any(ch in text for ch in "*?[")


def _is_zarr(text: str) -> bool:
    stripped = text.rstrip("/")
    return stripped.endswith(".zarr") or (not is_url(text) and (Path(text) / "zarr.json").exists())


def _georeferenced(path: str) -> bool:
    """A PNG/JPEG in a folder counts as a raster of the mosaic only with georeferencing beside it."""
    stem = os.path.splitext(path)[0]
    return any(os.path.exists(path + s) or os.path.exists(stem + s) for s in _SIDECARS)


def _keeps(name: str) -> bool:
    lower = name.lower()
    if lower.endswith(_GTI_SUFFIXES):
        return True
    if not lower.endswith(RASTER_SUFFIXES) or lower.endswith(".aux.xml"):
        return False
    if lower.endswith((".png", ".jpg", ".jpeg")):
        return is_url(name) or _georeferenced(name)
    return True


def _fs(url: str):
    """fsspec's filesystem for ``url`` and the path inside it, with a named error for a missing extra."""
    from ._files import url_to_fs

    try:
        return url_to_fs(url)
    except ImportError as exc:
        raise InputError(f"cannot list `{url}`: {exc}",
                         hint="install the store's extra: pip install \"remote-samsing[gcs]\" or \"[azure]\"") from None


def _listed(url: str, listing, *, folder: bool = False):
    """``listing(fs, path)`` on the store of ``url``; a store that cannot be listed (unreachable, no
    credentials, no permission) is one error naming the URL and what reaches the store, and so is a
    ``folder`` that is not there (a pattern that finds nothing lists nothing: its caller says so)."""
    fs, path = _fs(url)
    try:
        return fs, listing(fs, path)
    except FileNotFoundError:
        if folder:
            raise InputNotFoundError(f"folder `{url}` does not exist", hint="check the URL") from None
        return fs, []
    except Exception as exc:  # noqa: BLE001 - fsspec's stores raise many types for one cause
        from .io import error_chain

        raise InputNotFoundError(f"cannot list `{url}`: {error_chain(exc)}",
                                 hint=f"check the URL and what reaches its store: {store_variables(url)}") from None


def _missing_bucket(url: str) -> str | None:
    """The bucket (container) of ``url`` when the store says it does not exist, else None (also when the
    store cannot be asked: the caller's own message stands)."""
    scheme, rest = url.split("://", 1)
    bucket = f"{scheme}://{rest.split('/', 1)[0]}"
    try:
        fs, path = _fs(bucket)
        return None if fs.exists(path) else bucket
    except Exception:  # noqa: BLE001 - fsspec's stores raise many types for one cause
        return None


def _list_folder(folder: str, *, recursive: bool) -> list[str]:
    """The rasters of ``folder`` (local or on a store), sorted by name."""
    if is_url(folder):
        fs, names = _listed(folder, lambda fs, root: fs.find(root) if recursive else fs.ls(root, detail=False),
                            folder=True)
        return sorted(u for u in (fs.unstrip_protocol(n) for n in names) if _keeps(u))
    if not recursive:
        return sorted(p for p in _glob.glob(os.path.join(folder, "*")) if os.path.isfile(p) and _keeps(p))
    found = []
    for root, dirs, files in os.walk(folder, followlinks=True):
        # as a glob: no hidden names; and no run's OUTDIR, whose labels.tif and tile index are products
        dirs[:] = [d for d in dirs if not d.startswith(".") and not _is_run_folder(os.path.join(root, d))]
        found += [p for p in (os.path.join(root, f) for f in files if not f.startswith(".")) if _keeps(p)]
    return sorted(found)


def _is_run_folder(folder: str) -> bool:
    """A folder a run wrote (its run.json and staging), whose rasters are that run's products."""
    return os.path.isfile(os.path.join(folder, "run.json")) and os.path.isdir(os.path.join(folder, "staging"))


def _match_glob(pattern: str) -> list[str]:
    if is_url(pattern):
        fs, found = _listed(pattern, lambda fs, path: fs.glob(path))
        return sorted(fs.unstrip_protocol(p) for p in found)
    return sorted(os.path.abspath(p) for p in _glob.glob(os.path.expanduser(pattern), recursive=True)
                  if os.path.isfile(p))


def _said(exc: BaseException) -> str:
    """An error's whole text on one line (a library's multi-line message kept whole), else its type."""
    return " ".join(str(exc).split()) or type(exc).__name__


def _read_text(location: str) -> str:
    """The text of a list or STAC file (a byte order mark dropped, as editors on Windows write one), or an
    error naming it."""
    try:
        if is_url(location):
            fs, path = _fs(location)
            with fs.open(path, "rb") as f:
                return f.read().decode("utf-8-sig")
        return Path(location).read_text(encoding="utf-8-sig")
    except RemoteSamsingError:
        raise
    except FileNotFoundError:  # what fsspec raises for an HTTP 404 too
        raise InputNotFoundError(f"`{location}` does not exist" + (" or cannot be reached" if is_url(location) else ""),
                                 hint="check the URL" if is_url(location) else "check the path") from None
    except Exception as exc:  # noqa: BLE001 - files, stores and HTTP raise many types
        cause = _said(exc)
        raise InputNotFoundError(f"cannot read `{location}`: {cause}", hint=(
            f"check the URL and what reaches its store: {store_variables(location)}" if is_url(location)
            else "is it a UTF-8 text file?")) from None


def _is_folder(location: str) -> bool:
    """A local folder, or a prefix on a store (a URL ending in ``/``, or one that names no object)."""
    if not is_url(location):
        return os.path.isdir(location)
    if location.endswith("/"):
        return True
    if location.lower().startswith(("http://", "https://")) or location.lower().endswith(RASTER_SUFFIXES):
        return False
    try:
        fs, path = _fs(location)
        return fs.isdir(path)
    except Exception:  # noqa: BLE001 - a store that cannot be asked: read as a raster, GDAL says why
        return False


def _is_pattern(item: str) -> bool:
    """``item`` is a glob: it has ``*?[`` and is not an existing file's name (``odd[1].tif``) or an
    http(s) URL (whose ``?`` starts a query, e.g. a signed URL)."""
    if not _has_magic(item) or item.lower().startswith(("http://", "https://")):
        return False
    return is_url(item) or not os.path.exists(os.path.expanduser(item))


@dataclass
class _Asset:
    """The STAC asset asked for (None: the default choice), and whether any input was a STAC document."""

    name: str | None
    read_stac: bool = False


def _from_list(list_file: str, *, recursive: bool, asset: _Asset, depth: int = 0) -> list[str]:
    """The inputs named in an ``@FILE`` list, one per line (blank lines and ``#`` comments skipped); an
    ``@FILE`` line is a list in turn.

    Local entries are checked here, so a missing one is named with its line number; an entry on a
    store is checked when its header is read (one request, not two).
    """
    if not is_url(list_file) and os.path.isdir(list_file):
        raise InputError(f"`{list_file}` is a folder, not a list file",
                         hint=f"pass the folder itself, without the `@`: {list_file}")
    if not is_url(list_file) and not os.path.isfile(list_file):
        raise InputNotFoundError(f"list file `{list_file}` does not exist", hint="`@FILE` names a text file with "
                                 "one path or URL per line")
    out = []
    for number, line in enumerate(_read_text(list_file).splitlines(), start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        if text.startswith("@"):
            out += _nested_list(list_file, number, text, recursive=recursive, asset=asset, depth=depth)
            continue
        entry = join_location(list_file, text)
        if not is_url(entry) and not _is_pattern(entry) and not os.path.exists(entry):
            raise InputNotFoundError(f"`{list_file}` line {number}: `{text}` does not exist",
                                     hint="paths in a list are relative to the list file's folder")
        out += _expand_one(entry, recursive=recursive, asset=asset, nested=True)
    if not out:
        raise InputNotFoundError(f"list file `{list_file}` names no input", hint="write one path or URL per line")
    return out


def _nested_list(list_file: str, number: int, text: str, *, recursive: bool, asset: _Asset,
                 depth: int) -> list[str]:
    """The inputs of the list that line ``number`` of ``list_file`` names (``@other.txt``)."""
    if depth + 1 >= _LIST_DEPTH:
        raise InputError(f"`{list_file}` line {number}: `{text}` nests lists more than {_LIST_DEPTH} deep",
                         hint="does a list name itself? name the rasters, or fewer levels of lists")
    return _from_list(join_location(list_file, text[1:]), recursive=recursive, asset=asset, depth=depth + 1)


def _expand_one(item: str, *, recursive: bool, asset: _Asset, nested: bool = False,
                literal: bool = False) -> list[str]:
    """One INPUT as the locations of its rasters (or its one Zarr mosaic); ``literal``: a name a
    listing returned, never a pattern."""
    if item.startswith("@") and not nested:
        return _from_list(check_url(item[1:]) if is_url(item[1:]) else os.path.abspath(os.path.expanduser(item[1:])),
                          recursive=recursive, asset=asset)
    if item.lower().startswith("gti:"):  # GDAL's own prefix for a tile index
        index = _gti_name(item)
        if not _is_url_or_vsi(index[4:]) and not os.path.exists(index[4:]):
            raise InputNotFoundError(f"tile index `{item[4:]}` does not exist", hint="check the path after `GTI:`")
        return [index]
    if is_url(item):
        check_url(item)
    if not literal and _is_pattern(item):
        found = [p for p in _match_glob(item) if _keeps(p) or _is_stac_name(p)]
        if not found:
            bucket = _missing_bucket(item) if is_url(item) else None
            raise InputNotFoundError(f"the pattern `{item}` matches no raster"
                                     + (f": bucket `{bucket}` does not exist" if bucket else ""),
                                     hint="check the URL" if bucket else
                                     "check the pattern; quote it so that the shell passes it on unexpanded")
        return [loc for p in found for loc in _expand_one(p, recursive=recursive, asset=asset, nested=True,
                                                          literal=True)]
    location = item if is_url(item) else os.path.abspath(os.path.expanduser(item))
    if _is_zarr(location):
        return [location]
    if _is_stac_name(location):
        from .stac import asset_hrefs

        asset.read_stac = True
        return _check_named(asset_hrefs(location, _read_text(location), asset=asset.name), by=location)
    if _is_folder(location):
        found = _list_folder(location, recursive=recursive)
        if not found:
            deeper = not recursive and _has_subfolders(location)
            raise InputNotFoundError(
                f"folder `{item}` holds no raster ({', '.join(RASTER_SUFFIXES)})",
                hint="pass --recursive to look in its subfolders" if deeper else "check the folder")
        return found
    if not is_url(location) and not os.path.exists(location):
        raise InputNotFoundError(f"input `{item}` does not exist", hint="check the path")
    return [location]


def _is_stac_name(location: str) -> bool:
    return location.lower().rstrip("/").endswith((".json", ".geojson"))


def _has_subfolders(folder: str) -> bool:
    """Whether ``folder`` (local, or a prefix on a store) holds a folder, which ``--recursive`` would read."""
    if not is_url(folder):
        with os.scandir(folder) as entries:
            return any(entry.is_dir() for entry in entries)
    try:
        fs, root = _fs(folder)
        return any(info.get("type") == "directory" for info in fs.ls(root, detail=True))
    except Exception:  # noqa: BLE001 - a store that cannot be asked: --recursive may still help
        return True


def _is_url_or_vsi(location: str) -> bool:
    return is_url(location) or location.startswith("/vsi")


def _gti_name(item: str) -> str:
    """``GTI:path`` with ``path`` absolute: GDAL opens a relative one from the working directory, which a
    worker does not share."""
    path = item[4:]
    return "GTI:" + (path if _is_url_or_vsi(path) else os.path.abspath(os.path.expanduser(path)))


def _check_named(locations: list[str], *, by: str) -> list[str]:
    """``locations``, each local one checked to exist, else an error naming ``by``, the file that names it."""
    for location in locations:
        if not _is_url_or_vsi(location) and not os.path.exists(location):
            raise InputNotFoundError(f"`{location}`, named by `{by}`, does not exist",
                                     hint="a relative path is relative to the folder of the file that names it")
    return locations


def expand_inputs(inputs, *, recursive: bool = False, asset: str | None = None, exclude=None) -> list[str]:
    """The locations of every raster that ``inputs`` name, in order, each once (its last position).

    Parameters
    ----------
    inputs : str, path-like, or a sequence of them
        Raster files or URLs, folders, globs (local or on a store),
        ``@FILE`` lists, VRT/GTI files, STAC Item/ItemCollection JSON files.
    recursive : bool
        Descend into the subfolders of a folder.
    asset : str, optional
        The STAC asset to read (default: see :func:`remote_samsing.stac.asset_hrefs`).
    exclude : path, optional
        A local folder whose files are left out of folder and glob listings (a run's OUTDIR).

    Raises
    ------
    InputNotFoundError
        An input, or what it names, is not there or cannot be listed.
    ConfigError
        ``asset`` is given but no input is a STAC Item or ItemCollection.
    """
    items = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    if not items:
        raise InputNotFoundError("no input given", hint="name a raster, a folder, a glob, an @list or a STAC file")
    picked = _Asset(asset)
    found = [loc for item in items for loc in _expand_one(os.fspath(item), recursive=recursive, asset=picked)]
    if asset is not None and not picked.read_stac:  # an --asset that picks nothing: said, never ignored
        raise ConfigError(f"--asset {asset} picks an asset of STAC Items, but no input is a STAC Item or "
                          "ItemCollection", hint="drop --asset, or name the STAC JSON file")
    found = [r for loc in found for r in (_index_rasters(loc) if _is_tile_index(loc) and not _gdal_reads_index(loc)
                                          else [loc])]
    if exclude is not None:  # a run's own OUTDIR inside an input folder: its products are no sources
        inside = os.path.join(os.path.abspath(os.fspath(exclude)), "")
        found = [loc for loc in found if is_url(loc) or not loc.startswith(inside)]
    last = {loc: i for i, loc in enumerate(found)}  # a source named twice is drawn at its last position
    return [loc for i, loc in enumerate(found) if last[loc] == i]


# ---------------------------------------------------------------------------
# headers and stamps
# ---------------------------------------------------------------------------
def _stamp(location: str) -> dict:
    """Size and modification time of a file, or size and ETag (or generation) of a store object."""
    location = _vsi_to_url(_without_gti(location))
    if not is_url(location):
        st = os.stat(location)
        return {"size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns)}
    try:
        fs, path = _fs(location)
        info = fs.info(path)
    except Exception:  # noqa: BLE001 - a store fsspec cannot ask (no extra): GDAL still reads it
        info = {}
    tag = next((info[k] for k in ("ETag", "etag", "generation", "md5Hash", "LastModified", "last_modified",
                                  "mtime") if info.get(k) is not None), None)
    if tag is None:  # nothing tells an edit apart: the source counts as changed at every rerun
        warnings.warn(f"cannot tell whether `{location}` changes (no size and ETag from the store; is the "
                      "store's extra installed?): a rerun segments its blocks again", RemoteSamsingWarning,
                      stacklevel=2)
        return {"size": info.get("size"), "etag": None, "unknown": uuid.uuid4().hex}
    return {"size": info.get("size"), "etag": str(tag).strip('"')}


def _describe(location: str) -> Source:
    """The header of one source, or a one-line error naming it."""
    import rasterio

    from .io import configure_remote_reads, quiet_georeferencing, unreadable_raster

    if is_url(location):
        configure_remote_reads()
    try:
        with quiet_georeferencing(), rasterio.open(_gdal_name(location)) as src:
            crs = src.crs.to_wkt() if src.crs else None
            header = dict(crs=crs, transform=tuple(src.transform)[:6], shape=(src.height, src.width),
                          count=src.count, dtype=src.dtypes[0], nodata=src.nodata,
                          colorinterp=tuple(c.name for c in src.colorinterp))
        stamp = _stamp(location)  # after the open: a source that cannot be read warns of nothing else
    except Exception as exc:  # noqa: BLE001 - GDAL and stores raise many types
        cause = str(exc)
    else:
        return Source(location=location, stamp=stamp, **header)
    raise unreadable_raster(location, cause)


def _gdal_name(location: str) -> str:
    """What GDAL opens for ``location``: rasterio's own URL handling for ``https://`` (it keeps
    GDAL's error messages about the URL), GDAL's virtual path for a store's object."""
    return location if location.lower().startswith(("http://", "https://")) else gdal_path(location)


#: headers read at once from URLs: each is a request, and requests in flight hide their latency
_HEADER_REQUESTS = 16


def describe_sources(locations: Sequence[str], *, threads: int | None = None) -> list[Source]:
    """Each location's header, read concurrently (headers on a store are one request each).

    ``threads`` defaults to :data:`_HEADER_REQUESTS` where a location is a URL, else to the cores this
    process may use: a local header is quick to read, and more threads only contend for the GIL.
    """
    from dask.system import CPU_COUNT  # honours cgroup quotas and affinity

    from .io import quiet_georeferencing

    if threads is None:
        threads = _HEADER_REQUESTS if any(is_url(loc) for loc in locations) else int(CPU_COUNT)
    with quiet_georeferencing(), ThreadPoolExecutor(max_workers=max(1, min(threads, len(locations)))) as pool:
        return list(pool.map(_describe, locations))


def _check_agree(sources: Sequence[Source]) -> None:
    """Band count, dtype and georeferencing agree across sources, or a one-line error naming the first odd one."""
    from .io import SUPPORTED_DTYPES

    first = sources[0]
    if first.dtype not in SUPPORTED_DTYPES:
        raise UnsupportedDtypeError(f"`{first.location}` has dtype {first.dtype}, which cannot be converted to "
                                    "8-bit RGB", hint=f"supported dtypes: {', '.join(SUPPORTED_DTYPES)}")
    for s in sources[1:]:
        if s.count != first.count or s.dtype != first.dtype:
            raise InputError(
                f"`{s.location}` has {s.count} band(s) of {s.dtype}, but `{first.location}` has {first.count} of "
                f"{first.dtype}", hint="the sources of one mosaic need the same bands and dtype: leave it out or "
                                       "convert it")
    for s in sources:
        if s.crs is None:
            raise InputError(f"`{s.location}` has no CRS, so it cannot be placed among the other sources",
                             hint="georeference it (a .aux.xml or world file), or segment it on its own")
        if s.transform[1] != 0 or s.transform[3] != 0 or s.transform[0] <= 0 or s.transform[4] >= 0:
            raise InputError(f"`{s.location}` is not on a north-up grid (transform {s.transform})",
                             hint="warp it to a north-up grid first (e.g. gdalwarp, or rasterio.warp)")


# ---------------------------------------------------------------------------
# the target grid
# ---------------------------------------------------------------------------
def _resolution_of(s: Source) -> tuple[float, float]:
    return (abs(s.transform[0]), abs(s.transform[4]))


def _largest_share(keys, weights):
    totals: Counter = Counter()
    for k, w in zip(keys, weights):
        totals[k] += w
    best = max(totals.values())
    return next(k for k in keys if totals[k] == best)  # ties: the first listed


def check_resolution(resolution) -> tuple[float, float] | None:
    """``resolution`` (one positive number, or two: x and y) as an ``(x, y)`` tuple; None stays None."""
    if resolution is None:
        return None
    try:
        values = [resolution] * 2 if isinstance(resolution, (int, float)) else list(resolution)
        res = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        res = ()
    if len(res) != 2 or not all(math.isfinite(v) and v > 0 for v in res):
        raise ConfigError(f"`resolution` must be one positive number or two (x, y), got {resolution!r}")
    return res


def _check_crs(crs) -> str | None:
    if crs is None:
        return None
    import rasterio
    from rasterio.crs import CRS
    from rasterio.errors import CRSError

    try:
        with rasterio.Env():  # PROJ's complaint reaches the error below, not stderr as well
            return CRS.from_user_input(crs).to_wkt()
    except CRSError as exc:
        raise ConfigError(f"`crs` {crs!r} is not a CRS GDAL knows: {exc}", hint="e.g. EPSG:32633") from None


def check_resampling(resampling: str) -> str:
    """``resampling`` if it is one of :data:`RESAMPLINGS`, else a :class:`ConfigError`."""
    from ._validate import check_choice

    return check_choice("resampling", resampling, RESAMPLINGS)


def target_grid(sources: Sequence[Source], *, crs=None, resolution=None, resampling: str = DEFAULT_RESAMPLING,
                nodata: float | None = None) -> Grid:
    """The grid a mosaic of ``sources`` is read on (the rules are in the module docstring)."""
    from rasterio.warp import calculate_default_transform, transform_bounds

    _check_agree(sources)
    weights = [s.pixels for s in sources]
    tcrs = _check_crs(crs) or _largest_share([s.crs for s in sources], weights)
    on_crs = [s for s in sources if _same_crs(s.crs, tcrs)]
    res = check_resolution(resolution)
    if res is None and on_crs:
        res = _largest_share([_resolution_of(s) for s in on_crs], [s.pixels for s in on_crs])
    if res is None:  # no source in the asked CRS: the largest source's own resolution there
        big = sources[weights.index(max(weights))]
        t, _, _ = calculate_default_transform(big.crs, tcrs, big.shape[1], big.shape[0], *big.bounds)
        res = (abs(t.a), abs(t.e))
    boxes = [s.bounds if _same_crs(s.crs, tcrs) else transform_bounds(s.crs, tcrs, *s.bounds, densify_pts=21)
             for s in sources]
    # pixel edges on those of the first source already on the grid, else on the union's top-left corner
    anchor = next((s for s in on_crs if _resolution_of(s) == res), None)
    ax, ay = (anchor.transform[2], anchor.transform[5]) if anchor else (min(b[0] for b in boxes),
                                                                        max(b[3] for b in boxes))
    left = _on_edges(min(b[0] for b in boxes), ax, res[0], math.floor)
    right = _on_edges(max(b[2] for b in boxes), ax, res[0], math.ceil)
    top = _on_edges(max(b[3] for b in boxes), ay, -res[1], math.floor)
    bottom = _on_edges(min(b[1] for b in boxes), ay, -res[1], math.ceil)
    shape = (round((top - bottom) / res[1]), round((right - left) / res[0]))
    _check_size(shape, res, tcrs, asked=resolution is not None)
    grid = Grid(crs=tcrs, transform=(res[0], 0.0, left, 0.0, -res[1], top), shape=shape, count=sources[0].count,
                dtype=sources[0].dtype, nodata=None, resampling=check_resampling(resampling),
                colorinterp=sources[0].colorinterp)
    covered = _covered(grid, sources)  # the coverage warning and the gap rule of the nodata both read it
    _check_coverage(grid, sources, covered)
    _warn_subpixel(sources, boxes, res)
    return _with_nodata(grid, sources, nodata, covered=covered)


def _on_edges(edge: float, anchor: float, step: float, outward) -> float:
    """``edge`` on the pixel edges ``anchor + k * step``: kept as it is where it already lies on one (to
    1e-6 px), else moved ``outward`` (``math.floor`` or ``math.ceil`` of ``k``). Kept exactly, not
    recomputed from the anchor: a grid whose anchor changes (its first source removed) keeps the same
    edges, bit for bit, so a rerun sees the same grid."""
    k = (edge - anchor) / step
    return edge if abs(k - round(k)) < 1e-6 else anchor + outward(k) * step


def _check_size(shape: tuple, res: tuple, crs: str, *, asked: bool) -> None:
    """A grid with pixels, no side past GDAL's C int and at most :data:`_MAX_GRID_PIXELS`, else a one-line error
    (a resolution in the wrong units, such as degrees for a grid in metres)."""
    height, width = shape
    if min(shape) >= 1 and max(shape) <= _MAX_GRID_SIDE and height * width <= _MAX_GRID_PIXELS:
        return
    why = "it has no pixel" if min(shape) < 1 else (f"more than {_MAX_GRID_SIDE} px a side or {_MAX_GRID_PIXELS:.2g} "
                                                    "px in all")
    raise ConfigError(f"the target grid would be {width} x {height} px at resolution {res[0]:g} x {res[1]:g}: {why}",
                      hint=f"--resolution is in the units of the grid's CRS ({_short_crs(crs)}); leave it out to "
                           "keep the sources' own" if asked else "are the sources far apart? segment them separately, "
                                                                 "or check their CRSs")


def _covered(grid: Grid, sources: Sequence[Source]) -> float:
    """The pixels of ``grid`` that the sources' footprints cover."""
    import shapely

    boxes = [shapely.box(x0, y0, x1, y1) for y0, y1, x0, x1 in (grid.window_of(s) for s in sources)]
    return shapely.union_all(boxes).area


def _check_coverage(grid: Grid, sources: Sequence[Source], covered: float) -> None:
    """Warn of sources that cover less than 1 % of their grid, naming the two farthest apart: most of such
    a grid is nodata, often because a source has a wrong CRS. Only a warning: a corridor of tiles along a
    river or a road is sparse by nature, and blocks reading no source are never segmented."""
    share = covered / (grid.shape[0] * grid.shape[1])
    if share >= 0.01:
        return
    a, b = _farthest_apart([grid.window_of(s) for s in sources])
    warnings.warn(f"the sources cover {100 * share:.2g} % of the {grid.shape[1]} x {grid.shape[0]} px target grid: "
                  f"`{sources[a].location}` and `{sources[b].location}` lie far apart (segment them separately, or "
                  "check their CRSs: a source with a wrong CRS lands far from the others)", RemoteSamsingWarning,
                  stacklevel=3)


def _farthest_apart(windows) -> tuple[int, int]:
    """Two windows whose centres lie farthest apart, among those at the extremes along x, y and the two
    diagonals (where the farthest pair lies: enough to name it, without comparing every pair)."""
    import numpy as np

    centres = np.array([((y0 + y1) / 2, (x0 + x1) / 2) for y0, y1, x0, x1 in windows])
    y, x = centres[:, 0], centres[:, 1]
    ends = sorted({int(i) for d in (y, x, y + x, y - x) for i in (d.argmin(), d.argmax())})
    pairs = [(i, j) for i in ends for j in ends if i < j] or [(0, 0)]
    return max(pairs, key=lambda p: float(np.hypot(*(centres[p[0]] - centres[p[1]]))))


def _warn_subpixel(sources: Sequence[Source], boxes, res: tuple) -> None:
    """Warn of the sources smaller than one pixel of the grid (a fine tile among coarse scenes): resampling
    leaves at most a pixel of each."""
    small = [(s, (b[2] - b[0]) / res[0], (b[3] - b[1]) / res[1]) for s, b in zip(sources, boxes)]
    small = [(s, w, h) for s, w, h in small if w < 1 or h < 1]
    if small:
        s, w, h = small[0]
        more = f" (and {counted(len(small) - 1, 'other sources')})" if len(small) > 1 else ""
        warnings.warn(f"`{s.location}`{more} covers {w:.2g} x {h:.2g} px of the target grid at resolution "
                      f"{res[0]:g}: segment it on its own, or pass a finer --resolution", RemoteSamsingWarning,
                      stacklevel=3)


def _with_nodata(grid: Grid, sources: Sequence[Source], nodata: float | None, *, covered: float) -> Grid:
    """The grid with its nodata: the value given, else the one most sources declare, else 0 where the
    footprints (``covered`` pixels of the grid) leave gaps (nothing else marks a gap), else none."""
    if nodata is None:
        declared = [s.nodata for s in sources if s.nodata is not None]
        if declared:
            nodata = Counter(declared).most_common(1)[0][0]
        elif covered < grid.shape[0] * grid.shape[1] - 0.5 or any(not _same_crs(s.crs, grid.crs) for s in sources):
            nodata = 0.0  # a warped footprint's edges leave gaps too
    return replace(grid, nodata=nodata)



# ---------------------------------------------------------------------------
# the files a VRT or a GTI index reads
# ---------------------------------------------------------------------------
def _is_tile_index(location: str) -> bool:
    return location.lower().endswith(_GTI_SUFFIXES) or location.lower().startswith("gti:")


def _reads_others(location: str) -> bool:
    return location.lower().endswith(".vrt") or _is_tile_index(location)


def _without_gti(location: str) -> str:
    return location[4:] if location.lower().startswith("gti:") else location


def _referenced(location: str, depth: int = 0) -> list[str]:
    """The rasters a VRT or a GTI tile index reads, and theirs in turn (a VRT of VRTs), as URLs or
    absolute paths."""
    try:
        found = _index_locations(location) if _is_tile_index(location) else _vrt_locations(location)
    except RemoteSamsingError:
        raise
    except Exception as exc:  # noqa: BLE001 - the XML parser, OGR and GDAL raise many types
        cause = _said(exc)
        raise InputError(f"cannot list the rasters `{location}` reads: {cause}",
                         hint="is it a valid GDAL VRT or GTI tile index? try `gdalinfo` on it") from None
    _check_named(found, by=location)
    if depth < 8:
        found = [inner for f in found for inner in [f, *(_referenced(f, depth + 1) if _reads_others(f) else [])]]
    return found


def _vrt_locations(location: str) -> list[str]:
    """The files a VRT reads, but itself, as GDAL lists them."""
    import rasterio

    from .io import quiet_georeferencing

    with quiet_georeferencing(), rasterio.open(_gdal_name(location)) as src:
        files = list(src.files)
    own = os.path.normpath(gdal_path(location)) if not is_url(location) else gdal_path(location)
    return [_vsi_to_url(f) if f.startswith("/vsi") else os.path.abspath(f) for f in files
            if (os.path.normpath(f) if not f.startswith("/vsi") else f) != own]


def _index_file(location: str) -> tuple[str, str | None]:
    """The vector file of a GTI tile index (itself, or the one its XML form names) and the location
    field the XML form names."""
    path = _without_gti(location)
    if not path.lower().endswith(".gti"):
        return path, None
    import xml.etree.ElementTree as ET

    root = ET.fromstring(_read_text(path))  # <GDALTileIndexDataset><IndexDataset>...</IndexDataset>
    return root.findtext("IndexDataset") or "", root.findtext("LocationField")  # relative to the working folder


def _index_locations(location: str) -> list[str]:
    """The ``location`` field of a GTI tile index (a vector file, or the XML form naming one), each made
    absolute as the GTI driver does, in the order it draws them: by its sort field, else as listed."""
    path, field_name = _index_file(location)
    meta = _index_metadata(path)
    field_name = field_name or meta.get("LOCATION_FIELD", "location")
    order = meta.get("SORT_FIELD")
    table = _index_table(path, [field_name, order] if order else [field_name])
    if order:
        table = table.sort_values(order, ascending=meta.get("SORT_FIELD_ASC", "YES").upper() != "NO", kind="stable")
    return [_vsi_to_url(v) if v.startswith("/vsi") else join_location(path, v) for v in map(str, table[field_name])]


def _index_metadata(path: str) -> dict:
    """The layer metadata of a tile index's vector file: from pyogrio, or for GeoParquet from the
    ``gdal:metadata`` GDAL writes into its schema (pyogrio's ADBC driver does not show it)."""
    if not path.lower().endswith(".parquet"):
        import pyogrio

        return pyogrio.read_info(path).get("layer_metadata") or {}
    import pyarrow.parquet as pq

    with _opened(path) as f:
        meta = (pq.read_schema(f).metadata or {}).get(b"gdal:metadata")
    return json.loads(meta).get("", {}) if meta else {}


@contextmanager
def _opened(path: str):
    """``path`` as pyarrow reads it: a local path, or a file object from fsspec for a URL, so that a store
    is reached as everywhere else (its standard variables), not through pyarrow's own clients."""
    if not is_url(path):
        yield path
        return
    fs, inner = _fs(path)
    with fs.open(inner, "rb") as f:
        yield f


def _index_table(path: str, columns: list[str]):
    """``columns`` of a tile index's vector file as a DataFrame: pyarrow reads GeoParquet without any
    GDAL driver, pyogrio the other formats."""
    if path.lower().endswith(".parquet"):
        import pyarrow.parquet as pq

        with _opened(path) as f:
            return pq.read_table(f, columns=columns).to_pandas()
    import pyogrio

    return pyogrio.read_dataframe(path, columns=columns, read_geometry=False)


def _gdal_reads_index(location: str) -> bool:
    """Whether rasterio's GDAL has the driver of the tile index's vector format (its wheels carry
    neither FlatGeobuf nor Parquet)."""
    try:
        path, _ = _index_file(location)
    except Exception:  # noqa: BLE001 - a damaged XML form: GDAL opens it and says why
        return True
    driver = next((d for suffix, d in _INDEX_DRIVERS.items() if path.lower().endswith(suffix)), None)
    return driver is None or driver in _raster_drivers()


def _raster_drivers() -> frozenset:
    import rasterio

    with rasterio.Env() as env:
        return frozenset(env.drivers())


def _index_rasters(location: str) -> list[str]:
    """The rasters of a tile index rasterio's GDAL cannot open, as a list of sources in drawing order."""
    try:
        found = _index_locations(location)
    except RemoteSamsingError:
        raise
    except Exception as exc:  # noqa: BLE001 - pyogrio, pyarrow and the XML parser raise many types
        cause = _said(exc)
        raise InputError(f"cannot read the tile index `{location}`: {cause}",
                         hint="a tile index works as GeoPackage (.gti.gpkg), FlatGeobuf (.gti.fgb) or GeoParquet "
                              "(.gti.parquet), or in the XML form (.gti) naming one") from None
    if not found:
        raise InputNotFoundError(f"the tile index `{location}` lists no raster", hint="check its location field")
    return _check_named(found, by=location)


def _vsi_to_url(name: str) -> str:
    """A GDAL virtual path as the URL it names (what run.json records and fsspec stamps)."""
    for prefix, scheme in (("/vsis3/", "s3://"), ("/vsigs/", "gs://"), ("/vsiaz/", "az://"),
                           ("/vsicurl/", "")):
        if name.startswith(prefix):
            return scheme + name[len(prefix):]
    return name


# ---------------------------------------------------------------------------
# the mosaic
# ---------------------------------------------------------------------------
def resolve_mosaic(inputs, *, recursive: bool = False, asset: str | None = None, crs=None, resolution=None,
                   resampling: str = DEFAULT_RESAMPLING, nodata: float | None = None, exclude=None) -> Mosaic:
    """Expand ``inputs``, read every source's header, check them and choose the target grid.

    One raster, VRT, GTI index or Zarr mosaic with no ``crs`` or
    ``resolution`` asked for is read as it is (:attr:`Mosaic.direct`);
    anything else through a tile index (:func:`write_tile_index`). Nothing
    is written here and no pixel is read.

    ``exclude`` is a local folder (a run's OUTDIR) whose files folder and
    glob listings leave out.

    Raises
    ------
    InputNotFoundError
        An input names nothing (an empty folder, a glob or list matching
        nothing, a missing path) or a source cannot be read.
    InputError
        Sources disagree in bands or dtype, or one cannot be placed.
    """
    named = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    as_named = tuple(_named(os.fspath(i)) for i in named)
    check_resampling(resampling)
    locations = expand_inputs(named, recursive=recursive, asset=asset, exclude=exclude)
    zarrs = [loc for loc in locations if _is_zarr(loc)]
    if zarrs and len(locations) > 1:
        raise InputError(f"the Zarr mosaic `{zarrs[0]}` cannot be combined with other sources",
                         hint="segment it on its own, or pass the rasters it was ingested from")
    if zarrs and (crs is not None or resolution is not None):
        raise ConfigError("--crs and --resolution apply to raster sources, not to a Zarr mosaic",
                          hint="pass the rasters it was ingested from")
    if len(locations) == 1 and crs is None and resolution is None:
        return _direct_mosaic(as_named, locations[0], resampling=resampling, nodata=nodata)
    sources = describe_sources(locations)
    grid = target_grid(sources, crs=crs, resolution=resolution, resampling=resampling, nodata=nodata)
    return Mosaic(inputs=as_named, sources=tuple(sources), grid=grid, direct=None,
                  windows=tuple(grid.window_of(s) for s in sources))


def _named(item: str) -> str:
    """An input as the run records it: absolute, with its ``@`` kept."""
    if item.startswith("@"):
        return "@" + _named(item[1:])
    if item.lower().startswith("gti:"):
        return _gti_name(item)
    return item if is_url(item) else os.path.abspath(os.path.expanduser(item))


def _direct_mosaic(inputs: tuple, location: str, *, resampling: str, nodata) -> Mosaic:
    """A mosaic GDAL (or Zarr) reads as it is: its grid is its own; its sources are itself or, for a
    VRT or a GTI index, the rasters it reads."""
    if _is_zarr(location):
        return Mosaic(inputs=inputs, sources=(), grid=Grid(crs=None, transform=(1, 0, 0, 0, 1, 0), shape=(0, 0),
                                                          count=0, dtype="", nodata=nodata),
                      direct=location)
    own = _describe(location)
    grid = Grid(crs=own.crs, transform=own.transform, shape=own.shape, count=own.count, dtype=own.dtype,
                nodata=own.nodata if nodata is None else nodata, resampling=resampling, colorinterp=own.colorinterp)
    sources = _contained(own) if _reads_others(location) else [own]
    if _is_tile_index(location):
        _check_index_rasters(own, sources)
    return Mosaic(inputs=inputs, sources=tuple(sources), grid=grid, direct=location,
                  windows=tuple(grid.window_of(s) for s in sources))


def _contained(container: Source) -> list[Source]:
    """The rasters a VRT or GTI index reads (through nested ones too), each stamped with the stamps of
    every container: a container counts as its rasters, and an edit to it as an edit to each of them."""
    found = list(dict.fromkeys(_referenced(container.location)))
    rasters = describe_sources([f for f in found if not _reads_others(f)])
    if not rasters:  # nothing it reads can be listed: the container stands for itself
        return [container]
    via = [{"location": container.location, **container.stamp}]
    via += [{"location": f, **_stamp(f)} for f in found if _reads_others(f)]
    return [replace(s, stamp={**s.stamp, "via": via}) for s in rasters]


def _check_index_rasters(index: Source, rasters: Sequence[Source]) -> None:
    """Each raster a GTI index reads has the index's bands and dtype, or a one-line error naming the first
    odd one: GTI itself finds out only when a block reads it. A VRT is not checked so, as it may stack
    single-band files into bands of its own."""
    described = {s.location: s for s in rasters}
    for location in dict.fromkeys(_index_locations(index.location)):
        s = described.get(location) or _describe(location)  # a VRT it reads: the VRT's own header
        if s.count != index.count or s.dtype != index.dtype:
            raise InputError(
                f"`{s.location}`, read by the tile index `{_without_gti(index.location)}`, has {s.count} band(s) of "
                f"{s.dtype}, but the index has {index.count} of {index.dtype}",
                hint="the rasters of one tile index need the same bands and dtype: leave it out or convert it")


def write_tile_index(mosaic: Mosaic, path: str | os.PathLike) -> Path:
    """Write the GTI tile index of ``mosaic`` to ``path`` (a local ``*.gti.gpkg``), atomically.

    One feature per source: its location as GDAL opens it, its position (the
    sort field: the last listed is drawn on top), its footprint on the grid
    (as a polygon, and in pixels: :data:`WINDOW_FIELDS`); the grid itself
    goes in the layer's metadata, which the GTI driver
    reads (https://gdal.org/en/stable/drivers/raster/gti.html).
    """
    import geopandas as gpd
    import numpy as np
    import pyogrio
    import shapely

    from ._files import replace_path, temporary_name

    g = mosaic.grid
    a, _, c, _, e, f = g.transform
    boxes = [shapely.box(c + x0 * a, f + y1 * e, c + x1 * a, f + y0 * e) for y0, y1, x0, x1 in mosaic.windows]
    windows = np.asarray(mosaic.windows, dtype=np.int64).reshape(-1, 4)
    table = gpd.GeoDataFrame({"location": [gdal_path(s.location) for s in mosaic.sources],
                              "position": list(range(len(mosaic.sources))),
                              **{k: windows[:, i] for i, k in enumerate(WINDOW_FIELDS)},
                              **dict(zip(STAMP_FIELDS, _local_stamps(mosaic.sources).T))}, geometry=boxes, crs=g.crs)
    meta = {"SRS": g.crs, "XSIZE": str(g.shape[1]), "YSIZE": str(g.shape[0]),
            "GEOTRANSFORM": ",".join(repr(float(v)) for v in (c, a, 0.0, f, 0.0, e)),
            "BAND_COUNT": str(g.count), "DATA_TYPE": _GDAL_TYPES[g.dtype], "RESAMPLING": g.resampling,
            "SORT_FIELD": "position", "LOCATION_FIELD": "location"}
    if g.nodata is not None:
        meta["NODATA"] = repr(float(g.nodata))
    if g.colorinterp and "alpha" in g.colorinterp:
        meta["COLOR_INTERPRETATION"] = ",".join(g.colorinterp)
    out = Path(os.fspath(path))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(out)
    try:
        pyogrio.write_dataframe(table, tmp, layer=_INDEX_LAYER, driver="GPKG", layer_metadata=meta)
        return replace_path(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _local_stamps(sources) -> "np.ndarray":
    """(n, 2) int64: each source's :data:`STAMP_FIELDS`, -1 where it is not a local file."""
    import numpy as np

    return np.array([[s.stamp["size"], s.stamp["mtime_ns"]] if "mtime_ns" in s.stamp else [-1, -1]
                     for s in sources], dtype=np.int64).reshape(-1, 2)


_GDAL_TYPES = {"uint8": "Byte", "int8": "Int8", "uint16": "UInt16", "int16": "Int16", "uint32": "UInt32",
               "int32": "Int32", "float32": "Float32", "float64": "Float64"}


def cached_index(mosaic: Mosaic) -> Path:
    """The tile index of ``mosaic`` in the per-user cache folder, written once per content.

    What a lazily opened mosaic reads from: every process of this machine
    (an embedded cluster's workers) sees it; a run on a cluster reads the
    copy it writes into its OUTDIR instead.
    """
    import platformdirs

    folder = Path(platformdirs.user_cache_dir("remote-samsing", appauthor=False)) / "tile-indexes"
    path = folder / f"{mosaic.token()}{_GTI_SUFFIX}"
    if not path.exists():
        try:
            write_tile_index(mosaic, path)
        except OSError:  # a read-only home (some containers): the temporary folder instead
            import tempfile

            path = Path(tempfile.gettempdir()) / "remote-samsing-tile-indexes" / path.name
            if not path.exists():
                write_tile_index(mosaic, path)
    return path


def index_sources(path: str) -> tuple[list[str], "np.ndarray"]:
    """The GDAL names and pixel footprints (``(n, 4)``: y0, y1, x0, x1) of a tile index written by
    :func:`write_tile_index`, read with pyogrio."""
    import numpy as np
    import pyogrio

    table = pyogrio.read_dataframe(path, columns=["location", *WINDOW_FIELDS], read_geometry=False)
    return list(map(str, table["location"])), np.asarray(table[list(WINDOW_FIELDS)], dtype=np.int64)


def index_source_stamps(path: str) -> "np.ndarray | None":
    """The :data:`STAMP_FIELDS` (``(n, 2)``, in the order of :func:`index_sources`) of a tile index written
    by :func:`write_tile_index`; None for an index without them."""
    import numpy as np
    import pyogrio

    if not set(STAMP_FIELDS) <= set(pyogrio.read_info(path)["fields"]):
        return None
    table = pyogrio.read_dataframe(path, columns=list(STAMP_FIELDS), read_geometry=False)
    return np.asarray(table[list(STAMP_FIELDS)], dtype=np.int64)
