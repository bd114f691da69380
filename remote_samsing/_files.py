"""Atomic file writes: a reader sees the old file or the whole new one, never half of one.

Every product and every piece of resume state is written under a temporary
name in the same folder and then renamed (``os.replace`` is atomic on POSIX
filesystems). The temporary names are unique per writer, so two tasks that
write the same file (a task run again after a lost worker) never interleave.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["temporary_name", "write_atomic", "write_json_atomic", "replace_path"]


def temporary_name(path: str | os.PathLike) -> Path:
    """A unique sibling of ``path`` to write to before renaming (``<stem>.<8 hex>.partial<suffix>``: the
    suffix stays last, since some writers, such as GDAL's GeoPackage driver, check it)."""
    p = Path(os.fspath(path))
    return p.with_name(f"{p.stem}.{uuid.uuid4().hex[:8]}.partial{p.suffix}")


def write_atomic(path: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp)`` on a temporary sibling of ``path``, then move it onto ``path``.

    The temporary file is removed if ``write`` raises.
    """
    p = Path(os.fspath(path))
    tmp = temporary_name(p)
    try:
        write(tmp)
        os.replace(tmp, p)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return p


def _json_default(obj):
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, tuple):
        return list(obj)
    return str(obj)


def write_json_atomic(path: str | os.PathLike, data: Any, *, indent: int | None = 2) -> Path:
    """Write ``data`` as JSON (numpy scalars and arrays as numbers and lists) atomically."""
    text = json.dumps(data, indent=indent, default=_json_default)
    return write_atomic(path, lambda tmp: tmp.write_text(text))


def replace_path(tmp: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Move a finished file or folder ``tmp`` onto ``out``, removing what ``out`` held."""
    out = Path(os.fspath(out))
    if out.is_dir() and not out.is_symlink():
        shutil.rmtree(out)
    elif out.exists():
        out.unlink()
    os.replace(tmp, out)
    return out
