"""A user's own cluster: ``dask scheduler`` and ``dask worker`` processes started elsewhere.

Real processes on loopback, each started in a temporary folder of its own,
so a path relative to the client's working folder means nothing to them:

* a relative OUTDIR (and INPUT), from yet another folder, on the command
  line and through ``rs.run(..., client=Client(address))``, gives the
  products in the client's folder, equal to an embedded cluster's;
* a worker that does not see the client's folder (its own mount namespace,
  a tmpfs over the test's folder: a machine with its own disk at the same
  path) is refused in one line before any work, leaving nothing behind.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from _helpers import blob_image

psutil = pytest.importorskip("psutil")

DASK = Path(sys.executable).with_name("dask")
SIDE, TILE, PADDING = 192, 64, 8
# the blobs are smaller than the merge's smallest object: kept
SEGMENT_ARGS = ["--segmenter", "threshold", "--tile-size", str(TILE), "--padding", str(PADDING),
                "--merge-param", "remove_small=false", "--no-progress"]


def _write_scene(path: Path) -> Path:
    import rasterio
    from rasterio.transform import from_origin

    grey = blob_image((SIDE, SIDE), n=60, seed=3)
    with rasterio.open(path, "w", driver="GTiff", width=SIDE, height=SIDE, count=3, dtype="uint8",
                       crs="EPSG:32633", transform=from_origin(500000, 5000000, 0.5, 0.5)) as dst:
        dst.write(np.stack([grey] * 3))
    return path


def _start(cmd: list, *, cwd: Path, log: Path) -> subprocess.Popen:
    # output to a file, never a pipe: a full pipe would block the process
    with open(log, "ab") as fh:
        return subprocess.Popen([str(c) for c in cmd], cwd=cwd, stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)


def _stop(procs: list) -> None:
    for proc in reversed(procs):
        try:
            family = [psutil.Process(proc.pid)] + psutil.Process(proc.pid).children(recursive=True)
        except psutil.Error:  # already gone
            continue
        for p in family:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(family, timeout=15)
        proc.wait(timeout=15)


def _folder(base: Path, name: str) -> Path:
    path = base / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def _start_scheduler(base: Path, procs: list) -> str:
    """A ``dask scheduler`` on 127.0.0.1, started in its own folder; returns its address."""
    cwd = _folder(base, "scheduler")
    procs.append(_start([DASK, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                         "--scheduler-file", cwd / "scheduler.json"], cwd=cwd, log=base / "scheduler.log"))
    t0 = time.monotonic()
    while not (cwd / "scheduler.json").exists() or not (cwd / "scheduler.json").read_text().strip():
        if procs[-1].poll() is not None or time.monotonic() - t0 > 60:
            pytest.fail(f"scheduler did not start:\n{(base / 'scheduler.log').read_text()}")
        time.sleep(0.05)
    return json.loads((cwd / "scheduler.json").read_text())["address"]


def _worker_cmd(address: str, name: str) -> list:
    return [DASK, "worker", address, "--name", name, "--nthreads", "1", "--no-dashboard", "--host", "127.0.0.1",
            "--death-timeout", "60"]


def _wait_for_workers(address: str, n: int, base: Path) -> None:
    from distributed import Client

    with Client(address, timeout="30s") as c:
        try:
            c.wait_for_workers(n, timeout=60)
        except TimeoutError:
            logs = "\n".join(p.read_text() for p in base.glob("*.log"))
            pytest.fail(f"{n} worker(s) did not join:\n{logs[-3000:]}")


@pytest.fixture
def own_cluster(tmp_path):
    """``dask scheduler`` + two ``dask worker`` processes, each in a folder of its own."""
    if not DASK.exists():
        pytest.skip(f"no `dask` command beside {sys.executable}")
    procs: list = []
    try:
        address = _start_scheduler(tmp_path, procs)
        for name in ("w1", "w2"):
            cwd = _folder(tmp_path, name)
            procs.append(_start(_worker_cmd(address, name), cwd=cwd, log=tmp_path / f"{name}.log"))
        _wait_for_workers(address, 2, tmp_path)
        yield {"address": address, "folders": [tmp_path / n for n in ("scheduler", "w1", "w2")]}
    finally:
        _stop(procs)


def _segment(*args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "remote_samsing", "segment", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def _labels(outdir: Path) -> np.ndarray:
    from remote_samsing.io import open_labels

    return np.asarray(open_labels(outdir / "labels.zarr").values)


@pytest.mark.timeout(300)
def test_relative_outdir_on_an_own_cluster(own_cluster, tmp_path, monkeypatch):
    from distributed import Client

    from remote_samsing import run
    from remote_samsing.config import RunConfig

    client_dir = _folder(tmp_path, "client")
    _write_scene(client_dir / "scene.tif")
    r = _segment("scene.tif", "out_rel", "--scheduler", own_cluster["address"], *SEGMENT_ARGS, cwd=client_dir)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    out = client_dir / "out_rel"
    rec = json.loads((out / "run.json").read_text())
    assert rec["complete"] is True and rec["blocks_segmented_this_run"] == (SIDE // TILE) ** 2
    for name in ("labels.zarr", "labels.tif", "segments.parquet"):
        assert (out / name).exists(), name
    # nothing went to the folders the scheduler and the workers started in
    for folder in own_cluster["folders"]:
        assert not (folder / "out_rel").exists() and not (folder / "staging").exists()
    labels = _labels(out)
    assert labels.max() >= 10  # not vacuous

    # the same through the API, with a client the caller made
    monkeypatch.chdir(client_dir)
    cfg = RunConfig(segmenter="threshold", tile_size=TILE, padding=PADDING, merge_params={"remove_small": False},
                    progress=False)
    with Client(own_cluster["address"], timeout="30s") as c:
        rec = run("scene.tif", "out_api", config=cfg, client=c)
    assert rec["complete"] is True
    np.testing.assert_array_equal(_labels(client_dir / "out_api"), labels)

    # and equal to the embedded cluster's run
    r = _segment("scene.tif", "out_embedded", "--n-workers", "1", *SEGMENT_ARGS, cwd=client_dir)
    assert r.returncode == 0, r.stderr
    np.testing.assert_array_equal(_labels(client_dir / "out_embedded"), labels)


def _can_mount_a_tmpfs() -> bool:
    """This machine lets a process make its own mount namespace and mount a tmpfs in it (as a user
    namespace's root where user namespaces are allowed, or as root)."""
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs none /mnt"], capture_output=True)
    return probe.returncode == 0


@pytest.fixture
def unshared_cluster(tmp_path):
    """``dask scheduler`` + one ``dask worker`` that sees an empty tmpfs at ``tmp_path``: the client's
    folders are not shared with it, as on a machine with its own disk."""
    if not DASK.exists():
        pytest.skip(f"no `dask` command beside {sys.executable}")
    if not _can_mount_a_tmpfs():
        pytest.skip("no mount namespace with a tmpfs can be made here (unshare -rm)")
    procs: list = []
    try:
        address = _start_scheduler(tmp_path, procs)
        worker = " ".join(f"'{c}'" for c in _worker_cmd(address, "elsewhere"))
        script = f"mount -t tmpfs none '{tmp_path}' && mkdir '{tmp_path}/w' && cd '{tmp_path}/w' && exec {worker}"
        procs.append(_start(["unshare", "-rm", "sh", "-c", script], cwd=tmp_path, log=tmp_path / "elsewhere.log"))
        _wait_for_workers(address, 1, tmp_path)
        yield address
    finally:
        _stop(procs)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("outdir", ["out_rel", "ABSOLUTE"])
def test_a_cluster_that_does_not_share_outdir_is_refused_in_one_line(unshared_cluster, tmp_path, outdir):
    client_dir = _folder(tmp_path, "client")
    _write_scene(client_dir / "scene.tif")
    target = client_dir / "out" if outdir == "ABSOLUTE" else client_dir / outdir
    r = _segment("scene.tif", target if outdir == "ABSOLUTE" else outdir, "--scheduler", unshared_cluster,
                 *SEGMENT_ARGS, cwd=client_dir)
    assert r.returncode == 2, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, r.stderr
    assert str(target) in errors[0] and "worker" in errors[0]
    assert "Traceback" not in r.stderr
    hint = [line for line in r.stderr.splitlines() if line.startswith("hint:")]
    assert hint and "shared" in hint[0] and "s3://" in hint[0]
    assert not target.exists()  # nothing half-written
    assert sorted(p.name for p in client_dir.iterdir()) == ["scene.tif"]
