import os

import numpy as np
import pytest
import rasterio

from remote_samsing.exceptions import (
    BandSelectionError,
    InputNotFoundError,
    OutputExistsError,
    UnsupportedDtypeError,
)
from remote_samsing.io import open_mosaic, prepare_rgb, rgb_band_indices, to_zarr
from remote_samsing.testing import raise_if_dask_computes
from remote_samsing.tiling import TilingPlan


def test_open_geotiff_keeps_georeferencing(data_dir):
    arr = open_mosaic(data_dir / "landsat_rgb.tif", chunks=256)
    with rasterio.open(data_dir / "landsat_rgb.tif") as src:
        assert arr.shape == (3, src.height, src.width)
        assert arr.rio.crs == src.crs
        assert arr.rio.transform() == src.transform
        assert arr.rio.nodata == src.nodata == 0
    assert arr.chunks[1][0] == 256


@pytest.mark.parametrize("name,epsg", [("landsat_rgb.tif", 32618), ("kampala_crop_3857.tif", 3857)])
def test_zarr_roundtrip_keeps_crs_transform_nodata(tmp_path, data_dir, name, epsg):
    src = open_mosaic(data_dir / name, chunks=100)
    z = to_zarr(src, tmp_path / "m.zarr", tile_size=100)
    back = open_mosaic(z, chunks=100)
    assert back.rio.crs.to_epsg() == epsg
    assert back.rio.transform().almost_equals(src.rio.transform(), precision=1e-9)
    assert back.rio.nodata == src.rio.nodata
    assert back.dtype == src.dtype
    np.testing.assert_array_equal(back.values, src.values)
    # zarr chunks are the tile size
    import zarr

    assert zarr.open_array(str(z / "mosaic"), mode="r").chunks == (3, 100, 100)


def test_to_zarr_takes_a_list_of_tiles_as_open_mosaic_does(tmp_path, data_dir):
    """Python's ingest takes the forms the CLI's does: a list of tiles is one mosaic, equal to the file."""
    from remote_samsing.testing import cut_tiles

    tiles = cut_tiles(data_dir / "neon_osbs.tif", tmp_path / "tiles", rows=2, cols=2)
    z = to_zarr([str(t) for t in tiles], tmp_path / "m.zarr", tile_size=128)
    whole = open_mosaic(data_dir / "neon_osbs.tif")
    back = open_mosaic(z)
    assert back.rio.transform() == whole.rio.transform() and back.rio.crs == whole.rio.crs
    np.testing.assert_array_equal(back.values, whole.values)
    # consolidated, as labels.zarr: xarray opens it as it is, without its fallback warning (an error here)
    import xarray as xr

    assert xr.open_zarr(z)["mosaic"].shape == whole.shape


def test_to_zarr_refuses_existing(tmp_path, data_dir):
    src = open_mosaic(data_dir / "neon_osbs.tif")
    to_zarr(src, tmp_path / "m.zarr", tile_size=128)
    with pytest.raises(OutputExistsError):
        to_zarr(src, tmp_path / "m.zarr", tile_size=128)
    to_zarr(src, tmp_path / "m.zarr", tile_size=128, overwrite=True)
    with pytest.raises(OutputExistsError, match="is the mosaic being read"):
        to_zarr(tmp_path / "m.zarr", tmp_path / "m.zarr", tile_size=128, overwrite=True)
    assert open_mosaic(tmp_path / "m.zarr").shape == src.shape


def test_plain_png_without_georeferencing(tmp_path):
    from PIL import Image

    img = (np.arange(30 * 40 * 3) % 251).astype(np.uint8).reshape(30, 40, 3)
    Image.fromarray(img).save(tmp_path / "a.png")
    arr = open_mosaic(tmp_path / "a.png")
    assert arr.shape == (3, 30, 40)
    assert arr.rio.crs is None
    np.testing.assert_array_equal(np.moveaxis(arr.values, 0, -1), img)


def test_missing_and_corrupt_inputs(tmp_path):
    with pytest.raises(InputNotFoundError, match="does not exist"):
        open_mosaic(tmp_path / "nope.tif")
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"this is not a tiff" * 10)
    with pytest.raises(InputNotFoundError, match="cannot read raster"):
        open_mosaic(bad)


def test_unsupported_dtype(write_geotiff):
    p = write_geotiff(np.zeros((3, 8, 8), np.complex64))
    with pytest.raises(UnsupportedDtypeError, match="complex64"):
        open_mosaic(p)


def test_band_selection_and_errors(write_geotiff):
    data = np.stack([np.full((8, 8), v, np.uint8) for v in (10, 20, 30, 40)])
    p = write_geotiff(data)
    arr = open_mosaic(p, bands=[4, 3, 2])
    assert arr.values[:, 0, 0].tolist() == [40, 30, 20]
    with pytest.raises(BandSelectionError, match="band 5 is out of range"):
        open_mosaic(p, bands=[5, 3, 2])
    with pytest.raises(BandSelectionError, match="1 or 3 bands"):
        open_mosaic(p, bands=[1, 2])
    two = write_geotiff(data[:2], name="two.tif")
    with pytest.raises(BandSelectionError, match="two bands"):
        rgb_band_indices(open_mosaic(two))
    assert rgb_band_indices(open_mosaic(two, bands=[2])) == [0, 0, 0]


def test_one_band_becomes_grey_rgb(write_geotiff):
    p = write_geotiff(np.arange(64, dtype=np.uint8).reshape(1, 8, 8))
    arr = open_mosaic(p)
    rgba = prepare_rgb(arr, chunks=((8,), (8,))).compute()
    assert (rgba[..., 0] == rgba[..., 1]).all() and (rgba[..., 1] == rgba[..., 2]).all()
    np.testing.assert_array_equal(rgba[..., 0], np.arange(64).reshape(8, 8))


def test_uint16_stretch_is_global_not_per_tile(write_geotiff):
    # left half spans 0..1000, right half spans 0..4000: a per-tile stretch would
    # map the value 500 differently in each tile
    y, x = np.mgrid[0:64, 0:64]
    data = np.where(x < 32, (x * 1000) // 31, (x - 32) * 4000 // 31).astype(np.uint16)
    data[10, 5] = 500
    data[10, 40] = 500
    p = write_geotiff(np.stack([data] * 3))
    arr = open_mosaic(p, chunks=32)
    rgba = prepare_rgb(arr, chunks=((32, 32), (32, 32)), percentiles=(2, 98)).compute()
    assert rgba[10, 5, 0] == rgba[10, 40, 0]
    lo, hi = np.percentile(data.astype(float), [2, 98])
    expected = np.clip(np.rint((500 - lo) * 255.0 / (hi - lo)), 0, 255)
    assert rgba[10, 5, 0] == expected
    # and the whole image equals the single-chunk computation
    single = prepare_rgb(open_mosaic(p, chunks=64), chunks=((64,), (64,))).compute()
    np.testing.assert_array_equal(rgba, single)


@pytest.mark.parametrize("nodata", [300, -1, float("nan"), 7.5])
def test_a_nodata_the_pixels_cannot_hold_is_a_config_error(write_geotiff, nodata):
    from remote_samsing.exceptions import ConfigError

    p = write_geotiff(np.zeros((3, 4, 4), np.uint8))
    with pytest.raises(ConfigError, match=r"is no value of .*'s uint8 pixels \(0 to 255\)"):
        open_mosaic(p, nodata=nodata)
    assert open_mosaic(write_geotiff(np.zeros((3, 4, 4), np.float32), name="f.tif"), nodata=nodata).rio.nodata \
        is not None  # float pixels hold any of them


def test_nodata_nan_and_alpha_make_validity(write_geotiff):
    data = np.full((3, 6, 6), 100, np.uint8)
    data[:, 0, :] = 0
    p = write_geotiff(data, nodata=0)
    rgba = prepare_rgb(open_mosaic(p), chunks=((6,), (6,))).compute()
    assert not rgba[0, :, 3].any() and rgba[1:, :, 3].all()
    # an explicit nodata value overrides the file's
    rgba = prepare_rgb(open_mosaic(p, nodata=100), chunks=((6,), (6,))).compute()
    assert not rgba[1:, :, 3].any()
    # NaN in float input
    f = np.full((3, 6, 6), 0.5, np.float32)
    f[:, 2, 2] = np.nan
    pf = write_geotiff(f, name="f.tif")
    rgba = prepare_rgb(open_mosaic(pf), chunks=((6,), (6,))).compute()
    assert rgba[..., 3].sum() == 35 and rgba[2, 2, 3] == 0
    # alpha band
    a = np.concatenate([np.full((3, 6, 6), 50, np.uint8), np.zeros((1, 6, 6), np.uint8)])
    a[3, 3:, :] = 255
    pa = write_geotiff(a, name="a.tif", photometric="RGB", alpha="YES")
    arr = open_mosaic(pa)
    assert arr.attrs["alpha_band"] == 4
    rgba = prepare_rgb(arr, chunks=((6,), (6,))).compute()
    assert not rgba[:3, :, 3].any() and rgba[3:, :, 3].all()
    assert (rgba[..., :3][rgba[..., 3] == 0] == 0).all()


def test_prepare_rgb_is_lazy(write_geotiff):
    p = write_geotiff(np.ones((3, 64, 64), np.uint16))
    arr = open_mosaic(p, chunks=32)
    with raise_if_dask_computes():
        prepare_rgb(arr, chunks=TilingPlan(shape=(64, 64), tile_size=32, padding=4).chunks)


def _window_cases(write_geotiff, tmp_path):
    """(name, path, open_mosaic kwargs) covering the ways RGB + validity are built."""
    rng = np.random.default_rng(3)
    u16 = rng.integers(0, 5000, (4, 70, 90), dtype=np.uint16)
    u16[:, :5, :7] = 9  # a nodata corner
    p16 = write_geotiff(u16, name="u16.tif", nodata=9)
    alpha = np.concatenate([rng.integers(0, 255, (3, 40, 50), dtype=np.uint8), np.zeros((1, 40, 50), np.uint8)])
    alpha[3, 10:, :] = 255
    pa = write_geotiff(alpha, name="a.tif", photometric="RGB", alpha="YES")
    f = rng.normal(size=(1, 33, 47)).astype(np.float32)
    f[0, 3, 4] = np.nan
    pf = write_geotiff(f, name="f.tif")
    z16 = to_zarr(open_mosaic(p16, chunks=32), tmp_path / "u16.zarr", tile_size=32)
    return [
        ("uint16 nodata, bands 4,2,1", p16, {"bands": [4, 2, 1]}),
        ("uint16 nodata override", p16, {"nodata": 0}),
        ("uint8 + alpha", pa, {}),
        ("float grey with NaN", pf, {}),
        ("zarr uint16, bands 3,2,1", z16, {"bands": [3, 2, 1]}),
        ("zarr all bands", z16, {"bands": [1, 2, 3]}),
    ]


def test_window_reader_reads_what_prepare_rgb_holds(write_geotiff, tmp_path):
    from remote_samsing.io import stretch_limits, window_reader

    for name, path, kw in _window_cases(write_geotiff, tmp_path):
        arr = open_mosaic(path, chunks=32, **kw)
        plan = TilingPlan(shape=tuple(arr.shape[1:]), tile_size=32, padding=6)
        limits = stretch_limits(arr).compute()
        whole = prepare_rgb(arr, chunks=plan.chunks).compute()
        reader = window_reader(arr)
        assert reader is not None, name
        assert reader.kind == ("zarr" if str(path).endswith(".zarr") else "gdal"), name
        for idx in plan.block_ids():
            w = plan.padded_window(idx)
            got = reader.read_rgba(w.as_tuple(), limits)
            np.testing.assert_array_equal(got, whole[w.slices], err_msg=f"{name} {idx}")


def test_window_reader_keeps_the_file_open_but_sees_a_rewrite(write_geotiff, monkeypatch):
    import os

    import rasterio

    from remote_samsing import io as rsio

    opened = []
    real_open = rasterio.open
    monkeypatch.setattr(rasterio, "open", lambda path, *a, **k: opened.append(path) or real_open(path, *a, **k))
    p = write_geotiff(np.arange(3 * 20 * 20, dtype=np.uint16).reshape(3, 20, 20), name="keep.tif")
    reader = rsio.window_reader(open_mosaic(p))
    opened.clear()
    a = reader.read((0, 10, 0, 20))
    b = reader.read((10, 20, 0, 20))
    np.testing.assert_array_equal(np.concatenate([a, b], axis=1), np.arange(1200).reshape(3, 20, 20))
    assert len(opened) == 1  # one handle for both windows: GDAL's block cache serves the second
    # the file is rewritten (a later mtime): the next read sees the new pixels
    write_geotiff(np.full((3, 20, 20), 7, np.uint16), name="keep.tif")
    st = os.stat(p)
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # distinct even on a coarse-clock filesystem
    opened.clear()
    np.testing.assert_array_equal(reader.read((0, 5, 0, 5)), np.full((3, 5, 5), 7))
    assert len(opened) == 1
    # another thread gets its own handle (rasterio datasets are not thread-safe)
    import threading

    out = []
    t = threading.Thread(target=lambda: out.append(reader.read((0, 5, 0, 5))))
    t.start()
    t.join()
    np.testing.assert_array_equal(out[0], np.full((3, 5, 5), 7))
    assert len(opened) == 2
    # a forked child opens its own handle too (an inherited one shares the parent's file offset)
    monkeypatch.setattr(os, "getpid", lambda: -1)
    np.testing.assert_array_equal(reader.read((0, 5, 0, 5)), np.full((3, 5, 5), 7))
    assert len(opened) == 3


def test_window_reader_only_for_files_as_opened(write_geotiff):
    from remote_samsing.io import window_reader

    p = write_geotiff(np.ones((3, 20, 20), np.uint8))
    arr = open_mosaic(p)
    assert window_reader(arr) is not None
    # a crop no longer matches the file: its windows must come from the graph
    assert window_reader(arr.isel(y=slice(0, 10))) is None
    import xarray as xr

    assert window_reader(xr.DataArray(np.ones((3, 5, 5), np.uint8), dims=("band", "y", "x"))) is None


def test_window_reader_path_is_absolute(write_geotiff, monkeypatch):
    from remote_samsing.io import window_reader

    p = write_geotiff(np.ones((3, 8, 8), np.uint8))
    monkeypatch.chdir(p.parent)
    reader = window_reader(open_mosaic(p.name))
    assert reader.path == str(p.resolve())
    monkeypatch.chdir(p.parent.parent)  # a worker elsewhere still finds the file
    assert reader.read((0, 8, 0, 8)).shape == (3, 8, 8)


def test_products_of_an_unfinished_run_are_refused(tmp_path, data_dir):
    """Products beside a run.json that does not say complete (a run still writing, or one that died)
    are refused by every reader: open_labels, the vectorizer and evaluate; complete, they open."""
    import json

    import remote_samsing as rs
    from remote_samsing.exceptions import IncompleteOutputError
    from remote_samsing.vectorize import to_polygons

    out = tmp_path / "run"
    out.mkdir()
    labels = rs.open_mosaic(data_dir / "kampala_crop_3857.tif").isel(band=0, drop=True).astype("uint32")
    labels.rio.to_raster(out / "labels.tif")
    (out / "run.json").write_text(json.dumps({"complete": False, "fingerprint": "f"}))
    for read in (rs.open_labels, lambda p: to_polygons(p), lambda p: rs.evaluate(p, p)):
        with pytest.raises(IncompleteOutputError, match="has not finished"):
            read(out / "labels.tif")
    (out / "run.json").write_text(json.dumps({"complete": True, "fingerprint": "f"}))
    assert rs.open_labels(out / "labels.tif").shape == labels.shape
    (out / "run.json").write_text(json.dumps([{"complete": False}]))  # another program's run.json
    assert rs.open_labels(out / "labels.tif").shape == labels.shape
    (out / "run.json").unlink()  # no run around it: any label raster opens
    assert rs.open_labels(out / "labels.tif").shape == labels.shape


def _clear_gdal_store_settings(monkeypatch) -> tuple:
    """Unset what configure_remote_reads reads or sets; recorded, so that what it sets is undone."""
    names = ("AWS_S3_ENDPOINT", "AWS_HTTPS", "AWS_VIRTUAL_HOSTING", "CPL_GS_ENDPOINT", "GS_NO_SIGN_REQUEST",
             "AZURE_STORAGE_ACCOUNT", "AZURE_STORAGE_ACCESS_KEY", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL",
             "STORAGE_EMULATOR_HOST", "AZURE_STORAGE_ACCOUNT_NAME", "AZURE_STORAGE_ACCOUNT_KEY")
    for k in names:
        monkeypatch.setenv(k, "")
        monkeypatch.delenv(k)
    return names[:8]


def test_gdal_store_settings_come_from_each_stores_standard_variables(monkeypatch):
    from remote_samsing.io import configure_remote_reads

    derived = _clear_gdal_store_settings(monkeypatch)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://minio.local:9000/")
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "localhost:4443")
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_NAME", "acct")
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_KEY", "a2V5")
    monkeypatch.setenv("AWS_VIRTUAL_HOSTING", "TRUE")  # the user's own setting wins
    configure_remote_reads()
    got = {k: os.environ.get(k) for k in derived}
    assert got == {"AWS_S3_ENDPOINT": "minio.local:9000", "AWS_HTTPS": "NO", "AWS_VIRTUAL_HOSTING": "TRUE",
                   "CPL_GS_ENDPOINT": "http://localhost:4443/", "GS_NO_SIGN_REQUEST": "YES",
                   "AZURE_STORAGE_ACCOUNT": "acct", "AZURE_STORAGE_ACCESS_KEY": "a2V5", "AWS_ENDPOINT_URL_S3": None}


def test_no_emulator_and_the_users_own_gdal_settings_are_left_alone(monkeypatch):
    from remote_samsing.io import configure_remote_reads

    _clear_gdal_store_settings(monkeypatch)
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "default")  # Google's libraries: no emulator
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_NAME", "acct")
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT", "other")
    configure_remote_reads()
    assert "CPL_GS_ENDPOINT" not in os.environ and "GS_NO_SIGN_REQUEST" not in os.environ
    assert os.environ["AZURE_STORAGE_ACCOUNT"] == "other"


@pytest.mark.parametrize("passthrough", [True, False])
def test_rgba_block_interleaves_bands_and_zeroes_invalid_pixels(passthrough):
    from remote_samsing.io import _to_rgba_block

    rng = np.random.default_rng(0)
    block = rng.integers(0, 255, (4, 7, 9)).astype(np.uint16)  # bands: B, G, R, alpha
    block[3] = 255
    block[3, 2, 3] = 0  # transparent
    block[:3, 5, 1] = 7  # nodata in every RGB band
    lohi = np.array([[10.0, 200.0]] * 4)
    out = _to_rgba_block(block, lohi, band_idx=np.array([2, 1, 0]), alpha_pos=3, nodata=7, passthrough=passthrough)
    rgb = block[[2, 1, 0]].astype(float)
    if not passthrough:
        rgb = np.clip(np.rint((rgb - 10.0) * (255.0 / 190.0)), 0, 255)
    expected = np.zeros((7, 9, 4), np.uint8)
    expected[..., :3] = np.moveaxis(rgb.astype(np.uint8), 0, -1)
    expected[..., 3] = 1
    expected[2, 3] = expected[5, 1] = 0
    assert out.dtype == np.uint8 and out.flags.c_contiguous
    np.testing.assert_array_equal(out, expected)


def test_validity_needs_nodata_in_every_rgb_band_finite_values_and_alpha():
    """A pixel is invalid where every RGB band holds nodata (not some of them), where a band is not
    finite, or where alpha is 0; bands outside the RGB ones do not count; a NaN nodata marks nothing."""
    from remote_samsing.io import _valid_block

    block = np.full((5, 2, 4), 3.0, np.float32)  # bands: R, G, B, alpha, an extra band
    block[4] = 9  # the extra band holds nodata everywhere: ignored
    block[:3, 0, 0] = 9  # nodata in every RGB band
    block[:2, 0, 1] = 9  # in two of three: valid
    block[1, 0, 2] = np.nan
    block[2, 1, 0] = np.inf
    block[3, 1, 1] = 0  # transparent
    expected = np.array([[False, True, False, True], [False, False, True, True]])
    got = _valid_block(block, band_idx=np.array([0, 1, 2]), alpha_pos=3, nodata=9)
    np.testing.assert_array_equal(got, expected)
    expected[0, 0] = True  # a NaN nodata: only the non-finite values and alpha count
    np.testing.assert_array_equal(_valid_block(block, band_idx=np.array([0, 1, 2]), alpha_pos=3,
                                               nodata=float("nan")), expected)
    ints = np.zeros((3, 1, 3), np.uint8)
    ints[0, 0, 1] = ints[2, 0, 2] = 1
    np.testing.assert_array_equal(_valid_block(ints, band_idx=(0, 1, 2), alpha_pos=None, nodata=0),
                                  [[False, True, True]])
    assert _valid_block(ints, band_idx=(0, 1, 2), alpha_pos=None, nodata=None).all()


def _store_reader(url: str, run: str | None, bands=(1, 2, 3)):
    """A WindowReader of a Zarr mosaic at ``url`` for ``run`` (raw values passed through)."""
    from remote_samsing.io import WindowReader

    return WindowReader(path=url, kind="zarr", bands=bands, band_idx=tuple(range(len(bands))), alpha_pos=None,
                        nodata=None, passthrough=True, run=run)


def test_a_store_mosaic_read_for_a_run_keeps_its_chunks_for_that_run_only():
    """A Zarr mosaic on a store read by a run (``WindowReader.run``) keeps the chunks it read in the
    process: read again, a chunk changed since is still the run's; another run reads it anew."""
    import zarr

    from remote_samsing.io import _zarr_cached

    url = "memory://rs-test-mosaic-cache/m.zarr"
    z = zarr.create_array(store=url, name="mosaic", shape=(3, 40, 40), chunks=(3, 20, 20), dtype="uint8",
                          zarr_format=3, overwrite=True)
    pixels = np.arange(3 * 40 * 40, dtype=np.uint32).reshape(3, 40, 40).astype(np.uint8)
    z[:] = pixels
    assert _store_reader(url, "r1").keeps_chunks and not _store_reader(url, None).keeps_chunks
    assert _zarr_cached(url, "r1") is _zarr_cached(url, "r1")  # opened once per run
    np.testing.assert_array_equal(_store_reader(url, "r1").read((5, 30, 5, 30)), pixels[:, 5:30, 5:30])
    z[:, :20, :20] = 7  # the store changes under the run
    np.testing.assert_array_equal(_store_reader(url, "r1").read((0, 25, 0, 25)), pixels[:, :25, :25])
    assert (_store_reader(url, "r2").read((0, 20, 0, 20)) == 7).all()
    assert (_store_reader(url, None).read((0, 20, 0, 20)) == 7).all()  # no run: nothing kept


def test_releasing_the_kept_chunks_drops_them():
    import zarr

    from remote_samsing.io import release_kept_chunks

    url = "memory://rs-test-mosaic-release/m.zarr"
    z = zarr.create_array(store=url, name="mosaic", shape=(1, 20, 20), chunks=(1, 10, 10), dtype="uint8",
                          zarr_format=3, overwrite=True)
    z[:] = 1
    assert (_store_reader(url, "r1", bands=(1,)).read((0, 20, 0, 20)) == 1).all()
    z[:] = 2
    release_kept_chunks()
    assert (_store_reader(url, "r1", bands=(1,)).read((0, 20, 0, 20)) == 2).all()  # the same run reads anew
