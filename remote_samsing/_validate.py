"""Parameter checks shared by every config: each rule written once.

Each check raises :class:`~remote_samsing.exceptions.ConfigError` naming the
parameter in backticks and quoting the bad value, and returns the value
converted to a plain Python type.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from .exceptions import ConfigError

__all__ = ["check_int", "check_number", "check_bool", "check_choice", "check_type"]


def check_int(
    name: str, value: Any, *, minimum: int | None = None, maximum: int | None = None, hint: str | None = None
) -> int:
    """An integer (not a bool) within ``[minimum, maximum]``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        bound = f" >= {minimum}" if minimum is not None else ""
        raise ConfigError(f"`{name}` must be an integer{bound}, got {value!r}", hint=hint)
    if minimum is not None and value < minimum:
        raise ConfigError(f"`{name}` must be >= {minimum}, got {value}", hint=hint)
    if maximum is not None and value > maximum:
        raise ConfigError(f"`{name}` must be <= {maximum}, got {value}", hint=hint)
    return int(value)


def check_number(
    name: str,
    value: Any,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    open_min: bool = False,
    open_max: bool = False,
    hint: str | None = None,
) -> float:
    """A real number (not a bool) within the given bounds (``open_*``: bound excluded)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ConfigError(f"`{name}` must be a number, got {value!r}", hint=hint)
    v = float(value)
    if v != v:
        raise ConfigError(f"`{name}` must be a number, got nan", hint=hint)
    low = minimum is not None and (v <= minimum if open_min else v < minimum)
    high = maximum is not None and (v >= maximum if open_max else v > maximum)
    if low or high:
        raise ConfigError(f"`{name}` must be {_bounds(minimum, maximum, open_min, open_max)}, got {value}", hint=hint)
    return v


def _bounds(minimum, maximum, open_min: bool, open_max: bool) -> str:
    if minimum is not None and maximum is not None:
        return f"in {'(' if open_min else '['}{minimum}, {maximum}{')' if open_max else ']'}"
    if minimum is not None:
        return f"{'>' if open_min else '>='} {minimum}"
    return f"{'<' if open_max else '<='} {maximum}"


def check_bool(name: str, value: Any) -> bool:
    """True or False (numpy bools too); never a truthy stand-in such as 1 or "yes"."""
    if not isinstance(value, (bool, np.bool_)):
        raise ConfigError(f"`{name}` must be true or false, got {value!r}")
    return bool(value)


def check_choice(name: str, value: Any, choices: Iterable[str], *, what: str | None = None) -> str:
    """One of ``choices``; the error lists them."""
    choices = tuple(choices)
    if value not in choices:
        raise ConfigError(f"unknown {what or name} `{value}`", hint=f"`{name}`: choose one of {', '.join(choices)}")
    return value


def check_type(name: str, value: Any, types: tuple, *, optional: bool = False) -> None:
    """``value`` is an instance of ``types`` (None allowed when ``optional``); a bool only if ``bool`` is listed."""
    if value is None and optional:
        return
    if isinstance(value, bool) and bool not in types:
        raise ConfigError(f"`{name}` must be {' or '.join(t.__name__ for t in types)}, got {value!r}")
    if not isinstance(value, types):
        raise ConfigError(
            f"`{name}` must be {' or '.join(t.__name__ for t in types)}, got {type(value).__name__} {value!r}"
        )


def check_nodata(nodata: float, dtype: np.dtype, name) -> None:
    """A nodata value given for ``name``'s pixels is one they can hold, else a :class:`ConfigError`."""
    if np.issubdtype(dtype, np.floating):
        return  # any float, NaN and infinities included
    info = np.iinfo(dtype)
    if not (np.isfinite(nodata) and float(nodata).is_integer() and info.min <= nodata <= info.max):
        raise ConfigError(f"nodata {nodata:g} is no value of `{name}`'s {dtype.name} pixels ({info.min} to "
                          f"{info.max})", hint="give a whole number in that range, or leave --nodata out to use the "
                                               "file's own")
