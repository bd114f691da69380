"""The SAM2 segmenter: random-weight Hiera-T end to end, checkpoints, bad input, fetch-model."""

from __future__ import annotations

import pickle
import time
from pathlib import Path

import numpy as np
import pytest

from remote_samsing.exceptions import BackendUnavailableError, CheckpointError, ConfigError
from remote_samsing.segmenters import sam2 as sam2_mod
from remote_samsing.segmenters.sam2 import SAM2Segmenter, fetch_model, resolve_model_cfg

DATA = Path(__file__).parent / "data"

# thresholds 0: random weights give ~no masks at the paper's thresholds (stack.md §2)
FAST = dict(model_cfg="tiny", image_size=256, device="cpu", points_per_side=4, max_passes=2,
            iou_start=0.0, iou_end=0.0, stability_start=0.0, stability_end=0.0, points_per_batch=16)


@pytest.fixture(scope="module")
def crop():
    rasterio = pytest.importorskip("rasterio")
    with rasterio.open(DATA / "neon_osbs.tif") as ds:
        return np.ascontiguousarray(ds.read()[:3, :256, :256].transpose(1, 2, 0))


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    pytest.importorskip("sam2")
    path = tmp_path_factory.mktemp("ckpt") / "sam2.1_hiera_tiny.pt"
    return sam2_mod.write_random_checkpoint(path, model_cfg="tiny", seed=0)


def info(shape, *, offset=(0, 0), core=None):
    y, x = offset
    d = {"window": (y, y + shape[0], x, x + shape[1]), "valid": np.ones(shape, bool)}
    if core is not None:
        d["core"] = core
    return d


def test_random_weights_end_to_end_and_checkpoint_roundtrip(crop, tmp_path):
    pytest.importorskip("sam2")
    seg = SAM2Segmenter(random_weights=True, seed=0, **FAST)
    blk = info(crop.shape[:2], offset=(1000, 2000), core=(1016, 1240, 2016, 2240))
    labels = seg.segment(crop, block_info=blk)
    assert labels.shape == (256, 256) and labels.dtype == np.uint32
    stats = seg.last_stats
    assert 1 <= stats["passes"] <= 2 and len(stats["pass_stats"]) == stats["passes"]
    assert stats["n_labels"] == int(labels.max()) >= 1  # thresholds 0 keep at least one mask
    assert {"encoder_s", "decoder_s", "accept_s"} <= set(stats["pass_stats"][0])
    # the weights go to a file named like the official one, so the config is inferred
    path = seg.save_checkpoint(tmp_path / "sam2.1_hiera_tiny.pt")
    again = SAM2Segmenter(checkpoint=path, **{k: v for k, v in FAST.items() if k != "model_cfg"})
    assert again.model_cfg == "configs/sam2.1/sam2.1_hiera_t.yaml"
    np.testing.assert_array_equal(again.segment(crop, block_info=blk), labels)
    assert again.last_stats["pass_stats"][0]["masks_generated"] == stats["pass_stats"][0]["masks_generated"]


def test_default_thresholds_random_weights_respect_max_passes(crop):
    pytest.importorskip("sam2")
    kw = {k: v for k, v in FAST.items() if not k.endswith(("_start", "_end"))}
    seg = SAM2Segmenter(random_weights=True, **kw)
    labels = seg.segment(crop, block_info=info(crop.shape[:2]))
    assert labels.shape == (256, 256) and labels.dtype == np.uint32
    assert seg.last_stats["passes"] == 2 and seg.last_stats["stop_reason"] == "max_passes"
    assert [p["pred_iou_thresh"] for p in seg.last_stats["pass_stats"]] == [0.93, 0.92]


def test_wrong_architecture_checkpoint(tiny_ckpt, tmp_path):
    wrong = tmp_path / "sam2.1_hiera_small.pt"
    wrong.symlink_to(tiny_ckpt)  # tiny weights under a "small" name
    with pytest.raises(CheckpointError, match="does not match the model config"):
        SAM2Segmenter(checkpoint=wrong)
    with pytest.raises(CheckpointError, match="sam2_hiera_t"):
        SAM2Segmenter(checkpoint=tiny_ckpt, model_cfg="sam2_hiera_t")  # SAM2 vs SAM2.1


def test_unreadable_checkpoint(tmp_path):
    pytest.importorskip("sam2")
    bad = tmp_path / "sam2.1_hiera_tiny.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="is a text file"):
        SAM2Segmenter(checkpoint=bad)


def test_missing_checkpoint_and_unknown_config(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        SAM2Segmenter(checkpoint=tmp_path / "sam2.1_hiera_tiny.pt")
    with pytest.raises(CheckpointError, match="no SAM2 checkpoint"):
        SAM2Segmenter()
    other = tmp_path / "weights.pt"
    other.write_bytes(b"\x80\x02")  # a pickle's head: the name, not the content, is the problem here
    with pytest.raises(ConfigError, match="cannot infer"):
        SAM2Segmenter(checkpoint=other)
    with pytest.raises(ConfigError, match="unknown SAM2 model config"):
        SAM2Segmenter(checkpoint=other, model_cfg="hiera_gigantic")


@pytest.mark.parametrize(
    "kw",
    [
        {"iou_start": 1.5}, {"stability_end": -0.1}, {"iou_start": 0.5, "iou_end": 0.7}, {"step": 0},
        {"points_per_side": 0}, {"image_size": 300}, {"device": "tpu"}, {"points_per_batch": 0},
        {"box_nms_thresh": 0}, {"no_such_param": 1},
    ],
)
def test_bad_parameters(kw):
    with pytest.raises(ConfigError):
        SAM2Segmenter(random_weights=True, model_cfg="tiny", **kw)


def test_cuda_requested_but_unavailable():
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(BackendUnavailableError, match="CUDA"):
        SAM2Segmenter(random_weights=True, model_cfg="tiny", device="cuda")


def test_registry_builds_it():
    pytest.importorskip("sam2")
    from remote_samsing.segmenters import get_segmenter

    seg = get_segmenter("sam2", random_weights=True, model_cfg="small", points_per_side=8)
    assert isinstance(seg, SAM2Segmenter) and seg.config.points_per_side == 8
    assert seg.model_cfg == "configs/sam2.1/sam2.1_hiera_s.yaml"


@pytest.mark.parametrize(
    "cfg, ckpt, want",
    [
        (None, "/x/sam2.1_hiera_tiny.pt", "configs/sam2.1/sam2.1_hiera_t.yaml"),
        (None, "sam2.1_hiera_base_plus.pt", "configs/sam2.1/sam2.1_hiera_b+.yaml"),
        (None, "sam2_hiera_large.pt", "configs/sam2/sam2_hiera_l.yaml"),
        (None, "my-sam2_hiera_small-finetuned.pt", "configs/sam2/sam2_hiera_s.yaml"),
        ("base_plus", None, "configs/sam2.1/sam2.1_hiera_b+.yaml"),
        ("sam2.1_hiera_l.yaml", None, "configs/sam2.1/sam2.1_hiera_l.yaml"),
        ("configs/sam2/sam2_hiera_t.yaml", "sam2.1_hiera_large.pt", "configs/sam2/sam2_hiera_t.yaml"),
    ],
)
def test_resolve_model_cfg(cfg, ckpt, want):
    assert resolve_model_cfg(cfg, ckpt) == want


def test_segment_places_core_and_pickles_without_model():
    pytest.importorskip("sam2")

    class Square:  # scripted generator: one mask on the local core
        def generate(self, image, *, points, pred_iou_thresh, stability_score_thresh):
            m = np.zeros(image.shape[:2], bool)
            m[5:15, 5:15] = True
            return [{"segmentation": m, "predicted_iou": 1.0, "stability_score": 1.0}]

    seg = SAM2Segmenter(random_weights=True, model_cfg="tiny", points_per_side=4, min_mask_area=1)
    seg._generator = lambda: Square()
    img = np.zeros((20, 20, 3), np.uint8)
    labels = seg.segment(img, block_info=info((20, 20), offset=(100, 200), core=(105, 115, 205, 215)))
    assert labels.sum() == 100
    st = seg.last_stats
    assert st["stop_reason"] == "target_coverage" and st["coverage_core"] == 100.0 and st["coverage_window"] == 25.0
    del seg._generator
    clone = pickle.loads(pickle.dumps(seg))
    assert clone.config == seg.config and clone.last_stats is None
    assert len(pickle.dumps(seg)) < 10_000  # parameters only, never a model


def test_fetch_model_offline_fails_fast(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    with pytest.raises(BackendUnavailableError) as err:
        fetch_model("tiny", dest=tmp_path)
    assert time.perf_counter() - t0 < 1.0
    assert "092824/sam2.1_hiera_tiny.pt" in err.value.hint and str(tmp_path) in err.value.hint
    # an existing file is returned without any network access
    (tmp_path / "sam2_hiera_large.pt").write_bytes(b"weights")
    assert fetch_model("sam2_hiera_large", dest=tmp_path) == tmp_path / "sam2_hiera_large.pt"


def test_fetch_model_unreachable_server(tmp_path, monkeypatch):
    import urllib.error

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    def refuse(url, timeout):
        assert url.endswith("072824/sam2_hiera_small.pt") and timeout <= 10
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(sam2_mod.urllib.request, "urlopen", refuse)
    with pytest.raises(BackendUnavailableError, match="cannot download"):
        fetch_model("sam2_hiera_small", dest=tmp_path)
    assert list(tmp_path.iterdir()) == []  # no partial file left


def test_fetch_model_unknown_name(tmp_path):
    with pytest.raises(ConfigError, match="unknown SAM2 model"):
        fetch_model("gigantic", dest=tmp_path)


def test_the_checkpoint_is_found_in_order(tmp_path, monkeypatch):
    from remote_samsing.segmenters.sam2 import CHECKPOINT_ENV, MODELS_ENV, find_checkpoint

    models = tmp_path / "models"
    monkeypatch.setenv(MODELS_ENV, str(models))
    with pytest.raises(CheckpointError) as err:
        find_checkpoint()
    assert "--checkpoint" in str(err.value) and CHECKPOINT_ENV in str(err.value) and str(models) in str(err.value)
    assert "fetch-model" in err.value.hint and "--segmenter felzenszwalb" in err.value.hint
    models.mkdir()
    for name in ("sam2_hiera_large.pt", "sam2.1_hiera_tiny.pt", "sam2.1_hiera_base_plus.pt", "other.pt",
                 "sam2.1_hiera_large.0a1b2c3d.partial.pt"):  # the last: a download cut short
        (models / name).write_bytes(b"x")
    # SAM2.1 before SAM2, larger first
    assert find_checkpoint() == ((models / "sam2.1_hiera_base_plus.pt").absolute(), "models directory")
    monkeypatch.setenv(CHECKPOINT_ENV, str(tmp_path / "env.pt"))
    assert find_checkpoint() == (tmp_path / "env.pt", f"${CHECKPOINT_ENV}")
    assert find_checkpoint(tmp_path / "given.pt") == (tmp_path / "given.pt", "parameter")


def test_the_models_directory_is_per_user_and_fetch_model_writes_there(tmp_path, monkeypatch):
    from remote_samsing.segmenters.sam2 import MODELS_ENV, models_dir

    monkeypatch.delenv(MODELS_ENV)
    default = models_dir()
    assert default.is_absolute() and "remote-samsing" in default.parts and Path.cwd() not in default.parents
    monkeypatch.setenv(MODELS_ENV, str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BackendUnavailableError) as err:  # where it would write: the models directory
        fetch_model("tiny")
    assert str(tmp_path / "sam2.1_hiera_tiny.pt") in err.value.hint


def test_the_segmenter_uses_the_found_checkpoint(tiny_ckpt, monkeypatch):
    from remote_samsing.segmenters.sam2 import CHECKPOINT_ENV

    monkeypatch.setenv(CHECKPOINT_ENV, str(tiny_ckpt))
    seg = SAM2Segmenter(device="cpu", verify_checkpoint=False)
    assert seg.checkpoint == tiny_ckpt.absolute() and seg.checkpoint_source == f"${CHECKPOINT_ENV}"
    assert seg.describe()["checkpoint_source"] == f"${CHECKPOINT_ENV}"
    assert SAM2Segmenter(checkpoint=tiny_ckpt, verify_checkpoint=False).checkpoint_source == "parameter"


def test_an_unknown_parameter_names_every_valid_one():
    with pytest.raises(ConfigError, match="unknown parameter.*: pointz") as exc:
        SAM2Segmenter(pointz=3, random_weights=True)
    for name in ("checkpoint", "model_cfg", "image_size", "device", "points_per_side", "max_passes"):
        assert name in exc.value.hint


# ---------------------------------------------------------------------------
# unreadable checkpoints: one CheckpointError each, naming the file and what is wrong
# ---------------------------------------------------------------------------
def _one_line(err, path):
    text = Exception.__str__(err.value)
    assert "\n" not in text and f"`{path}`" in text and err.value.hint
    return text


@pytest.mark.parametrize("content, says", [
    (b"hello world\n", "is a text file, not a PyTorch checkpoint (it begins 'hello world')"),
    (b"<!DOCTYPE html><html><body>403 Forbidden</body></html>", "is an HTML page"),
    (b"version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 1\n", "is a Git LFS pointer"),
    (b"", "is empty (0 bytes)"),
    (bytes(range(256)) * 4, "is not a PyTorch checkpoint (neither a zip archive nor a pickle"),
])
def test_a_file_that_is_no_checkpoint_is_named_with_what_it_is(tmp_path, content, says):
    bad = tmp_path / "sam2.1_hiera_tiny.pt"
    bad.write_bytes(content)
    with pytest.raises(CheckpointError) as err:
        SAM2Segmenter(checkpoint=bad, verify_checkpoint=False)  # told before any torch.load
    assert says in _one_line(err, bad)


def test_a_truncated_checkpoint_says_so(tiny_ckpt, tmp_path):
    cut = tmp_path / "sam2.1_hiera_tiny.pt"
    cut.write_bytes(tiny_ckpt.read_bytes()[:5_000_000])
    with pytest.raises(CheckpointError) as err:
        SAM2Segmenter(checkpoint=cut)
    assert "is truncated or damaged" in _one_line(err, cut) and "5,000,000 bytes" in str(err.value)


def test_what_torch_load_refuses_is_one_whole_sentence(tmp_path):
    torch = pytest.importorskip("torch")
    pickled_model = tmp_path / "sam2.1_hiera_tiny.pt"
    torch.save(torch.nn.Linear(2, 2), pickled_model)  # a whole module, not a state dict
    with pytest.raises(CheckpointError) as err:
        sam2_mod.check_checkpoint(pickled_model)
    text = _one_line(err, pickled_model)
    assert "cannot be read by torch.load: UnpicklingError: the weights-only unpickler refused it" in text
    assert text.endswith("was not an allowed global by default.")  # a sentence, not a cut
    listed = tmp_path / "sam2_hiera_tiny.pt"
    torch.save([1, 2], listed)
    with pytest.raises(CheckpointError, match="holds no SAM2 state dict .*found list"):
        sam2_mod.check_checkpoint(listed)


def test_a_state_dict_of_other_shapes_is_refused(tiny_ckpt, tmp_path):
    torch = pytest.importorskip("torch")
    names = list(torch.load(tiny_ckpt, map_location="cpu", weights_only=True, mmap=True)["model"])
    other = tmp_path / "sam2.1_hiera_tiny.pt"
    torch.save({"model": {k: torch.zeros(1, 1, 1, 1, 1) for k in names}}, other)  # every name right, every shape wrong
    with pytest.raises(CheckpointError) as err:
        sam2_mod.check_checkpoint(other)
    text = _one_line(err, other)
    assert "does not match the model config `configs/sam2.1/sam2.1_hiera_t.yaml`" in text
    assert f"{len(names)} tensors of another shape" in text


def test_check_checkpoint_reports_what_it_checked(tiny_ckpt, tmp_path, monkeypatch):
    facts = sam2_mod.check_checkpoint(tiny_ckpt)
    assert facts["model_cfg"] == "configs/sam2.1/sam2.1_hiera_t.yaml" and facts["inferred"]
    assert facts["tensors"] > 400 and 38e6 < facts["parameters"] < 40e6 and facts["bytes"] == tiny_ckpt.stat().st_size
    monkeypatch.setenv(sam2_mod.CHECKPOINT_ENV, str(tmp_path / "gone.pt"))
    with pytest.raises(CheckpointError) as err:
        sam2_mod.check_checkpoint()
    assert "(from $REMOTE_SAMSING_CHECKPOINT) does not exist" in _one_line(err, tmp_path / "gone.pt")


# ---------------------------------------------------------------------------
# progress inside a block: a line per pass, and on a CPU an estimate naming the preview settings
# ---------------------------------------------------------------------------
def test_each_pass_of_a_block_is_one_line(crop, caplog):
    pytest.importorskip("sam2")
    seg = SAM2Segmenter(random_weights=True, seed=0, **FAST)
    blk = {**info(crop.shape[:2], offset=(0, 256)), "block_id": (0, 1)}
    with caplog.at_level("INFO", logger="remote_samsing.progress"):
        seg.segment(crop, block_info=blk)
    stats = seg.last_stats["pass_stats"]
    assert len(caplog.messages) == len(stats) == 2
    for i, (line, s) in enumerate(zip(caplog.messages, stats)):
        assert line.startswith(f"block (0, 1) pass {i + 1}: {s['n_prompts']} prompts, {s['accepted']} mask")
        assert f"coverage {s['coverage']:.1f} %" in line and line.endswith(" s")


def test_the_preview_settings_are_named_where_they_are_faster():
    pytest.importorskip("sam2")
    flags = SAM2Segmenter(random_weights=True, model_cfg="tiny", device="cpu")._preview_flags()
    assert flags == "--segmenter-param image_size=256 --segmenter-param points_per_side=16"
    assert set(sam2_mod.PREVIEW_PARAMS) <= set(SAM2Segmenter.__init__.__code__.co_varnames) | set(
        sam2_mod.MultipassConfig.__dataclass_fields__)  # real parameter names
    assert SAM2Segmenter(random_weights=True, model_cfg="tiny", image_size=512,
                         points_per_side=16)._preview_flags() == "--segmenter-param image_size=256"
    assert SAM2Segmenter(random_weights=True, model_cfg="tiny", image_size=256, points_per_side=8)._preview_flags() == ""


# ---------------------------------------------------------------------------
# a file that is no SAM2 checkpoint, and one the models directory gave
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
