"""OUTDIR on a real, small filesystem: a tmpfs in a mount namespace of the test's own (``unshare -rm``).

* free space under the least the run needs: refused in one line before any cluster;
* room enough to pass that check but not to finish: one line naming the
  device and its free space, exit 2, no worker traceback; once space is
  freed, the same command resumes, and its products equal a run that never
  stopped.

Skipped where this machine lets no process make a mount namespace.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

SEGMENT = ["--segmenter", "threshold", "--segmenter-param", "threshold=60", "--tile-size", "256", "--padding", "32",
           "--n-workers", "1", "--no-progress"]


def _namespace_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs none /mnt"], capture_output=True).returncode == 0


pytestmark = pytest.mark.skipif(not _namespace_works(), reason="no mount namespace with a tmpfs can be made here")


def _segment_cmd(image: Path, outdir: Path) -> str:
    return shlex.join([sys.executable, "-m", "remote_samsing", "segment", str(image), str(outdir), *SEGMENT])


def _in_namespace(script: str, tmp_path: Path) -> None:
    """Run ``script`` (sh) in a mount namespace of its own; what it reports goes to files in tmp_path."""
    r = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=500)
    assert r.returncode == 0, r.stdout + r.stderr


def _labels(outdir: Path) -> dict:
    import geopandas as gpd
    import rasterio

    from remote_samsing.io import open_labels

    with rasterio.open(outdir / "labels.tif") as src:
        tif = src.read(1)
    vectors = gpd.read_parquet(outdir / "segments.parquet").sort_values("label")
    return {"zarr": np.asarray(open_labels(outdir / "labels.zarr").values), "tif": tif,
            "wkb": vectors.geometry.to_wkb().to_numpy()}


def _one_error(stderr: str) -> str:
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr
    assert "Traceback" not in stderr and "Compute Failed" not in stderr, stderr
    return errors[0]


@pytest.mark.timeout(600)
def test_a_full_tmpfs_is_said_in_one_line_and_the_run_resumes_once_freed(tmp_path, data_dir):
    disk, report = tmp_path / "disk", tmp_path / "report"
    disk.mkdir()
    report.mkdir()
    image = data_dir / "landsat_rgb.tif"
    out = disk / "out"
    run = _segment_cmd(image, out)
    q = shlex.quote
    script = f"""
        mount -t tmpfs -o size=4m none {q(str(disk))} || exit 1
        cat /dev/zero > {q(str(disk / 'filler'))} 2>/dev/null
        truncate -s -8K {q(str(disk / 'filler'))}
        {run} > {q(str(report / 'short.out'))} 2> {q(str(report / 'short.err'))}; echo $? > {q(str(report / 'short.rc'))}
        rm {q(str(disk / 'filler'))}
        cat /dev/zero > {q(str(disk / 'filler'))} 2>/dev/null
        truncate -s -160K {q(str(disk / 'filler'))}
        {run} > {q(str(report / 'full.out'))} 2> {q(str(report / 'full.err'))}; echo $? > {q(str(report / 'full.rc'))}
        ls -a {q(str(out))} > {q(str(report / 'full.ls'))} 2>&1
        rm {q(str(disk / 'filler'))}
        {run} > {q(str(report / 'resumed.out'))} 2> {q(str(report / 'resumed.err'))}
        echo $? > {q(str(report / 'resumed.rc'))}
        cp -r {q(str(out))} {q(str(report / 'resumed'))}
    """
    _in_namespace(script, tmp_path)
    said = {name: (report / f"{name}.err").read_text() for name in ("short", "full", "resumed")}
    rc = {name: int((report / f"{name}.rc").read_text()) for name in said}

    # 8 kB free: refused before any cluster, nothing written
    assert rc["short"] == 2, said["short"]
    line = _one_error(said["short"])
    assert f"OUTDIR `{out}` is on {disk} (tmpfs none) with" in line and "this run needs about" in line
    assert "LocalCluster" not in said["short"]

    # 160 kB free: the check passes, the disk fills during the run
    assert rc["full"] == 2, said["full"]
    line = _one_error(said["full"])
    assert line.startswith(f"error: no space left on device on {disk} (tmpfs none): ") and " free" in line
    assert "rerun the same command" in said["full"]

    # freed: the same command finishes, equal to a run that never stopped
    assert rc["resumed"] == 0, said["resumed"]
    assert json.loads((report / "resumed" / "run.json").read_text())["complete"] is True
    fresh = tmp_path / "fresh"
    r = subprocess.run(shlex.split(_segment_cmd(image, fresh)), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    resumed, expected = _labels(report / "resumed"), _labels(fresh)
    assert expected["zarr"].max() >= 10  # not vacuous
    for name in expected:
        np.testing.assert_array_equal(resumed[name], expected[name], err_msg=name)
