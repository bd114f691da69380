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
