"""The merge as one list of phases, whatever executes it.

:func:`merge_phases` returns the steps of the merge in order; each names what
it reads (its own block's outputs of earlier phases, its neighbours', or every
block's for a global step) and what it writes. Two executors run the same
list: :func:`remote_samsing.merge.merge_labels` turns it into one lazy dask
graph, and :func:`remote_samsing.merge.merge_stored` runs it phase by phase,
spilling every output to disk. Neither has a copy of the steps.

A read is a pair ``(name, where)``: ``name`` is an earlier phase's output
(or the source ``"staged"``: the block's staged chunk, or ``"valid"``: its
validity mask) and ``where`` a block index, or :data:`ALL` for the list of
every block's, in ``plan.block_ids()`` order.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .._arrays import unique
from .._files import open_zarr_array, write_json_atomic
from ..exceptions import ConfigError, InputError
from ..tiling import TilingPlan
from . import _blocks as b
from . import _parts as p
from . import _solve as s
from ._config import MergeConfig

__all__ = ["ALL", "Phase", "merge_phases", "face_offsets", "check_inputs"]

#: ``where`` of a read that takes every block's output (a global step).
ALL = "all"


@dataclass(frozen=True)
class Phase:
    """One step of the merge.

    Attributes
    ----------
    name : str
        The step's name (``merge-<name>`` on the dashboard).
    func : callable
        Per block ``func(index, *values)``, global ``func(*values)``, where
        ``values`` are the resolved ``reads(index)``. Returns a tuple: one
        value per output (for a global step: a sequence over blocks), then
        the report when ``report``; a terminal step returns the block's
        merged (core) array.
    reads : callable
        ``reads(index)`` (``index`` is None for a global step) → reads.
    outputs : tuple of str
        What the step writes per block.
    per_block : bool
    report : bool
        The step also returns a small value for the caller (statistics).
    terminal : bool
        The step's result is the block's output raster (labels or codes).
    """

    name: str
    func: Callable
    reads: Callable
    outputs: tuple[str, ...] = ()
    per_block: bool = True
    report: bool = False
    terminal: bool = False

    def items(self, plan: TilingPlan) -> list:
        """The step's tasks: block indices, or one ``0`` for a global step."""
        return list(plan.block_ids()) if self.per_block else [0]


# ---------------------------------------------------------------------------
# what each phase reads
# ---------------------------------------------------------------------------
def _reads_summarize(index, *, valid: bool):
    return [("staged", index)] + ([("valid", index)] if valid else [])


def _reads_neighbours(index, *, plan: TilingPlan, offsets, with_islands: bool = False):
    blocks = [index, *b.owned_faces(plan, index, offsets)[1]]
    if with_islands:  # each block's summary, then its island flags
        return [r for n in blocks for r in (("early", n), ("islands", n))]
    return [("early", n) for n in blocks]


def _reads_all(_, *, name):
    return [(n, ALL) for n in ((name,) if isinstance(name, str) else name)]


def _reads_split(_):
    return [("parts", ALL), ("faces", ALL)]


def _reads_final(index, *, merged: bool, islands: bool):
    return [("late", index)] + ([("pieces", index)] if merged else []) + ([("islands", index)] if islands else [])


def _reads_relabel(index, *, extra: tuple):
    return [("staged", index), ("late", index), ("final", index)] + [(e, index) for e in extra]


# ---------------------------------------------------------------------------
# the phases' functions: route the block and global steps' inputs and outputs
# ---------------------------------------------------------------------------
def _summarize(index, slot, valid=None, *, plan: TilingPlan, cfg: MergeConfig):
    return b.summarize(slot, valid, plan=plan, index=tuple(index), cfg=cfg)


def _comps(index, own, *others, plan: TilingPlan):
    offs, _ = b.owned_faces(plan, tuple(index), b.SEAM_OFFSETS)
    return (b.faces_comps(own, list(others), offsets=offs),)


def _islands(comps, *, plan: TilingPlan, cfg: MergeConfig):
    return (s.solve_islands(comps, n_blocks=plan.n_blocks, min_area=cfg.min_mask_area),)


def _faces(index, *values, plan: TilingPlan, cfg: MergeConfig):
    index = tuple(index)
    if cfg.overlapping:
        offs, _ = b.owned_faces(plan, index, b.FACE_OFFSETS)
        return (b.faces_overlap(values[0], list(values[1:]), plan=plan, index=index, offsets=offs, cfg=cfg),)
    offs, nbs = b.owned_faces(plan, index, b.SEAM_OFFSETS)
    if cfg.islands:  # (summary, island flags) per block: the reference removes islands first
        infos = values[::2]
        removed = [b.island_flags(i, p, min_area=cfg.min_mask_area) for i, p in zip(infos, values[1::2])]
    else:
        infos, removed = values, [None] * len(values)
    return (b.faces_reference(infos[0], removed[0], list(infos[1:]), removed[1:], index=index,
                                     neighbours=nbs, offsets=offs, strategy=cfg.strategy,
                                     min_contact=int(cfg.min_contact_pixels)),)


def _solve(faces, *, plan: TilingPlan, cfg: MergeConfig, faces_path: str | None):
    *pieces, stats = s.solve(faces, n_blocks=plan.n_blocks, cfg=cfg)
    if faces_path is not None:
        # per-face statistics grow with the mosaic: to a file, not through the client
        write_json_atomic(faces_path, stats["faces"], indent=None)
        stats["face_totals"] = s.face_totals(stats.pop("faces"))
    if cfg.recuts:  # which blocks the seam recut may change
        from ._recut import recut_flags

        return pieces, recut_flags(faces, plan=plan), stats
    return pieces, stats


def _final(index, late, *rest, cfg: MergeConfig, merged: bool):
    pieces = rest[0] if merged else None
    removed = None
    if cfg.islands_first:
        removed = b.island_flags(late, rest[-1], min_area=cfg.min_mask_area)
    fin = b.final_ids(late, removed, pieces, min_area=cfg.min_mask_area)
    # the distinct merged ids and the inverse: what the ranking needs, computed here per block
    ids, inverse = unique(fin["gids"], return_inverse=True)
    report = {"n_before": fin["n_before"], "islands_removed": fin["islands_removed"]}
    out = ({"idx": fin["idx"], "removed": fin["removed"]}, (ids, inverse.astype(np.uint32)))
    if cfg.splits:
        out += (p.part_records(late.get("parts"), late["offset"], n_idx=late["n_idx"], idx=fin["idx"],
                               gids=fin["gids"], removed=fin["removed"]),)
    return out + (report,)


def _split(records, faces, *, plan: TilingPlan, cfg: MergeConfig):
    moves, stats = p.split_parts(records, faces, n_blocks=plan.n_blocks, min_area=cfg.split_min_area)
    return moves, stats


def _ids(gids, moves=None):
    """Ranks 1..N of every block's merged ids (and, after a split, of its moved parts' ids: 0 stays 0)."""
    if moves is None:
        *ranks, n_ids = s.rank_ids(gids)
        return ranks, n_ids
    both = [unique(np.concatenate([u, m[1]]), return_inverse=True) for (u, _), m in zip(gids, moves)]
    nonzero = [(cu[cu > 0], np.arange(np.count_nonzero(cu > 0))) for cu, _ in both]
    *ranks, n_ids = s.rank_ids(nonzero)
    out = []
    for r, (cu, c_inv), (u, g_inv) in zip(ranks, both, gids):
        per_id = np.concatenate([np.zeros(cu.size - r.size, np.uint32), r])  # a 0 sorts first
        ranked = per_id[c_inv]
        out.append((ranked[: u.size][g_inv], ranked[u.size :]))
    return out, n_ids


def _relabel(index, slot, late, final, ranks, moves=None, *, plan: TilingPlan):
    index = tuple(index)
    if not late["present"].size:  # no label in the core (nodata, nothing found): the chunk is not read
        return np.zeros(plan.core_window(index).shape, np.uint32)
    label_ranks, move_ranks = ranks if moves is not None else (ranks, None)
    lut = np.zeros(late["n_idx"], np.uint32)
    lut[final["idx"]] = label_ranks
    parts = (moves[0], move_ranks) if moves is not None and moves[0].size else None
    return b.apply_table(b.load_slot(slot), late["vbits"], final["removed"], lut, plan=plan, index=index,
                         parts=parts)


def _diagnostics(index, slot, late, final, *rest, plan: TilingPlan, merged: bool):
    pieces = rest[0] if merged else None
    moves = rest[-1] if len(rest) > int(merged) else None
    codes = b.codes_table(late, pieces[1] if pieces is not None else None)
    parts = (moves[0], np.full(moves[0].size, 5, np.uint8)) if moves is not None and moves[0].size else None
    return b.apply_table(b.load_slot(slot), late["vbits"], final["removed"], codes, plan=plan, index=tuple(index),
                         diagnostics=True, parts=parts)


# ---------------------------------------------------------------------------
# the list
# ---------------------------------------------------------------------------
def face_offsets(cfg: MergeConfig) -> tuple:
    """The neighbours whose faces a block owns: all four lower/right ones for the overlap strategies
    (corners too), the two seams for the reference ones."""
    return b.FACE_OFFSETS if cfg.overlapping else b.SEAM_OFFSETS


def merge_phases(plan: TilingPlan, cfg: MergeConfig, *, valid: bool = False, faces_path: str | None = None,
                 diagnostics: bool = False) -> list[Phase]:
    """The merge's steps for ``cfg``, in order.

    Parameters
    ----------
    plan : TilingPlan
    cfg : MergeConfig
    valid : bool
        The summary also reads a validity mask per block (``"valid"``).
    faces_path : str, optional
        The solve writes the per-face statistics to this JSON file and
        reports only their sums.
    diagnostics : bool
        Append the terminal step that computes the seam-diagnostics codes.
    """
    P, part = Phase, functools.partial
    merged = cfg.strategy != "none"
    islands_first = cfg.islands_first
    phases = [P("summarize", part(_summarize, plan=plan, cfg=cfg), part(_reads_summarize, valid=valid),
                ("early", "late"))]
    if islands_first:  # the reference removes small islands before it merges
        phases += [P("comps", part(_comps, plan=plan),
                     part(_reads_neighbours, plan=plan, offsets=b.SEAM_OFFSETS), ("comps",)),
                   P("islands", part(_islands, plan=plan, cfg=cfg), part(_reads_all, name="comps"), ("islands",),
                     per_block=False)]
    if merged:
        offsets = face_offsets(cfg)
        phases += [P("faces", part(_faces, plan=plan, cfg=cfg),
                     part(_reads_neighbours, plan=plan, offsets=offsets, with_islands=islands_first), ("faces",)),
                   P("solve", part(_solve, plan=plan, cfg=cfg, faces_path=faces_path),
                     part(_reads_all, name="faces"), ("pieces", "flags") if cfg.recuts else ("pieces",),
                     per_block=False, report=True)]
    splits = cfg.splits
    phases.append(P("final", part(_final, cfg=cfg, merged=merged),
                    part(_reads_final, merged=merged, islands=islands_first),
                    ("final", "gids", "parts") if splits else ("final", "gids"), report=True))
    if splits:
        phases.append(P("split", part(_split, plan=plan, cfg=cfg), _reads_split, ("moves",), per_block=False,
                        report=True))
    phases += [P("ids", _ids, part(_reads_all, name=("gids", "moves") if splits else "gids"), ("ranks",),
                 per_block=False, report=True),
               P("relabel", part(_relabel, plan=plan),
                 part(_reads_relabel, extra=("ranks", "moves") if splits else ("ranks",)), terminal=True)]
    if diagnostics:
        extra = (("pieces",) if merged else ()) + (("moves",) if splits else ())
        phases.append(P("diagnostics", part(_diagnostics, plan=plan, merged=merged),
                        part(_reads_relabel, extra=extra), terminal=True))
    return phases


def merge_statistics(solve, finals, n_ids: int, *, cfg: MergeConfig, faces_path: str | None = None,
                     split: dict | None = None) -> dict:
    """The merge's statistics from the reports of the solve (None without one), the finals, the ids and
    the split (None without one)."""
    if solve is None:
        solve = {"face_totals": s.face_totals([])} if faces_path is not None else {"faces": []}
    stats = s.collect_stats(solve, finals, int(n_ids), strategy=cfg.strategy)
    if split is not None:
        stats["totals"].update(split)
    return stats


def check_inputs(staged, plan, config, valid):
    """Check the merge's inputs before anything runs; returns ``staged`` and ``valid`` chunked per block."""
    if not isinstance(plan, TilingPlan):
        raise ConfigError(f"`plan` must be a TilingPlan, got {type(plan).__name__}")
    if not isinstance(config, MergeConfig):
        raise ConfigError(f"`config` must be a MergeConfig, got {type(config).__name__}")
    if isinstance(staged, (str, os.PathLike)):
        try:
            z = open_zarr_array(os.fspath(staged), mode="r")
        except Exception as exc:  # noqa: BLE001 - any zarr failure means a bad staging store
            raise InputError(f"cannot open the staged labels `{os.fspath(staged)}`: {exc}") from None
        if tuple(z.chunks) != tuple(plan.slot_shape):
            raise InputError(
                f"staged labels `{os.fspath(staged)}` have chunks {tuple(z.chunks)}, the plan's slots are "
                f"{plan.slot_shape}",
                hint="stage one chunk per block with the same TilingPlan",
            )
        shape, dtype = tuple(z.shape), np.dtype(z.dtype)
    else:
        shape, dtype = tuple(staged.shape), np.dtype(staged.dtype)
    if shape != tuple(plan.staging_shape):
        raise InputError(
            f"staged labels have shape {shape}, the plan expects {plan.staging_shape}",
            hint="stage with remote_samsing.staging.stage_blocks and the same TilingPlan",
        )
    if not np.issubdtype(dtype, np.unsignedinteger) or dtype.itemsize > 4:
        raise InputError(f"staged labels must be uint8/16/32, got {dtype}")
    sy, sx = plan.slot_shape
    ny, nx = plan.grid_shape
    if not isinstance(staged, (str, os.PathLike)) and staged.chunks != ((sy,) * ny, (sx,) * nx):
        staged = staged.rechunk((sy, sx))
    if valid is not None:
        if tuple(valid.shape) != tuple(plan.shape):
            raise InputError(f"`valid` has shape {tuple(valid.shape)}, the mosaic is {plan.shape}")
        if valid.dtype != bool:
            raise InputError(f"`valid` must be a boolean mask, got {valid.dtype}")
        if valid.chunks != plan.chunks:
            valid = valid.rechunk(plan.chunks)
    if config.overlapping and plan.padding == 0 and plan.n_blocks > 1:
        raise ConfigError(
            f"merge strategy `{config.strategy}` needs padding > 0: blocks without a shared halo give no overlap evidence",
            hint="set padding (e.g. 50) or use merge='min_contact'",
        )
    return staged, valid
