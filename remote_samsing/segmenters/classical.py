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

from ..exceptions import ConfigError

__all__ = ["FelzenszwalbSegmenter", "SLICSegmenter"]


def _positive(name: str, value, *, integer: bool = False, allow_zero: bool = False):
    ok_type = (int, np.integer) if integer else (int, float, np.integer, np.floating)
    if isinstance(value, bool) or not isinstance(value, ok_type):
        raise ConfigError(f"`{name}` must be a {'integer' if integer else 'number'}, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"`{name}` must be {'>= 0' if allow_zero else '> 0'}, got {value}")


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
        _positive("scale", self.scale)
        _positive("sigma", self.sigma, allow_zero=True)
        _positive("min_size", self.min_size, integer=True, allow_zero=True)

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
        _positive("n_segments", self.n_segments, integer=True)
        _positive("compactness", self.compactness)
        _positive("sigma", self.sigma, allow_zero=True)

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
