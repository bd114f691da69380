"""Pipeline overhead: the whole job with a no-op segmenter on a synthetic Zarr mosaic.

Prints Mpx/s and the peak RSS of all processes (client + workers) for two
mosaic sizes, to show throughput and that memory does not grow with the
mosaic. Target: >= 25 Mpx/s on 2 cores, peak RSS independent of size.

By default each size runs in its own Python process with its own cluster
(its synthetic mosaic written by another process), as a user's job does, so
that every size starts from the same state. ``--one-process`` runs every
size one after another on one cluster in this process instead: its later
sizes then also carry the heap the earlier jobs left in the same processes
(the allocator and GDAL keep freed memory).

    python -m benchmarks.bench_pipeline            # 100 Mpx and 400 Mpx
    python -m benchmarks.bench_pipeline --quick    # 4 Mpx and 16 Mpx
    python -m benchmarks.bench_pipeline --sides 10000,20000,30000,40000   # 100 Mpx to 1.6 Gpx
    python -m benchmarks.bench_pipeline --store s3   # local disk vs a loopback S3 server, same mosaics
    python -m benchmarks.bench_pipeline --store s3,gs,az --server seaweedfs --sides 4000,8000   # every store
    python -m benchmarks.bench_pipeline --megapixels 400 --sources 400 --repeats 3   # 1 file vs 400 files

``--store s3`` runs every size twice, mosaic and OUTDIR on local disk and then
both on an S3 server on loopback (``--server moto``, moto's standalone server,
the default; or ``--server seaweedfs``, SeaweedFS's ``weed mini``), in a
process of its own, reached through ``AWS_ENDPOINT_URL`` as a real store would
be. ``--store gs`` and ``--store az`` do the same on fake-gcs-server
(``STORAGE_EMULATOR_HOST``) and Azurite (``AZURE_STORAGE_CONNECTION_STRING``);
``--store s3,gs,az`` runs each store after the one local run. It prints each
store's throughput as a ratio of the local one (target >= 0.5) with the
client's peak RSS for each size (target: independent of the size), and what
the run cost the server: requests per block and the share of the run's time
its process was busy (moto answers one request at a time in Python, on the
same 2 cores, so its CPU time bounds how fast any run against it can be).
It writes ``benchmarks/results/pipeline-store-cpu-<cores>core.json``
(``--json`` elsewhere; ``--quick`` only there).

``--sources N`` writes the synthetic mosaic (one size, ``--megapixels``,
default 400) as one GeoTIFF and cuts it into the rows x columns of GeoTIFFs
closest to N (``remote_samsing.testing.cut_tiles``; both tiled 256² and
uncompressed, so they differ in the number of files only). It runs the no-op
job on the one file and on the folder of N files, and a plain-Dask baseline on
the one file (``rioxarray.open_rasterio`` in tile² chunks, an identity
``map_blocks``, ``dask.array.to_zarr``) on the same kind of cluster, each in a
fresh process with a cluster of its own. It prints each one's Mpx/s, CPU
seconds and peak RSS (client and largest worker), the throughput ratio many
files / one file (target >= 0.8), the job's throughput over the baseline's for
both (target >= 0.5), the same ratios in CPU seconds (they move less when other
processes share the cores), and with ``--repeats`` their medians; peak RSS
should not depend on N. It writes
``benchmarks/results/pipeline-sources-<N>-cpu-<cores>core.json``, replacing
the recorded result (``--json`` elsewhere; ``--quick`` only there), with the
command and the commit measured.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from benchmarks._util import PeakRSS, machine, no_segment_expected, result_path, timer


#: the synthetic mosaic's georeferencing: 0.5 m pixels in UTM 33N
_CRS, _TRANSFORM = "EPSG:32633", (0.5, 0, 500000, 0, -0.5, 5000000)


def _pattern(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """The synthetic mosaic's pixels in rows ``y0:y1``, columns ``x0:x1``: smooth RGB, (3, y, x) uint8."""
    yy, xx = np.mgrid[y0:y1, x0:x1]
    v = ((np.sin(yy / 37.0) + np.cos(xx / 53.0)) * 60 + 128).astype(np.uint8)
    return np.broadcast_to(v, (3,) + v.shape).copy()


def _synthetic_zarr(path: Path, side: int, tile: int) -> Path:
    """A smooth RGB uint8 mosaic written lazily, chunk by chunk, to Zarr v3."""
    import dask.array as da
    import xarray as xr
    from affine import Affine

    def block(b, block_info=None):
        (y0, y1), (x0, x1) = block_info[None]["array-location"][1:]
        return _pattern(y0, y1, x0, x1)

    tmpl = da.zeros((3, side, side), dtype=np.uint8, chunks=(3, tile, tile))
    data = tmpl.map_blocks(block, dtype=np.uint8)
    arr = xr.DataArray(data, dims=("band", "y", "x"), coords={"band": [1, 2, 3]})
    arr = arr.rio.write_crs(_CRS).rio.write_transform(Affine(*_TRANSFORM))
    arr = arr.assign_coords(
        y=5000000 - 0.25 - 0.5 * np.arange(side), x=500000 + 0.25 + 0.5 * np.arange(side)
    )
    from remote_samsing.io import to_zarr

    return to_zarr(arr, path, tile_size=tile)


def _release_memory(client) -> None:
    import gc

    from remote_samsing.cluster import malloc_trim

    def _collect_and_trim():
        gc.collect()
        malloc_trim()

    client.run(_collect_and_trim)
    _collect_and_trim()


def _rows_in_fresh_processes(sizes, *, tile: int, n_workers: int, store: str | None = None,
                             env: dict | None = None) -> list[dict]:
    """One child process (and cluster) per size: every size starts from the same state."""
    import subprocess
    import sys

    rows = []
    with tempfile.TemporaryDirectory(prefix="rs-bench-pipeline-rows-") as d:
        for side in sizes:
            out = Path(d) / f"{side}.json"
            subprocess.run(
                [sys.executable, "-m", "benchmarks.bench_pipeline", "--one-process", "--sides", str(side),
                 "--tile", str(tile), "--n-workers", str(n_workers), "--json", str(out), "--child",
                 *(["--store", store] if store else [])],
                check=True, cwd=Path(__file__).resolve().parents[1], env=env,
            )
            rows += json.loads(out.read_text())["rows"]
    return rows


_SERVER_PID, _SERVER_LOG, _SERVER_METRICS = "RS_BENCH_SERVER_PID", "RS_BENCH_SERVER_LOG", "RS_BENCH_SERVER_METRICS"


class _ServerCost:
    """Requests the loopback server answered and CPU seconds it spent while the block runs: requests
    from its request log (one `` HTTP/1.1`` line each: moto, fake-gcs-server, Azurite) or its
    Prometheus counters (SeaweedFS)."""

    def __enter__(self):
        import os

        import psutil

        self._proc = psutil.Process(int(os.environ[_SERVER_PID]))
        self._log = Path(os.environ[_SERVER_LOG]) if os.environ.get(_SERVER_LOG) else None
        self._metrics = os.environ.get(_SERVER_METRICS)
        self._start = (self._cpu(), self._requests())
        return self

    def _cpu(self) -> float:
        # the server and any process it started (weed mini runs its parts as threads; node may fork)
        procs = [self._proc] + self._proc.children(recursive=True)
        return sum(t.user + t.system for t in (p.cpu_times() for p in procs))

    def _requests(self) -> int:
        if self._metrics:
            import urllib.request

            with urllib.request.urlopen(self._metrics, timeout=10) as r:
                lines = r.read().decode().splitlines()
            return int(sum(float(line.rsplit(" ", 1)[1]) for line in lines
                           if line.startswith("SeaweedFS_s3_request_total{")))
        return self._log.read_text(errors="replace").count(" HTTP/1.1")

    def __exit__(self, *exc):
        self.cpu_s = self._cpu() - self._start[0]
        self.requests = self._requests() - self._start[1]


def _loopback_moto():
    """A moto S3 server in a process of its own and the environment that reaches it, with bucket
    ``bench``. It is a sibling of the measured job processes, so their RSS never counts the objects
    the server holds."""
    import os
    import socket
    import subprocess
    import sys
    import time

    import boto3

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tempfile.NamedTemporaryFile(prefix="rs-bench-moto-", suffix=".log", delete=False)
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=log, start_new_session=True)
    # the server's process and request log: a child measures what its job cost the server
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench-secret",
           "AWS_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
           _SERVER_PID: str(proc.pid), _SERVER_LOG: log.name}
    s3 = boto3.client("s3", aws_access_key_id="bench", aws_secret_access_key="bench-secret",
                      region_name="us-east-1", endpoint_url=env["AWS_ENDPOINT_URL"])
    for _ in range(200):
        try:
            s3.create_bucket(Bucket="bench")
            break
        except Exception:  # noqa: BLE001 - the server is still starting
            time.sleep(0.1)

    def stop():
        proc.kill()
        proc.wait()
        Path(log.name).unlink(missing_ok=True)

    return stop, env


@contextlib.contextmanager
def _loopback_server(store: str, server: str):
    """``(name, environment)`` of a loopback server for ``store`` with bucket ``bench``, stopped on exit:
    the environment holds only the store's standard variables, plus where a child measures the server.
    fake-gcs-server, Azurite and SeaweedFS start as the storage tests start them
    (tests/integration/loopback_stores.py), moto as its own process here."""
    import os
    import sys

    if store == "s3" and server == "moto":
        stop, env = _loopback_moto()
        try:
            yield "moto", env
        finally:
            stop()
        return
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration"))
    from loopback_stores import STORE_VARIABLES, start_store

    with tempfile.TemporaryDirectory(prefix=f"rs-bench-{store}-server-") as d:
        log = Path(d) / "requests.log"
        srv = start_store(store, Path(d), server=server if store == "s3" else None, log=log)
        try:
            srv.make_bucket("bench")
            env = {k: v for k, v in os.environ.items() if k not in STORE_VARIABLES}
            env.update(srv.env, **{_SERVER_PID: str(srv.pid)})
            env.update({_SERVER_METRICS: srv.metrics_url} if srv.metrics_url else {_SERVER_LOG: str(srv.log)})
            yield {"s3": server, "gs": "fake-gcs-server", "az": "azurite"}[store], env
        finally:
            srv.stop()


def run_store(sizes, *, stores, server: str, tile: int, n_workers: int) -> dict:
    """Every size on local disk, then with mosaic and OUTDIR on each loopback store in turn."""
    local = _rows_in_fresh_processes(sizes, tile=tile, n_workers=n_workers)
    result = {"name": "pipeline_store", "machine": machine(), "n_workers": n_workers, "rows_local": local,
              "stores": {}, "target": "throughput ratio >= 0.5; client RSS independent of the mosaic size"}
    for store in stores:
        with _loopback_server(store, server) as (name, env):
            remote = _rows_in_fresh_processes(sizes, tile=tile, n_workers=n_workers, store=store, env=env)
        pairs = [{"mpx": a["mpx"], "local_mpx_per_s": a["mpx_per_s"], "store_mpx_per_s": b["mpx_per_s"],
                  "throughput_ratio_store_over_local": b["mpx_per_s"] / a["mpx_per_s"],
                  "client_peak_rss_mb_local": a["peak_rss_by_process_mb"]["main"],
                  "client_peak_rss_mb_store": b["peak_rss_by_process_mb"]["main"],
                  "server_requests_per_block": b["server"]["requests_per_block"],
                  "server_cpu_share_of_run": b["server"]["cpu_s"] / b["seconds"]} for a, b in zip(local, remote)]
        for p in pairs:
            print(f"{store} ({name}) {p['mpx']:.0f} Mpx: local {p['local_mpx_per_s']:.1f} Mpx/s, store "
                  f"{p['store_mpx_per_s']:.1f} Mpx/s (ratio {p['throughput_ratio_store_over_local']:.2f}); client "
                  f"peak RSS local {p['client_peak_rss_mb_local']:.0f} MB, store {p['client_peak_rss_mb_store']:.0f} "
                  f"MB; {p['server_requests_per_block']:.1f} requests a block, the server busy "
                  f"{p['server_cpu_share_of_run']:.0%} of the run (one core)")
        ratio = pairs[-1]["client_peak_rss_mb_store"] / pairs[0]["client_peak_rss_mb_store"]
        print(f"{store} ({name}): client peak RSS, largest/smallest mosaic: {ratio:.2f}")
        result["stores"][store] = {"server": name, "pairs": pairs, "rows": remote,
                                   "client_rss_ratio_large_vs_small": ratio}
    return result


def run(quick: bool = False, *, sizes=None, tile: int = 1000, n_workers: int = 2, fresh: bool = True,
        child: bool = False, store: str | None = None) -> dict:
    sizes = sizes or ([2000, 4000] if quick else [10000, 20000])
    if fresh:
        rows = _rows_in_fresh_processes(sizes, tile=tile, n_workers=n_workers)
    else:
        # a child of _rows_in_fresh_processes (one size) writes its mosaic apart
        rows = _rows_in_one_process(sizes, tile=tile, n_workers=n_workers, own_writer=child, store=store)
    result = {
        "name": "pipeline_overhead",
        "machine": machine(),
        "n_workers": n_workers,
        "processes": "one per size" if fresh else "one for all sizes, one after another",
        "rows": rows,
        "rss_ratio_large_vs_small": rows[-1]["peak_rss_mb"] / rows[0]["peak_rss_mb"],
        "target": ">= 25 Mpx/s on 2 cores; RSS ratio ~1",
    }
    if child:
        return result
    for r in rows:
        p = r["peak_rss_by_process_mb"]
        st = r["stages_s"]
        print(f"pipeline noop: {r['mpx']:.0f} Mpx in {r['seconds']:.1f} s = {r['mpx_per_s']:.1f} Mpx/s, "
              f"peak RSS {r['peak_rss_mb']:.0f} MB (client+scheduler {p['main']:.0f}, largest worker "
              f"{p['largest_child']:.0f}); segment {st['segment_s']:.1f} s, merge+zarr "
              f"{st['merge_and_zarr_s']:.1f} s, COG {st['outputs_s']:.1f} s")
        if r.get("merge_phases_s"):
            print("  merge phases (s): " + ", ".join(f"{k} {v:.1f}" for k, v in r["merge_phases_s"].items()))
    print(f"peak RSS ratio (largest/smallest mosaic): {result['rss_ratio_large_vs_small']:.2f} "
          f"({result['processes']})")
    return result


def _rows_in_one_process(sizes, *, tile: int, n_workers: int, own_writer: bool = False,
                         store: str | None = None) -> list[dict]:
    from remote_samsing._files import location, remove_tree
    from remote_samsing.cluster import ClusterConfig, make_client
    from remote_samsing.config import RunConfig
    from remote_samsing.pipeline import run as run_job
    from remote_samsing.testing import register_test_segmenters

    tmp = Path(tempfile.mkdtemp(prefix="rs-bench-pipeline-"))
    rows = []
    written = {}
    try:
        if own_writer:
            # the synthetic mosaic is written by a process (and cluster) of its
            # own, so that the job's processes start as a user's job does
            import subprocess
            import sys

            for side in sizes:
                written[side] = f"{store}://bench/m{side}.zarr" if store else tmp / f"m{side}.zarr"
                subprocess.run([sys.executable, "-m", "benchmarks.bench_pipeline", "--write-mosaic",
                                str(written[side]), "--sides", str(side), "--tile", str(tile)],
                               check=True, cwd=Path(__file__).resolve().parents[1])
        # the product's embedded cluster (worker processes, one thread each, its
        # allocator settings), as `remote-samsing segment` starts it
        # the no-op segmenter is a test segmenter: registered here and, through
        # the environment, on the workers
        register_test_segmenters()
        with make_client(ClusterConfig(n_workers=n_workers, dashboard=False), needs_gpu=False) as c:
            for side in sizes:
                z = written.get(side) or _synthetic_zarr(tmp / f"m{side}.zarr", side, tile)
                # writing the synthetic mosaic (when it ran on these processes) and
                # earlier jobs left freed heap: hand it back first, so that the
                # peak RSS measures this job only
                _release_memory(c)
                out = location(f"{store}://bench/out{side}") if store else tmp / f"out{side}"
                cfg = RunConfig(segmenter="noop", tile_size=tile, padding=50, merge="overlap", vectors=False,
                                progress=False)
                with PeakRSS() as rss, timer() as t, (_ServerCost() if store else contextlib.nullcontext()) as srv, \
                        no_segment_expected():
                    run_job(z, out, config=cfg, client=c)
                mpx = side * side / 1e6
                rec = json.loads((out / "run.json").read_text())
                rows.append({"mpx": mpx, "seconds": t["seconds"], "mpx_per_s": mpx / t["seconds"],
                             "peak_rss_mb": rss.peak_mb, "peak_rss_by_process_mb": rss.peaks_mb(),
                             "stages_s": rec["timings"],
                             "merge_phases_s": rec["merge_stats"].get("phase_seconds")})
                if store:
                    n_blocks = (-(-side // tile)) ** 2
                    rows[-1]["server"] = {"requests": srv.requests, "requests_per_block": srv.requests / n_blocks,
                                          "cpu_s": srv.cpu_s}
                remove_tree(out)
                remove_tree(z)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


# ---------------------------------------------------------------------------
# --sources N: one GeoTIFF against the same mosaic cut into N files, beside plain Dask
# ---------------------------------------------------------------------------
def _grid_of(n: int) -> tuple[int, int]:
    """Rows and columns whose product is closest to ``n``, no side more than twice the other.

    Parameters
    ----------
    n : int
        The number of files asked for.

    Returns
    -------
    (int, int)
        ``(rows, cols)``, the squarest of the closest products.
    """
    pairs = [(r, max(1, round(n / r))) for r in range(1, n + 1)]
    pairs = [(r, c) for r, c in pairs if max(r, c) <= 2 * min(r, c)] or [(1, n)]
    return min(pairs, key=lambda rc: (abs(rc[0] * rc[1] - n), max(rc) / min(rc)))


def _synthetic_geotiff(path: Path, side: int, tile: int) -> Path:
    """The synthetic mosaic of :func:`_synthetic_zarr` as one GeoTIFF, written window by window.

    Tiled 256² and uncompressed, as :func:`~remote_samsing.testing.cut_tiles` writes its tiles with
    ``tiled=True``: the single file and the N files then differ in the number of files only.
    """
    import rasterio
    from affine import Affine
    from rasterio.windows import Window

    profile = {"driver": "GTiff", "width": side, "height": side, "count": 3, "dtype": "uint8", "crs": _CRS,
               "transform": Affine(*_TRANSFORM), "tiled": True, "blockxsize": 256, "blockysize": 256}
    with rasterio.open(path, "w", **profile) as dst:
        for y0 in range(0, side, tile):
            for x0 in range(0, side, tile):
                y1, x1 = min(side, y0 + tile), min(side, x0 + tile)
                dst.write(_pattern(y0, y1, x0, x1), window=Window(x0, y0, x1 - x0, y1 - y0))
    return path


def _source_mosaics(folder: Path, side: int, tile: int, n: int) -> tuple[Path, Path, tuple[int, int]]:
    """The synthetic mosaic as one GeoTIFF and cut into about ``n`` GeoTIFFs in a folder of their own.

    Returns
    -------
    (Path, Path, (int, int))
        The single file, the folder of tiles, and the tiles' rows and columns.
    """
    from remote_samsing.testing import cut_tiles

    one = _synthetic_geotiff(folder / "one.tif", side, tile)
    rows, cols = _grid_of(n)
    cut_tiles(one, folder / "tiles", rows=rows, cols=cols, profile={"tiled": True})
    return one, folder / "tiles", (rows, cols)


def _plain_dask(path: Path, out: Path, tile: int, client) -> None:
    """The baseline: read the GeoTIFF in ``tile``² chunks, do nothing to them, write them to Zarr."""
    import dask.array as da
    import rioxarray

    arr = rioxarray.open_rasterio(path, chunks={"band": -1, "y": tile, "x": tile}, lock=False)
    stored = da.to_zarr(arr.data.map_blocks(lambda b: b), str(out), compute=False)
    client.compute(stored, sync=True)


def _tree_cpu_s() -> float:
    """CPU seconds (user + system) this process and its live children (the workers) have spent so far."""
    import psutil

    me = psutil.Process()
    total = 0.0
    for p in [me] + me.children(recursive=True):
        try:
            t = p.cpu_times()
        except psutil.Error:
            continue
        total += t.user + t.system
    return total


def _case(kind: str, path: Path, *, tile: int, n_workers: int) -> dict:
    """One timed case on a cluster of its own: the no-op job (``one``, ``many``) or plain Dask (``dask``).

    Returns
    -------
    dict
        Seconds, CPU seconds of all processes, the 1-minute load average at the end, the peak RSS of
        all processes and of the client and largest worker, and for the job the seconds of its stages.
    """
    from remote_samsing.cluster import ClusterConfig, make_client
    from remote_samsing.config import RunConfig
    from remote_samsing.pipeline import run as run_job
    from remote_samsing.testing import register_test_segmenters

    register_test_segmenters()
    cfg = RunConfig(segmenter="noop", tile_size=tile, padding=50, merge="overlap", vectors=False, progress=False)
    with tempfile.TemporaryDirectory(prefix=f"rs-bench-sources-{kind}-") as d, \
            make_client(ClusterConfig(n_workers=n_workers, dashboard=False), needs_gpu=False) as c:
        out = Path(d) / "out"
        cpu = _tree_cpu_s()
        with PeakRSS() as rss, timer() as t:
            with no_segment_expected():
                rec = _plain_dask(path, out, tile, c) if kind == "dask" else run_job(path, out, config=cfg, client=c)
        # CPU seconds move less than wall seconds when other processes share the cores
        cpu = _tree_cpu_s() - cpu
    row = {"case": kind, "seconds": t["seconds"], "cpu_s": cpu, "load_1min": os.getloadavg()[0],
           "peak_rss_mb": rss.peak_mb, "peak_rss_by_process_mb": rss.peaks_mb()}
    if rec:  # the job's own record: where its time went
        row["stages_s"] = rec["timings"]
    return row


def _case_in_fresh_process(kind: str, path: Path, *, tile: int, n_workers: int) -> dict:
    """:func:`_case` in a child process: every case starts from the same state, as a user's job does."""
    import subprocess
    import sys

    with tempfile.TemporaryDirectory(prefix="rs-bench-sources-row-") as d:
        out = Path(d) / "row.json"
        subprocess.run([sys.executable, "-m", "benchmarks.bench_pipeline", "--case", kind, "--input", str(path),
                        "--tile", str(tile), "--n-workers", str(n_workers), "--json", str(out)],
                       check=True, cwd=Path(__file__).resolve().parents[1])
        return json.loads(out.read_text())


def _ratios(rows: dict, mpx: float) -> dict:
    """Throughput of each case and the ratios the targets name, from one repeat's rows."""
    speed = {k: mpx / r["seconds"] for k, r in rows.items()}
    cpu = {k: r["cpu_s"] for k, r in rows.items()}
    return {"mpx_per_s": speed, "many_over_one": speed["many"] / speed["one"],
            "one_over_dask": speed["one"] / speed["dask"], "many_over_dask": speed["many"] / speed["dask"],
            "cpu_many_over_one": cpu["one"] / cpu["many"], "cpu_one_over_dask": cpu["dask"] / cpu["one"],
            "cpu_many_over_dask": cpu["dask"] / cpu["many"]}


def _print_repeat(rows: dict, ratio: dict, n: int) -> None:
    for kind, label in (("one", "pipeline, 1 file"), ("many", f"pipeline, {n} files"), ("dask", "plain Dask")):
        p = rows[kind]["peak_rss_by_process_mb"]
        r = rows[kind]
        print(f"  {label:<20} {r['seconds']:6.1f} s = {ratio['mpx_per_s'][kind]:5.1f} Mpx/s ({r['cpu_s']:.1f} CPU s, "
              f"load {r['load_1min']:.1f}), peak RSS {r['peak_rss_mb']:.0f} MB (client+scheduler {p['main']:.0f}, "
              f"largest worker {p['largest_child']:.0f})")
    print(f"  many/one {ratio['many_over_one']:.2f}; pipeline/plain Dask: 1 file {ratio['one_over_dask']:.2f}, "
          f"{n} files {ratio['many_over_dask']:.2f}; the same in CPU seconds: {ratio['cpu_many_over_one']:.2f}; "
          f"{ratio['cpu_one_over_dask']:.2f}, {ratio['cpu_many_over_dask']:.2f}", flush=True)


def _median_ratios(repeats: list[dict]) -> dict:
    """Each ratio's median over the repeats, with the smallest and largest."""
    keys = ("many_over_one", "one_over_dask", "many_over_dask", "cpu_many_over_one", "cpu_one_over_dask",
            "cpu_many_over_dask")
    return {k: {"median": float(np.median([r[k] for r in repeats])), "min": min(r[k] for r in repeats),
                "max": max(r[k] for r in repeats)} for k in keys}


def run_sources(n: int, *, side: int, tile: int = 1000, n_workers: int = 2, repeats: int = 1) -> dict:
    """The no-op job on one GeoTIFF and on the same mosaic cut into ``n`` files, beside plain Dask.

    Each repeat runs the three cases one after another (1 file, ``n`` files, plain Dask), each in a
    fresh process with a cluster of its own, so that the ratios of one repeat share the machine's load.

    Parameters
    ----------
    n : int
        The number of files asked for; the closest rows × columns grid is used (see :func:`_grid_of`).
    side : int
        The mosaic's side in pixels.
    tile, n_workers : int
        The job's block size (the baseline's chunk size) and the cluster's worker processes.
    repeats : int
        Repeats of the three cases; the ratios reported are the medians.

    Returns
    -------
    dict
        The rows of every repeat, the ratios of each and their medians.
    """
    mpx = side * side / 1e6
    with tempfile.TemporaryDirectory(prefix="rs-bench-sources-") as d:
        one, tiles, (rows, cols) = _source_mosaics(Path(d), side, tile, n)
        print(f"{mpx:.0f} Mpx, one GeoTIFF vs {rows} x {cols} = {rows * cols} GeoTIFFs "
              f"({side / cols:.0f} x {side / rows:.0f} px each; asked for {n}), tile {tile}", flush=True)
        runs = []
        for rep in range(repeats):
            print(f"repeat {rep + 1}/{repeats}:", flush=True)
            # the order turns round every repeat: a load that rises or falls during a repeat
            # favours neither case across repeats
            order = [("one", one), ("many", tiles), ("dask", one)][::1 if rep % 2 == 0 else -1]
            cases = {k: _case_in_fresh_process(k, p, tile=tile, n_workers=n_workers) for k, p in order}
            runs.append({"rows": cases, "ratios": _ratios(cases, mpx)})
            _print_repeat(cases, runs[-1]["ratios"], rows * cols)
    med = _median_ratios([r["ratios"] for r in runs])
    print(f"median of {repeats} [min-max]: many/one {med['many_over_one']['median']:.2f} "
          f"[{med['many_over_one']['min']:.2f}-{med['many_over_one']['max']:.2f}] (target >= 0.8); "
          f"pipeline/plain Dask, 1 file {med['one_over_dask']['median']:.2f}, {rows * cols} files "
          f"{med['many_over_dask']['median']:.2f} (target >= 0.5); in CPU seconds: many/one "
          f"{med['cpu_many_over_one']['median']:.2f}, pipeline/plain Dask {med['cpu_one_over_dask']['median']:.2f}, "
          f"{med['cpu_many_over_dask']['median']:.2f}")
    return {"name": "pipeline_sources", "machine": machine(), "n_workers": n_workers, "mpx": mpx, "side": side,
            "tile": tile, "sources_asked": n, "sources": rows * cols, "grid": [rows, cols], "repeats": repeats,
            "many_over_one": med["many_over_one"]["median"], "one_over_dask": med["one_over_dask"]["median"],
            "many_over_dask": med["many_over_dask"]["median"], "ratios": med, "runs": runs,
            "target": "many/one >= 0.8; pipeline/plain Dask >= 0.5; peak RSS independent of the number of files"}


def _code_version() -> dict:
    """The commit measured, and whether the package's files differed from it (others edit them meanwhile)."""
    import subprocess

    root = Path(__file__).resolve().parents[1]

    def git(*args):
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True).stdout.strip()

    return {"commit": git("rev-parse", "--short", "HEAD"),
            "package_changed": bool(git("status", "--porcelain", "--", "remote_samsing"))}


def _default_result_path(n: int) -> Path:
    """``benchmarks/results/pipeline-sources-<N>-cpu-<cores>core.json``, the recorded result."""
    return result_path(f"pipeline-sources-{n}")


if __name__ == "__main__":
    import sys

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--sides", help="comma-separated mosaic sides in pixels, e.g. 10000,20000,30000 "
                                    "(100, 400 and 900 Mpx in one run)")
    ap.add_argument("--tile", type=int, default=1000)
    ap.add_argument("--n-workers", type=int, default=2)
    ap.add_argument("--one-process", action="store_true",
                    help="every size on one cluster in this process, one after another")
    ap.add_argument("--json", help="write the result here too")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)  # one size, for a fresh-process run
    ap.add_argument("--write-mosaic", help=argparse.SUPPRESS)  # only write the synthetic mosaic there
    ap.add_argument("--store", help="also run with mosaic and OUTDIR on loopback stores: s3, gs, az or a "
                                    "comma-separated list of them")
    ap.add_argument("--server", choices=["moto", "seaweedfs"], default="moto", help="the S3 server of --store s3")
    ap.add_argument("--megapixels", help="comma-separated mosaic sizes in Mpx, instead of --sides (e.g. 100,400)")
    ap.add_argument("--sources", type=int, metavar="N",
                    help="one GeoTIFF vs the same mosaic cut into N GeoTIFFs, beside plain Dask (one size: "
                         "--megapixels, default 400; --quick 16)")
    ap.add_argument("--repeats", type=int, default=1, help="with --sources: repeats of the three cases")
    ap.add_argument("--case", choices=["one", "many", "dask"], help=argparse.SUPPRESS)  # one --sources case
    ap.add_argument("--input", help=argparse.SUPPRESS)  # the --case's mosaic
    args = ap.parse_args()
    sides = [int(v) for v in args.sides.split(",")] if args.sides else None
    if args.megapixels:
        sides = [round((float(v) * 1e6) ** 0.5) for v in args.megapixels.split(",")]
    if args.case:
        row = _case(args.case, Path(args.input), tile=args.tile, n_workers=args.n_workers)
        Path(args.json).write_text(json.dumps(row, indent=2))
        raise SystemExit(0)
    if args.sources:
        if sides and len(sides) > 1:
            ap.error("--sources compares one mosaic size: give one --megapixels or --sides")
        side = sides[0] if sides else (4000 if args.quick else 20000)
        code = _code_version()  # at the start: the package may change while the cases run
        result = run_sources(args.sources, side=side, tile=args.tile, n_workers=args.n_workers,
                             repeats=args.repeats)
        # the command that produced the numbers, as a reader reruns it from the repository root
        result["command"] = "python -m benchmarks.bench_pipeline " + " ".join(sys.argv[1:])
        result["code"] = code
        # a --quick run is a smoke test: it replaces no recorded result unless told where to write
        target = Path(args.json) if args.json else None if args.quick else _default_result_path(result["sources"])
        if target is not None:
            target.write_text(json.dumps(result, indent=2))
            print(f"wrote {target}")
        raise SystemExit(0)
    if args.write_mosaic:
        from remote_samsing.cluster import ClusterConfig, make_client

        with make_client(ClusterConfig(n_workers=args.n_workers, dashboard=False), needs_gpu=False):
            target = args.write_mosaic if "://" in args.write_mosaic else Path(args.write_mosaic)
            _synthetic_zarr(target, sides[0], args.tile)
        raise SystemExit(0)
    if args.store and not args.child:
        stores = args.store.split(",")
        if not set(stores) <= {"s3", "gs", "az"}:
            ap.error(f"--store takes s3, gs, az or a list of them, not {args.store!r}")
        code = _code_version()
        result = run_store(sides or ([2000, 4000] if args.quick else [10000, 20000]), stores=stores,
                           server=args.server, tile=args.tile, n_workers=args.n_workers)
        result["command"] = "python -m benchmarks.bench_pipeline " + " ".join(sys.argv[1:])
        result["code"] = code
        # the recorded result (the stores and server it ran on are in it); a --quick run replaces none
        target = Path(args.json) if args.json else None if args.quick else result_path("pipeline-store")
        if target is not None:
            target.write_text(json.dumps(result, indent=2))
            print(f"wrote {target}")
        raise SystemExit(0)
    result = run(args.quick, sizes=sides, tile=args.tile, n_workers=args.n_workers, fresh=not args.one_process,
                 child=args.child, store=args.store)
    text = json.dumps(result, indent=2)
    if not args.child:
        print(text)
    if args.json:
        Path(args.json).write_text(text)
