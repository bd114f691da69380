"""Helpers the test modules import: synthetic images, and label-store writers built on the public
:mod:`remote_samsing.outputs` API (test modules import from here, never from ``conftest``: a plain
``pytest`` loads two conftest modules, and ``conftest`` names whichever came last).

The pipeline writes its label store block by block through a
:class:`~remote_samsing.outputs.LabelSink`; these helpers do the same from a
whole (y, x) label array, so tests can make stores directly.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import xarray as xr

from remote_samsing.outputs import LabelSink, plan_label_store
from remote_samsing.tiling import Window


def blob_image(shape, *, n=20, max_size=6, seed=0, dtype=np.uint8):
    """Grey image with bright rectangles no larger than ``max_size`` on dark ground."""
    rng = np.random.default_rng(seed)
    img = np.full(shape, 20, dtype=dtype)
    for _ in range(n):
        h, w = rng.integers(1, max_size + 1, size=2)
        y, x = rng.integers(0, shape[0]), rng.integers(0, shape[1])
        img[y : y + h, x : x + w] = 220
    return img


def open_label_store(labels: xr.DataArray, path: str | os.PathLike) -> LabelSink:
    """Create a label store at ``<path>.partial`` (see :func:`plan_label_store`) and return its sink."""
    sink, create = plan_label_store(labels, path)
    create()
    return sink


def to_label_zarr(labels: xr.DataArray, path: str | os.PathLike) -> Path:
    """Write a chunked (y, x) label DataArray to ``path`` chunk by chunk, then commit it."""
    sink = open_label_store(labels, path)
    values = np.asarray(labels)
    ys = np.cumsum((0,) + tuple(labels.chunks[0]))
    xs = np.cumsum((0,) + tuple(labels.chunks[1]))
    for y0, y1 in zip(ys[:-1], ys[1:]):
        for x0, x1 in zip(xs[:-1], xs[1:]):
            sink(values[y0:y1, x0:x1], Window(int(y0), int(y1), int(x0), int(x1)))
    return sink.commit()


def _tasks_to_run(dask_scheduler=None) -> int:
    return sum(ts.state in ("waiting", "queued", "processing", "no-worker") for ts in dask_scheduler.tasks.values())


def wait_until_idle(client, *, timeout: float = 60.0) -> None:
    """Wait until the scheduler has no task to run: tasks of an earlier test's run that failed may still be
    running (a cancel cannot stop a task already on a worker), and a test that records the task stream must
    not count them. Polls a condition; fails if it never holds."""
    import time

    deadline = time.monotonic() + timeout
    while client.run_on_scheduler(_tasks_to_run) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not client.run_on_scheduler(_tasks_to_run), "the scheduler still runs tasks of an earlier test"
