"""remote_samsing: segment everything in billion-pixel remote-sensing mosaics.

Multi-pass SAM2 (arXiv 2605.00256; reference code https://github.com/osmarluiz/sam-mosaic)
on overlapping blocks of a Zarr/GeoTIFF mosaic, executed with Dask, with a
numba seam merge. Importing this package imports neither torch nor sam2.
"""

from .exceptions import RemoteSamsingError
from .io import open_labels, open_mosaic, to_zarr
from .metrics import evaluate, write_report
from .pipeline import inspect_mosaic, run, segment
from .segmenters import available_segmenters, get_segmenter, register_segmenter
from .tiling import TilingPlan
from .vectorize import to_polygons, vectorize_labels

__version__ = "0.1.0"

__all__ = [
    "RemoteSamsingError",
    "TilingPlan",
    "available_segmenters",
    "evaluate",
    "get_segmenter",
    "inspect_mosaic",
    "open_labels",
    "open_mosaic",
    "register_segmenter",
    "run",
    "segment",
    "to_polygons",
    "to_zarr",
    "vectorize_labels",
    "write_report",
]
