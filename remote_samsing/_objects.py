"""Whole-object reads and writes on S3 through obstore (https://github.com/developmentseed/obstore).

A run on a store moves a dozen small objects a block (its staging chunk,
marker, summary, spill files, label chunk, the mosaic's chunks). s3fs spends
2-3 ms of CPU on each request (botocore builds, signs and parses it in
Python), obstore's Rust client about a tenth of that, and on a few cores
that CPU is the run's. So these objects, and the Zarr arrays the blocks read
and write, go through obstore; listings, deletions and the products' uploads,
a few requests a run, stay on s3fs.

The client is configured as s3fs's is, from boto3's own chain (environment,
shared files and profiles, SSO, container and instance roles): obstore's
``Boto3CredentialProvider`` gives it the credentials, the same session the
endpoint (``AWS_ENDPOINT_URL``, ``AWS_ENDPOINT_URL_S3`` or a profile's) and
the region; on AWS itself the bucket's own region, which s3fs follows by
redirects. Each process builds its clients once per bucket and environment.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

__all__ = ["handles", "get", "get_many", "put", "put_many", "zarr_store"]

#: URL schemes served here.
SCHEMES = ("s3", "s3a")
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
    return protocol in SCHEMES


def _split(path: str) -> tuple[str, str]:
    """``bucket/key`` (a UPath's ``path``) as (bucket, key)."""
    bucket, _, key = path.partition("/")
    return bucket, key


def _environment() -> tuple:
    return tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("AWS_")))


def _bucket_config(bucket: str) -> dict:
    """The store settings of ``bucket``, from boto3's chain as this process's environment gives it."""
    key = (bucket, _environment())
    cfg = _CONFIGS.get(key)
    if cfg is None:
        if len(_CONFIGS) > 64:
            _CONFIGS.clear()
        cfg = _CONFIGS[key] = _configure(bucket)
    return cfg


def _configure(bucket: str) -> dict:
    import boto3
    from obstore.auth.boto3 import Boto3CredentialProvider

    session = boto3.Session()
    if session.get_credentials() is None:
        raise PermissionError("no AWS credentials found (Unable to locate credentials)")
    # boto3's region (AWS_DEFAULT_REGION, a profile's), else AWS_REGION, which GDAL and obstore read
    region = session.region_name or os.environ.get("AWS_REGION") or "us-east-1"
    client = session.client("s3", region_name=region)
    endpoint = client.meta.endpoint_url
    cfg = {"credential_provider": Boto3CredentialProvider(session), "retry_config": _RETRY}
    if endpoint.split("://", 1)[-1].split("/", 1)[0].endswith("amazonaws.com"):
        cfg["config"] = {"region": _bucket_region(client, bucket) or region}
    else:  # an S3-compatible server: its endpoint as given, path-style
        cfg["config"] = {"region": region, "endpoint": endpoint}
        cfg["client_options"] = {"allow_http": endpoint.startswith("http://")}
    return cfg


def _bucket_region(client, bucket: str) -> str | None:
    """The region AWS keeps ``bucket`` in (its ``x-amz-bucket-region`` answer, also to a refusal)."""
    from botocore.exceptions import ClientError

    try:
        meta = client.head_bucket(Bucket=bucket)["ResponseMetadata"]
    except ClientError as exc:
        meta = exc.response.get("ResponseMetadata", {})
    return meta.get("HTTPHeaders", {}).get("x-amz-bucket-region")


def _store(bucket: str, prefix: str = ""):
    from obstore.store import S3Store

    cfg = _bucket_config(bucket)
    key = (bucket, prefix, id(cfg))
    st = _STORES.get(key)
    if st is None:
        if len(_STORES) > 64:
            _STORES.clear()
        st = _STORES[key] = S3Store(bucket, prefix=prefix or None, **cfg)
    return st


def _message(exc: Exception) -> str:
    """What the server said (S3's ``<Message>``), else the first line of obstore's report."""
    text = str(exc)
    found = re.search(r"<Message>(.*?)</Message>", text, re.S)
    return found.group(1).strip() if found else text.splitlines()[0] if text else type(exc).__name__


def _os_error(exc: Exception, url: str) -> OSError:
    """obstore's error as the OSError s3fs raises for the same cause."""
    from obstore.exceptions import NotFoundError, PermissionDeniedError, UnauthenticatedError

    if isinstance(exc, NotFoundError | FileNotFoundError):
        return FileNotFoundError(f"{url}: {_message(exc)}")
    if isinstance(exc, PermissionDeniedError | UnauthenticatedError):
        return PermissionError(_message(exc))
    return OSError(f"{url}: {_message(exc)}")


def get(path: str) -> bytes:
    """The whole object ``bucket/key``, in one request."""
    import obstore
    from obstore.exceptions import BaseError

    bucket, key = _split(path)
    try:
        return bytes(obstore.get(_store(bucket), key).bytes())
    except (BaseError, FileNotFoundError) as exc:  # obstore raises Python's own for a missing object
        raise _os_error(exc, f"s3://{path}") from exc


def put(path: str, data) -> None:
    """Write ``data`` to ``bucket/key`` whole, in one request."""
    import obstore
    from obstore.exceptions import BaseError

    bucket, key = _split(path)
    try:
        obstore.put(_store(bucket), key, memoryview(data), use_multipart=False)
    except (BaseError, FileNotFoundError) as exc:  # obstore raises Python's own for a missing object
        raise _os_error(exc, f"s3://{path}") from exc


def get_many(paths: list[str]) -> list[bytes]:
    """Whole objects, in the order given, :data:`_CONCURRENCY` requests at a time."""
    if len(paths) < 2:
        return [get(p) for p in paths]
    with ThreadPoolExecutor(min(_CONCURRENCY, len(paths)), thread_name_prefix="rs-get") as pool:
        return list(pool.map(get, paths))


def put_many(items: Iterable[tuple[str, bytes]]) -> None:
    """:func:`put` of each ``(path, data)``, :data:`_CONCURRENCY` requests at a time."""
    items = list(items)
    if len(items) < 2:
        for p, data in items:
            put(p, data)
        return
    with ThreadPoolExecutor(min(_CONCURRENCY, len(items)), thread_name_prefix="rs-put") as pool:
        list(pool.map(lambda item: put(*item), items))


def zarr_store(path: str, *, read_only: bool):
    """A Zarr store over the prefix ``bucket/key`` (zarr's own obstore adapter)."""
    from zarr.storage import ObjectStore

    bucket, key = _split(path.rstrip("/"))
    return ObjectStore(_store(bucket, key), read_only=read_only)
