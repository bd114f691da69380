"""Tests for remote_samsing.metrics: the paper's metrics on hand-computed cases."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from affine import Affine

import rioxarray  # noqa: F401

from remote_samsing.exceptions import CRSMismatchError
from remote_samsing.metrics import (
    asa,
    boundary_band,
    boundary_iou,
    coverage,
    evaluate,
    greedy_oracle,
    write_report,
)

from conftest import SHARED  # noqa: E402

KAMPALA = SHARED / "kampala-b"


def _split_case():
    """4 x 6 image, one 8-px object split across two segments with leakage.

    GT object o (1): rows 0-1, cols 0-3 (8 px); object 2: rows 2-3, cols 0-2 (6 px).
    Segment A=1: rows 0-1, cols 0-1 (4 px, all inside o).
    Segment B=2: rows 0-1, cols 2-4 (6 px; 4 inside o, 2 leak at col 4).
    Object 2 lies on unsegmented pixels (label 0) -> missed.
    """
    gt = np.zeros((4, 6), np.int32)
    gt[0:2, 0:4] = 1
    gt[2:4, 0:3] = 2
    lab = np.zeros((4, 6), np.int32)
    lab[0:2, 0:2] = 1
    lab[0:2, 2:5] = 2
    return lab, gt


def test_coverage():
    lab, _ = _split_case()
    # 10 labelled pixels of 24 -> 41.666...%
    assert coverage(lab) == pytest.approx(100 * 10 / 24)
    assert coverage(np.zeros((3, 3), int)) == 0.0


def test_greedy_oracle_split_with_leakage():
    # step 1: IoU(A) = 4/8 = 0.5; IoU(B) = 4/(6+8-4) = 0.4 -> take A
    # step 2: IoU(A+B) = (4+4)/(4+6+8-8) = 8/10 = 0.8 > 0.5 -> take B
    idx, iou = greedy_oracle(np.array([4, 4]), np.array([4, 6]), 8)
    assert idx.tolist() == [0, 1]
    assert iou == pytest.approx(0.8)


def test_greedy_oracle_stops_when_leakage_hurts():
    # object 10 px. A: 8 px, all inside -> 0.8. B: 20 px, 2 inside:
    # A+B = 10/(8+20+10-10) = 10/28 = 0.357 < 0.8 -> stop after A
    idx, iou = greedy_oracle(np.array([8, 2]), np.array([8, 20]), 10)
    assert idx.tolist() == [0]
    assert iou == pytest.approx(0.8)
    # no candidate -> empty reconstruction, IoU 0
    idx, iou = greedy_oracle(np.array([], int), np.array([], int), 10)
    assert idx.size == 0 and iou == 0.0


def test_evaluate_split_leakage_missed():
    lab, gt = _split_case()
    rep = evaluate(lab, gt, raster_mode="instance", min_pixels=1)
    obj = rep.objects.set_index("object")
    # object 1: greedy IoU 0.8 with 2 segments, best single 0.5 (counts: >= 0.5)
    assert obj.loc[1, "iou"] == pytest.approx(0.8)
    assert obj.loc[1, "ss_iou"] == pytest.approx(0.5)
    assert obj.loc[1, "n_segments"] == 2
    assert obj.loc[1, "category"] == "detected"
    # object 2: only unsegmented pixels -> missed, IoU 0, BIoU 0, 0 segments
    assert obj.loc[2, "iou"] == 0.0 and obj.loc[2, "biou"] == 0.0
    assert obj.loc[2, "n_segments"] == 0 and obj.loc[2, "category"] == "missed"
    s = rep.summary
    assert s["det50"] == pytest.approx(0.5)  # 1 of 2
    assert s["ss_det50"] == pytest.approx(0.5)  # 0.5 >= 0.5 counts
    assert s["miou"] == pytest.approx(0.4)  # (0.8 + 0) / 2
    assert s["n_bar"] == pytest.approx(1.0)  # (2 + 0) / 2
    assert s["coverage_pct"] == pytest.approx(100 * 10 / 24)


def test_single_segment_leakage():
    # object 3x3 = 9 px inside one 4x4 = 16 px segment: IoU = 9/16
    gt = np.zeros((6, 6), np.int32)
    gt[1:4, 1:4] = 1
    lab = np.zeros((6, 6), np.int32)
    lab[0:4, 0:4] = 7
    rep = evaluate(lab, gt, raster_mode="instance", min_pixels=1)
    assert rep.objects.loc[0, "iou"] == pytest.approx(9 / 16)
    assert rep.objects.loc[0, "ss_iou"] == pytest.approx(9 / 16)
    assert rep.summary["det50"] == 1.0


def test_empty_segmentation():
    lab, gt = _split_case()
    empty = np.zeros_like(lab)
    rep = evaluate(empty, gt, raster_mode="instance", min_pixels=1)
    s = rep.summary
    assert s["coverage_pct"] == 0.0
    assert s["det50"] == 0.0 and s["miou"] == 0.0 and s["biou"] == 0.0 and s["n_bar"] == 0.0
    # default ASA credits nothing for unsegmented pixels
    assert s["asa"] == 0.0
    # paper variant: label 0 is one segment covering everything; its majority
    # class is "object" (8 + 6 = 14 px against 10 px of "Other") -> 14/24
    rep_p = evaluate(empty, gt, raster_mode="instance", min_pixels=1, paper_asa=True)
    assert rep_p.summary["asa"] == pytest.approx(14 / 24)


def test_asa_by_hand():
    lab, gt = _split_case()
    classes = (gt > 0).astype(int)  # 1 = object, 0 = Other
    # segment A (4 px): all class 1 -> credits 4; segment B (6 px): 4 class 1,
    # 2 Other -> class 1, credits 4; label 0 (14 px): 6 class 1, 8 Other.
    g, per = asa(lab, classes)
    assert g == pytest.approx(8 / 24)
    # per class: class 1 has 14 px, 8 credited; Other has 10 px, 0 credited
    assert per[1] == pytest.approx(8 / 14) and per[0] == 0.0
    g_p, per_p = asa(lab, classes, paper_asa=True)
    # paper: label 0 -> majority Other (8 px) credited too -> 16/24
    assert g_p == pytest.approx(16 / 24)
    assert per_p[0] == pytest.approx(8 / 10) and per_p[1] == pytest.approx(8 / 14)


def test_boundary_band_and_biou_by_hand():
    a = np.zeros((12, 12), bool)
    a[2:10, 2:10] = True  # 8x8
    # erosion by 3x3 thrice leaves rows/cols 5-6: 2x2 core -> band 64 - 4 = 60
    assert boundary_band(a, 3).sum() == 60
    b = np.zeros((12, 12), bool)
    b[2:10, 3:11] = True  # shifted one column
    # bands: A∩B = 8x7 = 56 minus cores (rows 5-6, cols 5-7: 6 px) = 50
    # union = 60 + 60 - 50 = 70 -> 5/7
    assert boundary_iou(a, b, 3) == pytest.approx(5 / 7)
    # a mask touching the array edge: its edge rows count as band
    c = np.ones((4, 4), bool)
    assert boundary_band(c, 1).sum() == 12  # 16 - 2x2 core


def test_evaluate_biou_on_reconstruction():
    gt = np.zeros((12, 12), np.int32)
    gt[2:10, 3:11] = 1
    lab = np.zeros((12, 12), np.int32)
    lab[2:10, 2:10] = 4
    rep = evaluate(lab, gt, raster_mode="instance", min_pixels=1)
    o = rep.objects.iloc[0]
    assert o["iou"] == pytest.approx(56 / 72)  # 8x7 overlap, union 64+64-56
    assert o["biou"] == pytest.approx(5 / 7)


def test_per_class_and_instance_weighted_global():
    # class raster: class 1 has two 4-connected blocks, class 2 one block
    g = np.zeros((6, 6), np.int32)
    g[0:2, 0:2] = 1
    g[4:6, 0:2] = 1
    g[0:2, 3:6] = 2
    lab = np.zeros((6, 6), np.int32)
    lab[0:2, 0:2] = 1  # exact match of the first class-1 object
    lab[0:2, 3:6] = 2  # exact match of the class-2 object
    rep = evaluate(lab, g, classes={1: "tree", 2: "roof"}, min_pixels=1)
    rows = {r["class"]: r for r in rep.rows}
    assert rows["tree"]["n_objects"] == 2 and rows["roof"]["n_objects"] == 1
    assert rows["tree"]["det50"] == 0.5 and rows["tree"]["miou"] == 0.5
    assert rows["roof"]["det50"] == 1.0 and rows["roof"]["miou"] == 1.0
    # instance-weighted: 2 of 3 objects, not the mean of class rows (0.75)
    assert rows["Global"]["det50"] == pytest.approx(2 / 3)
    assert rows["Global"]["miou"] == pytest.approx(2 / 3)
    # ASA: tree 8 px, 4 credited; roof 6 px all credited; "Other" 22 px none
    assert rows["tree"]["asa"] == pytest.approx(0.5)
    assert rows["roof"]["asa"] == pytest.approx(1.0)
    assert rows["Global"]["asa"] == pytest.approx(10 / 36)


def test_small_objects_skipped():
    g = np.zeros((10, 10), np.int32)
    g[0:3, 0:3] = 1  # 9 px < 10 -> skipped
    g[5:9, 5:9] = 1  # 16 px kept
    rep = evaluate(np.ones((10, 10), np.int32), g)
    assert rep.summary["n_objects"] == 1 and rep.summary["n_objects_skipped"] == 1


def test_rgb_colour_table():
    rgb = np.zeros((6, 6, 3), np.uint8)
    rgb[:] = (132, 41, 246)  # Land
    rgb[1:5, 1:5] = (60, 16, 152)  # Building, 16 px
    lab = np.ones((6, 6), np.int32)
    lab[1:5, 1:5] = 2
    table = {"Building": (60, 16, 152), "Land": (132, 41, 246)}
    rep = evaluate(lab, rgb, colour_table=table, ignore_classes=["Land"])
    assert rep.summary["n_objects"] == 1
    assert rep.objects.loc[0, "class"] == "Building" and rep.objects.loc[0, "iou"] == 1.0
    assert rep.summary["asa"] == 1.0


def _utm_labels(arr):
    t = Affine(1.0, 0.0, 500000.0, 0.0, -1.0, 5000000.0)
    return xr.DataArray(arr, dims=("y", "x")).rio.write_crs("EPSG:32633").rio.write_transform(t)


def test_vector_ground_truth_reprojected(tmp_path):
    import geopandas as gpd
    import shapely

    # labels: 20x20 px of 1 m; objects as UTM boxes, saved in EPSG:4326
    boxes = [
        shapely.box(500002, 4999990, 500008, 4999998),  # cols 2-7, rows 2-9: 48 px
        shapely.box(500012, 4999985, 500015, 4999988),  # 3x3 = 9 px < 10: skipped
        shapely.box(500006, 4999988, 500010, 4999992),  # overlaps box 0; pasted later
    ]
    gdf = gpd.GeoDataFrame({"kind": ["roof", "car", "roof"]}, geometry=boxes, crs="EPSG:32633")
    path = tmp_path / "gt.geojson"
    gdf.to_crs("EPSG:4326").to_file(path)
    lab = np.zeros((20, 20), np.int32)
    lab[2:10, 2:8] = 1
    rep = evaluate(_utm_labels(lab), path, classes="kind")
    assert rep.summary["n_objects"] == 2 and rep.summary["n_objects_skipped"] == 1
    obj = rep.objects.set_index("object")
    # box 2 (rows 8-11, cols 6-9, 16 px) overwrote 4 px of box 0 -> 44 px left
    assert obj.loc[1, "n_pixels"] == 44 and obj.loc[2, "n_pixels"] == 16
    # object 1 inside segment 1 (48 px): IoU 44/48
    assert obj.loc[1, "iou"] == pytest.approx(44 / 48)
    # object 2: segment 1 overlaps it by 4 px -> IoU 4/(48+16-4) = 1/15 -> coarse
    assert obj.loc[2, "iou"] == pytest.approx(4 / 60) and obj.loc[2, "category"] == "coarse"
    # GeoParquet too, with the same answer
    pq = tmp_path / "gt.parquet"
    gdf.to_parquet(pq)
    rep2 = evaluate(_utm_labels(lab), pq, classes="kind")
    assert rep2.objects["n_pixels"].tolist() == rep.objects["n_pixels"].tolist()


def test_vector_without_crs_against_georeferenced_labels_is_an_error():
    import geopandas as gpd
    import shapely

    gdf = gpd.GeoDataFrame(geometry=[shapely.box(0, 0, 5, 5)])
    with pytest.raises(CRSMismatchError):
        evaluate(_utm_labels(np.ones((8, 8), np.int32)), gdf)


def test_box_ground_truth_csv(tmp_path):
    # box 10x10 px at x 2-12, y 4-14; segment covers x 2-12, y 4-16 (10x12)
    csv = tmp_path / "boxes.csv"
    csv.write_text("image_path,xmin,ymin,xmax,ymax,label\nimg.tif,2,4,12,14,Tree\nother.tif,0,0,5,5,Tree\n")
    lab = np.zeros((20, 20), np.int32)
    lab[4:16, 2:12] = 3
    rep = evaluate(lab, csv, image_name="img.tif")
    assert rep.summary["n_objects"] == 1
    # box IoU of segment bbox (2,4,12,16) with (2,4,12,14) = 100/120
    assert rep.objects.loc[0, "iou"] == pytest.approx(100 / 120)
    assert np.isnan(rep.summary["asa"]) and np.isnan(rep.objects.loc[0, "biou"])


def test_write_report(tmp_path):
    import json

    lab, gt = _split_case()
    rep = evaluate(lab, gt, raster_mode="instance", min_pixels=1)
    paths = write_report(rep, tmp_path / "report.json")
    data = json.loads(paths["json"].read_text())
    assert data["summary"]["det50"] == 0.5 and len(data["objects"]) == 2
    md = paths["markdown"].read_text()
    assert "| *Global* | 2 | 50.0 |" in md
    assert paths["figure"].stat().st_size > 1000


@pytest.mark.shared
@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")
def test_kampala_felzenszwalb_baseline(tmp_path):
    import geopandas as gpd
    import rasterio
    import shapely
    from skimage.segmentation import felzenszwalb

    tif = KAMPALA / "mosaic_B_z21_epsg3857.tif"
    geojson = KAMPALA / "labels.geojson"
    img = rioxarray.open_rasterio(tif)
    rgb = np.moveaxis(img.values, 0, -1)[::2, ::2]
    seg = felzenszwalb(rgb, scale=200, sigma=0.5, min_size=20) + 1
    # upsample the half-resolution segmentation back onto the full grid
    seg = np.repeat(np.repeat(seg, 2, axis=0), 2, axis=1)[: img.sizes["y"], : img.sizes["x"]]
    labels = img.isel(band=0, drop=True).copy(data=seg.astype(np.uint32))
    rep = evaluate(labels, geojson)

    # independent expected count: polygons reprojected with geopandas, clipped
    # to the raster footprint, at least 10 pixel-areas of ground
    gt = gpd.read_file(geojson).to_crs("EPSG:3857")
    with rasterio.open(tif) as src:
        footprint = shapely.box(*src.bounds)
        px_area = abs(src.transform.a * src.transform.e)
    assert gt.intersects(footprint).sum() == 98  # README: 98 intersect
    assert gt.within(footprint).sum() == 65  # README: 65 fully inside
    expected = int((gt.geometry.intersection(footprint).area / px_area >= 10).sum())
    assert rep.summary["n_objects"] == expected
    s = rep.summary
    assert 0.0 <= s["miou"] <= 1.0 and 0.0 <= s["biou"] <= 1.0 and s["coverage_pct"] == 100.0
    assert s["det50"] >= s["ss_det50"]  # the oracle can only add segments
    write_report(rep, tmp_path / "kampala.json")
    assert (tmp_path / "kampala.png").exists()
