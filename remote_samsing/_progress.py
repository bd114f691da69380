"""Progress that fits where it is shown.

On a terminal a one-line bar is redrawn in place; in a notebook a notebook
bar (tqdm's) is drawn; anywhere else (a SLURM output file, CI, ``nohup``) a
bar would leave one line per redraw, so the stage prints a line when it
starts, a line at most every :data:`LOG_INTERVAL_S` seconds with done/total
and the rate, and one final line.

Progress inside a task
----------------------
A block of SAM2 on a CPU takes minutes per pass, so a bar of blocks alone
would stand still. A segmenter reports each pass with :func:`report_pass`
where it runs: one line to the ``remote_samsing.progress`` logger and, in a
Dask worker, one event on :data:`PASS_TOPIC` (``Worker.log_event``). The
client hears those events while it waits for the blocks
(:func:`report_passes`): in a log each pass is one line, on a terminal it
rides on the bar, and after the first pass on a CPU one line estimates the
whole stage and names faster preview settings.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

__all__ = ["Progress", "track", "compute_tracked", "DaskProgress", "counted", "in_notebook", "LOG_INTERVAL_S",
           "PASS_TOPIC", "PassReporter", "format_pass", "report_pass", "report_passes"]

#: Dask event topic of the passes a segmenter reports from a worker (:func:`report_pass`).
PASS_TOPIC = "remote-samsing-pass"
#: Logger of the per-pass lines where a segmenter runs (INFO; no handler of its own).
logger = logging.getLogger("remote_samsing.progress")

#: Seconds between two progress lines in a log file.
LOG_INTERVAL_S = 30.0
#: Seconds between two redraws of a terminal bar.
_REDRAW_S = 0.2


def counted(n: int, unit: str) -> str:
    """``n`` and ``unit`` (a plural ending in "s"), singular for one.

    >>> counted(1, "blocks"), counted(0, "blocks"), counted(48, "blocks")
    ('1 block', '0 blocks', '48 blocks')
    """
    return f"{n} {unit[:-1] if n == 1 and unit.endswith('s') else unit}"


def in_notebook() -> bool:
    """True inside a Jupyter kernel."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None and hasattr(ipython, "get_ipython") else None
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def _mode(stream) -> str:
    if in_notebook():
        return "notebook"
    try:
        return "terminal" if stream.isatty() else "log"
    except (AttributeError, ValueError):  # a closed or bare stream
        return "log"


class Progress:
    """done/total of one stage, shown as :mod:`remote_samsing._progress` describes.

    Call :meth:`update` as often as wanted (each state is shown at most
    once, the final one exactly once); use as a context manager, or call
    :meth:`close`, so a stage that stops early says where it stopped.

    Parameters
    ----------
    label : str
        The stage's name.
    total : int
    enabled : bool
        False shows nothing.
    unit : str
    stream : file, optional
        Default ``sys.stderr``.
    """

    def __init__(self, label: str, total: int, *, enabled: bool = True, unit: str = "blocks", stream=None):
        self.label, self.total, self.unit = label, int(total), unit
        self.stream = stream if stream is not None else sys.stderr
        self.mode = _mode(self.stream) if enabled else "off"
        self.done = 0
        self._t0 = self._last = time.monotonic()
        self._finished = self.mode == "off"
        self._bar = None
        self._note = ""  # a fact about the work in progress, shown on the terminal's bar
        self._started = self.mode != "log"  # the log's start line comes with the first update
        if self.mode == "notebook":
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.total, desc=label, unit=unit)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _line(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def update(self, done: int) -> None:
        """Show ``done`` of ``total`` (the final state once; others as the medium allows)."""
        if self._finished:
            return
        if not self._started:
            self._started = True
            self._last = time.monotonic()
            self._line(f"{self.label}: started, {counted(self.total, self.unit)}")
        self.done = int(done)
        now = time.monotonic()
        final = self.done >= self.total
        if self.mode == "terminal":
            if final or now - self._last >= _REDRAW_S:
                self._draw(final=final)
                self._last = now
        elif self.mode == "notebook":
            self._bar.n = self.done
            self._bar.refresh()
            if final:
                self._bar.close()
        elif final:
            self._line(f"{self.label}: {self.done}/{counted(self.total, self.unit)} done in {now - self._t0:.1f} s")
        elif now - self._last >= LOG_INTERVAL_S:
            rate = self.done / max(now - self._t0, 1e-9)
            self._line(f"{self.label}: {self.done}/{counted(self.total, self.unit)} ({rate:.2f}/s)")
            self._last = now
        self._finished = final

    def advance(self, n: int = 1) -> None:
        self.update(self.done + n)

    def _draw(self, *, final: bool = False) -> None:
        fill = int(30 * self.done / max(self.total, 1))
        note = f"  {self._note}" if self._note and not final else ""
        clear = "\x1b[K" if self._note else ""  # what a longer note left on the line
        print(f"\r{self.label:<10} [{'#' * fill}{'.' * (30 - fill)}] {self.done}/{self.total}{note}{clear}",
              end="\n" if final else "", file=self.stream, flush=True)

    def note(self, text: str) -> None:
        """A fact about the work in progress: it rides on a terminal's or notebook's bar, and is a line
        in a log. Called from any thread (Dask calls event handlers on its own); a redraw may interleave."""
        if self._finished:
            return
        if self.mode == "terminal":
            self._note = text
            self._draw()
        elif self.mode == "notebook":
            self._bar.set_postfix_str(text)
        elif self.mode == "log":
            self._line(f"{self.label}: {text}")

    def say(self, text: str) -> None:
        """One line, shown wherever progress is (above a terminal's bar, which is redrawn under it)."""
        if self.mode == "off":
            return
        if self.mode == "terminal":
            print(f"\r{text}\x1b[K", file=self.stream, flush=True)
            if not self._finished:
                self._draw()
        elif self.mode == "notebook":
            self._bar.write(text)
        else:
            self._line(text)

    def close(self) -> None:
        """End the stage; one that did not reach its total says where it stopped."""
        if self._finished:
            return
        self._finished = True
        if self.mode == "terminal":
            print(file=self.stream, flush=True)
        elif self.mode == "notebook":
            self._bar.close()
        elif self.mode == "log" and self._started:
            self._line(f"{self.label}: stopped at {self.done}/{counted(self.total, self.unit)}")


def format_pass(event: Mapping[str, Any]) -> str:
    """One pass of a block as one line (``pass`` counts from 1 here, from 0 in run.json).

    >>> format_pass({"block": [0, 1], "pass": 1, "prompts": 256, "accepted": 12, "coverage": 45.04,
    ...              "seconds": 148.2})
    'block (0, 1) pass 2: 256 prompts, 12 masks accepted, coverage 45.0 %, 148.2 s'
    """
    block = event.get("block")
    where = f"block ({', '.join(str(v) for v in block)}) " if block is not None else ""
    return (f"{where}pass {int(event['pass']) + 1}: {event['prompts']} prompts, "
            f"{counted(int(event['accepted']), 'masks')} accepted, coverage {float(event['coverage']):.1f} %, "
            f"{float(event['seconds']):.1f} s")


def report_pass(event: Mapping[str, Any]) -> None:
    """Report one pass of a segmenter: a line to :data:`logger` and, in a Dask worker, an event to the
    client (:func:`report_passes`). ``event``: ``block``, ``pass``, ``prompts``, ``accepted``,
    ``coverage``, ``seconds``, and optionally ``device`` and ``preview`` (faster settings, as flags)."""
    logger.info(format_pass(event))
    worker = _current_worker()
    if worker is not None:
        worker.log_event(PASS_TOPIC, dict(event))


def _current_worker():
    """The Dask worker running this task, or None (distributed is not imported for it)."""
    if "distributed" not in sys.modules:
        return None
    from distributed import get_worker

    try:
        return get_worker()
    except ValueError:  # not in a worker's task
        return None


def _duration(seconds: float) -> str:
    """
    >>> _duration(23), _duration(95), _duration(3 * 3600 + 600)
    ('~23 s', '~2 min', '~3.2 h')
    """
    if seconds < 60:
        return f"~{seconds:.0f} s"
    return f"~{seconds / 3600:.1f} h" if seconds >= 3600 else f"~{round(seconds / 60)} min"


class PassReporter:
    """The client's side of :func:`report_pass`: each pass as a note on ``bar``; after the first pass on
    a CPU, one line estimating the stage (``blocks`` blocks on ``workers`` parallel workers)."""

    def __init__(self, bar: Progress, *, blocks: int, workers: int):
        self.bar, self.blocks, self.workers = bar, int(blocks), max(1, int(workers))
        self.estimated = False

    def __call__(self, event: Mapping[str, Any]) -> None:
        self.bar.note(format_pass(event))
        if not self.estimated and event.get("device") == "cpu":
            self.estimated = True
            self.bar.say(self.estimate(event))

    def estimate(self, event: Mapping[str, Any]) -> str:
        """The line after the first pass on a CPU: a lower bound, since a block takes one pass or more."""
        seconds = float(event["seconds"])
        total = seconds * math.ceil(self.blocks / self.workers)  # blocks run in rounds of `workers`
        line = (f"SAM2 on CPU: ~{seconds:.0f} s per pass per block -> at least {_duration(total)} for "
                f"{counted(self.blocks, 'blocks')} on {counted(self.workers, 'workers')} (a block takes one pass "
                "or more)")
        preview = event.get("preview")
        return f"{line}; for a preview try {preview}" if preview else line


@contextlib.contextmanager
def report_passes(client, bar: Progress, *, blocks: int, workers: int) -> Iterator[PassReporter | None]:
    """While inside, the passes that tasks on ``client`` report (:func:`report_pass`) go to ``bar``."""
    if client is None or bar.mode == "off":
        yield None
        return
    reporter = PassReporter(bar, blocks=blocks, workers=workers)
    client.subscribe_topic(PASS_TOPIC, lambda event: reporter(event[1]))  # event: (timestamp, msg)
    try:
        yield reporter
    finally:
        client.unsubscribe_topic(PASS_TOPIC)


def track(items: Iterable, label: str, *, total: int | None = None, enabled: bool = True,
          unit: str = "items") -> Iterator:
    """Iterate ``items`` with a :class:`Progress` over them."""
    if total is None:
        total = len(items)  # type: ignore[arg-type]
    with Progress(label, total, enabled=enabled, unit=unit) as bar:
        for item in items:
            yield item
            bar.advance()


def DaskProgress(label: str, *, enabled: bool = True):  # noqa: N802 - used like a class
    """A dask local-scheduler callback (``with DaskProgress("zarr"): dask.compute(...)``) that shows the
    graph's finished tasks as a :class:`Progress`."""
    from dask.callbacks import Callback

    class _Callback(Callback):
        def __init__(self):
            super().__init__()
            self.bar = None

        def _start_state(self, dsk, state):
            total = sum(len(state[k]) for k in ("ready", "waiting", "running", "finished"))
            self.bar = Progress(label, total, enabled=enabled, unit="tasks")

        def _posttask(self, key, result, dsk, state, worker_id):
            self.bar.update(len(state["finished"]))

        def _finish(self, dsk, state, errored):
            if self.bar is not None:
                self.bar.close()

    return _Callback()


def compute_tracked(tasks: list, *, label: str, enabled: bool = True) -> list:
    """``dask.compute(*tasks)`` as a list, showing how many of ``tasks`` finished: on the current
    distributed client when there is one, else on dask's local scheduler."""
    import dask

    if not enabled or not tasks:
        return list(dask.compute(*tasks))
    try:
        from distributed import Client, as_completed

        client = Client.current()
    except (ImportError, ValueError):
        with DaskProgress(label):
            return list(dask.compute(*tasks))
    futures = client.compute(tasks)
    with Progress(label, len(futures), unit="tasks") as bar:
        for _ in as_completed(futures):
            bar.advance()
    return client.gather(futures)
