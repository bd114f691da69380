"""Staging: every block's padded window → segmenter → local labels in a fixed-size slot.

How a block is staged
---------------------
1. ``io.prepare_rgb`` turns the (band, y, x) mosaic into a (y, x, 4) uint8
   array chunked by the :class:`~remote_samsing.tiling.TilingPlan`: RGB
   stretched once for the whole mosaic, plus a validity channel.
2. Each block gets its padded window: :func:`map_padded_blocks`
   (``dask.array.map_overlap(depth=padding, boundary="none", trim=False)``)
   for mosaics in memory, or :func:`read_segment_and_stage`, each block
   reading its own window through ``io.WindowReader``, for a mosaic file (in
   tasks of one or more blocks instead of ``map_overlap``'s ~12 a block;
   same array).
3. :func:`process_block` calls the segmenter on it (skipping blocks whose
   core is all invalid) and returns the block's *local* labels for its whole
   padded window, placed in a fixed-size slot (``plan.slot_shape``). Keeping
   the halo labels is what lets the merge compare two blocks' views of the
   same pixels.

The lazy path (:func:`stage_blocks`) keeps the slots in a dask array. A
resumable run keeps them in a store (:func:`create_store`)::

    staging/labels.zarr          one chunk (slot) per block
    staging/blocks/{iy}_{ix}.json  the block's statistics, written after its chunk:
                                 its existence marks the block done
    staging/attributes/{iy}_{ix}.npz  per-label segmenter attributes (SAM2)

Nothing here starts or knows a cluster: functions return dask collections or
are task functions that a caller submits.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from io import BytesIO
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np

from ._arrays import unique, unique_pairs
from ._files import (json_encoded, list_names, location, open_zarr_kept, read_bytes, read_many, store_path,
                     write_atomic, write_bytes)
from .exceptions import BlockFailedError, ConfigError, InputError, WindowReadError
from .segmenters import get_segmenter, validate_segmenter
from .tiling import TilingPlan

__all__ = [
    "STAGED_DTYPE",
    "block_marker",
    "block_attributes",
    "unstage",
    "collect_block_stats",
    "create_store",
    "map_padded_blocks",
    "process_block",
    "read_segment_and_stage",
    "resolve_segmenter",
    "segment_and_stage",
    "segment_attributes",
    "stage_block",
    "stage_blocks",
]

#: dtype of staged local labels.
STAGED_DTYPE = np.uint32


# ---------------------------------------------------------------------------
# one block, and the lazy staged array
# ---------------------------------------------------------------------------
def resolve_segmenter(segmenter: Any, params: Mapping[str, Any] | None = None):
    """A segmenter object from a registry name or an object with ``segment``."""
    if isinstance(segmenter, str):
        return get_segmenter(segmenter, **dict(params or {}))
    if params:
        raise ConfigError("`segmenter_params` only apply when `segmenter` is a registry name")
    return validate_segmenter(segmenter)


def _check_labels(labels: Any, shape: tuple[int, int], index) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.shape != shape:
        raise BlockFailedError(
            f"segmenter returned labels of shape {labels.shape} for block {index}, expected {shape}"
        )
    if labels.dtype == bool:
        labels = labels.astype(np.uint8)
    if not np.issubdtype(labels.dtype, np.integer):
        raise BlockFailedError(f"segmenter returned {labels.dtype} labels for block {index}; integers expected")
    if labels.dtype.kind == "i" and labels.size and labels.min() < 0:
        raise BlockFailedError(f"segmenter returned negative labels for block {index}")
    return labels


def process_block(
    rgba: np.ndarray,
    index: tuple[int, int],
    *,
    plan: TilingPlan,
    segmenter: Any,
    retries: int = 2,
) -> tuple[np.ndarray, dict]:
    """Segment one padded block, as the graph does; usable on its own.

    Parameters
    ----------
    rgba : ndarray
        (y, x, 4) uint8 padded window: RGB plus validity (channel 3).
    index : (int, int)
        Block index (iy, ix) in the plan.
    plan : TilingPlan
    segmenter : object with ``segment(block, *, block_info)``
    retries : int
        Extra attempts when the segmenter raises.

    Returns
    -------
    labels : ndarray
        (y, x) uint32 local labels of the padded window, 0 outside ``valid``.
    stats : dict
        Block id, windows, seconds, number of labels, skipped flag, attempts
        and any per-block statistics the segmenter exposes as ``last_stats``.
    """
    pw = plan.padded_window(index)
    if rgba.shape[:2] != pw.shape:
        raise BlockFailedError(f"block {index}: got data of shape {rgba.shape[:2]}, plan says {pw.shape}")
    valid = rgba[..., 3] > 0
    core = plan.core_in_padded(index)
    stats: dict[str, Any] = {
        "block": list(index),
        "window": list(pw.as_tuple()),
        "core": list(plan.core_window(index).as_tuple()),
        "skipped": False,
        "attempts": 0,
    }
    t0 = time.perf_counter()
    all_valid = bool(valid.all())
    if not all_valid and not valid[core.slices].any():
        # nothing to segment in the core: never call the segmenter (saves GPU time
        # on nodata borders and keeps nodata from looking like black-masked pixels)
        stats.update(skipped=True, seconds=0.0, n_labels=0)
        return np.zeros(pw.shape, STAGED_DTYPE), stats
    # a read-only view, not a copy (6 ms per megapixel): backends that need
    # contiguous or writable memory copy it themselves (SAM2 does), and a
    # retry sees exactly the input the first attempt saw
    block = rgba[..., :3]
    block.flags.writeable = False
    info = {
        "window": pw.as_tuple(),
        "valid": valid,
        "core": plan.core_window(index).as_tuple(),
        "block_id": tuple(index),
    }
    labels = _segment_with_retries(segmenter, block, info, retries=retries, stats=stats, index=index, window=pw)
    labels = _check_labels(labels, pw.shape, index)
    if not all_valid:
        labels = np.where(valid, labels, 0)
    if labels.dtype.itemsize > np.dtype(STAGED_DTYPE).itemsize and labels.size \
            and labels.max() > np.iinfo(STAGED_DTYPE).max:
        from skimage.segmentation import relabel_sequential

        labels = relabel_sequential(labels)[0]
    labels = labels.astype(STAGED_DTYPE, copy=False)
    stats["seconds"] = time.perf_counter() - t0
    stats["n_labels"] = _count_labels(labels[core.slices])
    extra = getattr(segmenter, "last_stats", None)
    if isinstance(extra, Mapping):
        stats["segmenter"] = dict(extra)
    return labels, stats


def _segment_with_retries(segmenter, block: np.ndarray, info: dict, *, retries: int, stats: dict, index, window):
    """``segmenter.segment`` on one block, tried ``retries + 1`` times; counts the attempts in ``stats``."""
    last_exc: BaseException | None = None
    for attempt in range(int(retries) + 1):
        stats["attempts"] = attempt + 1
        try:
            return segmenter.segment(block, block_info=info)
        except Exception as exc:  # noqa: BLE001 - any backend failure is retried
            last_exc = exc
    pw = window
    raise BlockFailedError(
        f"segmenter failed on block {tuple(index)} (window y {pw.y0}:{pw.y1}, x {pw.x0}:{pw.x1}) "
        f"after {int(retries) + 1} attempt(s): {type(last_exc).__name__}: {last_exc}",
        hint="finished blocks are kept; fix the cause and rerun the same command to resume",
    ) from last_exc


def _count_labels(labels: np.ndarray) -> int:
    """Number of distinct non-zero labels (bincount when labels are dense: ~5x faster than sorting)."""
    if labels.size == 0:
        return 0
    top = int(labels.max())
    if top == 0:
        return 0
    if top <= 4 * labels.size:
        return int(np.count_nonzero(np.bincount(labels.ravel())[1:]))
    return int(unique(labels).size - (labels == 0).any())


def _slot(labels: np.ndarray, plan: TilingPlan) -> np.ndarray:
    return plan.in_slot(labels.astype(STAGED_DTYPE, copy=False))


def _segment_chunk(rgba, *, plan, segmenter, retries, block_info=None):
    iy, ix = block_info[None]["chunk-location"][:2]
    labels, _ = process_block(rgba, (iy, ix), plan=plan, segmenter=segmenter, retries=retries)
    return _slot(labels, plan)


def map_padded_blocks(
    func,
    rgba: da.Array,
    *,
    plan: TilingPlan,
    chunks: tuple[int, int],
    dtype,
    resources: Mapping[str, float] | None = None,
    token: str,
    **kwargs: Any,
) -> da.Array:
    """``func(padded_rgba, plan=plan, block_info=..., **kwargs)`` on every block's padded window.

    The one place that calls ``dask.array.map_overlap`` (depth = padding,
    boundary "none", no trim) and annotates the tasks with worker resources.
    Each output chunk has shape ``chunks``.
    """
    if rgba.shape[:2] != plan.shape:
        raise InputError(f"image shape {rgba.shape[:2]} does not match the plan {plan.shape}")
    import dask

    depth = {0: plan.depth[0], 1: plan.depth[1], 2: 0}
    with dask.annotate(resources=dict(resources)) if resources else contextlib.nullcontext():
        return da.map_overlap(
            func,
            rgba,
            depth=depth,
            boundary="none",
            trim=False,
            chunks=chunks,
            drop_axis=2,
            dtype=dtype,
            meta=np.empty((0, 0), dtype),
            token=token,
            plan=plan,
            **kwargs,
        )


def stage_blocks(
    rgba: da.Array,
    *,
    plan: TilingPlan,
    segmenter: Any,
    retries: int = 2,
    resources: Mapping[str, float] | None = None,
) -> da.Array:
    """Lazy staged labels: one ``plan.slot_shape`` chunk of local labels per block."""
    return map_padded_blocks(
        _segment_chunk,
        rgba,
        plan=plan,
        chunks=plan.slot_shape,
        dtype=STAGED_DTYPE,
        resources=resources,
        token="remote-samsing-segment",
        segmenter=segmenter,
        retries=retries,
    )


# ---------------------------------------------------------------------------
# the staging store of a resumable run
# ---------------------------------------------------------------------------
def create_store(staging: str | Path, plan: TilingPlan) -> Path:
    """Create ``staging/blocks/`` and ``staging/labels.zarr`` (one chunk per slot) unless they exist."""
    import zarr

    staging = location(staging)
    (staging / "blocks").mkdir(parents=True, exist_ok=True)
    if not (staging / "labels.zarr").exists():
        zarr.create_array(
            store=store_path(staging / "labels.zarr"),
            shape=plan.staging_shape,
            chunks=plan.slot_shape,
            dtype=STAGED_DTYPE,
            fill_value=0,
            zarr_format=3,
        )
    return staging


def block_marker(staging: str | Path, index: tuple[int, int]) -> Path:
    """The statistics file whose existence marks block ``index`` as staged."""
    iy, ix = index
    return location(staging) / "blocks" / f"{iy}_{ix}.json"


def block_attributes(staging: str | Path, index: tuple[int, int]) -> Path:
    """The file of block ``index``'s per-label segmenter attributes (absent when it has none)."""
    iy, ix = index
    return location(staging) / "attributes" / f"{iy}_{ix}.npz"


def unstage(staging: str | Path, index: tuple[int, int]) -> None:
    """Forget that block ``index`` is staged (its marker and attributes go), so a run segments it again."""
    block_marker(staging, index).unlink(missing_ok=True)
    block_attributes(staging, index).unlink(missing_ok=True)


def segment_and_stage(rgba, *, plan, block_info=None, **kwargs):
    """``map_overlap`` task: segment one block unless already staged (see :func:`stage_block`)."""
    iy, ix = block_info[None]["chunk-location"][:2]
    n = stage_block((iy, ix), lambda: rgba, plan=plan, **kwargs)
    return np.full((1, 1), n, np.int64)


def read_segment_and_stage(index, *, reader, limits, plan, **kwargs) -> dict | None:
    """Read one padded window from the mosaic file, segment and stage it (a task runs it for one or more blocks).
    Returns the statistics its marker holds, or None if an earlier run staged it (see :func:`stage_block`):
    the run learns them without reading the marker back."""
    window = plan.padded_window(index).as_tuple()
    return _stage(index, lambda: reader.checked_read(window, limits, block=index), plan=plan, **kwargs)


def stage_block(index, load: Callable[[], np.ndarray], *, plan, **kwargs) -> int:
    """Segment block ``index`` unless already staged; write its chunk, its summary, then its marker.

    ``load()`` gives the padded (y, x, 4) window; it is not called for a
    block an earlier run staged. ``summarize(slot, index=index)``, when
    given, runs while the block's labels are in memory (the merge's block
    summary), so nothing needs to read the chunk back. A block whose window
    cannot be read or whose segmenter keeps failing (after ``retries``)
    raises, or with ``skip_failed`` is staged empty (0) with a marker that
    says so and why; a later run tries it again. Returns 1 if the block was
    segmented (or failed) now, 0 if it was staged already.
    """
    return 0 if _stage(index, load, plan=plan, **kwargs) is None else 1


def _stage(index, load: Callable[[], np.ndarray], *, plan, segmenter, retries, staging, run_id,
           summarize: Callable | None = None, skip_failed: bool = False) -> dict | None:
    """:func:`stage_block`, returning the statistics written in the marker (None: staged already)."""
    iy, ix = index
    marker = block_marker(staging, index)
    # never segment twice: also not a block whose finished task Dask runs again, its result lost with
    # its worker before the run took it (a fresh run's too)
    if _staged_before(marker):
        return None
    try:
        labels, stats = process_block(_load_with_retries(load, retries), (iy, ix), plan=plan, segmenter=segmenter,
                                      retries=retries)
    except BlockFailedError as exc:
        if not skip_failed:
            raise
        labels, stats = np.zeros(plan.padded_window(index).shape, STAGED_DTYPE), _failed_stats(index, plan, exc)
    slot = _slot(labels, plan)
    sy, sx = plan.slot_shape
    # kept open for the run's later blocks; the plan's layout in the token: a store made anew for
    # another plan under the same run id is opened anew
    z = open_zarr_kept(store_path(location(staging) / "labels.zarr"), mode="r+",
                       token=f"{run_id}:{plan.staging_shape}:{plan.slot_shape}")
    # one Zarr chunk per slot: chunk-aligned writes from different workers never overlap
    z[iy * sy : (iy + 1) * sy, ix * sx : (ix + 1) * sx] = slot
    if summarize is not None:
        summarize(slot, index=(iy, ix))
    attrs = getattr(segmenter, "last_attributes", None)
    if attrs and not stats.get("skipped") and not stats.get("failed"):
        # per-label attributes (SAM2: pass, predicted IoU, stability) for the vectors
        _write_attributes(block_attributes(staging, (iy, ix)), attrs)
    stats["run_id"] = run_id
    data = json_encoded(stats)
    write_bytes(marker, data)
    return json.loads(data)  # as a reader of the marker gets them


def _load_with_retries(load: Callable[[], np.ndarray], retries: int) -> np.ndarray:
    """``load()``, tried ``retries + 1`` times while the window cannot be read (store errors can pass)."""
    for _ in range(int(retries)):
        try:
            return load()
        except WindowReadError:
            continue
    return load()


def _failed_stats(index, plan: TilingPlan, exc: BlockFailedError) -> dict:
    """The marker of a block left empty by ``skip_failed``: where it is and why it failed."""
    return {"block": list(index), "window": list(plan.padded_window(index).as_tuple()),
            "core": list(plan.core_window(index).as_tuple()), "skipped": False, "failed": True,
            "error": f"{type(exc).__name__}: {Exception.__str__(exc)}", "n_labels": 0, "seconds": 0.0}


def _staged_before(marker) -> bool:
    """An earlier run staged the block: its marker exists and is not a failed block's (``skip_failed``),
    which a new run tries again. One read, also on a store (no existence check first)."""
    try:
        return not json.loads(read_bytes(marker)).get("failed")
    except (FileNotFoundError, ValueError):  # absent or not JSON: staged again; any other failure is said
        return False


def _write_attributes(path: Path, attrs: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {k: np.asarray(v) for k, v in attrs.items()}

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would append ".npz" to a path
            np.savez(f, **arrays)

    write_atomic(path, write)


def collect_block_stats(staging: str | Path, plan: TilingPlan, *, known: Sequence | None = None) -> list:
    """Each block's statistics (its marker's content) in ``plan.block_ids()`` order; None if not staged.

    ``known``: the statistics a run already has, in the same order (what its block tasks returned);
    only the markers of the blocks where it holds None are read.
    """
    known = list(known) if known is not None else [None] * plan.n_blocks
    todo = {index: block_marker(staging, index) for index, k in zip(plan.block_ids(), known) if k is None}
    if not todo:
        return known
    present = list_names(location(staging) / "blocks")  # one listing on a store
    staged = [index for index, p in todo.items() if p.name in present]
    stats = dict(zip(staged, read_many([todo[i] for i in staged], decode=json.loads)))  # concurrent on a store
    return [k if k is not None else stats.get(index) for index, k in zip(plan.block_ids(), known)]


def _block_attributes(slot, final, attrs_path, core):
    """(final label, pixels, attribute values...) of the largest local fragment per final label."""
    try:  # one request on a store; a block without attributes has no file
        attrs = dict(np.load(BytesIO(read_bytes(attrs_path))))
    except FileNotFoundError:
        return None
    local = np.asarray(slot)[core.slices].ravel()
    final = np.asarray(final).ravel()
    keep = (local > 0) & (final > 0)
    if not keep.any():
        return None
    fin, loc, counts = unique_pairs(final[keep], local[keep])
    order = np.lexsort((-counts, fin))  # per final label, the biggest fragment first
    fin, loc, counts = fin[order], loc[order], counts[order]
    first = np.r_[True, fin[1:] != fin[:-1]]
    fin, loc, cnt = fin[first], loc[first], counts[first]
    out = {"label": fin.astype(np.int64), "_px": cnt}
    for k, v in attrs.items():
        v = np.asarray(v)
        out[k] = v[np.clip(loc, 0, len(v) - 1)] if len(v) else np.full(len(loc), np.nan)
    return out


def segment_attributes(staging: str | Path, plan: TilingPlan, labels):
    """Per-object segmenter attributes (from the block holding most of the object), or None.

    ``labels``: the final (y, x) labels DataArray. Computed with ``dask.compute``
    on the current scheduler.
    """
    import dask
    import pandas as pd

    staging = location(staging)
    adir = staging / "attributes"
    if not any(name.endswith(".npz") for name in list_names(adir)):
        return None
    staged = da.from_zarr(store_path(staging / "labels.zarr")).to_delayed(optimize_graph=False)
    final = labels.data.rechunk(plan.chunks).to_delayed(optimize_graph=False)
    parts = [
        dask.delayed(_block_attributes)(staged[iy, ix], final[iy, ix], str(block_attributes(staging, (iy, ix))),
                                        plan.core_in_padded((iy, ix)))
        for iy, ix in plan.block_ids()
    ]
    rows = [pd.DataFrame(p) for p in dask.compute(*parts) if p is not None]
    if not rows:
        return None
    df = pd.concat(rows).sort_values(["label", "_px"], ascending=[True, False])
    df = df.drop_duplicates("label").drop(columns="_px")
    return df.rename(columns={"predicted_iou": "pred_iou", "stability_score": "stability"}).reset_index(drop=True)
