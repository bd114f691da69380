"""The tiling plan: one object that knows tile size, padding, chunks and windows.

Every other stage asks the plan where a block sits instead of recomputing
offsets, so edge handling lives in exactly one place. The reference drops the
right/bottom remainder strips and shifts the last row/column of tiles
(shared/design/reference.md §1.3); here the plan covers every pixel exactly
once with *cores* and gives each core a *padded window* clipped to the mosaic:

* chunks along an axis are ``tile_size`` long; a remainder ``r`` becomes its
  own last chunk when ``r >= padding`` and is absorbed into the previous chunk
  otherwise (so no chunk is thinner than the overlap depth, which
  ``dask.array.map_overlap`` requires);
* a mosaic smaller than one tile is a single chunk; along an axis with a
  single chunk there is no overlap (depth 0);
* padded window = core grown by ``padding`` on every side that has a
  neighbour, i.e. exactly what ``map_overlap(boundary="none")`` hands a block.

The plan-as-object idea follows odc-geo's ``GeoboxTiles``
(https://github.com/opendatacube/odc-geo/blob/develop/odc/geo/geobox.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from ._validate import check_int
from .exceptions import ConfigError

__all__ = ["TilingPlan", "Window", "MAX_TILE_SIZE", "block_label_offset", "LOCAL_BITS"]

#: Largest accepted tile size. SAM2 resizes every window to 1024², so tiles far
#: above that only lose detail; the cap also bounds per-block memory.
MAX_TILE_SIZE = 16384

#: Globally unique labels are ``(block_id + 1) << LOCAL_BITS | local``: no
#: sequential offset chain between blocks, every block labels independently.
LOCAL_BITS = 32


def block_label_offset(block_id: int) -> int:
    """Offset that makes a block's local labels globally unique.

    Examples
    --------
    >>> block_label_offset(0) == 1 << 32
    True
    """
    return (int(block_id) + 1) << LOCAL_BITS


@dataclass(frozen=True)
class Window:
    """A half-open pixel window ``[y0, y1) × [x0, x1)`` in mosaic coordinates."""

    y0: int
    y1: int
    x0: int
    x1: int

    @property
    def shape(self) -> tuple[int, int]:
        return (self.y1 - self.y0, self.x1 - self.x0)

    @property
    def slices(self) -> tuple[slice, slice]:
        return (slice(self.y0, self.y1), slice(self.x0, self.x1))

    def as_tuple(self) -> tuple[int, int, int, int]:
        return (self.y0, self.y1, self.x0, self.x1)

    def relative_to(self, outer: "Window") -> "Window":
        """This window in the local coordinates of ``outer``."""
        return Window(self.y0 - outer.y0, self.y1 - outer.y0, self.x0 - outer.x0, self.x1 - outer.x0)


def _axis_chunks(n: int, tile: int, padding: int) -> tuple[int, ...]:
    if n <= tile:
        return (n,)
    full, rem = divmod(n, tile)
    chunks = [tile] * full
    if rem:
        if rem >= max(padding, 1):
            chunks.append(rem)
        else:  # too thin to carry the halo: give it to the previous tile
            chunks[-1] += rem
    return tuple(chunks)


@dataclass(frozen=True, kw_only=True)
class TilingPlan:
    """Tiles, padded windows and chunks of a (y, x) mosaic.

    Parameters
    ----------
    shape : tuple of int
        Mosaic shape (height, width) in pixels.
    tile_size : int
        Core size T of a block (the reference's ``tile.size``; default 1000).
    padding : int
        Context P added on each side that has a neighbour; also the
        ``map_overlap`` depth. Must satisfy ``0 <= P < T/2``.

    Examples
    --------
    >>> plan = TilingPlan(shape=(2500, 1700), tile_size=1000, padding=50)
    >>> plan.chunks
    ((1000, 1000, 500), (1000, 700))
    >>> plan.padded_window((2, 1)).as_tuple()
    (1950, 2500, 950, 1700)
    """

    shape: tuple[int, int]
    tile_size: int = 1000
    padding: int = 50
    chunks: tuple[tuple[int, ...], tuple[int, ...]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        validate_tiling(self.tile_size, self.padding)
        if len(self.shape) != 2 or min(self.shape) < 1:
            raise ConfigError(f"mosaic `shape` must be two positive sizes, got {self.shape}")
        shape = (int(self.shape[0]), int(self.shape[1]))
        object.__setattr__(self, "shape", shape)
        object.__setattr__(
            self,
            "chunks",
            (
                _axis_chunks(shape[0], self.tile_size, self.padding),
                _axis_chunks(shape[1], self.tile_size, self.padding),
            ),
        )

    # -- grid --------------------------------------------------------------
    @property
    def grid_shape(self) -> tuple[int, int]:
        """Number of blocks along (y, x)."""
        return (len(self.chunks[0]), len(self.chunks[1]))

    @property
    def n_blocks(self) -> int:
        return self.grid_shape[0] * self.grid_shape[1]

    @property
    def depth(self) -> dict[int, int]:
        """Overlap depth per axis for ``map_overlap`` (0 along single-chunk axes)."""
        return {
            0: self.padding if len(self.chunks[0]) > 1 else 0,
            1: self.padding if len(self.chunks[1]) > 1 else 0,
        }

    @property
    def starts(self) -> tuple[np.ndarray, np.ndarray]:
        """Start offsets of the cores along y and x (length n+1, last = size)."""
        return (
            np.concatenate([[0], np.cumsum(self.chunks[0])]),
            np.concatenate([[0], np.cumsum(self.chunks[1])]),
        )

    def block_ids(self) -> Iterator[tuple[int, int]]:
        """All block indices (iy, ix) in row-major order."""
        for iy in range(self.grid_shape[0]):
            for ix in range(self.grid_shape[1]):
                yield (iy, ix)

    def block_id(self, index: tuple[int, int]) -> int:
        """Row-major linear id of block ``index``."""
        iy, ix = index
        return int(iy) * self.grid_shape[1] + int(ix)

    # -- windows -----------------------------------------------------------
    def core_window(self, index: tuple[int, int]) -> Window:
        """The pixels block ``index`` owns."""
        iy, ix = index
        ys, xs = self.starts
        return Window(int(ys[iy]), int(ys[iy + 1]), int(xs[ix]), int(xs[ix + 1]))

    def padded_window(self, index: tuple[int, int]) -> Window:
        """The window block ``index`` sees: its core plus the halo, clipped."""
        core = self.core_window(index)
        dy, dx = self.depth[0], self.depth[1]
        return Window(
            max(0, core.y0 - dy),
            min(self.shape[0], core.y1 + dy),
            max(0, core.x0 - dx),
            min(self.shape[1], core.x1 + dx),
        )

    def blocks_touching(self, window: tuple[int, int, int, int]) -> list[tuple[int, int]]:
        """The blocks whose padded windows share a pixel with ``window = (y0, y1, x0, x1)``."""
        y0, y1, x0, x1 = window
        ys, xs = self.starts
        dy, dx = self.depth[0], self.depth[1]
        iys = np.flatnonzero((ys[:-1] - dy < y1) & (ys[1:] + dy > y0) & (y0 < y1))
        ixs = np.flatnonzero((xs[:-1] - dx < x1) & (xs[1:] + dx > x0) & (x0 < x1))
        return [(int(iy), int(ix)) for iy in iys for ix in ixs]

    def core_in_padded(self, index: tuple[int, int]) -> Window:
        """The core of block ``index`` in local coordinates of its padded window."""
        return self.core_window(index).relative_to(self.padded_window(index))

    # -- staging layout ----------------------------------------------------
    def in_slot(self, window: np.ndarray) -> np.ndarray:
        """A block's padded-window array at the top left of a zeroed :attr:`slot_shape` array, as the staging
        holds it (the array itself where it fills the slot)."""
        if window.shape == tuple(self.slot_shape):
            return window
        slot = np.zeros(self.slot_shape, window.dtype)
        slot[: window.shape[0], : window.shape[1]] = window
        return slot

    @property
    def slot_shape(self) -> tuple[int, int]:
        """Size of one staging slot: the largest padded window along each axis.

        Staged padded labels of block (iy, ix) live at the top-left corner of
        slot (iy, ix) of a regular (ny·Sy, nx·Sx) array, so the staging Zarr
        has one chunk per block and chunk writes never overlap.
        """
        return (
            max(c for c in self.chunks[0]) + 2 * self.depth[0],
            max(c for c in self.chunks[1]) + 2 * self.depth[1],
        )

    @property
    def staging_shape(self) -> tuple[int, int]:
        sy, sx = self.slot_shape
        return (self.grid_shape[0] * sy, self.grid_shape[1] * sx)

    def __dask_tokenize__(self):
        return ("TilingPlan", self.shape, self.tile_size, self.padding)


def validate_tiling(tile_size, padding) -> None:
    """Raise ConfigError for an unusable tile size or padding."""
    check_int("tile_size", tile_size, minimum=1, hint="the paper uses 1000")
    check_int("padding", padding, minimum=0)
    if tile_size > MAX_TILE_SIZE:
        raise ConfigError(
            f"`tile_size` {tile_size} is larger than the maximum {MAX_TILE_SIZE}",
            hint="SAM2 resizes each window to 1024 px; use 250–2000",
        )
    if 2 * padding >= tile_size:
        raise ConfigError(
            f"`padding` {padding} must be smaller than half the tile size ({tile_size}/2)",
            hint="the paper uses padding 50 with tile size 1000",
        )
