"""The segmenter contract and the registry of built-in segmenters.

Contract (outside checks rely on it): a segmenter is any object with a method
``segment(block, *, block_info)`` where

* ``block`` is a ``numpy.ndarray`` of shape (y, x, 3), dtype uint8: the padded
  window, already radiometrically stretched for the whole mosaic;
* ``block_info`` is a mapping with at least ``"window"``: ``(y_start, y_stop,
  x_start, x_stop)``, the padded window's position in mosaic pixels, and
  ``"valid"``: a boolean (y, x) mask, False on nodata/alpha/NaN pixels.

It returns a (y, x) integer array of local labels, 0 = unsegmented. Pixels
outside ``valid`` are zeroed by the pipeline whatever the segmenter returns.

Built-ins are looked up by name (``get_segmenter("felzenszwalb", scale=100)``);
heavy backends (torch, sam2) are imported only when their segmenter is built,
in the spirit of xarray's backend entrypoints
(https://github.com/pydata/xarray/blob/main/xarray/backends/common.py).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..exceptions import ConfigError

__all__ = ["Segmenter", "register_segmenter", "get_segmenter", "available_segmenters", "validate_segmenter",
           "DEVICES", "GPU_RESOURCES", "segment_resources"]

#: Where segmenters run: the values of ``device`` (RunConfig, ClusterConfig, ``--device``).
DEVICES = ("auto", "cuda", "cpu")
#: Resources one GPU segmentation task asks for (and one GPU worker offers).
GPU_RESOURCES: Mapping[str, float] = {"GPU": 1}
# registry names of segmenters whose tasks need GPU_RESOURCES (known before building them)
_GPU_SEGMENTERS = frozenset({"sam2"})


@runtime_checkable
class Segmenter(Protocol):
    """Anything with ``segment(block, *, block_info) -> labels``."""

    def segment(self, block: np.ndarray, *, block_info: Mapping[str, Any]) -> np.ndarray:
        ...


# name -> (import path "module:factory"); resolved lazily so that registering
# "sam2" imports neither torch nor sam2.
_REGISTRY: dict[str, str | Callable[..., Segmenter]] = {
    "felzenszwalb": "remote_samsing.segmenters.classical:FelzenszwalbSegmenter",
    "slic": "remote_samsing.segmenters.classical:SLICSegmenter",
    "sam2": "remote_samsing.segmenters.sam2:SAM2Segmenter",
}


#: Environment variable of ``name=module:Factory`` entries, comma-separated, that every
#: process adds to its registry: how a process started by a test (the CLI in a subprocess,
#: a spawned worker) finds the test segmenters by name. ``remote_samsing.testing`` sets it;
#: the entries stay import paths, so this module never imports that one.
_ENV_SEGMENTERS = "REMOTE_SAMSING_TEST_SEGMENTERS"


def _registry() -> dict[str, str | Callable[..., Segmenter]]:
    value = os.environ.get(_ENV_SEGMENTERS, "")
    for entry in filter(None, (e.strip() for e in value.split(","))):
        name, sep, factory = entry.partition("=")
        if not (sep and name and ":" in factory):
            raise ConfigError(f"`{_ENV_SEGMENTERS}` entry {entry!r} is not `name=module:Factory`")
        _REGISTRY.setdefault(name, factory)
    return _REGISTRY


def register_segmenter(name: str, factory: str | Callable[..., Segmenter]) -> None:
    """Register a segmenter factory under ``name``.

    Parameters
    ----------
    name : str
        Registry key used by ``segment(segmenter=name)`` and ``--segmenter``.
    factory : str or callable
        A callable returning a segmenter from keyword arguments, or an import
        path ``"package.module:Factory"`` resolved on first use.
    """
    if not isinstance(name, str) or not name:
        raise ConfigError(f"segmenter name must be a non-empty string, got {name!r}")
    _REGISTRY[name] = factory


def available_segmenters() -> list[str]:
    """Names of all registered segmenters, sorted."""
    return sorted(_registry())


def _resolve(name: str) -> Callable[..., Segmenter]:
    registry = _registry()
    if name not in registry:
        raise ConfigError(
            f"unknown segmenter `{name}`",
            hint=f"choose one of {', '.join(available_segmenters())}",
        )
    factory = registry[name]
    if isinstance(factory, str):
        import importlib

        module_name, _, attr = factory.partition(":")
        factory = getattr(importlib.import_module(module_name), attr)
    return factory


def get_segmenter(name: str, **params: Any) -> Segmenter:
    """Build a registered segmenter by name.

    Parameters
    ----------
    name : str
        One of :func:`available_segmenters`.
    **params
        Keyword arguments of that segmenter (validated by it).

    Returns
    -------
    Segmenter

    Examples
    --------
    >>> seg = get_segmenter("felzenszwalb", scale=50)
    >>> type(seg).__name__
    'FelzenszwalbSegmenter'
    """
    factory = _resolve(name)
    _check_keywords(name, factory, params)
    try:
        return factory(**params)
    except TypeError as exc:  # a keyword the signature check cannot see (a factory taking **kwargs)
        raise ConfigError(f"bad parameters for segmenter `{name}`: {exc}") from None


#: SAM2's parameters that name its files (flags and configuration keys of their own): given to another
#: segmenter, most likely a forgotten --segmenter sam2.
SAM2_FILE_PARAMS = ("checkpoint", "model_cfg")


def _check_keywords(name: str, factory: Callable[..., Segmenter], params: dict) -> None:
    """Refuse keywords ``factory`` does not take, naming those it does; one taking ``**kwargs`` checks its own."""
    import inspect

    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # a builtin or C callable without a signature
        return
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values()):
        return
    valid = sorted(n for n, p in signature.parameters.items() if p.kind in kinds)
    unknown = sorted(set(params) - set(valid))
    sam2_only = [k for k in unknown if k in SAM2_FILE_PARAMS]
    if sam2_only and sam2_only == unknown:  # --checkpoint/--model-cfg with another segmenter
        said = " and ".join(f"`{k}` (--{k.replace('_', '-')})" for k in sam2_only)
        raise ConfigError(f"{said} {'is' if len(sam2_only) == 1 else 'are'} for segmenter sam2, not `{name}`",
                          hint="drop it, or pass --segmenter sam2" if len(sam2_only) == 1
                          else "drop them, or pass --segmenter sam2")
    if unknown:
        raise ConfigError(f"unknown parameter(s) for segmenter `{name}`: {', '.join(unknown)}",
                          hint=f"valid parameters: {', '.join(valid) or '(none)'}")


def validate_segmenter(obj: Any) -> Segmenter:
    """Check that ``obj`` satisfies the segmenter contract, or raise ConfigError."""
    if not callable(getattr(obj, "segment", None)):
        raise ConfigError(
            f"segmenter {obj!r} has no `segment(block, *, block_info)` method",
            hint="pass a registered name such as 'felzenszwalb' or an object with that method",
        )
    return obj


def segment_resources(segmenter: Any) -> dict[str, float] | None:
    """Worker resources the segmentation tasks of ``segmenter`` ask for.

    Parameters
    ----------
    segmenter : str or object
        A registry name, or a segmenter object; objects declare their needs
        with a ``resources`` attribute (``SAM2Segmenter.resources == {"GPU": 1}``).

    Returns
    -------
    dict or None
        ``{"GPU": 1}`` for GPU segmenters, None for those that run anywhere.

    Examples
    --------
    >>> segment_resources("sam2"), segment_resources("felzenszwalb")
    ({'GPU': 1}, None)
    """
    if isinstance(segmenter, str):
        return dict(GPU_RESOURCES) if segmenter in _GPU_SEGMENTERS else None
    req = getattr(segmenter, "resources", None)
    return dict(req) if req else None
