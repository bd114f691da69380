"""Label store, COG and overviews: what the pipeline writes its products through."""

import pickle

import dask.array as da
import numpy as np
import pytest
import rasterio
import rasterio.shutil
import rioxarray  # noqa: F401
import xarray as xr
import zarr
from affine import Affine

from _helpers import open_label_store, to_label_zarr
from remote_samsing.exceptions import RemoteSamsingError
from remote_samsing.io import open_labels
from remote_samsing.outputs import overview_factors, plan_label_store, to_cog
from remote_samsing.pipeline import _wrap_labels
from remote_samsing.tiling import TilingPlan


@pytest.mark.parametrize("max_label", [200, 40000])
def test_to_cog_pieces_mosaic_exactly(tmp_path, max_label):
    """Chunks written as separate pieces come back as one raster, bit for bit,
    with CRS, transform, nodata, the smallest dtype and the COG layout."""
    rng = np.random.default_rng(3)
    lab = rng.integers(0, max_label + 1, size=(700, 530)).astype(np.uint32)
    lab[0, 0] = max_label
    t = Affine(0.3, 0, 445000.0, 0, -0.3, 3720000.0)
    arr = xr.DataArray(da.from_array(lab, chunks=(256, 200)), dims=("y", "x"),
                       coords={"y": t.f + t.e * (np.arange(700) + 0.5), "x": t.c + t.a * (np.arange(530) + 0.5)})
    arr = arr.rio.write_crs("EPSG:32611").rio.write_transform(t)
    out = to_cog(arr, tmp_path / "l.tif", max_label=max_label, blocksize=256)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["l.tif"]  # no pieces or partial files left
    from rio_cogeo.cogeo import cog_validate

    valid, errors, warnings_ = cog_validate(str(out), quiet=True)  # the COG layout, overviews included
    assert valid and not errors and not warnings_
    with rasterio.open(out) as dst:
        np.testing.assert_array_equal(dst.read(1), lab)
        assert dst.crs.to_epsg() == 32611 and dst.transform.almost_equals(t)
        assert dst.nodata == 0 and dst.dtypes[0] == ("uint8" if max_label < 256 else "uint16")
        assert dst.block_shapes == [(256, 256)]
        assert dst.overviews(1) == [2, 4]  # 700 -> 350 -> 175: until a level fits one 256-px tile
    # the overviews are labels sampled by nearest (never a blend of two ids),
    # each level from the one before, ceil(n / 2) pixels each way
    prev = lab
    for level, shape in enumerate([(350, 265), (175, 133)]):
        with rasterio.open(out, overview_level=level) as ov:
            got = ov.read(1)
        assert got.shape == shape
        rows = np.floor(0.5 + np.arange(shape[0]) * prev.shape[0] / shape[0]).astype(int)
        cols = np.floor(0.5 + np.arange(shape[1]) * prev.shape[1] / shape[1]).astype(int)
        np.testing.assert_array_equal(got, prev[np.ix_(rows, cols)])
        prev = got


@pytest.mark.parametrize(("shape", "blocksize", "expected"), [
    ((300, 200), 512, []),
    ((512, 512), 512, []),
    ((513, 10), 512, [2]),
    ((1100, 1300), 512, [2, 4]),
    ((700, 530), 256, [2, 4]),
    ((40000, 40000), 512, [2, 4, 8, 16, 32, 64, 128]),
])
def test_overview_factors_as_gdal_cog_driver_picks_them(tmp_path, shape, blocksize, expected):
    assert overview_factors(*shape, blocksize) == expected
    if shape[0] * shape[1] > 2_000_000:
        return
    # the same list as GDAL's COG driver chooses when it computes overviews itself
    src = tmp_path / "src.tif"
    with rasterio.open(src, "w", driver="GTiff", height=shape[0], width=shape[1], count=1, dtype="uint8",
                       crs="EPSG:32633", transform=rasterio.transform.from_origin(0, 0, 1, 1)) as dst:
        dst.write(np.zeros(shape, np.uint8), 1)
    rasterio.shutil.copy(src, tmp_path / "cog.tif", driver="COG", blocksize=blocksize)
    with rasterio.open(tmp_path / "cog.tif") as dst:
        assert dst.overviews(1) == expected


@pytest.mark.parametrize("ahead", [1, 3])
def test_label_store_chunks_come_in_order_whatever_is_read_ahead(tmp_path, ahead):
    """The COG's first pass gets every chunk once, row by row, in the COG's dtype, whether one chunk
    (a local store) or several (an object store) are read ahead, with more chunks than that."""
    import zarr

    from remote_samsing.outputs import _chunks_ahead

    lab = np.random.default_rng(5).integers(0, 200, size=(130, 70)).astype(np.uint32)
    z = zarr.create_array(tmp_path / "l.zarr", shape=lab.shape, chunks=(50, 30), dtype=lab.dtype)
    z[:] = lab
    got = list(_chunks_ahead(z, np.dtype(np.uint8), max_label=199, ahead=ahead))
    assert [w for w, _ in got] == [(y, min(y + 50, 130), x, min(x + 30, 70)) for y in (0, 50, 100) for x in (0, 30, 60)]
    for (y0, y1, x0, x1), chunk in got:
        assert chunk.dtype == np.uint8
        np.testing.assert_array_equal(chunk, lab[y0:y1, x0:x1])


def test_cog_from_a_label_store_equals_its_labels(tmp_path):
    """The COG made from labels.zarr (chunks that cut the COG's tiles) has the smallest dtype and
    equals the labels, with CRS and transform, and leaves nothing but itself beside the store."""
    rng = np.random.default_rng(4)
    lab = rng.integers(0, 300, size=(300, 250)).astype(np.uint32)
    t = Affine(2.0, 0, 1000.0, 0, -2.0, 9000.0)
    arr = xr.DataArray(da.from_array(lab, chunks=(64, 50)), dims=("y", "x"),
                       coords={"y": t.f + t.e * (np.arange(300) + 0.5), "x": t.c + t.a * (np.arange(250) + 0.5)})
    arr = arr.rio.write_crs("EPSG:32633").rio.write_transform(t)
    to_label_zarr(arr, tmp_path / "l.zarr")
    written = open_labels(tmp_path / "l.zarr")
    out = to_cog(written, tmp_path / "l.tif", max_label=299, blocksize=96, store=tmp_path / "l.zarr")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["l.tif", "l.zarr"]
    with rasterio.open(out) as dst:
        np.testing.assert_array_equal(dst.read(1), lab)
        assert dst.dtypes[0] == "uint16" and dst.crs.to_epsg() == 32633 and dst.transform.almost_equals(t)
        assert dst.block_shapes == [(96, 96)]
    from rio_cogeo.cogeo import cog_validate

    valid, errors, _ = cog_validate(str(out), quiet=True)
    assert valid and not errors


def test_cog_from_a_label_store_that_does_not_hold_the_labels_is_refused(tmp_path):
    """A store of another shape or dtype, or no store, is an error before anything is computed or
    written; a label above ``max_label`` that the COG's dtype cannot hold is an error, never a label
    wrapped round, and leaves no COG."""
    from remote_samsing.exceptions import InputError

    lab = np.arange(1, 101, dtype=np.uint32).reshape(10, 10)
    lab[7, 8] = 300
    arr = xr.DataArray(da.from_array(lab, chunks=5), dims=("y", "x"))
    to_label_zarr(arr, tmp_path / "l.zarr")
    other = xr.DataArray(da.zeros((10, 12), np.uint32, chunks=5), dims=("y", "x"))
    with pytest.raises(InputError, match=r"holds \(10, 10\) uint32 labels, the labels are \(10, 12\)"):
        to_cog(other, tmp_path / "o.tif", store=tmp_path / "l.zarr")
    zarr.create_array(store=tmp_path / "f.zarr", name="labels", shape=(10, 10), chunks=(5, 5), dtype="f4")
    with pytest.raises(InputError, match=r"holds \(10, 10\) float32 labels"):
        to_cog(arr, tmp_path / "f.tif", max_label=300, store=tmp_path / "f.zarr")
    with pytest.raises(InputError, match="no label store at"):
        to_cog(arr, tmp_path / "m.tif", max_label=300, store=tmp_path / "missing.zarr")
    with pytest.raises(InputError, match="label 300 in rows 5:10, columns 5:10 of the label store is above "
                                         "max_label 100"):
        to_cog(arr, tmp_path / "w.tif", max_label=100, store=tmp_path / "l.zarr")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.zarr", "l.zarr"]


def test_label_sink_writes_blocks_with_absorbed_remainders(tmp_path):
    """``open_label_store`` + ``LabelSink`` (what the merge's relabel tasks
    write through): blocks of a plan whose last column absorbed a thin
    remainder (53 px on 50-px chunks) land in labels.zarr; nothing is in
    place before ``commit``; the COG made from the store equals the labels,
    with CRS and transform."""
    plan = TilingPlan(shape=(130, 103), tile_size=50, padding=8)
    assert plan.chunks == ((50, 50, 30), (50, 53))
    t = Affine(0.5, 0, 500000.0, 0, -0.5, 4000000.0)
    like = xr.DataArray(np.zeros((3, 130, 103), np.uint8), dims=("band", "y", "x"),
                        coords={"y": t.f + t.e * (np.arange(130) + 0.5), "x": t.c + t.a * (np.arange(103) + 0.5)})
    like = like.rio.write_crs("EPSG:32633").rio.write_transform(t)
    template = _wrap_labels(da.zeros(plan.shape, dtype=np.uint32, chunks=plan.chunks), like)
    rng = np.random.default_rng(2)
    lab = rng.integers(0, 70000, size=plan.shape).astype(np.uint32)
    sink = open_label_store(template, tmp_path / "labels.zarr")
    sink = pickle.loads(pickle.dumps(sink))  # shipped to workers
    for index in plan.block_ids():
        w = plan.core_window(index)
        sink(lab[w.slices], w)
    assert not (tmp_path / "labels.zarr").exists()
    sink.commit()
    written = open_labels(tmp_path / "labels.zarr")
    np.testing.assert_array_equal(np.asarray(written), lab)
    assert written.rio.crs.to_epsg() == 32633 and written.rio.transform().almost_equals(t)
    out = to_cog(written, tmp_path / "labels.tif", max_label=int(lab.max()), store=tmp_path / "labels.zarr")
    with rasterio.open(out) as dst:
        np.testing.assert_array_equal(dst.read(1), lab)
        assert dst.dtypes[0] == "uint32" and dst.transform.almost_equals(t)


def test_planned_label_store_is_created_once_per_run(tmp_path):
    """``plan_label_store`` creates nothing until ``create()``; called again
    with the run's token (a task re-run after a lost worker), ``create``
    keeps the blocks written since; another run's token (a
    crashed run's store) makes the store anew; ``commit`` leaves no marker."""
    plan = TilingPlan(shape=(100, 100), tile_size=50, padding=8)
    like = xr.DataArray(np.zeros((3, 100, 100), np.uint8), dims=("band", "y", "x"))
    template = _wrap_labels(da.zeros(plan.shape, dtype=np.uint32, chunks=plan.chunks), like)
    lab = np.random.default_rng(5).integers(1, 500, size=plan.shape).astype(np.uint32)

    def plan_for(token):
        sink, create = plan_label_store(template, tmp_path / "labels.zarr", token=token)
        return sink, pickle.loads(pickle.dumps(create))  # both shipped to workers

    sink, create = plan_for("run-a")
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    create()
    first, second = list(plan.block_ids())[:2], list(plan.block_ids())[2:]
    for index in first:
        sink(lab[plan.core_window(index).slices], plan.core_window(index))
    create()  # the same run: what was written stays
    partial = zarr.open_array(tmp_path / "labels.zarr.partial", path="labels", mode="r")
    np.testing.assert_array_equal(partial[:50], lab[:50])
    other, create_other = plan_for("run-b")
    create_other()  # another run's: made anew
    assert not np.asarray(zarr.open_array(tmp_path / "labels.zarr.partial", path="labels", mode="r")[:]).any()
    for index in first + second:
        other(lab[plan.core_window(index).slices], plan.core_window(index))
    other.commit()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.zarr"]
    np.testing.assert_array_equal(np.asarray(open_labels(tmp_path / "labels.zarr")), lab)
