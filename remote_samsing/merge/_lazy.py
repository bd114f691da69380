"""The merge's phases as one lazy dask graph (what ``segment()`` returns).

The graph is a plain task dictionary in dask's documented graph format
(https://docs.dask.org/en/stable/spec.html), wrapped with
``HighLevelGraph.from_collections``: one layer for the inner steps and one
per output (labels, diagnostics, statistics), on top of the input arrays'
layers. A dict is built in time linear in the number of blocks, where
chaining one ``dask.delayed`` call per block and step merges graph layers
pairwise (quadratic).
"""

from __future__ import annotations

import functools
import operator
import os
import uuid

import numpy as np

from ..tiling import TilingPlan
from ._blocks import StoredSlot, load_slot
from ._config import MergeConfig, MergeResult
from ._phases import ALL, check_inputs, merge_phases, merge_statistics
from ._recut import RECUT, recut_outputs, recut_reads, second_config

__all__ = ["merge_labels"]


class _Graph:
    """The task dict of one merge and the key of every output it holds."""

    def __init__(self, prefix: str, plan: TilingPlan, sources: dict):
        self.prefix, self.plan, self.dsk = prefix, plan, {}
        self.keys: dict = {}  # (output name, block index) -> key or literal
        self.items: dict = {}  # (phase name, block index or 0) -> key of the step's whole result
        self.sources = sources  # "staged", "reread", "valid": index -> key or literal

    def resolve(self, ref, *, terminal: bool):
        name, where = ref
        if where == ALL:
            return [self.keys[(name, i)] for i in self.plan.block_ids()]
        if name == "staged" and terminal:  # the relabel reads the staged chunk again
            name = "reread"
        if name in self.sources:
            return self.sources[name](tuple(where))
        return self.keys[(name, tuple(where))]

    def add(self, phase, out_keys: dict) -> None:
        """Add one phase's tasks; ``out_keys`` names the terminal phases' array keys."""
        for item in phase.items(self.plan):
            index = tuple(item) if phase.per_block else ()
            args = [self.resolve(r, terminal=phase.terminal) for r in phase.reads(index or None)]
            if phase.terminal:
                self.dsk[(out_keys[phase.name],) + index] = (phase.func, index, *args)
                continue
            key = (f"{self.prefix}-{phase.name}",) + index
            self.dsk[key] = (phase.func, index, *args) if phase.per_block else (phase.func, *args)
            self.items[(phase.name, index or 0)] = key
            self._outputs(phase, key, index)

    def _outputs(self, phase, key, index) -> None:
        """Name each output: a ``getitem`` of the step's result (split per block for a global step)."""
        for k, out in enumerate(phase.outputs):
            if phase.per_block:
                okey = (f"{self.prefix}-{phase.name}-{out}",) + index
                self.dsk[okey] = (operator.getitem, key, k)
                self.keys[(out, index)] = okey
                continue
            for pos, i in enumerate(self.plan.block_ids()):
                okey = (f"{self.prefix}-{phase.name}-{out}",) + i
                self.dsk[okey] = (operator.getitem, (operator.getitem, key, k), pos)
                self.keys[(out, i)] = okey


def _stats(solve, finals, ids, split=None, first_solve=None, *, cfg: MergeConfig):
    stats = merge_statistics(None if solve is None else solve[-1], [f[-1] for f in finals], ids[-1], cfg=cfg,
                             split=None if split is None else split[-1])
    if first_solve is not None:  # the blocks the recut took up (its flags)
        stats["totals"]["recut_blocks"] = sum(f == RECUT for f, _ in first_solve[1])
    return stats


def merge_labels(staged, *, plan: TilingPlan, config: MergeConfig, valid=None, reread: bool = True) -> MergeResult:
    """Merge staged block labels across seams; relabel 1..N. Computes nothing.

    Parameters
    ----------
    staged : dask.array.Array or path
        ``plan.staging_shape`` unsigned labels, one ``plan.slot_shape`` chunk
        per block holding that block's local labels for its padded window
        at the slot's top-left corner. A path names such an array in a Zarr
        store (the pipeline's staging store); the tasks that need a block's
        chunk then read it themselves (twice: ``reread`` is implied).
    plan : TilingPlan
    config : MergeConfig
    valid : dask.array.Array of bool, optional
        (H, W) validity mask; labels are 0 where it is False.
    reread : bool
        Read each staged chunk again for the final relabel (through
        ``dask.graph_manipulation.clone``) instead of keeping it in memory
        until the global tables are known. Keep True when ``staged`` is read
        from storage (memory then stays independent of the mosaic size); set
        False when ``staged`` is an expensive lazy computation.

    Returns
    -------
    MergeResult
        Lazy labels, statistics and (optionally) diagnostics.

    Examples
    --------
    >>> import numpy as np, dask.array as da
    >>> from remote_samsing.tiling import TilingPlan
    >>> plan = TilingPlan(shape=(4, 4), tile_size=4, padding=0)
    >>> staged = da.from_array(np.eye(4, dtype=np.uint32), chunks=plan.slot_shape)
    >>> res = merge_labels(staged, plan=plan, config=MergeConfig(strategy="none"))
    >>> res.labels.compute().max()
    np.uint32(1)
    """
    from dask.base import tokenize

    staged, valid = check_inputs(staged, plan, config, valid)
    # a store's path says nothing about its content: such graphs get fresh keys
    fresh = uuid.uuid4().hex if isinstance(staged, (str, os.PathLike)) else None
    token = tokenize(staged, plan, config, valid, reread, fresh)
    sources, collections = _sources(staged, valid, plan=plan, reread=reread)
    g = _Graph(f"rs-merge-{token}", plan, sources)
    names = {"relabel": f"rs-merged-labels-{token}", "diagnostics": f"rs-merge-diagnostics-{token}"}
    phases = merge_phases(plan, config, valid=valid is not None, diagnostics=config.diagnostics)
    last = g
    if config.recuts:  # a first merge up to its ids, the recut, then the merge of the recut blocks
        for phase in phases[: [p.name for p in phases].index("relabel")]:
            g.add(phase, names)
        last = _Graph(f"rs-merge-second-{token}", plan, _recut(g, plan, config, valid=valid is not None,
                                                              reread=reread))
        phases = merge_phases(plan, second_config(config), valid=valid is not None,
                              diagnostics=config.diagnostics)[1:]
    for phase in phases:
        last.add(phase, names)
    if last is not g:
        g.dsk.update(last.dsk)
    stats_name = f"rs-merge-stats-{token}"
    finals = [last.items[("final", i)] for i in plan.block_ids()]
    g.dsk[(stats_name,)] = (functools.partial(_stats, cfg=config), last.items.get(("solve", 0)), finals,
                            last.items[("ids", 0)], last.items.get(("split", 0)),
                            g.items.get(("solve", 0)) if last is not g else None)
    return _collections(g, names, stats_name, collections, diagnostics=config.diagnostics)


def _recut(g: _Graph, plan: TilingPlan, cfg: MergeConfig, *, valid: bool, reread: bool) -> dict:
    """Add one recut task per block to ``g`` (after its first merge); returns the second merge's sources:
    each block's recut staged chunk (again for the relabel when ``reread``) and summaries."""
    # with ``reread`` the chunk is the relabel's, from a recut of its own: the first recut keeps none
    run = functools.partial(_recut_block, plan=plan, cfg=cfg, valid=valid, chunk=not reread)
    again = functools.partial(_recut_block, plan=plan, cfg=cfg, valid=valid, summaries=False)
    for i in plan.block_ids():
        reads = recut_reads(i, plan=plan, cfg=cfg) + ([("valid", i)] if valid else [])
        key = (f"{g.prefix}-recut",) + i
        g.dsk[key] = (run, i, *[g.resolve(r, terminal=False) for r in reads])
        for k, out in enumerate(("slot", "early", "late")):
            g.dsk[(f"{g.prefix}-recut-{out}",) + i] = (operator.getitem, key, k)
        if reread:  # the recut computed again from the re-read chunks: no recut chunk waits for the ids
            g.dsk[(f"{g.prefix}-recut-again",) + i] = (operator.getitem, (again, i, *[
                g.resolve(r, terminal=True) for r in reads]), 0)
    chunks = "recut-again" if reread else "recut-slot"
    return {"staged": lambda i: (f"{g.prefix}-recut-slot",) + i, "reread": lambda i: (f"{g.prefix}-{chunks}",) + i,
            "early": lambda i: (f"{g.prefix}-recut-early",) + i, "late": lambda i: (f"{g.prefix}-recut-late",) + i}


def _recut_block(index, flag, slot, *values, plan: TilingPlan, cfg: MergeConfig, valid: bool, chunk: bool = True,
                 summaries: bool = True):
    """One block's recut chunk and its summaries (the first merge's where the recut leaves it as it is);
    None for what ``chunk`` or ``summaries`` leave out."""
    index = tuple(index)
    mask = values[-1] if valid else None
    # the graph holds a recut block's reads; a block's flag may ask for fewer of them
    given = dict(zip(recut_reads(index, plan=plan, cfg=cfg)[2:], values[:-1] if valid else values))
    mine = [given[r] for r in recut_reads(index, plan=plan, cfg=cfg, flag=flag[0])[2:]]
    out = recut_outputs(index, flag[0], slot, *mine, plan=plan, cfg=cfg, valid=mask, summaries=summaries)
    recut, early, late = out if out is not None else (None, given[("early", index)], given[("late", index)])
    if not chunk:
        return None, early, late
    return (recut if recut is not None else load_slot(slot)), early, late


def _sources(staged, valid, *, plan: TilingPlan, reread: bool):
    """How a task names a block's staged chunk (first read and re-read) and validity chunk."""
    collections = []
    if isinstance(staged, (str, os.PathLike)):
        path, shape = os.fspath(staged), tuple(plan.slot_shape)

        def slot(i):
            return StoredSlot(path, i, shape)

        sources = {"staged": slot, "reread": slot}
    else:
        collections.append(staged)
        again = staged
        if reread:
            from dask.graph_manipulation import clone

            again = clone(staged)
            collections.append(again)
        sources = {"staged": lambda i: (staged.name,) + i, "reread": lambda i: (again.name,) + i}
    if valid is not None:
        collections.append(valid)
        sources["valid"] = lambda i: (valid.name,) + i
    return sources, collections


def _collections(g: _Graph, names: dict, stats_name: str, sources: list, *, diagnostics: bool) -> MergeResult:
    """Wrap the task dict as the labels array, the statistics and the diagnostics array."""
    import dask.array as da
    from dask.delayed import Delayed
    from dask.highlevelgraph import HighLevelGraph

    parts: dict = {g.prefix: {}, stats_name: {}, **{n: {} for n in names.values()}}
    for key, task in g.dsk.items():
        parts[key[0] if key[0] in parts else g.prefix][key] = task
    inner = HighLevelGraph.from_collections(g.prefix, parts[g.prefix], dependencies=sources)
    inner_c = Delayed(next(iter(parts[g.prefix])), inner, layer=g.prefix)

    def layer(name):
        return HighLevelGraph.from_collections(name, parts[name], dependencies=[inner_c, *sources])

    meta32, meta8 = np.empty((0, 0), np.uint32), np.empty((0, 0), np.uint8)
    labels = da.Array(layer(names["relabel"]), names["relabel"], chunks=g.plan.chunks, dtype=np.uint32, meta=meta32)
    diag = None
    if diagnostics:
        diag = da.Array(layer(names["diagnostics"]), names["diagnostics"], chunks=g.plan.chunks, dtype=np.uint8,
                        meta=meta8)
    stats = Delayed((stats_name,), layer(stats_name), layer=stats_name)
    return MergeResult(labels=labels, stats=stats, diagnostics=diag)
