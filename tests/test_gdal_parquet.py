"""Tests for remote_samsing._gdal_parquet (DuckDB linked for pyogrio's GDAL)."""

from __future__ import annotations

import sys

import pytest

from remote_samsing import _gdal_parquet
from remote_samsing.exceptions import BackendUnavailableError

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the link is made on Linux only")


def test_link_is_made_kept_and_replaced_when_stale(tmp_path):
    old, new = tmp_path / "old.so", tmp_path / "new.so"
    old.touch()
    new.touch()
    link = _gdal_parquet.link_duckdb(libs=tmp_path, library=old)
    assert link == tmp_path / "libduckdb.so" and link.resolve() == old.resolve()
    assert _gdal_parquet.link_duckdb(libs=tmp_path, library=old) == link  # a correct link stays
    _gdal_parquet.link_duckdb(libs=tmp_path, library=new)  # duckdb upgraded
    assert link.resolve() == new.resolve()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["libduckdb.so", "new.so", "old.so"]


def test_installed_stack_has_the_link():
    """`make install` links the installed duckdb into pyogrio's library folder."""
    link = _gdal_parquet.pyogrio_libs() / _gdal_parquet.ADBC_DUCKDB_NAME
    assert link.resolve() == _gdal_parquet.duckdb_library().resolve()


def test_missing_duckdb_is_a_typed_error(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "_duckdb" else real(name))
    with pytest.raises(BackendUnavailableError, match="duckdb"):
        _gdal_parquet.duckdb_library()
    assert _gdal_parquet.main([]) == 1
