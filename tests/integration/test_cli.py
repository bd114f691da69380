"""The command line: end-to-end run on a real scene, YAML config, one-line errors."""

import json
import subprocess
import sys

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner

from remote_samsing.cli import cli


def _run(*args):
    return subprocess.run(
        [sys.executable, "-m", "remote_samsing", *map(str, args)], capture_output=True, text=True, timeout=300
    )


def test_segment_cli_end_to_end_with_embedded_cluster(tmp_path, data_dir):
    out = tmp_path / "out"
    r = _run("segment", data_dir / "neon_osbs.tif", out, "--segmenter", "felzenszwalb",
             "--segmenter-param", "scale=100", "--tile-size", "128", "--padding", "16", "--n-workers", "2",
             "--merge-param", "remove_small=false",
             "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "dashboard:" in r.stderr
    rec = json.loads((out / "run.json").read_text())
    assert rec["complete"] is True
    assert rec["parameters"]["segmenter_params"] == {"scale": 100}
    assert rec["parameters"]["merge_params"] == {"remove_small": False}
    assert rec["merge_stats"]["totals"]["labels_after"] == rec["n_segments"]
    faces = json.loads((out / "merge_faces.json").read_text())
    assert len(faces) == 2 * 4 * 3 + 2 * 3 * 3  # 24 edge faces + 18 diagonal (corner) faces in a 4x4 grid
    assert rec["tiling"]["n_blocks"] == 16  # 400 = 3*128 + 16, and 16 >= P is its own block
    with rasterio.open(out / "labels.tif") as dst, rasterio.open(data_dir / "neon_osbs.tif") as src:
        assert dst.crs == src.crs and dst.transform.almost_equals(src.transform)
        lab = dst.read(1)
        nodata = (src.read() == src.nodata).all(axis=0)  # this NEON file declares nodata=255
    assert (lab[nodata] == 0).all() and (lab[~nodata] >= 1).all()
    assert lab.max() == rec["n_segments"]
    import geopandas as gpd

    gdf = gpd.read_parquet(out / "segments.parquet")
    assert gdf.crs == rasterio.open(data_dir / "neon_osbs.tif").crs
    assert sorted(gdf["label"]) == list(range(1, rec["n_segments"] + 1))  # one feature per object
    px_area = 0.1 * 0.1  # NEON 0.1 m pixels
    areas = dict(zip(gdf["label"], gdf["area_m2"]))
    counts = np.bincount(lab.ravel())
    for label in (1, rec["n_segments"] // 2, rec["n_segments"]):
        assert areas[label] == pytest.approx(counts[label] * px_area, rel=1e-9)
    assert gdf["touches_nodata"].any()  # this scene declares nodata pixels


def test_yaml_config_maps_onto_flags(tmp_path, data_dir):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("segmenter: threshold\nsegmenter_params: {threshold: 100}\ntile_size: 200\npadding: 8\n"
                   "merge: none\nvectors: false\nprogress: false\nn_workers: 1\n")
    out = tmp_path / "out"
    r = _run("segment", data_dir / "neon_osbs.tif", out, "--config", cfg, "--padding", "10")
    assert r.returncode == 0, r.stderr
    rec = json.loads((out / "run.json").read_text())
    assert rec["parameters"]["tile_size"] == 200 and rec["parameters"]["padding"] == 10  # flag wins
    assert rec["parameters"]["segmenter"] == "threshold"


@pytest.mark.parametrize(
    "args,needle",
    [
        (["segment", "missing.tif", "OUT"], "does not exist"),
        (["segment", "IMG", "OUT", "--tile-size", "0"], "tile_size"),
        (["segment", "IMG", "OUT", "--tile-size", "100", "--padding", "50"], "padding"),
        (["segment", "IMG", "OUT", "--segmenter", "nope"], "unknown segmenter"),
        (["segment", "IMG", "OUT", "--bands", "9"], "out of range"),
        (["segment", "IMG", "OUT", "--config", "BADYAML"], "unknown configuration key"),
        (["segment", "IMG", "EXISTING"], "exists"),
    ],
)
def test_cli_errors_are_one_line_with_hint(tmp_path, data_dir, args, needle):
    (tmp_path / "bad.yaml").write_text("tile_sise: 3\n")
    (tmp_path / "existing").mkdir()
    (tmp_path / "existing" / "x").write_text("")
    subst = {"IMG": str(data_dir / "neon_osbs.tif"), "OUT": str(tmp_path / "o"),
             "BADYAML": str(tmp_path / "bad.yaml"), "EXISTING": str(tmp_path / "existing")}
    args = [subst.get(a, a) for a in args]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert lines[0].startswith("error:") and needle in lines[0]
    assert "Traceback" not in res.output
    assert not (tmp_path / "o").exists()  # nothing written before validation


def test_debug_shows_traceback(tmp_path):
    from remote_samsing.exceptions import InputNotFoundError

    res = CliRunner().invoke(cli, ["--debug", "segment", str(tmp_path / "nope.tif"), str(tmp_path / "o")])
    assert isinstance(res.exception, InputNotFoundError)


def test_ingest_then_segment_zarr(tmp_path, data_dir):
    z = tmp_path / "m.zarr"
    res = CliRunner().invoke(cli, ["ingest", str(data_dir / "kampala_crop_3857.tif"), str(z), "--tile-size", "128"])
    assert res.exit_code == 0, res.output
    from remote_samsing.io import open_mosaic

    arr = open_mosaic(z)
    assert arr.rio.crs.to_epsg() == 3857
    with rasterio.open(data_dir / "kampala_crop_3857.tif") as src:
        np.testing.assert_array_equal(arr.values, src.read())


def test_info_runs():
    res = CliRunner().invoke(cli, ["info"])
    assert res.exit_code == 0, res.output
    assert "dask" in res.output and "gpus" in res.output


@pytest.mark.shared
def test_evaluate_cli_writes_json_markdown_and_figure(tmp_path, data_dir, shared_data):
    from remote_samsing import segment

    labels = segment(data_dir / "kampala_crop_3857.tif", segmenter="felzenszwalb", tile_size=128, padding=16,
                     segmenter_params={"scale": 200})
    labels.rio.to_raster(tmp_path / "labels.tif")
    gt = shared_data / "kampala-b" / "labels.geojson"
    res = CliRunner().invoke(cli, ["evaluate", str(tmp_path / "labels.tif"), str(gt), "--out",
                                   str(tmp_path / "report.json")])
    assert res.exit_code == 0, res.output
    rep = json.loads((tmp_path / "report.json").read_text())
    assert (tmp_path / "report.md").exists() and (tmp_path / "report.png").exists()
    text = json.dumps(rep)
    assert "det50" in text and "biou" in text
