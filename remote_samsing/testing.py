"""Helpers for tests and benchmarks: deterministic segmenters and label checks.

These segmenters are *not* image-understanding methods; they exist to test
the pipeline exactly (their output on a window is known in advance). They
are not in the segmenter registry: pass an instance, or call
:func:`register_test_segmenters` to reach them by name (``threshold``,
``noop``). That call also sets ``REMOTE_SAMSING_TEST_SEGMENTERS=1`` in the
environment, so that processes started afterwards (the CLI run in a
subprocess) find them by name too; ``tests/conftest.py`` makes the call.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._arrays import unique, unique_pairs
from ._validate import check_number

#: Registry names of the test segmenters (see :func:`register_test_segmenters`).
TEST_SEGMENTERS = {
    "threshold": "remote_samsing.testing:ThresholdSegmenter",
    "noop": "remote_samsing.testing:NoopSegmenter",
}
_ENV = "REMOTE_SAMSING_TEST_SEGMENTERS"


def register_test_segmenters() -> None:
    """Register :data:`TEST_SEGMENTERS` here and, through the environment, in child processes."""
    from .segmenters import register_segmenter

    os.environ[_ENV] = "1"
    for name, factory in TEST_SEGMENTERS.items():
        register_segmenter(name, factory)

__all__ = [
    "ThresholdSegmenter",
    "NoopSegmenter",
    "TEST_SEGMENTERS",
    "register_test_segmenters",
    "assert_equivalent_labels",
    "raise_if_dask_computes",
    "count_calls",
]


@dataclass(frozen=True, kw_only=True)
class ThresholdSegmenter:
    """4-connected components of ``grey > threshold``: a *local* segmenter.

    Its labels for a pixel depend only on the connected bright region that
    contains it, so a tiled run with padding larger than every object must
    equal the untiled run exactly (up to label permutation).

    Parameters
    ----------
    threshold : int
        Grey level (mean of RGB) above which a pixel is foreground.
    delay : float
        Seconds to sleep per call (to make runs interruptible in tests).
    log_dir : str, optional
        If set, every call writes one empty file there (counts calls across
        worker processes).
    fail_on : list of [iy, ix], optional
        Blocks on which ``segment`` raises (to test retries and failures).
    """

    threshold: int = 127
    delay: float = 0.0
    log_dir: str | None = None
    fail_on: tuple = ()

    def __post_init__(self) -> None:
        check_number("threshold", self.threshold, minimum=0, maximum=255)
        check_number("delay", self.delay, minimum=0)
        object.__setattr__(self, "fail_on", tuple(tuple(b) for b in self.fail_on))

    def segment(self, block: np.ndarray, *, block_info: Mapping[str, Any]) -> np.ndarray:
        from scipy import ndimage

        if self.log_dir:
            Path(self.log_dir).mkdir(parents=True, exist_ok=True)
            bid = block_info.get("block_id", ("x", "x"))
            (Path(self.log_dir) / f"{bid[0]}_{bid[1]}_{uuid.uuid4().hex}").touch()
        if self.delay:
            time.sleep(self.delay)
        if tuple(block_info.get("block_id", ())) in self.fail_on:
            raise RuntimeError(f"scripted failure on block {block_info.get('block_id')}")
        grey = block.astype(np.float32).mean(axis=2)
        labels, _ = ndimage.label(grey > self.threshold)
        return labels.astype(np.uint32)


@dataclass(frozen=True, kw_only=True)
class NoopSegmenter:
    """Returns no segments (all zeros): measures pipeline overhead."""

    def segment(self, block: np.ndarray, *, block_info: Mapping[str, Any]) -> np.ndarray:
        return np.zeros(block.shape[:2], np.uint32)


def assert_equivalent_labels(a: np.ndarray, b: np.ndarray) -> None:
    """Assert two label images are equal up to a permutation of non-zero labels.

    Zero must map to zero; every label of ``a`` maps to exactly one label of
    ``b`` and vice versa (the check dask-image uses in its label tests).
    """
    a = np.asarray(a)
    b = np.asarray(b)
    if a.shape != b.shape:
        raise AssertionError(f"shapes differ: {a.shape} vs {b.shape}")
    if not np.array_equal(a == 0, b == 0):
        raise AssertionError(f"background differs at {int(((a == 0) != (b == 0)).sum())} pixel(s)")
    pa, pb, _ = unique_pairs(a.ravel(), b.ravel())
    if len(unique(pa)) != len(pa) or len(unique(pb)) != len(pb):
        raise AssertionError("labels are not a one-to-one relabelling of each other")


@contextlib.contextmanager
def raise_if_dask_computes(max_computes: int = 0):
    """Fail if more than ``max_computes`` dask computations run inside the block.

    Idea from xarray's test helper of the same name
    (https://github.com/pydata/xarray/blob/main/xarray/tests/__init__.py).
    """
    import dask

    count = {"n": 0}

    def scheduler(dsk, keys, **kwargs):
        count["n"] += 1
        if count["n"] > max_computes:
            raise RuntimeError(f"too many dask computations: {count['n']} > {max_computes}")
        return dask.get(dsk, keys, **kwargs)

    with dask.config.set(scheduler=scheduler):
        yield count


def count_calls(log_dir: str | os.PathLike) -> int:
    """Number of segmenter calls logged by :class:`ThresholdSegmenter`."""
    p = Path(log_dir)
    return len(list(p.iterdir())) if p.exists() else 0
