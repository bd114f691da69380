"""Running work on a connected cluster: bounded waves of tasks, and chained phases.

:func:`run_in_waves` runs ``func`` on many items with at most ``width`` tasks
submitted at once, so the scheduler's and the client's memory stays bounded
whatever the number of blocks. :func:`run_in_phases` runs a sequence of such
steps, chaining them on the scheduler when they are small enough. Neither
starts a cluster: :mod:`remote_samsing.cluster` makes the client, and
:mod:`remote_samsing.pipeline` decides what runs where.
"""

from __future__ import annotations

import collections
import functools
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from ._outdir import find_disk_full
from ._progress import Progress, report_passes
from ._validate import check_int
from .exceptions import ConfigError

__all__ = ["compute", "errors_as_values", "on_every_worker", "run_in_phases", "run_in_waves", "scheduler_workers",
           "threads_of"]

#: follow-ups (``run_in_waves(then=...)``) per task while items still wait to run
_FOLLOW_UPS_PER_TASK = 8
#: the most items one task takes under ``batch="auto"``
_MAX_ITEMS_PER_TASK = 32
#: the most items one task takes under ``batch="adaptive"``: items that looked light (staged by an
#: earlier run, outside the mosaic's footprint) can be followed by heavy ones, which then share a task
_MAX_ADAPTIVE_ITEMS = 8
#: finished tasks, per worker thread, whose items' time sizes the next tasks under ``batch="adaptive"``
_RECENT_TASKS_PER_THREAD = 2
#: seconds of work a task of ``batch="adaptive"`` aims at: the scheduler and the client spend
#: milliseconds on every task (about 1.7 ms on two cores, bench_scheduler), a few percent of 100 ms
#: ("use larger tasks", https://distributed.dask.org/en/stable/efficiency.html)
_TASK_SECONDS = 0.1
#: tasks each thread still gets from the items left, under ``batch="adaptive"``: the last tasks stay
#: short, so the threads end together
_TASKS_LEFT_PER_THREAD = 4


# ---------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class _TaskError:
    """An expected failure of a task, returned as its value (see :func:`errors_as_values`)."""

    error: BaseException


@dataclass(frozen=True)
class _ReturningErrors:
    func: Callable
    errors: tuple

    def __call__(self, *args, **kwargs):
        try:
            return self.func(*args, **kwargs)
        except self.errors as exc:
            return _TaskError(exc)


@dataclass(frozen=True)
class _DiskFullAsValue:
    """A task returning a full disk's ``OSError`` instead of raising it (raised on the client).

    Every task submitted here is one: a full disk is an expected failure,
    said once by the client in one line, not by each worker with a traceback.
    """

    func: Callable

    def __call__(self, *args, **kwargs):
        try:
            return self.func(*args, **kwargs)
        except OSError as exc:
            if find_disk_full(exc) is None:
                raise
            return _TaskError(exc)


def _first_error(values) -> _TaskError | None:
    return next((v for v in values if isinstance(v, _TaskError)), None)


def errors_as_values(func: Callable, errors: tuple) -> Callable:
    """``func`` for :func:`run_in_waves`, with the exceptions ``errors`` returned instead of raised;
    ``run_in_waves`` raises them on the client as the item's error.

    A worker logs every exception a task raises as a crash, with its
    traceback; a failure the caller reports itself (a block whose window
    cannot be read) then reaches the user once, as one line.
    """
    return _ReturningErrors(func, tuple(errors))


def on_a_worker(client, func: Callable, *args, **kwargs):
    """``func(*args, **kwargs)`` run once on a worker of ``client``; its result, or its error, here."""
    value = client.submit(_DiskFullAsValue(functools.partial(func, *args, **kwargs)), pure=False).result()
    if isinstance(value, _TaskError):
        raise value.error
    return value


def on_every_worker(client, func: Callable) -> None:
    """``func()`` run once in every worker process of ``client``; a cluster that refuses it is left as it is
    (what ``func`` does is housekeeping, never part of a result)."""
    try:
        client.run(func, on_error="ignore")  # a worker gone meanwhile keeps what it held: nothing to drop
    except Exception:  # noqa: BLE001 - a scheduler refusing client.run
        pass


def compute(x, client, *, progress: bool = False, optimize_graph: bool = True, label: str = "compute"):
    """The value of dask collection ``x``, computed on ``client`` (dask's default scheduler when None).

    ``optimize_graph=False`` keeps resource annotations (see
    :mod:`remote_samsing.cluster`); ``progress`` shows when it starts and ends.
    """
    if client is None:
        return x.compute()
    fut = client.compute(x, optimize_graph=optimize_graph)
    if progress:
        with Progress(label, 1, unit="result") as bar, \
                report_passes(client, bar, blocks=getattr(x, "npartitions", 1), workers=_total_threads(client)):
            result = fut.result()
            bar.update(1)
        return result
    return fut.result()


def scheduler_workers(client) -> dict:
    """Every worker the scheduler knows, by address (its info dict: nthreads, resources, ...).

    ``scheduler_info()`` lists only the first few workers unless asked for all.
    """
    return client.scheduler_info(n_workers=-1).get("workers", {})


def threads_of(workers: Mapping[str, Any]) -> int:
    """Worker threads in all, of workers as :func:`scheduler_workers` gives them."""
    return max(1, sum(int(w.get("nthreads", 1)) for w in workers.values()))


def _total_threads(client) -> int:
    return threads_of(scheduler_workers(client))


def _apply_each(func, group) -> list:
    """One task of a batched run: ``func`` on each item of ``group``."""
    return [func(item) for item in group]


def _follow_ups(func, group) -> None:
    """One task of follow-ups (``run_in_waves(then=...)``): ``func`` on each of ``group``, results dropped."""
    _apply_each(func, group)


def _after(func, group, *previous) -> list | _TaskError:
    """One task of a chained phase: ``func`` on each item of ``group``.

    ``previous`` are the results of the phases it waits for, passed so that
    the scheduler starts this task once they exist. They are read only for
    an expected failure (a full disk) of one of them, which is passed on
    instead of running on top of a phase that did not finish.
    """
    return _first_error(previous) or _apply_each(func, group)


def _barrier(*previous) -> _TaskError | None:
    """A task that ends once every task it was given has (see :func:`run_in_phases`); it passes on
    an expected failure of one of them."""
    return _first_error(previous)


def _check_batch(batch, words: tuple = ("auto",)) -> None:
    if batch not in words:
        check_int("batch", batch, minimum=1, hint="items per task: an integer, or " + " or ".join(map(repr, words)))


def _batch_size(batch, n: int, threads: int) -> int:
    """Items per task of a fixed ``batch`` (an ``"adaptive"`` run starts with 1)."""
    if batch == "auto":
        return max(1, min(_MAX_ITEMS_PER_TASK, -(-n // (2 * threads))))
    return 1 if batch == "adaptive" else int(batch)


def _adaptive_size(recent: Sequence[float], largest: int) -> int:
    """Items per task under ``batch="adaptive"``, before the tail's limit: about :data:`_TASK_SECONDS`
    of items at the slowest seconds per item of the ``recent`` finished tasks, at most twice the items
    of the ``largest`` task finished so far and at most :data:`_MAX_ADAPTIVE_ITEMS`.

    The slowest, not a typical, time: one heavy item among light ones (the first block after a
    stretch an earlier run staged) shrinks the next tasks at once, and light ones grow them back
    only by doubling.
    """
    if not recent:
        return 1
    slowest = max(recent)
    wanted = int(_TASK_SECONDS // slowest) if slowest > 0 else _MAX_ADAPTIVE_ITEMS
    return max(1, min(wanted, 2 * largest, _MAX_ADAPTIVE_ITEMS))


def _timed_each(func, group) -> tuple[float, list]:
    """One task of :func:`run_in_waves`: ``func`` on each item of ``group``, and the seconds that took."""
    t0 = time.perf_counter()
    values = [func(item) for item in group]
    return time.perf_counter() - t0, values


def _default_width(threads: int) -> int:
    return max(64, 8 * threads)


def _groups(items: Sequence, size: int) -> list[tuple]:
    return [tuple(items[i:i + size]) for i in range(0, len(items), size)]


# ---------------------------------------------------------------------------
# waves
# ---------------------------------------------------------------------------
def run_in_waves(
    client,
    func: Callable,
    items: Sequence,
    *,
    name: str,
    resources: dict | None = None,
    width: int | None = None,
    progress: bool = False,
    batch: int | str = 1,
    then: tuple[Callable, Callable] | None = None,
    threads: int | None = None,
    results: bool = True,
) -> list:
    """``[func(item) for item in items]`` on the cluster, with at most ``width`` tasks submitted at once.

    A task is submitted only when an earlier one finished, and its future is
    released at once, so what the scheduler and the client hold stays
    bounded by ``width`` whatever the number of items (one graph over all
    blocks would hold about 0.1 MB per block until the end). Results come
    back in the order of ``items``; keep them small.

    Parameters
    ----------
    client : distributed.Client
    func : callable
        Called with one item; must be picklable (functools.partial is).
    items : sequence
        Hashable, repr-able items (block indices).
    name : str
        Key prefix (``rs-<name>-<run token>-<position>``), shown on the dashboard.
    resources : dict, optional
        Worker resources each task needs (``{"GPU": 1}``).
    width : int, optional
        Tasks in flight; default 8 per worker thread, at least 64 (no worker idles while the client submits).
    progress : bool
        Draw a text progress bar on stderr.
    batch : int, "auto" or "adaptive"
        Items per task. Light items (a few ms each) cost less than their
        task does the scheduler and the client, which do not scale with
        workers; ``"auto"`` makes about 2 tasks per worker thread, at most
        32 items each. ``"adaptive"`` starts with 1 and, from the items'
        time measured on the workers, puts about :data:`_TASK_SECONDS` of
        work in a task (:func:`_adaptive_size`), never so many that the
        items left give a thread fewer than :data:`_TASKS_LEFT_PER_THREAD`
        tasks: heavy items (segmentation) stay 1 per task, so the load stays
        balanced and a lost worker costs one item, and light ones stop
        paying a task each.
    then : (follow_func, ready), optional
        Follow-up work for the workers idling behind the last items.
        ``ready(item)`` (called here, once per finished item) returns the
        follow-ups it made ready; ``follow_func(follow_up)`` runs each on any
        worker, below the items in priority: in tasks of 8 while items still
        wait, then one task per thread once no more items are left than
        worker threads. Their results are dropped, their errors raised, and
        all have finished when this returns.
    threads : int, optional
        The cluster's worker threads, if known (else asked of the scheduler); a stale count costs only speed.
    results : bool
        False: results are not kept (the list holds None); errors are still raised.

    Raises
    ------
    Exception
        The first task's error, after the tasks still in flight are cancelled.
    """
    _check_batch(batch, ("auto", "adaptive"))
    items = list(items)
    if not items:
        return []
    # one look at the workers (a scheduler round trip) serves both choices
    if threads is None:
        threads = _total_threads(client) if batch in ("auto", "adaptive") or not width or then is not None else 1
    threads = max(1, int(threads))
    width = int(width) if width else _default_width(threads)
    return _WaveRun(client, func, items, name=name, resources=resources, width=width, progress=progress, then=then,
                    threads=threads, results=results, batch=batch).run()


class _WaveRun:
    """One :func:`run_in_waves` call: tasks of one or more consecutive items each."""

    def __init__(self, client, func, items: list, *, name, resources, width: int, progress, then,
                 threads: int, results: bool, batch):
        self.client, self.func, self.items = client, func, items
        self.name, self.resources, self.width = name, resources, width
        self.threads, self.results = threads, results
        self.size = _batch_size(batch, len(items), threads)
        self.adaptive = batch == "adaptive"
        # seconds per item of the latest finished tasks, and the most items a finished task had
        self.recent: collections.deque = collections.deque(maxlen=_RECENT_TASKS_PER_THREAD * threads)
        self.largest = 0
        self.follow_func, self.ready = then if then is not None else (None, None)
        self.token = uuid.uuid4().hex[:12]
        self.bar = Progress(name, len(items), enabled=progress)
        self.out: list = [None] * len(items)
        self.span: dict = {}  # a task's key → the positions of its items (a range)
        self.live: dict = {}  # every submitted future not handled yet, by key
        self.next = 0  # the first item not submitted yet
        self.in_flight = 0  # the items' tasks, not follow-ups: they decide the refill
        self.done = 0  # items
        self.follows = 0
        self.backlog: list = []  # follow-ups made ready, not submitted yet

    def run(self) -> list:
        # a segmenter's passes ride on the bar: a block of SAM2 on a CPU takes minutes
        with report_passes(self.client, self.bar, blocks=self.bar.total, workers=self.threads):
            return self._run()

    def _run(self) -> list:
        from distributed import as_completed

        pending = as_completed(self._submit(self.width))
        self.bar.update(0)
        try:
            # finished futures come in batches, the values of each gathered in one round trip
            for finished in pending.batches():
                newly = self._handle(finished)
                self.bar.update(self.done)
                if self.ready is not None:
                    self.backlog.extend(f for it in newly for f in self.ready(it))
                    pending.update(self._submit_follow_ups())
                # refill in batches (one client.map call) once half the window drained
                if self.in_flight <= self.width // 2 and self.next < len(self.items):
                    pending.update(self._submit(self.width - self.in_flight))
        except BaseException:
            # the traceback keeps these futures alive, and with them their tasks on the scheduler
            pending.clear()
            if self.live:
                self.client.cancel(list(self.live.values()), force=True)
            raise
        return self.out

    def _submit(self, count: int) -> list:
        size = _adaptive_size(self.recent, self.largest) if self.adaptive else self.size
        spans = []
        while len(spans) < count and self.next < len(self.items):
            if self.adaptive:  # the items left still give every thread a few tasks: the threads end together
                size = max(1, min(size, (len(self.items) - self.next) // (_TASKS_LEFT_PER_THREAD * self.threads)))
            spans.append(range(self.next, min(len(self.items), self.next + size)))
            self.next = spans[-1].stop
        if not spans:
            return []
        futs = self.client.map(_DiskFullAsValue(functools.partial(_timed_each, self.func)),
                               [[self.items[i] for i in span] for span in spans],
                               key=[f"rs-{self.name}-{self.token}-{span.start}" for span in spans], pure=False,
                               resources=self.resources)
        for f, span in zip(futs, spans):
            self.span[f.key] = span
            self.live[f.key] = f
        self.in_flight += len(futs)
        return futs

    def _handle(self, finished: list) -> list:
        """Record a batch of finished futures (raising a task's error); returns the caller's items among them."""
        # follow-ups too: their value is None, or their expected failure
        wanted = [f for f in finished if f.status == "finished"]
        values = dict(zip([f.key for f in wanted], self.client.gather(wanted))) if wanted else {}
        newly: list = []
        for fut in finished:
            if fut.key not in values and fut.status != "finished":
                fut.result()  # raises the task's error
            value = values.get(fut.key)
            if isinstance(value, _TaskError):
                raise value.error
            span = self.span.pop(fut.key, None)
            fut.release()
            del self.live[fut.key]
            if span is None:  # a follow-up: its result is not wanted
                continue
            seconds, got = value
            error = _first_error(got)
            if error is not None:
                raise error.error
            self.recent.append(seconds / len(span))
            self.largest = max(self.largest, len(span))
            if self.results:
                self.out[span.start : span.stop] = got
            self.done += len(span)
            self.in_flight -= 1
            newly.extend(self.items[i] for i in span)
        return newly

    def _submit_follow_ups(self) -> list:
        # A follow-up shorter than a scheduler round trip, taken by a worker
        # between two items, leaves it waiting for its next item. So they go
        # out in tasks of _FOLLOW_UPS_PER_TASK while items still wait, and all
        # at once, one task per thread, in the tail, where workers start to idle.
        tail = self.in_flight <= self.threads
        if not self.backlog or not (tail or len(self.backlog) >= _FOLLOW_UPS_PER_TASK):
            return []
        k = min(self.threads, len(self.backlog)) if tail else 1
        groups = [tuple(self.backlog[j::k]) for j in range(k)]
        self.backlog.clear()
        futs = []
        for group in groups:
            self.follows += 1
            # below the items in priority: a follow-up never delays an item
            fut = self.client.submit(_DiskFullAsValue(_follow_ups), self.follow_func, group,
                                     key=f"rs-then-{self.name}-{self.token}-{self.follows}", pure=False,
                                     priority=-1)
            self.live[fut.key] = fut
            futs.append(fut)
        return futs


# ---------------------------------------------------------------------------
# phases
# ---------------------------------------------------------------------------
class _Phase(NamedTuple):
    name: str
    func: Callable
    items: list
    after: tuple  # the names of the phases it waits for


def run_in_phases(
    client,
    phases: Sequence[tuple],
    *,
    width: int | None = None,
    progress: bool = False,
    batch: int | str = "auto",
    workers: Mapping[str, Any] | None = None,
    label: str | None = None,
) -> tuple[list[list], dict[str, float]]:
    """Phases in order, each ``[func(item) for item in items]`` on the cluster.

    A task of a phase starts only once every task of the phases it waits for
    has finished (a phase reads what those wrote to disk). When each phase
    fits in one wave (at most ``width`` tasks), all phases are submitted at
    once, each task depending on the tasks it waits for (through one barrier
    task where many follow many): the scheduler starts a phase the moment
    the ones before end, without a round trip through the client, and a
    phase that waits for nothing runs beside the others. Chained, a task may
    run again after later phases ran (the scheduler recomputes a result lost
    with a worker): a phase must not remove its inputs. Larger phases run one
    after the other through :func:`run_in_waves`, which bounds what the
    scheduler holds.

    Parameters
    ----------
    client : distributed.Client
    phases : sequence of (name, func, items) or (name, func, items, after)
        ``after``: the names of earlier phases this one waits for; default,
        the phase just before it. A phase with no items is skipped (what
        waits for it waits for what it waited for). Keep results small: they
        travel to the workers of the phases waiting for them.
    width, progress, batch
        As for :func:`run_in_waves`; ``batch`` applies to every phase.
    workers : mapping, optional
        The workers (address → info with ``nthreads``), if known; otherwise
        asked of the scheduler. A waiting phase's tasks are spread over them,
        since the scheduler would otherwise run every task depending on one
        result on the worker holding it. A stale list costs speed, never a result.
    label : str, optional
        Chained phases show one progress bar of this name over all their
        steps (they run at once, so a bar each would only list them);
        default, a bar per phase, as phases run in waves always show.

    Returns
    -------
    results : list of lists
        Each phase's results, in the order of its items.
    seconds : dict
        Each phase's wall time as the client saw it (chained: from the end of
        the phases it waits for to the arrival of its last result).

    Raises
    ------
    ConfigError
        A phase waits for a phase not before it.
    Exception
        The first task's error, after every task of the run is cancelled.
    """
    if batch == "adaptive":
        raise ConfigError("`batch='adaptive'` is for run_in_waves, not run_in_phases",
                          hint="chained phases are submitted before any of their tasks is measured: pass an "
                               "integer or 'auto'")
    _check_batch(batch)
    steps = _parse_phases(phases)
    if workers is None:
        workers = scheduler_workers(client)
    slots = _thread_slots(workers)
    threads = max(1, len(slots))
    width = int(width) if width else _default_width(threads)
    sizes = [_batch_size(batch, len(st.items), threads) if st.items else 1 for st in steps]
    if max((-(-len(st.items) // size) for st, size in zip(steps, sizes)), default=0) > width:
        return _phases_in_waves(client, steps, width=width, progress=progress, batch=batch, threads=threads)
    return _chained_phases(client, steps, sizes, slots=slots, progress=progress, label=label)


def _parse_phases(phases: Sequence[tuple]) -> list[_Phase]:
    steps: list[_Phase] = []
    for phase in phases:
        name, func, items, *rest = phase
        after = tuple(rest[0]) if rest else ((steps[-1].name,) if steps else ())
        unknown = [a for a in after if a not in [st.name for st in steps]]
        if unknown:
            raise ConfigError(f"phase {name!r} waits for {unknown}, which are not phases before it")
        steps.append(_Phase(name, func, list(items), after))
    return steps


def _thread_slots(workers: Mapping[str, Any]) -> list[str]:
    """One worker address per worker thread, taken in turn by a waiting phase's tasks."""
    return [addr for addr in sorted(workers) for _ in range(max(1, int(workers[addr].get("nthreads", 1))))]


def _phases_in_waves(client, steps: list[_Phase], *, width, progress, batch, threads) -> tuple[list, dict]:
    """Phases too large to hold at once: one after the other, each in waves."""
    out, seconds = [], {}
    for step in steps:
        t0 = time.perf_counter()
        out.append(run_in_waves(client, step.func, step.items, name=step.name, width=width, progress=progress,
                                batch=batch, threads=threads))
        seconds[step.name] = time.perf_counter() - t0
    return out, seconds


def _chained_phases(client, steps: list[_Phase], sizes: list[int], *, slots, progress, label=None
                    ) -> tuple[list, dict]:
    """Every phase submitted at once, each task depending on the tasks it waits for."""
    t0 = time.perf_counter()
    submitted, barriers = _submit_chained(client, steps, sizes, slots)
    ended, values = _await_chained(client, steps, submitted, progress, label, barriers=barriers)
    out: list[list] = [[] for _ in steps]
    for k, futs, _ in submitted:
        out[k] = [r for f in futs for r in values[f.key]]
    seconds = {}
    for step in steps:
        start = max([t0] + [ended.get(a, t0) for a in step.after])
        ended.setdefault(step.name, start)  # a skipped phase ends when what it waited for did
        seconds[step.name] = ended[step.name] - start
    return out, seconds


def _chained_bars(steps: list[_Phase], submitted: list, progress: bool, label: str | None) -> dict:
    """The progress bar of each submitted phase: its own, or with ``label`` one for all (over all steps)."""
    if label is None:
        return {k: Progress(steps[k].name, sum(lens), enabled=progress) for k, _, lens in submitted}
    one = Progress(label, sum(sum(lens) for _, _, lens in submitted), enabled=progress, unit="steps")
    return {k: one for k, _, _ in submitted}


def _submit_chained(client, steps: list[_Phase], sizes: list[int], slots: list[str]) -> tuple[list, list]:
    """Submit every phase's tasks; returns (phase number, futures, items per task) per non-empty phase, and
    the barrier tasks' futures (held, so that a cancel finds every task still wanted: the scheduler's
    forced cancel of a task whose dependent no client wants fails on an assertion)."""
    token = uuid.uuid4().hex[:12]
    waits_on: dict[str, list] = {}  # phase → the futures a phase waiting for it waits on
    submitted, barriers = [], []
    for k, (step, size) in enumerate(zip(steps, sizes)):
        previous = list({f.key: f for a in step.after for f in waits_on[a]}.values())
        if not step.items:
            waits_on[step.name] = previous
            continue
        groups = _groups(step.items, size)
        if len(previous) * len(groups) > 2 * (len(previous) + len(groups)):
            # many tasks after many: one task waits for those before, the
            # others wait for it (m + n dependencies instead of m * n); not
            # for few, where the extra step would cost more than it saves
            previous = [client.submit(_DiskFullAsValue(_barrier), *previous, key=f"rs-{step.name}-{token}-barrier",
                                      pure=False)]
            barriers += previous
        # a waiting task's preferred worker, not a requirement (allow_other_workers):
        # otherwise the holder of what it waits for would take every one
        pin = bool(previous and slots)
        futs = [client.submit(_DiskFullAsValue(_after), step.func, g, *previous, key=f"rs-{step.name}-{token}-{j}",
                              pure=False,
                              workers=[slots[j % len(slots)]] if pin else None, allow_other_workers=pin)
                for j, g in enumerate(groups)]
        submitted.append((k, futs, [len(g) for g in groups]))
        waits_on[step.name] = futs
    return submitted, barriers


def _await_chained(client, steps: list[_Phase], submitted: list, progress: bool, label: str | None = None, *,
                   barriers: list = ()) -> tuple[dict, dict]:
    """Results by task key, and when each phase's last task ended (as the client saw it)."""
    from distributed import as_completed

    bars = _chained_bars(steps, submitted, progress, label)
    left = {k: len(futs) for k, futs, _ in submitted}
    done = {k: 0 for k in left}
    phase_of = {f.key: (k, n) for k, futs, lens in submitted for f, n in zip(futs, lens)}
    every = [f for _, futs, _ in submitted for f in futs]
    ended: dict[str, float] = {}
    values: dict = {}
    try:
        # results are fetched as tasks finish (raising a task's error), so
        # only the last phase's come after the work
        for fut, value in as_completed(every, with_results=True):
            if isinstance(value, _TaskError):
                raise value.error
            values[fut.key] = value
            k, n = phase_of[fut.key]
            done[k] += n
            bars[k].update(sum(done.values()) if label is not None else done[k])
            left[k] -= 1
            if not left[k]:
                ended[steps[k].name] = time.perf_counter()
    except BaseException:
        client.cancel(every + list(barriers), force=True)
        raise
    return ended, values
