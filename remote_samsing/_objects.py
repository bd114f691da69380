"""Whole-object reads and writes on S3 and Azure Blob through obstore (https://github.com/developmentseed/obstore).

A run on a store moves a dozen small objects a block (its staging chunk,
marker, summary, spill files, label chunk, the mosaic's chunks). s3fs and
adlfs spend 2-3.5 ms of CPU on each request (botocore or the Azure SDK
builds, signs and parses it in Python), obstore's Rust client about a tenth
of that, and on a few cores that CPU is the run's. So these objects, and the
Zarr arrays the blocks read and write, go through obstore; listings,
deletions and the products' uploads, a few requests a run, stay on fsspec.
GCS stays on gcsfs, which costs about 0.5 ms a request.

Each client is configured from what its fsspec library reads:

* S3, from boto3's own chain (environment, shared files and profiles, SSO,
  container and instance roles): obstore's ``Boto3CredentialProvider`` gives
  the credentials, the same session the endpoint (``AWS_ENDPOINT_URL``,
  ``AWS_ENDPOINT_URL_S3`` or a profile's) and the region (``AWS_REGION``
  where boto3 has none); on AWS itself the bucket's own region, which s3fs
  follows by redirects.
* Azure, from ``AZURE_STORAGE_CONNECTION_STRING`` (key or SAS, its endpoint),
  else from ``AZURE_STORAGE_ACCOUNT_NAME`` with ``AZURE_STORAGE_ACCOUNT_KEY``,
  ``AZURE_STORAGE_SAS_TOKEN`` or, with neither, azure-identity's
  ``DefaultAzureCredential`` (managed identity, workload identity, the CLI).

Each process builds its clients once per bucket (container) and environment.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

__all__ = ["handles", "get", "get_many", "put", "put_many", "zarr_store"]

#: URL schemes served here, by kind of store.
_KIND = {"s3": "s3", "s3a": "s3", "az": "az", "abfs": "az", "abfss": "az"}
#: The environment variables each kind's settings come from.
_VARIABLES = {"s3": "AWS_", "az": "AZURE_"}
#: Requests one call has in flight at once (read_many/write_many groups).
_CONCURRENCY = 16
#: Retries of a request that failed for a reason that can pass (a connection error, a 5xx); what a
#: dead endpoint costs before it is said: about 3 s.
_RETRY = {"max_retries": 5, "backoff": {"init_backoff": timedelta(milliseconds=100), "max_backoff": timedelta(seconds=5),
                                         "base": 2}, "retry_timeout": timedelta(seconds=60)}

_CONFIGS: dict = {}
_STORES: dict = {}


def handles(protocol: str) -> bool:
    """Objects at URLs of ``protocol`` are read and written here."""
    return protocol in _KIND


def _split(path: str) -> tuple[str, str]:
    """``bucket/key`` (a UPath's ``path``) as (bucket, key)."""
    bucket, _, key = path.partition("/")
    return bucket, key


def _bucket_config(kind: str, bucket: str) -> dict:
    """The store settings of ``bucket``, from the variables this process's environment holds now."""
    prefix = _VARIABLES[kind]
    key = (kind, bucket, tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith(prefix))))
    cfg = _CONFIGS.get(key)
    if cfg is None:
        if len(_CONFIGS) > 64:
            _CONFIGS.clear()
        cfg = _CONFIGS[key] = {"retry_config": _RETRY, **(_s3_config if kind == "s3" else _azure_config)(bucket)}
    return cfg


def _s3_config(bucket: str) -> dict:
    import boto3
    from obstore.auth.boto3 import Boto3CredentialProvider

    session = boto3.Session()
    if session.get_credentials() is None:
        raise PermissionError("no AWS credentials found (Unable to locate credentials)")
    # boto3's region (AWS_DEFAULT_REGION, a profile's), else AWS_REGION, which GDAL and obstore read
    region = session.region_name or os.environ.get("AWS_REGION") or "us-east-1"
    client = session.client("s3", region_name=region)
    endpoint = client.meta.endpoint_url
    cfg = {"credential_provider": Boto3CredentialProvider(session)}
    if _host(endpoint).endswith("amazonaws.com"):
        cfg["config"] = {"region": _bucket_region(client, bucket) or region}
    else:  # an S3-compatible server: its endpoint as given, path-style
        cfg["config"] = {"region": region, "endpoint": endpoint}
        cfg["client_options"] = {"allow_http": endpoint.startswith("http://")}
    return cfg


def _host(url: str) -> str:
    return url.split("://", 1)[-1].split("/", 1)[0]


def _bucket_region(client, bucket: str) -> str | None:
    """The region AWS keeps ``bucket`` in (its ``x-amz-bucket-region`` answer, also to a refusal)."""
    from botocore.exceptions import ClientError

    try:
        meta = client.head_bucket(Bucket=bucket)["ResponseMetadata"]
    except ClientError as exc:
        meta = exc.response.get("ResponseMetadata", {})
    return meta.get("HTTPHeaders", {}).get("x-amz-bucket-region")


def _connection_string(text: str) -> dict:
    """Azure's ``Key=value;...`` connection string as a dict (keys as written; values keep their '=')."""
    return dict(part.split("=", 1) for part in text.split(";") if "=" in part)


def _azure_config(container: str) -> dict:
    env = os.environ
    if env.get("AZURE_STORAGE_CONNECTION_STRING"):
        parts = _connection_string(env["AZURE_STORAGE_CONNECTION_STRING"])
        if parts.get("UseDevelopmentStorage", "").lower() == "true":
            return {"config": {"use_emulator": True}, "client_options": {"allow_http": True}}
        config = {"account_name": parts.get("AccountName")}
        config.update({"account_key": parts["AccountKey"]} if "AccountKey" in parts else
                      {"sas_key": parts.get("SharedAccessSignature", "").lstrip("?")})
        endpoint = parts.get("BlobEndpoint")
        if not config["account_name"] and endpoint:  # a SAS connection string may name only the endpoint
            config["account_name"] = _host(endpoint).split(".", 1)[0]
    elif env.get("AZURE_STORAGE_ACCOUNT_NAME"):
        config = {"account_name": env["AZURE_STORAGE_ACCOUNT_NAME"]}
        endpoint = None
        if env.get("AZURE_STORAGE_ACCOUNT_KEY"):
            config["account_key"] = env["AZURE_STORAGE_ACCOUNT_KEY"]
        elif env.get("AZURE_STORAGE_SAS_TOKEN"):
            config["sas_key"] = env["AZURE_STORAGE_SAS_TOKEN"].lstrip("?")
        else:
            from obstore.auth.azure import AzureCredentialProvider

            return {"config": config, "credential_provider": AzureCredentialProvider()}
    else:
        raise PermissionError("no Azure credentials found (neither a connection string nor an account name)")
    cfg = {"config": config}
    if endpoint:
        cfg["config"]["endpoint"] = endpoint.rstrip("/")
        cfg["client_options"] = {"allow_http": endpoint.startswith("http://")}
    return cfg


def _store(kind: str, bucket: str, prefix: str = ""):
    from obstore.store import AzureStore, S3Store

    cfg = _bucket_config(kind, bucket)
    key = (kind, bucket, prefix, id(cfg))
    st = _STORES.get(key)
    if st is None:
        if len(_STORES) > 64:
            _STORES.clear()
        cls = S3Store if kind == "s3" else AzureStore
        st = _STORES[key] = cls(bucket, prefix=prefix or None, **cfg)
    return st


def _message(exc: Exception) -> str:
    """What the server said (S3's and Azure's ``<Message>``), else the first line of obstore's report;
    never a URL's query (a SAS)."""
    text = str(exc)
    found = re.search(r"<Message>(.*?)</Message>", text, re.S)
    line = found.group(1).strip().splitlines()[0] if found else text.splitlines()[0] if text else type(exc).__name__
    return re.sub(r"\?\S*", "", line)


def _os_error(exc: Exception, url: str) -> OSError:
    """obstore's error as the OSError the fsspec libraries raise for the same cause."""
    from obstore.exceptions import NotFoundError, PermissionDeniedError, UnauthenticatedError

    if isinstance(exc, NotFoundError | FileNotFoundError):
        return FileNotFoundError(f"{url}: {_message(exc)}")
    if isinstance(exc, PermissionDeniedError | UnauthenticatedError):
        return PermissionError(_message(exc))
    return OSError(f"{url}: {_message(exc)}")


def get(protocol: str, path: str) -> bytes:
    """The whole object ``bucket/key``, in one request."""
    import obstore
    from obstore.exceptions import BaseError

    bucket, key = _split(path)
    try:
        return bytes(obstore.get(_store(_KIND[protocol], bucket), key).bytes())
    except (BaseError, FileNotFoundError) as exc:  # obstore raises Python's own for a missing object
        raise _os_error(exc, f"{protocol}://{path}") from exc


def put(protocol: str, path: str, data) -> None:
    """Write ``data`` to ``bucket/key`` whole, in one request."""
    import obstore
    from obstore.exceptions import BaseError

    bucket, key = _split(path)
    try:
        obstore.put(_store(_KIND[protocol], bucket), key, memoryview(data), use_multipart=False)
    except (BaseError, FileNotFoundError) as exc:
        raise _os_error(exc, f"{protocol}://{path}") from exc


def get_many(protocol: str, paths: list[str]) -> list[bytes]:
    """Whole objects, in the order given, :data:`_CONCURRENCY` requests at a time."""
    if len(paths) < 2:
        return [get(protocol, p) for p in paths]
    with ThreadPoolExecutor(min(_CONCURRENCY, len(paths)), thread_name_prefix="rs-get") as pool:
        return list(pool.map(lambda p: get(protocol, p), paths))


def put_many(protocol: str, items: Iterable[tuple[str, bytes]]) -> None:
    """:func:`put` of each ``(path, data)``, :data:`_CONCURRENCY` requests at a time."""
    items = list(items)
    if len(items) < 2:
        for p, data in items:
            put(protocol, p, data)
        return
    with ThreadPoolExecutor(min(_CONCURRENCY, len(items)), thread_name_prefix="rs-put") as pool:
        list(pool.map(lambda item: put(protocol, *item), items))


def zarr_store(protocol: str, path: str, *, read_only: bool):
    """A Zarr store over the prefix ``bucket/key`` (zarr's own obstore adapter)."""
    from zarr.storage import ObjectStore

    bucket, key = _split(path.rstrip("/"))
    return ObjectStore(_store(_KIND[protocol], bucket, key), read_only=read_only)
