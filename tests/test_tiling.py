import numpy as np
import pytest

from remote_samsing.exceptions import ConfigError
from remote_samsing.tiling import TilingPlan


@pytest.mark.parametrize(
    "shape,T,P,expected",
    [
        ((2500, 1700), 1000, 50, ((1000, 1000, 500), (1000, 700))),
        ((300, 300), 1000, 50, ((300,), (300,))),
        ((1030, 1), 1000, 50, ((1030,), (1,))),  # remainder 30 < P: absorbed, single column
        ((2000, 2050), 1000, 50, ((1000, 1000), (1000, 1000, 50))),  # remainder 50 == P: its own chunk
        ((2000, 2049), 1000, 50, ((1000, 1000), (1000, 1049))),  # remainder 49 < P: absorbed
        ((1, 1), 16, 0, ((1,), (1,))),
    ],
)
def test_chunks_cover_every_pixel_once(shape, T, P, expected):
    plan = TilingPlan(shape=shape, tile_size=T, padding=P)
    assert plan.chunks == expected
    cover = np.zeros(shape, np.int32)
    for idx in plan.block_ids():
        cover[plan.core_window(idx).slices] += 1
    assert (cover == 1).all()


def test_padded_windows_are_core_plus_halo_clipped():
    plan = TilingPlan(shape=(2500, 1700), tile_size=1000, padding=50)
    assert plan.padded_window((0, 0)).as_tuple() == (0, 1050, 0, 1050)
    assert plan.padded_window((1, 0)).as_tuple() == (950, 2050, 0, 1050)
    assert plan.padded_window((2, 1)).as_tuple() == (1950, 2500, 950, 1700)
    assert plan.core_in_padded((1, 1)).as_tuple() == (50, 1050, 50, 750)
    assert plan.slot_shape == (1100, 1100)
    assert plan.staging_shape == (3300, 2200)


def test_single_chunk_axis_has_no_depth():
    plan = TilingPlan(shape=(300, 2500), tile_size=1000, padding=50)
    assert plan.depth == {0: 0, 1: 50}
    assert plan.padded_window((0, 1)).as_tuple() == (0, 300, 950, 2050)


@pytest.mark.parametrize(
    "T,P", [(0, 0), (-5, 0), (100, -1), (100, 50), (100, 60), (10**6, 10), (1.5, 0), (True, 0)]
)
def test_bad_tiling_rejected(T, P):
    with pytest.raises(ConfigError):
        TilingPlan(shape=(100, 100), tile_size=T, padding=P)


def test_plan_tokenizes_deterministically():
    from dask.base import tokenize

    a = TilingPlan(shape=(100, 120), tile_size=32, padding=4)
    b = TilingPlan(shape=(100, 120), tile_size=32, padding=4)
    assert tokenize(a) == tokenize(b)
    assert tokenize(a) != tokenize(TilingPlan(shape=(100, 120), tile_size=32, padding=5))


@pytest.mark.parametrize("shape,T,P", [((400, 400), 128, 16), ((2500, 1700), 1000, 50), ((90, 300), 100, 0)])
def test_blocks_touching_a_window_are_those_whose_padded_windows_share_a_pixel(shape, T, P):
    plan = TilingPlan(shape=shape, tile_size=T, padding=P)
    rng = np.random.default_rng(0)
    for _ in range(200):
        y0, y1 = sorted(rng.integers(0, shape[0] + 1, 2))
        x0, x1 = sorted(rng.integers(0, shape[1] + 1, 2))
        expect = [b for b in plan.block_ids() if (w := plan.padded_window(b)).y0 < y1 and y0 < w.y1
                  and w.x0 < x1 and x0 < w.x1 and y0 < y1 and x0 < x1]  # an empty window touches nothing
        assert plan.blocks_touching((y0, y1, x0, x1)) == expect
