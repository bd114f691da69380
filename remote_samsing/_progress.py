"""Progress that fits where it is shown.

On a terminal a one-line bar is redrawn in place; in a notebook a notebook
bar (tqdm's) is drawn; anywhere else (a SLURM output file, CI, ``nohup``) a
bar would leave one line per redraw, so the stage prints a line when it
starts, a line at most every :data:`LOG_INTERVAL_S` seconds with done/total
and the rate, and one final line.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator

__all__ = ["Progress", "track", "compute_tracked", "DaskProgress", "counted", "in_notebook", "LOG_INTERVAL_S"]

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
                fill = int(30 * self.done / max(self.total, 1))
                print(f"\r{self.label:<10} [{'#' * fill}{'.' * (30 - fill)}] {self.done}/{self.total}",
                      end="\n" if final else "", file=self.stream, flush=True)
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
