"""``MergeConfig`` from user parameters: unknown keys, wrong types, keys only the lazy graph takes, and the
command line's one-line refusal before a run starts."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from remote_samsing.cli import cli
from remote_samsing.exceptions import ConfigError
from remote_samsing.merge import MergeConfig


def _error_and_hint(r) -> tuple[str, str]:
    """The CLI's two lines of an error, after its exit status 2 is checked."""
    assert r.exit_code == 2, r.output
    lines = r.output.splitlines()
    assert len(lines) == 2 and lines[0].startswith("error: ") and lines[1].startswith("hint: "), r.output
    return lines[0], lines[1]


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
