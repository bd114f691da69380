"""Shared benchmark helpers: peak RSS of a process tree, timing, machine info."""

from __future__ import annotations

import os
import platform
import threading
import time
from contextlib import contextmanager


class PeakRSS:
    """Samples the summed RSS of this process and all its children (workers included)."""

    def __init__(self, interval: float = 0.05):
        import psutil

        self._proc = psutil.Process(os.getpid())
        self.interval = interval
        self.peak = 0
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
                total += p.memory_info().rss
            except psutil.Error:
                pass
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


@contextmanager
def timer():
    out = {}
    t0 = time.perf_counter()
    yield out
    out["seconds"] = time.perf_counter() - t0


def machine() -> dict:
    import psutil

    return {
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
    }
