"""Segmenters: the per-block backends behind one contract (see ``_base``)."""

from ._base import (
    DEVICES,
    GPU_RESOURCES,
    SAM2_FILE_PARAMS,
    Segmenter,
    available_segmenters,
    get_segmenter,
    register_segmenter,
    segment_resources,
    validate_segmenter,
)

__all__ = [
    "DEVICES",
    "GPU_RESOURCES",
    "SAM2_FILE_PARAMS",
    "Segmenter",
    "available_segmenters",
    "get_segmenter",
    "register_segmenter",
    "segment_resources",
    "validate_segmenter",
]
