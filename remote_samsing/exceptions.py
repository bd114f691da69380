"""One exception hierarchy for remote_samsing.

Every error a user can cause derives from :class:`RemoteSamsingError`, so
callers (and the CLI) can catch one type. Each subclass also derives from the
closest built-in (``ValueError``, ``FileNotFoundError``, ...) so generic code
keeps working. Messages name the offending value and say what to do.

The layout follows rioxarray's single ``exceptions`` module
(https://github.com/corteva/rioxarray/blob/master/rioxarray/exceptions.py).
"""

from __future__ import annotations

__all__ = [
    "RemoteSamsingError",
    "ConfigError",
    "InputError",
    "InputNotFoundError",
    "UnsupportedDtypeError",
    "BandSelectionError",
    "OutputExistsError",
    "IncompleteOutputError",
    "OutputAccessError",
    "OutputNotSharedError",
    "DiskFullError",
    "FingerprintMismatchError",
    "BackendUnavailableError",
    "CheckpointError",
    "BlockFailedError",
    "WindowReadError",
    "CRSMismatchError",
    "RemoteSamsingWarning",
]


class RemoteSamsingWarning(UserWarning):
    """Base class of the warnings remote_samsing raises on purpose (the CLI prints them as one line)."""


class RemoteSamsingError(Exception):
    """Base class of every error raised on purpose by remote_samsing.

    Parameters
    ----------
    message : str
        What went wrong, naming the offending value.
    hint : str, optional
        What the user can do about it; the CLI prints it on its own line.
    """

    def __init__(self, message: str, *, hint: str | None = None):
        super().__init__(message)
        self.hint = hint

    def __str__(self) -> str:  # keep the hint visible in plain tracebacks too
        base = super().__str__()
        return f"{base} (hint: {self.hint})" if self.hint else base


class ConfigError(RemoteSamsingError, ValueError):
    """A parameter or configuration key is invalid (wrong type, range or name)."""


class InputError(RemoteSamsingError, ValueError):
    """The input mosaic cannot be used as given."""


class InputNotFoundError(InputError, FileNotFoundError):
    """The input path does not exist or cannot be opened."""


class UnsupportedDtypeError(InputError, TypeError):
    """The raster's data type cannot be converted to 8-bit RGB."""


class BandSelectionError(InputError):
    """The band count or the ``bands`` selection cannot give an RGB image."""


class OutputExistsError(RemoteSamsingError, FileExistsError):
    """The output directory exists and ``overwrite`` was not requested."""


class OutputAccessError(RemoteSamsingError, PermissionError):
    """OUTDIR cannot be written: a missing bucket, no permission, no credentials, an unreachable store."""


class OutputNotSharedError(OutputAccessError):
    """The cluster's workers do not see the local OUTDIR this machine sees (no shared filesystem)."""


class DiskFullError(RemoteSamsingError, OSError):
    """OUTDIR's filesystem has no room for the run: too little free space before it, or full during it."""


class IncompleteOutputError(RemoteSamsingError):
    """A product of a run that has not finished (its ``run.json`` does not say complete)."""


class FingerprintMismatchError(RemoteSamsingError):
    """An output directory holds a run with another configuration or input."""


class BackendUnavailableError(RemoteSamsingError, RuntimeError):
    """An optional backend (sam2, CUDA, dask-cuda, NVML) is not available."""


class CheckpointError(RemoteSamsingError, ValueError):
    """A model checkpoint is missing, unreadable or of the wrong architecture."""


class BlockFailedError(RemoteSamsingError, RuntimeError):
    """A block's segmenter kept failing after all retries."""


class WindowReadError(BlockFailedError):
    """A window of the input could not be read (a truncated or damaged file, a store error).

    ``block`` and ``window`` (``(y0, y1, x0, x1)`` in pixels) say where.
    """

    block: tuple | None = None
    window: tuple | None = None


class CRSMismatchError(RemoteSamsingError, ValueError):
    """Two datasets that must share a grid or CRS do not."""
