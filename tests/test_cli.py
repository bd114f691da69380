"""The command line's error contract: one line and an exit status, the traceback behind --debug."""

import re
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

import remote_samsing.vectorize as vec
from remote_samsing.cli import cli

ROOT = Path(__file__).resolve().parents[1]

ARGS = ["vectorize", "labels.tif", "out.gpkg"]


def _fail_with(monkeypatch, exc):
    def broken(*args, **kwargs):
        raise exc

    monkeypatch.setattr(vec, "vectorize_labels", broken)


def test_an_unforeseen_failure_is_one_line_and_its_traceback_is_behind_debug(monkeypatch):
    _fail_with(monkeypatch, RuntimeError("Zstd decompression error: invalid input data"))
    runner = CliRunner()
    r = runner.invoke(cli, ARGS)
    assert r.exit_code == 1
    first, hint = r.output.splitlines()
    assert first == "error: unexpected failure: RuntimeError: Zstd decompression error: invalid input data"
    assert hint == "hint: `remote-samsing --debug vectorize ...` shows the traceback"  # resuming is segment's
    r = runner.invoke(cli, ["--debug", *ARGS])
    assert isinstance(r.exception, RuntimeError)


@pytest.mark.parametrize("exc, code, says", [
    (click.UsageError("no such option: --tile"), 2, "Error: no such option: --tile"),
    (click.Abort(), 1, "Aborted!"),
    (click.exceptions.Exit(3), 3, ""),
])
def test_clicks_own_exceptions_pass_through_as_click_reports_them(monkeypatch, exc, code, says):
    _fail_with(monkeypatch, exc)
    r = CliRunner().invoke(cli, ARGS)
    assert r.exit_code == code and "unexpected failure" not in r.output
    assert says in r.output


# ---------------------------------------------------------------------------
# INPUT... OUTDIR: many inputs, bad ones, inspect
# ---------------------------------------------------------------------------
@pytest.fixture
def tiles(tmp_path, data_dir):
    from remote_samsing.testing import cut_tiles

    return cut_tiles(data_dir / "neon_osbs.tif", tmp_path / "tiles", rows=2, cols=3)


def _one_error(r, says):
    assert r.exit_code == 2, r.output
    lines = r.output.splitlines()
    assert lines[0].startswith("error: ") and says in lines[0], r.output
    assert len(lines) == 2 and lines[1].startswith("hint: ")


def test_bad_inputs_are_one_line_with_a_hint_and_write_nothing(tmp_path, tiles):
    (tmp_path / "empty").mkdir()
    (tmp_path / "list.txt").write_text(f"{tiles[0]}\nnope.tif\n")
    grey = tmp_path / "grey.tif"
    import numpy as np
    import rasterio

    with rasterio.open(tiles[0]) as src:
        profile = {**src.profile, "count": 1}
    with rasterio.open(grey, "w", **profile) as dst:
        dst.write(np.zeros((1, profile["height"], profile["width"]), np.uint8))
    out = tmp_path / "out"
    runner = CliRunner()
    cases = [
        ([str(tmp_path / "empty")], "holds no raster"),
        ([str(tmp_path / "x_*.tif")], "matches no raster"),
        ([f"@{tmp_path / 'list.txt'}"], "line 2: `nope.tif` does not exist"),
        ([str(tiles[0]), str(grey)], "grey.tif` has 1 band(s) of uint8"),
    ]
    for inputs, says in cases:
        _one_error(runner.invoke(cli, ["segment", *inputs, str(out), "--segmenter", "felzenszwalb"]), says)
        assert not out.exists()
    before = tiles[1].read_bytes()
    r = runner.invoke(cli, ["segment", str(tiles[0]), str(tiles[1]), "--segmenter", "felzenszwalb", "--overwrite"])
    _one_error(r, "is an existing file, not a folder")
    assert tiles[1].read_bytes() == before
    # OUTDIR forgotten and the last tile's name mistyped: a raster's name is no output folder
    typo = tiles[1].with_name("t_0_9.tif")
    r = runner.invoke(cli, ["segment", str(tiles[0]), str(typo), "--segmenter", "felzenszwalb"])
    _one_error(r, f"OUTDIR `{typo}` is named as a raster, not as a folder")
    assert not typo.exists()
    made = tmp_path / "run.tif"  # a folder of that name, made on purpose, is one
    made.mkdir()
    r = runner.invoke(cli, ["segment", str(tiles[0]), str(made), "--segmenter", "threshold", "--tile-size", "64", "--padding", "8",
                            "--no-progress", "--no-vectors"])
    assert r.exit_code == 0, r.output


def _write_like(path, tile, **changes):
    """A raster on ``tile``'s grid with ``changes`` to its profile (count, dtype), all zeros."""
    import numpy as np
    import rasterio

    with rasterio.open(tile) as src:
        profile = {**src.profile, **changes}
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.zeros((profile["count"], profile["height"], profile["width"]), profile["dtype"]))
    return path


def _thumbnail_item(path, tile):
    """A STAC Item whose only asset is a thumbnail next to ``tile``."""
    import json

    path.write_text(json.dumps({
        "type": "Feature", "stac_version": "1.0.0", "id": "thumb-only", "bbox": [0, 0, 1, 1],
        "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 1], [0, 0]]]},
        "properties": {"datetime": "2024-01-01T00:00:00Z"}, "links": [],
        "assets": {"thumbnail": {"href": str(tile), "type": "image/png", "roles": ["thumbnail"]}}}))
    return path


def _damaged_index(path, tmp_path, tiles):
    """A GTI tile index in XML form that GDAL opens but is not well-formed XML (junk after the root)."""
    from remote_samsing.sources import resolve_mosaic, write_tile_index

    index = write_tile_index(resolve_mosaic([str(t) for t in tiles]), tmp_path / "index.gpkg")
    path.write_text(f"<GDALTileIndexDataset><IndexDataset>{index}</IndexDataset>"
                    "<LocationField>location</LocationField></GDALTileIndexDataset><junk/>")
    return path


def _damaged_nested_vrt(path, tmp_path, tile):
    """A VRT that reads a damaged VRT."""
    import rasterio

    (tmp_path / "inner.vrt").write_text('<VRTDataset rasterXSize="10"><VRTRaster')
    with rasterio.open(tile) as src:
        head = (f'<VRTDataset rasterXSize="{src.width}" rasterYSize="{src.height}"><SRS>{src.crs.to_wkt()}</SRS>'
                f'<GeoTransform>{", ".join(map(repr, src.transform.to_gdal()))}</GeoTransform>')
    path.write_text(head + '<VRTRasterBand dataType="Byte" band="1"><SimpleSource><SourceFilename relativeToVRT="1">'
                    "inner.vrt</SourceFilename><SourceBand>1</SourceBand></SimpleSource></VRTRasterBand></VRTDataset>")
    return path


@pytest.mark.parametrize("case", ["mixed-dtypes", "unreadable", "stac-no-asset", "damaged-gti", "damaged-vrt"])
def test_bad_sources_stop_before_any_cluster_and_write_nothing(tmp_path, tiles, case):
    if case == "mixed-dtypes":
        inputs, says = [tiles[0], _write_like(tmp_path / "wide.tif", tiles[1], dtype="uint16")], "wide.tif` has 3"
    elif case == "unreadable":
        (tmp_path / "broken.tif").write_bytes(b"II*\x00 these bytes are no TIFF")
        inputs, says = [tiles[0], tmp_path / "broken.tif"], "cannot read raster `"
    elif case == "stac-no-asset":
        inputs, says = [_thumbnail_item(tmp_path / "item.json", tiles[0])], "has no usable raster asset"
    elif case == "damaged-gti":
        inputs, says = [_damaged_index(tmp_path / "m.gti", tmp_path, tiles)], "m.gti` reads: junk after document"
    else:
        inputs, says = [_damaged_nested_vrt(tmp_path / "outer.vrt", tmp_path, tiles[0])], "inner.vrt` reads: Parse"
    out = tmp_path / "out"
    r = CliRunner().invoke(cli, ["segment", *map(str, inputs), str(out), "--segmenter", "felzenszwalb"])
    _one_error(r, says)
    assert "unexpected failure" not in r.output
    assert not any(line.startswith(("starting ", "dashboard:")) for line in r.output.splitlines())  # no cluster
    assert not out.exists()


def test_inspect_prints_what_a_run_would_see(tiles, data_dir):
    import rasterio

    from remote_samsing._outdir import estimate_bytes, format_size
    from remote_samsing.tiling import TilingPlan

    r = CliRunner().invoke(cli, ["inspect", str(tiles[0].parent), "--tile-size", "128", "--padding", "16"])
    assert r.exit_code == 0, r.output
    facts = dict(line.split(None, 1) for line in r.output.replace("target grid", "target_grid").splitlines())
    assert facts["sources"] == "6" and facts["crs"] == "EPSG:32617" and facts["resolutions"] == "0.1 x 0.1"
    assert facts["size"].startswith("400 x 400 px") and facts["bands"] == "3 of uint8, nodata 255"
    assert facts["blocks"] == "16 (4 x 4 blocks, width x height) at tile size 128, padding 16"  # every block reads a source
    assert facts["target_grid"] == "EPSG:32617, 0.1 x 0.1 per pixel, resampling bilinear"
    with rasterio.open(data_dir / "neon_osbs.tif") as src:  # the tiles' union is the scene
        left, bottom, right, top = src.bounds
    assert facts["bounds"] == f"{left:.10g}, {bottom:.10g}, {right:.10g}, {top:.10g} (left, bottom, right, top)"
    assert facts["bounds"].startswith("404211.9, 3285102.9, 404251.9, 3285142.9")
    # the disk-space check's own estimate, in its own words
    est = estimate_bytes(TilingPlan(shape=(400, 400), tile_size=128, padding=16), vectors=True)
    assert facts["output"].startswith(f"about {format_size(est['total'])} at the peak (staging "
                                      f"{format_size(est['staging'])}, merge working files up to {format_size(est['merge'])}, ")
    assert facts["output"].endswith(f"; at least {format_size(est['least'])}, with labels that compress very well")
    # a Zarr mosaic is its own source: its resolution is the grid's
    from remote_samsing.io import to_zarr

    to_zarr(tiles[0].parent, tiles[0].parent.parent / "m.zarr", tile_size=128)
    r = CliRunner().invoke(cli, ["inspect", str(tiles[0].parent.parent / "m.zarr")])
    assert r.exit_code == 0, r.output
    assert "resolutions  0.1 x 0.1" in r.output.splitlines()


def test_ingest_refuses_an_out_that_is_no_zarr_store_and_keeps_it(tmp_path, tiles):
    note = tmp_path / "note.txt"
    note.write_text("keep me")
    stuff = tmp_path / "stuff"
    stuff.mkdir()
    (stuff / "keep.txt").write_text("keep me")
    before = tiles[1].read_bytes()
    runner = CliRunner()
    cases = [(note, "is an existing file, not a Zarr folder"), (tiles[1], "is an existing file, not a Zarr folder"),
             (stuff, "is a folder holding other files, not a Zarr store"),
             (tiles[0].parent, "is a folder holding other files, not a Zarr store")]
    for out, says in cases:
        for flags in ([], ["--overwrite"]):
            _one_error(runner.invoke(cli, ["ingest", str(tiles[0]), str(out), "--tile-size", "128", *flags]), says)
    assert note.read_text() == "keep me" and (stuff / "keep.txt").read_text() == "keep me"
    assert sorted(p.name for p in stuff.iterdir()) == ["keep.txt"] and tiles[1].read_bytes() == before
    assert len(list(tiles[0].parent.iterdir())) == len(tiles)


def test_an_unknown_segmenter_param_lists_the_valid_ones(tmp_path, tiles):
    out = tmp_path / "out"
    r = CliRunner().invoke(cli, ["segment", str(tiles[0]), str(out), "--segmenter", "felzenszwalb",
                                 "--segmenter-param", "scal=200"])
    _one_error(r, "unknown parameter(s) for segmenter `felzenszwalb`: scal")
    assert r.output.splitlines()[1] == "hint: valid parameters: min_size, scale, sigma"
    assert not out.exists()
    # SAM2's files given to another segmenter: a forgotten --segmenter sam2, said so
    r = CliRunner().invoke(cli, ["segment", str(tiles[0]), str(out), "--segmenter", "slic",
                                 "--checkpoint", str(tmp_path / "m.pt")])
    _one_error(r, "`checkpoint` (--checkpoint) is for segmenter sam2, not `slic`")
    assert r.output.splitlines()[1] == "hint: drop it, or pass --segmenter sam2" and not out.exists()


def test_checkpoint_is_a_yaml_key_as_it_is_a_flag(tmp_path, tiles):
    """`checkpoint:` in --config reaches the segmenter as --checkpoint does; the flag wins over the file."""
    config = tmp_path / "run.yaml"
    config.write_text(f"checkpoint: {tmp_path / 'from-yaml.pt'}\ntile_size: 128\npadding: 16\n")
    runner = CliRunner()
    r = runner.invoke(cli, ["segment", str(tiles[0]), str(tmp_path / "out"), "--config", str(config)])
    assert r.exit_code == 2 and "unknown configuration key" not in r.output, r.output
    assert "from-yaml.pt" in r.output.splitlines()[0]  # the missing checkpoint, named
    r = runner.invoke(cli, ["segment", str(tiles[0]), str(tmp_path / "out"), "--config", str(config),
                            "--checkpoint", str(tmp_path / "from-flag.pt")])
    assert r.exit_code == 2 and "from-flag.pt" in r.output.splitlines()[0], r.output


# ---------------------------------------------------------------------------
# checkpoints: segment refuses a bad one in one line; info checks the one segment would use
# ---------------------------------------------------------------------------
def _bad_checkpoints(folder):
    """(file, what the error says) for each way a checkpoint is unusable; each named like a real one."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("sam2")
    folder.mkdir()
    text = folder / "text" / "sam2.1_hiera_tiny.pt"
    text.parent.mkdir()
    text.write_text("these are not the weights\n")
    whole, cut = folder / "whole.pt", folder / "cut" / "sam2.1_hiera_tiny.pt"
    torch.save({"model": {"w": torch.zeros(4096)}}, whole)
    cut.parent.mkdir()
    cut.write_bytes(whole.read_bytes()[:9000])
    shapes = folder / "shapes" / "sam2.1_hiera_tiny.pt"
    shapes.parent.mkdir()
    torch.save({"model": {"image_encoder.trunk.pos_embed": torch.zeros(1)}}, shapes)
    return [(text, "is a text file"), (cut, "is truncated or damaged"),
            (shapes, "does not match the model config"), (folder / "missing" / "sam2.1_hiera_tiny.pt", "does not exist")]


def test_segment_refuses_each_bad_checkpoint_in_one_line(tmp_path, tiles):
    for ckpt, says in _bad_checkpoints(tmp_path / "ckpts"):
        out = tmp_path / "out"
        r = CliRunner().invoke(cli, ["segment", str(tiles[0]), str(out), "--checkpoint", str(ckpt), "--device", "cpu"])
        _one_error(r, says)
        assert f"`{ckpt}`" in r.output and "Traceback" not in r.output and not out.exists()


def test_info_exits_2_when_the_checkpoint_segment_would_use_is_bad(tmp_path, monkeypatch):
    for ckpt, says in _bad_checkpoints(tmp_path / "ckpts"):
        monkeypatch.setenv("REMOTE_SAMSING_CHECKPOINT", str(ckpt))
        r = CliRunner().invoke(cli, ["info"])
        assert r.exit_code == 2, r.output
        assert f"{ckpt} (from $REMOTE_SAMSING_CHECKPOINT)" in r.output and "found" not in r.output
        error = [line for line in r.output.splitlines() if line.startswith("error: ")]
        assert len(error) == 1 and says in error[0] and "Traceback" not in r.output


def test_info_checks_a_good_checkpoint_and_prints_its_config(tmp_path, monkeypatch):
    pytest.importorskip("sam2")
    from remote_samsing.segmenters.sam2 import write_random_checkpoint

    ckpt = write_random_checkpoint(tmp_path / "sam2.1_hiera_tiny.pt", model_cfg="tiny")
    monkeypatch.setenv("REMOTE_SAMSING_CHECKPOINT", str(ckpt))
    r = CliRunner().invoke(cli, ["info"])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert f"checkpoint       {ckpt} (from $REMOTE_SAMSING_CHECKPOINT)" in lines
    assert "model config     configs/sam2.1/sam2.1_hiera_t.yaml (inferred from the file name)" in lines
    assert any(line.startswith("checked          ok on the CPU: ") for line in lines)
    # the same weights under a SAM2 (not 2.1) name: not the config the name says
    renamed = tmp_path / "sam2_hiera_tiny.pt"
    renamed.symlink_to(ckpt)
    r = CliRunner().invoke(cli, ["info", "--checkpoint", str(renamed)])
    assert r.exit_code == 2 and "does not match the model config `configs/sam2/sam2_hiera_t.yaml`" in r.output
    r = CliRunner().invoke(cli, ["info", "--checkpoint", str(renamed), "--model-cfg", "tiny"])
    assert r.exit_code == 0 and "configs/sam2.1/sam2.1_hiera_t.yaml (given)" in r.output, r.output


# ---------------------------------------------------------------------------
# help texts and the README say what the commands do
# ---------------------------------------------------------------------------
def _help(name: str) -> str:
    r = CliRunner().invoke(cli, [name, "--help"], terminal_width=200)
    assert r.exit_code == 0, r.output
    return " ".join(r.output.split())


def test_vectorize_help_names_every_format_and_overwrite():
    text = _help("vectorize")
    assert all(s in text for s in (".parquet", ".gpkg", ".geojson", ".fgb", "--overwrite"))


def test_info_help_and_behaviour_agree_when_there_is_no_checkpoint():
    assert "exits 0" in _help("info")
    r = CliRunner().invoke(cli, ["info"])  # conftest: an empty models directory, no variable
    assert r.exit_code == 0 and re.search(r"^checkpoint\s+none: no SAM2 checkpoint", r.output, re.M), r.output


def test_the_readme_cpu_preview_pins_the_device():
    readme = (ROOT / "README.md").read_text()
    preview = re.search(r"remote-samsing segment scene\.tif out/ [^\n]*\\\n[^\n]*", readme).group(0)
    assert "--device cpu" in preview and "image_size=256" in preview


def test_a_command_takes_over_only_the_default_signal_handlers():
    """While a command runs, SIGTERM and Ctrl-C stop it in one line, but a SIGINT the caller ignores (a
    background job of a script) stays ignored; each handler is put back afterwards."""
    import signal

    from remote_samsing.cli import _signals_as_interrupts

    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    try:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        with _signals_as_interrupts():
            assert signal.getsignal(signal.SIGINT) is not signal.default_int_handler
            assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        with _signals_as_interrupts():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before[0])
        signal.signal(signal.SIGTERM, before[1])
