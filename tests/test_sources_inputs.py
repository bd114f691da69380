"""Sources, the forms of INPUT at their edges: GTI indexes (odd rasters, the ``GTI:`` prefix, FlatGeobuf
and GeoParquet), plain GeoJSON and unreachable STAC URLs, ``@list`` files, grids that cannot be read, and
missing rasters named by an index or a STAC item."""

import json
import os
import re
import warnings

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from rasterio.transform import from_origin

import remote_samsing as rs
from remote_samsing.cli import cli
from remote_samsing.exceptions import (BandSelectionError, ConfigError, InputError, InputNotFoundError,
                                       RemoteSamsingWarning)
from remote_samsing.io import open_mosaic
from remote_samsing.sources import resolve_mosaic, write_tile_index
from remote_samsing.testing import cut_tiles


@pytest.fixture
def tiles(tmp_path, scene):
    """The scene cut into 2 rows of 2 GeoTIFFs."""
    return cut_tiles(scene, tmp_path / "tiles", rows=2, cols=2)


def _same_as(arr, scene):
    with rasterio.open(scene) as src:
        assert arr.rio.transform() == src.transform and arr.rio.crs == src.crs
        np.testing.assert_array_equal(arr.values, src.read())


def _constant(path, value, x0, y0, *, n=20, count=3, dtype="uint8", crs="EPSG:32617", res=1.0):
    profile = dict(driver="GTiff", width=n, height=n, count=count, dtype=dtype, crs=crs,
                   transform=from_origin(x0, y0, res, res))
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.full((count, n, n), value, dtype))
    return str(path)


def _rewrite(tile, **changes):
    """``tile`` rewritten in place on its own grid with ``changes`` to its profile (count, dtype)."""
    with rasterio.open(tile) as src:
        profile = {**src.profile, **changes}
    with rasterio.open(tile, "w", **profile) as dst:
        dst.write(np.zeros((profile["count"], profile["height"], profile["width"]), profile["dtype"]))


def _one_error(result, says):
    assert result.exit_code == 2, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("error: ") and says in lines[0], result.output
    assert len(lines) == 2 and lines[1].startswith("hint: ")


# ---------------------------------------------------------------------------
# 1. the rasters of a GTI index agree with it (a VRT may stack single-band files)
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("changes, says", [({"count": 1}, "1 band(s) of uint8"),
                                           ({"dtype": "uint16"}, "3 band(s) of uint16")])
def test_a_tile_index_raster_unlike_the_index_is_named_up_front(tmp_path, tiles, changes, says):
    index = write_tile_index(resolve_mosaic([str(t) for t in tiles]), tmp_path / "m.gti.gpkg")
    _rewrite(tiles[1], **changes)
    expected = rf"tile_0_1.tif`, read by the tile index `.*m.gti.gpkg`, has {re.escape(says)}, but the index has 3"
    for check in (resolve_mosaic, lambda i: rs.inspect_mosaic(i, tile_size=128, padding=16)):
        with pytest.raises(InputError, match=expected) as err:
            check(index)
        assert "\n" not in str(err.value) and "leave it out" in err.value.hint


def test_a_vrt_stacking_single_band_files_is_no_odd_raster(tmp_path, tiles, scene):
    with rasterio.open(tiles[0]) as src:
        bands = []
        for b in range(1, 4):
            single = tmp_path / f"band{b}.tif"
            with rasterio.open(single, "w", **{**src.profile, "count": 1}) as dst:
                dst.write(src.read(b), 1)
            bands.append(f'<VRTRasterBand dataType="Byte" band="{b}"><SimpleSource><SourceFilename '
                         f'relativeToVRT="1">{single.name}</SourceFilename><SourceBand>1</SourceBand></SimpleSource>'
                         "</VRTRasterBand>")
        head = (f'<VRTDataset rasterXSize="{src.width}" rasterYSize="{src.height}"><SRS>{src.crs.to_wkt()}</SRS>'
                f'<GeoTransform>{", ".join(map(repr, src.transform.to_gdal()))}</GeoTransform>')
    vrt = tmp_path / "rgb.vrt"
    vrt.write_text(head + "".join(bands) + "</VRTDataset>")
    assert len(resolve_mosaic(vrt).sources) == 3  # its three single-band files
    index = write_tile_index(resolve_mosaic([str(vrt), *map(str, tiles[1:])]), tmp_path / "m.gti.gpkg")
    _same_as(open_mosaic(index), scene)  # the index reads the VRT, whose header has 3 bands


# ---------------------------------------------------------------------------
# 2. GDAL's GTI: prefix, with a relative path
# ---------------------------------------------------------------------------
def test_the_gti_prefix_with_a_relative_path_reads_as_the_index(tmp_path, tiles, scene, monkeypatch):
    write_tile_index(resolve_mosaic([str(t) for t in tiles]), tmp_path / "index.gpkg")  # no .gti. in its name
    monkeypatch.chdir(tmp_path)
    mosaic = resolve_mosaic("GTI:index.gpkg")
    assert mosaic.inputs == (f"GTI:{tmp_path / 'index.gpkg'}",) and mosaic.direct == mosaic.inputs[0]
    assert sorted(s.location for s in mosaic.sources) == sorted(map(str, tiles))
    arr = open_mosaic("GTI:index.gpkg")
    _same_as(arr, scene)
    reader = rs.io.window_reader(arr)
    monkeypatch.chdir(tiles[0].parent)  # a worker's working folder is another
    with rasterio.open(scene) as src:
        np.testing.assert_array_equal(reader.read((0, 150, 0, 100)), src.read()[:, :150, :100])
    with pytest.raises(InputNotFoundError, match="tile index `nope.gpkg` does not exist"):
        resolve_mosaic("GTI:nope.gpkg")


# ---------------------------------------------------------------------------
# 3. indexes in FlatGeobuf and GeoParquet: read as the list of their rasters
# ---------------------------------------------------------------------------
def _index_table(locations, positions):
    import geopandas as gpd
    import shapely

    return gpd.GeoDataFrame({"location": locations, "position": positions},
                            geometry=[shapely.box(0, 0, 1, 1)] * len(locations), crs="EPSG:32617")


def _fgb(path, locations, positions, *, sort=True):
    import pyogrio

    meta = {"LOCATION_FIELD": "location", **({"SORT_FIELD": "position"} if sort else {})}
    pyogrio.write_dataframe(_index_table(locations, positions), path, driver="FlatGeobuf", layer_metadata=meta)
    return path


def _parquet(path, locations, positions, *, sort=True):
    """A GeoParquet index, with the layer metadata GDAL's Parquet driver writes (``gdal:metadata``)."""
    import pyarrow.parquet as pq

    _index_table(locations, positions).to_parquet(path)
    if sort:
        table = pq.read_table(path)
        meta = {**table.schema.metadata, b"gdal:metadata": json.dumps({"": {"SORT_FIELD": "position"}}).encode()}
        pq.write_table(table.replace_schema_metadata(meta), path)
    return path


@pytest.mark.parametrize("write, name", [(_fgb, "m.gti.fgb"), (_parquet, "m.gti.parquet"), (_parquet, "m.parquet")])
def test_an_index_gdal_cannot_open_is_the_list_of_its_rasters(tmp_path, tiles, scene, write, name):
    given = str(tmp_path / name) if ".gti." in name else f"GTI:{tmp_path / name}"
    write(tmp_path / name, [os.path.relpath(t, tmp_path) for t in tiles[::-1]], [3, 2, 1, 0])
    assert [s.location for s in resolve_mosaic(given).sources] == list(map(str, tiles))  # by position
    _same_as(open_mosaic(given), scene)


@pytest.mark.parametrize("write, suffix", [(_fgb, ".gti.fgb"), (_parquet, ".gti.parquet")])
def test_the_sort_field_then_the_feature_order_decides_which_source_is_on_top(tmp_path, write, suffix):
    a = _constant(tmp_path / "a.tif", 10, 0, 20)
    b = _constant(tmp_path / "b.tif", 200, 10, 20)  # overlaps a in x 10..20
    sorted_index = write(tmp_path / f"sorted{suffix}", [b, a], [1, 0])  # drawn: a, then b on top
    assert open_mosaic(sorted_index).values[0, 0, 15] == 200
    listed = write(tmp_path / f"listed{suffix}", [b, a], [1, 0], sort=False)  # drawn as listed: a on top
    assert open_mosaic(listed).values[0, 0, 15] == 10


def test_an_index_neither_reader_opens_says_which_formats_work(tmp_path):
    junk = tmp_path / "m.gti.fgb"
    junk.write_bytes(b"not a flatgeobuf")
    with pytest.raises(InputError, match=r"cannot read the tile index `.*m.gti.fgb`") as err:
        resolve_mosaic(junk)
    assert "GeoPackage (.gti.gpkg), FlatGeobuf (.gti.fgb) or GeoParquet (.gti.parquet)" in err.value.hint


# ---------------------------------------------------------------------------
# 4. plain GeoJSON and unreachable STAC URLs
# ---------------------------------------------------------------------------
def test_plain_geojson_is_no_stac_input(data_dir, tmp_path):
    buildings = data_dir / "atlanta_crop_buildings.geojson"
    with pytest.raises(InputError, match=r"atlanta_crop_buildings.geojson` is not a STAC Item or ItemCollection"):
        open_mosaic(buildings)
    _one_error(CliRunner().invoke(cli, ["segment", str(buildings), str(tmp_path / "out")]),
               "is not a STAC Item or ItemCollection")


@pytest.mark.parametrize("failure", [FileNotFoundError("https://example.invalid/items.json"),
                                     OSError("Cannot connect to host example.invalid:443")])
def test_an_unreachable_stac_url_is_named(monkeypatch, failure):
    import remote_samsing.sources as sources

    class Unreachable:
        def open(self, path, mode):
            raise failure

    monkeypatch.setattr(sources, "_fs", lambda url: (Unreachable(), url))
    with pytest.raises(InputNotFoundError, match=r"`https://example.invalid/items.json`") as err:
        resolve_mosaic("https://example.invalid/items.json")
    assert "URL" in err.value.hint


# ---------------------------------------------------------------------------
# 5. @list files and empty folders
# ---------------------------------------------------------------------------
def test_a_list_file_with_a_byte_order_mark_and_nested_lists(tmp_path, tiles):
    (tmp_path / "inner.txt").write_text("tiles/tile_1_1.tif\n", encoding="utf-8-sig")
    (tmp_path / "outer.txt").write_text("tiles/tile_0_0.tif\n@inner.txt\n", encoding="utf-8-sig")
    assert [s.location for s in resolve_mosaic(f"@{tmp_path / 'outer.txt'}").sources] == [str(tiles[0]),
                                                                                        str(tiles[3])]
    (tmp_path / "loop.txt").write_text("@loop.txt\n")
    with pytest.raises(InputError, match=r"loop.txt` line 1: `@loop.txt` nests lists more than 8 deep"):
        resolve_mosaic(f"@{tmp_path / 'loop.txt'}")


def test_an_at_folder_says_it_is_a_folder(tmp_path, tiles):
    folder = tiles[0].parent
    with pytest.raises(InputError, match=rf"`{folder}` is a folder, not a list file") as err:
        resolve_mosaic(f"@{folder}")
    assert "pass the folder itself" in err.value.hint
    _one_error(CliRunner().invoke(cli, ["segment", f"@{folder}", str(tmp_path / "out")]), "is a folder, not a list")


def test_an_empty_folder_hints_at_recursive_only_with_subfolders(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputNotFoundError, match="holds no raster") as err:
        resolve_mosaic(empty)
    assert "--recursive" not in err.value.hint
    (empty / "sub").mkdir()
    with pytest.raises(InputNotFoundError, match="holds no raster") as err:
        resolve_mosaic(empty)
    assert "--recursive" in err.value.hint


# ---------------------------------------------------------------------------
# 6. no cache file in messages; grids that cannot be read; sources too small or far apart
# ---------------------------------------------------------------------------
def test_a_band_error_names_the_inputs_not_the_cached_index(tiles):
    folder = tiles[0].parent
    with pytest.raises(BandSelectionError) as err:
        open_mosaic(folder, bands=[4, 3, 2])
    message = str(err.value)
    assert "tile-indexes" not in message and ".gti.gpkg" not in message
    assert f"the mosaic of 4 sources (`{folder}`) has 3 band(s)" in message


@pytest.mark.parametrize("resolution", [1e-9, [1e-6, 1e-6]])
def test_an_absurd_resolution_is_refused_up_front(tiles, resolution):
    with pytest.raises(ConfigError, match=r"the target grid would be \d+ x \d+ px at resolution 1e-0\d") as err:
        open_mosaic(tiles[0].parent, resolution=resolution)
    assert "tile-indexes" not in str(err.value) and "--resolution" in err.value.hint


def test_a_source_smaller_than_a_pixel_of_the_grid_is_warned_of(tmp_path, data_dir):
    landsat = data_dir / "landsat_rgb.tif"  # 300 m pixels, EPSG:32618
    tiny = _constant(tmp_path / "tiny.tif", 50, 200_000, 2_700_000, n=100, crs="EPSG:32618", res=0.1)  # 10 m
    with pytest.warns(RemoteSamsingWarning, match=r"tiny.tif` covers 0.033 x 0.033 px of the target grid"):
        resolve_mosaic([str(landsat), tiny])


def test_sources_far_apart_are_warned_of_and_sparse_ones_kept_quietly(tmp_path, data_dir):
    far = [str(data_dir / "kampala_crop_3857.tif"), str(data_dir / "landsat_rgb.tif")]
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always", RemoteSamsingWarning)
        resolve_mosaic(far)
    small_said, apart_said = sorted(str(w.message) for w in said)  # "`x.tif` covers", "the sources cover"
    assert "kampala_crop_3857.tif` covers 0.22 x 0.22 px of the target grid" in small_said
    assert re.search(r"% of the 41297 x 57501 px target grid: `.*kampala_crop_3857.tif` and `.*landsat_rgb.tif` lie "
                     r"far apart \(segment them separately", apart_said)
    a = _constant(tmp_path / "a.tif", 10, 0, 20)
    sparse = _constant(tmp_path / "sparse.tif", 20, 2600, 20)  # 800 of 52 400 px: 1.5 %
    with warnings.catch_warnings():
        warnings.simplefilter("error", RemoteSamsingWarning)
        assert resolve_mosaic([a, sparse]).grid.shape == (20, 2620)
    apart = _constant(tmp_path / "apart.tif", 20, 7980, 20)  # 800 of 160 000 px: 0.5 %
    with pytest.warns(RemoteSamsingWarning, match=r"cover 0.5 % of the 8000 x 20 px target grid: `.*a.tif` and "
                                                  r"`.*apart.tif` lie far apart"):
        assert resolve_mosaic([a, apart]).grid.shape == (20, 8000)  # a corridor: sparse, and kept


# ---------------------------------------------------------------------------
# 7. a missing raster is named with the file that names it
# ---------------------------------------------------------------------------
def test_a_missing_raster_names_the_stac_item_or_index_naming_it(tmp_path, tiles):
    stac = tmp_path / "items.json"
    stac.write_text(json.dumps({"type": "Feature", "stac_version": "1.0.0", "id": "x", "bbox": [0, 0, 1, 1],
                                "geometry": None, "properties": {"datetime": "2024-01-01T00:00:00Z"}, "links": [],
                                "assets": {"image": {"href": "nope.tif", "type": "image/tiff", "roles": ["data"]}}}))
    with pytest.raises(InputNotFoundError, match=rf"`{tmp_path / 'nope.tif'}`, named by `{stac}`, does not exist"):
        resolve_mosaic(stac)
    index = write_tile_index(resolve_mosaic([str(t) for t in tiles]), tmp_path / "m.gti.gpkg")
    fgb = _fgb(tmp_path / "m.gti.fgb", list(map(str, tiles)), [0, 1, 2, 3])
    tiles[2].unlink()
    for given in (index, fgb):
        with pytest.raises(InputNotFoundError, match=rf"`{tiles[2]}`, named by `{given}`, does not exist"):
            resolve_mosaic(given)


def test_an_asset_with_no_stac_input_is_one_error_not_ignored(tmp_path, tiles):
    """``--asset`` picks from STAC documents only: with none among the inputs (also in a list) it is refused,
    before any header is read, so a user who meant a STAC file learns it was not one."""
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(str(t) for t in tiles))
    for given in ([str(t) for t in tiles], f"@{listing}", str(tiles[0].parent)):
        with pytest.raises(ConfigError, match="--asset visual picks an asset of STAC Items, but no input is a STAC"):
            resolve_mosaic(given, asset="visual")
    result = CliRunner().invoke(cli, ["inspect", str(tiles[0]), "--asset", "visual"])
    _one_error(result, "no input is a STAC Item or ItemCollection")
    assert "drop --asset" in result.output


def test_a_store_that_cannot_be_listed_is_one_error_for_globs_and_folders(monkeypatch):
    """A glob or a folder on a store that refuses the listing (no permission, no credentials, unreachable)
    is an InputNotFoundError naming the URL and what reaches the store, as a single URL is."""
    import remote_samsing.sources as sources

    class Refusing:
        def glob(self, path, **kwargs):
            raise PermissionError("Access Denied")

        ls = find = glob

    monkeypatch.setattr(sources, "_fs", lambda url: (Refusing(), url.split("://", 1)[1]))
    for given in ("s3://bucket/tiles/*.tif", "s3://bucket/tiles/"):
        with pytest.raises(InputNotFoundError, match=rf"cannot list `{re.escape(given)}`: PermissionError: Access "
                                                     "Denied") as err:
            resolve_mosaic(given)
        assert "AWS_ACCESS_KEY_ID" in err.value.hint

    class Empty:  # a prefix that holds nothing: a folder not there, a pattern that matches nothing
        def glob(self, path, **kwargs):
            raise FileNotFoundError(path)

        ls = find = glob

    monkeypatch.setattr(sources, "_fs", lambda url: (Empty(), url.split("://", 1)[1]))
    with pytest.raises(InputNotFoundError, match=r"folder `s3://bucket/typo/` does not exist"):
        resolve_mosaic("s3://bucket/typo/")
    with pytest.raises(InputNotFoundError, match=r"the pattern `s3://bucket/tiles/\*.tif` matches no raster \(hint"):
        resolve_mosaic("s3://bucket/tiles/*.tif")
    Empty.exists = lambda self, path: False  # and the bucket is not there either: said so
    with pytest.raises(InputNotFoundError, match=r"the pattern `s3://nobucket/t/\*.tif` matches no raster: bucket "
                                                 r"`s3://nobucket` does not exist"):
        resolve_mosaic("s3://nobucket/t/*.tif")


def test_an_unknown_crs_is_one_error_and_no_proj_line(data_dir):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "remote_samsing", "inspect", str(data_dir / "landsat_rgb.tif"),
                        "--crs", "EPSG:99999"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    lines = r.stderr.splitlines()
    assert len(lines) == 2 and lines[0].startswith("error: `crs` 'EPSG:99999' is not a CRS GDAL knows"), r.stderr
