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
