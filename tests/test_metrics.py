"""Tests for remote_samsing.metrics: the paper's metrics on hand-computed cases."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from affine import Affine

import rioxarray  # noqa: F401

from remote_samsing.exceptions import ConfigError, CRSMismatchError, RemoteSamsingError
from remote_samsing.metrics import (
    CATEGORY_DEFINITIONS,
    METRIC_DEFINITIONS,
    GroundTruthOutsideWarning,
    NoOverlapError,
    asa,
    boundary_band,
    boundary_iou,
    coverage,
    evaluate,
    greedy_oracle,
    write_report,
)

DATA = Path(__file__).parent / "data"
ATLANTA_TIF = DATA / "atlanta_crop_32616.tif"
ATLANTA_GT = DATA / "atlanta_crop_buildings.geojson"


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
    with pytest.raises(CRSMismatchError) as exc:
        evaluate(_utm_labels(np.ones((8, 8), np.int32)), gdf)
    msg = str(exc.value)
    assert "vectors have no CRS" in msg and "EPSG:32633" in msg  # what is missing, and the raster's CRS
    assert "set_crs" in exc.value.hint  # what to do


def test_georeferenced_vectors_against_raster_without_crs_is_an_error():
    import geopandas as gpd
    import shapely

    gdf = gpd.GeoDataFrame(geometry=[shapely.box(500001, 4999990, 500006, 4999995)], crs="EPSG:32633")
    with pytest.raises(CRSMismatchError) as exc:
        evaluate(np.ones((8, 8), np.int32), gdf)  # a numpy array has no CRS
    assert isinstance(exc.value, RemoteSamsingError)
    assert "label raster has no CRS" in str(exc.value) and "EPSG:32633" in str(exc.value)
    assert "georeferenced label raster" in exc.value.hint


def _utm_boxes_gdf(boxes, **columns):
    import geopandas as gpd

    return gpd.GeoDataFrame(columns, geometry=boxes, crs="EPSG:32633")


def test_ground_truth_all_outside_raster_is_typed_error_before_scoring(monkeypatch):
    import shapely

    from remote_samsing import metrics

    # labels: x 500000-500020, y 4999980-5000000 (EPSG:32633); objects 100 km east
    gdf = _utm_boxes_gdf([shapely.box(600002, 4999990, 600008, 4999998),
                          shapely.box(600010, 4999985, 600015, 4999995)]).to_crs("EPSG:4326")

    def no_scoring(*a, **k):
        raise AssertionError("scored although no object is on the raster")

    monkeypatch.setattr(metrics, "_mask_scorer", no_scoring)
    monkeypatch.setattr(metrics, "asa", no_scoring)
    with pytest.raises(NoOverlapError) as exc:
        evaluate(_utm_labels(np.ones((20, 20), np.int32)), gdf)
    assert isinstance(exc.value, CRSMismatchError) and isinstance(exc.value, RemoteSamsingError)
    msg = str(exc.value)
    # both extents, in the raster's CRS (the GT was given in EPSG:4326)
    assert "none of the 2 ground-truth objects" in msg and "EPSG:32633" in msg
    assert "[500000.0, 4999980.0, 500020.0, 5000000.0]" in msg
    assert "[600002.0, 4999985.0, 600015.0, 4999998.0]" in msg


def test_ground_truth_partly_outside_warns_once_with_count():
    import shapely

    gdf = _utm_boxes_gdf([
        shapely.box(500002, 4999990, 500008, 4999998),  # inside: 48 px
        shapely.box(500015, 4999990, 500025, 4999995),  # crosses the east edge: kept, clipped to 25 px
        shapely.box(500030, 4999990, 500040, 4999998),  # entirely outside: dropped
        shapely.box(499000, 4999000, 499010, 4999010),  # entirely outside: dropped
        shapely.box(500020, 4999990, 500030, 4999995),  # touches the edge only: dropped
    ])
    lab = np.zeros((20, 20), np.int32)
    lab[2:10, 2:8] = 1
    with pytest.warns(GroundTruthOutsideWarning) as rec:
        rep = evaluate(_utm_labels(lab), gdf)
    ours = [w for w in rec if issubclass(w.category, GroundTruthOutsideWarning)]
    assert len(ours) == 1
    assert "3 of 5 ground-truth objects lie entirely outside" in str(ours[0].message)
    assert issubclass(GroundTruthOutsideWarning, UserWarning)
    assert rep.summary["n_objects"] == 2 and rep.summary["n_objects_outside"] == 3
    assert sorted(rep.objects["n_pixels"]) == [25, 48]


def test_ground_truth_inside_raster_does_not_warn(recwarn):
    import shapely

    rep = evaluate(_utm_labels(np.ones((20, 20), np.int32)),
                   _utm_boxes_gdf([shapely.box(500002, 4999990, 500008, 4999998)]))
    assert rep.summary["n_objects_outside"] == 0
    assert not [w for w in recwarn if issubclass(w.category, GroundTruthOutsideWarning)]


def test_box_csv_all_outside_is_an_error_and_partly_outside_warns(tmp_path):
    csv = tmp_path / "boxes.csv"
    csv.write_text("xmin,ymin,xmax,ymax\n30,30,40,40\n50,0,60,5\n")
    with pytest.raises(NoOverlapError, match=r"\[30, 0, 60, 40\].*\[0, 0, 20, 20\]"):
        evaluate(np.ones((20, 20), np.int32), csv)
    csv.write_text("xmin,ymin,xmax,ymax\n2,2,12,12\n30,30,40,40\n")
    with pytest.warns(GroundTruthOutsideWarning, match="1 of 2 ground-truth boxes"):
        rep = evaluate(np.ones((20, 20), np.int32), csv)
    assert rep.summary["n_objects"] == 1


def test_classes_with_nulls_and_mixed_types(tmp_path):
    import json

    import shapely

    boxes = [shapely.box(500000 + 4 * i, 4999990, 500003 + 4 * i, 4999996) for i in range(5)]  # 18 px each
    kinds = [None, 1, "roof", 1.0, float("nan")]
    lab = np.zeros((20, 20), np.int32)
    lab[4:10, 0:3] = 1
    gdf = _utm_boxes_gdf(boxes, kind=np.array(kinds, dtype=object))
    rep = evaluate(_utm_labels(lab), gdf, classes="kind")
    assert rep.objects["class"].tolist() == ["unlabelled", "1", "roof", "1", "unlabelled"]
    rows = {r["class"]: r for r in rep.rows}
    assert rows["unlabelled"]["n_objects"] == 2 and rows["1"]["n_objects"] == 2 and rows["roof"]["n_objects"] == 1
    assert rows["unlabelled"]["det50"] == 0.5  # its first object is segment 1 exactly
    # the same from a GeoJSON file whose field mixes null, numbers and strings
    geoms = gdf.to_crs("EPSG:4326").geometry
    fc = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"kind": k if k == k else None}, "geometry": shapely.geometry.mapping(g)}
        for k, g in zip(kinds, geoms)]}
    path = tmp_path / "gt.geojson"
    path.write_text(json.dumps(fc))
    rep2 = evaluate(_utm_labels(lab), path, classes="kind")
    # GDAL reads the field as strings: "1.0" stays its own string class, nulls are still "unlabelled"
    assert rep2.objects["class"].tolist() == ["unlabelled", "1", "roof", "1.0", "unlabelled"]
    # a field that is not there, or a non-name, is a ConfigError, not a KeyError/TypeError
    with pytest.raises(ConfigError, match="class field `colour`"):
        evaluate(_utm_labels(lab), gdf, classes="colour")
    with pytest.raises(ConfigError, match="must be a field name"):
        evaluate(_utm_labels(lab), gdf, classes=["kind"])


def test_box_csv_classes_with_nulls(tmp_path):
    csv = tmp_path / "boxes.csv"
    csv.write_text("xmin,ymin,xmax,ymax,label\n2,2,8,8,Tree\n10,10,16,16,\n")
    rep = evaluate(np.ones((20, 20), np.int32), csv, classes="label")
    assert rep.objects["class"].tolist() == ["Tree", "unlabelled"]


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


def test_report_markdown_defines_metrics_first_and_drops_empty_rows(tmp_path):
    lab, gt = _split_case()
    rep = evaluate(lab, gt, raster_mode="instance", min_pixels=1)
    assert [r["class"] for r in rep.rows] == ["Other", "object", "Global"]  # JSON keeps Other (ASA)
    assert rep.rows[0]["n_objects"] == 0
    md = write_report(rep, tmp_path / "report.json")["markdown"].read_text()
    lines = md.splitlines()
    names = ["Det@0.5", "SS-Det@0.5", "mIoU", "BIoU", "ASA", "n̄", "coverage"]
    assert list(METRIC_DEFINITIONS) == names
    assert lines[0] == "# Segmentation report: ndarray 4x6 against ndarray 4x6"
    assert lines[2:5] == ["- **Labels**: `ndarray 4x6`", "- **Ground truth**: `ndarray 4x6`",
                          "- **Figure**: on a blank canvas: no image was given and no run.json beside the labels "
                          "names one"]
    start = lines.index("") + 5  # after the title and what was scored, one sentence per metric
    for line, name in zip(lines[start:start + 7], names):
        assert line.startswith(f"- **{name}** is ") and line.endswith(".") and line.replace("et al. ", "").count(". ") == 0
    assert "3 px" in lines[start + 3] and "never credited" in lines[start + 4]
    cat_line = next(ln for ln in lines if ln.startswith("Objects (outline colours"))
    for cat, definition in CATEGORY_DEFINITIONS.items():
        assert f"*{cat}* = {definition}" in cat_line
    table = [ln for ln in lines if ln.startswith("| ")]
    assert [ln.split("|")[1].strip() for ln in table[1:]] == ["object", "*Global*"]  # no "Other" row
    assert "Classes without objects (not in the table): Other (ASA" in md
    titled = write_report(rep, tmp_path / "t.json", title="Scene A")["markdown"].read_text().splitlines()
    assert titled[0] == "# Scene A" and titled[2].startswith("- **Labels**: ")


def _n_colours(png) -> int:
    """How many distinct colours a figure has: a few hundred on a blank canvas, thousands over a photo."""
    import matplotlib.image as mpimg

    rgb = (mpimg.imread(png)[..., :3] * 255).astype(np.int64)
    return len(np.unique((rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]))


def test_report_figure_over_image_with_defining_legend(tmp_path, data_dir):
    import rasterio

    from remote_samsing import metrics

    with rasterio.open(data_dir / "kampala_crop_3857.tif") as src:
        rgb = src.read()
    lab = np.zeros((256, 256), np.int32)
    lab[:128] = 1
    lab[128:, :128] = 2
    gt = np.zeros((256, 256), np.int32)
    gt[10:100, 10:100] = 1  # inside segment 1: IoU 8100/32768 -> partial
    gt[140:250, 140:250] = 2  # on unsegmented pixels -> missed
    rep = evaluate(lab, gt, raster_mode="instance")
    assert sorted(rep.objects["category"]) == ["missed", "partial"]
    blank = write_report(rep, tmp_path / "blank.json")["figure"]
    over = write_report(rep, tmp_path / "over.json", image=data_dir / "kampala_crop_3857.tif")["figure"]
    # the blank figure is white/grey plus outline colours; over the image most colours are the photo's
    assert _n_colours(blank) < 300
    assert _n_colours(over) > 2000
    # an array (band, y, x) works the same and the legend defines every outline colour
    fig = metrics._figure(rep, tmp_path / "arr.png", image=metrics._figure_image(rgb, lab.shape, 1))
    texts = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    for cat, definition in CATEGORY_DEFINITIONS.items():
        assert any(t.startswith(f"{cat}: {definition}") for t in texts), texts
    assert "partial: 0.2 ≤ IoU < 0.5 (1)" in texts and any(t.startswith("segment outline") for t in texts)
    # an image on another grid is refused before anything is written
    from remote_samsing.exceptions import InputError

    with pytest.raises(InputError, match="256x256"):
        write_report(rep, tmp_path / "bad.json", image=rgb[:, :100])
    assert not (tmp_path / "bad.json").exists()


def test_package_exports_evaluate_and_vectorize():
    import subprocess
    import sys

    code = (
        "import sys, remote_samsing as rs\n"
        "heavy = ('geopandas', 'torch', 'sam2', 'numba', 'distributed')\n"
        "print([m for m in heavy if m in sys.modules])\n"
        "import remote_samsing.metrics as m, remote_samsing.vectorize as v\n"
        "assert rs.evaluate is m.evaluate and rs.write_report is m.write_report\n"
        "assert rs.to_polygons is v.to_polygons and rs.vectorize_labels is v.vectorize_labels\n"
        "assert {'evaluate', 'to_polygons', 'vectorize_labels', 'write_report'} <= set(rs.__all__)\n"
        "assert all(hasattr(rs, n) for n in rs.__all__)\n"
        "assert 'evaluate' in dir(rs)\n"
        "try:\n    rs.no_such_name\nexcept AttributeError as e:\n    print('AttributeError', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines()[0] == "[]"
    assert "no_such_name" in out.splitlines()[1]
    assert "Examples" in m_doc() and ">>> rep = rs.evaluate(" in m_doc()


def m_doc():
    from remote_samsing import evaluate as ev

    return ev.__doc__


def test_real_ground_truth_outside_a_crop_and_a_shifted_raster():
    import geopandas as gpd
    import shapely
    from affine import Affine

    geojson = ATLANTA_GT
    img = rioxarray.open_rasterio(ATLANTA_TIF).isel(band=0, drop=True)
    crop = img.isel(y=slice(0, 300), x=slice(0, 300))
    labels = crop.copy(data=np.ones(crop.shape, np.uint32))
    gt = gpd.read_file(geojson)
    fp = shapely.box(*crop.rio.bounds())
    n_out = int((~(gt.intersects(fp) & ~gt.touches(fp))).sum())
    assert 0 < n_out < len(gt)
    with pytest.warns(GroundTruthOutsideWarning, match=f"{n_out} of {len(gt)} ground-truth objects"):
        rep = evaluate(labels, geojson)
    assert rep.summary["n_objects_outside"] == n_out
    # the same raster moved 10 km east: nothing on it
    t = crop.rio.transform()
    moved = labels.rio.write_transform(Affine(t.a, t.b, t.c + 10_000, t.d, t.e, t.f))
    moved = moved.assign_coords(x=crop.x + 10_000)
    with pytest.raises(NoOverlapError, match="EPSG:32616") as exc:
        evaluate(moved, geojson)
    assert f"{t.c + 10_000:.1f}" in str(exc.value)


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")
def test_real_scene_felzenszwalb_baseline(tmp_path):
    import geopandas as gpd
    import rasterio
    import shapely
    from skimage.segmentation import felzenszwalb

    tif, geojson = ATLANTA_TIF, ATLANTA_GT
    img = rioxarray.open_rasterio(tif)
    grey = img.values[0, ::2, ::2].astype(np.float64)
    seg = felzenszwalb(grey / grey.max(), scale=200, sigma=0.5, min_size=20) + 1
    # upsample the half-resolution segmentation back onto the full grid
    seg = np.repeat(np.repeat(seg, 2, axis=0), 2, axis=1)[: img.sizes["y"], : img.sizes["x"]]
    labels = img.isel(band=0, drop=True).copy(data=seg.astype(np.uint32))
    rep = evaluate(labels, geojson)

    # independent expected count: polygons reprojected with geopandas, clipped
    # to the raster footprint, at least 10 pixel-areas of ground
    gt = gpd.read_file(geojson)
    with rasterio.open(tif) as src:
        footprint = shapely.box(*src.bounds)
        px_area = abs(src.transform.a * src.transform.e)
    assert gt.intersects(footprint).sum() == 22  # tests/data/README.md: 22 intersect
    assert gt.within(footprint).sum() == 17  # and 17 lie wholly inside
    expected = int((gt.geometry.intersection(footprint).area / px_area >= 10).sum())
    assert rep.summary["n_objects"] == expected
    s = rep.summary
    assert 0.0 <= s["miou"] <= 1.0 and 0.0 <= s["biou"] <= 1.0 and s["coverage_pct"] == 100.0
    assert s["det50"] >= s["ss_det50"]  # the oracle can only add segments
    write_report(rep, tmp_path / "report.json")
    assert (tmp_path / "report.png").exists()


# what a run's run.json records of its input and parameters (remote_samsing.pipeline writes more)
_RUN_PARAMETERS = {"segmenter": "felzenszwalb", "tile_size": 128, "bands": [3, 2, 1]}


def _run_outdir(tmp_path, data_dir):
    """A scene, ground truth on its grid, and OUTDIR as a run leaves it: labels.tif and run.json.

    Segment 1 is the top half, 2 the bottom-left quarter; object 1 (90 x 90 px) lies in segment 1
    (partial), object 2 (110 x 110 px) on unsegmented pixels (missed).
    """
    import shutil

    import rasterio

    scene = tmp_path / "scene.tif"
    shutil.copy(data_dir / "kampala_crop_3857.tif", scene)
    with rasterio.open(scene) as src:
        profile = dict(driver="GTiff", width=src.width, height=src.height, count=1, crs=src.crs,
                       transform=src.transform)
    lab = np.zeros((256, 256), np.uint8)
    lab[:128] = 1
    lab[128:, :128] = 2
    gt = np.zeros((256, 256), np.uint8)
    gt[10:100, 10:100] = 1
    gt[140:250, 140:250] = 2
    outdir = tmp_path / "run"
    outdir.mkdir()
    for path, arr in ((outdir / "labels.tif", lab), (tmp_path / "gt.tif", gt)):
        with rasterio.open(path, "w", dtype="uint8", **profile) as dst:
            dst.write(arr, 1)
    record = {"complete": True, "fingerprint": "f", "run_id": "r1",
              "input": {"path": str(scene), "size": [256, 256], "sources": [{"location": str(scene)}]},
              "parameters": _RUN_PARAMETERS, "checkpoint_sha256": None}
    (outdir / "run.json").write_text(json.dumps(record))
    return scene, outdir / "labels.tif", tmp_path / "gt.tif"


def test_report_names_what_was_scored_and_opens_with_a_title(tmp_path, data_dir):
    scene, labels, gt = _run_outdir(tmp_path, data_dir)
    rep = evaluate(labels, gt, raster_mode="instance")
    paths = write_report(rep, tmp_path / "report.json")
    data = json.loads(paths["json"].read_text())
    assert list(data)[:2] == ["title", "scored"]
    assert data["title"] == "Segmentation report: run/labels.tif against gt.tif"
    assert data["scored"] == {
        "labels": str(labels), "ground_truth": str(gt), "classes": None,
        "run": {"run_json": str(labels.parent / "run.json"), "run_id": "r1", "complete": True,
                "input": {"path": str(scene), "size": [256, 256], "n_sources": 1},
                "parameters": _RUN_PARAMETERS, "checkpoint_sha256": None},
    }
    md = paths["markdown"].read_text().splitlines()
    assert md[:7] == [
        f"# {data['title']}",
        "",
        f"- **Labels**: `{labels}`",
        f"- **Ground truth**: `{gt}`",
        f"- **Run**: `{labels.parent / 'run.json'}`, input `{scene}`",
        '- **Parameters**: `segmenter="felzenszwalb"`, `tile_size=128`, `bands=[3, 2, 1]`',
        f"- **Figure**: over `{scene}`, the run's input",
    ]
    # labels no run wrote have no run entry; a title given replaces the default
    rep2 = evaluate(_utm_labels(np.ones((20, 20), np.int32)), np.ones((20, 20), np.int32), raster_mode="instance")
    assert rep2.scored["run"] is None and rep2.scored["labels"] == "DataArray 20x20"
    data2 = json.loads(write_report(rep2, tmp_path / "r2.json", title="Scene A", figure=False)["json"].read_text())
    assert data2["title"] == "Scene A" and data2["figure"] is None


def test_report_figure_without_image_draws_on_the_runs_image(tmp_path, data_dir):
    scene, labels, gt = _run_outdir(tmp_path, data_dir)
    rep = evaluate(labels, gt, raster_mode="instance")
    paths = write_report(rep, tmp_path / "report.json")
    figure = json.loads(paths["json"].read_text())["figure"]
    assert figure == {"path": "report.png", "image": str(scene), "note": f"over `{scene}`, the run's input"}
    assert _n_colours(paths["figure"]) > 2000  # the photo's colours
    # the image moved away since the run: a blank canvas, and the report says why
    scene.rename(tmp_path / "moved.tif")
    paths = write_report(rep, tmp_path / "blank.json")
    figure = json.loads(paths["json"].read_text())["figure"]
    assert figure["image"] is None
    assert figure["note"].startswith(f"on a blank canvas: the run's input `{scene}` cannot be read")
    assert _n_colours(paths["figure"]) < 300


@pytest.mark.parametrize("given", ["folder", "arguments"])
def test_report_figure_of_a_many_file_run_draws_its_mosaic(tmp_path, data_dir, client, given):
    import rasterio

    import remote_samsing as rs
    from remote_samsing import metrics
    from remote_samsing.config import RunConfig
    from remote_samsing.testing import cut_tiles

    scene = data_dir / "neon_osbs.tif"
    tiles = cut_tiles(scene, tmp_path / "tiles", rows=2, cols=3)
    cfg = RunConfig(segmenter="felzenszwalb", tile_size=128, padding=16, progress=False, vectors=False)
    rs.run(tiles[0].parent if given == "folder" else [str(t) for t in tiles], tmp_path / "many", config=cfg,
           client=client)
    rs.run(scene, tmp_path / "one", config=cfg, client=client)
    with rasterio.open(scene) as src:
        profile = dict(driver="GTiff", width=src.width, height=src.height, count=1, dtype="uint8", crs=src.crs,
                       transform=src.transform)
    gt = np.zeros((profile["height"], profile["width"]), np.uint8)
    gt[50:120, 60:150] = 1
    with rasterio.open(tmp_path / "gt.tif", "w", **profile) as dst:
        dst.write(gt, 1)
    many = evaluate(tmp_path / "many" / "labels.tif", tmp_path / "gt.tif", raster_mode="instance")
    one = evaluate(tmp_path / "one" / "labels.tif", tmp_path / "gt.tif", raster_mode="instance")
    backdrop, _, note = metrics._backdrop(many, None)
    assert backdrop is not None and note.endswith(", the run's input"), note
    np.testing.assert_array_equal(backdrop, metrics._backdrop(one, None)[0])  # the same pixels as the one file
    paths = write_report(many, tmp_path / "report.json")
    assert _n_colours(paths["figure"]) > 2000  # the photo's colours, not a blank canvas
    figure = json.loads(paths["json"].read_text())["figure"]
    assert figure["image"] == (str(tiles[0].parent) if given == "folder" else [str(t) for t in tiles])


def test_empty_class_string_is_unlabelled():
    import shapely

    # four 3 x 6 px boxes; segment 1 is the first box exactly, the others lie on unsegmented pixels
    boxes = [shapely.box(500000 + 4 * i, 4999990, 500003 + 4 * i, 4999996) for i in range(4)]
    lab = np.zeros((20, 20), np.int32)
    lab[4:10, 0:3] = 1
    rep = evaluate(_utm_labels(lab), _utm_boxes_gdf(boxes, kind=["", "roof", "  ", None]), classes="kind")
    assert rep.objects["class"].tolist() == ["unlabelled", "roof", "unlabelled", "unlabelled"]
    rows = {r["class"]: r for r in rep.rows}
    assert rows["unlabelled"]["n_objects"] == 3 and rows["unlabelled"]["det50"] == pytest.approx(1 / 3)
    assert rows["roof"]["n_objects"] == 1 and rows["roof"]["det50"] == 0.0
    assert "" not in rows


def test_oversegmentation_is_reported_above_five_segments_per_object(tmp_path):
    gt = np.zeros((8, 8), np.int32)
    gt[1:7, 1:7] = 1
    lab = np.zeros((8, 8), np.int32)
    for i in range(6):  # six 1 x 6 strips: the greedy oracle takes all six, IoU 1; one strip has IoU 1/6
        lab[1 + i, 1:7] = i + 1
    rep = evaluate(lab, gt, raster_mode="instance", min_pixels=1)
    s = rep.summary
    assert (s["n_bar"], s["det50"], s["ss_det50"], s["over_segmented"]) == (6.0, 1.0, 0.0, True)
    md = write_report(rep, tmp_path / "six.json", figure=False)["markdown"].read_text()
    assert ("**Over-segmentation:** n̄ = 6.0 > 5 segments per object, so Det@0.5 (100.0 %) reflects "
            "over-segmentation") in md
    lab[6, 1:7] = 5  # five strips: n̄ = 5 is not above 5
    rep = evaluate(lab, gt, raster_mode="instance", min_pixels=1)
    assert rep.summary["n_bar"] == 5.0 and not rep.summary["over_segmented"]
    assert "over-segmentation" not in write_report(rep, tmp_path / "five.json", figure=False)["markdown"].read_text()
