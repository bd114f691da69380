"""The segmenter registry and the resources segmenters ask for."""

import pytest

from remote_samsing.exceptions import ConfigError
from remote_samsing.segmenters import DEVICES, available_segmenters, get_segmenter, segment_resources


def test_segment_resources():
    class GPUSeg:
        resources = {"GPU": 1}

        def segment(self, block, *, block_info):  # pragma: no cover - never called
            return block[..., 0]

    assert segment_resources("sam2") == {"GPU": 1}
    assert segment_resources("felzenszwalb") is None
    assert segment_resources(GPUSeg()) == {"GPU": 1}
    assert segment_resources(object()) is None


def test_registry_names_the_built_in_segmenters():
    assert {"felzenszwalb", "slic", "sam2"} <= set(available_segmenters())
    assert DEVICES == ("auto", "cuda", "cpu")
    with pytest.raises(ConfigError, match="nope"):
        get_segmenter("nope")
