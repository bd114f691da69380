"""Mosaics of many files: the forms of INPUT, the target grid, overlaps, gaps, bad inputs, reruns."""

import json
import os
import shutil

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

import remote_samsing as rs
from remote_samsing.config import RunConfig
from remote_samsing.exceptions import ConfigError, InputError, InputNotFoundError, UnsupportedDtypeError
from remote_samsing.io import open_mosaic
from remote_samsing.sources import describe_sources, expand_inputs, resolve_mosaic, target_grid, write_tile_index
from remote_samsing.testing import assert_equivalent_labels, cut_tiles

SEG = dict(segmenter="felzenszwalb", tile_size=128, padding=16, segmenter_params={"scale": 50, "min_size": 10})


@pytest.fixture
def tiles(tmp_path, scene):
    """The scene cut into 2 rows of 3 GeoTIFFs (rows of 200 px, columns of 133-134)."""
    return cut_tiles(scene, tmp_path / "tiles", rows=2, cols=3)


def _read(path):
    with rasterio.open(path) as src:
        return src.read(), src.transform, src.crs, src.nodata


def _assert_same_mosaic(arr, scene):
    pixels, transform, crs, nodata = _read(scene)
    assert arr.rio.crs == crs and arr.rio.transform() == transform and arr.rio.nodata == nodata
    np.testing.assert_array_equal(arr.values, pixels)


def _vrt(path, tiles, scene):
    """A VRT of ``tiles`` on the grid of ``scene``, written as gdalbuildvrt would."""
    with rasterio.open(scene) as src:
        head = (f'<VRTDataset rasterXSize="{src.width}" rasterYSize="{src.height}"><SRS>{src.crs.to_wkt()}</SRS>'
                f'<GeoTransform>{", ".join(map(repr, src.transform.to_gdal()))}</GeoTransform>')
        bands = []
        for b in range(1, src.count + 1):
            parts = [f'<VRTRasterBand dataType="Byte" band="{b}"><NoDataValue>{src.nodata}</NoDataValue>']
            for t in tiles:
                with rasterio.open(t) as tile:
                    col, row = ~src.transform * (tile.transform.c, tile.transform.f)
                    parts.append(
                        f'<ComplexSource><SourceFilename relativeToVRT="0">{t}</SourceFilename>'
                        f'<SourceBand>{b}</SourceBand><NODATA>{src.nodata}</NODATA>'
                        f'<SrcRect xOff="0" yOff="0" xSize="{tile.width}" ySize="{tile.height}"/>'
                        f'<DstRect xOff="{round(col)}" yOff="{round(row)}" xSize="{tile.width}" '
                        f'ySize="{tile.height}"/></ComplexSource>')
            bands.append("".join(parts) + "</VRTRasterBand>")
    path.write_text(head + "".join(bands) + "</VRTDataset>")
    return path


def _stac(path, tiles, *, roles=("visual",), extra=None):
    """A STAC ItemCollection with one item per tile (hrefs relative to the JSON file)."""
    items = []
    for i, t in enumerate(tiles):
        with rasterio.open(t) as src:
            b = rasterio.warp.transform_bounds(src.crs, "EPSG:4326", *src.bounds)
        assets = {"image": {"href": os.path.relpath(t, path.parent), "type": "image/tiff; application=geotiff",
                            "roles": list(roles)}, **(extra or {})}
        items.append({"type": "Feature", "stac_version": "1.0.0", "id": f"tile-{i}", "properties":
                      {"datetime": "2024-01-01T00:00:00Z"}, "bbox": list(b),
                      "geometry": {"type": "Polygon", "coordinates": [[[b[0], b[1]], [b[2], b[1]], [b[2], b[3]],
                                                                        [b[0], b[3]], [b[0], b[1]]]]},
                      "links": [], "assets": assets})
    path.write_text(json.dumps({"type": "FeatureCollection", "features": items}))
    return path


# ---------------------------------------------------------------------------
# every form of INPUT gives the scene's own grid and pixels
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("form", ["folder", "glob", "arguments", "list", "vrt", "gti", "gti-xml", "stac"])
def test_every_form_of_input_is_the_single_file_pixel_for_pixel(tmp_path, tiles, scene, form):
    folder = tiles[0].parent
    if form == "folder":
        given = folder
    elif form == "glob":
        given = str(folder / "tile_*.tif")
    elif form == "arguments":
        given = [str(t) for t in tiles]
    elif form == "list":
        listing = tmp_path / "tiles.txt"
        listing.write_text("# the tiles\n\n" + "\n".join(f"tiles/{t.name}" for t in tiles) + "\n")
        given = f"@{listing}"
    elif form == "vrt":
        given = _vrt(tmp_path / "m.vrt", tiles, scene)
    elif form == "gti":
        given = write_tile_index(resolve_mosaic([str(t) for t in tiles]), tmp_path / "m.gti.gpkg")
    elif form == "gti-xml":  # the XML form, naming its index
        index = write_tile_index(resolve_mosaic([str(t) for t in tiles]), tmp_path / "index.gpkg")
        given = tmp_path / "m.gti"
        given.write_text(f"<GDALTileIndexDataset><IndexDataset>{index}</IndexDataset>"
                         "<LocationField>location</LocationField></GDALTileIndexDataset>")
    else:
        given = _stac(tmp_path / "items.json", tiles)
    arr = open_mosaic(given, chunks=128)
    _assert_same_mosaic(arr, scene)
    mosaic = resolve_mosaic(given)
    assert sorted(s.location for s in mosaic.sources) == sorted(map(str, tiles))  # a VRT or index: its tiles


def test_tiles_segment_as_the_single_file(tiles, scene):
    one = rs.segment(scene, **SEG).compute(scheduler="sync")
    many = rs.segment(tiles[0].parent, **SEG).compute(scheduler="sync")
    assert many.rio.transform() == one.rio.transform() and many.rio.crs == one.rio.crs
    assert_equivalent_labels(many.values, one.values)


def test_a_vrt_of_a_vrt_segments_as_the_single_file(tmp_path, tiles, scene):
    inner = _vrt(tmp_path / "inner.vrt", tiles, scene)
    outer = _vrt(tmp_path / "outer.vrt", [inner], scene)
    _assert_same_mosaic(open_mosaic(outer, chunks=128), scene)
    assert rs.inspect_mosaic(outer, tile_size=128, padding=16)["sources"] == len(tiles)  # VRTs are containers
    one = rs.segment(scene, **SEG).compute(scheduler="sync")
    nested = rs.segment(outer, **SEG).compute(scheduler="sync")
    assert nested.rio.transform() == one.rio.transform() and nested.rio.crs == one.rio.crs
    assert_equivalent_labels(nested.values, one.values)


def test_a_folder_lists_rasters_only_and_descends_when_recursive(tmp_path, tiles, scene):
    folder = tiles[0].parent
    (folder / "notes.txt").write_text("not a raster")
    (folder / "thumb.png").write_bytes(b"not georeferenced")  # a PNG without georeferencing: not a source
    sub = folder / "more"
    sub.mkdir()
    shutil.move(tiles[-1], sub / tiles[-1].name)
    assert len(resolve_mosaic(folder).sources) == len(tiles) - 1
    _assert_same_mosaic(open_mosaic(folder, recursive=True), scene)
    # another run's OUTDIR in it: its labels.tif is a product, never a source (also for inspect)
    run_dir = folder / "earlier-run"
    (run_dir / "staging").mkdir(parents=True)
    (run_dir / "run.json").write_text("{}")
    shutil.copy(tiles[0], run_dir / "labels.tif")
    assert len(resolve_mosaic(folder, recursive=True).sources) == len(tiles)
    assert rs.inspect_mosaic(folder, recursive=True, tile_size=128, padding=16)["sources"] == len(tiles)


def test_a_file_name_with_glob_characters_is_read_as_that_file(tmp_path, tiles, scene):
    odd = tiles[0].parent / "odd[1].tif"  # as a glob, `[1]` would match `odd1.tif` only
    shutil.copy(tiles[0], odd)
    assert expand_inputs(odd) == [str(odd)] and expand_inputs(str(odd)) == [str(odd)]
    assert str(odd) in expand_inputs(str(tiles[0].parent / "*.tif"))  # a glob's matches are names, not patterns
    listing = tmp_path / "l.txt"
    listing.write_text("tiles/odd[1].tif\n")
    assert expand_inputs(f"@{listing}") == [str(odd)]
    np.testing.assert_array_equal(open_mosaic(odd).values, _read(tiles[0])[0])


def test_a_signed_https_url_is_one_input_not_a_glob(monkeypatch):
    import remote_samsing.sources as sources

    def no_listing(url):
        raise AssertionError(f"`{url}` was listed as a glob or folder")

    monkeypatch.setattr(sources, "_fs", no_listing)
    url = "https://data.example.com/scene[2].tif?X-Amz-Expires=3600&X-Amz-Signature=ab*cd"
    assert expand_inputs([url]) == [url]


# ---------------------------------------------------------------------------
# the target grid: mixed CRSs and resolutions, overrides, overlaps, gaps
# ---------------------------------------------------------------------------
def _warp(src_path, dst_path, crs, *, scale=1.0):
    from rasterio.warp import Resampling, calculate_default_transform, reproject

    with rasterio.open(src_path) as src:
        transform, w, h = calculate_default_transform(src.crs, crs, src.width, src.height, *src.bounds)
        if scale != 1.0:
            transform = transform * transform.scale(scale)
            w, h = round(w / scale), round(h / scale)
        profile = {**src.profile, "crs": crs, "transform": transform, "width": w, "height": h}
        with rasterio.open(dst_path, "w", **profile) as dst:
            for b in range(1, src.count + 1):
                reproject(rasterio.band(src, b), rasterio.band(dst, b), resampling=Resampling.bilinear)
    return dst_path


def test_mixed_crs_is_warped_onto_the_largest_share(tmp_path, tiles, scene):
    warped = _warp(tiles[4], tmp_path / "warped.tif", "EPSG:3857")
    tiles[4].unlink()
    arr = open_mosaic([*[str(t) for t in tiles if t.exists()], str(warped)])
    pixels, transform, crs, _ = _read(scene)
    assert arr.rio.crs == crs and arr.rio.transform() == transform
    assert arr.shape[1:] == pixels.shape[1:] or abs(arr.shape[1] - pixels.shape[1]) <= 1
    got = arr.values[:, : pixels.shape[1], : pixels.shape[2]]
    # the tiles on the grid are copied exactly; the warped one is close (two resamplings)
    np.testing.assert_array_equal(got[:, :198], pixels[:, :198])  # the warped tile (listed last) may reach row 199
    region = (slice(None), slice(210, 390), slice(143, 257))
    assert np.abs(got[region].astype(int) - pixels[region]).mean() < 12
    assert resolve_mosaic(tiles[0].parent).grid.crs is not None
    # inspect says each resolution with its CRS, whose units it is in
    from click.testing import CliRunner

    from remote_samsing.cli import cli

    with rasterio.open(warped) as src:
        wx, wy = abs(src.transform.a), abs(src.transform.e)
    r = CliRunner().invoke(cli, ["inspect", *[str(t) for t in tiles if t.exists()], str(warped)])
    lines = dict(line.split(None, 1) for line in r.output.splitlines() if not line.startswith("target grid"))
    assert lines["crs"] == "EPSG:32617, EPSG:3857"
    assert lines["resolutions"] == f"0.1 x 0.1 (EPSG:32617), {wx:g} x {wy:g} (EPSG:3857)"


def test_crs_and_resolution_overrides(tiles, scene):
    folder = tiles[0].parent
    coarse = open_mosaic(folder, resolution=0.2, resampling="average")
    assert coarse.rio.resolution() == (0.2, -0.2) and coarse.shape[1:] == (200, 200)
    merc = open_mosaic(folder, crs="EPSG:3857")
    assert merc.rio.crs.to_epsg() == 3857
    with pytest.raises(ConfigError, match="resolution"):
        open_mosaic(folder, resolution=-1)
    with pytest.raises(ConfigError, match="not a CRS"):
        open_mosaic(folder, crs="EPSG:0")


def _constant(path, value, x0, y0, *, n=20, nodata=None, count=3, dtype="uint8", crs="EPSG:32617", res=1.0):
    profile = dict(driver="GTiff", width=n, height=n, count=count, dtype=dtype, crs=crs,
                   transform=from_origin(x0, y0, res, res), nodata=nodata)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.full((count, n, n), value, dtype))
    return str(path)


def test_mixed_resolutions_take_the_resolution_of_the_larger_pixel_share(tmp_path):
    coarse = _constant(tmp_path / "coarse.tif", 10, 0, 20)  # 400 px of 1 m: 400 m2
    tiny = _constant(tmp_path / "tiny.tif", 20, 20, 20, n=10, res=0.5)  # 100 px of 0.5 m
    fine = _constant(tmp_path / "fine.tif", 20, 20, 20, n=30, res=0.5)  # 900 px of 0.5 m: only 225 m2
    for given in ([coarse, tiny], [tiny, coarse]):
        assert target_grid(describe_sources(given)).transform[0] == 1.0
        # x from 0 (coarse's left) to 25 (tiny's right: 20 + 10 px x 0.5 m), y from 20 down to 0: at 1 m
        assert open_mosaic(given).sizes == {"band": 3, "y": 20, "x": 25}
    grid = target_grid(describe_sources([coarse, fine]))  # pixels count, not area
    assert grid.transform[0] == 0.5 == -grid.transform[4] and grid.shape == (40, 70)  # 35 m x 20 m
    # x from 0 to 35 (fine's right: 20 + 30 px x 0.5 m), y from 20 to 0: at 0.5 m, 70 x 40 px
    arr = open_mosaic([coarse, fine])
    assert arr.sizes["x"] == (35 - 0) / 0.5 == 70 and arr.sizes["y"] == (20 - 0) / 0.5 == 40
    assert arr.rio.bounds() == (0.0, 0.0, 35.0, 20.0)
    assert (arr.values[:, :, :40] == 10).all() and (arr.values[:, :30, 40:] == 20).all()  # fine covers y 20..5
    facts = rs.inspect_mosaic([coarse, fine], tile_size=128, padding=16)
    assert facts["resolutions"] == [(0.5, 0.5), (1.0, 1.0)] and facts["grid"]["resolution"] == (0.5, 0.5)


def test_overlaps_the_last_listed_source_wins(tmp_path):
    a = _constant(tmp_path / "a.tif", 10, 0, 20)
    b = _constant(tmp_path / "b.tif", 200, 10, 20)
    assert open_mosaic([a, b]).values[0, 0, 12] == 200
    assert open_mosaic([b, a]).values[0, 0, 12] == 10


def test_gaps_are_nodata_and_never_segmented(tmp_path, tiles, scene):
    tiles[1].unlink()  # the top middle tile: the grid stays the scene's
    arr = open_mosaic(tiles[0].parent)
    pixels, *_ = _read(scene)
    assert arr.shape == pixels.shape and arr.rio.nodata == 255
    assert (arr.values[:, :200, 133:267] == 255).all()
    labels = rs.segment(tiles[0].parent, **SEG).compute(scheduler="sync").values
    assert not labels[:200, 133:267].any() and labels[200:].any()
    # sources that declare no nodata: the gaps get 0
    a = _constant(tmp_path / "a.tif", 50, 0, 20)
    b = _constant(tmp_path / "b.tif", 60, 30, 20)
    gap = open_mosaic([a, b])
    assert gap.rio.nodata == 0 and gap.shape[1:] == (20, 50) and (gap.values[:, :, 20:30] == 0).all()


def test_each_sources_nodata_is_transparent(tmp_path):
    a = _constant(tmp_path / "a.tif", 10, 0, 20)
    b = _constant(tmp_path / "b.tif", 7, 0, 20, nodata=7)  # all nodata: a shows through
    assert (open_mosaic([a, b]).values == 10).all()


def test_the_stretch_samples_every_source_and_equals_the_single_files(tmp_path):
    # a row of 20 uint16 tiles, one bright: a lattice of 8 sampled blocks of 64 px would miss it
    tiles = [_constant(tmp_path / f"t{i:02d}.tif", 5000 if i == 1 else 100 + i, 64 * i, 20, n=64, dtype="uint16",
                       count=1) for i in range(20)]
    arr = open_mosaic(tiles, chunks=64)
    assert arr.data.numblocks[2] == 20 and 1 not in np.linspace(0, 19, 8).round()
    limits = rs.io.stretch_limits(arr).compute(scheduler="sync")
    assert limits[0, 1] == 5000 and 100 <= limits[0, 0] < 120
    # the same pixels as one file, and as an array in memory: the same limits
    one = tmp_path / "one.tif"
    with rasterio.open(one, "w", **{**rasterio.open(tiles[0]).profile, "width": 64 * 20}) as dst:
        dst.write(arr.values)
    single = rs.io.stretch_limits(open_mosaic(one, chunks=64)).compute(scheduler="sync")
    memory = open_mosaic(one, chunks=64).compute()
    memory.attrs.pop("source")
    np.testing.assert_array_equal(single, limits)
    np.testing.assert_array_equal(rs.io.stretch_limits(memory).compute(scheduler="sync"), limits)


# ---------------------------------------------------------------------------
# bad input: one line each, before any work
# ---------------------------------------------------------------------------
def test_bad_inputs_are_named(tmp_path, tiles):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputNotFoundError, match="holds no raster"):
        resolve_mosaic(empty)
    with pytest.raises(InputNotFoundError, match="matches no raster"):
        resolve_mosaic(str(tmp_path / "nothing_*.tif"))
    listing = tmp_path / "l.txt"
    listing.write_text(f"{tiles[0]}\n\n# comment\nmissing.tif\n")
    with pytest.raises(InputNotFoundError, match=r"line 4: `missing.tif` does not exist"):
        resolve_mosaic(f"@{listing}")
    grey = _constant(tmp_path / "grey.tif", 1, 0, 20, count=1, crs="EPSG:32617")
    with pytest.raises(InputError, match="grey.tif` has 1 band"):
        resolve_mosaic([str(tiles[0]), grey])
    wide = _constant(tmp_path / "wide.tif", 1, 0, 20, dtype="uint16")
    with pytest.raises(InputError, match="wide.tif` has 3 band.* of uint16"):
        resolve_mosaic([str(tiles[0]), wide])
    broken = tmp_path / "broken.tif"
    broken.write_bytes(b"II*\x00garbage")
    with pytest.raises(InputNotFoundError, match="cannot read raster `.*broken.tif`"):
        resolve_mosaic([str(tiles[0]), str(broken)])
    with pytest.raises(InputError, match="no asset `nir`"):
        resolve_mosaic(_stac(tmp_path / "s.json", tiles[:1]), asset="nir")
    two = _stac(tmp_path / "two.json", tiles[:1], roles=("data",),
                extra={"other": {"href": "x.tif", "type": "image/tiff", "roles": ["data"]}})
    with pytest.raises(InputError, match="--asset"):
        resolve_mosaic(two)


def test_a_stac_item_with_only_a_thumbnail_has_no_usable_asset(tmp_path, tiles):
    thumb = {"thumbnail": {"href": "thumb.png", "type": "image/png", "roles": ["thumbnail"]}}
    given = _stac(tmp_path / "t.json", tiles[:1], extra=thumb)
    data = json.loads(given.read_text())
    del data["features"][0]["assets"]["image"]
    given.write_text(json.dumps(data))
    with pytest.raises(InputError) as err:
        resolve_mosaic(given)
    assert err.value.args[0].endswith("has no usable raster asset; its assets: thumbnail (image/png; roles thumbnail)")
    assert "candidate" not in str(err.value) and "--asset NAME" in err.value.hint


@pytest.mark.parametrize("roles", [("data",), (), ("reflectance",)])
def test_without_a_visual_asset_the_only_raster_asset_is_read(tmp_path, tiles, roles):
    side = {"thumbnail": {"href": "thumb.png", "type": "image/png", "roles": ["thumbnail"]},
            "meta": {"href": "meta.xml", "type": "application/xml", "roles": ["metadata"]}}
    given = _stac(tmp_path / "d.json", tiles[:1], roles=roles, extra=side)
    assert [s.location for s in resolve_mosaic(given).sources] == [str(tiles[0])]


def test_two_candidate_stac_assets_are_counted_and_listed(tmp_path, tiles):
    two = _stac(tmp_path / "two.json", tiles[:1], roles=("data",),
                extra={"other": {"href": "x.tif", "type": "image/tiff", "roles": ["data"]}})
    with pytest.raises(InputError) as err:
        resolve_mosaic(two)
    assert err.value.args[0].endswith("no asset with role `visual` and 2 candidate raster assets: image, other")
    assert "other (image/tiff; roles data)" in err.value.hint


def test_a_south_up_source_is_refused_in_a_mosaic_and_read_as_it_is_alone(tmp_path):
    north = _constant(tmp_path / "north.tif", 10, 0, 20)
    south = tmp_path / "south.tif"  # positive y resolution: row 0 is the southern edge
    profile = dict(driver="GTiff", width=20, height=20, count=3, dtype="uint8", crs="EPSG:32617",
                   transform=rasterio.Affine(1, 0, 20, 0, 1, 0))
    with rasterio.open(south, "w", **profile) as dst:
        dst.write(np.full((3, 20, 20), 20, np.uint8))
    for given in ([north, str(south)], [str(south), north]):
        with pytest.raises(InputError, match=r"south.tif` is not on a north-up grid") as err:
            resolve_mosaic(given)
        assert "\n" not in str(err.value) and "warp it" in err.value.hint
    assert open_mosaic(south).rio.transform() == profile["transform"]  # one file: segmented on its own grid


def test_an_unsupported_dtype_is_one_line_naming_the_file(tmp_path):
    ok = _constant(tmp_path / "ok.tif", 10, 0, 20)
    wide = _constant(tmp_path / "i64.tif", 10, 20, 20, dtype="int64")
    for given in (wide, [wide, ok]):
        with pytest.raises(UnsupportedDtypeError, match=r"i64.tif` has dtype int64, which cannot be converted"):
            resolve_mosaic(given) if isinstance(given, list) else open_mosaic(given)
    with pytest.raises(InputError, match=r"i64.tif` has 3 band\(s\) of int64, but `.*ok.tif` has 3 of uint8"):
        resolve_mosaic([ok, wide])


def test_a_mixed_band_count_names_the_first_odd_file(tmp_path):
    rgb = [_constant(tmp_path / f"rgb{i}.tif", 10, 20 * i, 20) for i in range(2)]
    grey = [_constant(tmp_path / f"grey{i}.tif", 10, 40 + 20 * i, 20, count=1) for i in range(2)]
    with pytest.raises(InputError, match=r"grey0.tif` has 1 band\(s\) of uint8, but `.*rgb0.tif` has 3"):
        resolve_mosaic([rgb[0], grey[0], rgb[1], grey[1]])


def test_a_stac_page_with_a_next_link_is_refused(tmp_path, tiles):
    page = _stac(tmp_path / "page.json", tiles[:2])
    data = json.loads(page.read_text())
    data["links"] = [{"rel": "next", "href": "https://stac.example.com/search?page=2", "type": "application/geo+json"}]
    page.write_text(json.dumps(data))
    with pytest.raises(InputError, match="is one page of several") as err:
        resolve_mosaic(page)
    assert "item_collection()" in err.value.hint


def test_an_outdir_that_is_a_file_is_refused_and_kept(tmp_path, tiles):
    before = tiles[1].read_bytes()
    with pytest.raises(rs.exceptions.OutputExistsError, match="is an existing file"):
        rs.run([str(tiles[0])], tiles[1], config=RunConfig(segmenter="felzenszwalb", overwrite=True))
    assert tiles[1].read_bytes() == before


def test_inspect_reports_what_a_run_would_see(tiles):
    facts = rs.inspect_mosaic(tiles[0].parent, tile_size=128, padding=16)
    assert facts["sources"] == 6 and facts["crs"] == ["EPSG:32617"] and facts["resolutions"] == [(0.1, 0.1)]
    assert facts["grid"]["size"] == (400, 400) and facts["grid"]["bands"] == 3 and facts["grid"]["nodata"] == 255
    assert facts["blocks"]["count"] == 16 and facts["blocks"]["grid"] == (4, 4)
    plan = rs.tiling.TilingPlan(shape=(400, 400), tile_size=128, padding=16)
    assert facts["output_bytes"] == rs._outdir.estimate_bytes(plan, vectors=True)  # the disk-space check's
    bare = rs.inspect_mosaic(tiles[0].parent, tile_size=128, padding=16, vectors=False)["output_bytes"]
    assert bare == rs._outdir.estimate_bytes(plan, vectors=False) and bare["vectors"] == 0



def test_inspect_counts_the_blocks_that_read_no_source(tmp_path):
    a = _constant(tmp_path / "a.tif", 10, 0, 20)
    b = _constant(tmp_path / "b.tif", 20, 200, 20)  # a 20 x 220 px grid, 180 px of it between them
    facts = rs.inspect_mosaic([a, b], tile_size=32, padding=4)
    # cores start every 32 px; padded, only the first ([0, 36)) and the last ([188, 220)) meet a source
    assert facts["blocks"]["count"] == 7 and facts["blocks"]["reading_nothing"] == 5
    assert rs.inspect_mosaic(a, tile_size=8, padding=2)["blocks"]["reading_nothing"] == 0

# ---------------------------------------------------------------------------
# reruns when sources change
# ---------------------------------------------------------------------------
def _blocks_touching(window, plan):
    """By hand, block by block (``TilingPlan.blocks_touching`` does it by ranges)."""
    y0, y1, x0, x1 = window
    expect = {b for b in plan.block_ids() if (w := plan.padded_window(b)).y0 < y1 and y0 < w.y1
              and w.x0 < x1 and x0 < w.x1}
    assert set(plan.blocks_touching(window)) == expect
    return expect


def test_changed_sources_redo_only_their_blocks(tmp_path, tiles, client):
    folder = tiles[0].parent
    cfg = RunConfig(**SEG, progress=False)
    out = tmp_path / "out"
    first = rs.run(folder, out, config=cfg, client=client)
    assert first["blocks_segmented_this_run"] == 16 and (out / "sources.gti.gpkg").exists()
    assert len(first["input"]["sources"]) == 6 and all("mtime_ns" in s for s in first["input"]["sources"])
    assert rs.run(folder, out, config=cfg, client=client).get("up_to_date")
    plan = rs.TilingPlan(shape=(400, 400), tile_size=128, padding=16)
    # edit one tile's pixels: only the blocks its footprint touches are redone
    with rasterio.open(tiles[0], "r+") as dst:
        dst.write(255 - dst.read())
    said = []
    edited = rs.run(folder, out, config=cfg, client=client, log=said.append)
    expect = _blocks_touching((0, 200, 0, 133), plan)
    assert (f"sources changed since the last run (1 edited): segmenting again the {len(expect)} blocks they "
            "touch") in said
    assert edited["sources_changed"] == [{"location": str(tiles[0]), "change": "edited"}]
    assert {tuple(b) for b in edited["blocks_redone"]} == expect
    assert edited["blocks_segmented_this_run"] == len(expect) < 16
    fresh = rs.run(folder, tmp_path / "fresh", config=cfg, client=client)
    _assert_same_products(out, tmp_path / "fresh", fresh)
    # remove a tile, then add it back: each time a rerun, never "up to date"
    shutil.move(tiles[1], tmp_path / "aside.tif")
    removed = rs.run(folder, out, config=cfg, client=client)
    assert removed["sources_changed"] == [{"location": str(tiles[1]), "change": "removed"}]
    assert {tuple(b) for b in removed["blocks_redone"]} == _blocks_touching((0, 200, 133, 267), plan)
    fresh_removed = rs.run(folder, tmp_path / "fresh-removed", config=cfg, client=client)
    _assert_same_products(out, tmp_path / "fresh-removed", fresh_removed)
    shutil.move(tmp_path / "aside.tif", tiles[1])
    added = rs.run(folder, out, config=cfg, client=client)
    assert [c["change"] for c in added["sources_changed"]] == ["added"]
    _assert_same_products(out, tmp_path / "fresh", fresh)


def test_removing_the_grids_first_source_keeps_the_grid_bit_for_bit(tmp_path, data_dir, client):
    """The grid's pixel edges are anchored on its first source. Landsat's resolution (300.0379... m) is not
    a round number, so edges recomputed from another anchor would differ in the last bits: removing the
    top-left tile, which leaves the union's box unchanged, must still be the same grid, and the rerun
    redoes only the blocks that tile touched."""
    tiles = cut_tiles(data_dir / "landsat_rgb.tif", tmp_path / "tiles", rows=2, cols=2)
    whole = resolve_mosaic([str(t) for t in tiles]).grid
    assert resolve_mosaic([str(t) for t in tiles[1:]]).grid.transform == whole.transform
    with rasterio.open(data_dir / "landsat_rgb.tif") as src:
        assert whole.transform == tuple(src.transform)[:6] and whole.shape == src.shape
    cfg = RunConfig(**{**SEG, "tile_size": 256, "padding": 32}, progress=False, vectors=False)
    out = tmp_path / "out"
    rs.run(tiles[0].parent, out, config=cfg, client=client)
    shutil.move(tiles[0], tmp_path / "aside.tif")
    removed = rs.run(tiles[0].parent, out, config=cfg, client=client)
    assert removed["sources_changed"] == [{"location": str(tiles[0]), "change": "removed"}]
    plan = rs.TilingPlan(shape=whole.shape, tile_size=256, padding=32)
    assert {tuple(b) for b in removed["blocks_redone"]} == _blocks_touching((0, 359, 0, 396), plan)


def test_a_changed_nodata_is_never_up_to_date(tmp_path, tiles, client):
    folder = tiles[0].parent
    cfg = RunConfig(**{**SEG, "tile_size": 256}, progress=False, vectors=False)
    out = tmp_path / "out"
    rs.run(folder, out, config=cfg, client=client)
    before = (out / "labels.tif").read_bytes()
    # another nodata is another job: refused, naming the change, with OUTDIR untouched
    with pytest.raises(rs.exceptions.FingerprintMismatchError, match=r"nodata: None -> 0.0"):
        rs.run(folder, out, config=cfg.replace(nodata=0.0), client=client)
    assert (out / "labels.tif").read_bytes() == before
    redone = rs.run(folder, out, config=cfg.replace(nodata=0.0, overwrite=True), client=client)
    assert redone["blocks_segmented_this_run"] == 4 and redone["input"]["nodata"] == 0.0
    fresh = rs.run(folder, tmp_path / "fresh", config=cfg.replace(nodata=0.0), client=client)
    _assert_same_products(out, tmp_path / "fresh", fresh)


def test_a_uint16_mosaic_of_many_files_segments_as_one_file(tmp_path, scene):
    pixels, transform, crs, _ = _read(scene)
    one = tmp_path / "one.tif"
    profile = dict(driver="GTiff", width=pixels.shape[2], height=pixels.shape[1], count=3, dtype="uint16", crs=crs,
                   transform=transform)
    with rasterio.open(one, "w", **profile) as dst:
        dst.write(pixels.astype(np.uint16) * 40 + 300)  # the stretch maps it back: a real uint16 range
    tiles = cut_tiles(one, tmp_path / "tiles", rows=2, cols=3)
    single = rs.segment(one, **SEG).compute(scheduler="sync")
    many = rs.segment(tiles[0].parent, **SEG).compute(scheduler="sync")
    assert many.rio.transform() == single.rio.transform()
    assert_equivalent_labels(many.values, single.values)


def test_an_outdir_inside_a_recursive_input_folder_is_not_read_as_sources(tiles, client):
    folder = tiles[0].parent
    out = folder / "out"  # its labels.tif and sources.gti.gpkg would be rasters of the folder
    cfg = RunConfig(**{**SEG, "tile_size": 256}, progress=False, vectors=False, recursive=True)
    first = rs.run(folder, out, config=cfg, client=client)
    assert (out / "labels.tif").exists() and len(first["input"]["sources"]) == len(tiles)
    again = rs.run(folder, out, config=cfg, client=client)
    assert again.get("up_to_date") and len(again["input"]["sources"]) == len(tiles)


def test_a_grown_mosaic_is_refused(tmp_path, tiles, client):
    aside = tmp_path / "aside"
    aside.mkdir()
    for t in tiles[3:]:  # the bottom row
        shutil.move(t, aside / t.name)
    out = tmp_path / "out"
    rs.run(tiles[0].parent, out, config=RunConfig(**SEG, progress=False), client=client)
    for t in tiles[3:]:
        shutil.move(aside / t.name, t)
    with pytest.raises(rs.exceptions.FingerprintMismatchError, match=r"input size: \[200, 400\] -> \[400, 400\]") as err:
        rs.run(tiles[0].parent, out, config=RunConfig(**SEG, progress=False), client=client)
    # the sources that grew it, named
    assert Exception.__str__(err.value).endswith("; sources added: " + ", ".join(f"`{t}`" for t in tiles[3:]))


def _assert_same_products(a, b, record):
    with rasterio.open(a / "labels.tif") as x, rasterio.open(b / "labels.tif") as y:
        assert x.transform == y.transform and x.crs == y.crs
        np.testing.assert_array_equal(x.read(1), y.read(1))
    assert json.loads((a / "run.json").read_text())["n_segments"] == record["n_segments"]


def test_each_sources_alpha_is_honoured(tmp_path):
    from rasterio.enums import ColorInterp

    def rgba(path, value, x0, opaque_rows):
        profile = dict(driver="GTiff", width=20, height=20, count=4, dtype="uint8", crs="EPSG:32617",
                       transform=from_origin(x0, 20, 1, 1))
        data = np.full((4, 20, 20), value, np.uint8)
        data[3] = 0
        data[3, opaque_rows] = 255
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(data)
            dst.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha]
        return str(path)

    a = rgba(tmp_path / "a.tif", 10, 0, slice(0, 20))
    b = rgba(tmp_path / "b.tif", 200, 10, slice(0, 10))  # listed last, transparent in its lower half
    arr = open_mosaic([a, b])
    assert arr.attrs["alpha_band"] == 4
    values = arr.values
    assert values[0, 0, 15] == 200 and values[0, 15, 15] == 10  # a shows through b's transparent half
    assert values[3, 15, 25] == 0  # neither covers it: not valid
    reader = rs.io.window_reader(arr)
    valid = reader.read_valid((0, 20, 0, 30))
    assert valid[:, :20].all() and valid[:10, 20:].all() and not valid[10:, 20:].any()


def test_a_block_opens_only_the_sources_its_window_touches(tmp_path, tiles):
    arr = open_mosaic(tiles[0].parent)
    reader = rs.io.window_reader(arr)
    tiles[-1].unlink()  # the bottom right tile is gone: windows away from it still read
    pixels, *_ = _read(tiles[0])
    np.testing.assert_array_equal(reader.read((0, 150, 0, 100)), pixels[:, :150, :100])
    with pytest.raises(rs.exceptions.WindowReadError, match="tile_1_2.tif"):
        reader.checked_read((300, 400, 300, 400), np.zeros((3, 2)))


def test_a_source_damaged_after_the_header_read_is_named(tmp_path, tiles):
    arr = open_mosaic(tiles[0].parent)
    reader = rs.io.window_reader(arr)
    tiles[-1].write_bytes(tiles[-1].read_bytes()[:200])  # truncated after the run read its header
    with pytest.raises(rs.exceptions.WindowReadError, match="tile_1_2.tif"):
        reader.checked_read((300, 400, 300, 400), np.zeros((3, 2)))


def test_a_tile_damaged_past_its_header_is_named_not_the_index(tmp_path, tiles):
    """A tile truncated past its header fails inside the GTI driver's read: the error names that tile by its
    full path (the file to check or fetch again), not the tile index the window is read through."""
    arr = open_mosaic(tiles[0].parent)
    reader = rs.io.window_reader(arr)
    data = tiles[-1].read_bytes()
    tiles[-1].write_bytes(data[: len(data) // 2])
    with pytest.raises(rs.exceptions.WindowReadError) as err:  # over tiles[-2] and tiles[-1]
        reader.checked_read((300, 400, 200, 400), np.zeros((3, 2)), block=(2, 2))
    assert str(err.value).startswith(f"cannot read `{tiles[-1]}` at rows 300:400, columns 200:400 (x ")
    assert "(block (2, 2))" in str(err.value) and ".gti." not in str(err.value)


def test_an_edited_tile_of_a_vrt_redoes_its_blocks(tmp_path, tiles, scene, client):
    vrt = _vrt(tmp_path / "m.vrt", tiles, scene)
    cfg = RunConfig(**SEG, progress=False, vectors=False)
    out = tmp_path / "out"
    rs.run(vrt, out, config=cfg, client=client)
    with rasterio.open(tiles[5], "r+") as dst:
        dst.write(255 - dst.read())
    again = rs.run(vrt, out, config=cfg, client=client)
    assert not again.get("up_to_date") and again["sources_changed"] == [{"location": str(tiles[5]),
                                                                          "change": "edited"}]
    plan = rs.TilingPlan(shape=(400, 400), tile_size=128, padding=16)
    assert {tuple(b) for b in again["blocks_redone"]} == _blocks_touching((200, 400, 267, 400), plan)
    fresh = rs.run(vrt, tmp_path / "fresh", config=cfg, client=client)
    _assert_same_products(out, tmp_path / "fresh", fresh)
    # the VRT itself edited: it counts as an edit to each of its tiles
    _vrt(vrt, tiles[::-1], scene)
    rewritten = rs.run(vrt, out, config=cfg, client=client)
    assert sorted(c["location"] for c in rewritten["sources_changed"]) == sorted(map(str, tiles))
    assert rewritten["blocks_segmented_this_run"] == 16


def test_every_default_resampling_is_the_one_constant():
    import inspect

    from click.testing import CliRunner

    from remote_samsing.cli import cli
    from remote_samsing.sources import DEFAULT_RESAMPLING

    defaults = [inspect.signature(f).parameters["resampling"].default
                for f in (open_mosaic, rs.segment, rs.inspect_mosaic, resolve_mosaic)]
    assert defaults + [RunConfig().resampling] == [DEFAULT_RESAMPLING] * 5
    help_text = " ".join(CliRunner().invoke(cli, ["segment", "--help"]).output.split())
    assert f"[default: {DEFAULT_RESAMPLING}]" in help_text
