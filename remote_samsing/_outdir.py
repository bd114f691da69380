"""A local OUTDIR that the cluster writes: the workers see it, and its filesystem has room.

* **Shared.** The workers write OUTDIR at the path the client gives them,
  so the path is made absolute here (a relative one means each worker's
  own working folder), and before any work one task checks that a worker
  sees the folder the client sees: the client writes a probe holding a
  random token, the task reads it back and answers with a probe of its
  own, and the client looks for that answer. A worker on a machine with its
  own disk at that path finds no probe, and writes nothing.
* **Writable.** :func:`check_local_writable` makes and removes a probe
  file there before any cluster starts.
* **Room.** :func:`estimate_bytes` says what a run writes (staging,
  labels.zarr, labels.tif, vectors); :func:`check_room` refuses, before any
  cluster starts, a filesystem with less free space than the run needs at
  the least. A disk that fills during the run anyway (``ENOSPC``) is said
  by :func:`disk_full_error` in one line, naming the device and its free
  space; staged blocks are kept, so the same command resumes.

Object stores need none of this: they are shared by nature and never full.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

from .exceptions import DiskFullError, OutputAccessError, OutputNotSharedError

__all__ = ["absolute", "check_local_writable", "check_shared", "check_room", "describe_estimate", "disk_full_error",
           "estimate_bytes", "find_disk_full", "format_size", "free_bytes", "probe_answer", "spill_bytes"]

#: Name prefix of the probes :func:`check_shared` writes in OUTDIR (and removes).
PROBE_PREFIX = ".remote-samsing-probe-"

#: errno values of a full filesystem or quota: expected failures, said in one line.
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})

#: What labels compress by, typically: zstd on uint32 labels gave 13-90x on the test scenes
#: (``tests/data``), busy SAM2 labels less; the estimate quoted to the user.
_TYPICAL_RATIO = 10
#: What they compress by at best: well above every ratio measured, so the least a run needs is not
#: overstated and a run that fits is not refused.
_BEST_RATIO = 256
#: Polygons per pixel of mosaic: 0.3-1.1 bytes on the test scenes, depending on how busy the labels are.
_VECTOR_BYTES_PER_PIXEL = 0.5

_HINT_SHARED = ("write to a folder every worker mounts at the same path (a shared filesystem), or to an object "
                "store (s3://..., gs://..., az://...)")


def absolute(outdir: Path) -> Path:
    """``outdir`` as an absolute path: the workers resolve a relative one in their own working folders."""
    return Path(os.path.abspath(outdir))


# ---------------------------------------------------------------------------
# the workers see OUTDIR
# ---------------------------------------------------------------------------
def check_shared(outdir: Path, client) -> None:
    """Raise unless a worker of ``client`` sees and writes the folder ``outdir`` this process sees.

    ``outdir`` is created if absent; when the check fails, what it created
    is removed again, so a refused run leaves nothing behind.

    Raises
    ------
    OutputNotSharedError
        The worker does not see the client's folder at that path.
    OutputAccessError
        The worker sees it but cannot write there.
    """
    from .execute import on_a_worker

    created = _make_folder(outdir)
    token = uuid.uuid4().hex
    asked, answer = outdir / f"{PROBE_PREFIX}{token}", outdir / f"{PROBE_PREFIX}{token}.answer"
    try:
        asked.write_text(token)
        worker, problem = on_a_worker(client, probe_answer, str(outdir), token)
        if problem is None and not answer.is_file():
            problem = "its answer never reached this machine's folder"
    finally:
        asked.unlink(missing_ok=True)
        answer.unlink(missing_ok=True)
    if problem is None:
        return
    if created is not None:
        shutil.rmtree(created, ignore_errors=True)
    if problem.startswith("cannot write"):
        raise OutputAccessError(f"worker {worker} {problem} in OUTDIR `{outdir}`",
                                hint="let the workers' user write there, or choose another OUTDIR")
    raise OutputNotSharedError(f"the cluster's workers do not see OUTDIR `{outdir}` as this machine does: "
                               f"worker {worker} {problem}", hint=_HINT_SHARED)


def probe_answer(outdir: str, token: str) -> tuple[str, str | None]:
    """Task: read the client's probe in ``outdir`` and answer beside it.

    Returns this worker's name and None, or what went wrong. Nothing is
    raised (a worker logs a raised error with its traceback) and nothing is
    written where the client's probe is not found.
    """
    worker = _worker_name()
    asked = Path(outdir) / f"{PROBE_PREFIX}{token}"
    try:
        seen = asked.read_text()
    except OSError:
        seen = None
    if seen != token:
        return worker, "finds nothing there of what this machine wrote"
    try:
        asked.with_name(asked.name + ".answer").write_text(worker)
    except OSError as exc:
        return worker, f"cannot write ({type(exc).__name__}: {exc.strerror or exc})"
    return worker, None


def _worker_name() -> str:
    import socket

    try:
        from distributed import get_worker

        return f"{get_worker().address} (host {socket.gethostname()})"
    except (ImportError, ValueError):  # not in a worker: a plain call
        return f"on host {socket.gethostname()}"


def _make_folder(outdir: Path) -> Path | None:
    """Create ``outdir`` (and its parents); returns the topmost folder created, or None if it existed."""
    missing = [p for p in (outdir, *outdir.parents) if not p.exists()]
    outdir.mkdir(parents=True, exist_ok=True)
    return missing[-1] if missing else None


# ---------------------------------------------------------------------------
# room on OUTDIR's filesystem
# ---------------------------------------------------------------------------
def estimate_bytes(plan, *, vectors: bool) -> dict[str, int]:
    """What a run of ``plan`` writes at its peak, typically, by product, with ``total`` and ``least``.

    Rasters are uint32 labels compressed about ``_TYPICAL_RATIO`` times;
    the merge's working files (``merge``, :func:`spill_bytes`, gone once the
    run ends) sit beside them while the labels are merged. ``least`` is what
    the run writes at the least: its rasters compressed better than labels
    were ever seen to compress, no working files and no vectors.

    >>> from remote_samsing.tiling import TilingPlan
    >>> est = estimate_bytes(TilingPlan(shape=(2000, 2000), tile_size=1000, padding=50), vectors=True)
    >>> est["labels_zarr"], est["merge"], est["vectors"]
    (1600000, 19360000, 2000000)
    """
    pixels = int(plan.shape[0]) * int(plan.shape[1])
    staged = plan.n_blocks * int(plan.slot_shape[0]) * int(plan.slot_shape[1]) * 4
    rasters = {"staging": staged, "labels_zarr": 4 * pixels, "labels_tif": 4 * pixels}
    out = {name: n // _TYPICAL_RATIO for name, n in rasters.items()}
    out["merge"] = spill_bytes(plan)
    out["vectors"] = int(_VECTOR_BYTES_PER_PIXEL * pixels) if vectors else 0
    out["total"] = sum(out.values())
    out["least"] = sum(rasters.values()) // _BEST_RATIO
    return out


def spill_bytes(plan) -> int:
    """Room a merge's spill folder is given on local disk: the run's staged labels, uncompressed.

    The spill holds per-block tables and seam strips derived from those labels, and stays below
    their uncompressed size (``tests/test_merge.py`` measures it).
    """
    return plan.n_blocks * int(plan.slot_shape[0]) * int(plan.slot_shape[1]) * 4


def free_bytes(folder: Path) -> int:
    """Free space on the filesystem of ``folder`` (or of its nearest existing parent)."""
    return shutil.disk_usage(_existing(Path(folder))).free


def describe_estimate(estimate: dict[str, int]) -> str:
    """:func:`estimate_bytes`'s answer in words: ``about <total> at the peak (<each part>); at least <least>``.

    >>> describe_estimate({"staging": 2**20, "merge": 2**21, "labels_zarr": 2**19, "labels_tif": 2**19,
    ...                    "vectors": 0, "total": 2**22, "least": 2**18})
    'about 4.00 MiB at the peak (staging 1.00 MiB, merge working files up to 2.00 MiB, labels.zarr 512.00 kiB, labels.tif 512.00 kiB); at least 256.00 kiB, with labels that compress very well'
    """
    names = {"merge": "merge working files up to"}
    parts = ", ".join(f"{names.get(name, name.replace('_', '.'))} {format_size(estimate[name])}"
                      for name in ("staging", "merge", "labels_zarr", "labels_tif", "vectors") if estimate.get(name))
    return (f"about {format_size(estimate['total'])} at the peak ({parts}); at least "
            f"{format_size(estimate['least'])}, with labels that compress very well")


def check_room(outdir: Path, estimate: dict[str, int]) -> None:
    """Raise when ``outdir``'s filesystem has less free space than the run needs at the least.

    What ``outdir`` already holds (a resumed run's staged blocks) counts as
    written. Only a clear shortfall is refused: the estimate is rough.

    Raises
    ------
    DiskFullError
    """
    place = _existing(outdir)
    free = shutil.disk_usage(place).free
    if free >= estimate["least"]:
        return
    held = _bytes_under(outdir)
    if free + held >= estimate["least"]:
        return
    raise DiskFullError(
        f"OUTDIR `{outdir}` is on {describe_device(place)} with {format_size(free)} free; this run needs "
        f"{describe_estimate(estimate)}",
        hint="free space there, or choose an OUTDIR on a larger filesystem or an object store (s3://..., gs://..., "
             "az://...)")


def check_local_writable(outdir: Path) -> None:
    """Raise when a local ``outdir`` cannot be made or written (a read-only filesystem, an immutable
    folder, no permission, a file on its path): said here in one line, before any cluster starts, where
    the first write of the run would otherwise fail. A probe file is made and removed in ``outdir``, or
    in its nearest existing parent when it does not exist yet: nothing stays behind.

    Raises
    ------
    OutputAccessError
    """
    place = _existing(outdir)
    if not place.is_dir():
        raise OutputAccessError(f"OUTDIR `{outdir}` cannot be made: `{place}` is a file",
                                hint="choose an output folder whose parents are folders")
    try:
        fd, probe = tempfile.mkstemp(prefix=PROBE_PREFIX, dir=place)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        if exc.errno in DISK_FULL_ERRNOS:
            return  # room is check_room's to say, with the numbers
        what = "OUTDIR" if place == Path(os.path.abspath(outdir)) else f"`{place}`, where OUTDIR would be made,"
        raise OutputAccessError(f"cannot write to OUTDIR `{outdir}`: {what} refuses a new file "
                                f"({exc.strerror or exc})",
                                hint="choose a folder this user may write to (check its permissions, and that its "
                                     "filesystem is not mounted read-only)") from None


def find_disk_full(exc: BaseException) -> OSError | None:
    """The full-disk ``OSError`` (``ENOSPC``, ``EDQUOT``) that ``exc`` is or was caused by, or None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def disk_full_error(exc: OSError, outdir: Path, *, need: int | None = None) -> DiskFullError:
    """One line for a full disk met during a run: the device, its free space, the file being written."""
    path = Path(exc.filename) if exc.filename else outdir
    place = _existing(path)
    free = shutil.disk_usage(place).free
    what = os.strerror(exc.errno).lower()
    writing = f", writing `{path}`" if exc.filename else ""
    more = f" (this run needs about {format_size(need)} at its peak)" if need else ""
    return DiskFullError(
        f"{what} on {describe_device(place)}: {format_size(free)} free{writing}",
        hint=f"free space there{more} and rerun the same command: it resumes where it stopped; or choose an "
             "OUTDIR on a larger filesystem")


def describe_device(path: Path) -> str:
    """The filesystem holding ``path``: its mount point, type and device, e.g. ``/data (ext4 /dev/sdb1)``."""
    mount = Path(os.path.realpath(path))
    while not os.path.ismount(mount) and mount != mount.parent:
        mount = mount.parent
    found = None
    for source, point, fstype in _mounts():
        if point == str(mount):
            found = f"{fstype} {source}"  # the last mount on a point is the one in force
    return f"{mount} ({found})" if found else str(mount)


def _mounts() -> Iterator[tuple[str, str, str]]:
    """(device, mount point, type) of each mount of this process, where the system lists them."""
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return
    for line in lines:
        fields = line.split()
        if len(fields) >= 3:
            # the kernel writes a space in a name as \040
            yield fields[0], fields[1].replace("\\040", " "), fields[2]


def _existing(path: Path) -> Path:
    """``path`` or its nearest existing parent (a fresh OUTDIR does not exist yet)."""
    path = Path(os.path.abspath(path))
    # os.path.exists, not Path.exists: a folder this user may not search is passed, not raised, so that
    # the probe in the folder above it says what is wrong
    while not os.path.exists(path) and path != path.parent:
        path = path.parent
    return path


def _bytes_under(folder: Path) -> int:
    """Bytes the files under ``folder`` take (0 if it is absent)."""
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:  # removed meanwhile
                pass
    return total


def format_size(n: int) -> str:
    """Bytes in binary units, as Dask writes them.

    >>> format_size(3_000_000)
    '2.86 MiB'
    """
    from dask.utils import format_bytes

    return format_bytes(int(n))
