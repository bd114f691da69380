"""Scheduler cost per task on this machine: why tasks per block set a cheap segmenter's speed.

Times ``client.map`` of trivial tasks (``lambda i: i``) on the embedded
cluster (2 worker processes, one thread each, as ``remote-samsing segment``
starts it) and on a threads-only ``LocalCluster``, and prints milliseconds
per task. A run of the pipeline costs roughly this much per task on top of
its pixel work (see docs/architecture.md, "Performance notes").

    python -m benchmarks.bench_scheduler            # 2,500 tasks
    python -m benchmarks.bench_scheduler --quick    # 200 tasks
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from benchmarks._util import machine


def _identity(i):
    return i


def _per_task_ms(client, n: int) -> float:
    client.gather(client.map(_identity, range(50), pure=False))  # warm-up
    t0 = time.perf_counter()
    client.gather(client.map(_identity, range(n), pure=False))
    return (time.perf_counter() - t0) / n * 1000


def run(quick: bool = False, *, n_workers: int = 2) -> dict:
    from distributed import Client, LocalCluster

    from remote_samsing.cluster import ClusterConfig, make_client

    n = 200 if quick else 2500
    with make_client(ClusterConfig(n_workers=n_workers, dashboard=False), needs_gpu=False) as c:
        processes = _per_task_ms(c, n)
    with LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=False, dashboard_address=None) as lc, \
            Client(lc) as c:
        threads = _per_task_ms(c, n)
    result = {"name": "scheduler_per_task", "tasks": n, "n_workers": n_workers,
              "ms_per_task_processes": processes, "ms_per_task_threads": threads, "machine": machine()}
    print(f"{n} trivial tasks: {processes:.2f} ms per task (worker processes), {threads:.2f} ms (threads)")
    return result


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", help="write the result here too (benchmarks/results/scheduler-cpu-2core.json)")
    args = ap.parse_args()
    text = json.dumps(run(args.quick), indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text)
