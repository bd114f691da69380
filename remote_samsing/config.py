"""Run configuration: one frozen dataclass whose keys are the CLI flags.

``remote-samsing segment --tile-size 500`` , ``segment(..., tile_size=500)``
and a YAML file with ``tile_size: 500`` are the same setting. Unknown keys
and wrong types are errors, never ignored.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .exceptions import ConfigError
from .tiling import validate_tiling

__all__ = ["RunConfig", "MERGE_STRATEGIES", "load_yaml_config"]

MERGE_STRATEGIES = ("overlap", "best_match", "mutual_best", "min_contact", "none")


def _check_type(name: str, value: Any, types: tuple, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) and bool not in types:
        raise ConfigError(f"`{name}` must be {' or '.join(t.__name__ for t in types)}, got {value!r}")
    if not isinstance(value, types):
        raise ConfigError(
            f"`{name}` must be {' or '.join(t.__name__ for t in types)}, got {type(value).__name__} {value!r}"
        )


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """Every parameter of a segmentation run.

    Parameters
    ----------
    segmenter : str
        Registered segmenter: ``felzenszwalb``, ``slic`` or ``sam2``.
    segmenter_params : dict
        Keyword arguments of the segmenter (e.g. ``{"scale": 200}``; for
        ``sam2``: ``checkpoint``, ``model_cfg``, ``points_per_side``, ...).
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
        Seam merge strategy: ``overlap`` (default), ``best_match``,
        ``mutual_best``, ``min_contact`` or ``none``.
    merge_params : dict
        Extra merge options (``min_contact_pixels``, ``min_mask_area``, ...).
    retries : int
        Extra attempts for a block whose segmenter raises.
    vectors : bool
        Also write polygons (``segments.parquet``).
    overwrite : bool
        Replace an existing output directory instead of resuming/refusing.
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
    """

    segmenter: str = "felzenszwalb"
    segmenter_params: dict = field(default_factory=dict)
    tile_size: int = 1000
    padding: int = 50
    bands: list | None = None
    nodata: float | None = None
    percentiles: tuple = (2.0, 98.0)
    merge: str = "overlap"
    merge_params: dict = field(default_factory=dict)
    retries: int = 2
    vectors: bool = True
    overwrite: bool = False
    scheduler: str | None = None
    device: str = "auto"
    gpus: list | None = None
    n_workers: int | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        _check_type("segmenter", self.segmenter, (str,))
        _check_type("segmenter_params", self.segmenter_params, (dict,))
        _check_type("tile_size", self.tile_size, (int,))
        _check_type("padding", self.padding, (int,))
        validate_tiling(self.tile_size, self.padding)
        if self.bands is not None:
            _check_type("bands", self.bands, (list, tuple))
            for b in self.bands:
                _check_type("bands[]", b, (int,))
            object.__setattr__(self, "bands", list(self.bands))
        _check_type("nodata", self.nodata, (int, float), optional=True)
        _check_type("percentiles", self.percentiles, (list, tuple))
        if len(self.percentiles) != 2 or not all(
            isinstance(p, (int, float)) and not isinstance(p, bool) for p in self.percentiles
        ):
            raise ConfigError(f"`percentiles` must be two numbers, got {self.percentiles!r}")
        lo, hi = self.percentiles
        if not 0 <= lo < hi <= 100:
            raise ConfigError(f"`percentiles` must satisfy 0 <= low < high <= 100, got {self.percentiles!r}")
        object.__setattr__(self, "percentiles", (float(lo), float(hi)))
        _check_type("merge", self.merge, (str,))
        if self.merge not in MERGE_STRATEGIES:
            raise ConfigError(
                f"unknown merge strategy `{self.merge}`", hint=f"choose one of {', '.join(MERGE_STRATEGIES)}"
            )
        _check_type("merge_params", self.merge_params, (dict,))
        _check_type("retries", self.retries, (int,))
        if self.retries < 0:
            raise ConfigError(f"`retries` must be >= 0, got {self.retries}")
        for name in ("vectors", "overwrite", "progress"):
            _check_type(name, getattr(self, name), (bool,))
        _check_type("scheduler", self.scheduler, (str,), optional=True)
        _check_type("device", self.device, (str,))
        if self.device not in ("auto", "cuda", "cpu"):
            raise ConfigError(f"`device` must be auto, cuda or cpu, got {self.device!r}")
        if self.gpus is not None:
            _check_type("gpus", self.gpus, (list, tuple))
            for g in self.gpus:
                _check_type("gpus[]", g, (int,))
            object.__setattr__(self, "gpus", list(self.gpus))
        _check_type("n_workers", self.n_workers, (int,), optional=True)
        if self.n_workers is not None and self.n_workers < 1:
            raise ConfigError(f"`n_workers` must be >= 1, got {self.n_workers}")

    # ------------------------------------------------------------------
    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_mapping(cls, mapping: dict) -> "RunConfig":
        """Build from a mapping, rejecting unknown keys."""
        if not isinstance(mapping, dict):
            raise ConfigError(f"configuration must be a mapping of keys to values, got {type(mapping).__name__}")
        unknown = sorted(set(mapping) - set(cls.keys()))
        if unknown:
            raise ConfigError(
                f"unknown configuration key(s): {', '.join(unknown)}",
                hint=f"valid keys: {', '.join(cls.keys())}",
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
        return d

    def replace(self, **changes) -> "RunConfig":
        return dataclasses.replace(self, **changes)


def load_yaml_config(path: str | os.PathLike) -> dict:
    """Read a YAML configuration file into a dict (keys checked by RunConfig)."""
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
    return data
