"""A local OUTDIR the cluster writes: shared with the workers, and room enough on its filesystem."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from _helpers import blob_image
from remote_samsing import _outdir
from remote_samsing.cli import cli
from remote_samsing.config import RunConfig
from remote_samsing.exceptions import DiskFullError, OutputNotSharedError
from remote_samsing.tiling import TilingPlan

Usage = namedtuple("Usage", "total used free")
SEGMENT = ["--segmenter", "threshold", "--tile-size", "64", "--padding", "8", "--merge-param", "remove_small=false",
           "--no-progress"]


@pytest.fixture
def scene(write_geotiff):
    grey = blob_image((128, 128), n=30, max_size=6, seed=5)
    return write_geotiff(np.stack([grey] * 3))


@pytest.fixture(scope="module")
def threaded_cluster():
    """Workers as threads of this process: what a test patches here, they run."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0") as lc:
        yield lc


def _stub_free(monkeypatch, free: int) -> None:
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(10**12, 10**12 - free, free))


def _one_error(result) -> str:
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    return errors[0]


# ---------------------------------------------------------------------------
# the space a run needs, checked before any cluster starts
# ---------------------------------------------------------------------------
def test_estimate_grows_with_the_mosaic_and_drops_vectors_when_off():
    small = _outdir.estimate_bytes(TilingPlan(shape=(500, 500), tile_size=250, padding=25), vectors=True)
    large = _outdir.estimate_bytes(TilingPlan(shape=(5000, 5000), tile_size=250, padding=25), vectors=True)
    assert large["total"] > 90 * small["total"]
    assert small["total"] == sum(small[k] for k in ("staging", "merge", "labels_zarr", "labels_tif", "vectors"))
    assert 0 < small["least"] < small["total"]
    plan = TilingPlan(shape=(500, 500), tile_size=250, padding=25)
    assert _outdir.estimate_bytes(plan, vectors=False)["vectors"] == 0


def test_the_least_estimate_stays_under_what_a_run_writes(tmp_path, scene, client):
    """A run that fits is never refused: the least a run needs is below what the tested run wrote."""
    from remote_samsing import run

    cfg = RunConfig(segmenter="threshold", tile_size=64, padding=8, merge_params={"remove_small": False},
                    progress=False)
    assert run(scene, tmp_path / "out", config=cfg, client=client)["n_segments"] > 0
    written = sum(f.stat().st_size for f in (tmp_path / "out").rglob("*") if f.is_file())
    plan = TilingPlan(shape=(128, 128), tile_size=64, padding=8)
    assert _outdir.estimate_bytes(plan, vectors=True)["least"] < written


def test_a_clearly_short_filesystem_is_refused_before_any_cluster(tmp_path, scene, monkeypatch):
    import remote_samsing.pipeline as pipeline

    def no_cluster(*args, **kwargs):
        raise AssertionError("a cluster was started")

    monkeypatch.setattr(pipeline, "make_client", no_cluster)
    _stub_free(monkeypatch, 500)
    out = tmp_path / "out"
    with pytest.raises(DiskFullError) as err:
        pipeline.run(scene, out, config=RunConfig(segmenter="threshold", tile_size=64, padding=8, progress=False))
    message = str(err.value)
    assert f"`{out}`" in message and "500 B free" in message and "needs about" in message
    assert os.path.realpath(tmp_path).startswith(message.split(" is on ")[1].split(" (")[0])  # the mount point
    assert "larger filesystem" in err.value.hint
    assert not out.exists()
    # on the command line: one line, exit 2
    r = CliRunner().invoke(cli, ["segment", str(scene), str(out), *SEGMENT])
    assert r.exit_code == 2
    assert "free; this run needs about" in _one_error(r)
    assert not out.exists()


def _no_cluster(monkeypatch):
    import remote_samsing.pipeline as pipeline

    def no_cluster(*args, **kwargs):
        raise AssertionError("a cluster was started")

    monkeypatch.setattr(pipeline, "make_client", no_cluster)


def test_an_outdir_under_a_file_is_refused_before_any_cluster(tmp_path, scene, monkeypatch):
    _no_cluster(monkeypatch)
    afile = tmp_path / "afile"
    afile.write_bytes(b"x")
    r = CliRunner().invoke(cli, ["segment", str(scene), str(afile / "sub"), *SEGMENT])
    assert r.exit_code == 2, r.output
    assert _one_error(r) == f"error: OUTDIR `{afile / 'sub'}` cannot be made: `{afile}` is a file"
    assert afile.read_bytes() == b"x"


@pytest.mark.parametrize("exists", [True, False], ids=["existing", "to-be-made"])
def test_an_outdir_that_refuses_files_is_refused_before_any_cluster(tmp_path, scene, monkeypatch, exists):
    import tempfile

    _no_cluster(monkeypatch)
    out = tmp_path / "out"
    if exists:
        out.mkdir()

    def read_only(*args, **kwargs):  # what a read-only mount or an immutable folder answers (root included)
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    r = CliRunner().invoke(cli, ["segment", str(scene), str(out), *SEGMENT])
    assert r.exit_code == 2, r.output
    error = _one_error(r)
    assert error.startswith(f"error: cannot write to OUTDIR `{out}`: ") and "(Read-only file system)" in error
    assert ("where OUTDIR would be made" in error) is not exists
    assert "permissions" in r.stderr.splitlines()[-1]
    assert out.exists() is exists and (not exists or not any(out.iterdir()))


def test_the_writable_check_leaves_nothing_behind(tmp_path):
    _outdir.check_local_writable(tmp_path / "new" / "out")
    _outdir.check_local_writable(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_room_counts_what_outdir_already_holds(tmp_path, monkeypatch):
    plan = TilingPlan(shape=(256, 256), tile_size=64, padding=8)
    need = _outdir.estimate_bytes(plan, vectors=True)
    _stub_free(monkeypatch, need["least"] // 2)
    with pytest.raises(DiskFullError):
        _outdir.check_room(tmp_path, need)
    (tmp_path / "staged").write_bytes(b"\0" * (need["least"] // 2 + 1))  # a resumed run's blocks
    _outdir.check_room(tmp_path, need)


# ---------------------------------------------------------------------------
# a full disk during the run
# ---------------------------------------------------------------------------
def test_disk_full_is_found_through_the_causes():
    full = OSError(errno.ENOSPC, "No space left on device", "/x/y")
    try:
        try:
            raise full
        except OSError as exc:
            raise RuntimeError("writing a chunk") from exc
    except RuntimeError as wrapped:
        assert _outdir.find_disk_full(wrapped) is full
    assert _outdir.find_disk_full(OSError(errno.EACCES, "denied")) is None
    assert _outdir.find_disk_full(ValueError("no")) is None


def test_disk_full_error_names_the_device_and_its_free_space(tmp_path, monkeypatch):
    _stub_free(monkeypatch, 0)
    target = tmp_path / "out" / "staging" / "c" / "0"
    err = _outdir.disk_full_error(OSError(errno.ENOSPC, "No space left on device", str(target)), tmp_path / "out",
                                  need=5 * 2**20)
    assert str(err).startswith("no space left on device on /")
    assert "0 B free" in str(err) and f"`{target}`" in str(err)
    assert "5.00 MiB" in err.hint and "rerun the same command" in err.hint
    assert isinstance(err, OSError)


def test_describe_device_names_the_mount_and_its_type(tmp_path):
    text = _outdir.describe_device(tmp_path)
    mount = text.split(" (")[0]
    assert os.path.ismount(mount) and os.path.realpath(tmp_path).startswith(mount)
    if Path("/proc/self/mounts").exists():
        assert text.endswith(")") and len(text.split(" (")[1].split()) == 2  # type and device


class _FullDisk:
    """Replaces one write of the run with ENOSPC, once: where ``target(*args)`` names a file."""

    def __init__(self, real, target):
        self.real, self.target, self.raised = real, target, 0

    def __call__(self, *args, **kwargs):
        path = self.target(*args)
        if not self.raised and path:
            self.raised += 1
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return self.real(*args, **kwargs)


def _full_disk(where: str, monkeypatch) -> _FullDisk:
    import remote_samsing.outputs as outputs
    import remote_samsing.staging as staging

    if where == "staging":  # the marker of one block, written by its segment task
        fake = _FullDisk(staging.write_bytes, lambda path, *_: Path(str(path)).name == "0_1.json" and path)
        monkeypatch.setattr(staging, "write_bytes", fake)
    else:  # a block of labels.zarr, written by a task of the merge's chained phases
        fake = _FullDisk(outputs.LabelSink.__call__, lambda sink, labels, window: window.y0 > 0 and sink.store)
        monkeypatch.setattr(outputs.LabelSink, "__call__", lambda sink, labels, window: fake(sink, labels, window))
    return fake


@pytest.fixture
def worker_log():
    """Records of the workers' logger (its tracebacks of failed tasks among them)."""
    records: list = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    log = logging.getLogger("distributed.worker")
    level = log.level
    log.setLevel(logging.WARNING)
    log.addHandler(handler)
    yield records
    log.removeHandler(handler)
    log.setLevel(level)


def _products(out: Path) -> dict:
    import geopandas as gpd
    import rasterio

    from remote_samsing.io import open_labels

    with rasterio.open(out / "labels.tif") as src:
        tif = src.read(1)
    vectors = gpd.read_parquet(out / "segments.parquet").sort_values("label")
    return {"zarr": np.asarray(open_labels(out / "labels.zarr").values), "tif": tif,
            "labels": vectors["label"].to_numpy(), "wkb": vectors.geometry.to_wkb().to_numpy()}


@pytest.mark.parametrize("where", ["staging", "merge"])
def test_a_disk_full_mid_run_is_one_line_then_the_same_command_resumes(where, tmp_path, scene, threaded_cluster,
                                                                       monkeypatch, worker_log, capfd):
    import remote_samsing.pipeline as pipeline

    address = threaded_cluster.scheduler_address
    out = tmp_path / "out"
    runner = CliRunner()
    with monkeypatch.context() as patch:
        fake = _full_disk(where, patch)
        _stub_free(patch, 0)  # what the full device reports, once the run meets it
        patch.setattr(pipeline, "check_room", lambda outdir, estimate: None)  # the check before the run: passed
        r = runner.invoke(cli, ["segment", str(scene), str(out), "--scheduler", address, *SEGMENT])
    assert fake.raised == 1
    assert r.exit_code == 2, r.output
    line = _one_error(r)
    assert line.startswith("error: no space left on device on /") and "0 B free" in line
    assert "rerun the same command" in r.stderr
    assert not [rec for rec in worker_log if "Compute Failed" in rec.getMessage()]
    assert "Traceback" not in capfd.readouterr().err
    rec = json.loads((out / "run.json").read_text())
    assert rec["complete"] is False and rec["error"]["type"] == "DiskFullError"

    # room again: the same command finishes, equal to a run that never stopped
    r = runner.invoke(cli, ["segment", str(scene), str(out), "--scheduler", address, *SEGMENT])
    assert r.exit_code == 0, r.output
    assert json.loads((out / "run.json").read_text())["complete"] is True
    r = runner.invoke(cli, ["segment", str(scene), str(tmp_path / "fresh"), "--scheduler", address, *SEGMENT])
    assert r.exit_code == 0, r.output
    resumed, fresh = _products(out), _products(tmp_path / "fresh")
    assert fresh["zarr"].max() >= 10  # not vacuous
    for name in fresh:
        np.testing.assert_array_equal(resumed[name], fresh[name], err_msg=name)


# ---------------------------------------------------------------------------
# the workers see OUTDIR
# ---------------------------------------------------------------------------
def test_probe_answer_writes_only_where_it_finds_the_probe(tmp_path):
    (tmp_path / f"{_outdir.PROBE_PREFIX}abc").write_text("abc")
    _, problem = _outdir.probe_answer(str(tmp_path), "abc")
    assert problem is None and (tmp_path / f"{_outdir.PROBE_PREFIX}abc.answer").is_file()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    _, problem = _outdir.probe_answer(str(elsewhere), "abc")
    assert problem and not any(elsewhere.iterdir())
    _, problem = _outdir.probe_answer(str(tmp_path / "absent"), "abc")
    assert problem and not (tmp_path / "absent").exists()


def test_check_shared_passes_on_a_shared_folder_and_leaves_no_probe(tmp_path, client):
    out = tmp_path / "new" / "out"
    _outdir.check_shared(out, client)
    assert out.is_dir() and not any(out.iterdir())


def test_workers_that_see_another_folder_are_refused_and_nothing_stays(tmp_path, threaded_cluster, monkeypatch):
    from distributed import Client

    # the worker looks at the same path on a disk of its own (here: another folder)
    other = tmp_path / "worker-disk"
    real = _outdir.probe_answer
    monkeypatch.setattr(_outdir, "probe_answer",
                        lambda outdir, token: real(str(other / Path(outdir).relative_to("/")), token))
    existing = tmp_path / "existing"
    existing.mkdir()
    with Client(threaded_cluster) as c:
        for out, keep in ((tmp_path / "new" / "out", tmp_path), (existing, existing)):
            with pytest.raises(OutputNotSharedError) as err:
                _outdir.check_shared(out, c)
            assert f"`{out}`" in str(err.value) and "worker" in str(err.value)
            assert "shared filesystem" in err.value.hint and "s3://" in err.value.hint
            assert not (tmp_path / "new").exists()  # what the check made, it removed
            assert existing.is_dir() and not any(existing.iterdir())
    assert not other.exists()
