"""Segmentation quality metrics of the Remote SAMsing paper, implemented exactly.

Definitions (arXiv 2605.00256, Table 3; ``shared/design/reference.md`` §2).
``L`` is the label raster (0 = unsegmented), ``G`` the ground-truth class
raster (class 0 = "Other", the unannotated pixels), ``O`` the set of
ground-truth objects (instances of at least ``min_pixels`` pixels).

Coverage
    ``100 * |{p : L(p) > 0}| / |image|``.
ASA (Stutz et al. 2018)
    Each segment ``s`` gets its majority class ``c*(s)``;
    ``ASA = sum_s |s ∩ G_{c*(s)}| / N`` over all ``N`` pixels, and per class
    ``ASA_c = |{p : G(p) = c, L(p) > 0, c*(L(p)) = c}| / |{p : G(p) = c}|``.
    By default unsegmented pixels are **not** a segment, so they are never
    credited (the paper's text: uncovered pixels are penalised).
    ``paper_asa=True`` reproduces the paper's scripts
    (``eval_all_perclass_asa.py``), which treat label 0 as one more segment
    with its own majority class, crediting uncovered pixels.
Greedy-oracle reconstruction
    For each object ``o``: candidates are the segments overlapping ``o``;
    start from ``R = ∅`` and repeatedly add the candidate maximising
    ``IoU(R ∪ s, o)``; stop when no candidate raises the IoU;
    ``IoU_o = IoU(R, o)``. Segments may be reused across objects. Because
    segments are disjoint, ``|R ∪ s| = |R| + |s|`` and each step needs only
    the per-segment overlap ``|s ∩ o|`` (one bincount inside the object's
    bounding box) and the segment sizes: no pixel work per candidate.
Det@0.5, SS-Det@0.5, mIoU, n̄
    ``Det@0.5`` = fraction of objects with ``IoU_o >= 0.5``; ``SS-Det@0.5``
    the same with the best single segment; ``mIoU`` = mean ``IoU_o`` with
    missed objects counted as 0; ``n̄`` = mean ``|R|`` over all objects
    (missed objects count 0 segments).
BIoU (Cheng et al. 2021, d = 3 px)
    ``band(X) = X \\ erode(X, d)`` with a 3×3 square eroded ``d`` times
    (Cheng et al.'s ``cv2.erode(..., iterations=d)``), outside the image
    counting as background; ``BIoU_o = |band(R) ∩ band(o)| /
    |band(R) ∪ band(o)|`` on the greedy reconstruction ``R``; missed objects
    (``R = ∅``) score 0 and are averaged like mIoU.
Seam visibility
    For each seam face of the tiling (the side two neighbouring block cores
    share) and each line between neighbouring pixel columns (rows) within
    ``±P`` of the seam: the share of the line's labelled pairs (4-neighbours,
    at least one > 0) whose labels differ. The face's value is its worst
    line's share; the total is the faces' mean weighted by their length.
    Tiled over one window's value on the same seams shows how much the tile
    grid shows (goal ≤ 1.25).
Rows
    One row per class and an instance-weighted "Global" row (every object
    counts once).
Categories (the report's figure and table)
    Each object is *detected* (greedy-oracle IoU ≥ 0.5), *partial*
    (0.2 ≤ IoU < 0.5), *coarse* (0 < IoU < 0.2) or *missed* (no segment
    overlaps it, IoU 0).

Ground truth can be vectors (reprojected and rasterised onto the label grid,
later features overwrite earlier ones, objects under ``min_pixels`` skipped),
a class raster (objects = 4-connected components of each class, RGB-coded
rasters through a colour table) or boxes (CSV ``xmin,ymin,xmax,ymax`` in
pixels, or YOLO txt), scored by the box IoU of each reconstruction's
bounding box (the greedy oracle then maximises box IoU; BIoU and ASA are
undefined for boxes).

Ground truth is checked before scoring: vectors without a CRS on a
georeferenced raster (or the reverse) raise :class:`CRSMismatchError`;
ground truth with no object on the raster raises :class:`NoOverlapError`
(naming both extents in the raster's CRS); objects entirely outside the
raster are dropped with one :class:`GroundTruthOutsideWarning` giving their
count. Null class values and empty strings become the class ``"unlabelled"``.

Reports name what was scored: the labels, the ground truth and, for the
product of a run, the input and parameters its ``run.json`` records; the
figure draws on that input when no image is given and it can be read on the
labels' grid. A global n̄ above :data:`OVERSEGMENTED_N_BAR` is reported as
over-segmentation: there the greedy oracle builds objects from many small
segments, so Det@0.5 credits detections no single segment makes.

The paper's evaluation code was never published; the greedy oracle follows
the paper text and the commit messages quoted in reference.md §2.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._arrays import unique
from ._files import gdal_path, is_url, location, write_atomic, write_json_atomic
from ._progress import counted, track
from .io import quiet_georeferencing
from ._validate import check_choice, check_int
from .exceptions import (ConfigError, CRSMismatchError, InputError, InputNotFoundError, RemoteSamsingError,
                         RemoteSamsingWarning)
from .tiling import TilingPlan

__all__ = [
    "GroundTruth",
    "Report",
    "NoOverlapError",
    "GroundTruthOutsideWarning",
    "UNLABELLED",
    "OVERSEGMENTED_N_BAR",
    "CATEGORY_DEFINITIONS",
    "METRIC_DEFINITIONS",
    "coverage",
    "asa",
    "greedy_oracle",
    "boundary_band",
    "boundary_iou",
    "SeamVisibility",
    "seam_visibility",
    "seam_visibility_ratio",
    "seam_line_shares",
    "load_ground_truth",
    "evaluate",
    "write_report",
    "report_markdown",
    "report_title",
    "run_provenance",
    "DUBAI_COLOURS",
]

#: Colour table of the MBRSC/Humans-in-the-Loop Dubai aerial dataset.
DUBAI_COLOURS: dict[str, tuple[int, int, int]] = {
    "Building": (60, 16, 152),
    "Land": (132, 41, 246),
    "Road": (110, 193, 228),
    "Vegetation": (254, 221, 58),
    "Water": (226, 169, 41),
    "Unlabeled": (155, 155, 155),
}

class NoOverlapError(CRSMismatchError):
    """No ground-truth object lies on the label raster (all are outside its extent)."""


class GroundTruthOutsideWarning(RemoteSamsingWarning):
    """Some ground-truth objects lie entirely outside the label raster and were dropped."""


#: Class name given to ground-truth objects whose class value is null/NaN or an empty string.
UNLABELLED = "unlabelled"

#: Above this global n̄ the report says that Det@0.5 reflects over-segmentation.
OVERSEGMENTED_N_BAR = 5.0

#: Greedy-oracle IoU thresholds of the object categories (see :func:`_category`).
DETECTED_IOU = 0.5
PARTIAL_IOU = 0.2

#: What each object category (outline colour in the report figure) means.
CATEGORY_DEFINITIONS: dict[str, str] = {
    "detected": f"greedy-oracle IoU ≥ {DETECTED_IOU}",
    "partial": f"{PARTIAL_IOU} ≤ IoU < {DETECTED_IOU}",
    "coarse": f"0 < IoU < {PARTIAL_IOU}",
    "missed": "no segment overlaps the object (IoU 0)",
}

#: One sentence per metric, as printed in report.md after what was scored.
METRIC_DEFINITIONS: dict[str, str] = {
    "Det@0.5": (
        "the share of ground-truth objects whose greedy-oracle reconstruction (the union of "
        "overlapping segments added one by one while the IoU with the object rises) reaches IoU ≥ 0.5."
    ),
    "SS-Det@0.5": "the share of ground-truth objects matched with IoU ≥ 0.5 by their best single segment.",
    "mIoU": "the mean IoU of the objects' greedy-oracle reconstructions, missed objects counting 0.",
    "BIoU": (
        "the mean boundary IoU (Cheng et al. 2021) of the reconstructions, comparing only the inner "
        "boundary bands {d} px wide, missed objects counting 0."
    ),
    "ASA": (
        "the achievable segmentation accuracy, the share of pixels labelled correctly if every "
        "segment took its majority ground-truth class ({asa_variant})."
    ),
    "n̄": "the mean number of segments in an object's greedy-oracle reconstruction (missed objects count 0).",
    "coverage": "the percentage of pixels that belong to any segment (label > 0).",
}

_VECTOR_SUFFIXES = {".geojson", ".json", ".gpkg", ".parquet", ".geoparquet", ".shp", ".fgb"}
_CROSS = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], bool)


# ---------------------------------------------------------------------------
# Elementary metrics
# ---------------------------------------------------------------------------


def coverage(labels: np.ndarray) -> float:
    """Percentage of pixels with a label > 0.

    >>> coverage(np.array([[0, 1], [2, 2]]))
    75.0
    """
    labels = np.asarray(labels)
    return 100.0 * float(np.count_nonzero(labels)) / labels.size if labels.size else 0.0


def _dense(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Sequential relabelling 1..n (0 stays 0), so bincounts stay small."""
    uniq, inv = unique(labels, return_inverse=True)
    if len(uniq) and uniq[0] == 0:
        return inv.astype(np.int64), len(uniq) - 1
    return (inv + 1).astype(np.int64), len(uniq)


def asa(labels: np.ndarray, classes: np.ndarray, *, n_classes: int | None = None, paper_asa: bool = False):
    """Achievable segmentation accuracy, global and per class.

    Parameters
    ----------
    labels : (y, x) int array
        Segments, 0 = unsegmented.
    classes : (y, x) int array
        Ground-truth class per pixel, 0..C (0 = "Other"/unannotated).
    n_classes : int, optional
        ``C + 1``; default ``classes.max() + 1``.
    paper_asa : bool
        Treat label 0 as one more segment (the paper scripts' variant).

    Returns
    -------
    (float, numpy.ndarray)
        Global ASA and per-class ASA_c (NaN for absent classes).

    Examples
    --------
    >>> L = np.array([[1, 1, 0, 0]]); G = np.array([[1, 0, 0, 1]])
    >>> asa(L, G)[0]  # segment 1 -> class 0 (tie -> lowest), credits 1 px
    0.25
    >>> asa(L, G, paper_asa=True)[0]  # label 0 also credits 1 px
    0.5
    """
    labels = np.asarray(labels)
    classes = np.asarray(classes, dtype=np.int64)
    if labels.shape != classes.shape:
        raise CRSMismatchError(f"labels {labels.shape} and classes {classes.shape} differ in shape")
    k = int(classes.max()) + 1 if n_classes is None else int(n_classes)
    seg, nseg = _dense(labels)
    joint = np.bincount((seg * k + classes).ravel(), minlength=(nseg + 1) * k).reshape(nseg + 1, k)
    major = np.argmax(joint, axis=1)  # ties -> lowest class index
    credited = joint[np.arange(nseg + 1), major]
    if not paper_asa:
        credited = credited.copy()
        credited[0] = 0
    n = labels.size
    glob = float(credited.sum()) / n if n else float("nan")
    per = np.full(k, np.nan)
    totals = joint.sum(axis=0)
    for c in range(k):
        if totals[c]:
            rows = major == c
            if not paper_asa:
                rows[0] = False
            per[c] = float(joint[rows, c].sum()) / totals[c]
    return glob, per


def greedy_oracle(inter: np.ndarray, sizes: np.ndarray, obj_size: int) -> tuple[np.ndarray, float]:
    """Greedy-oracle reconstruction from overlap counts.

    Parameters
    ----------
    inter : (k,) int array
        ``|s ∩ o|`` for each candidate segment ``s``.
    sizes : (k,) int array
        ``|s|`` for each candidate (segments are disjoint).
    obj_size : int
        ``|o|``.

    Returns
    -------
    (numpy.ndarray, float)
        Indices of the chosen candidates in the order added, and ``IoU(R, o)``.

    Examples
    --------
    An object of 10 px split into segments of 6 px (6 inside) and 5 px (4
    inside, 1 leaking): IoU 6/10 = 0.6, then (6+4)/(11) = 0.909.

    >>> greedy_oracle(np.array([6, 4]), np.array([6, 5]), 10)
    (array([0, 1]), 0.9090909090909091)
    """
    inter = np.asarray(inter, dtype=np.float64)
    sizes = np.asarray(sizes, dtype=np.float64)
    chosen: list[int] = []
    avail = inter > 0
    i_r = 0.0
    s_r = 0.0
    best = 0.0
    while avail.any():
        iou = np.where(avail, (i_r + inter) / (s_r + sizes + obj_size - i_r - inter), -1.0)
        j = int(np.argmax(iou))
        if iou[j] <= best:
            break
        best = float(iou[j])
        chosen.append(j)
        avail[j] = False
        i_r += inter[j]
        s_r += sizes[j]
    return np.asarray(chosen, dtype=np.int64), best


def boundary_band(mask: np.ndarray, d: int = 3) -> np.ndarray:
    """Inner boundary band ``X \\ erode(X, d)`` (3×3 square, ``d`` iterations).

    Pixels outside the array count as background, so a mask touching the
    array edge has a band along that edge (as Cheng et al.'s zero padding).

    >>> m = np.zeros((9, 9), bool); m[1:8, 1:8] = True
    >>> int(boundary_band(m, 3).sum())  # 7x7 minus its 1x1 core
    48
    """
    from scipy.ndimage import binary_erosion

    mask = np.asarray(mask, bool)
    if d <= 0:
        return np.zeros_like(mask)
    eroded = binary_erosion(mask, structure=np.ones((3, 3), bool), iterations=d, border_value=0)
    return mask & ~eroded


def boundary_iou(a: np.ndarray, b: np.ndarray, d: int = 3) -> float:
    """Boundary IoU of two masks on the same grid (0 if both bands are empty).

    >>> a = np.zeros((12, 12), bool); a[1:11, 1:11] = True
    >>> round(boundary_iou(a, a), 6)
    1.0
    """
    ba, bb = boundary_band(a, d), boundary_band(b, d)
    union = np.count_nonzero(ba | bb)
    return float(np.count_nonzero(ba & bb) / union) if union else 0.0


def _box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of boxes (x0, y0, x1, y1); ``a`` (n, 4) against one box ``b`` (4,)."""
    ix = np.clip(np.minimum(a[:, 2], b[2]) - np.maximum(a[:, 0], b[0]), 0, None)
    iy = np.clip(np.minimum(a[:, 3], b[3]) - np.maximum(a[:, 1], b[1]), 0, None)
    inter = ix * iy
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[2] - b[0]) * (b[3] - b[1])
    return inter / np.maximum(area_a + area_b - inter, 1e-12)


# ---------------------------------------------------------------------------
# Seam visibility
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SeamVisibility:
    """Seam visibility of a label image: one value per seam face and their length-weighted mean.

    Attributes
    ----------
    blocks : (n, 2, 2) int array
        The two blocks ``(iy, ix)`` either side of each face, as ``merge_faces.json`` names them.
    kind : tuple of str
        ``"x"`` for a face between a block and its right neighbour (a vertical seam line),
        ``"y"`` for one between a block and the block below (a horizontal one).
    lengths : (n,) int array
        Pixel pairs along each line of the face (the cores' shared side).
    values : (n,) float array
        The face's worst line share, NaN where no line has a labelled pair.
    offsets : (n,) int array
        Where the worst line lies: ``d`` in ``[-padding, padding]``, the line between
        ``seam + d - 1`` and ``seam + d`` (0 where the value is NaN).
    mean : float
        Length-weighted mean of the values that are not NaN; NaN where none is.
    """

    blocks: np.ndarray
    kind: tuple[str, ...]
    lengths: np.ndarray
    values: np.ndarray
    offsets: np.ndarray
    mean: float

    def to_records(self) -> list[dict]:
        """One dict per face (``blocks``, ``kind``, ``seam_visibility``, ``seam_offset``), None for NaN."""
        return [{"blocks": b.tolist(), "kind": k, "seam_visibility": None if v != v else float(v),
                 "seam_offset": None if v != v else int(o)}
                for b, k, v, o in zip(self.blocks, self.kind, self.values, self.offsets)]


def _seam_faces(plan: TilingPlan):
    """Each seam face: its two blocks, its kind and the length of its cores' shared side."""
    ys, xs = plan.starts
    for iy, ix in plan.block_ids():
        if ix + 1 < plan.grid_shape[1]:
            yield ((iy, ix), (iy, ix + 1)), "x", int(ys[iy + 1] - ys[iy])
        if iy + 1 < plan.grid_shape[0]:
            yield ((iy, ix), (iy + 1, ix)), "y", int(xs[ix + 1] - xs[ix])


def seam_line_shares(strip: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Labelled pairs and boundary pairs across each line between neighbouring columns of ``strip``.

    A pair counts when at least one of its pixels is labelled (> 0) and carries a boundary when
    the two labels differ.

    >>> seam_line_shares(np.array([[1, 1, 2], [1, 0, 0], [0, 0, 0]]))
    (array([2, 1]), array([1, 1]))
    """
    left, right = strip[:, :-1], strip[:, 1:]
    counted = np.count_nonzero((left > 0) | (right > 0), axis=0)
    boundary = np.count_nonzero(left != right, axis=0)
    return counted, boundary


def _worst_line(counted: np.ndarray, boundary: np.ndarray, d0: int) -> tuple[float, int]:
    """Largest share over the lines with a labelled pair and its offset (nearest the seam on ties)."""
    ok = np.flatnonzero(counted > 0)
    if not ok.size:
        return float("nan"), 0
    share = boundary[ok] / counted[ok]
    d = ok + d0
    best = np.flatnonzero(share == share.max())
    j = best[np.argmin(np.abs(d[best]))]
    return float(share[j]), int(d[j])


def seam_visibility(labels, *, tile_size: int, padding: int) -> SeamVisibility:
    """How visible the tiling's seams are in ``labels``: label boundaries on straight seam lines.

    For each seam face (the side two neighbouring block cores of
    ``TilingPlan(shape=labels.shape, tile_size=tile_size, padding=padding)`` share),
    each line between neighbouring pixel columns (rows) within ``±padding`` of the
    seam gets the share of its labelled pairs that carry a label boundary (see
    :func:`seam_line_shares`); the face's value is its worst line's share
    (near 1 where objects end on the seam).

    Parameters
    ----------
    labels : (y, x) int array
        Labels, 0 = background. A dask array, DataArray or Zarr array is read
        one block core at a time.
    tile_size, padding : int
        The tiling, as the run used it.

    Returns
    -------
    SeamVisibility
        Per-face values and their mean weighted by face length.

    Examples
    --------
    Two labels meeting on the seam of 4-px tiles: the vertical faces score 1
    (offset 0), the horizontal ones 0.

    >>> lab = np.ones((8, 8), np.uint32); lab[:, 4:] = 2
    >>> vis = seam_visibility(lab, tile_size=4, padding=1)
    >>> vis.kind, vis.values.tolist(), vis.mean
    (('x', 'y', 'y', 'x'), [1.0, 0.0, 0.0, 1.0], 0.5)
    """
    shape, dtype = tuple(getattr(labels, "shape", ())), np.dtype(getattr(labels, "dtype", None))
    if len(shape) != 2 or not np.issubdtype(dtype, np.integer):
        raise InputError(f"`labels` must be a 2-D integer array, got shape {shape} dtype {dtype}")
    plan = TilingPlan(shape=shape, tile_size=tile_size, padding=padding)
    parts = {bid: seam_block_parts(_read_core(labels, plan, bid), padding=padding) for bid in plan.block_ids()}
    return seam_visibility_from_parts(plan, parts)


def _read_core(labels, plan: TilingPlan, block_id) -> np.ndarray:
    """The core of ``block_id`` in ``labels``, read alone (a dask array computes only it, a Zarr
    array reads only the chunks under it)."""
    w = plan.core_window(block_id)
    part = labels[w.y0:w.y1, w.x0:w.x1]
    return np.asarray(part.compute() if hasattr(part, "compute") else part)


def seam_block_parts(core: np.ndarray, *, padding: int) -> dict:
    """What one block's core contributes to the seam visibility of its four sides.

    A block is measured alone, where its labels are (a run: in the task that writes it), and
    :func:`seam_visibility_from_parts` combines the blocks.

    Returns
    -------
    dict
        ``"x"``: labelled and boundary pairs of the lines within ``padding`` of the core's left
        side (offsets 1, 2, ...) and of its right side (offsets ..., -2, -1); ``"y"``: the same
        for top and bottom; ``"edges"``: the core's first and last column, first and last row,
        for the line across each seam (offset 0).
    """
    def sides(c: np.ndarray) -> tuple:
        k = min(padding, c.shape[1] - 1)
        return seam_line_shares(c[:, : k + 1]), seam_line_shares(c[:, c.shape[1] - k - 1:])

    core = np.asarray(core)
    return {"x": sides(core), "y": sides(core.T),
            "edges": (core[:, 0].copy(), core[:, -1].copy(), core[0].copy(), core[-1].copy())}


def seam_visibility_from_parts(plan: TilingPlan, parts) -> SeamVisibility:
    """:class:`SeamVisibility` from every block's :func:`seam_block_parts` (a mapping by block id)."""
    blocks, kinds, lengths, values, offsets = [], [], [], [], []
    for pair, kind, length in _seam_faces(plan):
        a, b = parts[pair[0]], parts[pair[1]]
        edge = 1 if kind == "x" else 3
        across = seam_line_shares(np.stack([a["edges"][edge], b["edges"][edge - 1]], axis=1))
        (before_n, before_b), (after_n, after_b) = a[kind][1], b[kind][0]
        counted = np.concatenate([before_n, across[0], after_n])
        boundary = np.concatenate([before_b, across[1], after_b])
        value, offset = _worst_line(counted, boundary, -len(before_n))
        blocks.append(pair), kinds.append(kind), lengths.append(length)
        values.append(value), offsets.append(offset)
    values, lengths = np.asarray(values, np.float64), np.asarray(lengths, np.int64)
    ok = ~np.isnan(values)
    mean = float(np.sum(values[ok] * lengths[ok]) / lengths[ok].sum()) if ok.any() else float("nan")
    return SeamVisibility(blocks=np.asarray(blocks, np.int64).reshape(-1, 2, 2), kind=tuple(kinds),
                          lengths=lengths, values=values, offsets=np.asarray(offsets, np.int64), mean=mean)


def seam_visibility_ratio(labels, reference, *, tile_size: int, padding: int) -> float:
    """Seam visibility of ``labels`` over that of ``reference`` (one window's labels) on the same seams.

    1 where the seams show no more than in one window; 1 also where neither has a boundary there
    (inf where only ``labels`` has one, NaN where either has no labelled pair near a seam).

    >>> lab = np.ones((8, 8), np.uint32); lab[:, 4:] = 2
    >>> seam_visibility_ratio(lab, lab, tile_size=4, padding=1)
    1.0
    """
    a = seam_visibility(labels, tile_size=tile_size, padding=padding).mean
    b = seam_visibility(reference, tile_size=tile_size, padding=padding).mean
    if a != a or b != b:
        return float("nan")
    if b == 0:
        return 1.0 if a == 0 else float("inf")
    return a / b


# ---------------------------------------------------------------------------
# Ground truth
# ---------------------------------------------------------------------------


@dataclass
class GroundTruth:
    """Ground truth on the label raster's grid.

    Attributes
    ----------
    instances : (y, x) int32 array
        Object ids 1..K, 0 = no object (for boxes: the filled boxes, for the figure).
    object_class : (K + 1,) int array
        Class index of each object (entry 0 unused).
    class_names : list of str
        Index 0 is "Other" (unannotated pixels).
    class_raster : (y, x) int array or None
        Class per pixel for ASA; None for boxes.
    boxes : (K + 1, 4) float array or None
        ``x0, y0, x1, y1`` in pixels (continuous, pixel edges) for box GT.
    n_skipped : int
        Objects dropped for having fewer than ``min_pixels`` pixels.
    n_outside : int
        Objects dropped for lying entirely outside the label raster.
    """

    instances: np.ndarray
    object_class: np.ndarray
    class_names: list[str]
    class_raster: np.ndarray | None = None
    boxes: np.ndarray | None = None
    n_skipped: int = 0
    n_outside: int = 0

    @property
    def n_objects(self) -> int:
        return len(self.object_class) - 1


def _read_vectors(path_or_gdf):
    import geopandas as gpd

    if isinstance(path_or_gdf, gpd.GeoDataFrame):
        return path_or_gdf
    p = Path(path_or_gdf)
    if p.suffix.lower() in (".parquet", ".geoparquet"):
        return gpd.read_parquet(p)
    with warnings.catch_warnings():
        # GDAL reads a GeoJSON field mixing numbers and strings as a JSON-typed
        # string field that pyogrio then fails to parse; the strings are what we want
        warnings.filterwarnings("ignore", message="Could not parse column .* as JSON", category=UserWarning)
        return gpd.read_file(p, engine="pyogrio")


def _crs_name(crs) -> str:
    if crs is None:
        return "pixel coordinates (no CRS)"
    to_string = getattr(crs, "to_string", None)
    return to_string() if callable(to_string) else str(crs)


def _raster_bounds(shape, transform) -> tuple[float, float, float, float]:
    """(xmin, ymin, xmax, ymax) of a (height, width) grid under ``transform``."""
    h, w = shape
    xs, ys = zip(*(transform @ (c, r) for c, r in ((0, 0), (w, 0), (0, h), (w, h))))
    return float(min(xs)), float(min(ys)), float(max(xs)), float(max(ys))


def _fmt_bounds(b) -> str:
    return "[" + ", ".join(f"{v:.6g}" if abs(v) < 1e5 else f"{v:.1f}" for v in b) + "]"


def _check_overlap(on: np.ndarray, *, gt_bounds, raster_bounds, crs, what: str) -> int:
    """Raise :class:`NoOverlapError` if no object is on the raster; warn once about the others.

    ``on`` is a boolean per object (True = on the raster). Returns the number
    of objects outside.
    """
    n = len(on)
    n_out = int(n - np.count_nonzero(on))
    if n and n_out == n:
        raise NoOverlapError(
            f"none of the {n} ground-truth {what} lies on the label raster: the ground truth spans "
            f"{_fmt_bounds(gt_bounds)} but the raster covers {_fmt_bounds(raster_bounds)} "
            f"(xmin, ymin, xmax, ymax in {_crs_name(crs)})",
            hint="check that the ground truth belongs to this raster and that both declare the right CRS",
        )
    if n_out:
        warnings.warn(
            GroundTruthOutsideWarning(
                f"{n_out} of {n} ground-truth {what} lie entirely outside the label raster and were dropped"
            ),
            stacklevel=4,
        )
    return n_out


def _class_names_of(values) -> np.ndarray:
    """Class values as strings: nulls and empty strings -> ``UNLABELLED``, integral floats as integers
    (1.0 -> "1")."""
    import pandas as pd

    vals = np.asarray(values, dtype=object)
    null = np.asarray(pd.isna(pd.Series(vals, dtype=object)), dtype=bool)
    out = np.empty(len(vals), dtype=object)
    for i, v in enumerate(vals):
        if null[i]:
            out[i] = UNLABELLED
        elif isinstance(v, (float, np.floating)) and float(v).is_integer():
            out[i] = str(int(v))
        elif isinstance(v, bytes):
            out[i] = v.decode(errors="replace")
        else:
            out[i] = str(v)
        if not out[i].strip():  # an empty field names no class, as a null does
            out[i] = UNLABELLED
    return out


def _class_field(df, classes, what: str):
    """Validate the class field name ``classes`` of a table ``df``."""
    if not isinstance(classes, str):
        raise ConfigError(
            f"`classes` for {what} must be a field name (str), got {type(classes).__name__} {classes!r}",
            hint="pass the name of the attribute that holds the class",
        )
    if classes not in df.columns:
        raise ConfigError(
            f"class field `{classes}` is not in the {what}",
            hint=f"choose one of {', '.join(str(c) for c in df.columns if c != 'geometry') or '(no fields)'}",
        )
    return df[classes]


def _vectors_to_gt(gdf, *, shape, crs, transform, classes, min_pixels):
    import rasterio.features
    import shapely

    if gdf.crs is not None and crs is not None:
        gdf = gdf.to_crs(crs)
    elif gdf.crs is not None and crs is None:
        raise CRSMismatchError(
            f"the ground truth is georeferenced ({_crs_name(gdf.crs)}) but the label raster has no CRS "
            "(pixel coordinates)",
            hint="evaluate the georeferenced label raster (a GeoTIFF or labels.zarr with its CRS), "
                 "or pass vectors in pixel coordinates without a CRS",
        )
    elif gdf.crs is None and crs is not None:
        raise CRSMismatchError(
            f"the ground-truth vectors have no CRS but the label raster is in {_crs_name(crs)}",
            hint="declare the CRS the vectors' coordinates are in (GeoDataFrame.set_crs, or "
                 "`ogr2ogr -a_srs EPSG:XXXX`); vectors in pixel coordinates need a label raster without a CRS",
        )
    gdf = gdf[gdf.geometry.notna() & gdf.geometry.geom_type.isin(["Polygon", "MultiPolygon"])]
    field_values = _class_field(gdf, classes, "ground truth") if classes is not None else None
    n_outside = 0
    if len(gdf):
        rb = _raster_bounds(shape, transform)
        footprint = shapely.box(*rb)
        geoms = gdf.geometry.to_numpy()
        on = np.asarray(shapely.intersects(geoms, footprint) & ~shapely.touches(geoms, footprint), bool)
        n_outside = _check_overlap(on, gt_bounds=gdf.total_bounds, raster_bounds=rb, crs=crs, what="objects")
        if n_outside:
            gdf = gdf[on]
            field_values = field_values[on] if field_values is not None else None
    if classes is not None:
        values = _class_names_of(field_values.to_numpy())
        names = sorted(set(values.tolist()))
        idx = {n: i + 1 for i, n in enumerate(names)}
        cls_of_feature = np.array([idx[v] for v in values], dtype=np.int64)
    else:
        names = ["object"]
        cls_of_feature = np.ones(len(gdf), dtype=np.int64)
    n = len(gdf)
    if n:
        # Pasted in file order: later features overwrite earlier ones (paper).
        raw = rasterio.features.rasterize(
            zip(gdf.geometry.to_numpy(), range(1, n + 1)),
            out_shape=shape,
            transform=transform,
            fill=0,
            dtype="int32",
        )
    else:
        raw = np.zeros(shape, np.int32)
    feat_class = np.concatenate([[0], cls_of_feature])
    class_raster = feat_class[raw]
    counts = np.bincount(raw.ravel(), minlength=n + 1)
    keep = np.flatnonzero(counts >= min_pixels)
    keep = keep[keep > 0]
    present = int(np.count_nonzero(counts[1:]))
    lut = np.zeros(n + 1, np.int32)
    lut[keep] = np.arange(1, len(keep) + 1, dtype=np.int32)
    instances = lut[raw]
    object_class = np.concatenate([[0], feat_class[keep]])
    return GroundTruth(
        instances=instances,
        object_class=object_class,
        class_names=["Other", *names],
        class_raster=class_raster,
        n_skipped=present - len(keep),
        n_outside=n_outside,
    )


def _read_raster_array(path):
    import rasterio

    with quiet_georeferencing(), rasterio.open(path) as src:
        return src.read()


def _decode_classes(arr, shape, classes, colour_table, raster_mode):
    """Class names, the class index raster (1..C, 0 = Other) and, for one band, the raw values."""
    values = None
    if arr.ndim == 3:  # RGB-coded classes
        rgb = arr[..., :3].astype(np.int64)
        code = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
        if colour_table is None:
            uniq = unique(code)
            colour_table = {f"{c >> 16},{(c >> 8) & 255},{c & 255}": (c >> 16, (c >> 8) & 255, c & 255) for c in uniq}
        names = list(colour_table)
        class_raster = np.zeros(shape, np.int64)
        for i, name in enumerate(names, start=1):
            r, g, b = colour_table[name]
            class_raster[code == ((r << 16) | (g << 8) | b)] = i
    else:
        values = arr.astype(np.int64)
        if raster_mode == "instance":
            names = ["object"]
            class_raster = (values != 0).astype(np.int64)
        else:
            uniq = [int(v) for v in unique(values) if v != 0]
            if isinstance(classes, Mapping):
                names = [str(n) for n in _class_names_of([classes.get(v, v) for v in uniq])]
            else:
                names = [str(v) for v in uniq]
            lut_vals = np.zeros(int(values.max()) + 1 if values.size else 1, np.int64)
            for i, v in enumerate(uniq, start=1):
                lut_vals[v] = i
            if values.min(initial=0) < 0:
                raise InputError("class raster has negative values", hint="use 0 for unannotated pixels")
            class_raster = lut_vals[values]
    return names, class_raster, values


def _raster_to_gt(arr, *, shape, classes, colour_table, ignore_classes, raster_mode, min_pixels):
    from scipy import ndimage

    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[0] in (3, 4) and arr.shape[-1] not in (3, 4):
        arr = np.moveaxis(arr, 0, -1)  # (band, y, x) -> (y, x, band)
    if arr.ndim == 3 and arr.shape[0] == 1 and arr.shape[1:] == tuple(shape):
        arr = arr[0]  # a single-band raster file, as rasterio reads it
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.shape[:2] != tuple(shape):
        raise CRSMismatchError(
            f"ground-truth raster has shape {arr.shape[:2]}, labels have {tuple(shape)}",
            hint="rasterise or resample the ground truth onto the label grid",
        )
    names, class_raster, values = _decode_classes(arr, shape, classes, colour_table, raster_mode)
    ignored = {i for i, n in enumerate(names, start=1) if n in set(ignore_classes)}
    inst = np.zeros(shape, np.int32)
    object_class = [0]
    skipped = 0
    if raster_mode == "instance" and arr.ndim == 2:
        comps, n = _dense(values)
        sizes = np.bincount(comps.ravel(), minlength=n + 1)
        keep = [j for j in range(1, n + 1) if sizes[j] >= min_pixels]
        skipped = n - len(keep)
        lut = np.zeros(n + 1, np.int32)
        lut[keep] = np.arange(1, len(keep) + 1)
        inst = lut[comps]
        object_class = [0] + [1] * len(keep)
    else:
        for c in range(1, len(names) + 1):
            if c in ignored:
                continue
            comps, n = ndimage.label(class_raster == c, structure=_CROSS)
            if n == 0:
                continue
            sizes = np.bincount(comps.ravel(), minlength=n + 1)
            keep = np.flatnonzero(sizes >= min_pixels)
            keep = keep[keep > 0]
            skipped += n - len(keep)
            lut = np.zeros(n + 1, np.int32)
            start = len(object_class)
            lut[keep] = np.arange(start, start + len(keep), dtype=np.int32)
            sel = comps > 0
            inst[sel] = lut[comps[sel]]
            object_class.extend([c] * len(keep))
    return GroundTruth(
        instances=inst,
        object_class=np.asarray(object_class, np.int64),
        class_names=["Other", *names],
        class_raster=class_raster,
        n_skipped=skipped,
    )


def _boxes_to_gt(path, *, shape, classes, box_format, image_name):
    import pandas as pd

    p = Path(path)
    fmt = box_format or ("yolo" if p.suffix.lower() == ".txt" else "csv")
    h, w = shape
    if fmt == "csv":
        df = pd.read_csv(p)
        missing = {"xmin", "ymin", "xmax", "ymax"} - set(df.columns)
        if missing:
            raise InputError(f"box CSV `{p}` lacks columns {sorted(missing)}", hint="columns xmin,ymin,xmax,ymax in pixels")
        if image_name is not None and "image_path" in df.columns:
            df = df[df["image_path"].astype(str) == str(image_name)]
        xyxy = df[["xmin", "ymin", "xmax", "ymax"]].to_numpy(float)
        if classes is not None and not isinstance(classes, Mapping):
            values = _class_names_of(_class_field(df, classes, f"box CSV `{p}`").to_numpy())
        else:
            values = np.array(["object"] * len(df), dtype=object)
    elif fmt == "yolo":
        rows = np.loadtxt(p, ndmin=2) if p.stat().st_size else np.zeros((0, 5))
        cx, cy, bw, bh = rows[:, 1] * w, rows[:, 2] * h, rows[:, 3] * w, rows[:, 4] * h
        xyxy = np.column_stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2])
        values = rows[:, 0].astype(int).astype(str)
    else:
        raise ConfigError(f"`box_format` must be 'csv' or 'yolo', got {box_format!r}")
    valid = (xyxy[:, 2] > xyxy[:, 0]) & (xyxy[:, 3] > xyxy[:, 1])
    xyxy, values = xyxy[valid], values[valid]
    on = (xyxy[:, 2] > 0) & (xyxy[:, 0] < w) & (xyxy[:, 3] > 0) & (xyxy[:, 1] < h)
    gt_bounds = (*xyxy[:, :2].min(axis=0), *xyxy[:, 2:].max(axis=0)) if len(xyxy) else (0, 0, 0, 0)
    n_outside = _check_overlap(on, gt_bounds=gt_bounds, raster_bounds=(0, 0, w, h), crs=None, what="boxes")
    xyxy = np.clip(xyxy, 0, [w, h, w, h])
    ok = (xyxy[:, 2] > xyxy[:, 0]) & (xyxy[:, 3] > xyxy[:, 1])
    xyxy, values = xyxy[ok], values[ok]
    names = sorted(set(values.tolist()))
    idx = {n: i + 1 for i, n in enumerate(names)}
    inst = np.zeros(shape, np.int32)
    for k, (x0, y0, x1, y1) in enumerate(xyxy, start=1):
        inst[int(np.floor(y0)) : int(np.ceil(y1)), int(np.floor(x0)) : int(np.ceil(x1))] = k
    return GroundTruth(
        instances=inst,
        object_class=np.concatenate([[0], [idx[v] for v in values]]).astype(np.int64),
        class_names=["Other", *names],
        class_raster=None,
        boxes=np.vstack([np.zeros((1, 4)), xyxy]),
        n_skipped=int((~valid).sum()),
        n_outside=n_outside,
    )


def load_ground_truth(
    ground_truth,
    *,
    shape: tuple[int, int],
    crs=None,
    transform=None,
    classes: str | Mapping | None = None,
    min_pixels: int = 10,
    colour_table: Mapping[str, tuple[int, int, int]] | None = None,
    ignore_classes: Sequence[str] = (),
    raster_mode: str = "class",
    box_format: str | None = None,
    image_name: str | None = None,
) -> GroundTruth:
    """Bring ground truth onto the label raster's grid.

    Parameters
    ----------
    ground_truth : path, GeoDataFrame, array or GroundTruth
        Vectors (``.geojson``, ``.gpkg``, ``.parquet``, ``.shp``, ``.fgb`` or a
        GeoDataFrame), boxes (``.csv`` / YOLO ``.txt``), or a class raster
        (any GDAL raster or a numpy array; RGB rasters are colour-coded).
    shape, crs, transform
        The label raster's grid. ``transform`` defaults to the identity.
    classes : str or mapping, optional
        Vectors/CSV boxes: the class field. Single-band rasters: a mapping
        value -> class name. Null values (None/NaN) and empty strings become
        the class ``"unlabelled"`` (:data:`UNLABELLED`); other values are compared as
        strings, integral floats written as integers (``1``, ``1.0`` and
        ``"1"`` are one class), so mixed-type fields are fine.
    min_pixels : int
        Objects smaller than this (after rasterisation) are skipped (paper: 10).
    colour_table : mapping, optional
        Class name -> (r, g, b) for RGB-coded class rasters (e.g.
        :data:`DUBAI_COLOURS`); unmatched colours become "Other".
    ignore_classes : sequence of str
        Raster classes that form no objects (still scored in ASA).
    raster_mode : {"class", "instance"}
        Single-band rasters: class ids (objects = 4-connected components per
        class) or instance ids (each value one object).
    box_format : {"csv", "yolo"}, optional
        Default from the suffix.
    image_name : str, optional
        For CSVs with an ``image_path`` column, keep only these rows.
    """
    from affine import Affine

    if isinstance(ground_truth, GroundTruth):
        return ground_truth
    check_choice("raster_mode", raster_mode, ("class", "instance"))
    check_int("min_pixels", min_pixels, minimum=1)
    transform = Affine.identity() if transform is None else transform
    shape = tuple(int(s) for s in shape)
    try:
        import geopandas as gpd

        is_gdf = isinstance(ground_truth, gpd.GeoDataFrame)
    except ImportError:  # pragma: no cover
        is_gdf = False
    if is_gdf:
        return _vectors_to_gt(ground_truth, shape=shape, crs=crs, transform=transform, classes=classes, min_pixels=min_pixels)
    if isinstance(ground_truth, np.ndarray):
        return _raster_to_gt(
            ground_truth, shape=shape, classes=classes, colour_table=colour_table,
            ignore_classes=ignore_classes, raster_mode=raster_mode, min_pixels=min_pixels,
        )
    p = Path(ground_truth)
    if not p.exists():
        raise InputNotFoundError(f"ground truth `{p}` does not exist", hint="pass vectors, a class raster or a box CSV")
    suffix = p.suffix.lower()
    if suffix in _VECTOR_SUFFIXES:
        gdf = _read_vectors(p)
        return _vectors_to_gt(gdf, shape=shape, crs=crs, transform=transform, classes=classes, min_pixels=min_pixels)
    if suffix in (".csv", ".txt") or box_format is not None:
        return _boxes_to_gt(p, shape=shape, classes=classes, box_format=box_format, image_name=image_name)
    arr = _read_raster_array(p)
    return _raster_to_gt(
        arr, shape=shape, classes=classes, colour_table=colour_table,
        ignore_classes=ignore_classes, raster_mode=raster_mode, min_pixels=min_pixels,
    )


# ---------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------


@dataclass
class Report:
    """Result of :func:`evaluate`.

    Attributes
    ----------
    summary : dict
        Coverage (%), global ASA, instance-weighted Det@0.5, SS-Det@0.5,
        mIoU, BIoU, n̄, counts and the settings used.
    rows : list of dict
        One row per class (``class``, ``n_objects``, ``det50``,
        ``ss_det50``, ``miou``, ``biou``, ``n_bar``, ``asa``) and a final
        instance-weighted ``Global`` row. Fractions in 0..1.
    objects : pandas.DataFrame
        Per-object table: ``object``, ``class``, ``n_pixels``, ``iou``,
        ``ss_iou``, ``biou``, ``n_segments``, ``category``
        (detected ≥ 0.5 > partial ≥ 0.2 > coarse > 0 = missed), bbox.
    scored : dict
        What was scored: ``labels`` and ``ground_truth`` (paths, or what
        was passed), ``classes``, and ``run``: for labels a run wrote, its
        ``run.json`` with the run's ``input`` (without the per-source list)
        and ``parameters``, else None.
    """

    summary: dict
    rows: list
    objects: Any
    scored: dict = field(default_factory=dict)
    _labels: np.ndarray | None = field(default=None, repr=False)
    _gt: GroundTruth | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        return {
            "scored": self.scored,
            "summary": self.summary,
            "rows": self.rows,
            "objects": json.loads(self.objects.to_json(orient="records")),
        }


def _category(iou: float) -> str:
    """Object category by greedy-oracle IoU (see :data:`CATEGORY_DEFINITIONS`)."""
    if iou >= DETECTED_IOU:
        return "detected"
    if iou >= PARTIAL_IOU:
        return "partial"
    if iou > 0:
        return "coarse"
    return "missed"


def _labels_array(labels):
    """(numpy labels, crs, transform) from a path, DataArray or array."""
    import xarray as xr
    from affine import Affine

    from .vectorize import grid_of, open_label_raster

    if isinstance(labels, (str, os.PathLike)):
        labels = open_label_raster(labels)
    if isinstance(labels, xr.DataArray):
        crs, transform = grid_of(labels)
        arr = np.asarray(labels.values)
    else:
        crs, transform = None, Affine.identity()
        arr = np.asarray(labels)
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.integer):
        raise InputError(f"labels must be a 2-D integer raster, got shape {arr.shape} dtype {arr.dtype}")
    return arr, crs, transform


def evaluate(
    labels,
    ground_truth,
    *,
    classes: str | Mapping | None = None,
    min_pixels: int = 10,
    paper_asa: bool = False,
    biou_d: int = 3,
    colour_table: Mapping[str, tuple[int, int, int]] | None = None,
    ignore_classes: Sequence[str] = (),
    raster_mode: str = "class",
    box_format: str | None = None,
    image_name: str | None = None,
    progress: bool = False,
) -> Report:
    """Score a label raster against ground truth with the paper's metrics.

    Computes Det@0.5, SS-Det@0.5, mIoU, BIoU and n̄ per ground-truth object
    (greedy-oracle reconstruction, see the module docs), ASA and coverage,
    per class and globally.

    Parameters
    ----------
    labels : path, xarray.DataArray or array
        (y, x) segment labels, 0 = unsegmented (read fully into memory). A
        path or a DataArray carries its CRS and transform; a numpy array is
        in pixel coordinates (no CRS).
    ground_truth : path, GeoDataFrame, array or GroundTruth
        Vectors (reprojected onto the labels' CRS), a class or instance
        raster on the label grid, or boxes; see :func:`load_ground_truth`.
    classes : str or mapping, optional
        Class field of vectors/CSV boxes (or value -> name for class
        rasters); see :func:`load_ground_truth` for nulls, empty strings
        and mixed types.
    min_pixels, colour_table, ignore_classes, raster_mode, box_format, image_name
        See :func:`load_ground_truth`.
    paper_asa : bool
        Use the paper scripts' ASA (label 0 is a segment; see module docs).
    biou_d : int
        Boundary band width in pixels (paper: 3).
    progress : bool
        Show the progress over objects.

    Returns
    -------
    Report
        ``summary`` (global scores), ``rows`` (per class + "Global") and
        ``objects`` (one row per object); write it with :func:`write_report`.

    Raises
    ------
    CRSMismatchError
        Vectors without a CRS on a georeferenced raster or the reverse, or
        ground truth on another grid.
    NoOverlapError
        No ground-truth object lies on the label raster (the message gives
        both extents in the raster's CRS). Raised before any scoring.
    ConfigError
        ``classes`` names no field of the ground truth.

    Warns
    -----
    GroundTruthOutsideWarning
        Once, with the count of objects dropped for lying entirely outside
        the raster.

    Examples
    --------
    >>> import numpy as np
    >>> import remote_samsing as rs
    >>> labels = np.zeros((20, 20), np.int32); labels[2:10, 2:10] = 1
    >>> truth = np.zeros((20, 20), np.int32); truth[2:10, 2:12] = 1
    >>> rep = rs.evaluate(labels, truth, raster_mode="instance")
    >>> rep.summary["det50"], round(rep.summary["miou"], 2)
    (1.0, 0.8)
    >>> rs.write_report(rep, "report.json", image=None)  # doctest: +SKIP
    """
    import pandas as pd

    check_int("biou_d", biou_d, minimum=1)
    lab, crs, transform = _labels_array(labels)
    gt = load_ground_truth(
        ground_truth, shape=lab.shape, crs=crs, transform=transform, classes=classes,
        min_pixels=min_pixels, colour_table=colour_table, ignore_classes=ignore_classes,
        raster_mode=raster_mode, box_format=box_format, image_name=image_name,
    )
    if gt.instances.shape != lab.shape:
        raise CRSMismatchError(f"ground truth {gt.instances.shape} and labels {lab.shape} differ in shape")
    seg, nseg = _dense(lab)
    score = _box_scorer(seg, nseg, gt) if gt.boxes is not None else _mask_scorer(seg, nseg, gt, biou_d)
    it = track(range(1, gt.n_objects + 1), "objects", enabled=progress, unit="objects")
    objects = pd.DataFrame.from_records([score(o) for o in it], columns=_OBJECT_COLUMNS)

    if gt.class_raster is not None:
        asa_glob, asa_per = asa(lab, gt.class_raster, n_classes=len(gt.class_names), paper_asa=paper_asa)
    else:
        asa_glob, asa_per = float("nan"), np.full(len(gt.class_names), np.nan)
    rows = [
        _row(name, objects[objects["class"] == name], asa_per[c])
        for c, name in enumerate(gt.class_names)
        if (objects["class"] == name).any() or not np.isnan(asa_per[c])
    ]
    rows.append(_row("Global", objects, asa_glob))
    settings = {"paper_asa": bool(paper_asa), "min_pixels": int(min_pixels), "biou_d": int(biou_d),
                "crs": None if crs is None else str(crs)}
    summary = _summary(lab, nseg, gt, asa_glob, rows[-1], settings)
    scored = {"labels": _named(labels), "ground_truth": _named(ground_truth),
              "classes": classes if isinstance(classes, str) else None, "run": run_provenance(labels)}
    return Report(summary=summary, rows=rows, objects=objects, scored=scored, _labels=lab, _gt=gt)


def _named(obj) -> str:
    """How the report names an input: a path (absolute when local) or URL, else what kind of object it was."""
    if isinstance(obj, (str, os.PathLike)):
        return str(obj) if is_url(str(obj)) else os.path.abspath(os.fspath(obj))
    shape = getattr(obj, "shape", None)
    return f"{type(obj).__name__}" + (f" {'x'.join(str(int(n)) for n in shape)}" if shape is not None else "")


def run_provenance(labels) -> dict | None:
    """What the ``run.json`` beside a label raster says about the run that wrote it, or None.

    Parameters
    ----------
    labels : path or object
        A label raster (``labels.tif``, ``labels.zarr``); anything else has
        no run.

    Returns
    -------
    dict or None
        ``run_json`` (its path), ``run_id``, ``complete``, ``input`` (the
        mosaic's path(s), size, bands, dtype, CRS, transform and nodata, with
        ``n_sources`` instead of the per-source list), ``parameters`` and
        ``checkpoint_sha256``; None when no remote_samsing run.json lies
        beside ``labels`` or it cannot be read.
    """
    if not isinstance(labels, (str, os.PathLike)):
        return None
    try:
        record_path = location(labels).parent / "run.json"
        record = json.loads(record_path.read_text()) if record_path.exists() else None
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or "fingerprint" not in record:
        return None  # none, or some other program's run.json
    run_input = dict(record.get("input") or {})
    sources = run_input.pop("sources", None)
    if sources is not None:
        run_input["n_sources"] = len(sources)
    return {"run_json": _named(record_path), "run_id": record.get("run_id"), "complete": record.get("complete"),
            "input": run_input, "parameters": record.get("parameters"),
            "checkpoint_sha256": record.get("checkpoint_sha256")}


def _summary(lab: np.ndarray, nseg: int, gt: GroundTruth, asa_glob: float, glob: dict, settings: dict) -> dict:
    """:attr:`Report.summary`: coverage, global scores, counts, then the settings used."""
    return {
        "coverage_pct": coverage(lab),
        "asa": asa_glob,
        **{k: glob[k] for k in ("det50", "ss_det50", "miou", "biou", "n_bar")},
        "over_segmented": bool(glob["n_bar"] > OVERSEGMENTED_N_BAR),  # NaN (no object) is not
        "n_objects": gt.n_objects,
        "n_objects_skipped": gt.n_skipped,
        "n_objects_outside": gt.n_outside,
        "n_segments": int(nseg),
        "height": int(lab.shape[0]),
        "width": int(lab.shape[1]),
        "ground_truth": "boxes" if gt.boxes is not None else "masks",
        **settings,
    }


_OBJECT_COLUMNS = ["object", "class", "n_pixels", "iou", "ss_iou", "biou", "n_segments", "category",
                   "xmin", "ymin", "xmax", "ymax"]


def _object_record(o, gt, *, n_px, chosen, iou, ss, biou, bbox) -> dict:
    """One row of :attr:`Report.objects`."""
    return {
        "object": o,
        "class": gt.class_names[int(gt.object_class[o])],
        "n_pixels": n_px,
        "iou": float(iou),
        "ss_iou": float(ss),
        "biou": float(biou),
        "n_segments": len(chosen),
        "category": _category(float(iou)),
        "xmin": bbox[0],
        "ymin": bbox[1],
        "xmax": bbox[2],
        "ymax": bbox[3],
    }


def _mask_scorer(seg: np.ndarray, nseg: int, gt: GroundTruth, d: int):
    """``score(o)``: the object row of mask object ``o`` (greedy oracle, best single segment, BIoU)."""
    from scipy import ndimage

    seg_sizes = np.bincount(seg.ravel(), minlength=nseg + 1)
    sl_seg = ndimage.find_objects(seg)
    obj_slices = ndimage.find_objects(gt.instances, max_label=gt.n_objects)
    H, W = seg.shape

    def score(o: int) -> dict:
        sl = obj_slices[o - 1]
        inside = gt.instances[sl] == o
        n_px = int(np.count_nonzero(inside))
        inter = np.bincount(seg[sl][inside], minlength=nseg + 1)
        inter[0] = 0  # unsegmented pixels are no candidate
        cand = np.flatnonzero(inter)
        idx, iou = greedy_oracle(inter[cand], seg_sizes[cand], n_px)
        chosen = [int(c) for c in cand[idx]]
        ss = float((inter[cand] / (seg_sizes[cand] + n_px - inter[cand])).max()) if len(cand) else 0.0
        # BIoU on the union of the object's and the chosen segments'
        # boxes, padded so the crop edge never erodes anything.
        ys, ye, xs, xe = sl[0].start, sl[0].stop, sl[1].start, sl[1].stop
        for c in chosen:
            s_sl = sl_seg[c - 1]
            ys, ye = min(ys, s_sl[0].start), max(ye, s_sl[0].stop)
            xs, xe = min(xs, s_sl[1].start), max(xe, s_sl[1].stop)
        ys, xs = max(ys - d - 1, 0), max(xs - d - 1, 0)
        ye, xe = min(ye + d + 1, H), min(xe + d + 1, W)
        if chosen:
            biou = boundary_iou(np.isin(seg[ys:ye, xs:xe], chosen), gt.instances[ys:ye, xs:xe] == o, d)
        else:
            biou = 0.0
        bbox = (float(sl[1].start), float(sl[0].start), float(sl[1].stop), float(sl[0].stop))
        return _object_record(o, gt, n_px=n_px, chosen=chosen, iou=iou, ss=ss, biou=biou, bbox=bbox)

    return score


def _box_scorer(seg: np.ndarray, nseg: int, gt: GroundTruth):
    """``score(o)``: the object row of box object ``o`` (greedy oracle on box IoU; no BIoU)."""
    from scipy import ndimage

    seg_boxes = np.zeros((nseg + 1, 4))
    for s, sl in enumerate(ndimage.find_objects(seg), start=1):
        if sl is not None:
            seg_boxes[s] = (sl[1].start, sl[0].start, sl[1].stop, sl[0].stop)

    def score(o: int) -> dict:
        box = gt.boxes[o]
        y0, y1 = int(np.floor(box[1])), int(np.ceil(box[3]))
        x0, x1 = int(np.floor(box[0])), int(np.ceil(box[2]))
        cand = unique(seg[y0:y1, x0:x1])
        cand = cand[cand > 0]
        chosen, iou, ss = _greedy_box_oracle(seg_boxes[cand], box, cand) if len(cand) else ([], 0.0, 0.0)
        return _object_record(
            o, gt, n_px=int((box[2] - box[0]) * (box[3] - box[1])), chosen=chosen, iou=iou, ss=ss,
            biou=float("nan"), bbox=(float(box[0]), float(box[1]), float(box[2]), float(box[3])),
        )

    return score


def _greedy_box_oracle(cb: np.ndarray, box: np.ndarray, cand: np.ndarray) -> tuple[list[int], float, float]:
    """Greedy oracle on box IoU: segments ``cand`` (boxes ``cb``) whose joint box best matches ``box``.

    Returns the chosen segments, their joint box's IoU and the best single segment's IoU.
    """
    ss = float(_box_iou(cb, box).max())
    chosen: list[int] = []
    iou = 0.0
    cur = None
    avail = np.ones(len(cand), bool)
    while avail.any():
        if cur is None:
            u = cb
        else:
            u = np.column_stack([
                np.minimum(cb[:, 0], cur[0]), np.minimum(cb[:, 1], cur[1]),
                np.maximum(cb[:, 2], cur[2]), np.maximum(cb[:, 3], cur[3]),
            ])
        val = np.where(avail, _box_iou(u, box), -1.0)
        j = int(np.argmax(val))
        if val[j] <= iou:
            break
        iou = float(val[j])
        cur = u[j]
        avail[j] = False
        chosen.append(int(cand[j]))
    return chosen, iou, ss


def _row(name: str, df, asa_value) -> dict:
    """A row of :attr:`Report.rows`: the object scores of ``df`` averaged, and the ASA."""
    n = len(df)
    return {
        "class": name,
        "n_objects": n,
        "det50": float((df["iou"] >= DETECTED_IOU).mean()) if n else float("nan"),
        "ss_det50": float((df["ss_iou"] >= DETECTED_IOU).mean()) if n else float("nan"),
        "miou": float(df["iou"].mean()) if n else float("nan"),
        "biou": float(df["biou"].mean()) if n else float("nan"),
        "n_bar": float(df["n_segments"].mean()) if n else float("nan"),
        "asa": float(asa_value),
    }


# ---------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------


def _fmt(v, pct=False):
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "–"
    return f"{100 * v:.1f}" if pct else f"{v:.3f}"


def _definition_lines(summary: dict) -> list[str]:
    """One sentence per metric, then one defining the figure's outline categories."""
    variant = (
        "paper variant: unsegmented pixels form one more segment and are credited"
        if summary.get("paper_asa") else "unsegmented pixels are never credited"
    )
    lines = [
        f"- **{name}** is " + text.format(d=summary.get("biou_d", 3), asa_variant=variant)
        for name, text in METRIC_DEFINITIONS.items()
    ]
    cats = "; ".join(f"*{k}* = {v}" for k, v in CATEGORY_DEFINITIONS.items())
    lines += ["", f"Objects (outline colours in the figure): {cats}.", ""]
    return lines


def report_title(report: Report) -> str:
    """The default title: which labels were scored against which ground truth.

    Examples
    --------
    >>> report_title(Report(summary={}, rows=[], objects=None,
    ...                     scored={"labels": "/data/run1/labels.tif", "ground_truth": "/data/gt.geojson"}))
    'Segmentation report: run1/labels.tif against gt.geojson'
    """
    def short(name: str | None, parts: int) -> str:
        if not name:
            return "labels"
        return "/".join(name.replace("\\", "/").rstrip("/").split("/")[-parts:])

    return (f"Segmentation report: {short(report.scored.get('labels'), 2)} against "
            f"{short(report.scored.get('ground_truth'), 1)}")


def _scored_lines(report: Report, figure_note: str | None) -> list[str]:
    """What was scored, one bullet each; the run's parameters as ``key=value``."""
    sc = report.scored
    gt = f"`{sc.get('ground_truth')}`" + (f", classes from the field `{sc['classes']}`" if sc.get("classes") else "")
    lines = [f"- **Labels**: `{sc.get('labels')}`", f"- **Ground truth**: {gt}"]
    run = sc.get("run")
    if run:
        path = (run.get("input") or {}).get("path")
        if isinstance(path, list):
            named = f"{len(path)} inputs (`{path[0]}`, ...)" if path else "no input"
        else:
            named = f"`{path}`" if path else "an array"
        params = ", ".join(f"`{k}={json.dumps(v, default=str)}`" for k, v in (run.get("parameters") or {}).items())
        lines += [f"- **Run**: `{run['run_json']}`, input {named}"
                  f"{'' if run.get('complete') else ' (run not complete)'}",
                  f"- **Parameters**: {params or '(none recorded)'}"]
    if figure_note:
        lines.append(f"- **Figure**: {figure_note}")
    return lines + [""]


def report_markdown(report: Report, *, title: str | None = None, figure_note: str | None = None) -> str:
    """The report as Markdown: a title, what was scored, metric definitions, a summary line and the table.

    The text opens with ``# title`` (default :func:`report_title`), then
    names the labels, the ground truth, the run (its ``run.json``, input and
    parameters) and ``figure_note`` (what the figure is drawn on), then one
    sentence defining each metric and the object categories of the figure.
    The table has one row per class with at least one object (Det in %, IoUs
    as fractions) and the instance-weighted *Global* row; classes without
    objects (e.g. "Other") appear only in a note with their ASA. Above
    :data:`OVERSEGMENTED_N_BAR` segments per object a note says the
    detection rate reflects over-segmentation.
    """
    s = report.summary
    lines = [f"# {title or report_title(report)}", ""]
    lines += _scored_lines(report, figure_note)
    lines += _definition_lines(s)
    lines += [
        f"Coverage {s['coverage_pct']:.2f} %, ASA {_fmt(s['asa'])}"
        f"{' (paper variant: label 0 credited)' if s['paper_asa'] else ''}, "
        f"{s['n_segments']} segments, {s['n_objects']} objects "
        f"({s['n_objects_skipped']} under {s['min_pixels']} px skipped).",
        "",
    ]
    if s.get("over_segmented"):
        lines += [
            f"**Over-segmentation:** n̄ = {s['n_bar']:.1f} > {OVERSEGMENTED_N_BAR:g} segments per object, so "
            f"Det@0.5 ({_fmt(s['det50'], True)} %) reflects over-segmentation: the greedy oracle assembles "
            f"objects from many small segments. SS-Det@0.5 ({_fmt(s['ss_det50'], True)} %) counts objects one "
            "segment finds.",
            "",
        ]
    lines += [
        "| class | objects | Det@0.5 % | SS-Det@0.5 % | mIoU | BIoU | n̄ | ASA |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    empty = [r for r in report.rows if r["class"] != "Global" and not r["n_objects"]]
    for r in report.rows:
        if r["class"] != "Global" and not r["n_objects"]:
            continue
        name = f"*{r['class']}*" if r["class"] == "Global" else r["class"]
        lines.append(
            f"| {name} | {r['n_objects']} | {_fmt(r['det50'], True)} | {_fmt(r['ss_det50'], True)} | "
            f"{_fmt(r['miou'])} | {_fmt(r['biou'])} | {_fmt(r['n_bar']) if r['n_objects'] else '–'} | {_fmt(r['asa'])} |"
        )
    if empty:
        lines += ["", "Classes without objects (not in the table): "
                  + ", ".join(f"{r['class']} (ASA {_fmt(r['asa'])})" for r in empty) + "."]
    if s.get("n_objects_outside"):
        lines += ["", f"{s['n_objects_outside']} ground-truth objects outside the raster were dropped."]
    return "\n".join(lines) + "\n"


_CAT_COLOURS = {
    "detected": (0.10, 0.70, 0.20),
    "partial": (1.00, 0.60, 0.00),
    "coarse": (0.85, 0.10, 0.10),
    "missed": (0.80, 0.00, 0.80),
}


_SEGMENT_OUTLINE_ON_IMAGE = (0.0, 0.85, 1.0)


def _figure_step(shape, max_side: int = 2000) -> int:
    return max(1, int(np.ceil(max(shape) / max_side)))


def _stretch(rgb: np.ndarray) -> np.ndarray:
    """(y, x, 3) image as floats in 0..1 (uint8 / 255, other types a 2-98 % stretch per band)."""
    if rgb.dtype == np.uint8:
        return rgb.astype(np.float64) / 255.0
    out = np.zeros(rgb.shape, np.float64)
    for b in range(rgb.shape[-1]):
        band = rgb[..., b].astype(np.float64)
        finite = np.isfinite(band)
        if not finite.any():
            continue
        lo, hi = np.percentile(band[finite], (2, 98))
        out[..., b] = np.clip((band - lo) / (hi - lo), 0, 1) if hi > lo else 0.0
        out[..., b][~finite] = 0.0
    return out


def _figure_image(image, shape: tuple[int, int], step: int, *, bands: Sequence[int] | None = None) -> np.ndarray:
    """The backdrop ``image`` (path, URL or array on the label grid) as (y', x', 3) floats, decimated by
    ``step``; from a raster, its 1-based ``bands`` (default the first three, or the first)."""
    h, w = shape
    hs, ws = -(-h // step), -(-w // step)
    if isinstance(image, (str, os.PathLike)):
        import rasterio
        from rasterio.enums import Resampling

        p = str(image) if is_url(str(image)) else Path(image)
        if isinstance(p, Path) and not p.exists():
            raise InputNotFoundError(f"image `{p}` does not exist", hint="pass the mosaic the labels were made from")
        with quiet_georeferencing():
            with rasterio.open(gdal_path(p)) as src:
                if (src.height, src.width) != (h, w):
                    raise InputError(
                        f"image `{p}` is {src.height}x{src.width} px but the labels are {h}x{w} px",
                        hint="pass the image the labels were segmented from (same grid)",
                    )
                bands = list(bands) if bands else ([1, 2, 3] if src.count >= 3 else [1])
                if max(bands) > src.count:
                    raise InputError(f"image `{p}` has {src.count} band(s), the figure asks for bands {bands}")
                arr = src.read(bands, out_shape=(len(bands), hs, ws), resampling=Resampling.nearest)
        arr = np.moveaxis(arr, 0, -1)
    else:
        arr = np.asarray(image)
        if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
            arr = np.moveaxis(arr, 0, -1)  # (band, y, x) -> (y, x, band)
        if arr.ndim == 2:
            arr = arr[..., None]
        if arr.ndim != 3 or arr.shape[:2] != (h, w):
            raise InputError(
                f"image has shape {arr.shape} but the labels are {h}x{w} px",
                hint="pass an (y, x), (y, x, band) or (band, y, x) array on the label grid",
            )
        arr = arr[::step, ::step, :3]
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    elif arr.shape[-1] == 2:
        arr = np.concatenate([arr, arr[..., :1]], axis=-1)
    return _stretch(arr)


def _figure(report: Report, out_png: Path, *, image: np.ndarray | None = None, max_side: int = 2000):
    """GT outlines coloured by category over segment outlines; over ``image`` (decimated floats) if given."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch
    from skimage.segmentation import find_boundaries

    lab, gt = report._labels, report._gt
    step = _figure_step(lab.shape, max_side)
    lab_s = lab[::step, ::step]
    inst_s = gt.instances[::step, ::step]
    if image is not None:
        img = np.array(image[: lab_s.shape[0], : lab_s.shape[1], :3], dtype=np.float64)
        seg_colour = _SEGMENT_OUTLINE_ON_IMAGE
        img[find_boundaries(lab_s, mode="inner") & (lab_s > 0)] = seg_colour
    else:
        img = np.ones(lab_s.shape + (3,))
        img[lab_s == 0] = (0.93, 0.93, 0.93)  # unsegmented
        seg_colour = (0.55, 0.55, 0.55)
        img[find_boundaries(lab_s, mode="inner")] = seg_colour
    colour = np.zeros((gt.n_objects + 1, 3))
    for rec in report.objects.itertuples():
        colour[rec.object] = _CAT_COLOURS[rec.category]
    gb = find_boundaries(inst_s, mode="inner") & (inst_s > 0)
    if gb.any():
        from scipy.ndimage import binary_dilation

        thick = max(lab_s.shape) > 600 or image is not None
        gb2 = binary_dilation(gb) & (inst_s > 0) if thick else gb
        img[gb2] = colour[inst_s[gb2]]
    h, w = lab_s.shape
    fig = Figure(figsize=(8, 8 * h / w + 0.8), dpi=150)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(img, interpolation="nearest")
    ax.set_axis_off()
    s = report.summary
    counts = report.objects["category"].value_counts()
    scores = f"Det@0.5 {_fmt(s['det50'], True)} %, mIoU {_fmt(s['miou'])}, BIoU {_fmt(s['biou'])}"
    if image is None:
        ax.set_title(f"GT outlines over segment outlines — {scores}", fontsize=9)
        handles = [Patch(color=c, label=f"{k} ({int(counts.get(k, 0))})") for k, c in _CAT_COLOURS.items()]
        handles.append(Patch(color=seg_colour, label="segment outline"))
        ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.01), ncol=5, fontsize=7,
                  frameon=False)
    else:
        ax.set_title(f"Ground-truth outlines (colour = category) and segment outlines over the image — {scores}",
                     fontsize=8)
        handles = [
            Patch(color=c, label=f"{k}: {CATEGORY_DEFINITIONS[k]} ({int(counts.get(k, 0))})")
            for k, c in _CAT_COLOURS.items()
        ]
        handles.append(Patch(color=seg_colour, label="segment outline (label boundaries)"))
        ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.01), ncol=2, fontsize=7,
                  frameon=False, title="Outline colours (object IoU = greedy-oracle IoU)", title_fontsize=7)
    fig.tight_layout()
    fig.savefig(out_png)
    return fig


def write_report(
    report: Report,
    out_json: str | os.PathLike,
    *,
    figure: bool = True,
    title: str | None = None,
    image=None,
) -> dict:
    """Write ``out_json`` plus a Markdown report (``.md``) and a figure (``.png``) beside it.

    Parameters
    ----------
    report : Report
        From :func:`evaluate`.
    out_json : path
        The JSON file; ``.md`` and ``.png`` are written beside it.
    figure : bool
        Write the figure.
    title : str, optional
        Heading of the Markdown report.
    image : path or array, optional
        The imagery on the label grid (a raster path or URL, or a (y, x),
        (y, x, band) or (band, y, x) array). The figure draws the
        ground-truth outlines (coloured by category: detected, partial,
        coarse, missed) and the segment outlines over it, with a legend
        defining each colour. Default: the image the labels' ``run.json``
        names (its bands as the run used them) when it can be read on the
        labels' grid, else a blank canvas.

    Returns
    -------
    dict
        ``{"json": Path, "markdown": Path, "figure": Path or None}``.

    Notes
    -----
    ``report.json`` opens with ``title`` (default :func:`report_title`) and
    ``scored`` (:attr:`Report.scored`); its ``figure`` entry names the image
    the figure is drawn on (``image``, null for a blank canvas) and why
    (``note``), as ``report.md`` does.
    """
    has_figure = figure and report._labels is not None and report._gt is not None
    backdrop, source, note = None, None, None
    if has_figure:  # an image given is checked before anything is written
        backdrop, source, note = _backdrop(report, image)
    title = title or report_title(report)
    out_json = Path(out_json)
    out_json.parent.mkdir(parents=True, exist_ok=True)

    def _clean(o):
        if isinstance(o, float) and np.isnan(o):
            return None
        if isinstance(o, dict):
            return {k: _clean(v) for k, v in o.items()}
        if isinstance(o, list):
            return [_clean(v) for v in o]
        if isinstance(o, np.generic):
            return o.item()
        return o

    png = out_json.with_suffix(".png") if has_figure else None
    figure_entry = {"path": png.name, "image": source, "note": note} if has_figure else None
    # NaN (a metric with nothing to measure) is null: JSON has no NaN
    write_json_atomic(out_json, _clean({"title": title, **report.to_dict(), "figure": figure_entry}))
    md = out_json.with_suffix(".md")
    text = report_markdown(report, title=title, figure_note=note)
    write_atomic(md, lambda tmp: tmp.write_text(text))
    if has_figure:
        _figure(report, png, image=backdrop)
    return {"json": out_json, "markdown": md, "figure": png}


def _backdrop(report: Report, image) -> tuple[np.ndarray | None, str | None, str]:
    """The figure's backdrop (decimated floats or None), the image it comes from, and a note saying which.

    An ``image`` given must be readable on the labels' grid (an error
    otherwise). Without one, the run's input is tried, opened as the run
    opened it (many files through their tile index): a run reads what may
    since have moved, so a failure there only leaves the canvas blank.
    """
    shape = report._labels.shape
    step = _figure_step(shape)
    if image is not None:
        named = _named(image) if isinstance(image, (str, os.PathLike)) else None
        return _figure_image(image, shape, step), named, f"over `{named}`" if named else "over the image array given"
    run = report.scored.get("run")
    if not run:
        return None, None, "on a blank canvas: no image was given and no run.json beside the labels names one"
    path = (run.get("input") or {}).get("path")
    if not isinstance(path, (str, list)):
        return None, None, "on a blank canvas: the run's input cannot be drawn (it is an array; pass `image=`)"
    params = run.get("parameters") or {}
    named = path if isinstance(path, str) else (f"{counted(len(path), 'inputs')} ({', '.join(path[:2])}"
                                                f"{', ...' if len(path) > 2 else ''})")
    import rasterio.errors

    try:
        backdrop = _figure_image(_run_image(path, params), shape, step, bands=params.get("bands"))
    except (RemoteSamsingError, OSError, rasterio.errors.RasterioError) as exc:
        return None, None, f"on a blank canvas: the run's input `{named}` cannot be read on the labels' grid ({exc})"
    return backdrop, path, f"over `{named}`, the run's input"


def _run_image(path: str | list, params: dict) -> str:
    """What GDAL opens for a run's input, resolved as the run resolved it: the file itself, or the tile
    index of its sources (a folder, glob, list, STAC input or several of them) on the run's grid."""
    from .io import open_mosaic
    from .pipeline import _MOSAIC_OPTIONS

    keys = (*_MOSAIC_OPTIONS, "nodata")
    arr = open_mosaic(path, **{k: params[k] for k in keys if params.get(k) is not None})
    return arr.attrs["source"]
