"""Label rasters to seamless, georeferenced polygons.

Algorithm
---------
1. **Per block, in parallel.** Each dask block of the label raster is
   polygonised with :func:`rasterio.features.shapes` (4-connectivity, 0 =
   background) in *integer pixel coordinates of the mosaic* (the block's
   offset is the only transform). Pieces of one label inside a block are
   unioned, and the block reports per label: pixel count, whether it touches
   the mosaic edge, and whether it touches nodata (through a 1-px halo of the
   validity mask). Only these small results (WKB bytes and a few arrays) leave
   the workers, so no step holds the whole mosaic's pixels.
2. **Dissolve out of core.** A label seen in one block is final. Only labels
   seen in several blocks (``n_blocks > 1``) are grouped and unioned, in
   parallel batches. Because every piece was traced on the same integer pixel
   grid, pieces meet on identical coordinates and union exactly, without
   slivers.
3. **Optional topology-preserving simplification.** Boundaries are densified
   to one vertex per pixel corner so that neighbours have matching vertices
   (a valid polygon coverage), then simplified *as a coverage* with GEOS'
   ``CoverageSimplifier`` (:func:`shapely.coverage_simplify`), which simplifies
   every shared edge once, so shared boundaries stay shared: no gaps, no
   slivers. The tolerance is in metres and is converted to pixels.
4. **Georeference last.** The pixel-space geometries are mapped through the
   raster's affine transform in one vectorised call; identical pixel corners
   map to identical coordinates, so shared boundaries stay exact.
5. **Attributes in true metres.** ``area_m2`` is the area enclosed by the
   exterior ring(s) minus the holes, and ``perimeter_m`` is the total length
   of *every* ring, exterior and interior (holes), summed over the parts of a
   MultiPolygon. Both mean the same in every CRS:

   * metric projected CRSs (UTM, Lambert conformal, Albers, ...): planar, in
     the CRS' own plane, times the CRS unit factor (feet -> metres);
   * geographic CRSs (EPSG:4326, ...) and distorting projected CRSs (the
     Mercator family, e.g. EPSG:3857/3395, and world cylindrical or
     pseudo-cylindrical projections, see :func:`_needs_geodesic`), whose
     planar units are not ground metres: geodesic on the CRS' ellipsoid.
     Projected coordinates are first transformed to lon/lat of the CRS'
     geodetic CRS; every ring's edges are then taken as geodesics and its
     length and |area| computed per ring with
     :meth:`pyproj.Geod.polygon_area_perimeter` (independent of ring
     orientation), holes' areas subtracted.

Unlike the reference (``osmarluiz/sam-mosaic: vectorize/polygonize.py``),
polygons are not simplified one by one (which opens gaps between
neighbours), a missing CRS is left unset with :class:`NoCRSWarning` instead
of being written as EPSG:4326, and areas of geographic rasters are in m², not
degrees².

Known limit: with ``simplify_tolerance`` or ``node=True`` the final coverage
step holds all polygons (not pixels) of the mosaic in memory at once.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ._arrays import unique
from ._files import location, write_atomic
from ._progress import compute_tracked
from ._validate import check_bool, check_int, check_number
from .exceptions import (
    ConfigError,
    CRSMismatchError,
    InputError,
    InputNotFoundError,
    OutputExistsError,
    RemoteSamsingWarning,
)

__all__ = [
    "NoCRSWarning",
    "to_polygons",
    "vectorize_labels",
    "open_label_raster",
    "grid_of",
    "VECTOR_DRIVERS",
]

#: File suffix -> driver name understood by :func:`to_polygons`.
VECTOR_DRIVERS = {
    ".parquet": "Parquet",
    ".geoparquet": "Parquet",
    ".gpkg": "GPKG",
    ".geojson": "GeoJSON",
    ".json": "GeoJSON",
    ".fgb": "FlatGeobuf",
}

_DEFAULT_CHUNK = 2048


class NoCRSWarning(RemoteSamsingWarning):
    """The label raster has no CRS: polygons are in pixel coordinates, CRS unset."""


# ---------------------------------------------------------------------------
# Opening label rasters
# ---------------------------------------------------------------------------


def open_label_raster(path: str | os.PathLike, *, chunks: int | None = None):
    """Open a label raster (GeoTIFF or a Zarr written by remote_samsing) lazily.

    Parameters
    ----------
    path : path-like
        A GeoTIFF (any GDAL raster) or a Zarr store.
    chunks : int, optional
        Dask chunk edge in pixels; default: the file's own blocks for Zarr,
        1024 for GeoTIFF (as :func:`remote_samsing.io.open_labels`).

    Returns
    -------
    xarray.DataArray
        (y, x) dask-backed labels with ``rio`` CRS/transform where known.
    """
    path = location(path)
    if not path.exists():
        raise InputNotFoundError(
            f"label raster `{path}` does not exist", hint="pass a GeoTIFF or Zarr written by remote-samsing"
        )
    from .io import open_labels

    arr = open_labels(path)
    if chunks is not None:
        arr = arr.chunk({"y": chunks, "x": chunks})
    return arr


def grid_of(labels) -> tuple[Any, Any]:
    """(crs or None, affine transform) of a DataArray; identity if unknown."""
    from affine import Affine

    crs = None
    transform = Affine.identity()
    rio = None
    try:
        import rioxarray  # noqa: F401

        rio = labels.rio
    except (ImportError, AttributeError):
        rio = None
    if rio is not None:
        with warnings.catch_warnings():
            # affine >= 2.4 warns about rioxarray's own `*` composition
            warnings.simplefilter("ignore", PendingDeprecationWarning)
            try:
                crs = rio.crs
            except Exception:  # noqa: BLE001 - rioxarray raises several types on odd metadata
                crs = None
            try:
                transform = rio.transform(recalc=False)
            except Exception:  # noqa: BLE001
                transform = Affine.identity()
    return crs, transform


def _as_dask_labels(labels, chunks):
    """Return (dask array (y, x), crs, transform) from the accepted inputs."""
    import dask.array as da
    import xarray as xr
    from affine import Affine

    if isinstance(labels, (str, os.PathLike)):
        labels = open_label_raster(labels, chunks=chunks)
    if isinstance(labels, xr.DataArray):
        if labels.ndim != 2:
            raise InputError(
                f"labels must be 2-D (y, x), got dims {labels.dims}", hint="select one band first"
            )
        crs, transform = grid_of(labels)
        data = labels.data
    elif isinstance(labels, (np.ndarray, da.Array)):
        if labels.ndim != 2:
            raise InputError(f"labels must be 2-D (y, x), got shape {labels.shape}")
        crs, transform, data = None, Affine.identity(), labels
    else:
        raise InputError(
            f"labels must be a path, xarray.DataArray or array, got {type(labels).__name__}",
            hint="open the raster with remote_samsing.vectorize.open_label_raster",
        )
    if not isinstance(data, da.Array):
        data = da.from_array(np.asarray(data), chunks=chunks or _DEFAULT_CHUNK)
    elif chunks is not None:
        data = data.rechunk(chunks)
    if not np.issubdtype(data.dtype, np.integer):
        raise InputError(f"labels must have an integer dtype, got {data.dtype}", hint="cast to uint32")
    return data, crs, transform


# ---------------------------------------------------------------------------
# Per-block polygonisation
# ---------------------------------------------------------------------------


def _polygonize_block(block, valid_halo, y0: int, x0: int, height: int, width: int, connectivity: int):
    """Polygonise one block in mosaic pixel coordinates.

    Returns a tuple of arrays ``(label, n_pixels, wkb, on_edge, on_nodata)``.
    """
    import rasterio.features
    import shapely
    from affine import Affine
    from shapely.geometry import shape

    block = np.asarray(block)
    empty = (
        np.zeros(0, np.int64),
        np.zeros(0, np.int64),
        np.zeros(0, object),
        np.zeros(0, bool),
        np.zeros(0, bool),
    )
    fg = block != 0
    if not fg.any():
        return empty
    # rasterio.features.shapes has no uint32/int64 support: trace the dense
    # local ids (0..k) and map back to the global labels afterwards.
    uniq, inv = unique(block, return_inverse=True)
    counts = np.bincount(inv.ravel(), minlength=len(uniq))
    local = inv.astype(np.int32)
    # Integer offsets only: all blocks share one exact integer grid. Block
    # (0, 0) would have the identity transform, which rasterio warns about
    # (warning filters are not thread-safe), so trace it one pixel to the
    # right and shift back: integer arithmetic, exact.
    shift = 1.0 if (x0 == 0 and y0 == 0) else 0.0
    tr = Affine(1.0, 0.0, float(x0) + shift, 0.0, 1.0, float(y0))
    pieces: dict[int, list] = {}
    for geom, val in rasterio.features.shapes(local, mask=fg, connectivity=connectivity, transform=tr):
        g = shape(geom)
        if shift:
            g = shapely.transform(g, lambda xy: xy - np.array([shift, 0.0]))
        pieces.setdefault(int(val), []).append(g)
    ids = np.array(sorted(pieces), dtype=np.int64)
    geoms = []
    for i in ids:
        p = pieces[int(i)]
        geoms.append(p[0] if len(p) == 1 else shapely.union_all(p))
    wkb = np.asarray(shapely.to_wkb(np.asarray(geoms, dtype=object)), dtype=object)

    h, w = block.shape
    edge = np.zeros(len(uniq), bool)
    if y0 == 0:
        edge[inv[0, :]] = True
    if y0 + h == height:
        edge[inv[-1, :]] = True
    if x0 == 0:
        edge[inv[:, 0]] = True
    if x0 + w == width:
        edge[inv[:, -1]] = True
    nod = np.zeros(len(uniq), bool)
    if valid_halo is not None:
        v = np.asarray(valid_halo, bool)
        # a pixel "touches nodata" if it or a 4-neighbour is invalid
        bad = ~v[1:-1, 1:-1] | ~v[:-2, 1:-1] | ~v[2:, 1:-1] | ~v[1:-1, :-2] | ~v[1:-1, 2:]
        nod[inv[bad]] = True
    return (uniq[ids].astype(np.int64), counts[ids], wkb, edge[ids], nod[ids])


def _union_batch(wkb_groups):
    import shapely

    out = []
    for group in wkb_groups:
        out.append(shapely.to_wkb(shapely.union_all(shapely.from_wkb(np.asarray(group, dtype=object)))))
    return out


# ---------------------------------------------------------------------------
# Metric attributes
# ---------------------------------------------------------------------------


def _is_mercator(pcrs) -> bool:
    try:
        method = pcrs.coordinate_operation.method_name.lower()
    except AttributeError:
        return False
    return "mercator" in method and "transverse" not in method


# World-scale (pseudo-)cylindrical projections: their planar metres are not
# ground metres (lengths, and for most also areas, distort with latitude).
_WORLD_METHODS = (
    "equidistant cylindrical",
    "plate carr",
    "miller",
    "cylindrical equal area",
    "mollweide",
    "sinusoidal",
    "robinson",
    "equal earth",
    "eckert",
)


def _needs_geodesic(pcrs) -> bool:
    """True for CRSs whose coordinates are not ground metres: geographic, Mercator family, world projections."""
    if pcrs.is_geographic or not pcrs.is_projected:
        return True
    if _is_mercator(pcrs):
        return True
    try:
        method = pcrs.coordinate_operation.method_name.lower()
    except AttributeError:
        return False
    return any(m in method for m in _WORLD_METHODS)


def _geodesic_area_perimeter(lonlat: np.ndarray, geod) -> tuple[np.ndarray, np.ndarray]:
    """Geodesic |area| (holes subtracted) and length of all rings of lon/lat polygons.

    Rings and their coordinates are extracted in vectorised shapely calls;
    the only Python loop is one :meth:`pyproj.Geod.polygon_area_perimeter`
    call per ring (C code over the ring's vertices). Each ring's area is
    taken in absolute value, so ring orientation does not matter.
    """
    import shapely

    n = len(lonlat)
    area = np.zeros(n)
    perim = np.zeros(n)
    if n == 0:
        return area, perim
    parts, part_geom = shapely.get_parts(lonlat, return_index=True)
    polys = shapely.get_type_id(parts) == 3  # output is polygonal; ignore anything else
    parts, part_geom = parts[polys], part_geom[polys]
    rings, ring_part = shapely.get_rings(parts, return_index=True)
    if len(rings) == 0:
        return area, perim
    # get_rings lists each polygon's exterior first, then its interiors
    is_ext = np.ones(len(rings), bool)
    is_ext[1:] = ring_part[1:] != ring_part[:-1]
    ring_geom = part_geom[ring_part]
    xy = shapely.get_coordinates(rings)
    ends = np.cumsum(shapely.get_num_coordinates(rings))
    starts = ends - shapely.get_num_coordinates(rings)
    lon, lat = np.ascontiguousarray(xy[:, 0]), np.ascontiguousarray(xy[:, 1])
    r_area = np.empty(len(rings))
    r_len = np.empty(len(rings))
    for i, (a, b) in enumerate(zip(starts.tolist(), ends.tolist())):
        r_area[i], r_len[i] = geod.polygon_area_perimeter(lon[a:b], lat[a:b])
    signed = np.where(is_ext, np.abs(r_area), -np.abs(r_area))
    area = np.bincount(ring_geom, weights=signed, minlength=n)
    perim = np.bincount(ring_geom, weights=r_len, minlength=n)
    return area, perim


def _area_perimeter_m(geoms: np.ndarray, crs) -> tuple[np.ndarray, np.ndarray]:
    """Ground area (m², holes subtracted) and perimeter (m, all rings) of georeferenced geometries.

    ``perimeter_m`` is the length of every ring, exterior and interiors, in
    every CRS. Metric projected CRSs: planar (:func:`shapely.area`,
    :func:`shapely.length`, which counts interior rings) times the unit
    factor. Geographic and distorting CRSs (:func:`_needs_geodesic`):
    geodesic on the CRS' ellipsoid, after transforming projected coordinates
    to lon/lat, per ring (:func:`_geodesic_area_perimeter`). NaN without CRS.
    """
    import pyproj
    import shapely

    if crs is None:
        n = len(geoms)
        return np.full(n, np.nan), np.full(n, np.nan)
    pcrs = pyproj.CRS.from_user_input(crs)
    if not _needs_geodesic(pcrs):
        f = pcrs.axis_info[0].unit_conversion_factor
        return shapely.area(geoms) * f * f, shapely.length(geoms) * f
    # Geodesic on the CRS' own ellipsoid: exact m² whatever the latitude.
    geod = pcrs.get_geod()
    if geod is None:  # pragma: no cover - every pyproj CRS has an ellipsoid
        geod = pyproj.Geod(ellps="WGS84")
    if pcrs.is_geographic:
        lonlat = geoms  # rasterio/GDAL geometries are x = lon, y = lat, as Geod wants
    else:
        to_geo = pyproj.Transformer.from_crs(pcrs, pcrs.geodetic_crs, always_xy=True)
        lonlat = shapely.transform(geoms, lambda xy: np.column_stack(to_geo.transform(xy[:, 0], xy[:, 1])))
    return _geodesic_area_perimeter(np.asarray(lonlat, dtype=object), geod)


def _metres_per_pixel(transform, crs, height: int, width: int) -> float:
    """Ground size of one pixel (geometric mean of x and y) near the mosaic centre."""
    import pyproj

    px = math.sqrt(abs(transform.a * transform.e - transform.b * transform.d))
    if crs is None:
        return float("nan")
    pcrs = pyproj.CRS.from_user_input(crs)
    if not _needs_geodesic(pcrs):
        return px * pcrs.axis_info[0].unit_conversion_factor
    import shapely

    cx, cy = width / 2.0, height / 2.0
    cell = shapely.box(cx, cy, cx + 1, cy + 1)
    cell = shapely.transform(
        cell,
        lambda xy: np.column_stack(
            (
                transform.a * xy[:, 0] + transform.b * xy[:, 1] + transform.c,
                transform.d * xy[:, 0] + transform.e * xy[:, 1] + transform.f,
            )
        ),
    )
    area, _ = _area_perimeter_m(np.array([cell], dtype=object), crs)
    return float(math.sqrt(area[0]))


# ---------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------


def _attribute_frame(attributes):
    import pandas as pd

    if attributes is None:
        return None
    if isinstance(attributes, Mapping):
        df = pd.DataFrame.from_dict(dict(attributes), orient="index")
        df.index.name = "label"
        df = df.reset_index()
    elif isinstance(attributes, pd.DataFrame):
        df = attributes.reset_index() if "label" not in attributes.columns else attributes.copy()
        if "label" not in df.columns:
            df = df.rename(columns={df.columns[0]: "label"})
    else:
        raise ConfigError(
            f"`attributes` must be a pandas DataFrame or a dict keyed by label, got {type(attributes).__name__}"
        )
    reserved = {"geometry", "area_m2", "perimeter_m", "n_pixels", "n_blocks", "touches_edge", "touches_nodata"}
    clash = reserved.intersection(df.columns)
    if clash:
        raise ConfigError(f"`attributes` columns {sorted(clash)} clash with computed attributes", hint="rename them")
    df["label"] = df["label"].astype(np.int64)
    return df


def _driver_for(out: Path, driver: str | None, *, hint: str = "or pass driver=") -> str:
    """The vector driver ``driver`` names, else the one ``out``'s suffix tells; ``hint`` ends the error's
    hint (the command line has no ``driver=``)."""
    if driver is not None:
        return driver
    d = VECTOR_DRIVERS.get(out.suffix.lower())
    if d is None:
        raise ConfigError(f"cannot infer a vector format from `{out.name}`",
                          hint=f"end it in one of {', '.join(sorted(VECTOR_DRIVERS))}" + (f" {hint}" if hint else ""))
    return d


def _write(gdf, out: Path, driver: str, layer: str) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    if driver.lower() in ("parquet", "geoparquet"):
        write_atomic(out, lambda tmp: gdf.to_parquet(tmp, index=False))
        return
    kwargs: dict[str, Any] = {"engine": "pyogrio", "driver": driver}
    if driver.upper() == "GPKG":
        kwargs["layer"] = layer
    kwargs.update(_layer_geometry_type(gdf))
    with warnings.catch_warnings():  # a missing CRS was reported once, as NoCRSWarning
        warnings.filterwarnings("ignore", message="'crs' was not provided", category=UserWarning)
        write_atomic(out, lambda tmp: gdf.to_file(tmp, **kwargs))


def _layer_geometry_type(gdf) -> dict[str, Any]:
    """The layer's declared geometry type: what its rows hold.

    GPKG and Shapefile layers declare one type, which GIS software reads as
    the layer's type. After the ``overlap``/``iou`` merges every label is one
    4-connected region, so the layer is ``Polygon``; a label in several parts
    (other merges) makes it ``MultiPolygon``, every row promoted.
    """
    if len(gdf) and (gdf.geometry.geom_type == "MultiPolygon").any():
        return {"geometry_type": "MultiPolygon", "promote_to_multi": True}
    return {"geometry_type": "Polygon", "promote_to_multi": False}


# long only for its docstring: the body calls one function per step of the module docstring
def to_polygons(
    labels,
    *,
    out: str | os.PathLike | None = None,
    simplify_tolerance: float | None = None,
    driver: str | None = None,
    attributes=None,
    valid=None,
    node: bool = False,
    chunks: int | None = None,
    connectivity: int = 4,
    layer: str = "segments",
    progress: bool = False,
):
    """Polygonise a label raster block by block into one polygon per label.

    Parameters
    ----------
    labels : xarray.DataArray, numpy/dask array or path
        (y, x) integer labels, 0 = background, possibly dask-backed, with the
        CRS/transform on ``labels.rio``; or a path to a GeoTIFF/Zarr label
        raster. Plain arrays have no CRS.
    out : path-like, optional
        Also write the polygons here: ``.parquet`` (GeoParquet, default
        format), ``.gpkg`` (layer ``layer``), ``.geojson`` or ``.fgb``.
    simplify_tolerance : float, optional
        Coverage simplification tolerance in **metres** (in pixels when the
        raster has no CRS). Shared boundaries are simplified once and stay
        shared. ``None`` keeps the exact pixel outlines.
    driver : str, optional
        Override the format inferred from ``out``'s suffix (``"Parquet"``,
        ``"GPKG"``, any pyogrio driver).
    attributes : pandas.DataFrame or dict, optional
        Per-label attributes to join, e.g. ``pass``, ``pred_iou``,
        ``stability`` of SAM2 runs: a DataFrame with a ``label`` column (or
        indexed by label), or ``{label: {"pass": 1, ...}}``.
    valid : array-like or xarray.DataArray of bool, optional
        (y, x) validity mask of the source mosaic (False on nodata). Objects
        on or 4-adjacent to an invalid pixel get ``touches_nodata=True``;
        without a mask the column is all False.
    node : bool
        Insert a vertex wherever three polygons meet, so the output is a
        valid coverage (:func:`shapely.coverage_is_valid`); implied by
        ``simplify_tolerance``.
    chunks : int, optional
        Re-chunk to this block edge before polygonising (plain arrays default
        to 2048).
    connectivity : {4, 8}
        Pixel connectivity of the traced outlines; 4 as in the reference.
    layer : str
        Layer name for GeoPackage output.
    progress : bool
        Show the progress of the blocks and of the dissolve.

    Returns
    -------
    geopandas.GeoDataFrame
        One row per label, sorted by label, with columns ``label``,
        ``n_pixels``, ``area_m2``, ``perimeter_m`` (NaN without CRS),
        ``n_blocks``, ``touches_edge``, ``touches_nodata``, any joined
        ``attributes``, and ``geometry`` (Polygon or MultiPolygon) in the
        raster's CRS, or in pixel coordinates (x = column, y = row) with the
        CRS unset and a :class:`NoCRSWarning`.

    Examples
    --------
    >>> import numpy as np
    >>> lab = np.zeros((4, 4), np.uint32); lab[1:3, 1:3] = 7
    >>> import warnings
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("ignore")
    ...     gdf = to_polygons(lab, chunks=2)
    >>> gdf[["label", "n_pixels", "n_blocks"]].values.tolist()
    [[7, 4, 4]]
    >>> float(gdf.geometry.area[0])
    4.0
    """
    import geopandas as gpd
    import shapely

    _check_polygon_args(simplify_tolerance, connectivity, chunks)
    out_path = location(out) if out is not None else None
    drv = _driver_for(out_path, driver) if out_path is not None else None
    attr_df = _attribute_frame(attributes)

    data, crs, transform = _as_dask_labels(labels, chunks)
    height, width = (int(s) for s in data.shape)
    if crs is None:
        warnings.warn(
            "label raster has no CRS: polygons are in pixel coordinates (x = column, y = row) "
            "and the output CRS is left unset",
            NoCRSWarning,
            stacklevel=2,
        )
    halos = _valid_halo_blocks(valid, data) if valid is not None else None
    pieces = _polygonize_blocks(data, halos, connectivity, progress)
    table, geoms = _dissolve(*pieces, progress=progress)
    if (simplify_tolerance is not None or node) and len(geoms):
        tol_px = _tolerance_px(simplify_tolerance, crs, transform, height, width)
        # One vertex per pixel corner makes neighbours' vertices match, which
        # GEOS' coverage simplifier requires; it then drops collinear ones.
        geoms = shapely.coverage_simplify(shapely.segmentize(geoms, 1.0), tol_px, simplify_boundary=True)
    if crs is not None and len(geoms):
        geoms = _georeference(geoms, transform)
    gdf = _frame(table, geoms, crs)
    if attr_df is not None:
        gdf = gdf.merge(attr_df, on="label", how="left")
        gdf = gpd.GeoDataFrame(gdf, geometry="geometry", crs=crs)
    if out_path is not None:
        _write(gdf, out_path, drv, layer)
    return gdf


def _check_polygon_args(simplify_tolerance, connectivity, chunks) -> None:
    if connectivity not in (4, 8):
        raise ConfigError(f"`connectivity` must be 4 or 8, got {connectivity!r}")
    if simplify_tolerance is not None:
        check_number("simplify_tolerance", simplify_tolerance, minimum=0.0,
                     hint="metres: use e.g. 0.5 for half a metre, or None to keep pixel outlines")
    if chunks is not None:
        check_int("chunks", chunks, minimum=1)


def _valid_halo_blocks(valid, data):
    """Per-block delayed validity masks, each with a 1-px halo, on the chunks of ``data``."""
    import dask.array as da
    import xarray as xr

    vdata = valid.data if isinstance(valid, xr.DataArray) else valid
    if tuple(vdata.shape) != tuple(data.shape):
        raise CRSMismatchError(
            f"`valid` has shape {tuple(vdata.shape)}, labels have {tuple(int(s) for s in data.shape)}",
            hint="pass the validity mask of the same mosaic grid",
        )
    vdask = vdata if isinstance(vdata, da.Array) else da.from_array(np.asarray(vdata))
    vdask = vdask.astype(bool).rechunk(data.chunks)
    # 1-px halo so nodata just across a block face is seen; outside the
    # mosaic counts as valid (the mosaic edge is flagged separately).
    halo = da.overlap.overlap(vdask, depth=1, boundary=True)
    return halo.to_delayed(optimize_graph=False)


def _polygonize_blocks(data, halos, connectivity: int, progress: bool):
    """Step 1: every block traced in parallel; the per-label rows of all blocks, concatenated.

    Returns ``(label, n_pixels, wkb, on_edge, on_nodata)`` arrays, a row per (block, label).
    """
    import dask

    height, width = (int(s) for s in data.shape)
    y_off = np.concatenate([[0], np.cumsum(data.chunks[0])])
    x_off = np.concatenate([[0], np.cumsum(data.chunks[1])])
    blocks = data.to_delayed(optimize_graph=False)
    poly = dask.delayed(_polygonize_block, pure=True)
    tasks = []
    for iy in range(blocks.shape[0]):
        for ix in range(blocks.shape[1]):
            vh = halos[iy, ix] if halos is not None else None
            tasks.append(poly(blocks[iy, ix], vh, int(y_off[iy]), int(x_off[ix]), height, width, connectivity))
    with warnings.catch_warnings():  # around all the threads that trace blocks
        from .io import ignore_shapes_georeferencing

        ignore_shapes_georeferencing()
        results = compute_tracked(tasks, label="polygonize", enabled=progress)
    if not results:  # pragma: no cover - dask arrays always have a block
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, object), np.zeros(0, bool), np.zeros(0, bool)
    return tuple(np.concatenate([r[k] for r in results]) for k in range(5))


def _dissolve(lab, npx, wkb, edge, nod, *, progress: bool):
    """Step 2: one row per label; pieces of labels seen in several blocks are unioned.

    Returns the attribute columns (``label``, ``n_pixels``, ``n_blocks``,
    ``touches_edge``, ``touches_nodata``) and the geometries.
    """
    import shapely

    order = np.argsort(lab, kind="stable")
    lab, npx, wkb, edge, nod = lab[order], npx[order], wkb[order], edge[order], nod[order]
    ulab, n_blocks = unique(lab, return_counts=True)
    start = np.cumsum(n_blocks) - n_blocks  # first row of each label (``lab`` is sorted)
    table = {
        "label": ulab,
        "n_pixels": np.add.reduceat(npx, start) if len(lab) else np.zeros(0, np.int64),
        "n_blocks": n_blocks,
        "touches_edge": np.logical_or.reduceat(edge, start) if len(lab) else np.zeros(0, bool),
        "touches_nodata": np.logical_or.reduceat(nod, start) if len(lab) else np.zeros(0, bool),
    }
    geom_wkb = wkb[start].copy()
    multi = np.flatnonzero(n_blocks > 1)
    if len(multi):
        groups = [wkb[start[i] : start[i] + n_blocks[i]] for i in multi]
        geom_wkb[multi] = np.asarray(_union_groups(groups, progress), dtype=object)
    geoms = shapely.from_wkb(geom_wkb) if len(geom_wkb) else np.zeros(0, object)
    return table, geoms


def _union_groups(groups: list, progress: bool, batch: int = 256) -> list:
    """The union of each group of WKB pieces, in parallel batches (WKB out)."""
    import dask

    jobs = [dask.delayed(_union_batch, pure=True)(groups[k : k + batch]) for k in range(0, len(groups), batch)]
    return [g for part in compute_tracked(jobs, label="dissolve", enabled=progress) for g in part]


def _tolerance_px(simplify_tolerance, crs, transform, height: int, width: int) -> float:
    """Step 3's tolerance in pixels (metres converted at the mosaic centre; pixels without a CRS)."""
    if simplify_tolerance is None or simplify_tolerance == 0:
        return 0.0
    if crs is None:
        return float(simplify_tolerance)
    return float(simplify_tolerance) / _metres_per_pixel(transform, crs, height, width)


def _georeference(geoms, t):
    """Step 4: pixel-space geometries through the affine transform ``t``, in one vectorised call."""
    import shapely

    return shapely.transform(
        geoms,
        lambda xy: np.column_stack((t.a * xy[:, 0] + t.b * xy[:, 1] + t.c, t.d * xy[:, 0] + t.e * xy[:, 1] + t.f)),
    )


def _frame(table: dict, geoms, crs):
    """Step 5: the GeoDataFrame with the metric attributes, one row per label."""
    import geopandas as gpd

    area, perim = _area_perimeter_m(np.asarray(geoms, dtype=object), crs)
    return gpd.GeoDataFrame(
        {
            "label": table["label"].astype(np.int64),
            "n_pixels": table["n_pixels"].astype(np.int64),
            "area_m2": area.astype(float),
            "perimeter_m": perim.astype(float),
            "n_blocks": table["n_blocks"].astype(np.int32),
            "touches_edge": table["touches_edge"].astype(bool),
            "touches_nodata": table["touches_nodata"].astype(bool),
        },
        geometry=gpd.GeoSeries(np.asarray(geoms, dtype=object), crs=crs),
    )


def vectorize_labels(
    labels_path: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    simplify_tolerance: float | None = None,
    driver: str | None = None,
    attributes: str | os.PathLike | None = None,
    valid=None,
    node: bool = False,
    chunks: int | None = None,
    layer: str = "segments",
    overwrite: bool = False,
    progress: bool = False,
) -> Path:
    """Command-line entry: polygonise ``labels_path`` and write ``out_path``.

    ``attributes`` may here also be a path to a CSV or Parquet table with a
    ``label`` column (e.g. per-label SAM2 ``pass``/``pred_iou``/``stability``).
    An existing ``out_path`` is refused unless ``overwrite``, before any work.
    Other parameters are those of :func:`to_polygons`. Returns ``out_path``.
    """
    import pandas as pd

    check_bool("overwrite", overwrite)
    out = location(out_path)
    _driver_for(out, driver, hint="")  # before the labels are read; the command line has no driver=
    if out.exists() and not overwrite:
        raise OutputExistsError(f"`{out}` already exists", hint="pass --overwrite")
    if isinstance(attributes, (str, os.PathLike)):
        p = Path(attributes)
        if not p.exists():
            raise InputNotFoundError(f"attribute table `{p}` does not exist")
        attributes = pd.read_parquet(p) if p.suffix in (".parquet", ".pq") else pd.read_csv(p)
    to_polygons(
        labels_path,
        out=out_path,
        simplify_tolerance=simplify_tolerance,
        driver=driver,
        attributes=attributes,
        valid=valid,
        node=node,
        chunks=chunks,
        layer=layer,
        progress=progress,
    )
    return location(out_path)
