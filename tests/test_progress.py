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
