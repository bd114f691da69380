"""Helpers for tests and benchmarks: deterministic segmenters and label checks.

These segmenters are *not* image-understanding methods; they exist to test
the pipeline exactly (their output on a window is known in advance). They
are not in the segmenter registry: pass an instance, or call
:func:`register_test_segmenters` to reach them by name (``threshold``,
``noop``). That call also lists them, as import paths, in the environment
variable ``REMOTE_SAMSING_TEST_SEGMENTERS``, so that processes started
afterwards (the CLI run in a subprocess, spawned workers) find them by name
too without the registry importing this module; ``tests/conftest.py`` makes
the call.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._arrays import unique, unique_pairs
from ._validate import check_number

#: Registry names of the test segmenters (see :func:`register_test_segmenters`).
TEST_SEGMENTERS = {
    "threshold": "remote_samsing.testing:ThresholdSegmenter",
    "noop": "remote_samsing.testing:NoopSegmenter",
}
#: Environment variable: :class:`ThresholdSegmenter` calls after this many (``log_dir`` counts) wait forever.
HOLD_AFTER = "REMOTE_SAMSING_TEST_HOLD_AFTER"


def register_test_segmenters() -> None:
    """Register :data:`TEST_SEGMENTERS` here and, through the environment, in child processes."""
    from .segmenters import register_segmenter
    from .segmenters._base import _ENV_SEGMENTERS

    os.environ[_ENV_SEGMENTERS] = ",".join(f"{name}={factory}" for name, factory in TEST_SEGMENTERS.items())
    for name, factory in TEST_SEGMENTERS.items():
        register_segmenter(name, factory)


__all__ = [
    "SAMLikeWindows",
    "shaped_partition",
    "stage_windows",
    "touching_labels",
    "ThresholdSegmenter",
    "NoopSegmenter",
    "TEST_SEGMENTERS",
    "register_test_segmenters",
    "assert_equivalent_labels",
    "raise_if_dask_computes",
    "count_calls",
    "cut_tiles",
]


@dataclass(frozen=True, kw_only=True)
class ThresholdSegmenter:
    """4-connected components of ``grey > threshold``: a *local* segmenter.

    Its labels for a pixel depend only on the connected bright region that
    contains it, so a tiled run with padding larger than every object must
    equal the untiled run exactly (up to label permutation).

    Parameters
    ----------
    threshold : int
        Grey level (mean of RGB) above which a pixel is foreground.
    delay : float
        Seconds to sleep per call (to make runs interruptible in tests).
    log_dir : str, optional
        If set, every call writes one file there, named by its ordinal among
        all calls (counts calls across worker processes).
    fail_on : list of [iy, ix], optional
        Blocks on which ``segment`` raises (to test retries and failures).

    With ``log_dir`` and the environment variable
    ``REMOTE_SAMSING_TEST_HOLD_AFTER=n``, every call after the ``n``-th
    waits forever: a test then kills the run at a known point instead of
    racing it (the variable is not a parameter, so a rerun without it has the
    same fingerprint and resumes).
    """

    threshold: int = 127
    delay: float = 0.0
    log_dir: str | None = None
    fail_on: tuple = ()

    def __post_init__(self) -> None:
        check_number("threshold", self.threshold, minimum=0, maximum=255)
        check_number("delay", self.delay, minimum=0)
        object.__setattr__(self, "fail_on", tuple(tuple(b) for b in self.fail_on))

    def segment(self, block: np.ndarray, *, block_info: Mapping[str, Any]) -> np.ndarray:
        from scipy import ndimage

        if self.log_dir:
            ordinal = _log_call(Path(self.log_dir), block_info.get("block_id", ("x", "x")))
            hold = os.environ.get(HOLD_AFTER)
            if hold is not None and ordinal > int(hold):
                threading.Event().wait()  # until the test kills the run
        if self.delay:
            time.sleep(self.delay)
        if tuple(block_info.get("block_id", ())) in self.fail_on:
            raise RuntimeError(f"scripted failure on block {block_info.get('block_id')}")
        grey = block.astype(np.float32).mean(axis=2)
        labels, _ = ndimage.label(grey > self.threshold)
        return labels.astype(np.uint32)


@dataclass(frozen=True, kw_only=True)
class NoopSegmenter:
    """Returns no segments (all zeros): measures pipeline overhead."""

    def segment(self, block: np.ndarray, *, block_info: Mapping[str, Any]) -> np.ndarray:
        return np.zeros(block.shape[:2], np.uint32)


def assert_equivalent_labels(a: np.ndarray, b: np.ndarray) -> None:
    """Assert two label images are equal up to a permutation of non-zero labels.

    Zero must map to zero; every label of ``a`` maps to exactly one label of
    ``b`` and vice versa (the check dask-image uses in its label tests).
    """
    a = np.asarray(a)
    b = np.asarray(b)
    if a.shape != b.shape:
        raise AssertionError(f"shapes differ: {a.shape} vs {b.shape}")
    if not np.array_equal(a == 0, b == 0):
        raise AssertionError(f"background differs at {int(((a == 0) != (b == 0)).sum())} pixel(s)")
    pa, pb, _ = unique_pairs(a.ravel(), b.ravel())
    if len(unique(pa)) != len(pa) or len(unique(pb)) != len(pb):
        raise AssertionError("labels are not a one-to-one relabelling of each other")


@contextlib.contextmanager
def raise_if_dask_computes(max_computes: int = 0):
    """Fail if more than ``max_computes`` dask computations run inside the block.

    Idea from xarray's test helper of the same name
    (https://github.com/pydata/xarray/blob/main/xarray/tests/__init__.py).
    """
    import dask

    count = {"n": 0}

    def scheduler(dsk, keys, **kwargs):
        count["n"] += 1
        if count["n"] > max_computes:
            raise RuntimeError(f"too many dask computations: {count['n']} > {max_computes}")
        return dask.get(dsk, keys, **kwargs)

    with dask.config.set(scheduler=scheduler):
        yield count


def _log_call(log_dir: Path, block_id) -> int:
    """Leave one file for this call in ``log_dir``, named by the call's ordinal among every process's
    calls, and return it. The ordinal is claimed by an exclusive create, so two calls starting at once
    never share one: counting the files after writing one would let both see the other's file, and
    both would take themselves for the later call."""
    log_dir.mkdir(parents=True, exist_ok=True)
    # the folder holds only these files, always ordinals 1..n (each claimed above one that exists)
    ordinal = count_calls(log_dir)
    while True:
        ordinal += 1
        try:
            fd = os.open(log_dir / f"{ordinal:06d}", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:  # another call took it first
            continue
        with os.fdopen(fd, "w") as fh:
            fh.write(f"{block_id[0]}_{block_id[1]}\n")
        return ordinal


def count_calls(log_dir: str | os.PathLike) -> int:
    """Number of segmenter calls logged by :class:`ThresholdSegmenter`."""
    p = Path(log_dir)
    return len(list(p.iterdir())) if p.exists() else 0


def stage_windows(plan, segment_window) -> np.ndarray:
    """Staged labels as the pipeline writes them, from ``segment_window(window) -> labels``.

    Parameters
    ----------
    plan : TilingPlan
    segment_window : callable
        Called with each block's padded :class:`~remote_samsing.tiling.Window`;
        returns that window's local labels (non-negative integers).

    Returns
    -------
    ndarray
        ``plan.staging_shape`` uint32, one ``plan.slot_shape`` slot per block,
        for :func:`remote_samsing.merge.merge_labels` (as a dask array chunked
        by ``plan.slot_shape``).
    """
    from skimage.segmentation import relabel_sequential

    sy, sx = plan.slot_shape
    out = np.zeros(plan.staging_shape, np.uint32)
    for iy, ix in plan.block_ids():
        w = plan.padded_window((iy, ix))
        labels = relabel_sequential(np.asarray(segment_window(w)).astype(np.int64))[0]
        out[iy * sy : iy * sy + w.shape[0], ix * sx : ix * sx + w.shape[1]] = labels
    return out


@dataclass(frozen=True, kw_only=True)
class SAMLikeWindows:
    """A window segmenter that disagrees between windows the way SAM2 does; **not SAM2**.

    Built from ground-truth objects: an object is missed with probability
    ``p_miss`` or split in two (about two thirds and one third) along a random
    line with probability ``p_split`` (drawn per object, the same in every window), and
    in each window its boundary moves by up to ``jitter`` px (dilated or
    eroded, drawn per object and window), so neighbouring windows disagree
    along boundaries. What no object covers is
    "stuff": Felzenszwalb segments of the window's image, which also depend
    on the window. A test and benchmark instrument for the seam merge.

    Parameters
    ----------
    truth : (y, x) int array
        Object ids, 0 = no object.
    image : (y, x) or (y, x, 3) array, optional
        For the stuff segments; None leaves stuff unsegmented (0).
    """

    truth: np.ndarray
    image: np.ndarray | None = None
    jitter: int = 2
    p_miss: float = 0.05
    p_split: float = 0.05
    stuff_scale: float = 200.0
    seed: int = 0

    def __call__(self, window) -> np.ndarray:
        from scipy import ndimage

        t = self.truth[window.slices]
        out = np.zeros(t.shape, np.int64)
        n = 0
        for obj, box in enumerate(ndimage.find_objects(t), start=1):
            if box is None:
                continue
            # misses and splits belong to the object; the boundary to the window
            fate = np.random.default_rng([self.seed, obj])
            if fate.random() < self.p_miss:
                continue
            split = fate.random() < self.p_split
            jitter = np.random.default_rng([self.seed, obj, window.y0, window.x0])
            mask = self._jittered(t, obj, box, jitter) & (out == 0)
            n += 1
            out[mask] = n
            if split:
                yy, xx = np.nonzero(mask)
                angle, cut = self._split_lines[obj]
                side = (yy + window.y0) * np.cos(angle) - (xx + window.x0) * np.sin(angle) > cut
                n += 1
                out[yy[side], xx[side]] = n
        if self.image is not None:
            out = self._stuff(window, out, n)
        return out

    @functools.cached_property
    def _split_lines(self) -> dict:
        """Per object, the line that splits it (angle, offset in mosaic pixels): the same in every
        window, cutting off about a third of the object so neither part is near half of it."""
        from scipy import ndimage

        lines = {}
        for obj, box in enumerate(ndimage.find_objects(self.truth), start=1):
            if box is None:
                continue
            yy, xx = np.nonzero(self.truth[box] == obj)
            angle = np.random.default_rng([self.seed, obj, 1]).uniform(0, np.pi)
            proj = (yy + box[0].start) * np.cos(angle) - (xx + box[1].start) * np.sin(angle)
            lines[obj] = (angle, float(np.quantile(proj, 2 / 3)))
        return lines

    def _jittered(self, t, obj, box, rng) -> np.ndarray:
        from scipy import ndimage

        k = int(rng.integers(-self.jitter, self.jitter + 1))
        m = self.jitter + 1
        sl = tuple(slice(max(s.start - m, 0), s.stop + m) for s in box)
        local = t[sl] == obj
        if k > 0:
            local = ndimage.binary_dilation(local, iterations=k)
        elif k < 0:
            local = ndimage.binary_erosion(local, iterations=-k, border_value=1)
        mask = np.zeros(t.shape, bool)
        mask[sl] = local
        return mask

    def _stuff(self, window, out, n) -> np.ndarray:
        from skimage.segmentation import felzenszwalb

        img = np.asarray(self.image)[window.slices]
        stuff = felzenszwalb(img, scale=self.stuff_scale, sigma=0.5, min_size=20,
                             channel_axis=-1 if img.ndim == 3 else None) + 1
        free = out == 0
        out[free] = stuff[free] + n
        return out


def touching_labels(shape, *, n_seeds, seed, hole_frac=0.1) -> np.ndarray:
    """Touching, 4-connected labels (nearest-seed regions) with some background."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    seeds = np.zeros(shape, np.int64)
    ys, xs = rng.integers(0, shape[0], n_seeds), rng.integers(0, shape[1], n_seeds)
    seeds[ys, xs] = np.arange(1, n_seeds + 1)
    _, (iy, ix) = ndimage.distance_transform_edt(seeds == 0, return_indices=True)
    lab = seeds[iy, ix]
    lab[rng.random(shape) < hole_frac] = 0
    from skimage.measure import label

    return label(lab, background=0, connectivity=1).astype(np.int64)


def _spiral(canvas, y, x, *, turns, step, value):
    """A square spiral path one pixel wide, arms ``step`` apart."""
    dy, dx, length = 0, 1, step
    for k in range(4 * turns):
        for _ in range(length):
            if 0 <= y < canvas.shape[0] and 0 <= x < canvas.shape[1]:
                canvas[y, x] = value
            y, x = y + dy, x + dx
        dy, dx = dx, -dy
        if k % 2:
            length += step


def shaped_partition(shape, *, seed):
    """A random partition with objects far larger than a tile: spirals, U-shapes, rings around
    other objects, bars across the mosaic, blobs joined by 1-px bridges, and big loops; its
    4-connected components are the true objects."""
    rng = np.random.default_rng(seed)
    canvas = touching_labels(shape, n_seeds=max(4, shape[0] * shape[1] // 900), seed=seed, hole_frac=0.0)
    canvas[rng.random(shape) < 0.02] = 0
    nxt = int(canvas.max()) + 1
    h, w = shape
    for _ in range(int(rng.integers(6, 10))):
        kind = rng.integers(0, 6)
        y, x = int(rng.integers(0, h)), int(rng.integers(0, w))
        s = int(rng.integers(h // 4, h // 2 + 1))
        if kind == 0:  # spiral
            _spiral(canvas, y, x, turns=int(rng.integers(2, 5)), step=int(rng.integers(2, 5)), value=nxt)
        elif kind == 1:  # U-shape, open at the top
            t = int(rng.integers(1, 4))
            canvas[y : y + s, x : x + t] = nxt
            canvas[y : y + s, x + s - t : x + s] = nxt
            canvas[y + s - t : y + s, x : x + s] = nxt
        elif kind == 2:  # a ring around another object
            canvas[y : y + s, x : x + s] = nxt
            canvas[y + 2 : y + s - 2, x + 2 : x + s - 2] = nxt + 1
            nxt += 1
        elif kind == 3:  # a bar across the whole mosaic
            t = int(rng.integers(1, 3))
            if rng.random() < 0.5:
                canvas[y : y + t, :] = nxt
            else:
                canvas[:, x : x + t] = nxt
        elif kind == 4:  # two blobs joined by a 1-px bridge
            r = max(2, s // 6)
            canvas[y : y + r, x : x + r] = nxt
            canvas[y : y + r, x + s : x + s + r] = nxt
            if y + r // 2 < h:  # the bridge's row may lie below the mosaic, as the blobs' lower parts
                canvas[y + r // 2, x : x + s + r] = nxt
        else:  # a big loop: the bridge that closes it lies far from where it is cut
            t = 1
            canvas[y : y + s, x : x + t] = canvas[y : y + s, x + s : x + s + t] = nxt
            canvas[y : y + t, x : x + s + t] = canvas[y + s : y + s + t, x : x + s + t] = nxt
        nxt += 1
    from skimage.measure import label

    return label(canvas, background=0, connectivity=1).astype(np.int64)


def cut_tiles(path, folder, *, rows: int, cols: int, overlap: int = 0, profile: Mapping[str, Any] | None = None
              ) -> list[Path]:
    """Cut the raster ``path`` into a ``rows`` x ``cols`` grid of GeoTIFFs in ``folder``, as tiles of a
    mosaic are delivered: each keeps the georeferencing of its pixels (``tile_<row>_<col>.tif``).

    ``overlap`` pixels are added on the right and bottom of each inner tile; ``profile`` overrides
    creation options. Returns the paths, row by row.
    """
    import rasterio
    from rasterio.windows import Window

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    with rasterio.open(path) as src:
        ys = np.linspace(0, src.height, rows + 1).round().astype(int)
        xs = np.linspace(0, src.width, cols + 1).round().astype(int)
        for r in range(rows):
            for c in range(cols):
                y1, x1 = min(src.height, ys[r + 1] + overlap), min(src.width, xs[c + 1] + overlap)
                win = Window(int(xs[c]), int(ys[r]), int(x1 - xs[c]), int(y1 - ys[r]))
                meta = {**src.profile, "width": int(win.width), "height": int(win.height),
                        "transform": src.window_transform(win), "tiled": False, **(profile or {})}
                meta.pop("blockxsize", None), meta.pop("blockysize", None)
                target = folder / f"tile_{r}_{c}.tif"
                with rasterio.open(target, "w", **meta) as dst:
                    dst.write(src.read(window=win))
                    dst.colorinterp = src.colorinterp
                out.append(target)
    return out
