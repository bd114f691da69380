"""SAM2 through the spine: CLI run with a random-weight checkpoint (plumbing, not quality)."""

import hashlib
import json
import subprocess
import sys

import pytest

pytest.importorskip("sam2")


@pytest.fixture(scope="module")
def random_checkpoint(tmp_path_factory):
    from remote_samsing.segmenters.sam2 import write_random_checkpoint

    return write_random_checkpoint(tmp_path_factory.mktemp("ckpt") / "sam2.1_hiera_tiny.pt", model_cfg="tiny")


def _cli(*args, timeout=400):
    return subprocess.run([sys.executable, "-m", "remote_samsing", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.timeout(420)
def test_segment_cli_with_sam2_checkpoint(tmp_path, data_dir, random_checkpoint):
    out = tmp_path / "out"
    r = _cli("segment", data_dir / "kampala_crop_3857.tif", out, "--segmenter", "sam2",
             "--checkpoint", random_checkpoint, "--device", "cpu", "--tile-size", "128", "--padding", "16",
             "--segmenter-param", "image_size=256", "--segmenter-param", "points_per_side=4",
             "--segmenter-param", "max_passes=2", "--segmenter-param", "iou_start=0.0",
             "--segmenter-param", "iou_end=0.0", "--segmenter-param", "stability_start=0.0",
             "--segmenter-param", "stability_end=0.0",
             "--n-workers", "1", "--no-progress")
    assert r.returncode == 0, r.stderr[-3000:]
    rec = json.loads((out / "run.json").read_text())
    assert rec["complete"] is True
    assert rec["checkpoint_sha256"] == hashlib.sha256(random_checkpoint.read_bytes()).hexdigest()
    assert rec["segmenter_config"]["params"]["model_cfg"].endswith("sam2.1_hiera_t.yaml")
    blocks = [b for b in rec["blocks"] if not b["skipped"]]
    assert len(blocks) == 4
    for b in blocks:
        st = b["segmenter"]
        assert 1 <= st["passes"] <= 2 and len(st["pass_stats"]) == st["passes"]
    assert (out / "labels.tif").exists()
    # per-object SAM2 attributes reach the vectors (random weights: values are meaningless, plumbing only)
    import geopandas as gpd

    gdf = gpd.read_parquet(out / "segments.parquet")
    assert rec["n_segments"] > 0 and len(gdf) == rec["n_segments"]
    assert {"pass", "pred_iou", "stability"} <= set(gdf.columns)
    assert set(gdf["pass"].unique()) <= {0, 1}
    assert gdf["pred_iou"].notna().all()


def test_sam2_cuda_requested_without_gpu_fails_before_cluster(tmp_path, data_dir, random_checkpoint):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    r = _cli("segment", data_dir / "kampala_crop_3857.tif", tmp_path / "o", "--segmenter", "sam2",
             "--checkpoint", random_checkpoint, "--device", "cuda", timeout=120)
    assert r.returncode == 2
    assert r.stderr.startswith("error:") and "Traceback" not in r.stderr
    assert "dashboard" not in r.stderr
    assert not (tmp_path / "o").exists()


def test_sam2_missing_checkpoint_is_a_one_line_error(tmp_path, data_dir):
    r = _cli("segment", data_dir / "kampala_crop_3857.tif", tmp_path / "o", "--segmenter", "sam2",
             "--checkpoint", tmp_path / "nope.pt", timeout=120)
    assert r.returncode == 2 and r.stderr.startswith("error:")
    assert "nope.pt" in r.stderr


# ---------------------------------------------------------------------------
# SAM2 by default: one checkpoint resolution for segment, info and the Python API
# ---------------------------------------------------------------------------
_TINY = ["--device", "cpu", "--tile-size", "96", "--padding", "8", "--n-workers", "1", "--no-progress",
         "--no-vectors"] + [a for kv in ("image_size=256", "points_per_side=4", "max_passes=1", "iou_start=0.0",
                                         "iou_end=0.0", "stability_start=0.0", "stability_end=0.0")
                            for a in ("--segmenter-param", kv)]


@pytest.fixture(scope="module")
def small_scene(tmp_path_factory, data_dir):
    """A 96 x 96 crop of a bundled GeoTIFF: one block."""
    import rasterio
    from rasterio.windows import Window

    path = tmp_path_factory.mktemp("scene") / "small.tif"
    with rasterio.open(data_dir / "kampala_crop_3857.tif") as src:
        w = Window(0, 0, 96, 96)
        profile = src.profile | {"width": 96, "height": 96, "transform": src.window_transform(w)}
        profile.pop("blockxsize", None), profile.pop("blockysize", None), profile.pop("tiled", None)
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(src.read(window=w))
    return path


def _info_checkpoint_line():
    r = _cli("info", timeout=120)
    assert r.returncode == 0, r.stderr
    return next(line for line in r.stdout.splitlines() if line.startswith("checkpoint"))


def test_no_checkpoint_anywhere_stops_before_any_cluster(tmp_path, small_scene):
    import time

    t0 = time.perf_counter()
    r = _cli("segment", small_scene, tmp_path / "out", timeout=60)
    assert time.perf_counter() - t0 < 10
    assert r.returncode == 2 and "Traceback" not in r.stderr
    first = r.stderr.splitlines()[0]
    assert first.startswith("error: no SAM2 checkpoint") and "REMOTE_SAMSING_CHECKPOINT" in first
    assert "fetch-model" in r.stderr and "--segmenter felzenszwalb" in r.stderr
    assert "dashboard" not in r.stderr and not (tmp_path / "out").exists()
    assert "none" in _info_checkpoint_line()


@pytest.mark.timeout(300)
def test_sam2_runs_by_default_with_the_environment_checkpoint(tmp_path, small_scene, random_checkpoint,
                                                             monkeypatch):
    monkeypatch.setenv("REMOTE_SAMSING_CHECKPOINT", str(random_checkpoint))
    r = _cli("segment", small_scene, tmp_path / "out", *_TINY)
    assert r.returncode == 0, r.stderr[-3000:]
    rec = json.loads((tmp_path / "out" / "run.json").read_text())
    assert rec["segmenter_config"]["class"].endswith("SAM2Segmenter")
    assert rec["checkpoint"] == str(random_checkpoint.absolute())
    assert rec["checkpoint_source"] == "$REMOTE_SAMSING_CHECKPOINT"
    assert rec["checkpoint_sha256"] == hashlib.sha256(random_checkpoint.read_bytes()).hexdigest()
    line = _info_checkpoint_line()
    assert str(random_checkpoint) in line and "from $REMOTE_SAMSING_CHECKPOINT" in line


@pytest.mark.timeout(300)
def test_sam2_finds_the_checkpoint_in_the_models_directory(tmp_path, small_scene, random_checkpoint, monkeypatch):
    import shutil

    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(random_checkpoint, models / random_checkpoint.name)
    monkeypatch.setenv("REMOTE_SAMSING_MODELS", str(models))
    r = _cli("segment", small_scene, tmp_path / "out", *_TINY)
    assert r.returncode == 0, r.stderr[-3000:]
    rec = json.loads((tmp_path / "out" / "run.json").read_text())
    assert rec["checkpoint"] == str(models / random_checkpoint.name)
    assert rec["checkpoint_source"] == "models directory"
    line = _info_checkpoint_line()
    assert str(models / random_checkpoint.name) in line and "from models directory" in line


@pytest.mark.timeout(300)  # a model per worker process: ~20 s on 2 cores
def test_a_run_on_cpu_workers_shows_each_pass_and_one_estimate(tmp_path, data_dir, capsys):
    """Through the pipeline on a cluster of worker processes: the passes come to the client's log. The
    cluster is the test's own and closes with it (a session-wide default client would serve the later
    tests' in-process runs, whose store variables its workers never saw)."""
    from distributed import Client, LocalCluster

    from remote_samsing.config import RunConfig
    from remote_samsing.pipeline import run

    params = dict(model_cfg="tiny", image_size=256, points_per_side=4, max_passes=1, iou_start=0.0, iou_end=0.0,
                  stability_start=0.0, stability_end=0.0, points_per_batch=16, random_weights=True)
    cfg = RunConfig(segmenter_params=params, tile_size=200, padding=16, device="cpu", vectors=False)
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0", processes=True) as lc, \
            Client(lc) as client:
        run(str(data_dir / "neon_osbs.tif"), tmp_path / "out", config=cfg, client=client)
    err = capsys.readouterr().err.splitlines()
    passes = [line for line in err if line.startswith("segment-stage: block (")]
    assert sorted(line.split(" pass ")[0] for line in passes) == [
        f"segment-stage: block ({y}, {x})" for y in (0, 1) for x in (0, 1)], err
    estimate = [line for line in err if line.startswith("SAM2 on CPU: ~")]
    assert len(estimate) == 1 and "for 4 blocks on 2 workers" in estimate[0]
    assert "preview" not in estimate[0]  # 256 px and 4 x 4 prompts are lighter than the preview
