"""The paper's classical baselines, from scikit-image.

Felzenszwalb (σ = 0.5, min_size = 50, scale configurable) and SLIC
(compactness 10, ``n_segments`` per tile configurable), as in the paper's
Table 7 (shared/design/reference.md §2, "Baselines"). They are deterministic,
which also makes them the pipeline's test segmenters on real imagery. They are
baselines, not SAM2: never report their numbers as SAM2 quality.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._validate import check_int, check_number

__all__ = ["FelzenszwalbSegmenter", "SLICSegmenter"]


@dataclass(frozen=True, kw_only=True)
class FelzenszwalbSegmenter:
    """Felzenszwalb–Huttenlocher graph segmentation per block.

    Parameters
    ----------
    scale : float
        Higher means larger segments (the paper calibrates 1569–5739 per scene).
    sigma : float
        Gaussian pre-smoothing (paper: 0.5).
    min_size : int
        Minimum component size, enforced in post-processing (paper: 50).

    Examples
    --------
    >>> import numpy as np
    >>> img = np.zeros((20, 20, 3), np.uint8); img[:, 10:] = 255
    >>> seg = FelzenszwalbSegmenter(scale=100, min_size=5)
    >>> labels = seg.segment(img, block_info={"window": (0, 20, 0, 20), "valid": np.ones((20, 20), bool)})
    >>> labels.dtype.name, int(labels.min()) >= 1
    ('uint32', True)
    """

    scale: float = 100.0
    sigma: float = 0.5
    min_size: int = 50

    def __post_init__(self) -> None:
        check_number("scale", self.scale, minimum=0, open_min=True)
        check_number("sigma", self.sigma, minimum=0)
        check_int("min_size", self.min_size, minimum=0)

    def segment(self, block: np.ndarray, *, block_info: Mapping[str, Any]) -> np.ndarray:
        from skimage.segmentation import felzenszwalb

        labels = felzenszwalb(block, scale=self.scale, sigma=self.sigma, min_size=self.min_size)
        return (labels + 1).astype(np.uint32)  # skimage starts at 0; 0 means "none" here


@dataclass(frozen=True, kw_only=True)
class SLICSegmenter:
    """SLIC superpixels per block (paper: compactness 10, start_label 1).

    Parameters
    ----------
    n_segments : int
        Approximate number of superpixels per padded block.
    compactness : float
        Colour/space trade-off (paper: 10).
    sigma : float
        Gaussian pre-smoothing (skimage default 0).
    """

    n_segments: int = 100
    compactness: float = 10.0
    sigma: float = 0.0

    def __post_init__(self) -> None:
        check_int("n_segments", self.n_segments, minimum=1)
        check_number("compactness", self.compactness, minimum=0, open_min=True)
        check_number("sigma", self.sigma, minimum=0)

    def segment(self, block: np.ndarray, *, block_info: Mapping[str, Any]) -> np.ndarray:
        from skimage.segmentation import slic

        valid = np.asarray(block_info.get("valid", np.ones(block.shape[:2], bool)))
        labels = slic(
            block,
            n_segments=self.n_segments,
            compactness=self.compactness,
            sigma=self.sigma,
            start_label=1,
            mask=valid if not valid.all() else None,
        )
        return labels.astype(np.uint32)
