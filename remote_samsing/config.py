"""Run configuration: one frozen dataclass whose keys are the CLI flags.

``remote-samsing segment --tile-size 500`` , ``segment(..., tile_size=500)``
and a YAML file with ``tile_size: 500`` are the same setting. The two flags
that set one segmenter parameter, ``--checkpoint`` and ``--model-cfg``, are
mapping keys too (:data:`SEGMENTER_PARAM_KEYS`), moved into
``segmenter_params``. Unknown keys and wrong types are errors, never ignored.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

from ._validate import check_bool, check_choice, check_int, check_type
from .segmenters import DEVICES, SAM2_FILE_PARAMS
from .exceptions import ConfigError
from .io import check_percentiles
from .merge import STRATEGIES
from .sources import DEFAULT_RESAMPLING, check_resampling, check_resolution
from .tiling import validate_tiling

__all__ = ["RunConfig", "load_yaml_config", "SEGMENTER_PARAM_KEYS"]

#: Keys of a configuration mapping (and CLI flags) that set the segmenter parameter of the same name.
SEGMENTER_PARAM_KEYS = SAM2_FILE_PARAMS


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """Every parameter of a segmentation run.

    Parameters
    ----------
    segmenter : str
        Registered segmenter: ``sam2`` (the default; its checkpoint comes
        from ``segmenter_params["checkpoint"]``, ``$REMOTE_SAMSING_CHECKPOINT``
        or the models directory ``fetch-model`` writes to), or the classical
        baselines ``felzenszwalb`` and ``slic``.
    segmenter_params : dict
        Keyword arguments of the segmenter (e.g. ``{"scale": 200}``; for
        ``sam2``: ``checkpoint``, ``model_cfg``, ``points_per_side``, ...).
        In a YAML file ``checkpoint:`` and ``model_cfg:`` may also stand at
        the top level, as the flags ``--checkpoint`` and ``--model-cfg`` do.
    tile_size : int
        Core tile size T in pixels.
    padding : int
        Context P per side (the ``map_overlap`` depth), ``0 <= P < T/2``.
    bands : list of int, optional
        1-based bands to use as RGB (or one band as grey).
    nodata : float, optional
        Nodata value overriding the file's.
    percentiles : (float, float)
        Global stretch percentiles for non-uint8 input.
    merge : str
        Seam merge strategy (the merge's ``strategy``): ``overlap``
        (default), ``iou``, ``best_match``, ``mutual_best``, ``min_contact``
        or ``none``.
    merge_params : dict
        Extra merge options (``min_contact_pixels``, ``min_mask_area``, ...).
    retries : int
        Extra attempts for a block whose segmenter raises or whose window
        cannot be read.
    skip_failed_blocks : bool
        Leave a block that still fails after its retries unsegmented (0)
        instead of stopping the run: the run completes, says it is partial
        and lists the blocks in ``run.json`` (``failed_blocks``); the same
        command run again tries only those blocks.
    vectors : bool
        Also write polygons (``segments.parquet``).
    overwrite : bool
        Replace the run in the output directory instead of resuming/refusing; a folder
        holding files no run wrote is refused, and nothing in it removed.
    scheduler : str, optional
        Address of an existing Dask scheduler (``tcp://`` or ``tls://``).
    device : str
        ``auto``, ``cuda`` or ``cpu``: where segmenter workers run.
    gpus : list of int, optional
        GPU indices for local CUDA workers.
    n_workers : int, optional
        Local worker processes (default: one per core, or per GPU).
    progress : bool
        Show progress bars.
    recursive : bool
        A folder input includes the rasters of its subfolders.
    asset : str, optional
        The asset of STAC items to read (default: role ``visual``, else the
        only raster asset).
    crs : str, optional
        Target CRS of a mosaic of many files (default: the CRS of the
        largest share of their pixels).
    resolution : float or [float, float], optional
        Target resolution in CRS units (default: the resolution of the
        largest share of pixels in the target CRS).
    resampling : str
        How sources off the target grid are warped onto it: ``bilinear``
        (default; see :mod:`remote_samsing.sources`), ``nearest``,
        ``cubic``, ``cubicspline``, ``lanczos``, ``average``, ``mode``.
    """

    segmenter: str = "sam2"
    segmenter_params: dict = field(default_factory=dict)
    tile_size: int = 1000
    padding: int = 50
    bands: list | None = None
    nodata: float | None = None
    percentiles: tuple = (2.0, 98.0)
    merge: str = "overlap"
    merge_params: dict = field(default_factory=dict)
    retries: int = 2
    skip_failed_blocks: bool = False
    vectors: bool = True
    overwrite: bool = False
    scheduler: str | None = None
    device: str = "auto"
    gpus: list | None = None
    n_workers: int | None = None
    progress: bool = True
    recursive: bool = False
    asset: str | None = None
    crs: str | None = None
    resolution: float | list | None = None
    resampling: str = DEFAULT_RESAMPLING

    def __post_init__(self) -> None:
        check_type("segmenter", self.segmenter, (str,))
        check_type("segmenter_params", self.segmenter_params, (dict,))
        # plain Python ints (YAML and CLI values), then the tiling rules
        check_type("tile_size", self.tile_size, (int,))
        check_type("padding", self.padding, (int,))
        validate_tiling(self.tile_size, self.padding)
        object.__setattr__(self, "bands", _int_list("bands", self.bands))
        check_type("nodata", self.nodata, (int, float), optional=True)
        check_type("percentiles", self.percentiles, (list, tuple))
        object.__setattr__(self, "percentiles", check_percentiles(self.percentiles))
        check_type("merge", self.merge, (str,))
        check_choice("merge", self.merge, STRATEGIES, what="merge strategy")
        check_type("merge_params", self.merge_params, (dict,))
        check_int("retries", self.retries, minimum=0)
        for name in ("vectors", "overwrite", "progress", "skip_failed_blocks"):
            check_bool(name, getattr(self, name))
        check_type("scheduler", self.scheduler, (str,), optional=True)
        check_type("device", self.device, (str,))
        check_choice("device", self.device, DEVICES)
        object.__setattr__(self, "gpus", _int_list("gpus", self.gpus))
        if self.n_workers is not None:
            check_int("n_workers", self.n_workers, minimum=1)
        check_bool("recursive", self.recursive)
        check_type("asset", self.asset, (str,), optional=True)
        check_type("crs", self.crs, (str,), optional=True)
        object.__setattr__(self, "resolution", check_resolution(self.resolution))
        check_resampling(self.resampling)

    # ------------------------------------------------------------------
    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_mapping(cls, mapping: dict) -> "RunConfig":
        """Build from a mapping, rejecting unknown keys; :data:`SEGMENTER_PARAM_KEYS` go into ``segmenter_params``."""
        mapping = fold_segmenter_param_keys(mapping)
        unknown = sorted(set(mapping) - set(cls.keys()))
        if unknown:
            raise ConfigError(
                f"unknown configuration key(s): {', '.join(unknown)}",
                hint=f"valid keys: {', '.join([*cls.keys(), *SEGMENTER_PARAM_KEYS])}",
            )
        return cls(**mapping)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike, **overrides) -> "RunConfig":
        """Load a YAML file; ``overrides`` (e.g. CLI flags given) win."""
        data = load_yaml_config(path)
        data.update({k: v for k, v in overrides.items()})
        return cls.from_mapping(data)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["percentiles"] = list(d["percentiles"])
        if d["resolution"] is not None:
            d["resolution"] = list(d["resolution"])
        return d

    def replace(self, **changes) -> "RunConfig":
        return dataclasses.replace(self, **changes)


def _int_list(name: str, values) -> list | None:
    """``values`` (a list or tuple of plain ints) as a list; None stays None."""
    if values is None:
        return None
    check_type(name, values, (list, tuple))
    for v in values:
        check_type(f"{name}[]", v, (int,))
    return list(values)


def fold_segmenter_param_keys(mapping: dict) -> dict:
    """``mapping`` with its :data:`SEGMENTER_PARAM_KEYS` moved into ``segmenter_params``.

    Examples
    --------
    >>> fold_segmenter_param_keys({"checkpoint": "m.pt", "tile_size": 500})
    {'tile_size': 500, 'segmenter_params': {'checkpoint': 'm.pt'}}
    """
    if not isinstance(mapping, dict):
        raise ConfigError(f"configuration must be a mapping of keys to values, got {type(mapping).__name__}")
    given = {k: mapping[k] for k in SEGMENTER_PARAM_KEYS if k in mapping}
    if not given:
        return mapping
    folded = {k: v for k, v in mapping.items() if k not in given}
    params = folded.get("segmenter_params") or {}
    check_type("segmenter_params", params, (dict,))
    twice = [k for k in given if k in params and params[k] != given[k]]
    if twice:
        raise ConfigError(f"`{twice[0]}` is given twice: {given[twice[0]]!r} and segmenter_params "
                          f"{params[twice[0]]!r}", hint="keep one of them")
    folded["segmenter_params"] = {**params, **{k: os.fspath(v) if isinstance(v, os.PathLike) else v
                                               for k, v in given.items()}}
    return folded


def load_yaml_config(path: str | os.PathLike) -> dict:
    """Read a YAML configuration file into a dict (keys checked by RunConfig; ``checkpoint:`` and
    ``model_cfg:`` moved into ``segmenter_params``)."""
    import yaml

    p = Path(os.fspath(path))
    if not p.exists():
        raise ConfigError(f"config file `{p}` does not exist")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file `{p}` is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file `{p}` must hold a mapping of keys to values")
    return fold_segmenter_param_keys(data)
