"""Whole-object reads and writes on S3 and Azure Blob through obstore (https://github.com/developmentseed/obstore).

A run on a store moves a dozen small objects a block (its staging chunk,
marker, summary, spill files, label chunk, the mosaic's chunks). s3fs and
adlfs spend 2.7-4.3 ms of CPU on each request (botocore or the Azure SDK
builds, signs and parses it in Python), obstore's Rust client 0.4 ms, and on
a few cores that CPU is the run's. So whole objects
(:func:`~._files.write_bytes`, :func:`~._files.read_many`, ...) and the Zarr
arrays the blocks read and write go through obstore; listings, deletions and
the upload of files written locally (the COG, the vectors), a few requests a
run, go through fsspec. GCS goes through gcsfs, which costs about 0.5 ms a
request (``python -m benchmarks.bench_store_requests``).

Each client is configured from the variables and files its fsspec library
reads, so one set of settings serves both:

* S3: obstore takes its credentials from a boto3 session (its
  ``Boto3CredentialProvider``) because that session looks where s3fs looks
  (environment, shared files and profiles, SSO, container and instance
  roles): credentials that reach s3fs reach obstore. The session also
  gives the endpoint (``AWS_ENDPOINT_URL``, ``AWS_ENDPOINT_URL_S3`` or a
  profile's) and the region (``AWS_REGION`` where boto3 has none). On AWS itself the bucket's
  own region is asked once, since obstore follows no redirect to it.
* Azure, from ``AZURE_STORAGE_CONNECTION_STRING`` (key or SAS, its endpoint),
  else from ``AZURE_STORAGE_ACCOUNT_NAME`` with ``AZURE_STORAGE_ACCOUNT_KEY``,
  ``AZURE_STORAGE_SAS_TOKEN`` or, with neither, azure-identity's
  ``DefaultAzureCredential`` (managed identity, workload identity, the CLI).
  The credential found is the one used (``credential_type``), so that a SAS
  or key the variables name wins over, say, a pod's workload identity,
  which obstore's own order would try first.

Each process builds a client once per bucket (container) and environment.
A store holds its credentials: it is never put into a task graph.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

from .exceptions import ConfigError

__all__ = ["handles", "get", "get_many", "one_line", "put", "put_many", "zarr_store"]

#: The kinds of store (``_files._STORE_KIND``) served here, and the variables each is configured from.
_VARIABLES = {"s3": "AWS_", "az": "AZURE_"}
#: Requests in flight at once for one read_many/write_many group.
_CONCURRENCY = 16
#: Retries of a request that failed for a reason that can pass (a connection error, a 5xx): a refused
#: connection is said after about 3 s, an endpoint that never answers after six 5 s connect timeouts.
_RETRY = {"max_retries": 5, "backoff": {"init_backoff": timedelta(milliseconds=100), "max_backoff": timedelta(seconds=5),
                                         "base": 2}, "retry_timeout": timedelta(seconds=60)}
#: obstore's limit on one request (30 s by default), raised to what a large object's upload needs.
_TIMEOUT = timedelta(minutes=5)
#: How long boto3's credentials are taken as valid: botocore refreshes temporary ones 15 minutes
#: before they expire, so asking again every 5 minutes never holds expired ones.
_CREDENTIALS_TTL = timedelta(minutes=5)

_LOCK = threading.Lock()
_STORES: dict = {}
_POOL: list = []


def handles(kind: str) -> bool:
    """Objects on stores of ``kind`` (``s3``, ``gs``, ``az``, ...) are read and written here."""
    return kind in _VARIABLES


def _split(url: str) -> tuple[str, str]:
    """``scheme://bucket/key`` as (bucket, key)."""
    bucket, _, key = url.split("://", 1)[1].partition("/")
    return bucket, key


def _store(kind: str, bucket: str, prefix: str = ""):
    """This process's obstore store for ``bucket`` (rooted at ``prefix``), made once per environment."""
    prefix_vars = _VARIABLES[kind]
    key = (kind, bucket, prefix, tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith(prefix_vars))))
    st = _STORES.get(key)
    if st is None:
        with _LOCK:  # the first requests of a group come together: one of them makes the client
            st = _STORES.get(key)
            if st is None:
                if len(_STORES) > 64:
                    _STORES.clear()
                st = _STORES[key] = _new_store(kind, bucket, prefix)
    return st


def _new_store(kind: str, bucket: str, prefix: str):
    from obstore.store import AzureStore, S3Store

    cfg = _s3_config(bucket) if kind == "s3" else _azure_config()
    options = {"timeout": _TIMEOUT, **cfg.pop("client_options", {})}
    try:
        return (S3Store if kind == "s3" else AzureStore)(bucket, prefix=prefix or None, client_options=options,
                                                        retry_config=_RETRY, **cfg)
    except Exception as exc:  # noqa: BLE001 - obstore's builders raise several types for one bad setting
        raise ConfigError(f"cannot set up a client for `{kind}://{bucket}`: {_message(exc)}",
                          hint=f"check the {_VARIABLES[kind]}* variables") from None


def _s3_config(bucket: str) -> dict:
    """S3Store settings from boto3's chain."""
    import boto3
    from obstore.auth.boto3 import Boto3CredentialProvider

    session = boto3.Session()
    if session.get_credentials() is None:
        raise PermissionError("no AWS credentials found (Unable to locate credentials)")
    # boto3's region (AWS_DEFAULT_REGION, a profile's), else AWS_REGION, which GDAL and obstore read
    region = session.region_name or os.environ.get("AWS_REGION") or "us-east-1"
    client = session.client("s3", region_name=region)
    endpoint = client.meta.endpoint_url
    cfg = {"credential_provider": Boto3CredentialProvider(session, ttl=_CREDENTIALS_TTL)}
    if _host(endpoint).endswith("amazonaws.com"):
        cfg["config"] = {"region": _bucket_region(client, bucket) or region}
    else:  # an S3-compatible server: its endpoint as given, path-style
        cfg["config"] = {"region": region, "endpoint": endpoint}
        cfg["client_options"] = {"allow_http": endpoint.startswith("http://")}
    return cfg


def _host(url: str) -> str:
    return url.split("://", 1)[-1].split("/", 1)[0]


def _bucket_region(client, bucket: str) -> str | None:
    """The region AWS keeps ``bucket`` in (its ``x-amz-bucket-region`` answer, also to a refusal);
    None where AWS cannot be asked."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        meta = client.head_bucket(Bucket=bucket)["ResponseMetadata"]
    except ClientError as exc:
        meta = exc.response.get("ResponseMetadata", {})
    except BotoCoreError:  # unreachable: the session's region, and the requests say what is wrong
        return None
    return meta.get("HTTPHeaders", {}).get("x-amz-bucket-region")


def _connection_string(text: str) -> dict:
    """Azure's ``Key=value;...`` connection string as a dict, keys lower-cased (Azure's SDK reads them
    in any case); values keep their ``=``."""
    return {k.strip().lower(): v.strip() for k, v in (p.split("=", 1) for p in text.split(";") if "=" in p)}


def _azure_config() -> dict:
    """AzureStore settings from the connection string or the account variables."""
    env = os.environ
    if env.get("AZURE_STORAGE_CONNECTION_STRING"):
        return _from_connection_string(_connection_string(env["AZURE_STORAGE_CONNECTION_STRING"]))
    account = env.get("AZURE_STORAGE_ACCOUNT_NAME")
    if not account:
        raise PermissionError("no Azure credentials found (neither a connection string nor an account name)")
    if env.get("AZURE_STORAGE_ACCOUNT_KEY"):
        return {"config": {"account_name": account, "account_key": env["AZURE_STORAGE_ACCOUNT_KEY"],
                           "credential_type": "access_key"}}
    if env.get("AZURE_STORAGE_SAS_TOKEN"):
        return {"config": {"account_name": account, "sas_key": env["AZURE_STORAGE_SAS_TOKEN"].lstrip("?"),
                           "credential_type": "sas_token"}}
    from obstore.auth.azure import AzureCredentialProvider

    return {"config": {"account_name": account}, "credential_provider": AzureCredentialProvider()}


def _from_connection_string(parts: dict) -> dict:
    if parts.get("usedevelopmentstorage", "").lower() == "true":
        return {"config": {"use_emulator": True}, "client_options": {"allow_http": True}}
    endpoint = parts.get("blobendpoint", "").rstrip("/")
    account = parts.get("accountname") or (_host(endpoint).split(".", 1)[0] if endpoint else "")
    if not account:
        raise ConfigError("AZURE_STORAGE_CONNECTION_STRING names neither AccountName nor BlobEndpoint",
                          hint="copy the connection string from the storage account's Access keys page")
    if not endpoint:
        endpoint = (f"{parts.get('defaultendpointsprotocol', 'https')}://{account}.blob."
                    f"{parts.get('endpointsuffix', 'core.windows.net')}")
    config = {"account_name": account, "endpoint": endpoint}
    if parts.get("accountkey"):
        config.update(account_key=parts["accountkey"], credential_type="access_key")
    elif parts.get("sharedaccesssignature"):
        config.update(sas_key=parts["sharedaccesssignature"].lstrip("?"), credential_type="sas_token")
    else:  # a connection string without a credential reads a public container
        config["skip_signature"] = True
    return {"config": config, "client_options": {"allow_http": endpoint.startswith("http://")}}


def _message(exc: Exception) -> str:
    """What the server said (S3's and Azure's ``<Message>``), else the first line of obstore's report;
    never a URL's query (a SAS)."""
    text = str(exc)
    found = re.search(r"<Message>(.*?)</Message>", text, re.S)
    said = (found.group(1).strip() if found else "") or text.strip()
    line = said.splitlines()[0] if said else type(exc).__name__
    return re.sub(r"(https?://[^\s?]*)\?\S*", r"\1", line)


def one_line(exc: BaseException) -> str:
    """An error's text in one line; for obstore's report of a refused request (the request, the
    server's whole XML answer, then a debug dump: about 30 lines, inside Zarr's ``ObjectStore`` too)
    its lead (what failed, on which path), the HTTP status and what the server said.

    >>> one_line(OSError("failed for path a/b: Error performing GET REDACTED in 3ms - Server returned "
    ...                  "non-2xx status code: 403 Forbidden: <?xml?>\\n<Error><Message>Not allowed.\\n"
    ...                  "RequestId:1</Message></Error>\\n\\nDebug source:\\n..."))
    'failed for path a/b (403 Forbidden): Not allowed.'
    """
    text = str(exc)
    first = text.splitlines()[0] if text else ""
    refused = re.match(r"(.*?): Error performing .*? status code: (\d{3}[^:]*): ", first)
    if refused is None or "<Message>" not in text:
        return first
    return f"{refused.group(1)} ({refused.group(2).strip()}): {_message(exc)}"


def _os_error(exc: Exception, url: str) -> OSError:
    """obstore's error as the OSError the fsspec libraries raise for the same cause."""
    from obstore.exceptions import NotFoundError, PermissionDeniedError, UnauthenticatedError

    if isinstance(exc, NotFoundError | FileNotFoundError):
        return FileNotFoundError(f"{url}: {_message(exc)}")
    if isinstance(exc, PermissionDeniedError | UnauthenticatedError):
        return PermissionError(f"{_message(exc)} ({url})")
    return OSError(f"{url}: {_message(exc)}")


def _get(store, url: str) -> bytes:
    import obstore
    from obstore.exceptions import BaseError

    try:
        return bytes(obstore.get(store, _split(url)[1]).bytes())
    except (BaseError, FileNotFoundError) as exc:  # obstore raises Python's own for a missing object
        # not chained: the server's whole answer (a signed request's headers) stays out of tracebacks
        raise _os_error(exc, url) from None


def _put(store, url: str, data) -> None:
    import obstore
    from obstore.exceptions import BaseError

    try:
        obstore.put(store, _split(url)[1], memoryview(data), use_multipart=False)
    except (BaseError, FileNotFoundError) as exc:
        raise _os_error(exc, url) from None


def get(kind: str, url: str) -> bytes:
    """The whole object at ``url``, in one request."""
    return _get(_store(kind, _split(url)[0]), url)


def put(kind: str, url: str, data) -> None:
    """Write ``data`` to ``url`` whole, in one request."""
    _put(_store(kind, _split(url)[0]), url, data)


def _pool() -> ThreadPoolExecutor:
    """This process's threads for concurrent requests (made once: a pool a call costs more than its
    requests)."""
    with _LOCK:
        if not _POOL:
            _POOL.append(ThreadPoolExecutor(_CONCURRENCY, thread_name_prefix="rs-objects"))
        return _POOL[0]


def _stores(kind: str, urls: list[str]) -> dict:
    """The store of each bucket ``urls`` name, looked up once for the group rather than per request."""
    return {bucket: _store(kind, bucket) for bucket in {_split(u)[0] for u in urls}}


def get_many(kind: str, urls: list[str]) -> list[bytes]:
    """Whole objects, in the order given, :data:`_CONCURRENCY` requests at a time."""
    stores = _stores(kind, urls)
    if len(urls) < 2:
        return [_get(stores[_split(u)[0]], u) for u in urls]
    return list(_pool().map(lambda u: _get(stores[_split(u)[0]], u), urls))


def put_many(kind: str, items: Iterable[tuple[str, bytes]]) -> None:
    """:func:`put` of each ``(url, data)``, :data:`_CONCURRENCY` requests at a time."""
    items = list(items)
    stores = _stores(kind, [url for url, _ in items])
    if len(items) < 2:
        for url, data in items:
            _put(stores[_split(url)[0]], url, data)
        return
    list(_pool().map(lambda item: _put(stores[_split(item[0])[0]], *item), items))


def zarr_store(kind: str, url: str, *, read_only: bool):
    """A Zarr store over the prefix at ``url`` (zarr's own obstore adapter)."""
    from zarr.storage import ObjectStore

    bucket, key = _split(url.rstrip("/"))
    return ObjectStore(_store(kind, bucket, key), read_only=read_only)
