"""Parameter checks: plain Python values back, ConfigError naming the parameter otherwise."""

import re

import numpy as np
import pytest

from remote_samsing._validate import check_bool, check_choice, check_int, check_number, check_type
from remote_samsing.exceptions import ConfigError


def test_check_int():
    got = check_int("tile_size", np.int64(512), minimum=1)
    assert got == 512 and type(got) is int
    assert check_int("n", 0, minimum=0, maximum=0) == 0
    for bad in (True, np.bool_(False), 2.0, "3", None):
        with pytest.raises(ConfigError, match=r"`n` must be an integer >= 1, got "):
            check_int("n", bad, minimum=1)
    with pytest.raises(ConfigError, match="^`padding` must be >= 0, got -1$"):
        check_int("padding", -1, minimum=0)
    with pytest.raises(ConfigError, match=r"`retries` must be <= 5, got 6 \(hint: fewer\)"):
        check_int("retries", np.uint8(6), maximum=5, hint="fewer")


def test_check_number():
    got = check_number("x", np.float32(0.5), minimum=0, maximum=1)
    assert got == 0.5 and type(got) is float
    assert check_number("x", 0, minimum=0, maximum=1) == 0.0  # closed bounds hold their ends
    assert check_number("x", 1, minimum=0, maximum=1) == 1.0
    with pytest.raises(ConfigError, match=re.escape("`x` must be in (0, 1], got 0")):
        check_number("x", 0, minimum=0, maximum=1, open_min=True)
    with pytest.raises(ConfigError, match=re.escape("`x` must be in [0, 1), got 1")):
        check_number("x", 1, minimum=0, maximum=1, open_max=True)
    with pytest.raises(ConfigError, match="`x` must be > 0, got -2"):
        check_number("x", -2, minimum=0, open_min=True)
    with pytest.raises(ConfigError, match="`x` must be <= 3, got 4"):
        check_number("x", 4, maximum=3)
    with pytest.raises(ConfigError, match="`x` must be a number, got nan"):
        check_number("x", float("nan"), minimum=0, maximum=1)
    with pytest.raises(ConfigError, match="`x` must be a number, got nan") as err:
        check_number("x", np.nan, hint="a fraction")
    assert err.value.hint == "a fraction"
    for bad in (True, "1", None):
        with pytest.raises(ConfigError, match="`x` must be a number"):
            check_number("x", bad)
    with pytest.raises(ConfigError) as info:
        check_number("x", 2, maximum=1, hint="lower it")
    assert info.value.hint == "lower it"


def test_check_bool():
    assert check_bool("flag", np.bool_(True)) is True
    assert check_bool("flag", False) is False
    for bad in (1, "yes", None):
        with pytest.raises(ConfigError, match="`flag` must be true or false"):
            check_bool("flag", bad)


def test_check_choice():
    assert check_choice("merge", "overlap", ("none", "overlap")) == "overlap"
    with pytest.raises(ConfigError, match="unknown merge `nope`.*`merge`: choose one of none, overlap") as info:
        check_choice("merge", "nope", iter(["none", "overlap"]))
    assert info.value.hint == "`merge`: choose one of none, overlap"
    with pytest.raises(ConfigError, match="^unknown merge method `x`"):
        check_choice("merge", "x", ["none"], what="merge method")


def test_check_type():
    assert check_type("bands", None, (list,), optional=True) is None
    check_type("bands", [1], (list, tuple))
    check_type("flag", True, (bool, int))
    with pytest.raises(ConfigError, match="`bands` must be list, got NoneType None"):
        check_type("bands", None, (list,))
    with pytest.raises(ConfigError, match="^`n` must be int or float, got True$"):
        check_type("n", True, (int, float))  # a bool is an int, but not when bool is not listed
    with pytest.raises(ConfigError, match="`n` must be int, got str '3'"):
        check_type("n", "3", (int,))
