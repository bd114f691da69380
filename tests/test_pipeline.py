"""The spine: blocks equal direct segmenter calls; lazy graphs; georeferenced outputs."""

import importlib.util
import dataclasses
import json
import platform

import dask.array as da
import numpy as np
import pytest
import rasterio

from _helpers import blob_image, wait_until_idle
from remote_samsing import segment
from remote_samsing.config import RunConfig
from remote_samsing.exceptions import (
    BandSelectionError,
    ConfigError,
    FingerprintMismatchError,
    OutputExistsError,
)
from remote_samsing.io import open_labels
from remote_samsing.pipeline import build_graph, run
from remote_samsing.testing import (
    ThresholdSegmenter,
    assert_equivalent_labels,
    count_calls,
    raise_if_dask_computes,
)


class WindowEcho:
    """Deterministic, position-dependent segmenter: label = hash of window + local index."""

    def segment(self, block, *, block_info):
        from scipy import ndimage

        labels, _ = ndimage.label(block.mean(axis=2) > 100)
        y0, _, x0, _ = block_info["window"]
        # make labels depend on the window position so misplaced blocks fail
        return np.where(labels > 0, labels + (y0 * 7 + x0) % 1000, 0).astype(np.uint32)


@pytest.mark.parametrize(
    "shape,T,P",
    [((2500, 1700), 1000, 50), ((300, 300), 1000, 50), ((257, 131), 64, 8), ((130, 67), 32, 0), ((1, 90), 16, 4)],
)
def test_each_block_equals_direct_segmenter_call(shape, T, P):
    img = blob_image(shape, n=max(5, shape[0] * shape[1] // 2000), seed=shape[0])
    seg = WindowEcho()
    g = build_graph(img, segmenter=seg, tile_size=T, padding=P, merge="none")
    staged = g.staged.compute()
    rgb = np.repeat(img[..., None], 3, axis=2)
    sy, sx = g.plan.slot_shape
    for iy, ix in g.plan.block_ids():
        w = g.plan.padded_window((iy, ix))
        got = staged[iy * sy : iy * sy + w.shape[0], ix * sx : ix * sx + w.shape[1]]
        info = {"window": w.as_tuple(), "valid": np.ones(w.shape, bool)}
        expected = seg.segment(rgb[w.slices], block_info=info)
        np.testing.assert_array_equal(got, expected)
        # the rest of the slot stays empty
        assert staged[iy * sy : (iy + 1) * sy, ix * sx : (ix + 1) * sx].sum() == got.sum()


@pytest.mark.parametrize("shape,T,P", [((120, 90), 32, 8), ((64, 64), 100, 10), ((97, 203), 40, 12)])
def test_merge_none_labels_are_globally_unique_per_block(shape, T, P):
    img = blob_image(shape, n=40, max_size=5, seed=1)
    labels = segment(img, segmenter=ThresholdSegmenter(), tile_size=T, padding=P, merge="none").values
    g = build_graph(img, segmenter=ThresholdSegmenter(), tile_size=T, padding=P, merge="none")
    # every label lives in exactly one block core, labels are 1..N
    owners = {}
    for idx in g.plan.block_ids():
        for lab in np.unique(labels[g.plan.core_window(idx).slices]):
            if lab:
                assert owners.setdefault(int(lab), idx) == idx
    assert sorted(owners) == list(range(1, len(owners) + 1))
    # and within each core, labels equal the direct call cropped to the core
    rgb = np.repeat(img[..., None], 3, axis=2)
    for idx in g.plan.block_ids():
        w, c = g.plan.padded_window(idx), g.plan.core_in_padded(idx)
        direct = ThresholdSegmenter().segment(rgb[w.slices], block_info={"window": w.as_tuple()})[c.slices]
        assert_equivalent_labels(labels[g.plan.core_window(idx).slices], direct)


def test_building_the_graph_computes_nothing(write_geotiff):
    data = np.stack([blob_image((90, 70), seed=3).astype(np.uint16) * 10] * 3)
    p = write_geotiff(data)
    with raise_if_dask_computes():
        labels = segment(str(p), segmenter="threshold", tile_size=32, padding=4, merge="none")
    assert labels.shape == (90, 70)


def test_lazy_result_is_georeferenced(data_dir):
    labels = segment(data_dir / "kampala_crop_3857.tif", segmenter="felzenszwalb", tile_size=128, padding=16,
                     merge="none", segmenter_params={"scale": 50})
    with rasterio.open(data_dir / "kampala_crop_3857.tif") as src:
        assert labels.rio.crs == src.crs
        assert labels.rio.transform().almost_equals(src.transform)
    assert labels.rio.nodata == 0
    v = labels.values
    assert v.min() >= 1  # felzenszwalb covers everything; no nodata in this crop


def test_invalid_pixels_are_never_segmented_and_empty_blocks_skipped(tmp_path, write_geotiff):
    img = np.full((3, 64, 96), 200, np.uint8)
    img[:, :, :40] = 0  # nodata strip: blocks with x core < 32 are entirely invalid
    p = write_geotiff(img, nodata=0)
    log = tmp_path / "calls"
    seg = ThresholdSegmenter(threshold=0, log_dir=str(log))
    g = build_graph(str(p), segmenter=seg, tile_size=32, padding=4, merge="none")
    labels = g.labels.values
    assert (labels[:, :40] == 0).all()
    assert (labels[:, 40:] > 0).all()
    # 2 x 3 blocks; the 2 blocks whose core is x 0..31 never reach the segmenter
    assert count_calls(log) == 4


def test_array_inputs_yx_and_yxband():
    img = blob_image((50, 60), seed=4)
    a = segment(img, segmenter="threshold", tile_size=32, padding=4, merge="none").values
    b = segment(np.repeat(img[..., None], 3, axis=2), segmenter="threshold", tile_size=32, padding=4,
                merge="none").values
    np.testing.assert_array_equal(a, b)
    import dask.array as da

    c = segment(da.from_array(img, chunks=16), segmenter="threshold", tile_size=32, padding=4, merge="none")
    np.testing.assert_array_equal(a, c.values)


def test_bad_inputs_raise_before_any_work(tmp_path, write_geotiff, monkeypatch):
    import remote_samsing.pipeline as pipeline

    def boom(*a, **k):
        raise AssertionError("a cluster was started before validation finished")

    monkeypatch.setattr(pipeline, "_client_for", boom)
    img = write_geotiff(np.zeros((2, 16, 16), np.uint8), name="two.tif")
    with pytest.raises(BandSelectionError):
        run(img, tmp_path / "o1", config=RunConfig(tile_size=8, padding=2))
    one = write_geotiff(np.zeros((3, 16, 16), np.uint8), name="rgb.tif")
    with pytest.raises(BandSelectionError):
        run(one, tmp_path / "o2", config=RunConfig(tile_size=8, padding=2, bands=[7]))
    with pytest.raises(ConfigError, match="unknown segmenter"):
        run(one, tmp_path / "o3", config=RunConfig(segmenter="nope", tile_size=8, padding=2))
    (tmp_path / "o4").mkdir()
    (tmp_path / "o4" / "something.txt").write_text("x")
    with pytest.raises(OutputExistsError):
        run(one, tmp_path / "o4", config=RunConfig(segmenter="felzenszwalb", tile_size=8, padding=2))
    # --overwrite replaces a run, never a folder of other files
    with pytest.raises(OutputExistsError, match=r"holds files that no run wrote \(`something.txt`\)"):
        run(one, tmp_path / "o4", config=RunConfig(segmenter="felzenszwalb", tile_size=8, padding=2, overwrite=True))
    assert (tmp_path / "o4" / "something.txt").read_text() == "x"
    # SAM2 is the default: with no checkpoint anywhere it stops here too
    from remote_samsing.exceptions import CheckpointError

    with pytest.raises(CheckpointError, match="no SAM2 checkpoint"):
        run(one, tmp_path / "o5", config=RunConfig(tile_size=8, padding=2))
    assert not (tmp_path / "o5").exists()
    # OUTDIR on a store this installation cannot reach: gs:// without the `gcs` extra
    if importlib.util.find_spec("gcsfs") is None:
        from remote_samsing.exceptions import OutputAccessError

        with pytest.raises(OutputAccessError, match=r"cannot write to `gs://bucket/out`.*gcsfs") as err:
            run(one, "gs://bucket/out", config=RunConfig(segmenter="felzenszwalb", tile_size=8, padding=2))
        assert "remote-samsing[gcs]" in err.value.hint


def test_run_writes_outputs_and_resume_and_fingerprint(tmp_path, data_dir, client):
    out = tmp_path / "out"
    cfg = RunConfig(segmenter="felzenszwalb", segmenter_params={"scale": 50}, tile_size=128, padding=16,
                    merge="none", vectors=False, progress=False)
    rec = run(data_dir / "kampala_crop_3857.tif", out, config=cfg, client=client)
    assert rec["complete"] and rec["blocks_segmented_this_run"] == 4
    saved = json.loads((out / "run.json").read_text())
    assert saved["complete"] is True
    assert saved["parameters"]["tile_size"] == 128
    assert saved["versions"]["dask"] and len(saved["blocks"]) == 4
    # the merge's settings as resolved, every default included, and the cluster the run had
    from remote_samsing.merge import MergeConfig

    assert saved["merge_config"] == json.loads(json.dumps(dataclasses.asdict(MergeConfig(strategy="none"))))
    workers = client.scheduler_info()["workers"].values()
    assert saved["cluster"] == {"workers": len(workers), "threads": sum(w["nthreads"] for w in workers), "gpus": 0}
    # COG: tiled, overviews? (256 px is too small for overviews), CRS/transform/nodata
    with rasterio.open(out / "labels.tif") as dst, rasterio.open(data_dir / "kampala_crop_3857.tif") as src:
        assert dst.crs == src.crs and dst.transform.almost_equals(src.transform)
        assert dst.nodata == 0 and dst.count == 1
        assert dst.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        tif = dst.read(1)
        assert dst.dtypes[0] == ("uint8" if tif.max() < 256 else "uint16")
    z = open_labels(out / "labels.zarr")
    np.testing.assert_array_equal(z.values, tif)
    assert z.rio.crs == rasterio.open(data_dir / "kampala_crop_3857.tif").crs
    _assert_outputs_open_cleanly(out, tif, data_dir / "kampala_crop_3857.tif")
    # the same job again: nothing to do, nothing written; another configuration is refused, naming
    # each difference; overwrite starts afresh
    before = (out / "run.json").read_bytes()
    again = run(data_dir / "kampala_crop_3857.tif", out, config=cfg, client=client)
    assert again["up_to_date"] and again["blocks_segmented_this_run"] == 0 and again["run_id"] == saved["run_id"]
    assert (out / "run.json").read_bytes() == before
    other = cfg.replace(tile_size=64, segmenter_params={"scale": 60})
    with pytest.raises(FingerprintMismatchError) as err:
        run(data_dir / "kampala_crop_3857.tif", out, config=other, client=client)
    assert "tile_size: 128 -> 64" in str(err.value) and "segmenter_params: {'scale': 50} -> {'scale': 60}" in str(
        err.value)
    assert "padding" not in str(err.value)
    rec2 = run(data_dir / "kampala_crop_3857.tif", out, config=cfg.replace(overwrite=True), client=client)
    assert rec2["complete"]
    np.testing.assert_array_equal(open_labels(out / "labels.zarr").values, tif)
    # a run's own files without its run.json (cut off before it was written): --overwrite replaces them
    (out / "run.json").unlink()
    with pytest.raises(OutputExistsError, match="pass --overwrite"):
        run(data_dir / "kampala_crop_3857.tif", out, config=cfg, client=client)
    assert run(data_dir / "kampala_crop_3857.tif", out, config=cfg.replace(overwrite=True), client=client)["complete"]


def _assert_outputs_open_cleanly(out, tif, source):
    """labels.zarr opens in plain xarray (and rioxarray) without a warning, with the source's CRS and
    transform; labels.tif is a valid COG for rio-cogeo; open_mosaic points to open_labels."""
    import warnings

    import xarray as xr
    from rio_cogeo.cogeo import cog_validate

    import remote_samsing as rs
    from remote_samsing.exceptions import InputError

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        labels = xr.open_zarr(out / "labels.zarr")["labels"]
        crs = labels.rio.crs
        values = labels.values
    with rasterio.open(source) as src:
        assert crs == src.crs and labels.rio.transform().almost_equals(src.transform)
    np.testing.assert_array_equal(values, tif)
    valid, errors, _ = cog_validate(str(out / "labels.tif"), quiet=True)
    assert valid and not errors
    assert rs.open_labels is open_labels
    with pytest.raises(InputError, match="segment labels") as err:
        rs.open_mosaic(out / "labels.zarr")
    assert "open_labels" in err.value.hint


def test_cog_with_overviews_on_landsat(tmp_path, data_dir, client):
    out = tmp_path / "out"
    cfg = RunConfig(segmenter="threshold", segmenter_params={"threshold": 60}, tile_size=256, padding=32,
                    merge="none", vectors=False, progress=False)
    run(data_dir / "landsat_rgb.tif", out, config=cfg, client=client)
    with rasterio.open(out / "labels.tif") as dst, rasterio.open(data_dir / "landsat_rgb.tif") as src:
        assert dst.crs == src.crs and dst.transform.almost_equals(src.transform, precision=1e-9)
        assert dst.overviews(1)  # COG with overviews
        assert dst.is_tiled
        lab = dst.read(1)
        nodata_px = (src.read() == 0).all(axis=0)
    assert (lab[nodata_px] == 0).all()
    _assert_outputs_open_cleanly(out, lab, data_dir / "landsat_rgb.tif")


def test_failing_block_is_retried_then_reported(tmp_path, data_dir, client):
    from remote_samsing.exceptions import BlockFailedError

    out = tmp_path / "out"
    cfg = RunConfig(segmenter="threshold", segmenter_params={"fail_on": [[0, 1]]}, tile_size=128, padding=16,
                    merge="none", vectors=False, progress=False, retries=1)
    with pytest.raises(BlockFailedError, match=r"block \(0, 1\)"):
        run(data_dir / "kampala_crop_3857.tif", out, config=cfg, client=client)
    rec = json.loads((out / "run.json").read_text())
    assert rec["complete"] is False and "(0, 1)" in rec["error"]["message"]
    assert not (out / "labels.tif").exists()


def test_gpu_resource_request_needs_a_gpu_worker_or_device_cpu(client):
    from remote_samsing.exceptions import BackendUnavailableError
    from remote_samsing.pipeline import _check_resources

    # the session cluster's workers offer no GPU resource
    with pytest.raises(BackendUnavailableError, match="GPU"):
        _check_resources(client, {"GPU": 1}, device="auto")
    assert _check_resources(client, {"GPU": 1}, device="cpu") is None  # asked for: CPU workers run it
    assert _check_resources(client, None, device="auto") is None


def test_run_computes_each_merge_task_once(tmp_path, data_dir, client):
    """The merge runs phase by phase, each per-block phase once per block; the
    blocks' summaries come from the segment tasks (written while the labels
    were in memory), so no summary task reads a staged chunk back, and their
    seam faces from follow-up tasks started while blocks were still being
    segmented, so the merge's faces phase has nothing left to do."""
    from distributed import get_task_stream

    cfg = RunConfig(segmenter="threshold", segmenter_params={"threshold": 60}, tile_size=128, padding=16,
                    merge="overlap", vectors=False, progress=False)
    wait_until_idle(client)  # an earlier test's failed run may leave tasks running, which the stream would count
    with get_task_stream(client) as ts:
        rec = run(data_dir / "kampala_crop_3857.tif", tmp_path / "out", config=cfg, client=client)
    n_blocks = rec["tiling"]["n_blocks"]
    keys = [str(t["key"]) for t in ts.data]
    assert n_blocks == 4 and len(set(keys)) == len(keys)
    assert sum(k.startswith("rs-then-segment-stage-") for k in keys) >= 1
    # the default merge recuts the seams: a first merge (its summaries and faces from the segment tasks),
    # the recut, then the merge of the recut blocks (summarized by the recut)
    first = [("merge-first-summarize", 0), ("merge-first-faces", 0), ("merge-first-solve", 1),
             ("merge-first-final", n_blocks), ("merge-first-ids", 1), ("merge-recut", n_blocks)]
    for phase, expected in (("segment-stage", n_blocks), *first, ("merge-summarize", 0), ("merge-faces", n_blocks),
                            ("merge-solve", 1), ("merge-final", n_blocks), ("merge-ids", 1),
                            ("merge-sink", 1), ("merge-relabel", n_blocks)):
        assert sum(k.startswith(f"rs-{phase}-") for k in keys) == expected, phase
    assert not (tmp_path / "out" / "staging" / "merge").exists()  # the spill folder is removed


def test_a_resumed_run_with_every_block_staged_shows_no_segmenting_progress(tmp_path, data_dir, client, capsys):
    out = tmp_path / "out"
    cfg = RunConfig(segmenter="felzenszwalb", segmenter_params={"scale": 50}, tile_size=128, padding=16,
                    merge="none", vectors=False, progress=True)
    run(data_dir / "kampala_crop_3857.tif", out, config=cfg, client=client)
    assert "segment-stage" in capsys.readouterr().err  # the first run shows it
    # stopped after staging every block: run.json incomplete, no COG yet
    rec = json.loads((out / "run.json").read_text())
    (out / "run.json").write_text(json.dumps({**rec, "complete": False}))
    (out / "labels.tif").unlink()
    said = []
    again = run(data_dir / "kampala_crop_3857.tif", out, config=cfg, client=client, log=said.append)
    assert again["complete"] and again["blocks_segmented_this_run"] == 0
    assert "4/4 blocks staged; nothing left to segment" in said
    shown = capsys.readouterr().err
    assert "segment-stage" not in shown and "merge" in shown  # the stages with work to do still show it


def test_a_run_that_finds_no_segment_says_so(tmp_path, data_dir, client):
    from remote_samsing.exceptions import RemoteSamsingWarning

    cfg = RunConfig(segmenter="noop", tile_size=128, padding=16, vectors=False, progress=False)
    with pytest.warns(RemoteSamsingWarning, match=r"found no segment in any of the 4 blocks it read: every label "
                                                  r"is 0 \(segmenter noop;"):
        rec = run(data_dir / "kampala_crop_3857.tif", tmp_path / "out", config=cfg, client=client)
    assert rec["complete"] and rec["n_segments"] == 0


def test_a_run_whose_merge_removes_every_segment_says_so(tmp_path, write_geotiff, client):
    from remote_samsing.exceptions import RemoteSamsingWarning

    grey = blob_image((128, 128), n=30, max_size=6, seed=5)  # blobs of at most 6 px a side: < 100 px each
    scene = write_geotiff(np.stack([grey] * 3))
    cfg = RunConfig(segmenter="threshold", tile_size=64, padding=8, vectors=False, progress=False)
    with pytest.warns(RemoteSamsingWarning, match=r"the merge removed every segment the segmenter found \(\d+ in 4 "
                                                  r"blocks\): all were smaller than min_mask_area \(100 px;"):
        rec = run(scene, tmp_path / "out", config=cfg, client=client)
    assert rec["n_segments"] == 0 and sum(b["n_labels"] for b in rec["blocks"]) > 0


def test_run_records_seam_visibility_in_run_json_and_per_face(tmp_path, data_dir, client, monkeypatch):
    """Seam-visibility diagnostics: run.json's total and each edge face's value in merge_faces.json
    equal seam_visibility on the labels read back. Until they are in it, the file has a partial name: a
    run stopped before leaves no merge_faces.json that looks complete."""
    import remote_samsing.pipeline as pipeline
    from remote_samsing.metrics import seam_visibility

    out = tmp_path / "out"
    record = pipeline._record_seam_visibility
    names_before = []

    def recording(outdir, *args, **kwargs):
        names_before.append(sorted(p.name for p in outdir.glob("merge_faces*")))
        return record(outdir, *args, **kwargs)

    monkeypatch.setattr(pipeline, "_record_seam_visibility", recording)
    cfg = RunConfig(segmenter="felzenszwalb", segmenter_params={"scale": 50}, tile_size=96, padding=12,
                    merge="overlap", vectors=False, progress=False)
    rec = run(data_dir / "kampala_crop_3857.tif", out, config=cfg, client=client)
    want = seam_visibility(open_labels(out / "labels.zarr").values, tile_size=96, padding=12)
    saved = json.loads((out / "run.json").read_text())
    assert 0 < want.mean < 1  # Felzenszwalb's windows disagree: some boundaries on the seams, not all
    np.testing.assert_allclose(saved["merge_stats"]["seam_visibility"], want.mean, rtol=1e-6)
    assert rec["merge_stats"]["seam_visibility"] == saved["merge_stats"]["seam_visibility"]
    faces = json.loads((out / "merge_faces.json").read_text())
    edges = {(tuple(map(tuple, f["blocks"])), f["kind"]): f for f in faces if f["kind"] in ("x", "y")}
    assert len(edges) == want.values.size == 12  # 256 = 96 + 96 + 64: a 3 x 3 grid
    for blocks, kind, value, offset in zip(want.blocks, want.kind, want.values, want.offsets):
        face = edges[(tuple(map(tuple, blocks.tolist())), kind)]
        np.testing.assert_allclose(face["seam_visibility"], value, rtol=1e-6)
        assert face["seam_offset"] == offset and "candidates" in face  # the merge's statistics stay
    assert all("seam_visibility" not in f for f in faces if f["kind"] not in ("x", "y"))  # corners
    assert names_before == [["merge_faces.json.partial"]]
    assert sorted(p.name for p in out.glob("merge_faces*")) == ["merge_faces.json"]


def test_run_with_the_seam_recut_shows_the_tile_grid_less(tmp_path, data_dir, client):
    """The default merge recuts the seams: the same scene's seams carry fewer label boundaries than
    with ``merge_params={"seam_recut": False}``, the labels are 1..N, one 4-connected region each, the
    spill folder is gone, and the lazy ``segment()`` gives the run's labels."""
    from skimage.measure import label

    from remote_samsing.metrics import seam_visibility

    base = dict(segmenter="felzenszwalb", segmenter_params={"scale": 50}, tile_size=96, padding=12,
                merge="overlap", vectors=False, progress=False)
    vis = {}
    for recut in (False, True):
        out = tmp_path / f"out-{recut}"
        run(data_dir / "kampala_crop_3857.tif", out, client=client,
            config=RunConfig(**base, merge_params={} if recut else {"seam_recut": False}))
        labels = open_labels(out / "labels.zarr").values
        vis[recut] = seam_visibility(labels, tile_size=96, padding=12).mean
        ids = np.unique(labels[labels > 0])
        assert ids.tolist() == list(range(1, ids.size + 1))
        assert label(labels, background=0, connectivity=1).max() == ids.size
        assert not (out / "staging" / "merge").exists()
    assert vis[True] < vis[False]
    lazy = segment(data_dir / "kampala_crop_3857.tif", segmenter="felzenszwalb", segmenter_params={"scale": 50},
                   tile_size=96, padding=12)
    np.testing.assert_array_equal(lazy.values, open_labels(tmp_path / "out-True" / "labels.zarr").values)


def test_run_registers_the_memory_trim_plugin_on_workers(tmp_path, data_dir, client):
    from remote_samsing.cluster import malloc_trim

    cfg = RunConfig(segmenter="threshold", segmenter_params={"threshold": 60}, tile_size=128, padding=16,
                    merge="none", vectors=False, progress=False)
    run(data_dir / "kampala_crop_3857.tif", tmp_path / "out", config=cfg, client=client)
    plugins = client.run(lambda dask_worker: sorted(dask_worker.plugins))
    assert plugins and all("remote-samsing-trim-memory" in p for p in plugins.values())
    malloc_trim()  # the callback itself: a no-op where libc has no malloc_trim, never an error


def test_file_input_reads_windows_itself_same_result_as_map_overlap(tmp_path, write_geotiff, client):
    """A mosaic file is read by one task per block (its own padded window); a
    mosaic in memory goes through ``map_overlap``. Both stage the same labels."""
    from distributed import get_task_stream

    from remote_samsing.io import open_mosaic

    rng = np.random.default_rng(5)
    data = (rng.integers(0, 3000, (3, 150, 170)) + np.arange(170) * 20).astype(np.uint16)
    data[:, :20, :30] = 0  # nodata corner
    path = write_geotiff(data, nodata=0)
    cfg = RunConfig(segmenter="felzenszwalb", segmenter_params={"scale": 20, "min_size": 5}, tile_size=64,
                    padding=8, merge="overlap", vectors=False, progress=False)
    with get_task_stream(client) as ts:
        rec = run(path, tmp_path / "file", config=cfg, client=client)
    n_blocks = rec["tiling"]["n_blocks"]
    names = [str(t["key"][0] if isinstance(t["key"], tuple) else t["key"]) for t in ts.data]
    assert sum(n.startswith("rs-segment-stage") for n in names) == n_blocks == 9
    assert not any("overlap" in n or n.startswith("getitem") for n in names)
    in_memory = open_mosaic(path, chunks=64).compute()
    in_memory.attrs.pop("source")  # an array, not the file
    run(in_memory, tmp_path / "mem", config=cfg, client=client)
    for part in ("staging/labels.zarr", "labels.zarr"):
        a = open_labels(tmp_path / "file" / part) if part == "labels.zarr" else da.from_zarr(
            str(tmp_path / "file" / part))
        b = open_labels(tmp_path / "mem" / part) if part == "labels.zarr" else da.from_zarr(
            str(tmp_path / "mem" / part))
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=part)
    assert np.asarray(open_labels(tmp_path / "file" / "labels.zarr")).max() > 10


def test_run_sends_every_task_to_its_own_client(tmp_path, data_dir, client):
    """A process may hold several clients (a notebook, a benchmark): ``run(client=c)``
    computes everything on ``c``, vectors included, not on whichever client was made last."""
    from distributed import Client, LocalCluster, get_task_stream

    cfg = RunConfig(segmenter="threshold", segmenter_params={"threshold": 60}, tile_size=128, padding=16,
                    merge="overlap", vectors=True, progress=False)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as lc, \
            Client(lc) as other:  # the newest client: dask's default from here on
        with get_task_stream(client=other) as elsewhere, get_task_stream(client=client) as here:
            rec = run(data_dir / "kampala_crop_3857.tif", tmp_path / "out", config=cfg, client=client)
        assert rec["complete"] and (tmp_path / "out" / rec["outputs"]["vectors"]).exists()
        assert len(here.data) > 0
        assert elsewhere.data == []


def test_library_versions_are_the_installed_ones():
    """run.json's versions: what importlib.metadata says of each library, None where absent."""
    from importlib.metadata import PackageNotFoundError, version

    from remote_samsing.pipeline import library_versions

    got = library_versions()
    assert got.pop("python") == platform.python_version()
    assert {"numpy", "dask", "distributed", "zarr", "torch", "sam2"} <= set(got)
    for name, v in got.items():
        try:
            assert v == version(name), name
        except PackageNotFoundError:
            assert v is None, name


def test_the_checkpoint_counts_by_content_not_by_where_it_was_found(tmp_path):
    """The same checkpoint file given by --checkpoint or found in the environment is the same job."""
    from remote_samsing.pipeline import _fingerprint, _fingerprint_payload
    from remote_samsing.tiling import TilingPlan

    plan = TilingPlan(shape=(64, 64), tile_size=32, padding=4)
    given = RunConfig(segmenter_params={"checkpoint": str(tmp_path / "a.pt"), "points_per_side": 8})
    found = RunConfig(segmenter_params={"points_per_side": 8})
    identity = {"path": "x.tif"}
    same = [_fingerprint(_fingerprint_payload(c, identity, plan, "abc")) for c in (given, found)]
    assert same[0] == same[1]
    assert _fingerprint(_fingerprint_payload(found, identity, plan, "other")) != same[0]


def test_a_spill_folder_that_cannot_be_removed_is_said_and_the_run_goes_on(tmp_path, monkeypatch):
    """The spill folder is removed behind the outputs: a removal that fails is a warning naming the
    folder (the products are whole), and an error of the outputs themselves still propagates."""
    import remote_samsing.pipeline as pipeline

    def refuse(folder):
        raise PermissionError(13, "Permission denied", str(folder))

    monkeypatch.setattr(pipeline, "remove_tree", refuse)
    said = []
    with pipeline._removed_behind(tmp_path / "spill", said.append):
        pass
    assert len(said) == 1 and said[0].startswith(f"warning: the merge's scratch folder `{tmp_path / 'spill'}`")
    assert "Permission denied" in said[0]
    with pytest.raises(ValueError, match="the outputs failed"):
        with pipeline._removed_behind(tmp_path / "spill", said.append):
            raise ValueError("the outputs failed")
