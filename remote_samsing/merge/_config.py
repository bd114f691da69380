"""The merge's configuration and its lazy result."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from .._validate import check_bool, check_choice, check_int, check_number
from ..exceptions import ConfigError

__all__ = ["MergeConfig", "MergeResult", "STRATEGIES", "OVERLAP_STRATEGIES", "REFERENCE_STRATEGIES",
           "DIAGNOSTIC_CODES"]

#: Accepted values of ``MergeConfig.strategy``.
STRATEGIES = ("overlap", "iou", "best_match", "mutual_best", "min_contact", "none")
#: The strategies that compare the two blocks' views of their shared region.
OVERLAP_STRATEGIES = ("overlap", "iou")
#: The strategies that reproduce osmarluiz/sam-mosaic's seam merge exactly.
REFERENCE_STRATEGIES = ("best_match", "mutual_best", "min_contact")
#: What each nonzero code of the seam-diagnostics raster (``MergeResult.diagnostics``) marks; 0 is untouched.
DIAGNOSTIC_CODES = {
    1: "fragment linked across a seam",
    2: "absorbed into its encloser",
    3: "removed as a small island",
    4: "link refused (exclusion or disagreement)",
    5: "part moved by the split",
}


@dataclass(frozen=True, kw_only=True)
class MergeConfig:
    """How fragments are linked across seams and how the result is cleaned.

    Parameters
    ----------
    strategy : str
        ``"overlap"`` (default), ``"iou"``, ``"best_match"``, ``"mutual_best"``,
        ``"min_contact"`` or ``"none"``; see the module docstring.
    min_contact_pixels : int
        ``"min_contact"`` only: least contact (pixels along one seam line)
        that links two labels. The reference's default is 20.
    min_iou : float
        ``"overlap"`` and ``"iou"``: a candidate pair links when its IoU inside the
        shared region is strictly above this, in [0.5, 1). Values >= 0.5
        guarantee at most one partner per fragment and face.
    jitter : int
        ``"overlap"`` only: how far (px) two windows' boundaries of one object
        may differ and still count as the same boundary. Where a linked piece
        holds a region that the other window gives to another label and that
        is thicker than ``2 * jitter`` px (or is a whole piece of at least
        ``(2 * jitter + 1)**2`` px where that window's view ends), the windows
        disagree about which objects belong together, and the link is refused.
    absorb_enclosed : bool
        Absorb small enclosed objects into their encloser (``"overlap"``, ``"iou"``).
    merge_enclosed_max_area : int
        Largest object (pixels) that can be absorbed.
    remove_small : bool
        Remove foreground islands smaller than ``min_mask_area``.
    min_mask_area : int
        Smallest island (pixels, 4-connected, across seams) that is kept.
    split_parts : bool
        ``"overlap"`` and ``"iou"``: resolve labels with several 4-connected
        parts after the merge, so every segment is one 4-connected region
        (one polygon): the largest part keeps the label, other parts of at least ``min_mask_area`` pixels become labels
        of their own, smaller ones join the neighbour they share the most
        border with (or 0); with ``remove_small`` off every part becomes a
        label of its own.
    diagnostics : bool
        Also build the seam-diagnostics raster (``MergeResult.diagnostics``):
        a lazy result only, ``build_graph(...).diagnostics`` in Python; a run
        that writes OUTDIR (``segment``, ``run``) writes no such raster and
        refuses the key.
    seam_recut : bool or None
        ``"overlap"`` and ``"iou"``: where two windows disagree, cut each
        seam along the views' own segment boundaries before merging, so the
        tile grid does not show; where they agree nothing changes (and
        nothing is recomputed). None (default): on for ``"overlap"``, off
        for the others; True for ``"iou"`` too.
    """

    strategy: str = "overlap"
    min_contact_pixels: int = 20
    min_iou: float = 0.5
    jitter: int = 2
    absorb_enclosed: bool = True
    merge_enclosed_max_area: int = 500
    remove_small: bool = True
    min_mask_area: int = 100
    split_parts: bool = True
    diagnostics: bool = False
    seam_recut: bool | None = None

    def __post_init__(self) -> None:
        check_choice("strategy", self.strategy, STRATEGIES, what="merge strategy")
        check_int("min_contact_pixels", self.min_contact_pixels, minimum=1)
        check_int("merge_enclosed_max_area", self.merge_enclosed_max_area, minimum=0)
        check_int("min_mask_area", self.min_mask_area, minimum=0)
        check_int("jitter", self.jitter, minimum=0)
        check_number("min_iou", self.min_iou)  # the type first: the hint below is about the range only
        check_number("min_iou", self.min_iou, minimum=0.5, maximum=1, open_max=True,
                     hint="below 0.5 one fragment could link several partners on one face")
        for name in ("absorb_enclosed", "remove_small", "split_parts", "diagnostics"):
            check_bool(name, getattr(self, name))
        if self.seam_recut is not None:
            check_bool("seam_recut", self.seam_recut)
        if self.seam_recut and self.strategy not in OVERLAP_STRATEGIES:
            raise ConfigError(f"seam_recut needs an overlap strategy ({', '.join(OVERLAP_STRATEGIES)}), "
                              f"got {self.strategy!r}", hint="drop seam_recut or choose merge overlap")

    @classmethod
    def from_params(cls, *, strategy: str = "overlap", params: Mapping[str, Any] | None = None,
                    stored: bool = False) -> MergeConfig:
        """The config of a run's ``merge`` strategy and its ``merge_params`` (user input).

        Parameters
        ----------
        strategy : str
            The run's ``merge`` key (``--merge``).
        params : mapping, optional
            The run's ``merge_params`` (``--merge-param KEY=VALUE``).
        stored : bool
            The run writes OUTDIR, which holds no diagnostics raster: ``diagnostics`` is refused.

        Raises
        ------
        ConfigError
            A key that is no parameter (the hint lists the valid ones), or a value of the wrong type or
            range (naming the key).

        Examples
        --------
        >>> MergeConfig.from_params(strategy="iou", params={"min_iou": 0.6}).min_iou
        0.6
        """
        if params is None:
            params = {}
        if not isinstance(params, Mapping):
            raise ConfigError(f"`merge_params` must be a mapping of parameter names to values, got "
                              f"{type(params).__name__} {params!r}")
        valid = [f.name for f in fields(cls) if f.name != "strategy" and not (stored and f.name == "diagnostics")]
        if "strategy" in params:
            raise ConfigError("`strategy` is not a merge parameter: it is the run's `merge` key",
                              hint="choose it with --merge (the `merge` key in YAML and Python)")
        if stored and "diagnostics" in params:
            raise ConfigError("merge parameter `diagnostics` has no effect on a run that writes OUTDIR: it "
                              "writes no diagnostics raster",
                              hint="drop it; the raster is lazy only: remote_samsing.pipeline.build_graph(..., "
                                   "merge_params={'diagnostics': True}).diagnostics")
        unknown = sorted(str(k) for k in params if k not in valid)
        if unknown:
            raise ConfigError(f"unknown merge parameter(s): {', '.join(unknown)}",
                              hint=f"valid merge parameters: {', '.join(valid)}")
        return cls(strategy=strategy, **params)

    @property
    def recuts(self) -> bool:
        """The seams are recut before the merge (``seam_recut``, or by default for ``"overlap"``)."""
        return self.strategy == "overlap" if self.seam_recut is None else bool(self.seam_recut)

    @property
    def islands(self) -> bool:
        return bool(self.remove_small) and self.strategy != "none"

    @property
    def absorb(self) -> bool:
        return bool(self.absorb_enclosed) and self.strategy in OVERLAP_STRATEGIES

    @property
    def splits(self) -> bool:
        """Labels with several 4-connected parts are split after the merge (not for the reference's
        rules, which stay exactly the reference's, nor for ``"none"``)."""
        return bool(self.split_parts) and self.strategy in OVERLAP_STRATEGIES

    @property
    def split_min_area(self) -> int:
        """Parts below this size join a neighbour in the split; without the island rule (``remove_small``
        off) none does: every part becomes a label of its own."""
        return int(self.min_mask_area) if self.remove_small else 0

    @property
    def islands_first(self) -> bool:
        """The reference strategies remove small islands before they merge (so their faces wait for it)."""
        return bool(self.remove_small) and self.strategy in REFERENCE_STRATEGIES

    @property
    def overlapping(self) -> bool:
        """The strategy compares the two blocks' views of their shared region."""
        return self.strategy in OVERLAP_STRATEGIES


@dataclass(frozen=True)
class MergeResult:
    """Lazy outputs of :func:`merge_labels`.

    Attributes
    ----------
    labels : dask.array.Array
        (H, W) uint32 labels 1..N (0 = none), chunked like ``plan.chunks``.
    stats : dask.delayed.Delayed
        Computes to a dict: ``strategy``, ``faces`` (one entry per face with
        ``blocks``, ``kind``, ``candidates``, ``links``, ``refused``, and the
        strategy's own counts: see :mod:`remote_samsing.merge`) and ``totals``.
    diagnostics : dask.array.Array or None
        (H, W) uint8 codes, 0 untouched, the others named in
        :data:`DIAGNOSTIC_CODES`. A link is refused (4) by an exclusion or,
        with ``"overlap"``, when the two windows disagreed (the split one of
        them saw wins) or grouped objects differently; a part the split
        moved (5) became a label of its own or joined a neighbour.
    """

    labels: Any
    stats: Any
    diagnostics: Any = None
