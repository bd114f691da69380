"""The merge's phases run one after another, every output spilled to disk.

What ``pipeline.run`` uses: each phase task reads what it needs from the
spill folder and writes its own outputs there, so the scheduler and the
client hold nothing per block between phases and their memory does not grow
with the mosaic. The phases go to a ``map_phases`` callable the caller
supplies (the pipeline chains them on its cluster); this module never
submits work itself.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import pickle
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from .._files import (is_remote, list_names, location, read_many, remove_tree, store_path, write_bytes,
                      write_json_atomic, write_many)
from ..exceptions import ConfigError, RemoteSamsingError
from ..tiling import TilingPlan
from ._blocks import StoredSlot, owned_faces
from ._config import MergeConfig
from ._phases import ALL, Phase, check_inputs, face_offsets, merge_phases, merge_statistics
from ._recut import KEPT, RECUT, second_config

__all__ = ["merge_stored", "prepare_workdir", "stage_summary", "stage_faces", "face_schedule", "thread_map"]


#: Outputs of one step kept in one file a block (the step writes them together, and most readers of one
#: read the others too): on a store one object and one request where each output would take its own.
_BUNDLES = {"early": "summary", "late": "summary", "final": "final", "gids": "final", "parts": "final"}
#: The blocks (in the plan's order) whose outputs of a global step share one file: the global step writes
#: a few files, not one per block, and a block's reader reads a file this many blocks long.
_GROUP_BLOCKS = 64


class _Sunk(NamedTuple):
    """A relabelled block's result: what the sink returned for it (None for most sinks)."""

    value: Any


class _Held:
    """Spill files this process wrote or read for one run's merge, as bytes, by path.

    Each file is written once per run (a task run again writes the same
    values: the merge's steps are deterministic, and a block is segmented
    once, its marker says so), so a later task here that reads it (a neighbour's faces, the
    next block's share of a group file) needs no request; bytes, not
    objects, so that every reader decodes its own copy. Another run's token
    empties it; past ``max_bytes`` the least recently used files go.
    """

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.token = None
        self.files: OrderedDict = OrderedDict()
        self.nbytes = 0
        self.lock = threading.Lock()

    def put(self, token: str, path, data: bytes) -> None:
        with self.lock:
            if token != self.token:
                self.token, self.files, self.nbytes = token, OrderedDict(), 0
            old = self.files.pop(str(path), None)
            self.nbytes += len(data) - (len(old) if old is not None else 0)
            self.files[str(path)] = data
            while self.nbytes > self.max_bytes and len(self.files) > 1:
                self.nbytes -= len(self.files.popitem(last=False)[1])

    def get(self, token: str, path) -> bytes | None:
        with self.lock:
            data = self.files.get(str(path)) if token == self.token else None
            if data is not None:
                self.files.move_to_end(str(path))
            return data


#: This process's spill files (a few neighbours' summaries and group files at a time).
_HELD = _Held(64 << 20)


@dataclass(frozen=True)
class _Spill:
    """The folder where one out-of-core merge keeps its per-block results.

    Each file holds a dict ``{(kind, index): value}``: one block's outputs
    of a step (:data:`_BUNDLES`), or one output of a global step (``grouped``)
    for :data:`_GROUP_BLOCKS` blocks. Files are written atomically: a task
    that runs again after a lost worker overwrites a whole file, never half
    of one. No phase removes its inputs (the folder goes once the merge is
    done): the scheduler runs a task again when a lost worker held its
    result and a later task still needs it, also after later phases ran, and
    it must then find its inputs.
    """

    root: str
    plan: TilingPlan
    grouped: frozenset = frozenset()
    #: the run's token: files are kept in this process for later reads (:data:`_HELD`); None keeps none
    token: str | None = None
    #: for the merge of the recut blocks, the first merge's folder: what the recut left as it was (the
    #: summaries of blocks it did not touch, faces none of whose blocks it touched) is read there
    first: _Spill | None = None
    #: with ``first``: the first merge's staged labels, read for the blocks the recut did not touch
    first_staged: str = ""
    #: with ``first``: the neighbours whose faces a block owns
    face_offsets: tuple = ()

    def path(self, kind: str, index):
        if self.first is not None and not self.redone(kind, index):
            return self.first.path(kind, index)
        if kind in self.grouped:
            return location(self.root) / f"{kind}_g{self.plan.block_id(index) // _GROUP_BLOCKS}.pkl"
        return location(self.root) / f"{_BUNDLES.get(kind, kind)}_{index[0]}_{index[1]}.pkl"

    def redone(self, kind: str, index) -> bool:
        """With ``first``: whether this merge computes ``kind`` of block ``index`` again (its summary where the
        recut touched the block, its faces where it touched one of their blocks, everything else always)."""
        if kind in ("early", "late"):
            return self.first.flag(index) != KEPT
        if kind == "faces":
            blocks = [index, *owned_faces(self.plan, index, self.face_offsets)[1]]
            return any(self.first.flag(n) == RECUT for n in blocks)
        return self.first.flags(index)[1]  # the global steps and finals: where any block was recut

    def flag(self, index) -> int:
        """What the recut does to block ``index``: ``_recut.KEPT``, ``BESIDE`` or ``RECUT``."""
        return self.flags(index)[0]

    def flags(self, index) -> tuple:
        """Block ``index``'s flags of the first merge (:func:`~remote_samsing.merge._recut.recut_flags`),
        read once per file."""
        path = str(self.path("flags", index))
        held = self._flags.get(path)
        if held is None:
            held = self._flags[path] = self.load_many([("flags", i) for i in self._group_of(index)])
        return tuple(held[("flags", tuple(index))])

    def staged_of(self, index, staged: str) -> str:
        """The staged labels block ``index`` is read from: the recut's (``staged``) where it recut the block."""
        return staged if self.first is None or self.first.flag(index) == RECUT else self.first_staged

    def _group_of(self, index) -> list:
        """The blocks whose outputs of a global step share ``index``'s file (ids in row-major order)."""
        ny, nx = self.plan.grid_shape
        g = self.plan.block_id(index) // _GROUP_BLOCKS
        return [divmod(k, nx) for k in range(g * _GROUP_BLOCKS, min((g + 1) * _GROUP_BLOCKS, ny * nx))]

    @functools.cached_property
    def _flags(self) -> dict:  # group file → its flags, filled as read (never pickled full: see __getstate__)
        return {}

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("_flags", None)
        return state

    def names(self) -> set:
        """The files the folder holds, in one listing (one request on a store, not one per file)."""
        return list_names(self.root)

    def save_many(self, outputs) -> None:
        """Write ``(kind, index, obj)`` outputs, each file's together; concurrently on a store."""
        files: dict = {}
        for kind, index, obj in outputs:
            files.setdefault(self.path(kind, index), {})[(kind, tuple(index))] = obj
        data = {path: pickle.dumps(held, protocol=5) for path, held in files.items()}
        write_many(data.items())
        if self.token is not None:  # held once written: never bytes the folder lacks
            for path, raw in data.items():
                _HELD.put(self.token, path, raw)

    def load_many(self, keys, *, keep: bool = True) -> dict:
        """``{(kind, index): value}`` of ``keys``, each file read once (none this process holds).

        ``keep``: with a token, the files read are held for later reads;
        otherwise only the values asked for are kept, as each file is read.
        """
        keys = {(kind, tuple(index)) for kind, index in keys}
        keep = keep and self.token is not None

        def decode(data: bytes) -> dict:  # as each file is read: a file holds others' values too
            return {k: v for k, v in pickle.loads(data).items() if k in keys}

        loaded: dict = {}
        paths = []
        for path in dict.fromkeys(self.path(*k) for k in keys):
            data = _HELD.get(self.token, path) if self.token is not None else None
            if data is None:
                paths.append(path)
            else:
                loaded.update(decode(data))
        if keep:  # whole files, held for later reads
            for path, data in zip(paths, read_many(paths)):
                _HELD.put(self.token, path, data)
                loaded.update(decode(data))
        else:
            for held in read_many(paths, decode=decode):
                loaded.update(held)
        missing = keys.difference(loaded)
        if missing:  # a file of another configuration's spill: as absent as a missing file
            raise FileNotFoundError(f"no spilled {sorted(missing)[0]} in {self.root}")
        return loaded


def _spill(workdir, plan: TilingPlan, config: MergeConfig, token: str | None = None) -> _Spill:
    """The spill folder of a merge of ``plan`` with ``config`` (which outputs global steps write), its
    files held in the process for later reads when ``token`` names the run."""
    grouped = frozenset(o for p in _phases_of(plan, config) if not p.per_block for o in p.outputs)
    return _Spill(str(_root(workdir)), plan, grouped, token)


@functools.lru_cache(maxsize=8)
def _phases_of(plan: TilingPlan, config: MergeConfig) -> tuple:
    """The merge's phases for ``plan`` and ``config``, built once per process: every segment task
    asks for them (its summary, its faces)."""
    return tuple(merge_phases(plan, config))


def _resolve(refs, *, spill: _Spill, staged: str, plan: TilingPlan, given: dict) -> list:
    """The values of a task's reads, every spill file among them in one concurrent read."""
    refs = [(name, where if where == ALL else tuple(where)) for name, where in refs]

    def spilled(name, where):  # the spill files a read takes
        if where == ALL:
            return [(name, i) for i in plan.block_ids()]
        return [] if (name, where) in given or name == "staged" else [(name, where)]

    # a global step's reads of every block are read once: not held
    loaded = spill.load_many(dict.fromkeys(k for r in refs for k in spilled(*r)),
                             keep=all(where != ALL for _, where in refs))
    values = []
    for name, where in refs:
        if where == ALL:
            values.append([loaded[(name, i)] for i in plan.block_ids()])
        elif (name, where) in given:
            values.append(given[(name, where)])
        elif name == "staged":  # read by the step itself, only if it needs the pixels
            values.append(StoredSlot(spill.staged_of(where, staged), where, tuple(plan.slot_shape)))
        else:
            values.append(loaded[(name, where)])
    return values


def _run(item, *, phase: Phase, spill: _Spill, staged: str, plan: TilingPlan, sink=None, given=None):
    """One task of ``phase``: read its inputs from the spill folder, run, write its outputs there."""
    per_block = phase.per_block
    index = tuple(int(i) for i in item) if per_block else None
    if spill.first is not None and phase.outputs \
            and not any(spill.redone(o, index or next(iter(plan.block_ids()))) for o in phase.outputs):
        return None  # the recut changed none of its inputs: the first merge's outputs stand
    values = _resolve(phase.reads(index), spill=spill, staged=staged, plan=plan, given=given or {})
    result = phase.func(index, *values) if per_block else phase.func(*values)
    if phase.terminal:  # the block counted, with what the sink made of it
        return _Sunk(sink(result, plan.core_window(index)))
    if per_block:
        spill.save_many((name, index, value) for name, value in zip(phase.outputs, result))
    else:  # a global step: each output holds every block's value
        spill.save_many((name, i, v) for name, value in zip(phase.outputs, result)
                        for i, v in zip(plan.block_ids(), value))
    return result[len(phase.outputs)] if phase.report else None


def _pending(phase: Phase, plan: TilingPlan, spill: _Spill) -> list:
    """A phase's items still to run: per-block steps whose outputs an earlier run or the
    segmentation (:func:`stage_summary`, :func:`stage_faces`) already wrote are skipped."""
    items = phase.items(plan)
    if not phase.per_block or phase.report or phase.terminal or spill.first is not None:
        return items  # (the merge of the recut blocks learns which it redoes as it runs)
    held = spill.names()
    return [i for i in items if not all(spill.path(o, i).name in held for o in phase.outputs)]


#: The layout of the spill files: a folder another layout wrote is emptied, never read (a resumed run
#: may find one).
_SPILL_FORMAT = 3


def _workdir_token(plan: TilingPlan, cfg: MergeConfig) -> str:
    from dask.base import tokenize

    return tokenize(plan, cfg, _SPILL_FORMAT)


def prepare_workdir(workdir: str | os.PathLike, *, plan: TilingPlan, config: MergeConfig) -> None:
    """Create the spill folder of :func:`merge_stored`, keeping what it holds if it was made for the
    same plan and configuration (block summaries from :func:`stage_summary`), emptying it otherwise."""
    root = _root(workdir)
    stamp = root / "config.token"
    token = _workdir_token(plan, config)
    if root.exists():
        try:
            if stamp.read_text() == token:
                return
        except OSError:
            pass
        remove_tree(root)
    root.mkdir(parents=True, exist_ok=True)
    write_bytes(stamp, token.encode())


def _root(workdir):
    """The spill folder: an absolute local path, or a location on a store."""
    root = location(workdir)
    return root if is_remote(root) else root.absolute()


def _phase(config: MergeConfig, plan: TilingPlan, name: str) -> Phase:
    return next(p for p in _phases_of(plan, config) if p.name == name)


def stage_summary(slot: np.ndarray, *, plan: TilingPlan, index, config: MergeConfig,
                  workdir: str | os.PathLike, token: str | None = None) -> None:
    """Summarize one block's staged labels for :func:`merge_stored` while they are in memory.

    The pipeline calls this in the task that segmented the block, right
    after staging its chunk: the merge then skips its first phase for that
    block instead of reading the chunk back. ``workdir`` must have been made
    by :func:`prepare_workdir` with the same plan and configuration.

    Parameters
    ----------
    slot : ndarray
        The block's staged chunk (``plan.slot_shape``, local labels).
    plan : TilingPlan
    index : (int, int)
    config : MergeConfig
    workdir : path
    token : str, optional
        Names the run: the summary stays in this process for the faces that
        read it (pass the same to :func:`stage_faces` and :func:`merge_stored`).
    """
    index = tuple(int(i) for i in index)
    _run(index, phase=_phase(config, plan, "summarize"), spill=_spill(workdir, plan, config, token),
         staged="", plan=plan, given={("staged", index): np.asarray(slot)})


def _ahead_offsets(cfg: MergeConfig):
    """The neighbours whose summaries a block's faces read, or None where the faces wait for a global step
    (the reference strategies' island solve) or there are none (``"none"``)."""
    if cfg.strategy == "none" or cfg.islands_first:
        return None
    return face_offsets(cfg)


def stage_faces(index, *, plan: TilingPlan, config: MergeConfig, workdir: str | os.PathLike,
                token: str | None = None) -> bool:
    """Compute one block's seam faces for :func:`merge_stored` ahead of the merge, if their inputs are there.

    The faces a block owns read only its own and its neighbours' summaries
    (:func:`stage_summary`), so they can run as soon as those blocks are
    staged, while other blocks are still being segmented; the merge then
    skips its faces phase for the block. Nothing is written when a summary
    is missing (the merge computes those faces itself) or when the
    strategy's faces need a global step first (see :func:`face_schedule`).

    ``token``: as for :func:`stage_summary`.

    Returns
    -------
    bool
        Whether the block's faces were written.
    """
    if _ahead_offsets(config) is None:
        return False
    index = tuple(int(i) for i in index)
    spill = _spill(workdir, plan, config, token)
    phase = _phase(config, plan, "faces")
    try:  # no existence check first: on a store that is a request per input
        _run(index, phase=phase, spill=spill, staged="", plan=plan)
    except FileNotFoundError:  # a summary is missing: the merge computes these faces itself
        return False
    return True


def face_schedule(plan: TilingPlan, config: MergeConfig):
    """A tracker of which blocks' faces (:func:`stage_faces`) are ready as blocks get staged.

    Returns ``ready(index) -> list of block indices``: call it once per
    staged block; it returns the blocks whose faces that block completed
    (the block itself and those owning a face with it, each once). None
    when the configuration's faces cannot run ahead of the merge: strategy
    ``"none"``, or a reference strategy with ``islands`` (its faces need
    the global island solve).
    """
    offs = _ahead_offsets(config)
    if offs is None:
        return None
    ny, nx = plan.grid_shape
    # a byte per block, not a set of tuples: the client's memory stays small on huge mosaics
    done = np.zeros((ny, nx), bool)
    sent = np.zeros((ny, nx), bool)

    def ready(index) -> list:
        index = tuple(int(i) for i in index)
        done[index] = True
        out = []
        # the faces this block completes: its own, and those of the blocks owning a face with it
        for cand in [index] + [(index[0] - dy, index[1] - dx) for dy, dx in offs]:
            if not (0 <= cand[0] < ny and 0 <= cand[1] < nx) or sent[cand]:
                continue
            if done[cand] and all(done[n] for n in owned_faces(plan, cand, offs)[1]):
                sent[cand] = True
                out.append(cand)
        return out

    return ready


def thread_map(threads: int):
    """A ``map_blocks`` executor for :func:`merge_stored` without a cluster: a thread pool here."""

    def map_blocks(func, items, *, name: str):
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=max(1, int(threads))) as pool:
            return list(pool.map(func, items))

    return map_blocks


def _recut_tasks(staged: str, root, *, plan: TilingPlan, config: MergeConfig, token,
                 faces_file) -> tuple[list, _Spill]:
    """The first merge's phases up to its ids and the recut's task, as ``map_phases`` tasks, and the spill
    folder of the merge of the recut blocks (``root/second``; the recut writes their summaries there and
    their windows into ``root/recut.zarr``, made here)."""
    import uuid

    import zarr

    from .._files import zarr_options

    out = store_path(root / "recut.zarr")
    zarr.create_array(store=out, shape=plan.staging_shape, chunks=plan.slot_shape, dtype=np.uint32, fill_value=0,
                      zarr_format=3, overwrite=True, storage_options=zarr_options(out))
    first = _spill(root, plan, config, token)
    second_cfg = second_config(config)
    prepare_workdir(root / "second", plan=plan, config=second_cfg)
    second = dataclasses.replace(_spill(root / "second", plan, second_cfg, token), first=first,
                                 first_staged=staged, face_offsets=face_offsets(config))
    # the first solve writes the per-face statistics too: they stand where the recut changes nothing
    tasks = [(f"merge-first-{p.name}", functools.partial(_run, phase=p, spill=first, staged=staged, plan=plan),
              _pending(p, plan, first)) for p in merge_phases(plan, config, faces_path=faces_file)[:-1]]
    # the array is made anew here: its own token, so that each worker opens it once for this merge
    recut = functools.partial(_recut_block, first=first, second=second, staged=staged, out=out,
                              token=uuid.uuid4().hex, plan=plan, config=config)
    return tasks + [("merge-recut", recut, list(plan.block_ids()))], second


def _recut_block(item, *, first: _Spill, second: _Spill, staged: str, out: str, token: str, plan: TilingPlan,
                 config: MergeConfig) -> int:
    """One block's recut: where its flag says an edge face disagrees, its recut window into ``out``, and
    where the recut touches it, its summaries into ``second``. Returns 1 where it recut the block, else 0."""
    from .._files import open_zarr_kept
    from ._recut import recut_outputs, recut_reads

    index = tuple(int(i) for i in item)
    flag = first.flag(index)
    if flag == KEPT:
        return 0
    values = _resolve(recut_reads(index, plan=plan, cfg=config, flag=flag)[1:], spill=first, staged=staged,
                      plan=plan, given={})
    chunk, early, late = recut_outputs(index, flag, *values, plan=plan, cfg=config)
    if chunk is not None:
        sy, sx = plan.slot_shape
        z = open_zarr_kept(out, mode="r+", token=token)
        z[index[0] * sy : (index[0] + 1) * sy, index[1] * sx : (index[1] + 1) * sx] = chunk
    second.save_many([("early", index, early), ("late", index, late)])
    return int(flag == RECUT)


def _call(func, _item):
    """A one-item phase running ``func()``."""
    return func()


def _in_order(map_blocks):
    """``map_phases`` from a ``map_blocks``: the phases one after another, each timed."""

    def map_phases(phases):
        results, seconds = [], {}
        for name, func, items, *_ in phases:
            t0 = time.perf_counter()
            results.append(map_blocks(func, items, name=name))
            seconds[name] = time.perf_counter() - t0
        return results, seconds

    return map_phases


# long only for its docstring: the body builds the phase tasks and hands them to the executor
def merge_stored(
    staged: str | os.PathLike,
    *,
    plan: TilingPlan,
    config: MergeConfig,
    workdir: str | os.PathLike,
    sink,
    map_blocks=None,
    faces_path: str | os.PathLike | None = None,
    map_phases=None,
    prepare_sink=None,
    token: str | None = None,
    keep_workdir: bool = False,
) -> dict:
    """Merge staged block labels across seams and hand each merged block to ``sink``, out of core.

    The merge's phases (the same as :func:`merge_labels`': same labels, same
    statistics), run one after another with every per-block result spilled
    to ``workdir`` and read back by the next phase, so nothing per block is
    held between phases: with a bounded executor memory stays flat as the
    mosaic grows. The two global steps hold arrays of seam fragments and of
    merged ids (never pixels). Blocks already summarized
    (:func:`stage_summary`) or whose faces were already computed
    (:func:`stage_faces`) skip those phases.

    Parameters
    ----------
    staged : path
        A Zarr array of ``plan.staging_shape`` with one ``plan.slot_shape``
        chunk per block (the pipeline's ``staging/labels.zarr``).
    plan : TilingPlan
    config : MergeConfig
    workdir : path
        The spill folder (see :func:`prepare_workdir`); removed when the
        merge finished, unless ``keep_workdir``.
    sink : callable
        ``sink(labels, window)`` receives each block's merged (core) labels,
        uint32 1..N, and its :class:`~remote_samsing.tiling.Window`; called
        where the block was relabelled, so it must be picklable. What it
        returns for a block (keep it small) comes back in ``"sunk"``.
    map_blocks : callable, optional
        ``map_blocks(func, items, name=...)`` → ``[func(i) for i in items]``;
        default :func:`thread_map` with two threads.
    faces_path : path, optional
        Write the per-face statistics (a JSON list) here instead of
        returning them (they grow with the mosaic: 4 faces per block).
    map_phases : callable, optional
        ``map_phases([(name, func, items[, after]), ...])`` → ``(results,
        seconds)``: runs the phases in order, each once the phases it waits
        for (``after``: their names; default, the phase just before) have
        finished, and returns each phase's ``[func(i) for i in items]`` and
        wall time by name. Replaces ``map_blocks``. A phase may run again
        after later ones (a lost worker's result): none removes its inputs.
    prepare_sink : callable, optional
        Called once with no argument (picklable) before any block reaches
        ``sink``, beside the global steps when ``map_phases`` chains them.
    token : str, optional
        Names the run (unique to it): each process holds the spill files it
        wrote or read (up to 64 MB) for its later tasks, which then read
        them without a request. Without it every read goes to the folder.
    keep_workdir : bool
        Leave the spill folder to the caller, who removes it behind its next
        step (on a store, removing thousands of spill objects takes seconds).

    Returns
    -------
    dict
        Merge statistics, as ``merge_labels(...).stats`` computes them,
        ``"phase_seconds"``: wall time of each phase, and ``"sunk"``: what
        ``sink`` returned for each block, by block index (only where it
        returned anything but None).

    Notes
    -----
    With ``config.recuts`` (the default for ``"overlap"``) a first merge's
    phases up to its ids flag the blocks by a disagreeing edge face, each of
    those is recut from its own window and its edge neighbours' summaries
    (``merge._recut``) into ``workdir/recut.zarr``, and the merge of the
    recut blocks (in ``workdir/second``) reads what the recut left alone in
    the first merge's folder; its phases keep their names, the first
    merge's are ``first-<name>``.
    """
    staged, _ = check_inputs(store_path(location(staged)), plan, config, None)
    recut = config.recuts
    if not callable(sink):
        raise ConfigError(f"`sink` must be callable as sink(labels, window), got {type(sink).__name__}")
    root = _root(workdir)
    prepare_workdir(root, plan=plan, config=config)
    faces_file = str(_root(faces_path)) if faces_path is not None else None
    if faces_file is not None and config.strategy == "none":
        write_json_atomic(faces_file, [], indent=None)
    if recut:  # the merge proper: of the recut blocks (what the recut left as it was is read in the first)
        tasks, spill = _recut_tasks(staged, root, plan=plan, config=config, token=token, faces_file=faces_file)
        staged = store_path(root / "recut.zarr")
        phases = merge_phases(plan, second_config(config), faces_path=faces_file)[1:]  # the recut summarized
    else:
        tasks, spill = [], _spill(root, plan, config, token)
        phases = merge_phases(plan, config, faces_path=faces_file)
    tasks += [(f"merge-{p.name}", functools.partial(_run, phase=p, spill=spill, staged=staged, plan=plan, sink=sink),
               _pending(p, plan, spill)) for p in phases]
    if prepare_sink is not None:
        # waits for nothing: chained, it runs beside the global steps; the relabel waits for it
        relabel = tasks.pop()
        tasks += [("merge-sink", functools.partial(_call, prepare_sink), [0], ()),
                  relabel + (("merge-ids", "merge-sink"),)]
    results, seconds = (map_phases or _in_order(map_blocks or thread_map(2)))(tasks)
    out = {name[len("merge-"):]: r for (name, *_), r in zip(tasks, results)}
    relabel_items = next(items for name, _, items, *_ in tasks if name == "merge-relabel")
    for name in ("solve", "final", "split", "ids") if recut else ():  # where the second merge redid nothing
        if name in out:
            out[name] = [r if r is not None else f for r, f in zip(out[name], out[f"first-{name}"])]
    done = [d for d in out["relabel"] if isinstance(d, _Sunk)]
    if len(done) != plan.n_blocks:  # never let a partial product look complete
        raise RemoteSamsingError(f"the merge relabelled {len(done)} of {plan.n_blocks} blocks")
    if not keep_workdir:
        remove_tree(root)
    solve = out["solve"][0] if "solve" in out else None
    split = out["split"][0] if "split" in out else None
    stats = merge_statistics(solve, out["final"], out["ids"][0], cfg=config, faces_path=faces_file, split=split)
    if recut:
        stats["totals"]["recut_blocks"] = int(sum(out["recut"]))
    stats["phase_seconds"] = {name[len("merge-"):]: round(seconds.get(name, 0.0), 3) for name, *_ in tasks}
    if any(d.value is not None for d in done):
        stats["sunk"] = {tuple(int(i) for i in item): d.value for item, d in zip(relabel_items, done)}
    return stats
