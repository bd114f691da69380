import os
from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).parent / "data"

# numba caches next to the package unless told otherwise; keep test runs hermetic-ish
os.environ.setdefault("NUMBA_CACHE_DIR", str(Path(__file__).resolve().parents[1] / ".numba_cache"))

# the deterministic test segmenters by name, here and in CLI subprocesses
from remote_samsing.testing import register_test_segmenters  # noqa: E402

register_test_segmenters()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA


@pytest.fixture
def scene(data_dir) -> Path:
    """The scene the mosaic tests cut into tiles (a module may define its own)."""
    return data_dir / "neon_osbs.tif"


@pytest.fixture(autouse=True)
def _no_user_checkpoint(tmp_path_factory, monkeypatch):
    """SAM2 finds no checkpoint of the machine's user: an empty models directory, no environment
    variable (tests that want one set them; CLI subprocesses inherit these)."""
    monkeypatch.setenv("REMOTE_SAMSING_MODELS", str(tmp_path_factory.mktemp("models")))
    # tile indexes of lazily opened mosaics go to the per-user cache: a test's own
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.delenv("REMOTE_SAMSING_CHECKPOINT", raising=False)


@pytest.fixture
def write_geotiff(tmp_path):
    """Write a (band, y, x) array as a GeoTIFF in tmp_path; returns its path."""
    import rasterio
    from rasterio.transform import from_origin

    def _write(data, name="img.tif", *, crs="EPSG:32633", transform=None, nodata=None, **extra):
        data = np.asarray(data)
        if data.ndim == 2:
            data = data[None]
        path = tmp_path / name
        profile = dict(
            driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0], dtype=data.dtype,
            crs=crs, transform=transform or from_origin(500000, 5000000, 0.5, 0.5), nodata=nodata,
        )
        profile.update(extra)
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(data)
        return path

    return _write


@pytest.fixture(scope="session")
def client():
    """A small real distributed cluster (processes) shared by the session's tests."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0", processes=True) as lc:
        with Client(lc) as c:
            yield c
