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
        # coordinates near 10^6 m: a 1-px polygon's area carries ~1e-11 m² of rounding
        assert areas[label] == pytest.approx(counts[label] * px_area, rel=1e-9, abs=1e-9)
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
        (["segment", "IMG", "EXISTING", "--segmenter", "felzenszwalb"], "exists"),
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


def test_evaluate_cli_writes_json_markdown_and_figure(tmp_path, data_dir):
    from remote_samsing import segment

    import rioxarray

    # the left part of the committed crop: the buildings beyond it are reported dropped
    image = tmp_path / "image.tif"
    rioxarray.open_rasterio(data_dir / "atlanta_crop_32616.tif").isel(x=slice(0, 300)).rio.to_raster(image)
    labels = segment(image, segmenter="felzenszwalb", tile_size=128, padding=16, segmenter_params={"scale": 200})
    labels.rio.to_raster(tmp_path / "labels.tif")
    gt = data_dir / "atlanta_crop_buildings.geojson"
    res = CliRunner().invoke(cli, ["evaluate", str(tmp_path / "labels.tif"), str(gt), "--out",
                                   str(tmp_path / "report.json"), "--image", str(image)])
    assert res.exit_code == 0, res.output
    rep = json.loads((tmp_path / "report.json").read_text())
    assert (tmp_path / "report.md").exists() and (tmp_path / "report.png").exists()
    text = json.dumps(rep)
    assert "det50" in text and "biou" in text
    # the raster holds only part of the buildings: the others are reported dropped, in one line
    n_out = rep["summary"]["n_objects_outside"]
    assert n_out > 0
    assert f"warning: {n_out} of 22 ground-truth objects lie entirely outside" in res.output
    assert (tmp_path / "report.md").read_text().startswith("# Segmentation report: ")


def _utm_labels_tif(write_geotiff):
    from rasterio.transform import from_origin

    lab = np.zeros((20, 20), np.int32)
    lab[2:10, 2:8] = 1
    return write_geotiff(lab, "labels.tif", transform=from_origin(500000, 5000000, 1.0, 1.0))


def _boxes_geojson(path, boxes, kinds):
    import geopandas as gpd
    import shapely

    gdf = gpd.GeoDataFrame(geometry=[shapely.box(*b) for b in boxes], crs="EPSG:32633").to_crs("EPSG:4326")
    fc = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"kind": k}, "geometry": shapely.geometry.mapping(g)}
        for k, g in zip(kinds, gdf.geometry)]}
    path.write_text(json.dumps(fc))
    return path


def test_evaluate_cli_no_object_on_raster_is_one_line_error(tmp_path, write_geotiff):
    labels = _utm_labels_tif(write_geotiff)
    gt = _boxes_geojson(tmp_path / "far.geojson", [(600002, 4999990, 600008, 4999998)], ["roof"])
    res = CliRunner().invoke(cli, ["evaluate", str(labels), str(gt), "--out", str(tmp_path / "r.json")])
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert lines[0].startswith("error: none of the 1 ground-truth objects lies on the label raster")
    assert "[500000.0, 4999980.0, 500020.0, 5000000.0]" in lines[0] and "EPSG:32633" in lines[0]
    assert lines[1].startswith("hint:") and len(lines) == 2
    assert "Traceback" not in res.output and not (tmp_path / "r.json").exists()


def test_evaluate_cli_partly_outside_warns_and_null_classes_are_unlabelled(tmp_path, write_geotiff):
    labels = _utm_labels_tif(write_geotiff)
    gt = _boxes_geojson(tmp_path / "gt.geojson",
                        [(500002, 4999990, 500008, 4999998), (500012, 4999985, 500016, 4999990),
                         (500030, 4999990, 500040, 4999998)],
                        ["roof", None, 3])
    out = tmp_path / "r.json"
    res = CliRunner().invoke(cli, ["evaluate", str(labels), str(gt), "--classes", "kind", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "warning: 1 of 3 ground-truth objects lie entirely outside the label raster" in res.output
    rep = json.loads(out.read_text())
    assert [o["class"] for o in rep["objects"]] == ["roof", "unlabelled"]
    assert rep["summary"]["n_objects_outside"] == 1
    md = out.with_suffix(".md").read_text()
    assert "| unlabelled | 1 |" in md and "| Other |" not in md


def test_evaluate_cli_image(tmp_path, write_geotiff):
    labels = _utm_labels_tif(write_geotiff)
    img = write_geotiff(np.random.default_rng(0).integers(0, 255, (3, 20, 20), dtype=np.uint8), "img.tif")
    gt = _boxes_geojson(tmp_path / "gt.geojson", [(500002, 4999990, 500008, 4999998)], ["roof"])
    out = tmp_path / "r.json"
    res = CliRunner().invoke(cli, ["evaluate", str(labels), str(gt), "--out", str(out), "--image", str(img)])
    assert res.exit_code == 0, res.output
    assert out.with_suffix(".png").stat().st_size > 1000
    res = CliRunner().invoke(cli, ["evaluate", str(labels), str(gt), "--out", str(tmp_path / "x.json"),
                                   "--image", str(tmp_path / "missing.tif")])
    assert res.exit_code == 2 and res.output.startswith("error: image") and "does not exist" in res.output
    assert not (tmp_path / "x.json").exists()


@pytest.mark.filterwarnings("ignore:'crs' was not provided:UserWarning")
def test_evaluate_cli_vectors_without_crs_is_one_line_error(tmp_path, write_geotiff):
    labels = _utm_labels_tif(write_geotiff)
    gt = tmp_path / "nocrs.gpkg"
    import geopandas as gpd
    import shapely

    gpd.GeoDataFrame(geometry=[shapely.box(500002, 4999990, 500008, 4999998)]).to_file(gt)
    res = CliRunner().invoke(cli, ["evaluate", str(labels), str(gt), "--out", str(tmp_path / "r.json")])
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert lines[0] == "error: the ground-truth vectors have no CRS but the label raster is in EPSG:32633"
    assert lines[1].startswith("hint: declare the CRS")


def test_progress_in_a_log_file_is_a_start_and_a_final_line_per_stage(tmp_path, data_dir):
    """stderr to a file (SLURM output, CI, nohup): no bar redraws, one start and one final line per stage."""
    log = tmp_path / "run.log"
    with open(log, "w") as fh:
        r = subprocess.run([sys.executable, "-m", "remote_samsing", "segment", str(data_dir / "kampala_crop_3857.tif"),
                            str(tmp_path / "out"), "--segmenter", "felzenszwalb", "--tile-size", "128",
                            "--padding", "16", "--n-workers", "1"], stdout=fh, stderr=subprocess.STDOUT, timeout=300)
    text = log.read_text()
    assert r.returncode == 0, text
    assert "\r" not in text
    stages = {}
    for line in text.splitlines():
        name, _, rest = line.partition(": ")
        if rest.startswith("started,"):
            stages.setdefault(name, []).append("start")
        elif " done in " in rest:
            stages.setdefault(name, []).append("end")
    assert {"segment-stage", "merge", "polygonize", "dissolve"} <= set(stages)
    assert all(events == ["start", "end"] for events in stages.values()), stages


def test_an_image_without_georeferencing_warns_once(tmp_path, data_dir):
    """A PNG through segment and vectorize: the tool's one warning about the missing CRS, as one line, and no
    source lines of other libraries (rasterio, pyogrio, torch)."""
    from PIL import Image

    with rasterio.open(data_dir / "kampala_crop_3857.tif") as src:
        Image.fromarray(np.moveaxis(src.read()[:3], 0, -1)).save(tmp_path / "scene.png")
    r = _run("segment", tmp_path / "scene.png", tmp_path / "out", "--segmenter", "felzenszwalb", "--tile-size", "128",
             "--padding", "16", "--n-workers", "1", "--no-progress")
    assert r.returncode == 0, r.stderr
    warned = [line for line in r.stderr.splitlines() if "warning" in line.lower()]
    assert len(warned) == 1 and warned[0].startswith("warning: input") and "no CRS" in warned[0]
    assert f"`{tmp_path / 'scene.png'}`" in warned[0]
    assert "site-packages" not in r.stderr
    r = _run("vectorize", tmp_path / "out" / "labels.tif", tmp_path / "v.gpkg")
    assert r.returncode == 0, r.stderr
    warned = [line for line in r.stderr.splitlines() if "warning" in line.lower()]
    assert len(warned) == 1 and warned[0].startswith("warning: label raster has no CRS")
    assert "site-packages" not in r.stderr


# ---------------------------------------------------------------------------
# a window that cannot be read
# ---------------------------------------------------------------------------
def _damaged_copy(tmp_path, data_dir):
    """A COG copy of a bundled scene (64-px tiles, no compression) and the same file cut short: the header
    is intact, the last tiles are missing. Returns (good, damaged, blocks whose padded window fails)."""
    import rasterio.shutil
    from rasterio.windows import Window

    from remote_samsing.tiling import TilingPlan

    good = tmp_path / "good.tif"
    rasterio.shutil.copy(data_dir / "kampala_crop_3857.tif", good, driver="COG", blocksize=64, compress="NONE",
                         overviews="NONE")
    damaged = tmp_path / "scene.tif"
    data = good.read_bytes()
    damaged.write_bytes(data[: int(len(data) * 0.85)])
    plan = TilingPlan(shape=(256, 256), tile_size=128, padding=16)
    failing = set()
    with rasterio.open(damaged) as src:
        for b in plan.block_ids():
            y0, y1, x0, x1 = plan.padded_window(b).as_tuple()
            try:
                src.read(window=Window(x0, y0, x1 - x0, y1 - y0))
            except rasterio.errors.RasterioIOError:
                failing.add(b)
    assert 0 < len(failing) < plan.n_blocks  # some blocks read, a later one fails
    return good, damaged, failing


@pytest.mark.timeout(300)
def test_a_damaged_input_names_the_window_then_skips_it_then_resumes_once_repaired(tmp_path, data_dir):
    import shutil

    good, damaged, failing = _damaged_copy(tmp_path, data_dir)
    out = tmp_path / "out"
    args = ["segment", damaged, out, "--segmenter", "felzenszwalb", "--tile-size", "128", "--padding", "16",
            "--n-workers", "1", "--no-progress", "--retries", "0"]  # vectors on: they read the validity too
    # default: a typed one-line error naming the file and the window; the run stays incomplete
    r = _run(*args)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    err = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "cannot read" in err[0] and str(damaged) in err[0]
    assert "rows " in err[0] and "columns " in err[0] and "EPSG:3857" in err[0] and "RasterioIOError" in err[0]
    assert "--skip-failed-blocks" in r.stderr  # the hint
    rec = json.loads((out / "run.json").read_text())
    assert rec["complete"] is False and tuple(rec["error"]["block"]) in failing
    # --skip-failed-blocks: complete, but partial, listing exactly the failing blocks (left 0)
    r = _run(*args, "--skip-failed-blocks")
    assert r.returncode == 0, r.stderr
    assert "PARTIAL" in r.stdout and f"{len(failing)} block(s) failed" in r.stdout
    rec = json.loads((out / "run.json").read_text())
    assert rec["complete"] is True and rec["partial"] is True
    assert {tuple(b["block"]) for b in rec["failed_blocks"]} == failing
    assert all("RasterioIOError" in b["error"] for b in rec["failed_blocks"])
    with rasterio.open(out / "labels.tif") as dst:
        lab = dst.read(1)
    for iy, ix in failing:
        assert not lab[iy * 128 : (iy + 1) * 128, ix * 128 : (ix + 1) * 128].any()
    # the file repaired: the same command segments only the failed blocks; products equal a clean run's
    shutil.copy(good, damaged)
    r = _run(*args, "--skip-failed-blocks")
    assert r.returncode == 0, r.stderr
    rec = json.loads((out / "run.json").read_text())
    assert rec["blocks_segmented_this_run"] == len(failing)
    assert rec["partial"] is False and rec["failed_blocks"] == []
    assert "sources changed since the last run (1 edited): no staged block was read from them" in r.stderr
    clean = tmp_path / "clean"
    assert _run(*([args[0], good, clean] + args[3:])).returncode == 0
    with rasterio.open(out / "labels.tif") as a, rasterio.open(clean / "labels.tif") as b:
        np.testing.assert_array_equal(a.read(1), b.read(1))


@pytest.mark.timeout(300)
def test_many_inputs_then_outdir_segment_and_ingest_as_the_single_file(tmp_path, data_dir):
    from remote_samsing.testing import assert_equivalent_labels, cut_tiles

    scene = data_dir / "neon_osbs.tif"
    tiles = cut_tiles(scene, tmp_path / "tiles", rows=2, cols=3)
    args = ["--segmenter", "felzenszwalb", "--tile-size", "128", "--padding", "16", "--n-workers", "1",
            "--no-progress", "--no-vectors"]
    r = _run("segment", *tiles, tmp_path / "many", *args)
    assert r.returncode == 0, r.stderr
    assert _run("segment", scene, tmp_path / "one", *args).returncode == 0
    with rasterio.open(tmp_path / "many" / "labels.tif") as a, rasterio.open(tmp_path / "one" / "labels.tif") as b:
        assert a.transform == b.transform and a.crs == b.crs
        assert_equivalent_labels(a.read(1), b.read(1))
    rec = json.loads((tmp_path / "many" / "run.json").read_text())
    assert rec["input"]["path"] == [str(t) for t in tiles] and len(rec["input"]["sources"]) == 6
    r = _run("ingest", tiles[0].parent, tmp_path / "m.zarr", "--tile-size", "128")
    assert r.returncode == 0, r.stderr
    import remote_samsing as rs

    with rasterio.open(scene) as src:
        np.testing.assert_array_equal(rs.open_mosaic(tmp_path / "m.zarr").values, src.read())
