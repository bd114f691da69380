"""The paper's per-tile multi-pass segmentation, driven by any mask generator.

Algorithm (arXiv 2605.00256 §3; reference code ``osmarluiz/sam-mosaic``,
``src/sam_mosaic/core/multipass.py``, described in
shared/design/reference.md §1.4). For one padded window:

1. **Prompts.** Pass 0 uses a k×k grid of integer pixels spanning the window
   edge to edge (``linspace(0, w - 1, k)`` truncated, as the reference does).
   Later passes use either *Dense Grid* (the same grid, keeping only points on
   still-unsegmented pixels; the paper's default) or *k-means* residual
   prompts (``kmeans_points`` centroids of the unsegmented pixels, snapped to
   the nearest unsegmented pixel). The residual can be eroded first.
2. **Black mask.** Before every later pass the already segmented pixels are
   set to black in a copy of the window.
3. **Generate.** The injected mask generator (SAM2's automatic mask generator
   in production, a scripted double in tests) returns masks filtered by the
   current predicted-IoU and stability thresholds.
4. **Accept.** Masks are taken in the generator's order (predicted IoU
   descending for SAM2) or by ascending area. Each mask is split into
   4-connected components; a component is dropped when smaller than
   ``min_mask_area`` or when at least ``overlap_reject`` of it is already
   segmented; an accepted component labels only still-unlabelled pixels
   (first come, first served).
5. **Schedule.** A pass *stagnates* when it returns no mask, accepts none, or
   raises coverage by less than ``stagnation_gain`` percentage points. On
   stagnation both thresholds drop by ``step`` (floored at their end values).
   The loop stops at ``target_coverage``, on stagnation with both thresholds
   at their floor, when no prompt is left, or after ``max_passes``.

Differences from the reference, on purpose (each is a fix listed in
reference.md §1.4.5 / §5.2):

* ``adaptive=False`` really keeps the thresholds fixed; the loop then stops at
  the first stagnation (another pass would see the same prompts and image).
  The reference stores the flag but never reads it.
* Coverage for the stop/stagnation tests is measured on the block's *core*
  by default (``coverage_on="window"`` reproduces the reference, which
  measures the padded window).
* Invalid (nodata) pixels are never prompted, never counted as covered or
  uncovered, and are removed from every mask before acceptance.
* The floor test looks at both thresholds (the reference looks only at the
  predicted-IoU one, so a wider stability range never reaches its floor).
* Thresholds are computed as ``start - n * step`` (not by repeated
  subtraction), so the schedule has no floating-point drift.
* Every configuration is validated up front: ``step <= 0`` loops forever in
  the reference.

Work avoided where the result cannot change:

* Acceptance works inside each mask's bounding box: connected components
  (``scipy.ndimage.label``) and the overlap counts use only the box crop, not
  the full window as the reference does (see ``benchmarks/bench_multipass.py``).
* With the default ``coverage_on="core"`` the loop stops as soon as the core
  reaches its target; passes spent only on the margin (which the reference
  runs because it measures the padded window) are skipped.
* Optionally (``prompt_halo``), prompts are restricted to the core grown by a
  halo. This is *not* exact (a far margin prompt can still win an NMS
  contest or pre-empt pixels), so it is off by default.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from ._arrays import unique
from ._validate import check_bool, check_choice, check_int, check_number
from .exceptions import ConfigError, InputError

__all__ = [
    "MaskGenerator",
    "MultipassConfig",
    "MultipassResult",
    "run_multipass",
    "grid_prompts",
    "dense_grid_prompts",
    "kmeans_prompts",
    "threshold_schedule",
    "accept_masks",
]

#: Number of pixels sampled from the residual before k-means (as the reference).
KMEANS_MAX_SAMPLES = 10_000
#: Lloyd iterations for the k-means prompts; centroids are snapped anyway.
KMEANS_ITERATIONS = 20


@runtime_checkable
class MaskGenerator(Protocol):
    """What :func:`run_multipass` needs from a mask generator.

    ``generate`` receives, for one pass, the (black-masked) window as a
    (y, x, 3) uint8 array, the prompts as an (n, 2) float array of **(x, y)**
    pixel coordinates (SAM's convention), and the thresholds of that pass. It
    returns a list of records like SAM2's ``SAM2AutomaticMaskGenerator.generate``:
    ``"segmentation"`` (bool (y, x) mask), ``"predicted_iou"``,
    ``"stability_score"``, and optionally ``"area"`` and ``"bbox"`` (x, y, w, h,
    SAM's inclusive-box convention). The generator applies the thresholds itself
    (SAM2: predicted IoU strictly above, stability at or above).

    A generator may expose ``last_timings`` (a mapping of seconds, e.g.
    ``{"encoder_s": ..., "decoder_s": ...}``), copied into each pass's stats.
    """

    def generate(
        self,
        image: np.ndarray,
        *,
        points: np.ndarray,
        pred_iou_thresh: float,
        stability_score_thresh: float,
    ) -> list[dict[str, Any]]:
        ...


@dataclass(frozen=True, kw_only=True)
class MultipassConfig:
    """Parameters of the multi-pass loop (defaults: the paper's, reference.md §1.11).

    Parameters
    ----------
    points_per_side : int
        k of the k×k prompt grid (pass 0, and Dense Grid later).
    point_strategy : {"dense_grid", "kmeans"}
        Prompts of later passes. The paper uses Dense Grid (the reference
        code defaults to k-means).
    kmeans_points : int
        Number of k-means prompts per later pass.
    kmeans_seed : int
        Seed of the k-means sampling and initialisation (deterministic).
    erosion_iterations : int
        Erode the unsegmented area this many times (3×3 cross, window border
        counts as segmented) before placing later prompts.
    use_black_mask : bool
        Set segmented pixels to black before each later pass.
    iou_start, iou_end, stability_start, stability_end : float
        Threshold schedules in [0, 1], ``start >= end``.
    step : float
        Decrement on stagnation, > 0.
    adaptive : bool
        Decay the thresholds on stagnation; False keeps them at their start
        values and stops at the first stagnation.
    stagnation_gain : float
        A pass gaining fewer percentage points of coverage than this stagnates.
    overlap_reject : float
        Reject a component when this fraction of it (or more) is already
        segmented (the paper's 50 %).
    min_mask_area : int
        Components smaller than this many pixels are dropped.
    target_coverage : float
        Stop at this coverage, in percent of the valid pixels (0, 100].
    max_passes : int or None
        Hard cap on the number of passes (None = unlimited).
    sort_by_area : bool
        Accept masks by ascending area instead of the generator's order.
    coverage_on : {"core", "window"}
        Region whose coverage drives the stop and stagnation tests.
    prompt_halo : int or None
        If set, prompts lie within this many pixels of the core (not exact;
        see the module docstring). None = the whole window (the paper).
    keep_attributes : bool
        Keep per-label pass index, predicted IoU and stability score.
    """

    points_per_side: int = 64
    point_strategy: Literal["dense_grid", "kmeans"] = "dense_grid"
    kmeans_points: int = 64
    kmeans_seed: int = 42
    erosion_iterations: int = 0
    use_black_mask: bool = True
    iou_start: float = 0.93
    iou_end: float = 0.60
    stability_start: float = 0.93
    stability_end: float = 0.60
    step: float = 0.01
    adaptive: bool = True
    stagnation_gain: float = 0.1
    overlap_reject: float = 0.5
    min_mask_area: int = 100
    target_coverage: float = 99.0
    max_passes: int | None = None
    sort_by_area: bool = False
    coverage_on: Literal["core", "window"] = "core"
    prompt_halo: int | None = None
    keep_attributes: bool = True

    def __post_init__(self) -> None:
        check_int("points_per_side", self.points_per_side, minimum=1)
        check_choice("point_strategy", self.point_strategy, ("dense_grid", "kmeans"))
        check_int("kmeans_points", self.kmeans_points, minimum=1)
        check_int("kmeans_seed", self.kmeans_seed, minimum=0)
        check_int("erosion_iterations", self.erosion_iterations, minimum=0)
        for name in ("use_black_mask", "adaptive", "sort_by_area", "keep_attributes"):
            check_bool(name, getattr(self, name))
        for prefix in ("iou", "stability"):
            start, end = (
                check_number(f"{prefix}_{which}", getattr(self, f"{prefix}_{which}"), minimum=0.0, maximum=1.0,
                             hint="thresholds are probabilities")
                for which in ("start", "end")
            )
            if start < end:
                raise ConfigError(
                    f"`{prefix}_start` ({start}) is below `{prefix}_end` ({end})",
                    hint="thresholds decay from start down to end; use start >= end",
                )
        check_number("step", self.step, minimum=0.0, maximum=1.0, open_min=True,
                     hint="a step <= 0 would never reach the end thresholds (the reference loops forever)")
        check_number("stagnation_gain", self.stagnation_gain, minimum=0.0, maximum=100.0,
                     hint="a gain in percentage points of coverage")
        check_number("overlap_reject", self.overlap_reject, minimum=0.0, maximum=1.0, open_min=True,
                     hint="a fraction of the component; 0 would reject every component")
        check_int("min_mask_area", self.min_mask_area, minimum=0)
        check_number("target_coverage", self.target_coverage, minimum=0.0, maximum=100.0, open_min=True,
                     hint="percent of the valid pixels")
        if self.max_passes is not None:
            check_int("max_passes", self.max_passes, minimum=1)
        check_choice("coverage_on", self.coverage_on, ("core", "window"))
        if self.prompt_halo is not None:
            check_int("prompt_halo", self.prompt_halo, minimum=0)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict of the parameters."""
        from dataclasses import asdict

        return asdict(self)


@dataclass(frozen=True, kw_only=True)
class MultipassResult:
    """Output of :func:`run_multipass`.

    Attributes
    ----------
    labels : ndarray
        (y, x) uint32, 1..n in acceptance order, 0 = unsegmented or invalid.
    pass_stats : list of dict
        One JSON-able dict per pass (see :func:`run_multipass`).
    stop_reason : str
        ``"target_coverage"``, ``"stagnation"``,
        ``"no_prompts"``, ``"max_passes"`` or ``"nothing_to_cover"``.
    attributes : dict of ndarray
        Indexed by label (entry 0 unused): ``"pass"`` (int16, -1 for 0),
        ``"predicted_iou"`` and ``"stability_score"`` (float32, NaN for 0).
        Empty when ``keep_attributes`` is False.
    coverage_core, coverage_window : float
        Final coverage of the valid core / window pixels, in percent.
    """

    labels: np.ndarray
    pass_stats: list[dict[str, Any]]
    stop_reason: str
    attributes: dict[str, np.ndarray] = field(default_factory=dict)
    coverage_core: float = 0.0
    coverage_window: float = 0.0

    @property
    def n_labels(self) -> int:
        return int(self.labels.max()) if self.labels.size else 0

    def summary(self) -> dict[str, Any]:
        """JSON-able summary (for run.json): passes, stop reason, coverage, per-pass stats."""
        return {
            "passes": len(self.pass_stats),
            "stop_reason": self.stop_reason,
            "n_labels": self.n_labels,
            "coverage_core": self.coverage_core,
            "coverage_window": self.coverage_window,
            "pass_stats": [dict(s) for s in self.pass_stats],
        }


# --------------------------------------------------------------------------- prompts


def threshold_schedule(*, start: float, end: float, step: float, n: int) -> float:
    """Threshold after ``n`` decrements: ``max(end, start - n * step)``.

    Rounded to 12 decimals so that 0.93 - 33 * 0.01 is exactly 0.60.

    Examples
    --------
    >>> threshold_schedule(start=0.93, end=0.60, step=0.01, n=33)
    0.6
    >>> threshold_schedule(start=0.93, end=0.60, step=0.01, n=50)
    0.6
    """
    return max(float(end), round(float(start) - n * float(step), 12))


def _grid_axis(size: int, k: int) -> np.ndarray:
    # edge-to-edge integer positions as the reference (points/uniform.py), deduplicated
    # so that k > size does not prompt the same pixel twice
    return unique(np.linspace(0, size - 1, k).astype(np.int64))


def grid_prompts(shape: tuple[int, int], *, points_per_side: int, allowed: np.ndarray | None = None) -> np.ndarray:
    """The k×k edge-to-edge grid as (n, 2) float (x, y) pixels, x varying fastest.

    Parameters
    ----------
    shape : (int, int)
        Window shape (y, x).
    points_per_side : int
        k.
    allowed : ndarray of bool, optional
        Keep only grid points where this (y, x) mask is True.

    Examples
    --------
    >>> grid_prompts((5, 9), points_per_side=3).tolist()
    [[0.0, 0.0], [4.0, 0.0], [8.0, 0.0], [0.0, 2.0], [4.0, 2.0], [8.0, 2.0], [0.0, 4.0], [4.0, 4.0], [8.0, 4.0]]
    """
    ys = _grid_axis(shape[0], points_per_side)
    xs = _grid_axis(shape[1], points_per_side)
    gy, gx = np.meshgrid(ys, xs, indexing="ij")
    gy, gx = gy.ravel(), gx.ravel()
    if allowed is not None:
        keep = allowed[gy, gx]
        gy, gx = gy[keep], gx[keep]
    return np.stack([gx, gy], axis=1).astype(np.float64)


def _residual(unsegmented: np.ndarray, erosion_iterations: int) -> np.ndarray:
    if erosion_iterations <= 0:
        return unsegmented
    from scipy import ndimage

    # scipy's default 3×3 cross; border_value=0 treats outside as segmented, so the
    # window edge is eroded too (as the reference's points/dense_grid.py)
    return ndimage.binary_erosion(unsegmented, iterations=erosion_iterations, border_value=0)


def dense_grid_prompts(
    unsegmented: np.ndarray, *, points_per_side: int, erosion_iterations: int = 0
) -> np.ndarray:
    """Dense Grid: the pass-0 grid points that land on unsegmented (valid) pixels.

    Examples
    --------
    >>> free = np.zeros((5, 5), bool); free[:, 3:] = True
    >>> dense_grid_prompts(free, points_per_side=3).tolist()
    [[4.0, 0.0], [4.0, 2.0], [4.0, 4.0]]
    """
    return grid_prompts(
        unsegmented.shape,
        points_per_side=points_per_side,
        allowed=_residual(unsegmented, erosion_iterations),
    )


def _lloyd(data: np.ndarray, k: int, rng: np.random.Generator, iterations: int) -> np.ndarray:
    # k-means++ seeding, then plain Lloyd iterations; deterministic for a given rng
    n = data.shape[0]
    centers = np.empty((k, data.shape[1]))
    centers[0] = data[rng.integers(n)]
    d2 = ((data - centers[0]) ** 2).sum(1)
    for j in range(1, k):
        total = d2.sum()
        idx = rng.integers(n) if total <= 0 else rng.choice(n, p=d2 / total)
        centers[j] = data[idx]
        d2 = np.minimum(d2, ((data - centers[j]) ** 2).sum(1))
    for _ in range(iterations):
        dist = (data**2).sum(1)[:, None] - 2 * data @ centers.T + (centers**2).sum(1)[None, :]
        assign = dist.argmin(1)
        sums = np.zeros_like(centers)
        np.add.at(sums, assign, data)
        counts = np.bincount(assign, minlength=k)
        moved = counts > 0  # an empty cluster keeps its centre
        new = centers.copy()
        new[moved] = sums[moved] / counts[moved, None]
        if np.array_equal(new, centers):
            break
        centers = new
    return centers


def kmeans_prompts(
    unsegmented: np.ndarray,
    *,
    n_points: int = 64,
    erosion_iterations: int = 0,
    seed: int = 42,
) -> np.ndarray:
    """K-means residual prompts, snapped to unsegmented pixels; (n, 2) float (x, y).

    Up to 10,000 residual pixels are drawn with a seeded generator, clustered
    into ``n_points`` groups (k-means++ then Lloyd, numpy only), and each centre
    is moved to the nearest sampled pixel, so every prompt lies on an
    unsegmented pixel. With ``n_points`` or fewer residual pixels, all of them
    are prompts. Same input and seed give the same prompts.

    Examples
    --------
    >>> free = np.zeros((4, 4), bool); free[0, 0] = free[3, 2] = True
    >>> kmeans_prompts(free, n_points=64).tolist()
    [[0.0, 0.0], [2.0, 3.0]]
    """
    residual = _residual(unsegmented, erosion_iterations)
    ys, xs = np.nonzero(residual)
    if ys.size <= n_points:
        return np.stack([xs, ys], axis=1).astype(np.float64)
    rng = np.random.default_rng(seed)
    if ys.size > KMEANS_MAX_SAMPLES:
        pick = np.sort(rng.choice(ys.size, KMEANS_MAX_SAMPLES, replace=False))
        ys, xs = ys[pick], xs[pick]
    data = np.stack([xs, ys], axis=1).astype(np.float64)
    centers = _lloyd(data, n_points, rng, KMEANS_ITERATIONS)
    dist = (data**2).sum(1)[:, None] - 2 * data @ centers.T + (centers**2).sum(1)[None, :]
    nearest = unique(dist.argmin(0))  # snapped; two centres on one pixel prompt once
    return data[nearest]


# --------------------------------------------------------------------------- acceptance


def _mask_box(rec: Mapping[str, Any], seg: np.ndarray) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1) exclusive crop of the mask, from its XYWH bbox when given."""
    h, w = seg.shape
    bbox = rec.get("bbox")
    if bbox is not None and len(bbox) == 4:
        x, y, bw, bh = (float(v) for v in bbox)
        # SAM's boxes are inclusive (w = x1 - x0), so +1; floor/ceil for float boxes
        x0, y0 = max(0, int(np.floor(x))), max(0, int(np.floor(y)))
        x1, y1 = min(w, int(np.ceil(x + bw)) + 1), min(h, int(np.ceil(y + bh)) + 1)
        return y0, max(y0, y1), x0, max(x0, x1)
    rows = np.flatnonzero(seg.any(axis=1))
    if rows.size == 0:
        return 0, 0, 0, 0
    cols = np.flatnonzero(seg.any(axis=0))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def accept_masks(
    records: Sequence[Mapping[str, Any]],
    *,
    labels: np.ndarray,
    valid: np.ndarray,
    next_label: int,
    min_mask_area: int = 100,
    overlap_reject: float = 0.5,
) -> tuple[int, dict[str, int], list[int]]:
    """Greedy first-come acceptance of mask components, in place on ``labels``.

    Works only inside each mask's bounding box, in one compiled kernel per
    mask (``_multipass_nb.accept_mask_box``): 4-connected components numbered
    in raster order (as ``scipy.ndimage.label``), area and overlap counts, and
    the label write, without any full-window array operation.

    Parameters
    ----------
    records : sequence of mapping
        Masks in acceptance order, with ``"segmentation"`` and optional ``"bbox"``.
    labels : ndarray of uint32
        (y, x) current labels, updated in place; ``labels > 0`` is the union.
    valid : ndarray of bool
        Pixels outside it are removed from every mask.
    next_label : int
        First label to assign.
    min_mask_area, overlap_reject
        As in :class:`MultipassConfig`.

    Returns
    -------
    next_label : int
    counts : dict
        ``components``, ``accepted``, ``rejected_small``, ``rejected_overlap``.
    owners : list of int
        For each accepted component (in label order), the index of its record.
    """
    from ._multipass_nb import accept_mask_box

    if labels.dtype != np.uint32 or labels.ndim != 2:
        raise InputError(f"`labels` must be a 2-D uint32 array, got {labels.dtype} {labels.shape}")
    valid = np.asarray(valid, dtype=bool)
    tally = np.zeros(4, np.int64)
    owners: list[int] = []
    for i, rec in enumerate(records):
        seg = np.asarray(rec["segmentation"])
        if seg.shape != labels.shape:
            raise InputError(
                f"mask {i} has shape {seg.shape}, the window is {labels.shape}",
                hint="the mask generator must return full-window masks",
            )
        if seg.dtype != bool:
            seg = seg != 0
        y0, y1, x0, x1 = _mask_box(rec, seg)
        if y1 <= y0 or x1 <= x0:
            continue
        after = accept_mask_box(
            seg, valid, labels, y0, y1, x0, x1, next_label,
            int(min_mask_area), float(overlap_reject), tally,
        )
        owners.extend([i] * (after - next_label))
        next_label = after
    names = ("components", "accepted", "rejected_small", "rejected_overlap")
    counts = {k: int(v) for k, v in zip(names, tally)}
    return next_label, counts, owners


# --------------------------------------------------------------------------- loop


def _coverage(labels: np.ndarray, valid: np.ndarray, region: tuple[slice, slice]) -> tuple[float, int]:
    v = valid[region]
    n = int(v.sum())
    if n == 0:
        return 100.0, 0
    return 100.0 * int(np.count_nonzero(labels[region][v])) / n, n


def _check_core(core: Any, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    if core is None:
        return 0, shape[0], 0, shape[1]
    try:
        y0, y1, x0, x1 = (int(v) for v in core)
    except (TypeError, ValueError):
        raise InputError(f"`core` must be (y0, y1, x0, x1), got {core!r}") from None
    if not (0 <= y0 < y1 <= shape[0] and 0 <= x0 < x1 <= shape[1]):
        raise InputError(
            f"`core` {core!r} is not a non-empty window inside the block of shape {shape}",
            hint="give the core in local pixel coordinates of the padded window",
        )
    return y0, y1, x0, x1


# long only for its docstring: the body is the pass loop, each step a function below
def run_multipass(
    image: np.ndarray,
    *,
    generator: MaskGenerator,
    config: MultipassConfig | None = None,
    valid: np.ndarray | None = None,
    core: tuple[int, int, int, int] | None = None,
    on_pass: Callable[[dict[str, Any]], None] | None = None,
) -> MultipassResult:
    """Segment one padded window with the multi-pass loop.

    Parameters
    ----------
    image : ndarray
        (y, x, 3) uint8 window.
    generator : MaskGenerator
        Called once per pass (see :class:`MaskGenerator`).
    config : MultipassConfig, optional
        Defaults to the paper's parameters.
    valid : ndarray of bool, optional
        (y, x) valid pixels; default all valid.
    core : (y0, y1, x0, x1), optional
        The core window in local pixels; default the whole window.
    on_pass : callable, optional
        Called with each pass's ``pass_stats`` entry as soon as the pass is
        done: a pass of SAM2 on a CPU takes minutes, and the caller reports it.

    Returns
    -------
    MultipassResult
        Each ``pass_stats`` entry holds ``pass``, ``n_prompts``,
        ``pred_iou_thresh``, ``stability_score_thresh``, ``masks_generated``,
        ``components``, ``accepted``, ``rejected_small``, ``rejected_overlap``,
        ``coverage`` (on ``coverage_on``), ``coverage_core``,
        ``coverage_window``, ``gain``, ``stagnated``, ``generate_s``,
        ``accept_s`` and any ``last_timings`` of the generator.

    Examples
    --------
    >>> class OneSquare:
    ...     def generate(self, image, *, points, pred_iou_thresh, stability_score_thresh):
    ...         m = np.zeros(image.shape[:2], bool); m[:10, :10] = True
    ...         return [{"segmentation": m, "predicted_iou": 0.99, "stability_score": 0.99}]
    >>> res = run_multipass(np.zeros((10, 10, 3), np.uint8), generator=OneSquare(),
    ...                     config=MultipassConfig(points_per_side=2))
    >>> res.stop_reason, res.n_labels, res.coverage_core
    ('target_coverage', 1, 100.0)
    """
    cfg, image, valid, core = _checked_inputs(image, generator, config, valid, core)
    cy0, cy1, cx0, cx1 = core
    core_sl, window_sl = (slice(cy0, cy1), slice(cx0, cx1)), (slice(None), slice(None))
    # coverage regions: the one driving the stop tests, the core, the window
    regions = (core_sl if cfg.coverage_on == "core" else window_sl, core_sl, window_sl)
    labels = np.zeros(image.shape[:2], np.uint32)
    attrs: dict[str, list] = {"pass": [-1], "predicted_iou": [np.nan], "stability_score": [np.nan]}
    promptable = _promptable(valid, core, cfg.prompt_halo)
    stats: list[dict[str, Any]] = []

    def finish(reason: str) -> MultipassResult:
        _, cov_core, cov_window = (_coverage(labels, valid, r)[0] for r in regions)
        attributes = _attribute_arrays(attrs) if cfg.keep_attributes else {}
        return MultipassResult(labels=labels, pass_stats=stats, stop_reason=reason, attributes=attributes,
                               coverage_core=cov_core, coverage_window=cov_window)

    if _coverage(labels, valid, regions[0])[1] == 0:
        return finish("nothing_to_cover")
    n_decay, prev_cov, next_label = 0, 0.0, 1
    for pass_idx in itertools.count():
        if cfg.max_passes is not None and pass_idx >= cfg.max_passes:
            return finish("max_passes")
        prompts = _pass_prompts(pass_idx, labels, promptable, cfg)
        if len(prompts) == 0:
            return finish("no_prompts")
        taus = (
            threshold_schedule(start=cfg.iou_start, end=cfg.iou_end, step=cfg.step, n=n_decay),
            threshold_schedule(start=cfg.stability_start, end=cfg.stability_end, step=cfg.step, n=n_decay),
        )
        first = next_label
        records, next_label, counts, seconds = _generate_and_accept(
            image, labels, valid, prompts, generator, cfg, pass_idx=pass_idx, taus=taus, next_label=next_label,
            attrs=attrs,
        )
        coverages = tuple(_coverage(labels, valid, r)[0] for r in regions)
        stagnated = len(records) == 0 or next_label == first or coverages[0] - prev_cov < cfg.stagnation_gain
        stats.append(_pass_stats(pass_idx, len(prompts), taus, len(records), counts, coverages,
                                 coverages[0] - prev_cov, stagnated, seconds, generator))
        if on_pass is not None:
            on_pass(dict(stats[-1]))
        if coverages[0] >= cfg.target_coverage:
            return finish("target_coverage")
        if stagnated:
            at_floor = taus[0] <= cfg.iou_end and taus[1] <= cfg.stability_end
            if not cfg.adaptive or at_floor:
                return finish("stagnation")
            n_decay += 1
        prev_cov = coverages[0]


def _checked_inputs(image, generator, config, valid, core):
    """``(config, image, valid, core)`` of :func:`run_multipass`, checked and with their defaults."""
    cfg = config if config is not None else MultipassConfig()
    if not isinstance(cfg, MultipassConfig):
        raise ConfigError(f"`config` must be a MultipassConfig, got {type(cfg).__name__}")
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise InputError(f"`image` must be a (y, x, 3) uint8 array, got {image.dtype} {image.shape}")
    shape = image.shape[:2]
    if valid is None:
        valid = np.ones(shape, bool)
    valid = np.asarray(valid)
    if valid.shape != shape:
        raise InputError(f"`valid` has shape {valid.shape}, the image is {shape}")
    valid = valid.astype(bool, copy=False)
    core = _check_core(core, shape)
    if not callable(getattr(generator, "generate", None)):
        raise ConfigError(f"`generator` {generator!r} has no `generate` method")
    return cfg, image, valid, core


def _promptable(valid: np.ndarray, core: tuple[int, int, int, int], halo: int | None) -> np.ndarray:
    """Pixels prompts may land on: valid ones, within ``halo`` of the core when given."""
    promptable = valid.copy()
    if halo is not None:
        cy0, cy1, cx0, cx1 = core
        near = np.zeros(valid.shape, bool)
        near[max(0, cy0 - halo) : cy1 + halo, max(0, cx0 - halo) : cx1 + halo] = True
        promptable &= near
    return promptable


def _pass_prompts(pass_idx: int, labels: np.ndarray, promptable: np.ndarray, cfg: MultipassConfig) -> np.ndarray:
    """The prompts of pass ``pass_idx``: the full grid first, then the configured residual strategy."""
    if pass_idx == 0:
        return grid_prompts(labels.shape, points_per_side=cfg.points_per_side, allowed=promptable)
    unsegmented = promptable & (labels == 0)
    if cfg.point_strategy == "dense_grid":
        return dense_grid_prompts(
            unsegmented, points_per_side=cfg.points_per_side, erosion_iterations=cfg.erosion_iterations
        )
    return kmeans_prompts(
        unsegmented, n_points=cfg.kmeans_points, erosion_iterations=cfg.erosion_iterations, seed=cfg.kmeans_seed,
    )


def _generate_and_accept(image, labels, valid, prompts, generator, cfg, *, pass_idx, taus, next_label, attrs):
    """Generate one pass's masks and accept them into ``labels`` (in place).

    Returns the records, the next free label, the acceptance counts and the
    (generate, accept) seconds; appends the accepted labels' attributes to ``attrs``.
    """
    tau_iou, tau_stab = taus
    if cfg.use_black_mask and pass_idx > 0:
        img = image.copy()
        img[labels > 0] = 0
    else:
        img = image
    t0 = time.perf_counter()
    records = list(generator.generate(img, points=prompts, pred_iou_thresh=tau_iou, stability_score_thresh=tau_stab))
    t1 = time.perf_counter()
    if cfg.sort_by_area:
        # stable: equal areas keep the generator's order
        records.sort(key=lambda r: int(r["area"]) if "area" in r else int(np.count_nonzero(r["segmentation"])))
    next_label, counts, owners = accept_masks(
        records, labels=labels, valid=valid, next_label=next_label,
        min_mask_area=cfg.min_mask_area, overlap_reject=cfg.overlap_reject,
    )
    t2 = time.perf_counter()
    if cfg.keep_attributes:
        for i in owners:
            attrs["pass"].append(pass_idx)
            attrs["predicted_iou"].append(float(records[i].get("predicted_iou", np.nan)))
            attrs["stability_score"].append(float(records[i].get("stability_score", np.nan)))
    return records, next_label, counts, (t1 - t0, t2 - t1)


def _pass_stats(pass_idx, n_prompts, taus, n_masks, counts, coverages, gain, stagnated, seconds, generator):
    """One ``pass_stats`` entry (keys as documented in :func:`run_multipass`)."""
    cov, cov_core, cov_window = coverages
    s: dict[str, Any] = {
        "pass": pass_idx,
        "n_prompts": int(n_prompts),
        "pred_iou_thresh": taus[0],
        "stability_score_thresh": taus[1],
        "masks_generated": n_masks,
        **counts,
        "coverage": cov,
        "coverage_core": cov_core,
        "coverage_window": cov_window,
        "gain": gain,
        "stagnated": bool(stagnated),
        "generate_s": seconds[0],
        "accept_s": seconds[1],
    }
    timings = getattr(generator, "last_timings", None)
    if isinstance(timings, Mapping):
        s.update({str(k): float(v) for k, v in timings.items()})
    return s


def _attribute_arrays(attrs: dict[str, list]) -> dict[str, np.ndarray]:
    return {
        "pass": np.asarray(attrs["pass"], np.int16),
        "predicted_iou": np.asarray(attrs["predicted_iou"], np.float32),
        "stability_score": np.asarray(attrs["stability_score"], np.float32),
    }
