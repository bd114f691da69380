"""Segmenters: the per-block backends behind one contract (see ``_base``)."""

from ._base import (
    DEVICES,
    GPU_RESOURCES,
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
    "Segmenter",
    "available_segmenters",
    "get_segmenter",
    "register_segmenter",
    "segment_resources",
    "validate_segmenter",
]
