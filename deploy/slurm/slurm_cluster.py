"""Run remote-samsing on a SLURM cluster: one GPU worker per SLURM job.

This script is the *driver*: it runs the Dask scheduler and the pipeline in its
own (small, CPU-only) allocation and submits GPU worker jobs through
dask-jobqueue (https://jobqueue.dask.org). Each worker job asks SLURM for one
GPU (``--gres=gpu:1``) and advertises the Dask resource ``GPU=1``, so SAM2
blocks run one at a time per GPU while merge and I/O tasks use the job's other
cores. SLURM sets ``CUDA_VISIBLE_DEVICES`` per job; nodes with several GPUs
simply take several one-GPU jobs.

Input, output directory and checkpoint must be on a filesystem every node sees
at the same path: workers write the staged blocks into ``OUTDIR/staging``
themselves. Rerunning the same command resumes an interrupted job.

Usage (inside ``segment.sbatch`` or on a login node)::

    python deploy/slurm/slurm_cluster.py /scratch/mosaic.tif /scratch/out \
        --config run.yaml --partition gpu --account myproj --jobs 8 --walltime 12:00:00

    python deploy/slurm/slurm_cluster.py IN OUT --partition gpu --dry-run   # print the job script

Needs ``dask-jobqueue`` in the environment (``pip install dask-jobqueue``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def gpu_worker_options(
    *,
    partition: str,
    account: str | None = None,
    walltime: str = "12:00:00",
    cores: int = 8,
    memory: str = "64GB",
    gpus_per_job: int = 1,
    python: str | None = None,
    job_script_prologue: Sequence[str] = (),
    local_directory: str | None = "$TMPDIR",
    log_directory: str | None = None,
    interface: str | None = None,
    dashboard_address: str | None = ":8787",
) -> dict:
    """Keyword arguments of ``dask_jobqueue.SLURMCluster`` for GPU workers.

    One Dask worker process per job with ``cores`` threads; SAM2 tasks ask for
    ``{"GPU": 1}``, so at most one runs at a time on each worker.

    Parameters
    ----------
    partition, account, walltime : str
        ``#SBATCH -p / -A / -t``. The walltime bounds each worker; the driver
        resubmits nothing by itself, but a rerun resumes from the staged blocks.
    cores, memory : int, str
        CPU cores (``--cpus-per-task``, also the worker's threads) and memory
        per job.
    gpus_per_job : int
        Only 1 is supported: a Dask worker owns exactly one GPU.
    python : str, optional
        Python of the environment on the compute nodes (default: this one).
    job_script_prologue : sequence of str
        Shell lines run before the worker starts (``module load``, ``source venv``).
    local_directory, log_directory : str, optional
        Node-local scratch for spilling, and where SLURM writes worker logs.
    interface : str, optional
        Network interface the workers bind to (e.g. ``ib0``).
    dashboard_address : str, optional
        Scheduler dashboard address (None: off).
    """
    if gpus_per_job != 1:
        raise ValueError(
            f"gpus_per_job={gpus_per_job}: each worker job holds exactly one GPU; "
            "submit more jobs instead (--jobs)"
        )
    opts: dict = dict(
        queue=partition,
        account=account,
        walltime=walltime,
        cores=cores,
        processes=1,
        memory=memory,
        job_name="remote-samsing-gpu",
        job_extra_directives=[f"--gres=gpu:{gpus_per_job}"],
        worker_extra_args=["--resources", "GPU=1"],
        job_script_prologue=[
            *job_script_prologue,
            # keep resource annotations through graph optimisation in every process
            "export DASK_OPTIMIZATION__FUSE__ACTIVE=False",
            # glibc allocator: the nanny's default trim setting makes numpy work
            # 2x slower (remote_samsing/cluster.py, WORKER_MALLOC_ENV)
            "export MALLOC_TRIM_THRESHOLD_=67108864 MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_ARENA_MAX=2",
            # Dask's housekeeping at coarser intervals (remote_samsing/cluster.py, HOUSEKEEPING_INTERVALS)
            "export DASK_DISTRIBUTED__WORKER__PROFILE__INTERVAL=100ms DASK_DISTRIBUTED__ADMIN__TICK__INTERVAL=100ms "
            "DASK_DISTRIBUTED__ADMIN__SYSTEM_MONITOR__INTERVAL=1s",
        ],
        local_directory=local_directory,
        log_directory=log_directory,
        scheduler_options={"dashboard_address": dashboard_address},
    )
    if python:
        opts["python"] = python
    if interface:
        opts["interface"] = interface
    return opts


def build_cluster(**options):
    """A ``SLURMCluster`` from :func:`gpu_worker_options` (no jobs submitted yet)."""
    from dask_jobqueue import SLURMCluster

    return SLURMCluster(**gpu_worker_options(**options))


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("input", help="mosaic (GeoTIFF/COG/Zarr) on a shared filesystem")
    ap.add_argument("outdir", help="output directory on a shared filesystem, or a URL on an object store (s3://...)")
    ap.add_argument("--config", help="YAML file of remote-samsing options (keys as in `segment --config`)")
    ap.add_argument("--partition", required=True)
    ap.add_argument("--account")
    ap.add_argument("--jobs", type=int, default=4, help="GPU worker jobs (= GPUs) to request [4]")
    ap.add_argument("--walltime", default="12:00:00")
    ap.add_argument("--cores", type=int, default=8, help="CPU cores per GPU job [8]")
    ap.add_argument("--memory", default="64GB", help="memory per GPU job [64GB]")
    ap.add_argument("--prologue", action="append", default=[], help="shell line before each worker, repeatable")
    ap.add_argument("--log-directory", default="dask-logs")
    ap.add_argument("--interface", help="network interface for workers, e.g. ib0")
    ap.add_argument("--dry-run", action="store_true", help="print the worker job script and exit")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    import dask

    cluster = build_cluster(
        partition=args.partition,
        account=args.account,
        walltime=args.walltime,
        cores=args.cores,
        memory=args.memory,
        job_script_prologue=args.prologue,
        log_directory=args.log_directory,
        interface=args.interface,
        dashboard_address=None if args.dry_run else ":8787",
    )
    try:
        if args.dry_run:
            print(cluster.job_script())
            return 0
        from distributed import Client

        from remote_samsing.config import RunConfig
        from remote_samsing.pipeline import run

        overrides = {"progress": False}
        cfg = RunConfig.from_yaml(args.config, **overrides) if args.config else RunConfig(**overrides)
        cluster.scale(jobs=args.jobs)
        # the scheduler lives in this process: keep GPU annotations through fusion
        with dask.config.set({"optimization.fuse.active": False}), Client(cluster) as client:
            print(f"scheduler {cluster.scheduler_address}, dashboard {client.dashboard_link}", flush=True)
            record = run(args.input, args.outdir, config=cfg, client=client, log=lambda m: print(m, flush=True))
        print(f"done: {record.get('n_segments')} segments in {args.outdir}")
        return 0
    finally:
        cluster.close()


if __name__ == "__main__":
    sys.exit(main())
