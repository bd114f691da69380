"""Client CPU per request on each store, fsspec's library against obstore, on loopback servers.

On two cores the client's CPU is the run's: this is what decides which client the blocks' small
objects go through (``remote_samsing/_objects.py``). Each client writes, then reads, ``--objects``
objects of 20 kB one at a time against SeaweedFS (S3), Azurite (Azure) and fake-gcs-server (GCS,
where only gcsfs is measured: the package does not use obstore there). It also times what Azurite
takes to delete a folder of 2,000 blobs (``_files.remove_tree``'s Blob Batch requests), the cost
behind the Azure store run's merge step; the container also holds the request measurement's objects
and ``--held`` more.

    python -m benchmarks.bench_store_requests
    python -m benchmarks.bench_store_requests --held 10000
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from benchmarks._util import machine, result_path

#: The fsspec filesystem of each store kind, by its protocol.
_FSSPEC = {"s3": "s3", "az": "abfs", "gs": "gcs"}
#: Objects in the Azure folder removed.
_FOLDER = 2000


def _cpu_ms_each(func, n: int) -> float:
    """Milliseconds of this process's CPU per call of ``func(i)``, for ``i`` in ``range(n)``."""
    t = time.process_time()
    for i in range(n):
        func(i)
    return (time.process_time() - t) / n * 1e3


def _measure(kind: str, n: int, payload: bytes) -> dict:
    """CPU per PUT and GET through fsspec, and through obstore where the package uses it."""
    import fsspec

    from remote_samsing import _objects

    fs = fsspec.filesystem(_FSSPEC[kind])
    fs.pipe_file("bench/warm", payload)
    row = {"fsspec_put_ms": _cpu_ms_each(lambda i: fs.pipe_file(f"bench/f/{i}", payload), n),
           "fsspec_get_ms": _cpu_ms_each(lambda i: fs.cat_file(f"bench/f/{i}"), n)}
    if _objects.handles(kind):
        _objects.put(kind, f"{kind}://bench/warm", payload)
        row["obstore_put_ms"] = _cpu_ms_each(lambda i: _objects.put(kind, f"{kind}://bench/o/{i}", payload), n)
        row["obstore_get_ms"] = _cpu_ms_each(lambda i: _objects.get(kind, f"{kind}://bench/o/{i}"), n)
    return row


def _azure_removal(held: int) -> float:
    """Seconds ``remove_tree`` takes for a folder of :data:`_FOLDER` blobs, ``held`` others beside it."""
    from remote_samsing._files import remove_tree, write_many

    if held:
        write_many((f"az://bench/held/{i}", b"x" * 1000) for i in range(held))
    write_many((f"az://bench/spill/{i}", b"x" * 10000) for i in range(_FOLDER))
    t = time.perf_counter()
    remove_tree("az://bench/spill")
    return time.perf_counter() - t


def run(*, objects: int = 400, held: int = 0) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration"))
    from loopback_stores import STORE_VARIABLES, start_store

    payload = os.urandom(20000)
    result = {"name": "store_requests", "machine": machine(), "objects": objects, "object_bytes": len(payload),
              "stores": {}}
    for kind, server in (("s3", "seaweedfs"), ("az", "azurite"), ("gs", "fake-gcs-server")):
        with tempfile.TemporaryDirectory(prefix=f"rs-bench-{kind}-") as d:
            srv = start_store(kind, Path(d), server="seaweedfs" if kind == "s3" else None)
            saved = {k: os.environ.pop(k) for k in list(os.environ) if k in STORE_VARIABLES}
            os.environ.update(srv.env)
            try:
                srv.make_bucket("bench")
                row = {"server": server, **_measure(kind, objects, payload)}
                if kind == "az":
                    row.update(folder_blobs=_FOLDER, others_in_container=held + 2 * objects + 2,
                               folder_removal_s=_azure_removal(held))
            finally:
                srv.stop()
                for k in srv.env:
                    os.environ.pop(k, None)
                os.environ.update(saved)
        result["stores"][kind] = row
        said = ", ".join(f"{k[:-3].replace('_', ' ')} {v:.2f} ms" for k, v in row.items() if k.endswith("_ms"))
        print(f"{kind} ({server}): client CPU per request: {said}")
        if kind == "az":
            print(f"az (azurite): removing a folder of {_FOLDER} blobs, {row['others_in_container']} others "
                  f"in the container: "
                  f"{row['folder_removal_s']:.1f} s")
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--objects", type=int, default=400, help="objects written and read per client")
    ap.add_argument("--held", type=int, default=0, help="blobs beside the Azure folder removed")
    args = ap.parse_args()
    result = run(objects=args.objects, held=args.held)
    result["command"] = "python -m benchmarks.bench_store_requests " + " ".join(sys.argv[1:])
    out = result_path("store-requests" + (f"-held-{args.held}" if args.held else ""))
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
