"""Where products and resume state live: local folders or object stores, written so a reader never
sees half a file.

A location is a :class:`pathlib.Path` for a local folder, or a
:class:`upath.UPath` for a URL (``s3://``, ``gs://``, ``az://``, ...):
universal-pathlib (https://github.com/fsspec/universal_pathlib) gives both the
same path API over fsspec's filesystems, so the pipeline joins, lists and
reads them alike. Writes differ by kind:

* local: written under a temporary name in the same folder and renamed
  (``os.replace`` is atomic on POSIX filesystems); temporary names are
  unique per writer, so two tasks writing the same file (a task run again
  after a lost worker) never interleave;
* object store: there is no rename; an object is uploaded whole (a single PUT,
  or a multipart upload that appears only when completed), so a reader sees
  the old object or the new one. Folders (Zarr stores) are written in place,
  and ``run.json``'s ``"complete": true`` is what says they are finished.

Every product reaches a store by one path, the same for S3, GCS and Azure:
GDAL (the COG, its pieces, the tile index), pyarrow and the other writers only
ever write a local file or memory, and the bytes are uploaded whole: a file
through fsspec (:func:`write_atomic`), bytes in memory (:func:`write_bytes`,
:func:`write_many`) on S3 and Azure through obstore (:mod:`._objects`), which
costs the client a tenth of the CPU a request, elsewhere through fsspec. So no store
depends on GDAL's own write support (its plain PUTs, which some servers
refuse, and whose failures rasterio does not raise), and an upload that fails
raises: it is never taken for a written product.
"""

from __future__ import annotations

import inspect
import itertools
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from . import _objects
from .exceptions import ConfigError, InputError

__all__ = ["REMOTE_SCHEMES", "gcs_emulator", "store_variables", "is_url", "check_url", "location", "is_remote", "gdal_path", "join_location", "temporary_name", "write_atomic", "json_encoded", "write_json_atomic", "write_bytes",
           "write_many", "read_bytes", "read_many", "replace_path", "remove_tree", "list_names", "store_path",
           "zarr_options", "open_zarr_array", "open_zarr_cached"]


#: URL schemes of mosaics read through GDAL's virtual file systems (/vsis3/, /vsigs/, /vsiaz/, /vsicurl/).
REMOTE_SCHEMES = ("s3", "gs", "az", "abfs", "http", "https")


def is_url(path) -> bool:
    """``path`` is a URL (``scheme://...``), not a local path."""
    return isinstance(path, str) and "://" in path


def check_url(url: str) -> str:
    """``url`` with a scheme GDAL reads, or a typed error naming the schemes that work."""
    scheme = url.split("://", 1)[0].lower()
    if scheme not in REMOTE_SCHEMES:
        raise InputError(f"unsupported URL scheme `{scheme}://` in `{url}`",
                         hint=f"use a local path or one of {', '.join(s + '://' for s in REMOTE_SCHEMES)}")
    return url


def gcs_emulator() -> str | None:
    """The URL of the GCS emulator named by Google's ``STORAGE_EMULATOR_HOST``, or None (unset, or
    ``default``, Google's libraries' name for no emulator)."""
    host = os.environ.get("STORAGE_EMULATOR_HOST")
    if not host or host == "default":
        return None
    return (host if "://" in host else f"http://{host}").rstrip("/")


def _prepare_store_client(protocol: str) -> None:
    """Settings of a store's fsspec library, made before a process's first use of that store (gcsfs and
    google-auth read theirs once, when imported). Against a GCS emulator, gcsfs (2026.10 on) probes each bucket for
    hierarchical namespaces over gRPC, which an emulator does not answer (a 60 s hang per process),
    and google-auth looks for a GCE metadata server (an address off the machine) when no credentials
    are set; an emulator needs neither. What a user set stays as set."""
    if protocol in ("gs", "gcs"):
        # gcsfs logs the traceback of a request that ran out of retries and then raises it, which the
        # caller reports as one line; with no handler of its own, Python would print that log to
        # stderr when the application configured none (a handler the user set still gets it)
        import logging

        gcsfs_log = logging.getLogger("gcsfs")
        if not gcsfs_log.handlers:
            gcsfs_log.addHandler(logging.NullHandler())
        if gcs_emulator():
            os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
            os.environ.setdefault("NO_GCE_CHECK", "true")
    elif _STORE_KIND.get(protocol) == "az":
        close_azure_clients_at_exit()


def url_to_fs(url: str):
    """fsspec's filesystem for ``url`` and the path in it, with the store's client prepared first
    (:func:`_prepare_store_client`), as :func:`location` prepares it."""
    import fsspec

    _prepare_store_client(url.split("://", 1)[0].lower())
    return fsspec.core.url_to_fs(url)


#: Whether this process registered :func:`_close_azure_clients` (once).
_AZURE_AT_EXIT: list = []


def close_azure_clients_at_exit() -> None:
    """Have this process close its adlfs clients at exit (:func:`_close_azure_clients`), once: in any
    process that may reach Azure through fsspec, its workers too."""
    if _AZURE_AT_EXIT:
        return
    import atexit
    import weakref

    import zarr  # noqa: F401 - Zarr registers its exit hook when imported; this one must come after it

    # weakref registers its own exit hook, which runs every finalizer left, with the first finalizer made
    # in the process: one made here, before this hook, makes that hook run after this one
    weakref.finalize(close_azure_clients_at_exit, lambda: None)
    atexit.register(_close_azure_clients)
    _AZURE_AT_EXIT.append(True)


def _close_azure_clients() -> None:
    """Close the clients of this process's adlfs filesystems while the event loops they use still run.

    adlfs closes each filesystem's client from a ``weakref.finalize`` at interpreter exit, on the loop
    the filesystem was made on. Zarr makes the filesystems of its stores on its own loop, which Zarr's
    exit hook closes first, so each of those finalizers printed a traceback ("Loop is not running",
    https://github.com/fsspec/adlfs/issues/495) after a run had finished. Exit hooks run last
    registered first: registered after Zarr's, this one runs the finalizers before Zarr's loop stops.
    """
    import gc
    import sys
    import weakref

    if "adlfs" not in sys.modules:  # no Azure filesystem exists in this process
        return
    from adlfs import AzureBlobFileSystem

    # type(), not isinstance(): isinstance reads ``__class__``, which some live objects answer with a
    # deprecation warning (torch.distributed.reduce_op)
    for fin in [o for o in gc.get_objects() if type(o) is weakref.finalize]:
        info = fin.peek()
        if info is not None and isinstance(info[0], AzureBlobFileSystem):
            try:
                fin()
            except Exception:  # noqa: BLE001 - at exit a client that cannot be closed has nothing left to lose
                pass


#: The standard variables that reach each kind of store: what a user sets, and all the package reads.
_STORE_VARIABLES = {
    "s3": "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE (AWS_ENDPOINT_URL for an S3-compatible "
          "store)",
    "gs": "GOOGLE_APPLICATION_CREDENTIALS, or the machine's own account (STORAGE_EMULATOR_HOST for an emulator); "
          "the `gcs` extra (pip install \"remote_samsing[gcs]\")",
    "az": "AZURE_STORAGE_CONNECTION_STRING, or AZURE_STORAGE_ACCOUNT_NAME with AZURE_STORAGE_ACCOUNT_KEY, "
          "AZURE_STORAGE_SAS_TOKEN or a managed identity; the `azure` extra (pip install \"remote_samsing[azure]\")",
    "http": "GDAL_CURL_CA_BUNDLE for a server with a private certificate authority",
}
_STORE_KIND = {"s3": "s3", "s3a": "s3", "gs": "gs", "gcs": "gs", "az": "az", "abfs": "az", "abfss": "az",
               "http": "http", "https": "http"}


def store_variables(url: str) -> str:
    """What reaches the store of ``url``: the standard variables to check when it cannot be read or
    written (an empty string for a local path or an unknown scheme)."""
    scheme = str(url).split("://", 1)[0].lower() if "://" in str(url) else ""
    return _STORE_VARIABLES.get(_STORE_KIND.get(scheme, ""), "")


def location(path) -> Path | UPath:  # noqa: F821 - UPath is imported only for URLs
    """``path`` as a local :class:`~pathlib.Path`, or a :class:`upath.UPath` when it is a URL.

    A UPath carrying its own storage options is refused: workers receive locations as URLs and reach
    the store through the standard environment variables, so such options would be lost on the way.
    """
    if is_remote(path):
        if getattr(path, "storage_options", None):
            raise ConfigError(f"`{path}` carries storage options {sorted(path.storage_options)}",
                              hint="pass the URL as a string and set the store's credentials and endpoint in "
                                   "the environment (AWS_ACCESS_KEY_ID, AWS_ENDPOINT_URL, ...), which every "
                                   "worker reads")
        return path
    text = os.fspath(path)
    if "://" in text:
        from upath import UPath

        _prepare_store_client(text.split("://", 1)[0].lower())
        return UPath(text)
    return Path(text)


def is_remote(path) -> bool:
    """``path`` is a location on an object store (a UPath that is not a local path)."""
    return hasattr(path, "protocol") and path.protocol not in ("", "file", "local")


def store_path(path) -> str:
    """The string Zarr and GDAL open: a local path, or the URL."""
    return str(path) if is_remote(path) else os.fspath(path)


def _protocol(p) -> str:
    return p.protocol if isinstance(p.protocol, str) else p.protocol[0]


def _fast(p) -> bool:
    """Whole objects at ``p`` (a store location) go through :mod:`._objects`, not fsspec. Not where the
    URL itself carries settings (``abfs://container@account...``): fsspec and obstore would then reach
    different accounts."""
    return _objects.handles(_STORE_KIND.get(_protocol(p), "")) and not p.storage_options


def _url(p) -> str:
    """The URL of store location ``p``, as :mod:`._objects` takes it."""
    return f"{_protocol(p)}://{p.path}"


def _kind(p) -> str:
    return _STORE_KIND[_protocol(p)]


#: What a whole-object read passes to an S3 filesystem where s3fs serves it (``cat_file``), and what
#: Zarr opens an S3 array with there (an array created, or opened as a dataset): s3fs asks an object's
#: size first (one more request) to split a large object into concurrent ranges unless
#: ``max_concurrency`` is 1. Objects read whole and Zarr chunks are small, so nothing is lost; it
#: also makes multipart uploads serial, which only objects over 100 MB use.
_WHOLE_READS = {"s3": {"max_concurrency": 1}, "s3a": {"max_concurrency": 1}}


def zarr_options(path) -> dict | None:
    """The ``storage_options`` Zarr opens ``path`` with: None for a local path."""
    p = location(path)
    return dict(_WHOLE_READS.get(_protocol(p), {})) if is_remote(p) else None


def _zarr_store(store, *, read_only: bool):
    """What Zarr opens ``store`` (a local path or a URL) with: the URL, or on S3 and Azure an obstore store
    (:mod:`._objects`)."""
    p = location(store)
    if is_remote(p) and _fast(p):
        return _objects.zarr_store(_kind(p), _url(p), read_only=read_only)
    return store_path(p)


def consolidate_metadata(store: str) -> None:
    """Consolidate a product store's metadata: ``xarray.open_zarr`` then opens it at once, without its
    fallback warning. Zarr notes that consolidated metadata is not in the v3 specification yet; our own
    readers do not need it."""
    import warnings

    import zarr
    from zarr.errors import ZarrUserWarning

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part",
                                category=ZarrUserWarning)
        zarr.consolidate_metadata(store)


def open_zarr_array(store, *, mode: str, path: str | None = None):
    """The Zarr v3 array at ``store`` (a local path or a URL; ``path`` inside it), opened without
    probing for v2 metadata (requests on a store). On S3 and Azure its store holds the credentials:
    open it in the task that uses it, never pass it in a task graph."""
    import zarr

    opened = _zarr_store(store, read_only=mode == "r")
    options = zarr_options(store) if isinstance(opened, str) else None
    arr = zarr.open_array(store=opened, path=path, mode=mode, zarr_format=3, storage_options=options)
    # Zarr compares every chunk written with the fill value to skip empty ones: a full pass over the
    # chunk that costs more than compressing an empty chunk, and labels are rarely all 0
    return arr if mode == "r" else arr.with_config({"write_empty_chunks": True})


def open_zarr_cached(store: str, *, path: str, max_bytes: int):
    """The read-only Zarr v3 array at URL ``store`` (``path`` inside it), whose objects read are kept in
    this process's memory, up to ``max_bytes`` (least recently used out first): a block's padded window
    reads its neighbours' chunks too, and each chunk is then read once by a process, not by every block
    whose window touches it (zarr's ``CacheStore``)."""
    import zarr
    from zarr.experimental.cache_store import CacheStore
    from zarr.storage import FsspecStore, MemoryStore

    base = _zarr_store(store, read_only=True)
    if isinstance(base, str):
        base = FsspecStore.from_url(store, storage_options=zarr_options(store), read_only=True)
    cached = CacheStore(base, cache_store=MemoryStore(), max_size=int(max_bytes), cache_set_data=False)
    return zarr.open_array(store=cached, path=path, mode="r", zarr_format=3)


#: Zarr arrays this process keeps open between the blocks of one run, by (store, path, mode, token): opening
#: one reads its metadata, one or more requests on a store, for every block otherwise.
_OPEN_ARRAYS: dict = {}
_OPEN_ARRAYS_MAX = 4


def open_zarr_kept(store, *, mode: str, token: str, path: str | None = None):
    """:func:`open_zarr_array`, kept open in this process for later calls with the same ``token``.

    ``token`` names the run that owns the array (its metadata does not
    change during the run); another token opens it afresh.
    """
    key = (str(store), path, mode, token)
    arr = _OPEN_ARRAYS.get(key)
    if arr is None:
        if len(_OPEN_ARRAYS) >= _OPEN_ARRAYS_MAX:  # full: start afresh (a run writes one or two arrays)
            _OPEN_ARRAYS.clear()
        arr = _OPEN_ARRAYS[key] = open_zarr_array(store, mode=mode, path=path)
    return arr


#: GDAL's virtual file system for each store protocol (https://gdal.org/en/stable/user/virtual_file_systems.html).
_VSI = {"s3": "/vsis3/", "s3a": "/vsis3/", "gs": "/vsigs/", "gcs": "/vsigs/", "az": "/vsiaz/", "abfs": "/vsiaz/",
        "abfss": "/vsiaz/"}


def gdal_path(path) -> str:
    """The name GDAL opens ``path`` by: a local path, or the store object through GDAL's virtual file
    system (``/vsis3/bucket/key``; GDAL's copy functions take no URL)."""
    p = location(path)
    if not is_remote(p):
        return os.fspath(p)
    protocol = _protocol(p)
    if protocol in ("http", "https"):
        return f"/vsicurl/{p}"
    if protocol not in _VSI:
        raise ConfigError(f"GDAL cannot reach `{p}` ({protocol}://)", hint="use s3://, gs://, az:// or a local path")
    return _VSI[protocol] + p.path


def join_location(base: str, ref: str) -> str:
    """``ref`` (a line of a list, a STAC href) relative to the file ``base`` (a path or URL) that names it."""
    if "://" in ref or os.path.isabs(ref):
        return ref
    if "://" in base:
        import posixpath

        scheme, rest = base.split("://", 1)
        bucket, _, key = rest.partition("/")
        return f"{scheme}://{bucket}/" + posixpath.normpath(posixpath.join(posixpath.dirname(key), ref)).lstrip("/")
    return os.path.normpath(os.path.join(os.path.dirname(base), os.path.expanduser(ref)))


def temporary_name(path: str | os.PathLike) -> Path:
    """A unique sibling of ``path`` to write to before renaming (``<stem>.<8 hex>.partial<suffix>``: the
    suffix stays last, since some writers, such as GDAL's GeoPackage driver, check it)."""
    p = Path(os.fspath(path))
    return p.with_name(f"{p.stem}.{uuid.uuid4().hex[:8]}.partial{p.suffix}")


def write_atomic(path, write: Callable[[Path], Any]):
    """Call ``write(tmp)`` on a temporary local file, then move it onto ``path`` (a rename beside it,
    or one upload to the store). The temporary file is removed if ``write`` raises."""
    p = location(path)
    if is_remote(p):
        with tempfile.TemporaryDirectory(prefix="remote-samsing-") as d:
            tmp = Path(d) / f"upload{p.suffix}"
            write(tmp)
            for f in sorted(Path(d).iterdir()):  # with a writer's side files (a Shapefile's .shx, .dbf, ...)
                p.fs.put_file(str(f), p.with_name(p.stem + f.name[len("upload"):]).path)
        return p
    tmp = temporary_name(p)
    try:
        write(tmp)
        os.replace(tmp, p)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return p


def write_bytes(path, data: bytes):
    """Write ``data`` to ``path`` whole (atomically, as :func:`write_atomic`)."""
    p = location(path)
    if is_remote(p) and _fast(p):
        _objects.put(_kind(p), _url(p), data)
        _forget_listings([p])
    elif is_remote(p):
        p.fs.pipe_file(p.path, data)
    else:
        write_atomic(p, lambda tmp: tmp.write_bytes(data))
    return p


def _forget_listings(written: list) -> None:
    """Drop the listings fsspec cached of the folders of objects written past it (obstore): fsspec
    answers ``exists`` from a cached listing of the folder, which would not show them."""
    fs = written[0].fs
    for parent in {p.parent.path for p in written}:
        fs.invalidate_cache(parent)


#: Files one concurrent call reads or writes: bounds the bytes held at once.
_GROUP = 256


def _groups(items, n: int = _GROUP):
    it = iter(items)
    while group := list(itertools.islice(it, n)):
        yield group


def write_many(items) -> None:
    """Write each ``(path, data)`` whole, as :func:`write_bytes` does; on a store concurrently, so a task
    writing many small objects waits for a few round trips, not one per object. ``items`` is taken a
    group at a time (a generator's data is made as it is written). All paths are on one store (or all
    local)."""
    for group in _groups((location(path), data) for path, data in items):
        if is_remote(group[0][0]) and _fast(group[0][0]):
            _objects.put_many(_kind(group[0][0]), ((_url(p), data) for p, data in group))
            _forget_listings([p for p, _ in group])
        elif is_remote(group[0][0]):
            group[0][0].fs.pipe({p.path: data for p, data in group})
        else:
            for path, data in group:
                write_bytes(path, data)


def read_bytes(path) -> bytes:
    """The whole file; on a store in one request (no size lookup first)."""
    p = location(path)
    if not is_remote(p):
        return p.read_bytes()
    if _fast(p):
        return _objects.get(_kind(p), _url(p))
    return p.fs.cat_file(p.path, **_WHOLE_READS.get(_protocol(p), {}))


def read_many(paths, *, decode: Callable[[bytes], Any] | None = None) -> list:
    """Whole files, in the order given, each through ``decode`` if given; on a store concurrently, so a
    task reading many small objects waits for a few round trips, not one per object. Files are read
    and decoded a group at a time, so only one group's raw bytes are held at once. All paths are on
    one store (or all local); a missing file raises FileNotFoundError."""
    out = []
    for group in _groups(location(x) for x in paths):
        if is_remote(group[0]) and _fast(group[0]):
            raw = _objects.get_many(_kind(group[0]), [_url(p) for p in group])
        elif is_remote(group[0]):
            # cat_ranges, not cat: cat would expand "*", "?" and "[" in a key as a glob pattern
            raw = group[0].fs.cat_ranges([p.path for p in group], None, None, on_error="raise",
                                         **_WHOLE_READS.get(_protocol(group[0]), {}))
        else:
            raw = [p.read_bytes() for p in group]
        out += map(decode, raw) if decode is not None else raw
    return out


def _json_default(obj):
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, tuple):
        return list(obj)
    return str(obj)


def json_encoded(data: Any, *, indent: int | None = 2) -> bytes:
    """``data`` as JSON bytes, numpy scalars and arrays as numbers and lists."""
    return json.dumps(data, indent=indent, default=_json_default).encode()


def write_json_atomic(path, data: Any, *, indent: int | None = 2):
    """Write ``data`` as JSON (numpy scalars and arrays as numbers and lists) atomically."""
    return write_bytes(path, json_encoded(data, indent=indent))


def remove_tree(path) -> None:
    """Remove a folder (or a store prefix) and everything under it; nothing if it is absent. Any other
    failure raises: a folder half removed must not be taken for a clean one."""
    p = location(path)
    if is_remote(p):
        if p.fs.exists(p.path):
            # a group of objects at a time: a client deleting a whole prefix at once holds every
            # request in flight (adlfs: ~70 MB for a 400-block merge's spill folder)
            remove = _group_remover(p)
            for group in _groups(p.fs.find(p.path)):
                remove(group)
            if p.fs.exists(p.path):  # what a listing of objects leaves: a folder marker
                p.fs.rm(p.path, recursive=True)
        return
    try:
        shutil.rmtree(p)
    except FileNotFoundError:
        pass


def _group_remover(p) -> Callable[[list[str]], None]:
    """What deletes one group of listed objects on ``p``'s store.

    The names listed are literal, which adlfs can be told (else it looks each one up again, a request
    each). On Azure a group goes in one Blob Batch request where the account takes one (adlfs sends a
    request an object; S3's and GCS's filesystems group deletions themselves); from the first batch
    that fails as a whole (a hierarchical namespace, a SAS that may delete but not write, Azurite with
    any SAS) the groups go through adlfs's own deletions, with the SDK's retries.
    """
    fs = p.fs
    literal = {"expand_path": False} if "expand_path" in inspect.signature(fs.rm).parameters else {}
    if _STORE_KIND.get(_protocol(p)) != "az":
        return lambda group: fs.rm(group, **literal)
    batches = True  # until the account refuses one

    def remove(group: list[str]) -> None:
        nonlocal batches
        batches = batches and _remove_blob_batch(fs, group)
        if not batches:
            fs.rm(group, **literal)

    return remove


def _remove_blob_batch(fs, names: list[str]) -> bool:
    """Delete the blobs ``names`` (at most 256, listed under one folder: one container) in one Blob
    Batch request; False where the batch fails as a whole (tried once: what fails it is mostly
    permanent, and adlfs's deletions that follow retry). A blob already gone counts as deleted; any
    other refusal of one blob raises, naming it."""
    from azure.core.exceptions import AzureError
    from fsspec.asyn import sync

    container = fs.split_path(names[0])[0]
    blobs = [fs.split_path(name)[1] for name in names]

    async def delete() -> list[int]:
        async with fs.service_client.get_container_client(container) as cc:
            responses = await cc.delete_blobs(*blobs, raise_on_any_failure=False, retry_total=0)
            return [r.status_code async for r in responses]

    try:
        codes = sync(fs.loop, delete)
    except AzureError:
        return False
    refused = [(b, c) for b, c in zip(blobs, codes) if c not in (202, 404)]
    if refused:
        blob, code = refused[0]
        raise OSError(f"the store refused to delete {len(refused)} object(s), e.g. `{container}/{blob}` "
                      f"(HTTP {code})")
    fs.invalidate_cache()
    return True


def list_names(folder) -> set:
    """Names of the entries of ``folder`` (empty if absent), in one listing. On a store the listing is
    asked anew: fsspec caches listings for the process's life, and other processes (the workers, an
    earlier run) write there."""
    p = location(folder)
    if not is_remote(p):
        return {c.name for c in p.iterdir()} if p.exists() else set()
    own = p.path.rstrip("/")
    p.fs.invalidate_cache(own)
    if not p.exists():
        return set()
    # a store may list the folder's own marker object (``folder/``: SeaweedFS keeps one once an object
    # under it was removed); it is not an entry
    return {n.rstrip("/").rsplit("/", 1)[-1] for n in p.fs.ls(own, detail=False) if n.rstrip("/") != own}


def replace_path(tmp: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Move a finished local file or folder ``tmp`` onto ``out``, removing what ``out`` held."""
    out = Path(os.fspath(out))
    if out.is_dir() and not out.is_symlink():
        shutil.rmtree(out)
    elif out.exists():
        out.unlink()
    os.replace(tmp, out)
    return out
