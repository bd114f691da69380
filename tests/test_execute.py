"""Execution on a cluster: run_in_waves (bounded waves, batches, follow-ups) and run_in_phases (chained phases).

Every test runs on the session's real two-worker cluster (``client`` in conftest).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from _helpers import wait_until_idle

from remote_samsing.exceptions import ConfigError
from remote_samsing.execute import compute, run_in_phases, run_in_waves, threads_of


def _slow_double(x):
    import time

    time.sleep(0.005)
    if x == 13:
        raise ValueError("block 13 is broken")
    return 2 * x


class _CountingClient:
    """Delegates to a real client; records how many submitted tasks were not yet gathered."""

    def __init__(self, client):
        self._c = client
        self.in_flight = self.max_in_flight = 0
        self.batches = []

    def map(self, func, items, **kw):
        self.in_flight += len(items)
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        self.batches.append(len(items))
        return self._c.map(func, items, **kw)

    def gather(self, futures):
        self.in_flight -= len(futures)
        return self._c.gather(futures)

    def __getattr__(self, name):
        return getattr(self._c, name)


def test_run_in_waves_batches_light_items_into_fewer_tasks(client, capsys):
    from distributed import get_task_stream


    items = [i for i in range(50) if i != 13]  # 49 items
    with get_task_stream(client) as ts:
        out = run_in_waves(client, _slow_double, items, name="test-batch", batch=8, progress=True)
    assert out == [2 * i for i in items]  # order kept across groups
    keys = [t["key"] for t in ts.data if str(t["key"]).startswith("rs-test-batch")]
    assert len(keys) == 7  # ceil(49 / 8) tasks
    # the progress bar counts items, not tasks
    assert capsys.readouterr().err.splitlines()[-1].startswith("test-batch: 49/49 blocks done")
    # "auto" on this cluster (2 threads): about 2 tasks per thread, ceil(49 / 4) = 13 items per task
    n_threads = sum(w["nthreads"] for w in client.scheduler_info()["workers"].values())
    assert n_threads == 2
    with get_task_stream(client) as ts:
        assert run_in_waves(client, _slow_double, items, name="test-auto", batch="auto") == [2 * i for i in items]
    assert len([t for t in ts.data if str(t["key"]).startswith("rs-test-auto")]) == 4  # ceil(49 / 13)
    # the caller's count of threads, when given, is used (no scheduler round trip): ceil(49 / 2) per task
    with get_task_stream(client) as ts:
        got = run_in_waves(client, _slow_double, items, name="test-given", batch="auto", threads=1)
    assert got == [2 * i for i in items]
    assert len([t for t in ts.data if str(t["key"]).startswith("rs-test-given")]) == 2
    # results=False: nothing fetched back, None each; an item's error still raised
    assert run_in_waves(client, _slow_double, items, name="test-none", results=False) == [None] * len(items)
    assert run_in_waves(client, _slow_double, items, name="test-none", batch=8, results=False) == [None] * len(items)
    with pytest.raises(ValueError, match="block 13 is broken"):
        run_in_waves(client, _slow_double, list(range(40)), name="test-none", results=False)
    # few items: one per task
    with get_task_stream(client) as ts:
        assert run_in_waves(client, _slow_double, [1, 2, 3], name="test-few", batch="auto") == [2, 4, 6]
    assert len([t for t in ts.data if str(t["key"]).startswith("rs-test-few")]) == 3
    # an error inside a group is the item's own error
    with pytest.raises(ValueError, match="block 13 is broken"):
        run_in_waves(client, _slow_double, list(range(40)), name="test-batch", batch=5)
    with pytest.raises(ConfigError, match="batch"):
        run_in_waves(client, _slow_double, items, name="test-batch", batch=0)


def _task_starts(ts, name: str) -> list[int]:
    """The position of each task's first item, of a run_in_waves call, from its tasks' keys
    (``rs-<name>-<token>-<first item's position>``)."""
    return sorted(int(str(t["key"]).rsplit("-", 1)[1]) for t in ts.data if str(t["key"]).startswith(f"rs-{name}-"))


def test_adaptive_task_size_follows_the_slowest_recent_items_and_grows_by_doubling():
    """``batch="adaptive"``'s size: about ``_TASK_SECONDS`` of items at the slowest recent item,
    at most twice the largest task finished and at most ``_MAX_ADAPTIVE_ITEMS``; one item before
    anything is measured and when items are as long as the target."""
    from remote_samsing.execute import _MAX_ADAPTIVE_ITEMS, _TASK_SECONDS, _adaptive_size

    assert _MAX_ADAPTIVE_ITEMS == 8 and _TASK_SECONDS == 0.1
    assert _adaptive_size([], 0) == 1
    assert _adaptive_size([0.001] * 4, 1) == 2  # light, but only single items finished yet
    assert _adaptive_size([0.001] * 4, 4) == 8 and _adaptive_size([0.001] * 4, 100) == 8
    assert _adaptive_size([0.03, 0.02], 8) == 3  # 0.1 s of the slower
    assert _adaptive_size([0.001, 0.5, 0.001], 8) == 1  # one heavy item among light ones
    assert _adaptive_size([0.2], 8) == 1
    assert _adaptive_size([0.0], 2) == 4  # no measurable time: the doubling still holds


def test_adaptive_batches_follow_the_items_measured_time(client, monkeypatch):
    """``batch="adaptive"`` on the cluster: light items share tasks after the first wave, growing
    by doubling up to ``_MAX_ADAPTIVE_ITEMS``, fewer as the items run out, one each at the end;
    items as long as the target keep one task each. Order and results are the items'."""
    from distributed import get_task_stream

    import remote_samsing.execute as execute

    items = list(range(300))
    monkeypatch.setattr(execute, "_TASK_SECONDS", 1e6)  # every item light
    with get_task_stream(client) as ts:
        got = run_in_waves(client, _inc, items, name="test-light", batch="adaptive", width=16)
    assert got == [i + 1 for i in items]
    starts = _task_starts(ts, "test-light")
    sizes = [b - a for a, b in zip(starts, starts[1:] + [len(items)])]
    assert starts[:16] == list(range(16))  # the first wave: one item each, nothing measured yet
    assert max(sizes) == execute._MAX_ADAPTIVE_ITEMS and len(sizes) < len(items) // 3
    # a task never takes more than twice what a task submitted before it took
    assert all(size <= 2 * max(sizes[:i]) for i, size in enumerate(sizes) if i)
    # the items left always give each of the 2 threads 4 tasks: the last tasks are single items
    assert sizes[-8:] == [1] * 8
    assert all(size <= max(1, (len(items) - start) // 8) for start, size in zip(starts[16:], sizes[16:]))
    monkeypatch.setattr(execute, "_TASK_SECONDS", 0.0)  # every item heavy
    with get_task_stream(client) as ts:
        assert run_in_waves(client, _inc, items[:40], name="test-heavy", batch="adaptive", width=16) == items[1:41]
    assert _task_starts(ts, "test-heavy") == list(range(40))


def _returns_13_as_error(x):
    if x == 13:
        raise KeyError("block 13 cannot be read")
    return x


@pytest.mark.parametrize("batch", [1, 5, "adaptive"])
def test_an_error_returned_as_a_value_is_raised_for_its_item(client, batch):
    """errors_as_values: an item's expected error, returned inside its task's values, is raised on the
    client whether the item had a task of its own or shared one."""
    from remote_samsing.execute import errors_as_values

    func = errors_as_values(_returns_13_as_error, (KeyError,))
    with pytest.raises(KeyError, match="block 13 cannot be read"):
        run_in_waves(client, func, list(range(40)), name="test-as-value", batch=batch, width=4)
    assert run_in_waves(client, func, list(range(13)), name="test-as-value", batch=batch) == list(range(13))


def _item_time(x):
    """An item's task: item 7 is a straggler; returns (value, when it ended)."""
    import time

    time.sleep(1.5 if x == 7 else 0.02)
    return 2 * x, time.time()


def _follow_up(f, *, folder):
    """A follow-up: leaves a file saying when it ran; ("bad", i) raises."""
    import time

    if f[0] == "bad":
        raise ValueError(f"follow-up {f[1]} is broken")
    Path(folder, f"{f[0]}-{f[1]}").write_text(repr(time.time()))
    return None


def test_run_in_waves_starts_follow_ups_while_items_still_run(client, tmp_path):
    """``then=(func, ready)``: ``ready`` is called once per finished item (per
    item also when batched), each follow-up it returns runs once, while
    other items still run, and all have finished when the call returns; a
    follow-up's error is raised. Follow-ups wait until no more items are
    left than worker threads (2 here), so they never come between two items
    of a busy worker. The items' results are unchanged."""
    import functools

    items = list(range(8))
    for batch in (1, 3):
        folder = tmp_path / f"batch{batch}"
        folder.mkdir()
        seen = []

        def ready(i):
            seen.append(i)
            return [("f", i)] if i % 2 == 0 else []

        out = run_in_waves(client, _item_time, items, name="test-then", batch=batch,
                           then=(functools.partial(_follow_up, folder=str(folder)), ready))
        assert [v for v, _ in out] == [2 * i for i in items]
        assert sorted(seen) == items
        ran = {p.name: float(p.read_text()) for p in folder.iterdir()}
        assert sorted(ran) == ["f-0", "f-2", "f-4", "f-6"]
        if batch == 1:
            # the straggler (item 7) still ran when the first follow-ups did
            assert min(ran.values()) < out[7][1] - 0.5
            # ... which waited until only 2 items were left: after the 6th item ended
            assert min(ran.values()) >= sorted(t for _, t in out)[5]
    # many follow-ups: they go out in tasks of 8 while items still wait, not all at the end
    from distributed import get_task_stream

    folder = tmp_path / "many"
    folder.mkdir()
    with get_task_stream(client) as ts:
        out = run_in_waves(client, _item_time, list(range(40)), name="test-many",
                           then=(functools.partial(_follow_up, folder=str(folder)), lambda i: [("g", i)]))
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"g-{i}" for i in range(40))
    starts = sorted(s["start"] for t in ts.data if str(t["key"]).startswith("rs-then-test-many")
                    for s in t["startstops"] if s["action"] == "compute")
    assert len(starts) >= 3  # at least two early tasks of 8 and the tail's
    assert starts[0] < sorted(t for _, t in out)[20]  # the first before half the items had ended
    with pytest.raises(ValueError, match="follow-up 3 is broken"):
        run_in_waves(client, _item_time, [1, 2, 3], name="test-then",
                     then=(functools.partial(_follow_up, folder=str(tmp_path)), lambda i: [("bad", i)] if i == 3 else []))


def test_run_in_waves_bounds_the_tasks_in_flight_and_keeps_order(client):
    counting = _CountingClient(client)
    items = [i for i in range(60) if i != 13]
    out = run_in_waves(counting, _slow_double, items, name="test-waves", width=6)
    assert out == [2 * i for i in items]
    assert counting.max_in_flight <= 6 and len(counting.batches) > 59 // 6
    assert run_in_waves(client, _slow_double, [], name="test-waves") == []
    # a failing task: its own error, raised after the others in flight are cancelled
    with pytest.raises(ValueError, match="block 13 is broken"):
        run_in_waves(client, _slow_double, list(range(40)), name="test-waves", width=4)
    # nothing of the failed call is left on the scheduler
    import time

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        left = client.run_on_scheduler(lambda dask_scheduler: [k for k in dask_scheduler.tasks
                                                               if str(k).startswith("rs-test-waves")])
        if not left:
            break
        time.sleep(0.1)
    assert not left


def _phase_item(item, *, phase, folder, seconds=0.05):
    """A phase's item: runs ``seconds``, leaves a file with when it started and ended and where."""
    import time

    from distributed import get_worker

    if item == "bad":
        raise ValueError(f"phase {phase} is broken")
    t0 = time.time()
    time.sleep(seconds)
    Path(folder, f"{phase}-{item}").write_text(repr((t0, time.time(), get_worker().address)))
    return (phase, item)


def test_run_in_phases_chains_phases_on_the_scheduler(client, tmp_path):
    """Each phase starts only once the phases it waits for have ended, and a
    phase waiting for nothing runs beside them; a waiting phase's tasks are
    spread over the workers (not all on the one holding what they wait for);
    results come back per phase in item order, batched or not; a phase too
    large for one wave goes through waves, in order; an error stops the run
    before the phases after it, and a phase may wait only for earlier ones.
    Many tasks after many wait for one barrier task instead of each for all."""
    import functools


    def phase(name, items, *after, seconds=0.05, folder=tmp_path):
        func = functools.partial(_phase_item, phase=name, folder=str(folder), seconds=seconds)
        return (name, func, items, *after)

    def ran(folder=tmp_path):
        out = {}
        for p in folder.iterdir():
            t0, t1, where = eval(p.read_text())  # noqa: S307 - the test's own files
            out[p.name] = (t0, t1, where)
        return out

    from distributed import get_task_stream

    phases = [phase("a", list(range(6))), phase("b", [0]), phase("empty", []), phase("c", list(range(4))),
              phase("side", [0], (), seconds=0.3), phase("d", list(range(6)), ("c", "side"), seconds=0.01)]
    with get_task_stream(client) as ts:
        results, seconds = run_in_phases(client, phases, batch=1)
    # many tasks after many ("d": 6 after "c" and "side", 5) wait for one barrier task; none
    # elsewhere ("c": 4 after 1, "b": 1 after 6)
    assert [str(t["key"]).split("-")[1] for t in ts.data if str(t["key"]).endswith("-barrier")] == ["d"]
    assert results == [[("a", i) for i in range(6)], [("b", 0)], [], [("c", i) for i in range(4)],
                       [("side", 0)], [("d", i) for i in range(6)]]
    assert set(seconds) == {"a", "b", "empty", "c", "side", "d"} and seconds["empty"] == 0
    t = ran()

    def span(name):
        mine = [v for k, v in t.items() if k.startswith(f"{name}-")]
        return min(v[0] for v in mine), max(v[1] for v in mine), {v[2] for v in mine}

    assert span("b")[0] >= span("a")[1]
    assert span("c")[0] >= span("b")[1]  # "empty" passed on what it waited for
    assert span("d")[0] >= max(span("c")[1], span("side")[1])
    assert span("side")[0] < span("b")[0]  # waited for nothing: ran beside "a"
    assert len(span("c")[2]) == 2  # 4 tasks after one: spread over both workers
    # batched: the same results
    results, _ = run_in_phases(client, [phase("e", list(range(7)), folder=tmp_path),
                                        phase("f", list(range(5)), folder=tmp_path)], batch=3)
    assert results == [[("e", i) for i in range(7)], [("f", i) for i in range(5)]]
    t = ran()
    assert span("f")[0] >= span("e")[1]
    # more tasks than one wave: phase by phase through run_in_waves
    waves = tmp_path / "waves"
    waves.mkdir()
    results, _ = run_in_phases(client, [phase("g", list(range(9)), folder=waves, seconds=0.01),
                                        phase("h", list(range(3)), folder=waves, seconds=0.01)], batch=1, width=4)
    assert results == [[("g", i) for i in range(9)], [("h", i) for i in range(3)]]
    t = ran(waves)
    assert span("h")[0] >= span("g")[1]
    # an error: raised, and no phase waiting for it runs
    broken = tmp_path / "broken"
    broken.mkdir()
    with pytest.raises(ValueError, match="phase x is broken"):
        run_in_phases(client, [phase("x", [0, "bad"], folder=broken), phase("y", [0], folder=broken)])
    assert not (broken / "y-0").exists()
    with pytest.raises(ConfigError, match="'z'.*not phases before it"):
        run_in_phases(client, [phase("a", [0]), phase("b", [0], ("z",))])


def test_chained_phases_show_one_bar_with_a_label(client, capsys):
    """Chained phases run at once: with ``label`` they show one bar over all their steps (a log's start and
    final line), without it one per phase."""
    phases = [("p1", _inc, [1, 2, 3]), ("p2", _inc, [4, 5]), ("p3", _inc, [])]
    results, _ = run_in_phases(client, phases, batch=1, progress=True, label="merge")
    assert results == [[2, 3, 4], [5, 6], []]
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "merge: started, 5 steps" and re.fullmatch(r"merge: 5/5 steps done in \d+\.\d s", lines[1])
    assert len(lines) == 2
    run_in_phases(client, phases, batch=1, progress=True)
    shown = capsys.readouterr().err
    assert "p1: 3/3 blocks done" in shown and "p2: 2/2 blocks done" in shown and "merge" not in shown


def _fails_on_three(x):
    """Fails on 3, after a moment, as the others take: the phases after are still waiting when it fails."""
    import time

    time.sleep(0.2)
    if x == 3:
        raise ValueError("boom")
    return x


def test_a_failed_chain_is_cancelled_without_a_scheduler_error(client):
    """A phase fails while later phases wait through barrier tasks: every task is cancelled, barriers
    included (held by the client), so the scheduler's forced cancel never meets a task no client wants,
    which it logs as an AssertionError traceback."""
    import logging

    seen = []
    handler = logging.Handler(level=logging.ERROR)
    handler.emit = seen.append
    logger = logging.getLogger("distributed")
    logger.addHandler(handler)
    try:
        phases = [("a", _fails_on_three, list(range(8))), ("b", _inc, list(range(8))), ("c", _inc, list(range(8)))]
        with pytest.raises(ValueError, match="boom"):
            run_in_phases(client, phases, batch=1)
        wait_until_idle(client)  # the scheduler has handled the cancel: none of the run's tasks left
    finally:
        logger.removeHandler(handler)
    assert not [r for r in seen if "who_wants" in (r.exc_text or "") or r.exc_info], [r.getMessage() for r in seen]


def _inc(x):
    return x + 1


def test_threads_of_and_compute(client):
    import dask.array as da
    import numpy as np

    assert threads_of({}) == 1  # no workers known yet: still a positive count
    assert threads_of({"a": {"nthreads": 2}, "b": {"nthreads": 3}, "c": {}}) == 6
    assert threads_of(client.scheduler_info()["workers"]) == 2
    x = da.arange(10, chunks=3).map_blocks(_inc)
    expected = np.arange(1, 11)
    np.testing.assert_array_equal(compute(x, None), expected)  # dask's default scheduler
    np.testing.assert_array_equal(compute(x, client, optimize_graph=False), expected)


def test_batch_must_be_a_positive_integer_or_auto(client):
    for bad in (0, -1, 1.5, True, "many"):
        with pytest.raises(ConfigError, match="batch"):
            run_in_waves(client, _inc, [1], name="test-bad-batch", batch=bad)
        with pytest.raises(ConfigError, match="batch"):
            run_in_phases(client, [("p", _inc, [1])], batch=bad)
    # chained phases are submitted at once: nothing measured before their tasks are made
    with pytest.raises(ConfigError, match="run_in_waves, not run_in_phases"):
        run_in_phases(client, [("p", _inc, [1])], batch="adaptive")


def test_a_failing_follow_up_leaves_nothing_on_the_scheduler(client, tmp_path):
    """The error of a follow-up is raised, and every task of the call still
    in flight (items and follow-ups) is cancelled."""
    import functools
    import time

    with pytest.raises(ValueError, match=r"follow-up \d+ is broken"):
        run_in_waves(client, _item_time, list(range(12)), name="test-then-cancel", width=4,
                     then=(functools.partial(_follow_up, folder=str(tmp_path)), lambda i: [("bad", i)]))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        left = client.run_on_scheduler(lambda dask_scheduler: [k for k in dask_scheduler.tasks
                                                               if "test-then-cancel" in str(k)])
        if not left:
            break
        time.sleep(0.1)
    assert not left


def test_on_a_worker_runs_there_and_returns_or_raises(client):
    """The driver hands one call to a worker process (labels.tif on a store): its result, or its error."""
    import os

    from remote_samsing.execute import on_a_worker

    pid = on_a_worker(client, os.getpid)
    assert pid != os.getpid() and pid in set(client.run(os.getpid).values())
    assert on_a_worker(client, divmod, 7, 2) == (3, 1)
    with pytest.raises(ZeroDivisionError):
        on_a_worker(client, divmod, 1, 0)


def test_on_every_worker_runs_in_each_worker_process_and_never_raises(client):
    """Housekeeping on every worker (a store mosaic's kept chunks dropped after the segment step)."""
    import os

    from remote_samsing.execute import on_every_worker

    client.run(lambda: os.environ.__setitem__("RS_TEST_EVERY_WORKER", "1"))
    on_every_worker(client, lambda: os.environ.pop("RS_TEST_EVERY_WORKER", None))
    assert set(client.run(lambda: os.environ.get("RS_TEST_EVERY_WORKER")).values()) == {None}
    on_every_worker(client, lambda: 1 / 0)  # a worker's failure is not the run's
