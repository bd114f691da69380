"""Progress that fits where it is shown: lines in a log file, a redrawn bar on a terminal."""

from __future__ import annotations

import io

import pytest

from remote_samsing import _progress
from remote_samsing._progress import LOG_INTERVAL_S, Progress, compute_tracked, track


class _Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    c = _Clock()
    monkeypatch.setattr(_progress.time, "monotonic", c)
    return c


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_log_file_gets_a_start_line_a_line_per_interval_and_one_final_line(clock):
    out = io.StringIO()
    bar = Progress("segment", 100, stream=out)
    assert out.getvalue() == ""  # nothing before the stage's first update
    for done in range(0, 101):
        clock.now += 1.0  # a block a second: 100 s in all
        bar.update(done)
        bar.update(done)  # repeated states print nothing
    bar.update(100)
    bar.close()
    lines = out.getvalue().splitlines()
    assert lines[0] == "segment: started, 100 blocks"
    assert lines[-1] == "segment: 100/100 blocks done in 101.0 s"  # timed from the stage's creation
    middle = lines[1:-1]
    assert len(middle) == 100 // int(LOG_INTERVAL_S)  # one line every 30 s
    assert middle[0] == "segment: 30/100 blocks (0.97/s)"  # 30 blocks in the 31 s since the stage began
    assert "\r" not in out.getvalue()


def test_a_stage_that_stops_early_says_where(clock):
    out = io.StringIO()
    with pytest.raises(RuntimeError):
        with Progress("merge-faces", 8, stream=out, unit="blocks") as bar:
            bar.update(3)
            raise RuntimeError("a block failed")
    assert out.getvalue().splitlines() == ["merge-faces: started, 8 blocks", "merge-faces: stopped at 3/8 blocks"]


def test_one_block_reads_one_block(clock):
    out = io.StringIO()
    with Progress("merge-solve", 1, stream=out) as bar:
        bar.update(1)
    with Progress("dissolve", 1, stream=out, unit="tasks"):
        pass
    assert out.getvalue().splitlines() == ["merge-solve: started, 1 block", "merge-solve: 1/1 block done in 0.0 s"]
    assert _progress.counted(1, "tasks") == "1 task" and _progress.counted(0, "tasks") == "0 tasks"


def test_a_terminal_gets_one_bar_redrawn_in_place(clock):
    out = _Terminal()
    bar = Progress("segment", 4, stream=out)
    for done in range(5):
        clock.now += 1.0
        bar.update(done)
    bar.update(4)
    text = out.getvalue()
    assert text.count("\n") == 1 and text.endswith("4/4\n") and text.count("\r") == 5


def test_disabled_shows_nothing_and_track_yields_every_item(clock):
    out = io.StringIO()
    bar = Progress("x", 3, enabled=False, stream=out)
    bar.update(3)
    bar.close()
    assert out.getvalue() == ""
    assert list(track(range(5), "objects", enabled=False)) == list(range(5))


def test_compute_tracked_returns_results_in_order_without_a_client(capsys):
    import dask

    tasks = [dask.delayed(lambda i: i * i)(i) for i in range(6)]
    assert compute_tracked(tasks, label="squares") == [i * i for i in range(6)]
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("squares: started") and err[-1].startswith("squares: ") and "done in" in err[-1]
    assert len(err) == 2


def test_a_notebook_gets_a_notebook_bar_and_run_prints_its_messages(monkeypatch):
    """Inside a Jupyter kernel (an IPython shell named ZMQInteractiveShell) a stage draws tqdm's notebook
    bar, and ``run`` prints its one-line messages (the embedded cluster's dashboard link among them)."""
    import sys
    import types

    from remote_samsing.pipeline import _default_log

    class ZMQInteractiveShell:
        pass

    fake = types.ModuleType("IPython")
    fake.get_ipython = lambda: ZMQInteractiveShell()
    assert _default_log() is not print  # outside a notebook: messages go nowhere
    monkeypatch.setitem(sys.modules, "IPython", fake)
    assert _progress.in_notebook() and _default_log() is print
    bar = Progress("segment", 3, stream=io.StringIO())
    assert bar.mode == "notebook"
    bar.update(3)
    assert bar._bar.n == 3


# ---------------------------------------------------------------------------
# passes inside a block: a line each in a log, on the bar on a terminal, one estimate on a CPU
# ---------------------------------------------------------------------------
def _pass(block=(0, 1), n=0, seconds=148.2, device="cuda", preview=""):
    return {"block": list(block), "pass": n, "prompts": 4096, "accepted": 12, "coverage": 45.04,
            "seconds": seconds, "device": device, "preview": preview}


def test_a_pass_is_a_line_in_a_log_and_rides_on_a_terminal_bar(clock):
    out = io.StringIO()
    bar = Progress("segment-stage", 4, stream=out)
    bar.update(0)
    reporter = _progress.PassReporter(bar, blocks=4, workers=2)
    reporter(_pass(n=0))
    reporter(_pass(n=1))
    assert out.getvalue().splitlines()[1:] == [
        "segment-stage: block (0, 1) pass 1: 4096 prompts, 12 masks accepted, coverage 45.0 %, 148.2 s",
        "segment-stage: block (0, 1) pass 2: 4096 prompts, 12 masks accepted, coverage 45.0 %, 148.2 s",
    ]  # no estimate off the CPU
    term = _Terminal()
    bar = Progress("segment-stage", 4, stream=term)
    bar.update(0)
    _progress.PassReporter(bar, blocks=4, workers=2)(_pass(n=2))
    assert term.getvalue().endswith("0/4  block (0, 1) pass 3: 4096 prompts, 12 masks accepted, coverage 45.0 %, "
                                    "148.2 s\x1b[K") and "\n" not in term.getvalue()
    bar.update(4)
    assert term.getvalue().endswith("4/4\x1b[K\n")  # the final bar drops the note


def test_the_first_pass_on_a_cpu_estimates_the_stage_once(clock):
    out = io.StringIO()
    bar = Progress("segment-stage", 96, stream=out)
    bar.update(0)
    reporter = _progress.PassReporter(bar, blocks=96, workers=2)
    preview = "--segmenter-param image_size=256 --segmenter-param points_per_side=16"
    reporter(_pass(seconds=150.0, device="cpu", preview=preview))
    reporter(_pass(n=1, seconds=90.0, device="cpu", preview=preview))
    lines = out.getvalue().splitlines()
    assert lines[2] == ("SAM2 on CPU: ~150 s per pass per block -> at least ~2.0 h for 96 blocks on 2 workers "
                        f"(a block takes one pass or more); for a preview try {preview}")
    assert len(lines) == 4 and sum("SAM2 on CPU" in line for line in lines) == 1
    term = _Terminal()
    bar = Progress("segment-stage", 1, stream=term)
    bar.update(0)
    _progress.PassReporter(bar, blocks=1, workers=1)(_pass(seconds=61.0, device="cpu"))
    assert "\rSAM2 on CPU: ~61 s per pass per block -> at least ~1 min for 1 block on 1 worker " \
           "(a block takes one pass or more)\x1b[K\n\r" in term.getvalue()  # a line above, the bar redrawn


def _reports_a_pass(i):
    import time

    _progress.report_pass(_pass(block=(i, 0), device="cpu"))
    time.sleep(0.3)  # a block's work goes on after a pass; the event is not raced against the result
    return i


def test_passes_reported_on_workers_reach_the_client(client, capsys, caplog):
    """A pass reported in a worker process (Worker.log_event) comes out on the client, in run_in_waves."""
    from remote_samsing.execute import run_in_waves

    assert run_in_waves(client, _reports_a_pass, [0, 1], name="segment-stage", progress=True) == [0, 1]
    err = capsys.readouterr().err.splitlines()
    assert sum(line.startswith("segment-stage: block (") and " pass 1: 4096 prompts" in line for line in err) == 2
    assert sum(line.startswith("SAM2 on CPU: ~148 s per pass per block") for line in err) == 1, err
    # in the client's own process the same call is a line to the progress logger
    with caplog.at_level("INFO", logger="remote_samsing.progress"):
        _progress.report_pass(_pass(block=(3, 4)))
    assert caplog.messages == ["block (3, 4) pass 1: 4096 prompts, 12 masks accepted, coverage 45.0 %, 148.2 s"]
