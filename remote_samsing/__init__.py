"""remote_samsing: segment everything in billion-pixel remote-sensing mosaics.

Multi-pass SAM2 (arXiv 2605.00256; reference code https://github.com/osmarluiz/sam-mosaic)
on overlapping blocks of a Zarr/GeoTIFF mosaic, executed with Dask, with a
numba seam merge. Importing this package imports neither torch nor sam2.
"""

from .exceptions import RemoteSamsingError
from .io import open_mosaic, to_zarr
from .pipeline import run, segment
from .segmenters import available_segmenters, get_segmenter, register_segmenter
from .tiling import TilingPlan

__version__ = "0.1.0"

# Exported lazily (PEP 562) so that `import remote_samsing` stays light: the
# module is imported on first attribute access.
_LAZY = {
    "evaluate": ".metrics",
    "write_report": ".metrics",
    "to_polygons": ".vectorize",
    "vectorize_labels": ".vectorize",
}

__all__ = [
    "RemoteSamsingError",
    "TilingPlan",
    "available_segmenters",
    "evaluate",
    "get_segmenter",
    "open_mosaic",
    "register_segmenter",
    "run",
    "segment",
    "to_polygons",
    "to_zarr",
    "vectorize_labels",
    "write_report",
]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later accesses skip __getattr__
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
