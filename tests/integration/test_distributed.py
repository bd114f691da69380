"""Night-long jobs: worker loss, crash and resume, fingerprint refusal.

Real processes on loopback, no mocks of Dask:

* **worker loss**: ``dask scheduler`` and two ``dask worker`` processes started
  here; the CLI runs against them with ``--scheduler``; one worker is
  SIGKILLed mid-run; the labels equal an undisturbed run's bit for bit;
* **crash and resume**: the CLI (with its own LocalCluster) is SIGKILLed,
  workers included, after some blocks are staged; rerunning the same command
  segments exactly the blocks that were not staged (counted twice: from
  ``run.json`` and from the segmenter's own call log) and gives labels
  bit-identical to an uninterrupted run. Killed once every block is staged
  and the seam merge is under way (its faces, finals or relabel), the rerun
  segments nothing and finishes bit-identical to an undisturbed merge;
* **fingerprint**: another tile size or input refuses (exit code 2), a
  complete run refuses, ``--overwrite`` starts fresh.

The segmenter is ``threshold`` from :mod:`remote_samsing.testing`: connected
components of bright pixels, deterministic, with a per-call ``delay`` that
makes runs slow enough to interrupt and a ``log_dir`` where every call leaves
a file (calls are counted across worker processes).
"""

from __future__ import annotations

import os
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from remote_samsing.testing import HOLD_AFTER, count_calls

psutil = pytest.importorskip("psutil")

SIDE, TILE, PADDING = 256, 64, 8
N_BLOCKS = (SIDE // TILE) ** 2  # 16
# merge "none": the tests are about staging and resume; the seam merge has its own tests
MERGE = "none"
DELAY = 0.25  # seconds per segmenter call: 16 blocks on 2 workers take ~2 s of sleeping


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------
def _write_image(path: Path) -> Path:
    """Bright blobs (<= 6 px, smaller than the padding) on a dark ground, as an RGB GeoTIFF."""
    import rasterio
    from rasterio.transform import from_origin

    rng = np.random.default_rng(7)
    grey = np.full((SIDE, SIDE), 20, np.uint8)
    for _ in range(80):
        h, w = rng.integers(1, 7, size=2)
        y, x = rng.integers(0, SIDE, size=2)
        grey[y : y + h, x : x + w] = 220
    with rasterio.open(
        path, "w", driver="GTiff", width=SIDE, height=SIDE, count=3, dtype="uint8",
        crs="EPSG:32633", transform=from_origin(500000, 5000000, 0.5, 0.5),
    ) as dst:
        dst.write(np.stack([grey] * 3))
    return path


def _segment_cmd(image: Path, outdir: Path, *extra: str, delay: float = 0.0, log_dir: Path | None = None,
                 tile: int = TILE, merge: str = MERGE) -> list[str]:
    cmd = [
        sys.executable, "-m", "remote_samsing", "segment", str(image), str(outdir),
        "--segmenter", "threshold", "--segmenter-param", f"delay={delay}",
        "--tile-size", str(tile), "--padding", str(PADDING), "--merge", merge,
        "--no-vectors", "--no-progress",
    ]
    if log_dir is not None:
        cmd += ["--segmenter-param", f"log_dir={log_dir}"]
    return cmd + list(extra)


def _start(cmd: list[str], log: Path, *, hold_after: int | None = None) -> subprocess.Popen:
    """Start a run; with ``hold_after``, segmenter calls after that many wait until the run is killed."""
    env = dict(os.environ)
    if hold_after is not None:
        env[HOLD_AFTER] = str(hold_after)
    # output to a file, never a pipe: a full pipe would block the child
    fh = open(log, "ab")  # noqa: SIM115 - closed with the process in _finish/_kill_tree
    proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    proc._log_handle = fh  # type: ignore[attr-defined]
    proc._log_path = log  # type: ignore[attr-defined]
    return proc


def _close_log(proc: subprocess.Popen) -> str:
    fh = getattr(proc, "_log_handle", None)
    if fh is not None and not fh.closed:
        fh.close()
    return Path(proc._log_path).read_text(errors="replace")  # type: ignore[attr-defined]


def _finish(proc: subprocess.Popen, timeout: float) -> tuple[int, str]:
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_tree(proc)
        pytest.fail(f"{proc.args[3:5]} did not finish in {timeout} s:\n{_close_log(proc)[-3000:]}")
    return rc, _close_log(proc)


def _run(cmd: list[str], log: Path, timeout: float = 180) -> tuple[int, str]:
    return _finish(_start(cmd, log), timeout)


def _kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL a process we started and every process it started (a power cut, not a shutdown)."""
    try:
        family = [psutil.Process(proc.pid)] + psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error:  # already gone
        family = []
    for p in family:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(family, timeout=15)
    proc.wait(timeout=15)
    _close_log(proc)


def _staged(outdir: Path) -> int:
    """Blocks whose statistics marker exists (written after the block's chunk)."""
    d = outdir / "staging" / "blocks"
    return len(list(d.glob("*.json"))) if d.exists() else 0


def _wait_until(cond, proc: subprocess.Popen, timeout: float, what: str) -> None:
    t0 = time.monotonic()
    while not cond():
        if proc.poll() is not None:
            pytest.fail(f"run ended (rc {proc.returncode}) before {what}:\n{_close_log(proc)[-3000:]}")
        if time.monotonic() - t0 > timeout:
            _kill_tree(proc)
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def _labels(outdir: Path) -> np.ndarray:
    from remote_samsing.io import open_labels

    return np.asarray(open_labels(outdir / "labels.zarr").values)


def _tif(outdir: Path) -> np.ndarray:
    import rasterio

    with rasterio.open(outdir / "labels.tif") as src:
        return src.read(1)


def _record(outdir: Path) -> dict:
    return json.loads((outdir / "run.json").read_text())


# ---------------------------------------------------------------------------
# the undisturbed reference run
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    base = tmp_path_factory.mktemp("distributed")
    image = _write_image(base / "blobs.tif")
    outdir = base / "reference"
    rc, out = _run(_segment_cmd(image, outdir, "--n-workers", "2"), base / "reference.log")
    assert rc == 0, out
    labels = _labels(outdir)
    rec = _record(outdir)
    assert rec["complete"] is True and rec["blocks_segmented_this_run"] == N_BLOCKS
    # not vacuous: the reference holds segments (a broken run of zeros would match anything)
    assert labels.max() >= 20 and (labels > 0).mean() > 0.01
    return {"image": image, "outdir": outdir, "labels": labels, "tif": _tif(outdir)}


# ---------------------------------------------------------------------------
# worker loss
# ---------------------------------------------------------------------------
@pytest.fixture
def loopback_cluster(tmp_path):
    """``dask scheduler`` + two ``dask worker`` processes (no nanny: a killed worker stays dead)."""
    sched_file = tmp_path / "scheduler.json"
    procs = [
        _start(
            [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0",
             "--no-dashboard", "--dashboard-address", "127.0.0.1:0", "--scheduler-file", str(sched_file)],
            tmp_path / "scheduler.log",
        )
    ]
    try:
        t0 = time.monotonic()
        while not sched_file.exists() or not sched_file.read_text().strip():
            if procs[0].poll() is not None or time.monotonic() - t0 > 60:
                pytest.fail(f"scheduler did not start:\n{_close_log(procs[0])}")
            time.sleep(0.05)
        address = json.loads(sched_file.read_text())["address"]
        for name in ("w1", "w2"):
            procs.append(
                _start(
                    [sys.executable, "-m", "distributed.cli.dask_worker", address, "--name", name,
                     "--nthreads", "1", "--no-nanny", "--no-dashboard", "--host", "127.0.0.1",
                     "--death-timeout", "60"],
                    tmp_path / f"{name}.log",
                )
            )
        from distributed import Client

        with Client(address, timeout="30s") as c:
            c.wait_for_workers(2, timeout=60)
        yield {"address": address, "workers": {"w1": procs[1], "w2": procs[2]}}
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                _kill_tree(p)
            else:
                _close_log(p)


@pytest.mark.timeout(300)
def test_worker_loss_mid_run_gives_identical_output(reference, loopback_cluster, tmp_path):
    from distributed import Client

    outdir, calls = tmp_path / "out", tmp_path / "calls"
    cmd = _segment_cmd(reference["image"], outdir, "--scheduler", loopback_cluster["address"],
                       delay=DELAY, log_dir=calls)
    run = _start(cmd, tmp_path / "run.log")
    try:
        _wait_until(lambda: _staged(outdir) >= 3, run, 120, "3 staged blocks")
        victim = loopback_cluster["workers"]["w1"]
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=15)
        assert run.poll() is None, "the run finished before the worker was killed: not a mid-run loss"
        staged_at_kill = _staged(outdir)
        assert staged_at_kill < N_BLOCKS
        rc, out = _finish(run, 180)
    finally:
        if run.poll() is None:
            _kill_tree(run)
    assert rc == 0, out
    with Client(loopback_cluster["address"], timeout="30s") as c:
        assert [w["name"] for w in c.scheduler_info()["workers"].values()] == ["w2"]  # the loss was real
    rec = _record(outdir)
    assert rec["complete"] is True and rec["resumed"] is False
    assert rec["blocks_segmented_this_run"] == N_BLOCKS  # every block staged once, by this run
    # blocks in flight on the dead worker are segmented again (never skipped), finished ones are not
    assert N_BLOCKS <= count_calls(calls) <= N_BLOCKS + 1
    np.testing.assert_array_equal(_labels(outdir), reference["labels"])
    np.testing.assert_array_equal(_tif(outdir), reference["tif"])


@pytest.mark.timeout(180)
def test_worker_loss_during_chained_phases(loopback_cluster, tmp_path):
    """``execute.run_in_phases`` (the merge's phases, chained on the
    scheduler, each task preferring a worker): a worker killed while the
    second of three phases runs costs its tasks a re-run elsewhere, and the
    results are complete and in order."""
    import functools
    import threading

    from distributed import Client

    from remote_samsing.execute import run_in_phases

    calls = tmp_path / "calls"
    calls.mkdir()

    def record(item, *, phase, folder, seconds):  # nested: shipped by value, workers need not import tests
        import time as _time
        import uuid
        from pathlib import Path as _Path

        _Path(folder, f"{phase}-{item}-start-{uuid.uuid4().hex[:8]}").touch()
        _time.sleep(seconds)
        return phase, item

    def phase(name, seconds):
        return name, functools.partial(record, phase=name, folder=str(calls), seconds=seconds), list(range(4))

    def starts(name):
        return len(list(calls.glob(f"{name}-*-start-*")))

    victim = loopback_cluster["workers"]["w1"]

    def kill_once_b_runs():
        deadline = time.monotonic() + 60
        while starts("b") < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.3)  # both workers inside a "b" task
        victim.send_signal(signal.SIGKILL)

    killer = threading.Thread(target=kill_once_b_runs)
    with Client(loopback_cluster["address"], timeout="30s") as client:
        killer.start()
        results, _ = run_in_phases(client, [phase("a", 0.2), phase("b", 1.5), phase("c", 0.05)], batch=1)
        killer.join()
        assert [w["name"] for w in client.scheduler_info()["workers"].values()] == ["w2"]  # the loss was real
    assert victim.wait(timeout=15) is not None
    assert results == [[(name, i) for i in range(4)] for name in "abc"]
    assert starts("b") > 4  # the "b" task on the killed worker ran again, elsewhere
    assert starts("c") == 4


# ---------------------------------------------------------------------------
# crash and resume
# ---------------------------------------------------------------------------
def _resume(cmd, tmp_path: Path, outdir: Path, calls: Path, *, staged: int, calls_before: int, expected) -> str:
    """Rerun the crashed command: only the blocks without a marker are segmented, each once, and the
    products equal the undisturbed run's bit for bit. Returns the run's output."""
    rc, out = _run(cmd, tmp_path / "resumed.log")
    assert rc == 0, out
    rec = _record(outdir)
    assert rec["complete"] is True and rec["resumed"] is True
    assert rec["blocks_segmented_this_run"] == N_BLOCKS - staged
    assert count_calls(calls) - calls_before == N_BLOCKS - staged
    np.testing.assert_array_equal(_labels(outdir), expected["labels"])
    np.testing.assert_array_equal(_tif(outdir), expected["tif"])
    return out


@pytest.mark.timeout(360)
@pytest.mark.parametrize(
    "kill_at",
    [
        pytest.param(1, marks=pytest.mark.slow, id="after-first-block"),
        pytest.param(N_BLOCKS // 2, id="half-staged"),
        pytest.param(N_BLOCKS - 1, marks=pytest.mark.slow, id="all-but-one-staged"),
    ],
)
def test_crash_and_resume_segments_only_missing_blocks(reference, tmp_path, kill_at):
    outdir, calls = tmp_path / "out", tmp_path / "calls"
    cmd = _segment_cmd(reference["image"], outdir, "--n-workers", "2", delay=DELAY, log_dir=calls)

    # calls after the kill_at-th wait: the run cannot finish before the kill
    crashed = _start(cmd, tmp_path / "crashed.log", hold_after=kill_at)
    try:
        _wait_until(lambda: _staged(outdir) >= kill_at, crashed, 180, f"{kill_at} staged block(s)")
    finally:
        _kill_tree(crashed)  # the CLI and its worker processes, all at once
    rec = _record(outdir)
    assert rec["complete"] is False  # a crash never leaves something that looks finished
    staged = _staged(outdir)
    assert kill_at <= staged <= N_BLOCKS
    calls_before = count_calls(calls)
    assert calls_before >= staged  # the staged blocks were segmented by the crashed run

    out = _resume(cmd, tmp_path, outdir, calls, staged=staged, calls_before=calls_before, expected=reference)
    todo = N_BLOCKS - staged
    assert f"({todo} block{'s' if todo != 1 else ''} segmented this run)" in out
    # said up front: what an earlier run staged already
    rest = f"segmenting {todo} of {TILE} px (padding {PADDING})" if todo else "nothing left to segment"
    assert f"{staged}/{N_BLOCKS} blocks staged; {rest}" in out


# a crash during the seam merge: the merge's phases part done (every block staged, but for
# the faces, which are computed while the last blocks are segmented)
# keep the blobs: all are smaller than the merge's default min_mask_area
KEEP_SMALL = ("--merge-param", "remove_small=false")


@pytest.fixture(scope="module")
def reference_merged(reference, tmp_path_factory):
    """The undisturbed run with the seam merge ("overlap"), to compare resumed merges with."""
    base = tmp_path_factory.mktemp("distributed-merged")
    outdir = base / "reference"
    rc, out = _run(_segment_cmd(reference["image"], outdir, "--n-workers", "2", *KEEP_SMALL, merge="overlap"),
                   base / "reference.log")
    assert rc == 0, out
    labels = _labels(outdir)
    # not vacuous: the merge joined fragments across seams (fewer labels than with merge "none")
    assert 0 < labels.max() < reference["labels"].max()
    return {"outdir": outdir, "labels": labels, "tif": _tif(outdir),
            "faces": json.loads((outdir / "merge_faces.json").read_text())}



def _merge_files(outdir: Path, kind: str) -> int:
    """Spill files of one merge phase (``staging/merge/{kind}_{i}_{j}.pkl``)."""
    return len(list((outdir / "staging" / "merge").glob(f"{kind}_*.pkl")))


@pytest.mark.timeout(360)
def test_crash_during_the_merge_resumes_bit_identical(reference, reference_merged, tmp_path):
    """Killed once the merge's first seam faces are written: faces are computed while the last
    blocks are segmented, and the last block waits (the run cannot finish before the kill)."""
    outdir, calls = tmp_path / "out", tmp_path / "calls"
    cmd = _segment_cmd(reference["image"], outdir, "--n-workers", "2", *KEEP_SMALL, log_dir=calls,
                       merge="overlap")
    crashed = _start(cmd, tmp_path / "crashed.log", hold_after=N_BLOCKS - 1)
    try:
        _wait_until(lambda: _merge_files(outdir, "faces") >= 1, crashed, 180, "a faces file of the merge")
    finally:
        _kill_tree(crashed)
    rec = _record(outdir)
    assert rec["complete"] is False
    staged, calls_before = _staged(outdir), count_calls(calls)
    assert 1 <= staged < N_BLOCKS and calls_before >= staged
    assert not (outdir / "labels.tif").exists()  # nothing that looks finished
    assert _merge_files(outdir, "faces") >= 1  # the merge's spill folder left behind

    _resume(cmd, tmp_path, outdir, calls, staged=staged, calls_before=calls_before, expected=reference_merged)
    rec = _record(outdir)
    assert json.loads((outdir / "merge_faces.json").read_text()) == reference_merged["faces"]
    assert rec["merge_stats"]["totals"] == _record(reference_merged["outdir"])["merge_stats"]["totals"]
    assert not (outdir / "staging" / "merge").exists()  # the spill folder goes once the merge is done


# ---------------------------------------------------------------------------
# fingerprint refusal and --overwrite
# ---------------------------------------------------------------------------
@pytest.fixture
def finished_copy(reference, tmp_path):
    """A copy of the complete reference run, to mutate."""
    out = tmp_path / "out"
    shutil.copytree(reference["outdir"], out)
    return out


def _snapshot(outdir: Path) -> dict[str, float]:
    return {str(p.relative_to(outdir)): p.stat().st_mtime_ns for p in outdir.rglob("*")}


@pytest.mark.timeout(120)
def test_rerun_of_a_complete_run_is_a_no_op(reference, finished_copy, tmp_path):
    before = _snapshot(finished_copy)
    rc, out = _run(_segment_cmd(reference["image"], finished_copy, "--n-workers", "1"), tmp_path / "r.log")
    assert rc == 0, out
    assert "up to date" in out and "nothing recomputed" in out and "error" not in out
    assert "dashboard" not in out  # no cluster started
    assert _snapshot(finished_copy) == before  # nothing written


@pytest.mark.timeout(120)
def test_other_tile_size_refuses_even_when_interrupted(reference, finished_copy, tmp_path):
    # turn the copy into an interrupted run: final products gone, "complete" false
    rec = _record(finished_copy)
    rec["complete"] = False
    (finished_copy / "run.json").write_text(json.dumps(rec))
    shutil.rmtree(finished_copy / "labels.zarr")
    (finished_copy / "labels.tif").unlink()
    before = _snapshot(finished_copy)
    cmd = _segment_cmd(reference["image"], finished_copy, "--n-workers", "1", tile=32)
    rc, out = _run(cmd, tmp_path / "r.log")
    assert rc == 2, out
    assert "error:" in out and "different configuration or input" in out and "--overwrite" in out
    assert "tile_size: 64 -> 32" in out  # each difference named, old and new
    assert _snapshot(finished_copy) == before


@pytest.mark.timeout(120)
def test_other_input_refuses(reference, finished_copy, tmp_path):
    other = tmp_path / "other.tif"
    shutil.copy(reference["image"], other)  # same pixels, another file: another input
    rc, out = _run(_segment_cmd(other, finished_copy, "--n-workers", "1"), tmp_path / "r.log")
    assert rc == 2, out
    assert "different configuration or input" in out and "input path:" in out and "other.tif" in out


@pytest.mark.timeout(240)
def test_overwrite_starts_fresh(reference, finished_copy, tmp_path):
    calls = tmp_path / "calls"
    cmd = _segment_cmd(reference["image"], finished_copy, "--n-workers", "2", "--overwrite", tile=32,
                       log_dir=calls)
    rc, out = _run(cmd, tmp_path / "r.log")
    assert rc == 0, out
    rec = _record(finished_copy)
    assert rec["complete"] is True and rec["resumed"] is False
    assert rec["parameters"]["tile_size"] == 32 and rec["tiling"]["n_blocks"] == 64
    assert rec["blocks_segmented_this_run"] == 64 == count_calls(calls)  # nothing reused
    assert len(list((finished_copy / "staging" / "blocks").glob("*.json"))) == 64
    labels = _labels(finished_copy)
    # same foreground as the reference (the threshold does not depend on tiling)
    np.testing.assert_array_equal(labels > 0, reference["labels"] > 0)
