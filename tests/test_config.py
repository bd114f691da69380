"""RunConfig: invalid parameters and configuration keys are refused when the config is made."""

import pytest

from remote_samsing.config import RunConfig
from remote_samsing.exceptions import ConfigError


def test_invalid_run_config_is_refused():
    with pytest.raises(ConfigError):
        RunConfig(tile_size=0)
    with pytest.raises(ConfigError):
        RunConfig(tile_size=100, padding=50)
    with pytest.raises(ConfigError):
        RunConfig(padding=-1)
    with pytest.raises(ConfigError, match="unknown configuration key"):
        RunConfig.from_mapping({"tile_sise": 100})
    with pytest.raises(ConfigError, match="tile_size"):
        RunConfig.from_mapping({"tile_size": "100"})


def test_checkpoint_and_model_cfg_are_keys_that_set_segmenter_params(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("checkpoint: models/sam2.1_hiera_tiny.pt\nmodel_cfg: tiny\nsegmenter_params:\n  seed: 3\n")
    cfg = RunConfig.from_yaml(config)
    assert cfg.segmenter_params == {"seed": 3, "checkpoint": "models/sam2.1_hiera_tiny.pt", "model_cfg": "tiny"}
    assert RunConfig.from_mapping({"checkpoint": "a.pt"}).segmenter_params == {"checkpoint": "a.pt"}
    with pytest.raises(ConfigError, match="`checkpoint` is given twice"):
        RunConfig.from_mapping({"checkpoint": "a.pt", "segmenter_params": {"checkpoint": "b.pt"}})
    with pytest.raises(ConfigError, match="unknown configuration key") as exc:
        RunConfig.from_mapping({"checkpiont": "a.pt"})
    assert exc.value.hint.endswith("resampling, checkpoint, model_cfg")


def test_configuration_reference_lists_every_merge_strategy():
    import re
    from pathlib import Path

    from remote_samsing.merge import STRATEGIES

    page = (Path(__file__).resolve().parents[1] / "docs" / "configuration.md").read_text()
    row = re.search(r"^\| `merge` \|.*$", page, re.M).group(0)
    assert [s for s in STRATEGIES if f"`{s}`" not in row] == []
