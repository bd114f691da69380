"""Let pyogrio's own GDAL open GeoParquet files such as ``segments.parquet``.

pyogrio's wheels bundle a GDAL built without the Arrow-based ``Parquet``
driver (it would need Arrow C++ in the wheel; geopandas/pyogrio#215). From
GDAL 3.11 on, its ``ADBC`` driver opens ``.parquet`` files instead, through
DuckDB, which it loads by the name ``libduckdb.so`` with the entry point
``duckdb_adbc_init``. The ``duckdb`` wheel ships that entry point in its
Python extension ``_duckdb`` but no ``libduckdb.so``, so
``pyogrio.read_info("segments.parquet")`` fails with ``libduckdb.so: cannot
open shared object file``.

GDAL looks the name up along the library path of the module that loaded it,
and pyogrio's extensions carry ``RPATH=$ORIGIN/../pyogrio.libs``. A link
``pyogrio.libs/libduckdb.so -> _duckdb....so`` therefore lets every
``pyogrio.read_info`` / ``read_dataframe`` / ``geopandas.read_file`` in this
environment open GeoParquet, geometry type and CRS included. ``make install``
makes the link; ``python -m remote_samsing._gdal_parquet`` makes it again
(e.g. after pyogrio was reinstalled). Linux only: elsewhere GDAL asks for
other library names.

``geopandas.read_parquet`` and pyarrow read the files without any of this.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

from .exceptions import BackendUnavailableError

__all__ = ["ADBC_DUCKDB_NAME", "duckdb_library", "pyogrio_libs", "link_duckdb", "main"]

#: The library name GDAL's ADBC driver loads for ``.parquet`` files on Linux.
ADBC_DUCKDB_NAME = "libduckdb.so"


def duckdb_library() -> Path:
    """The ``duckdb`` wheel's extension module, which exports ``duckdb_adbc_init``."""
    spec = importlib.util.find_spec("_duckdb")
    if spec is None or spec.origin is None:
        raise BackendUnavailableError("the `duckdb` package is not installed",
                                      hint="pip install 'duckdb>=2.0,<3' (remote_samsing depends on it)")
    return Path(spec.origin)


def pyogrio_libs() -> Path:
    """The folder of the libraries bundled with pyogrio's wheel (its extensions' RPATH)."""
    spec = importlib.util.find_spec("pyogrio")
    if spec is None or spec.origin is None:
        raise BackendUnavailableError("the `pyogrio` package is not installed")
    libs = Path(spec.origin).parent.parent / "pyogrio.libs"
    if not libs.is_dir():
        raise BackendUnavailableError(
            f"pyogrio has no bundled libraries at `{libs}` (not a wheel install)",
            hint="a GDAL of your own opens GeoParquet when it was built with the Parquet driver",
        )
    return libs


def link_duckdb(*, libs: str | os.PathLike | None = None, library: str | os.PathLike | None = None) -> Path:
    """Make ``libs/libduckdb.so`` point at DuckDB's ADBC driver; a correct link is left as it is.

    Parameters
    ----------
    libs : path-like, optional
        The folder GDAL searches; default :func:`pyogrio_libs`.
    library : path-like, optional
        The library exporting ``duckdb_adbc_init``; default :func:`duckdb_library`.

    Returns
    -------
    pathlib.Path
        The link.

    Examples
    --------
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> (folder / "_duckdb.so").touch()
    >>> link = link_duckdb(libs=folder, library=folder / "_duckdb.so")
    >>> link.name, link.resolve() == (folder / "_duckdb.so").resolve()
    ('libduckdb.so', True)
    """
    if not sys.platform.startswith("linux"):
        raise BackendUnavailableError(f"linking DuckDB for GDAL is done on Linux only, not on {sys.platform}",
                                      hint="read GeoParquet with geopandas.read_parquet")
    libs = Path(libs) if libs is not None else pyogrio_libs()
    target = Path(library).resolve() if library is not None else duckdb_library().resolve()
    link = libs / ADBC_DUCKDB_NAME
    if link.is_symlink() and link.resolve() == target:
        return link
    # a stale link (duckdb upgraded) is replaced through a temporary name,
    # so a reader never finds the name missing
    tmp = libs / f".{ADBC_DUCKDB_NAME}.{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target)
    os.replace(tmp, link)
    return link


def main(argv: list[str] | None = None) -> int:
    """``python -m remote_samsing._gdal_parquet``: make the link and say where."""
    del argv  # no options
    try:
        link = link_duckdb()
    except BackendUnavailableError as exc:
        print(f"GeoParquet through GDAL not set up: {exc}", file=sys.stderr)
        return 1
    print(f"GDAL (pyogrio) opens GeoParquet through DuckDB: {link} -> {link.resolve()}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
