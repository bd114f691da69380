"""Segmenters: the per-block backends behind one contract (see ``_base``)."""

from ._base import (
    Segmenter,
    available_segmenters,
    get_segmenter,
    register_segmenter,
    validate_segmenter,
)

__all__ = [
    "Segmenter",
    "available_segmenters",
    "get_segmenter",
    "register_segmenter",
    "validate_segmenter",
]
