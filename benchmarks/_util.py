"""Shared benchmark helpers: peak RSS of a process tree, timing, machine info."""

from __future__ import annotations

import os
import platform
import threading
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: real scenes the benchmarks share: a 2048² aerial RGB crop from ../shared/data
#: (absent in a fresh clone elsewhere) and the small NEON scene committed in tests/data
OAM_TCD = ROOT.parent / "shared" / "data" / "oam-tcd" / "5b90f92da0d7280005fab355_4310.tif"
NEON_OSBS = ROOT / "tests" / "data" / "neon_osbs.tif"


class PeakRSS:
    """Samples the summed RSS of this process and all its children (workers included)."""

    def __init__(self, interval: float = 0.05):
        import psutil

        self._proc = psutil.Process(os.getpid())
        self.interval = interval
        self.peak = 0
        #: peak RSS (bytes) of each process seen, by pid (this one is ``os.getpid()``)
        self.per_process: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> int:
        import psutil

        total = 0
        try:
            procs = [self._proc] + self._proc.children(recursive=True)
        except psutil.Error:
            return 0
        for p in procs:
            try:
                rss = p.memory_info().rss
            except psutil.Error:
                continue
            total += rss
            self.per_process[p.pid] = max(self.per_process.get(p.pid, 0), rss)
        return total

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._sample())
            time.sleep(self.interval)

    def __enter__(self):
        self.baseline = self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._sample())
        return False

    @property
    def peak_mb(self) -> float:
        return self.peak / 2**20

    def peaks_mb(self) -> dict[str, float]:
        """Peak RSS (MB) of this process ("main": client and, for a LocalCluster, scheduler) and
        of the largest child (a worker or nanny)."""
        me = self.per_process.get(self._proc.pid, 0)
        children = [v for k, v in self.per_process.items() if k != self._proc.pid]
        return {"main": me / 2**20, "largest_child": max(children, default=0) / 2**20,
                "children": len(children)}


@contextmanager
def timer():
    out = {}
    t0 = time.perf_counter()
    yield out
    out["seconds"] = time.perf_counter() - t0


#: the current result of each benchmark on each machine, one file each
RESULTS = ROOT / "benchmarks" / "results"


def result_path(benchmark: str, machine: str | None = None) -> Path:
    """``benchmarks/results/<benchmark>-<machine>.json``, the recorded result's stable name.

    ``machine`` defaults to ``cpu-<cores>core``, this machine's; a GPU benchmark passes its GPU
    (``"h100"``). The name says only what was measured and where, so the README's table links the
    current result of each benchmark.

    >>> result_path("merge-versus-iou", "cpu-2core").name
    'merge-versus-iou-cpu-2core.json'
    """
    return RESULTS / f"{benchmark}-{machine or f'cpu-{os.cpu_count()}core'}.json"


def machine() -> dict:
    import psutil

    return {
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
    }


@contextmanager
def no_segment_expected():
    """A run whose labels are all 0 by design (the no-op segmenter, SAM2 with random weights) warns that it
    found nothing: the benchmark expects that, and does not say it."""
    import warnings

    from remote_samsing.exceptions import RemoteSamsingWarning

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="the (segmenter found no segment|merge removed every segment)",
                                category=RemoteSamsingWarning)
        yield
