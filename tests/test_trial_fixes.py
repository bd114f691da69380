"""What a user trial found: merge parameters, checkpoint errors, vectorize's OUT, and help texts that
say what the commands do."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from remote_samsing.cli import cli
from remote_samsing.exceptions import CheckpointError, ConfigError, OutputExistsError
from remote_samsing.merge import MergeConfig

ROOT = Path(__file__).resolve().parents[1]


def _error_and_hint(r) -> tuple[str, str]:
    """The CLI's two lines of an error, after its exit status 2 is checked."""
    assert r.exit_code == 2, r.output
    lines = r.output.splitlines()
    assert len(lines) == 2 and lines[0].startswith("error: ") and lines[1].startswith("hint: "), r.output
    return lines[0], lines[1]


# ---------------------------------------------------------------------------
# merge parameters from the user
# ---------------------------------------------------------------------------
def test_an_unknown_merge_parameter_is_named_with_every_valid_one():
    with pytest.raises(ConfigError) as err:
        MergeConfig.from_params(strategy="overlap", params={"bogus": 1, "min_iou": 0.6})
    assert str(err.value).startswith("unknown merge parameter(s): bogus")
    assert "__init__" not in str(err.value)
    for key in ("min_iou", "jitter", "split_parts", "seam_recut", "diagnostics"):
        assert key in err.value.hint
    assert "strategy" not in err.value.hint  # that is the run's `merge` key


def test_a_merge_parameter_of_the_wrong_type_names_the_key_and_the_type_only():
    with pytest.raises(ConfigError) as err:
        MergeConfig.from_params(params={"min_iou": "abc"})
    assert "`min_iou` must be a number, got 'abc'" in str(err.value) and err.value.hint is None
    with pytest.raises(ConfigError) as err:  # out of range: the hint says why the bound is there
        MergeConfig.from_params(params={"min_iou": 0.4})
    assert "below 0.5" in err.value.hint
    with pytest.raises(ConfigError, match="`jitter` must be an integer"):
        MergeConfig.from_params(params={"jitter": "two"})
    with pytest.raises(ConfigError, match="`split_parts` must be true or false"):
        MergeConfig.from_params(params={"split_parts": "yes"})


def test_the_strategy_is_no_merge_parameter():
    with pytest.raises(ConfigError, match="`strategy` is not a merge parameter") as err:
        MergeConfig.from_params(params={"strategy": "iou"})
    assert "--merge" in err.value.hint


def test_diagnostics_is_for_the_lazy_graph_only():
    assert MergeConfig.from_params(params={"diagnostics": True}).diagnostics
    with pytest.raises(ConfigError, match="`diagnostics` has no effect on a run that writes OUTDIR") as err:
        MergeConfig.from_params(params={"diagnostics": True}, stored=True)
    assert "build_graph" in err.value.hint
    with pytest.raises(ConfigError) as err:  # and is not offered to such a run
        MergeConfig.from_params(params={"bogus": 1}, stored=True)
    assert "diagnostics" not in err.value.hint


def test_build_graph_turns_merge_params_into_the_config_or_one_error():
    from remote_samsing.pipeline import build_graph

    img = np.zeros((32, 32), np.uint8)
    kw = dict(segmenter="felzenszwalb", tile_size=16, padding=4)
    with pytest.raises(ConfigError, match="unknown merge parameter"):
        build_graph(img, merge_params={"bogus": 1}, **kw)
    graph = build_graph(img, merge_params={"diagnostics": True}, **kw)
    assert graph.diagnostics is not None


@pytest.fixture
def scene(tmp_path, data_dir):
    from remote_samsing.testing import cut_tiles

    return cut_tiles(data_dir / "neon_osbs.tif", tmp_path / "tiles", rows=1, cols=2)[0]


@pytest.mark.parametrize("param, says, hint_has", [
    ("bogus=1", "unknown merge parameter(s): bogus", "min_iou"),
    ("min_iou=abc", "`min_iou` must be a number, got 'abc'", None),
    ("diagnostics=true", "`diagnostics` has no effect", "build_graph"),
])
def test_segment_refuses_a_bad_merge_param_in_one_line_before_it_starts(tmp_path, scene, param, says, hint_has):
    out = tmp_path / "out"
    r = CliRunner().invoke(cli, ["segment", str(scene), str(out), "--segmenter", "felzenszwalb",
                                 "--merge-param", param])
    if hint_has is None:  # no hint: the key and the type say it all
        assert r.exit_code == 2 and r.output.splitlines() == [f"error: {says}"], r.output
    else:
        error, hint = _error_and_hint(r)
        assert says in error and hint_has in hint
    assert not out.exists()


# ---------------------------------------------------------------------------
# checkpoints that are no SAM2 checkpoint, and ones the models directory gave
# ---------------------------------------------------------------------------
def _foreign_checkpoint(path: Path) -> Path:
    torch = pytest.importorskip("torch")
    pytest.importorskip("sam2")
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": {"foo": torch.zeros(1)}}, path)
    return path


def test_a_file_without_sam2_tensors_is_not_a_sam2_checkpoint(tmp_path):
    from remote_samsing.segmenters.sam2 import check_checkpoint

    ckpt = _foreign_checkpoint(tmp_path / "sam2.1_hiera_small.pt")
    with pytest.raises(CheckpointError) as err:
        check_checkpoint(ckpt)
    text = Exception.__str__(err.value)
    assert f"checkpoint `{ckpt}` is not a SAM2 checkpoint" in text
    assert "holding none of its 519 tensors and 1 other tensor (e.g. foo)" in text
    assert "--model-cfg" not in err.value.hint and "fetch-model" in err.value.hint


def test_a_checkpoint_the_models_directory_gave_says_so(tmp_path, monkeypatch):
    from remote_samsing.segmenters.sam2 import SAM2Segmenter

    models = tmp_path / "models"
    ckpt = _foreign_checkpoint(models / "sam2.1_hiera_small.pt")
    monkeypatch.setenv("REMOTE_SAMSING_MODELS", str(models))
    with pytest.raises(CheckpointError) as err:
        SAM2Segmenter(device="cpu")
    assert f"checkpoint `{ckpt}` (from models directory) is not a SAM2 checkpoint" in str(err.value)
    assert f"models directory {models} ($REMOTE_SAMSING_MODELS)" in err.value.hint
    # a file given by the user: no word about the models directory
    with pytest.raises(CheckpointError) as err:
        SAM2Segmenter(checkpoint=ckpt, device="cpu")
    assert "(from " not in str(err.value) and "models directory" not in err.value.hint


def test_a_mismatch_from_the_models_directory_says_so(tmp_path, monkeypatch):
    """A real SAM2 checkpoint of another config keeps the --model-cfg hint, and names the directory."""
    pytest.importorskip("sam2")
    from remote_samsing.segmenters.sam2 import check_checkpoint, write_random_checkpoint

    models = tmp_path / "models"
    models.mkdir()
    write_random_checkpoint(models / "sam2_hiera_tiny.pt", model_cfg="tiny")  # SAM2.1 weights, SAM2 name
    monkeypatch.setenv("REMOTE_SAMSING_MODELS", str(models))
    with pytest.raises(CheckpointError) as err:
        check_checkpoint()
    assert "(from models directory) does not match the model config" in str(err.value)
    assert "is not a SAM2 checkpoint" not in str(err.value)
    assert "--model-cfg" in err.value.hint and str(models) in err.value.hint


# ---------------------------------------------------------------------------
# vectorize: OUT's format and an existing OUT, in the command line's words
# ---------------------------------------------------------------------------
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
    error, hint = _error_and_hint(runner.invoke(cli, ["vectorize", str(label_tif), str(out)]))
    assert error == f"error: `{out}` already exists" and hint == "hint: pass --overwrite"
    assert out.read_bytes() == before
    r = runner.invoke(cli, ["vectorize", str(label_tif), str(out), "--overwrite"])
    assert r.exit_code == 0 and r.output.splitlines()[-1] == f"wrote {out}", r.output


def test_the_vectorize_command_names_the_suffixes_not_a_python_keyword(tmp_path, label_tif):
    error, hint = _error_and_hint(CliRunner().invoke(cli, ["vectorize", str(label_tif), str(tmp_path / "v.shpx")]))
    assert "cannot infer a vector format from `v.shpx`" in error
    assert "driver=" not in hint and all(s in hint for s in (".parquet", ".gpkg", ".geojson", ".fgb"))
    assert not (tmp_path / "v.shpx").exists()


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
