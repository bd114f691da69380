"""Tests for remote_samsing.vectorize (block-wise polygonisation and dissolve)."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
import xarray as xr
from affine import Affine

import rioxarray  # noqa: F401  (registers .rio)

from click.testing import CliRunner

from remote_samsing.cli import cli
from remote_samsing.exceptions import ConfigError, OutputExistsError
from remote_samsing.vectorize import NoCRSWarning, to_polygons, vectorize_labels

# 0.5 m pixels in UTM 33N; pixel area 0.25 m².
UTM = "EPSG:32633"
T_UTM = Affine(0.5, 0.0, 500000.0, 0.0, -0.5, 5000000.0)


def _georef(arr, crs=UTM, transform=T_UTM, chunks=None):
    da_ = xr.DataArray(arr, dims=("y", "x")).rio.write_crs(crs).rio.write_transform(transform)
    return da_.chunk(chunks) if chunks else da_


def _tiling():
    """A 32x32 full coverage of irregular regions (a few dozen labels)."""
    y, x = np.mgrid[0:32, 0:32]
    lab = (
        1
        + (x + (3 * np.sin(y / 3.0)).astype(int)) // 7
        + 10 * ((y + (2 * np.cos(x / 4.0)).astype(int)) // 9)
    )
    return lab.astype(np.uint32)


def _assert_coverage_exact(gdf, total_area):
    g = gdf.geometry.to_numpy()
    assert shapely.is_valid(g).all()
    # no gap: the union fills the image; no overlap: areas add up
    assert shapely.area(shapely.union_all(g)) == pytest.approx(total_area, rel=1e-12)
    assert shapely.area(g).sum() == pytest.approx(total_area, rel=1e-12)
    tree = shapely.STRtree(g)
    left, right = tree.query(g, predicate="intersects")
    pairs = left < right
    assert pairs.any()  # neighbours do touch
    inter = shapely.area(shapely.intersection(g[left[pairs]], g[right[pairs]]))
    assert np.all(inter <= 1e-9 * total_area)


def test_object_spanning_four_blocks_is_one_polygon():
    lab = np.zeros((8, 8), np.uint32)
    lab[2:6, 1:7] = 5  # 4 x 6 = 24 px across all four 4x4 blocks
    lab[6, 6] = 9  # a single-pixel neighbour in one block
    gdf = to_polygons(_georef(lab, chunks=4))
    row = gdf.set_index("label").loc[5]
    assert row.geometry.geom_type == "Polygon" and row.geometry.is_valid
    assert row.n_blocks == 4
    assert row.n_pixels == 24
    # 24 px x 0.25 m² per px = 6 m², planar UTM metres
    assert row.area_m2 == pytest.approx(24 * 0.25, rel=1e-12)
    assert row.geometry.area == pytest.approx(6.0, rel=1e-12)
    # perimeter of a 3 m x 2 m rectangle = 10 m
    assert row.perimeter_m == pytest.approx(10.0, rel=1e-12)
    assert gdf.set_index("label").loc[9].n_blocks == 1
    # position: columns 1..7, rows 2..6 -> x 500000.5..500003.5, y 4999999..4999997
    assert row.geometry.bounds == pytest.approx((500000.5, 4999997.0, 500003.5, 4999999.0))


@pytest.mark.parametrize("tol", [None, 1.0])
def test_neighbours_share_boundaries_exactly(tol):
    lab = _tiling()
    gdf = to_polygons(_georef(lab, chunks=8), simplify_tolerance=tol)
    assert sorted(gdf["label"]) == sorted(np.unique(lab).tolist())
    _assert_coverage_exact(gdf, 32 * 32 * 0.25)
    if tol is not None:
        # simplified: valid coverage (vertex-matched shared edges), fewer vertices
        assert shapely.coverage_is_valid(gdf.geometry.to_numpy())
        exact = to_polygons(_georef(lab, chunks=8), node=True)
        assert shapely.coverage_is_valid(exact.geometry.to_numpy())
        n_simpl = shapely.get_num_coordinates(gdf.geometry.to_numpy()).sum()
        n_exact = shapely.get_num_coordinates(exact.geometry.to_numpy()).sum()
        assert n_simpl < n_exact


def test_chunking_does_not_change_polygons():
    lab = _tiling()
    one = to_polygons(_georef(lab))
    many = to_polygons(_georef(lab, chunks=5))
    assert one["label"].tolist() == many["label"].tolist()
    assert one["n_pixels"].tolist() == many["n_pixels"].tolist()
    for a, b in zip(one.geometry, many.geometry):
        assert a.symmetric_difference(b).area == pytest.approx(0.0, abs=1e-9)


def test_crs_carried_and_flags():
    lab = np.zeros((10, 10), np.uint16)
    lab[0:3, 0:3] = 1  # mosaic corner
    lab[4:6, 4:6] = 2  # interior, next to nodata
    lab[4:6, 7:9] = 3  # interior, not next to nodata (col 6 gap)
    valid = np.ones((10, 10), bool)
    valid[4:6, 3] = False  # just left of label 2 (which spans both 5-px blocks)
    valid[9, 9] = False
    gdf = to_polygons(_georef(lab, chunks=5), valid=valid, attributes={2: {"pass": 1, "pred_iou": 0.9}})
    assert gdf.crs.to_epsg() == 32633
    by = gdf.set_index("label")
    assert by["touches_edge"].to_dict() == {1: True, 2: False, 3: False}
    assert by["touches_nodata"].to_dict() == {1: False, 2: True, 3: False}
    assert by.loc[2, "pred_iou"] == 0.9 and np.isnan(by.loc[1, "pred_iou"])


def test_touches_nodata_across_block_face():
    lab = np.zeros((8, 8), np.uint32)
    lab[2:4, 2:4] = 4  # in block (0, 0); right face at x = 4
    valid = np.ones((8, 8), bool)
    valid[2, 4] = False  # first column of block (0, 1)
    gdf = to_polygons(_georef(lab, chunks=4), valid=valid)
    assert bool(gdf.loc[0, "touches_nodata"]) is True


def test_no_crs_warns_and_uses_pixel_coordinates():
    lab = np.zeros((6, 6), np.int32)
    lab[1:3, 2:5] = 3
    with pytest.warns(NoCRSWarning):
        gdf = to_polygons(lab, chunks=3)
    assert gdf.crs is None
    assert gdf.geometry[0].bounds == (2.0, 1.0, 5.0, 3.0)
    assert np.isnan(gdf.loc[0, "area_m2"]) and gdf.loc[0, "n_pixels"] == 6


def test_geographic_crs_areas_in_square_metres():
    import geopandas as gpd

    # 1e-5 degree pixels at 45° N: about 1.11 m x 0.79 m
    t = Affine(1e-5, 0.0, 15.0, 0.0, -1e-5, 45.0)
    lab = np.zeros((40, 40), np.uint32)
    lab[5:35, 3:30] = 1
    lab[0:5, :] = 2
    gdf = to_polygons(_georef(lab, crs="EPSG:4326", transform=t, chunks=16))
    assert gdf.crs.to_epsg() == 4326
    # independent projected computation of the same ground footprint
    utm = gdf.to_crs(gdf.estimate_utm_crs())
    ref_area = utm.geometry.area.to_numpy()
    ref_perim = utm.geometry.length.to_numpy()
    np.testing.assert_allclose(gdf["area_m2"], ref_area, rtol=5e-3)
    np.testing.assert_allclose(gdf["perimeter_m"], ref_perim, rtol=5e-3)
    assert gdf.loc[0, "area_m2"] > 500  # m², not degrees² (~8e-8)
    # and a local equal-area projection agrees too
    laea = gdf.to_crs("+proj=laea +lat_0=45 +lon_0=15 +datum=WGS84 +units=m")
    np.testing.assert_allclose(gdf["area_m2"], laea.geometry.area, rtol=5e-3)
    assert isinstance(gdf, gpd.GeoDataFrame)


def test_simplify_tolerance_in_metres_geographic():
    t = Affine(1e-5, 0.0, 15.0, 0.0, -1e-5, 45.0)
    lab = _tiling()
    gdf = to_polygons(_georef(lab, crs="EPSG:4326", transform=t, chunks=8), simplify_tolerance=1.0)
    assert shapely.coverage_is_valid(gdf.geometry.to_numpy())
    total = 32 * 32 * 1e-10
    assert shapely.area(gdf.geometry.to_numpy()).sum() == pytest.approx(total, rel=1e-9)


@pytest.mark.parametrize("suffix", [".parquet", ".gpkg"])
def test_write_and_read_back(tmp_path, suffix):
    import geopandas as gpd

    lab = _tiling()
    out = tmp_path / f"segments{suffix}"
    gdf = to_polygons(_georef(lab, chunks=8), out=out, attributes={1: {"stability": 0.97}})
    back = gpd.read_parquet(out) if suffix == ".parquet" else gpd.read_file(out, layer="segments")
    assert back.crs.to_epsg() == 32633
    assert back["label"].tolist() == gdf["label"].tolist()
    np.testing.assert_allclose(back["area_m2"], gdf["area_m2"])
    np.testing.assert_allclose(back.geometry.area, gdf.geometry.area)
    assert back.loc[back["label"] == 1, "stability"].iloc[0] == pytest.approx(0.97)


# rioxarray 0.19 composes affines with `*`, which affine 3.x flags as pending deprecation
@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")
def test_vectorize_labels_from_geotiff(tmp_path):
    import geopandas as gpd

    lab = _tiling().astype(np.uint16)
    tif = tmp_path / "labels.tif"
    _georef(lab).rio.to_raster(tif)
    out = vectorize_labels(tif, tmp_path / "v.parquet", simplify_tolerance=0.5)
    back = gpd.read_parquet(out)
    assert back.crs.to_epsg() == 32633
    assert back["n_pixels"].sum() == 32 * 32
    assert back["area_m2"].sum() == pytest.approx(32 * 32 * 0.25)


def test_empty_labels(tmp_path):
    gdf = to_polygons(_georef(np.zeros((8, 8), np.uint32), chunks=4), out=tmp_path / "e.parquet")
    assert len(gdf) == 0 and (tmp_path / "e.parquet").exists()


def test_bad_parameters():
    lab = _georef(np.ones((4, 4), np.uint32))
    with pytest.raises(ConfigError, match="simplify_tolerance"):
        to_polygons(lab, simplify_tolerance=-1)
    with pytest.raises(ConfigError, match="vector format"):
        to_polygons(lab, out="x.shpx")


# ---------------------------------------------------------------------------
# perimeter_m counts every ring (exterior + holes) in every CRS
# ---------------------------------------------------------------------------

KAMPALA_UTM = "EPSG:32636"  # UTM 36N, central meridian 33° E


def _square_with_hole(x0, y0, outer, hole, offset):
    return shapely.Polygon(
        shapely.box(x0, y0, x0 + outer, y0 + outer).exterior.coords,
        [shapely.box(x0 + offset, y0 + offset, x0 + offset + hole, y0 + offset + hole).exterior.coords],
    )


def test_area_perimeter_with_hole_planar_exact():
    from remote_samsing.vectorize import _area_perimeter_m

    # outer 10 x 10 m, hole 4 x 4 m: perimeter 40 + 16 = 56 m, area 100 - 16 = 84 m²
    poly = _square_with_hole(500000.0, 5000000.0, 10.0, 4.0, 3.0)
    area, perim = _area_perimeter_m(np.array([poly], dtype=object), UTM)
    assert area[0] == 84.0 and perim[0] == 56.0
    # US survey feet: lengths scaled by the unit factor
    poly_ft = _square_with_hole(0.0, 0.0, 10.0, 4.0, 3.0)
    area, perim = _area_perimeter_m(np.array([poly_ft], dtype=object), "EPSG:2263")
    f = 0.3048006096012192
    assert perim[0] == pytest.approx(56.0 * f, rel=1e-12)
    assert area[0] == pytest.approx(84.0 * f * f, rel=1e-12)


@pytest.mark.parametrize("lat", [0.35, 50.0])
@pytest.mark.parametrize("crs", ["EPSG:4326", "EPSG:3857", "EPSG:3395"])
def test_area_perimeter_with_hole_geodesic_matches_utm(crs, lat):
    import pyproj

    from remote_samsing.vectorize import _area_perimeter_m

    to_utm = pyproj.Transformer.from_crs("EPSG:4326", KAMPALA_UTM, always_xy=True)
    x0, y0 = to_utm.transform(32.6, lat)
    # 100 m square with a 40 m square hole: perimeter 560 m, area 8400 m² in UTM
    poly = _square_with_hole(x0, y0, 100.0, 40.0, 30.0)
    ref_area, ref_perim = _area_perimeter_m(np.array([poly], dtype=object), KAMPALA_UTM)
    assert ref_perim[0] == pytest.approx(560.0) and ref_area[0] == pytest.approx(8400.0)
    t = pyproj.Transformer.from_crs(KAMPALA_UTM, crs, always_xy=True)
    g = shapely.transform(shapely.segmentize(poly, 1.0), lambda xy: np.column_stack(t.transform(xy[:, 0], xy[:, 1])))
    # the same ring orientation flipped must not change anything, nor must a MultiPolygon wrapper
    flipped = shapely.Polygon(g.exterior.coords[::-1], [g.interiors[0].coords])
    multi = shapely.MultiPolygon([g])
    area, perim = _area_perimeter_m(np.array([g, flipped, multi], dtype=object), crs)
    np.testing.assert_allclose(perim, ref_perim[0], rtol=5e-3)
    np.testing.assert_allclose(area, ref_area[0], rtol=5e-3)
    # the hole's ring is counted: the exterior alone would be only ~400 m
    assert perim.min() > 550.0


@pytest.mark.parametrize("crs", ["EPSG:4326", "EPSG:3857", "EPSG:3395"])
def test_to_polygons_hole_perimeter_matches_utm(crs):
    import pyproj

    # ~5 m pixels near Kampala expressed in `crs`; label 1 is a 12 x 12 px
    # ring around a 4 x 4 px background hole, label 2 a solid square inside
    # another hole, across several chunks (dissolve path).
    lon0, lat0 = 32.6, 0.35
    x0, y0 = pyproj.Transformer.from_crs("EPSG:4326", crs, always_xy=True).transform(lon0, lat0)
    if crs == "EPSG:4326":
        px = 5.0 / 111_320.0
    else:
        px = 5.0 / np.cos(np.radians(lat0))
    t = Affine(px, 0.0, x0, 0.0, -px, y0)
    lab = np.zeros((24, 24), np.uint32)
    lab[2:14, 2:14] = 1
    lab[6:10, 6:10] = 0
    lab[15:23, 10:22] = 3
    lab[17:21, 13:17] = 2
    gdf = to_polygons(_georef(lab, crs=crs, transform=t, chunks=5))
    assert gdf["label"].tolist() == [1, 2, 3]
    assert [len(g.interiors) for g in gdf.geometry] == [1, 0, 1]
    utm = gdf.to_crs(KAMPALA_UTM)
    np.testing.assert_allclose(gdf["perimeter_m"], utm.geometry.length, rtol=5e-3)
    np.testing.assert_allclose(gdf["area_m2"], utm.geometry.area, rtol=5e-3)
    # exterior 4 * 12 px + hole 4 * 4 px = 64 px of ~5 m
    assert gdf.loc[0, "perimeter_m"] == pytest.approx(64 * 5.0, rel=5e-3)
    assert gdf.loc[0, "area_m2"] == pytest.approx((144 - 16) * 25.0, rel=1e-2)


def test_every_segment_of_a_bundled_scene_is_one_polygon(data_dir):
    """Felzenszwalb on the committed Atlanta crop, tiled: labels touching only at corners and pieces cut
    by core cropping are resolved in the raster, so every polygon is a single Polygon. The reference's
    rule keeps its labels as they are, so there the same scene gives MultiPolygons."""
    import remote_samsing as rs

    params = dict(segmenter="felzenszwalb", tile_size=128, padding=16,
                  segmenter_params={"scale": 100, "min_size": 20})
    labels = rs.segment(data_dir / "atlanta_crop_32616.tif", **params).compute(scheduler="threads")
    gdf = to_polygons(labels)
    assert len(gdf) > 100
    assert set(gdf.geometry.geom_type) == {"Polygon"}
    assert len(gdf) == len(np.unique(labels.values[labels.values > 0]))
    reference = to_polygons(rs.segment(data_dir / "atlanta_crop_32616.tif", merge="best_match", **params)
                            .compute(scheduler="threads"))
    assert (reference.geometry.geom_type == "MultiPolygon").sum() > 10


def test_gpkg_layer_is_declared_polygon_when_every_label_is_one_part(tmp_path):
    import pyogrio

    lab = np.zeros((16, 16), np.uint32)
    lab[1:9, 1:9] = 1  # across four blocks: dissolved into one Polygon
    lab[10:15, 2:14] = 2
    gdf = to_polygons(_georef(lab, chunks=8), out=tmp_path / "one.gpkg")
    assert gdf.geometry.geom_type.tolist() == ["Polygon", "Polygon"]
    assert pyogrio.read_info(tmp_path / "one.gpkg", layer="segments")["geometry_type"] == "Polygon"
    # a label in two parts (merges other than overlap/iou keep such labels) makes the layer MultiPolygon
    two = np.zeros((8, 8), np.uint32)
    two[0:2, 0:2] = two[5:7, 5:7] = 1
    two[3:4, 3:4] = 2
    to_polygons(_georef(two), out=tmp_path / "two.gpkg")
    info = pyogrio.read_info(tmp_path / "two.gpkg", layer="segments")
    assert info["geometry_type"] == "MultiPolygon" and info["features"] == 2


def test_segments_parquet_opens_with_the_environments_pyogrio(tmp_path):
    """pyogrio's GDAL reads GeoParquet through DuckDB once `make install` linked it (_gdal_parquet)."""
    import pyogrio

    out = tmp_path / "segments.parquet"
    lab = np.zeros((16, 16), np.uint32)
    lab[1:9, 1:9] = 1
    lab[10:15, 2:14] = 2
    to_polygons(_georef(lab, chunks=8), out=out)
    info = pyogrio.read_info(out)
    assert info["features"] == 2 and info["geometry_type"] == "Polygon"
    assert info["crs"] == "EPSG:32633"
    assert {"label", "area_m2", "n_pixels"} <= set(info["fields"])


# ---------------------------------------------------------------------------
# OUT's format and an existing OUT, in the command line's words
# ---------------------------------------------------------------------------
def _cli_error_and_hint(r) -> tuple[str, str]:
    """The CLI's two lines of an error, after its exit status 2 is checked."""
    assert r.exit_code == 2, r.output
    lines = r.output.splitlines()
    assert len(lines) == 2 and lines[0].startswith("error: ") and lines[1].startswith("hint: "), r.output
    return lines[0], lines[1]


@pytest.fixture
def label_tif(tmp_path):
    import rioxarray  # noqa: F401
    import xarray as xr
    from rasterio.transform import from_origin

    lab = np.zeros((16, 16), np.uint16)
    lab[2:8, 2:8] = 1
    lab[9:14, 3:12] = 2
    arr = xr.DataArray(lab, dims=("y", "x")).rio.write_crs("EPSG:32633").rio.write_transform(
        from_origin(500000, 5000000, 0.5, 0.5))
    path = tmp_path / "labels.tif"
    arr.rio.to_raster(path)
    return path


def test_vectorize_refuses_an_existing_out_unless_overwrite(tmp_path, label_tif):
    from remote_samsing.vectorize import vectorize_labels

    out = tmp_path / "v.gpkg"
    out.write_bytes(b"keep me")
    with pytest.raises(OutputExistsError, match="already exists") as err:
        vectorize_labels(label_tif, out)
    assert err.value.hint == "pass --overwrite" and out.read_bytes() == b"keep me"
    assert vectorize_labels(label_tif, out, overwrite=True) == out and out.read_bytes() != b"keep me"


def test_the_vectorize_command_refuses_an_existing_out_and_takes_overwrite(tmp_path, label_tif):
    out = tmp_path / "v.fgb"
    runner = CliRunner()
    assert runner.invoke(cli, ["vectorize", str(label_tif), str(out)]).exit_code == 0
    before = out.read_bytes()
    error, hint = _cli_error_and_hint(runner.invoke(cli, ["vectorize", str(label_tif), str(out)]))
    assert error == f"error: `{out}` already exists" and hint == "hint: pass --overwrite"
    assert out.read_bytes() == before
    r = runner.invoke(cli, ["vectorize", str(label_tif), str(out), "--overwrite"])
    assert r.exit_code == 0 and r.output.splitlines()[-1] == f"wrote {out}", r.output


def test_the_vectorize_command_names_the_suffixes_not_a_python_keyword(tmp_path, label_tif):
    error, hint = _cli_error_and_hint(CliRunner().invoke(cli, ["vectorize", str(label_tif), str(tmp_path / "v.shpx")]))
    assert "cannot infer a vector format from `v.shpx`" in error
    assert "driver=" not in hint and all(s in hint for s in (".parquet", ".gpkg", ".geojson", ".fgb"))
    assert not (tmp_path / "v.shpx").exists()
