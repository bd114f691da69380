"""Mosaics and OUTDIRs on object stores: S3 (moto's server), GCS (fake-gcs-server) and Azure Blob
(Azurite), each a real server on loopback reached through its standard variables only (no mock of any
client library; see loopback_stores.py). What holds for every store is tested on each of them."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import rasterio
from loopback_stores import BUCKET, MotoS3, use_store

#: The loopback S3 store's secret key: it must never show up in a product, a log or a pickled task.
SECRET = MotoS3.secret


@pytest.fixture
def s3(loopback_stores, monkeypatch):
    """The loopback S3 store, reached through the AWS variables only."""
    return use_store(loopback_stores("s3"), monkeypatch)


@pytest.fixture
def store(s3):
    """``(AWS variables, boto3 client)`` of the loopback S3 store, for the tests of S3 alone."""
    return s3.env, s3.client


@pytest.fixture
def aws_env(s3):
    return s3.env


def _segment(src, out, *extra, cwd=None, env=None):
    return subprocess.run([sys.executable, "-m", "remote_samsing", "segment", str(src), str(out),
                           "--segmenter", "felzenszwalb", "--tile-size", "128", "--padding", "16",
                           "--n-workers", "1", "--no-progress", *extra], capture_output=True, text=True, timeout=300,
                          cwd=cwd, env=env)


def _assert_same_products(got, expected):
    """labels.zarr, labels.tif (a valid COG, same pixels and georeferencing) and segments.parquet equal."""
    import geopandas as gpd
    from rio_cogeo.cogeo import cog_validate

    import remote_samsing as rs

    np.testing.assert_array_equal(rs.open_labels(got / "labels.zarr").values,
                                  rs.open_labels(expected / "labels.zarr").values)
    assert cog_validate(str(got / "labels.tif"))[0]
    with rasterio.open(got / "labels.tif") as a, rasterio.open(expected / "labels.tif") as b:
        np.testing.assert_array_equal(a.read(1), b.read(1))
        assert a.crs == b.crs and a.transform == b.transform
    ga, gb = gpd.read_parquet(got / "segments.parquet"), gpd.read_parquet(expected / "segments.parquet")
    assert ga.geometry.equals(gb.geometry) and ga.crs == gb.crs and len(ga) > 10


@pytest.mark.timeout(300)
def test_a_mosaic_on_s3_segments_as_the_local_file_does(tmp_path, data_dir, store, aws_env):
    _, s3 = store
    scene = data_dir / "kampala_crop_3857.tif"
    s3.upload_file(str(scene), "mosaics", "scene.tif")
    r = _segment("s3://mosaics/scene.tif", tmp_path / "remote")
    assert r.returncode == 0, r.stderr[-3000:]
    assert _segment(scene, tmp_path / "local").returncode == 0
    with rasterio.open(tmp_path / "remote" / "labels.tif") as a, rasterio.open(tmp_path / "local" / "labels.tif") as b:
        np.testing.assert_array_equal(a.read(1), b.read(1))
        assert a.crs == b.crs and a.transform == b.transform
    import geopandas as gpd

    ga = gpd.read_parquet(tmp_path / "remote" / "segments.parquet")
    gb = gpd.read_parquet(tmp_path / "local" / "segments.parquet")
    assert ga.geometry.equals(gb.geometry) and ga.crs == gb.crs
    import json

    rec = json.loads((tmp_path / "remote" / "run.json").read_text())
    assert rec["complete"] and rec["input"]["path"] == "s3://mosaics/scene.tif"
    # no secret in the products, the log, or what the block tasks carry to the workers
    assert not any(SECRET.encode() in f.read_bytes() for f in (tmp_path / "remote").rglob("*") if f.is_file())
    assert SECRET not in r.stdout + r.stderr
    import pickle

    import remote_samsing as rs
    from remote_samsing.io import window_reader

    reader = window_reader(rs.open_mosaic("s3://mosaics/scene.tif"))
    assert reader is not None and SECRET.encode() not in pickle.dumps(reader)


def test_bad_store_inputs_are_one_line_errors_before_any_cluster(tmp_path, aws_env):
    r = _segment("ftp://mosaics/scene.tif", tmp_path / "a")
    assert r.returncode == 2 and r.stderr.startswith("error: unsupported URL scheme `ftp://`")
    r = _segment("s3://mosaics/missing.tif", tmp_path / "b")
    assert r.returncode == 2 and r.stderr.startswith("error: cannot read raster `s3://mosaics/missing.tif`")
    assert "Traceback" not in r.stderr and "dashboard" not in r.stderr and "AWS_ENDPOINT_URL" in r.stderr
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_an_unreachable_store_or_missing_credentials_is_a_one_line_error(tmp_path, aws_env, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    r = _segment("s3://mosaics/scene.tif", tmp_path / "a")
    assert r.returncode == 2 and r.stderr.startswith("error: cannot read raster") and "connect" in r.stderr
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    r = _segment("s3://mosaics/scene.tif", tmp_path / "b")
    assert r.returncode == 2 and r.stderr.startswith("error: cannot read raster") and "AWS_SECRET_ACCESS_KEY" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.timeout(300)
def test_ingest_writes_a_zarr_mosaic_to_s3_that_segments_as_the_local_one(tmp_path, data_dir, store, aws_env):
    """`ingest` onto the store (in place, marked complete last), then `segment` from it."""
    scene = data_dir / "kampala_crop_3857.tif"
    for target in ("s3://mosaics/scene.zarr", tmp_path / "scene.zarr"):
        r = subprocess.run([sys.executable, "-m", "remote_samsing", "ingest", str(scene), str(target),
                            "--tile-size", "128"], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr[-2000:]
    r = _segment("s3://mosaics/scene.zarr", tmp_path / "remote", "--no-vectors")
    assert r.returncode == 0, r.stderr[-3000:]
    assert _segment(tmp_path / "scene.zarr", tmp_path / "local", "--no-vectors").returncode == 0
    with rasterio.open(tmp_path / "remote" / "labels.tif") as a, rasterio.open(tmp_path / "local" / "labels.tif") as b:
        np.testing.assert_array_equal(a.read(1), b.read(1))
        assert a.crs == b.crs and a.transform == b.transform
    # the store exists now: ingest refuses to replace it unless told to
    r = subprocess.run([sys.executable, "-m", "remote_samsing", "ingest", str(scene), "s3://mosaics/scene.zarr"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "already exists" in r.stderr


def test_a_zarr_store_without_the_complete_mark_is_refused(tmp_path, data_dir, store, aws_env):
    """What an ingest that died half-way leaves on a store (no rename there) is never read as a mosaic."""
    import remote_samsing as rs

    _, s3 = store
    arr = rs.open_mosaic(data_dir / "kampala_crop_3857.tif", chunks=128)
    arr.attrs = {}
    arr.to_dataset(name="mosaic").to_zarr(tmp_path / "half.zarr", zarr_format=3, consolidated=False)
    for f in (tmp_path / "half.zarr").rglob("*"):
        if f.is_file():
            s3.upload_file(str(f), "mosaics", f"half.zarr/{f.relative_to(tmp_path / 'half.zarr').as_posix()}")
    r = _segment("s3://mosaics/half.zarr", tmp_path / "out")
    assert r.returncode == 2 and "is not a complete mosaic" in r.stderr and "Traceback" not in r.stderr


class _RangeHandler:
    """A static file server that answers HTTP range requests, as web servers and CDNs do (GDAL's
    /vsicurl/ reads a COG by ranges)."""

    @staticmethod
    def make(root):
        import http.server
        import re

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *a, **k):
                super().__init__(*a, directory=str(root), **k)

            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):  # noqa: N802 - the http.server interface
                m = re.match(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
                path = root / self.path.lstrip("/")
                if not m or not path.is_file():
                    return super().do_GET()
                data = path.read_bytes()
                start = int(m.group(1))
                end = min(int(m.group(2)) if m.group(2) else len(data) - 1, len(data) - 1)
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
                self.send_header("Content-Length", str(end - start + 1))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                self.wfile.write(data[start : end + 1])

        return Handler


def _certificate_for_loopback(folder):
    """A self-signed certificate for 127.0.0.1 and its key, as PEM files; the certificate is its own CA."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = folder / "loopback.pem", folder / "loopback.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


@pytest.mark.timeout(300)
def test_a_cog_on_a_web_server_segments_as_the_local_file_does(tmp_path, data_dir):
    """An https:// COG on a loopback server with its own certificate, trusted through GDAL's
    GDAL_CURL_CA_BUNDLE, read in ranges as from any web server."""
    import http.server
    import os
    import shutil
    import ssl
    import threading

    pytest.importorskip("cryptography")
    site = tmp_path / "site"
    site.mkdir()
    shutil.copy(data_dir / "kampala_crop_3857.tif", site / "scene.tif")
    cert, key = _certificate_for_loopback(tmp_path)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RangeHandler.make(site))
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    server.socket = tls.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"https://127.0.0.1:{server.server_address[1]}/scene.tif"
        r = _segment(url, tmp_path / "remote", "--no-vectors", env={**os.environ, "GDAL_CURL_CA_BUNDLE": str(cert)})
        assert r.returncode == 0, r.stderr[-3000:]
        untrusted = _segment(url, tmp_path / "untrusted", "--no-vectors",
                             env={k: v for k, v in os.environ.items() if not k.endswith("CURL_CA_BUNDLE")})
    finally:
        server.shutdown()
    # without the certificate trusted, the input is refused before any cluster, in one line
    assert untrusted.returncode == 2 and untrusted.stderr.startswith("error: cannot read raster `https://")
    assert "Traceback" not in untrusted.stderr and not (tmp_path / "untrusted").exists()
    assert _segment(site / "scene.tif", tmp_path / "local", "--no-vectors").returncode == 0
    with rasterio.open(tmp_path / "remote" / "labels.tif") as a, rasterio.open(tmp_path / "local" / "labels.tif") as b:
        np.testing.assert_array_equal(a.read(1), b.read(1))
        assert a.crs == b.crs and a.transform == b.transform
    rec = json.loads((tmp_path / "remote" / "run.json").read_text())
    assert rec["complete"] and rec["input"]["path"] == url


@pytest.fixture(scope="module")
def local_run(tmp_path_factory, data_dir):
    """The bundled scene segmented into a local OUTDIR: what a run on any store must equal."""
    out = tmp_path_factory.mktemp("local") / "out"
    r = _segment(data_dir / "kampala_crop_3857.tif", out)
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def _run_json(store, prefix: str) -> dict:
    return json.loads(store.get(f"{prefix}/run.json"))


@pytest.mark.timeout(600)
@pytest.mark.parametrize(("any_store", "source"), [("s3", "store"), ("s3", "local"), ("gs", "store"),
                                                   ("az", "store")], indirect=["any_store"])
def test_outputs_on_a_store_equal_a_local_run_and_nothing_stays_on_local_disk(tmp_path, data_dir, local_run,
                                                                               any_store, source):
    """Input and OUTDIR on the store: every product equals a local run's, run.json is complete, and the
    run leaves nothing on local disk (its working directory and its temporary folder stay empty)."""
    import os

    import remote_samsing as rs

    store = any_store
    scene = data_dir / "kampala_crop_3857.tif"
    store.upload(scene, f"{BUCKET}/scene.tif")
    src = store.url(f"{BUCKET}/scene.tif") if source == "store" else scene
    out = store.url(f"{BUCKET}/out-{source}")
    cwd, tmp = tmp_path / "cwd", tmp_path / "tmp"
    cwd.mkdir()
    tmp.mkdir()
    r = _segment(src, out, cwd=cwd, env={**os.environ, "TMPDIR": str(tmp)})
    assert r.returncode == 0, r.stderr[-3000:]
    # the store clients are closed before the process ends: no line of theirs follows the run's
    assert "Traceback" not in r.stderr and "Unclosed client session" not in r.stderr, r.stderr[-3000:]
    left = [p for p in [*cwd.rglob("*"), *tmp.rglob("*")] if p.is_file()]
    assert all(p.parent.name == "dask-scratch-space" and p.suffix == ".lock" for p in left), left  # Dask's own
    names = store.download(f"{BUCKET}/out-{source}", tmp_path / "got")
    assert {"labels.tif", "segments.parquet", "run.json", "merge_faces.json"} <= set(names)
    assert not any(".partial" in n or "write-check" in n for n in names)  # no partial product or probe left
    _assert_same_products(tmp_path / "got", local_run)
    rec = json.loads((tmp_path / "got" / "run.json").read_text())
    assert rec["complete"] and rec["blocks_segmented_this_run"] == rec["tiling"]["n_blocks"]
    assert rec["input"]["path"] == str(src)
    if store.secret:
        assert not any(store.secret.encode() in (tmp_path / "got" / n).read_bytes() for n in names)
        assert store.secret not in r.stdout + r.stderr
    # the same command again: up to date, nothing recomputed; the products read straight from the store
    again = _segment(src, out)
    assert again.returncode == 0 and "up to date" in again.stdout, again.stderr[-2000:]
    np.testing.assert_array_equal(rs.open_labels(f"{out}/labels.zarr").values,
                                  rs.open_labels(local_run / "labels.zarr").values)


@pytest.mark.timeout(600)
def test_crash_and_resume_with_the_staging_on_the_store(tmp_path, any_store, monkeypatch):
    """The CLI and its workers SIGKILLed once half the blocks are staged on the store; the same
    command again segments only the missing blocks (run.json and the segmenter's call log agree) and
    the products equal a local undisturbed run's bit for bit. The killed run's local spill folder is
    left in the temporary folder; the resumed run removes it with its own."""
    import test_distributed as td

    import remote_samsing as rs
    from remote_samsing.testing import count_calls

    store = any_store
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))
    image = td._write_image(tmp_path / "blobs.tif")
    rc, out = td._run(td._segment_cmd(image, tmp_path / "local", "--n-workers", "2"), tmp_path / "local.log")
    assert rc == 0, out
    calls, half = tmp_path / "calls", td.N_BLOCKS // 2
    cmd = td._segment_cmd(image, store.url(f"{BUCKET}/crash"), "--n-workers", "2", delay=td.DELAY, log_dir=calls)
    crashed = td._start(cmd, tmp_path / "crashed.log", hold_after=half)
    try:
        td._wait_until(lambda: store.count(f"{BUCKET}/crash/staging/blocks/") >= half, crashed, 180,
                       f"{half} blocks staged on the store")
    finally:
        td._kill_tree(crashed)
    assert _run_json(store, f"{BUCKET}/crash")["complete"] is False
    assert len(list(tmp.glob("remote-samsing-merge-*"))) == 1
    staged, calls_before = store.count(f"{BUCKET}/crash/staging/blocks/"), count_calls(calls)
    assert half <= staged < td.N_BLOCKS and calls_before >= staged

    rc, out = td._run(cmd, tmp_path / "resumed.log")
    assert rc == 0, out
    rec = _run_json(store, f"{BUCKET}/crash")
    assert rec["complete"] is True and rec["resumed"] is True
    assert rec["blocks_segmented_this_run"] == td.N_BLOCKS - staged
    assert count_calls(calls) - calls_before == td.N_BLOCKS - staged
    assert not list(tmp.glob("remote-samsing-merge-*"))
    np.testing.assert_array_equal(rs.open_labels(store.url(f"{BUCKET}/crash/labels.zarr")).values,
                                  rs.open_labels(tmp_path / "local" / "labels.zarr").values)
    store.download(f"{BUCKET}/crash", tmp_path / "got")
    with rasterio.open(tmp_path / "got" / "labels.tif") as a, rasterio.open(tmp_path / "local" / "labels.tif") as b:
        np.testing.assert_array_equal(a.read(1), b.read(1))


@pytest.mark.timeout(300)
def test_the_merge_spills_on_local_disk_only_when_every_worker_runs_on_this_machine(tmp_path, data_dir, s3,
                                                                                     monkeypatch):
    """OUTDIR on S3: with the client of a ``LocalCluster`` the merge's spill folder is a local temporary
    folder (under Dask's ``temporary-directory``); with a client connected by address, or without room
    in the temporary folder (said in one line), it is ``staging/merge`` on the store. Seen as the merge
    starts, each holds the staged summaries; the products are the same and nothing of the spill is
    left, locally or on the store."""
    import dask
    from distributed import Client, LocalCluster

    import remote_samsing as rs
    import remote_samsing.pipeline
    from remote_samsing.config import RunConfig

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    cfg = RunConfig(segmenter="felzenszwalb", tile_size=128, padding=16, vectors=False, progress=False)
    seen, said = {}, []

    def run(name, client):
        def log(line):
            said.append(line)
            if line.startswith("merging"):  # every block staged, its summary spilled
                local = [p for p in scratch.glob("remote-samsing-merge-*/**/*") if p.is_file()]
                seen[name] = (len(local), s3.count(f"{BUCKET}/{name}/staging/merge/"))
        rs.run(data_dir / "kampala_crop_3857.tif", s3.url(f"{BUCKET}/{name}"), config=cfg, client=client, log=log)

    with dask.config.set({"temporary-directory": str(scratch)}), \
            LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        with Client(cluster) as c:
            run("local-spill", c)
            assert not any("spills on the store" in line for line in said)
            monkeypatch.setattr(remote_samsing.pipeline, "free_bytes", lambda folder: 1000)
            run("no-room", c)
            assert sum(f"`{scratch}` has 0.98 kiB free" in line for line in said) == 1, said
        with Client(cluster.scheduler_address) as c:
            run("by-address", c)
    n_blocks = json.loads(s3.get(f"{BUCKET}/local-spill/run.json"))["tiling"]["n_blocks"]
    assert seen["local-spill"][0] >= n_blocks and seen["local-spill"][1] == 0
    assert seen["no-room"][0] == 0 and seen["no-room"][1] >= n_blocks
    assert seen["by-address"][0] == 0 and seen["by-address"][1] >= n_blocks
    assert not list(scratch.glob("remote-samsing-merge-*"))
    expected = rs.open_labels(s3.url(f"{BUCKET}/local-spill/labels.zarr")).values
    for name in ("local-spill", "no-room", "by-address"):
        assert not s3.keys(f"{BUCKET}/{name}/staging/merge/")
        np.testing.assert_array_equal(rs.open_labels(s3.url(f"{BUCKET}/{name}/labels.zarr")).values, expected)


@pytest.fixture
def storeonly_cluster(tmp_path, aws_env):
    """``dask scheduler`` + two ``dask worker`` processes, each started in its own empty directory
    (they share no folder with the client or each other); no nanny, so a killed worker stays dead."""
    import json
    import os
    import time

    import test_distributed as td

    dirs = {name: tmp_path / name for name in ("scheduler", "w1", "w2")}
    for d in dirs.values():
        d.mkdir()
    sched_file = dirs["scheduler"] / "scheduler.json"

    def start(cmd, name):
        log = tmp_path / f"{name}.log"
        fh = open(log, "ab")  # noqa: SIM115 - closed by td._close_log/_kill_tree
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True, cwd=dirs[name],
                                env={**os.environ, "TMPDIR": str(dirs[name])})
        proc._log_handle, proc._log_path = fh, log
        return proc

    procs = [start([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0",
                    "--no-dashboard", "--dashboard-address", "127.0.0.1:0", "--scheduler-file", str(sched_file)],
                   "scheduler")]
    try:
        t0 = time.monotonic()
        while not sched_file.exists() or not sched_file.read_text().strip():
            assert procs[0].poll() is None and time.monotonic() - t0 < 60, td._close_log(procs[0])
            time.sleep(0.05)
        address = json.loads(sched_file.read_text())["address"]
        for name in ("w1", "w2"):
            procs.append(start([sys.executable, "-m", "distributed.cli.dask_worker", address, "--name", name,
                                "--nthreads", "1", "--no-nanny", "--no-dashboard", "--host", "127.0.0.1",
                                "--death-timeout", "60", "--local-directory", str(dirs[name])], name))
        from distributed import Client

        with Client(address, timeout="30s") as c:
            c.wait_for_workers(2, timeout=60)
        yield {"address": address, "workers": {"w1": procs[1], "w2": procs[2]}, "dirs": dirs}
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                td._kill_tree(p)
            else:
                td._close_log(p)


@pytest.mark.timeout(600)
def test_worker_loss_on_a_cluster_sharing_no_disk(tmp_path, s3, storeonly_cluster):
    """Input and output on the store, workers in directories of their own: one worker SIGKILLed
    mid-run, the run completes on the other with labels equal to a local undisturbed run's, and no
    worker's directory holds any product or state."""
    import os
    import signal

    import test_distributed as td

    import remote_samsing as rs

    image = td._write_image(tmp_path / "blobs.tif")
    s3.upload(image, f"{BUCKET}/blobs.tif")
    rc, out = td._run(td._segment_cmd(image, tmp_path / "local", "--n-workers", "2"), tmp_path / "local.log")
    assert rc == 0, out
    client_dir = tmp_path / "client"
    client_dir.mkdir()
    cmd = td._segment_cmd("s3://mosaics/blobs.tif", "s3://mosaics/lost", "--scheduler", storeonly_cluster["address"],
                          delay=td.DELAY)
    log = open(tmp_path / "run.log", "ab")  # noqa: SIM115
    run = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=client_dir,
                           env={**os.environ, "TMPDIR": str(client_dir)})
    run._log_handle, run._log_path = log, tmp_path / "run.log"
    try:
        td._wait_until(lambda: s3.count(f"{BUCKET}/lost/staging/blocks/") >= 3, run, 120, "3 staged blocks")
        victim = storeonly_cluster["workers"]["w1"]
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=15)
        assert run.poll() is None, "the run finished before the worker was killed: not a mid-run loss"
        assert s3.count(f"{BUCKET}/lost/staging/blocks/") < td.N_BLOCKS
        rc, out = td._finish(run, 240)
    finally:
        if run.poll() is None:
            td._kill_tree(run)
    assert rc == 0, out
    assert _run_json(s3, f"{BUCKET}/lost")["complete"] is True
    np.testing.assert_array_equal(rs.open_labels("s3://mosaics/lost/labels.zarr").values,
                                  rs.open_labels(tmp_path / "local" / "labels.zarr").values)
    for d in [client_dir, *storeonly_cluster["dirs"].values()]:
        files = [p for p in d.rglob("*") if p.is_file()]
        assert not any(p.suffix in (".zarr", ".tif", ".json", ".pkl", ".parquet", ".npz") and p.name != "scheduler.json"
                       for p in files), files


#: Nothing listens there: the endpoint of a store that cannot be reached.
_DEAD = "http://127.0.0.1:9"


@pytest.mark.timeout(300)
def test_bad_store_outputs_are_one_line_errors_before_any_cluster(tmp_path, data_dir, any_store, monkeypatch):
    """A bucket's root, a missing bucket (container), an unreachable store and missing credentials
    are each refused in one line naming the store's own variables, before any cluster starts, with
    nothing written."""
    import os

    store, scheme = any_store, any_store.scheme
    scene = data_dir / "kampala_crop_3857.tif"

    def refused(out, start, env=None):
        r = _segment(scene, out, env=None if env is None else {**os.environ, **env})
        assert r.returncode == 2 and r.stderr.startswith(start), r.stderr[-2000:]
        assert r.stderr.count("\n") <= 2 and "Traceback" not in r.stderr and "dashboard" not in r.stderr
        return r.stderr

    refused(f"{scheme}://{BUCKET}", f"error: OUTDIR `{scheme}://{BUCKET}` is a bucket's root")  # --overwrite: all
    err = refused(f"{scheme}://no-such-bucket/out", f"error: cannot write to `{scheme}://no-such-bucket/out`")
    assert "bucket" in err or "container" in err
    if scheme == "s3":  # the same path on every store, and gcsfs retries for a minute before it gives up
        refused(f"{scheme}://{BUCKET}/elsewhere", f"error: cannot write to `{scheme}://{BUCKET}/elsewhere`",
                env={"AWS_ENDPOINT_URL": _DEAD})
    for name in store.env:  # what a user with no credentials has
        monkeypatch.delenv(name)
    if scheme == "s3":
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
        monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
        monkeypatch.setenv("AWS_ENDPOINT_URL", store.env["AWS_ENDPOINT_URL"])
    if scheme != "gs":  # an emulator takes no credentials, and without it GCS is off this machine
        err = refused(f"{scheme}://{BUCKET}/nocreds", f"error: cannot write to `{scheme}://{BUCKET}/nocreds`")
        assert {"s3": "AWS_SECRET_ACCESS_KEY", "az": "AZURE_STORAGE_CONNECTION_STRING"}[scheme] in err
    assert not store.keys(f"{BUCKET}/elsewhere") and not store.keys(f"{BUCKET}/nocreds")


@pytest.mark.timeout(300)
def test_an_outdir_holding_another_run_is_refused_unless_overwritten(tmp_path, data_dir, s3):
    """An OUTDIR on the store holding a run of another configuration is refused in one line before any
    cluster starts; --overwrite replaces that run."""
    scene = data_dir / "kampala_crop_3857.tif"
    assert _segment(scene, "s3://mosaics/other", "--no-vectors").returncode == 0
    r = _segment(scene, "s3://mosaics/other", "--no-vectors", "--tile-size", "96")
    assert r.returncode == 2 and "holds a run with a different configuration" in r.stderr and "tile_size" in r.stderr
    assert "dashboard" not in r.stderr
    r = _segment(scene, "s3://mosaics/other", "--no-vectors", "--tile-size", "96", "--overwrite")
    assert r.returncode == 0, r.stderr[-2000:]
    assert _run_json(s3, f"{BUCKET}/other")["parameters"]["tile_size"] == 96


def test_listings_on_the_store_are_never_stale(any_store):
    """fsspec caches listings for a process's life; what other processes (workers, an earlier run)
    write must show in the next listing (block markers, spill files)."""
    from remote_samsing._files import list_names

    folder = any_store.url(f"{BUCKET}/listing")
    any_store.put(f"{BUCKET}/listing/a", b"")
    assert list_names(folder) == {"a"}
    any_store.put(f"{BUCKET}/listing/b", b"")  # written by someone else
    assert list_names(folder) == {"a", "b"}
    # a folder's own marker object (SeaweedFS keeps one once an object under it is removed) is no entry,
    # so an OUTDIR holding only its marker counts as empty
    any_store.put(f"{BUCKET}/marked/", b"")
    assert list_names(any_store.url(f"{BUCKET}/marked")) == set()


def test_a_failed_upload_is_an_error_and_leaves_nothing_locally(any_store, tmp_path, monkeypatch):
    """Every product reaches the store through fsspec from a local file or memory: an upload the store
    refuses (here, to a bucket that does not exist) raises, whole files and groups alike, and the local
    temporary file is gone."""
    import rasterio

    from remote_samsing._files import write_atomic, write_bytes, write_many

    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # TMPDIR read again
    missing = any_store.url("no-such-bucket/run")

    def cog(tmp):
        with rasterio.open(tmp, "w", driver="COG", width=16, height=16, count=1, dtype="uint8") as dst:
            dst.write(np.ones((1, 16, 16), np.uint8))

    with pytest.raises(Exception):  # noqa: B017, PT011 - each store's library raises its own type
        write_atomic(f"{missing}/labels.tif", cog)
    with pytest.raises(Exception):  # noqa: B017, PT011
        write_bytes(f"{missing}/run.json", b"{}")
    with pytest.raises(Exception):  # noqa: B017, PT011
        write_many((f"{missing}/spill/{i}", b"x") for i in range(3))
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


@pytest.mark.timeout(300)
def test_credentials_that_may_not_write_there_are_a_one_line_error_before_any_cluster(tmp_path, data_dir):
    """A server that checks permissions (moto with IAM enforced after its first four requests, which
    set up the bucket and a read-only user): writing to OUTDIR is refused before any cluster."""
    import os
    import socket
    import time

    import boto3

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "4"},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        endpoint = f"http://127.0.0.1:{port}"
        boot = dict(aws_access_key_id="boot", aws_secret_access_key="boot", region_name="us-east-1",
                    endpoint_url=endpoint)
        for _ in range(100):  # the server is starting
            try:
                boto3.client("s3", **boot).create_bucket(Bucket="locked")
                break
            except Exception:  # noqa: BLE001 - not listening yet
                time.sleep(0.1)
        iam = boto3.client("iam", **boot)
        iam.create_user(UserName="reader")
        read_only = {"Version": "2012-10-17",
                     "Statement": [{"Effect": "Allow", "Action": ["s3:GetObject", "s3:ListBucket"], "Resource": "*"}]}
        iam.put_user_policy(UserName="reader", PolicyName="read", PolicyDocument=json.dumps(read_only))
        key = iam.create_access_key(UserName="reader")["AccessKey"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(AWS_ACCESS_KEY_ID=key["AccessKeyId"], AWS_SECRET_ACCESS_KEY=key["SecretAccessKey"],
                   AWS_REGION="us-east-1", AWS_ENDPOINT_URL=endpoint)
        r = _segment(data_dir / "kampala_crop_3857.tif", "s3://locked/out", env=env)
    finally:
        server.kill()
        server.wait()
    assert r.returncode == 2
    assert r.stderr.startswith("error: cannot write to `s3://locked/out`: PermissionError: Access Denied")
    assert "may write there" in r.stderr and "Traceback" not in r.stderr and "dashboard" not in r.stderr
    assert key["SecretAccessKey"] not in r.stderr


@pytest.mark.timeout(300)
def test_an_azure_sas_that_may_only_read_is_a_one_line_error_before_any_cluster(data_dir, loopback_stores):
    """Azurite checks a SAS's permissions: with a connection string whose SAS may read and list but not
    write, writing to OUTDIR is refused before any cluster, the SAS never printed, nothing written."""
    import os

    store = loopback_stores("az")
    read_only = store.sas_connection_string(read=True, list=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AZURE_")}
    env["AZURE_STORAGE_CONNECTION_STRING"] = read_only
    r = _segment(data_dir / "kampala_crop_3857.tif", f"az://{BUCKET}/sas-read-only", env=env)
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.startswith(f"error: cannot write to `az://{BUCKET}/sas-read-only`"), r.stderr[-2000:]
    assert r.stderr.count("\n") <= 2 and "Traceback" not in r.stderr and "dashboard" not in r.stderr
    assert read_only.split("SharedAccessSignature=")[1] not in r.stderr
    assert not store.keys(f"{BUCKET}/sas-read-only")


@pytest.mark.timeout(600)
def test_tiles_on_s3_by_glob_and_by_list_segment_as_the_single_file(tmp_path, data_dir, s3):
    """A 2 x 3 grid of tiles on the store, named by a quoted glob (local OUTDIR) and by an @list that
    itself lies on the store (OUTDIR on the store, so the tile index goes there too)."""
    from remote_samsing.testing import cut_tiles

    scene = data_dir / "neon_osbs.tif"
    tiles = cut_tiles(scene, tmp_path / "tiles", rows=2, cols=3)
    for t in tiles:
        s3.upload(t, f"{BUCKET}/tiles/{t.name}")
    s3.put(f"{BUCKET}/tiles.txt", "\n".join(f"tiles/{t.name}" for t in tiles).encode())
    assert _segment(scene, tmp_path / "local").returncode == 0
    by_glob = _segment("s3://mosaics/tiles/*.tif", tmp_path / "glob")
    assert by_glob.returncode == 0, by_glob.stderr[-3000:]
    _assert_same_products(tmp_path / "glob", tmp_path / "local")
    rec = json.loads((tmp_path / "glob" / "run.json").read_text())
    assert len(rec["input"]["sources"]) == 6 and all(s["etag"] for s in rec["input"]["sources"])
    assert rec["input"]["sources"][0]["location"] == "s3://mosaics/tiles/tile_0_0.tif"
    by_list = _segment("@s3://mosaics/tiles.txt", "s3://mosaics/out-list")
    assert by_list.returncode == 0, by_list.stderr[-3000:]
    names = s3.download(f"{BUCKET}/out-list", tmp_path / "list")
    assert "sources.gti.gpkg" in names
    _assert_same_products(tmp_path / "list", tmp_path / "local")
    # a tile replaced on the store: only its blocks are segmented again, and the products equal a fresh run
    s3.upload(tiles[1], f"{BUCKET}/tiles/tile_0_0.tif")
    again = _segment("s3://mosaics/tiles/*.tif", tmp_path / "glob")
    assert again.returncode == 0 and "up to date" not in again.stdout, again.stderr[-3000:]
    rec = json.loads((tmp_path / "glob" / "run.json").read_text())
    assert [c["change"] for c in rec["sources_changed"]] == ["edited"]
    assert 0 < rec["blocks_segmented_this_run"] < rec["tiling"]["n_blocks"]
    fresh = _segment("s3://mosaics/tiles/*.tif", tmp_path / "fresh")
    assert fresh.returncode == 0
    _assert_same_products(tmp_path / "glob", tmp_path / "fresh")


def test_remove_tree_removes_a_large_folder_on_every_store_and_nothing_beside_it(any_store):
    """A nested folder of more objects than one group of deletions (on Azure: one Blob Batch request)
    goes whole, and an object beside it stays."""
    from remote_samsing._files import _GROUP, remove_tree, write_many

    folder = any_store.url(f"{BUCKET}/removed/spill")
    write_many([(f"{folder}/{k % 7}/f_{k}.bin", b"x") for k in range(2 * _GROUP + 5)]
               + [(any_store.url(f"{BUCKET}/removed/spill2/kept"), b"y")])
    remove_tree(folder)
    assert any_store.keys(f"{BUCKET}/removed/") == ["removed/spill2/kept"]


@pytest.mark.parametrize("sas", [None, {"read": True, "list": True, "delete": True}])
def test_an_azure_folder_goes_in_blob_batches_or_blob_by_blob_where_they_are_refused(loopback_stores, monkeypatch,
                                                                                      sas):
    """With the account key a group of blobs goes in one Blob Batch request; a SAS that may delete but
    not write may not send batches (Azurite answers them with a 500), so the blobs go one by one, and
    the folder goes whole either way."""
    from adlfs import AzureBlobFileSystem

    from remote_samsing._files import _remove_blob_batch, location, remove_tree

    store = use_store(loopback_stores("az"), monkeypatch)
    keys = [f"batch/{k % 3}/f_{k}" for k in range(300)]
    for key in keys:
        store.put(f"{BUCKET}/{key}", b"x")
    if sas:
        monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", store.sas_connection_string(**sas))
    AzureBlobFileSystem.clear_instance_cache()  # fsspec keeps one per set of arguments, not per variable
    try:
        p = location(store.url(f"{BUCKET}/batch"))
        assert _remove_blob_batch(p.fs, [f"{BUCKET}/{k}" for k in keys[:3]]) is (sas is None)
        assert len(store.keys(f"{BUCKET}/batch/")) == len(keys) - (3 if sas is None else 0)
        remove_tree(p)
        assert store.keys(f"{BUCKET}/batch/") == []
    finally:
        AzureBlobFileSystem.clear_instance_cache()


@pytest.mark.parametrize("scheme", ["s3", "az"])
def test_the_blocks_objects_go_through_obstore_under_the_names_given(scheme, loopback_stores, monkeypatch):
    """Whole objects (markers, spill files) and the blocks' Zarr arrays on S3 and Azure go through obstore:
    "[", "*", "?", " " and "%" in a name are characters of the key, the order asked is kept, a missing
    object is a FileNotFoundError naming it; an array written through obstore reads back through fsspec."""
    import zarr
    from zarr.storage import ObjectStore

    from remote_samsing import _objects
    from remote_samsing._files import open_zarr_array, read_bytes, read_many, write_bytes, write_many

    store = use_store(loopback_stores(scheme), monkeypatch)
    called = []
    for name in ("get", "put", "get_many", "put_many"):
        monkeypatch.setattr(_objects, name, lambda *a, _f=getattr(_objects, name), _n=name: called.append(_n) or _f(*a))
    names = ["b_0_1.pkl", "a[1].pkl", "c*?.pkl", "d e%20.pkl"]
    base = store.url(f"{BUCKET}/obstore")
    write_many((f"{base}/{n}", n.encode()) for n in names)
    write_bytes(f"{base}/one.json", b"{}")
    assert sorted(store.keys(f"{BUCKET}/obstore")) == sorted(f"obstore/{n}" for n in [*names, "one.json"])
    assert read_many([f"{base}/{n}" for n in names[::-1]]) == [n.encode() for n in names[::-1]]
    assert read_bytes(f"{base}/one.json") == b"{}"
    assert set(called) == {"get", "put", "get_many", "put_many"}
    with pytest.raises(FileNotFoundError, match=f"{base}/missing: "):
        read_many([f"{base}/a[1].pkl", f"{base}/missing"])
    zarr.create_array(f"{base}/z.zarr", shape=(4, 6), chunks=(2, 3), dtype="uint16", fill_value=0)
    z = open_zarr_array(f"{base}/z.zarr", mode="r+")
    assert isinstance(z.store, ObjectStore)
    z[2:4, 3:6] = np.arange(6, dtype=np.uint16).reshape(2, 3) + 1
    expected = np.zeros((4, 6), np.uint16)
    expected[2:4, 3:6] = np.arange(6).reshape(2, 3) + 1
    np.testing.assert_array_equal(zarr.open_array(f"{base}/z.zarr", mode="r")[:], expected)


@pytest.mark.timeout(300)
def test_ingest_onto_azure_ends_without_a_traceback(data_dir, loopback_stores, monkeypatch):
    """adlfs closes each client at exit on the event loop it was made on, which Zarr's exit hook stops
    first: the main process and the workers close them before, so `ingest` says only what it did."""
    import os

    store = use_store(loopback_stores("az"), monkeypatch)
    r = subprocess.run([sys.executable, "-m", "remote_samsing", "ingest", str(data_dir / "kampala_crop_3857.tif"),
                        store.url(f"{BUCKET}/ingested.zarr"), "--tile-size", "128"],
                       capture_output=True, text=True, timeout=240, env=dict(os.environ))
    assert r.returncode == 0, r.stderr[-2000:]
    assert not any(m in r.stderr for m in ("Traceback", "Loop is not running", "Unclosed client session")), \
        r.stderr[-2000:]
    assert any(k.endswith("zarr.json") for k in store.keys(f"{BUCKET}/ingested.zarr"))
