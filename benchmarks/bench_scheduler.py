"""Scheduler cost per task on this machine: why tasks per block set a cheap segmenter's speed.

Times ``client.map`` of trivial tasks (``lambda i: i``) on the embedded
cluster (2 worker processes, one thread each, as ``remote-samsing segment``
starts it) and on a threads-only ``LocalCluster``, and prints milliseconds
per task. A run of the pipeline costs roughly this much per task on top of
its pixel work (see docs/architecture.md, "Performance notes").

With ``--waves N``, the same embedded cluster runs N light items (about 10 ms
of numpy each, a light block's order of work) through
:func:`remote_samsing.execute.run_in_waves` with one task per item and with
``batch="adaptive"``, alternating, and prints the seconds, this process's
CPU seconds (client and scheduler) and the tasks each needed.

    python -m benchmarks.bench_scheduler            # 2,500 tasks
    python -m benchmarks.bench_scheduler --quick    # 200 tasks
    python -m benchmarks.bench_scheduler --waves 400 --repeats 3
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


def _light_item(i):
    """About 10 ms of numpy work, the same for every item."""
    import numpy as np

    return float(np.sort(np.random.default_rng(i).random(200_000))[0])


def _waves_row(client, n: int, batch) -> dict:
    import resource

    from distributed import get_task_stream

    from remote_samsing.execute import run_in_waves

    def cpu():
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    c0, t0 = cpu(), time.perf_counter()
    with get_task_stream(client) as ts:
        run_in_waves(client, _light_item, range(n), name=f"bench-{batch}", batch=batch)
    seconds, main_cpu = time.perf_counter() - t0, cpu() - c0
    tasks = sum(1 for t in ts.data if str(t["key"]).startswith(f"rs-bench-{batch}-"))
    return {"batch": batch, "seconds": seconds, "client_scheduler_cpu_s": main_cpu, "tasks": tasks}


def run_waves(n: int, *, repeats: int = 3, n_workers: int = 2) -> dict:
    """``n`` light items through run_in_waves, one task each and adaptive, alternating ``repeats`` times."""
    import statistics

    from remote_samsing.cluster import ClusterConfig, make_client

    rows = []
    with make_client(ClusterConfig(n_workers=n_workers, dashboard=False), needs_gpu=False) as c:
        c.gather(c.map(_light_item, range(4 * n_workers), pure=False))  # the workers' imports
        for _ in range(repeats):
            for batch in (1, "adaptive"):
                rows.append(_waves_row(c, n, batch))
                r = rows[-1]
                print(f"batch={batch!s:9s} {r['seconds']:.2f} s, client+scheduler {r['client_scheduler_cpu_s']:.2f} "
                      f"CPU s, {r['tasks']} tasks")
    one = [r for r in rows if r["batch"] == 1]
    ada = [r for r in rows if r["batch"] == "adaptive"]
    ratio = statistics.median(a["seconds"] / b["seconds"] for a, b in zip(one, ada))
    cpu_ratio = statistics.median(a["client_scheduler_cpu_s"] / b["client_scheduler_cpu_s"] for a, b in zip(one, ada))
    print(f"{n} items of ~10 ms: adaptive over one task per item, median of {repeats}: {ratio:.2f}x faster, "
          f"{cpu_ratio:.2f}x less client+scheduler CPU")
    return {"name": "waves_light_items", "items": n, "n_workers": n_workers, "repeats": repeats, "rows": rows,
            "speedup_adaptive_median": ratio, "client_scheduler_cpu_ratio_median": cpu_ratio, "machine": machine()}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--waves", type=int, metavar="N", help="N light items through run_in_waves, batch 1 vs adaptive")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", help="write the result here too (benchmarks/results/scheduler-cpu-2core.json; "
                                   "with --waves: waves-cpu-2core.json)")
    args = ap.parse_args()
    result = run_waves(args.waves, repeats=args.repeats) if args.waves else run(args.quick)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text)
