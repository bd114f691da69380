"""Cluster layer: the decision (plan_cluster) with detection injected, then real starts.

GPU detection is never mocked inside Dask: ``plan_cluster`` is a pure function
of the facts (GPUs, dask-cuda, cores, memory), and the real clusters started
here are small in-process or one-worker ones. The real LocalCUDACluster runs
only where a GPU exists (marker ``gpu``).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import socket
import time
from pathlib import Path

import dask
import numpy as np
import pytest

from remote_samsing.cluster import (
    ClusterConfig,
    ClusterPlan,
    GPUInfo,
    dashboard_link,
    detect_gpus,
    make_client,
    malloc_trim,
    plan_cluster,
)
from remote_samsing.exceptions import BackendUnavailableError, ConfigError
from remote_samsing.segmenters import DEVICES

GiB = 2**30
TWO_GPUS = [GPUInfo(index=0, name="A", uuid="GPU-aaaa"), GPUInfo(index=1, name="B", uuid="GPU-bbbb")]
THREE_GPUS = TWO_GPUS + [GPUInfo(index=2, name="C", uuid="GPU-cccc")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------
# ClusterConfig validation
# ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"device": "gpu"}, "`device`"),
        ({"gpus": (0, 0)}, "twice"),
        ({"gpus": (-1,)}, "non-negative"),
        ({"gpus": ()}, "empty"),
        ({"gpus": "0,1"}, "sequence"),
        ({"gpus": (0,), "device": "cpu"}, "device 'cpu'"),
        ({"n_workers": 0}, "`n_workers`"),
        ({"n_workers": True}, "`n_workers`"),
        ({"threads_per_worker": 0}, "`threads_per_worker`"),
        ({"memory_limit": "lots"}, "not a size"),
        ({"memory_limit": 1.5}, "fraction"),
        ({"scheduler": "http://host:8786"}, "unknown protocol"),
        ({"scheduler": "tcp://:8786"}, "no host"),
        ({"scheduler": "tcp://h:8786", "n_workers": 2}, "only apply to a local cluster"),
        ({"scheduler": "tcp://h:8786", "gpus": (0,)}, "only apply to a local cluster"),
        ({"tls_ca_file": "ca.pem"}, "not tls://"),
        ({"scheduler": "tls://h:8786", "tls_ca_file": "/nonexistent/ca.pem"}, "does not exist"),
        ({"connect_timeout": 0}, "`connect_timeout`"),
    ],
)
def test_config_rejects(kwargs, fragment):
    with pytest.raises(ConfigError, match=fragment):
        ClusterConfig(**kwargs)


def test_config_normalises():
    cfg = ClusterConfig(gpus=[1, 0], scheduler=None, memory_limit="8GiB")
    assert cfg.gpus == (1, 0)
    assert ClusterConfig(scheduler=" tls://10.0.0.5:8786 ").scheduler == "tls://10.0.0.5:8786"
    assert ClusterConfig(scheduler="10.0.0.5:8786").scheduler == "10.0.0.5:8786"  # dask's tcp default
    # numpy integers and bools are accepted and stored as plain Python values
    cfg = ClusterConfig(gpus=(np.int64(1),), n_workers=np.int64(1), threads_per_worker=np.int32(2),
                        processes=np.bool_(False))
    assert cfg.gpus == (1,) and type(cfg.gpus[0]) is int
    assert type(cfg.n_workers) is int and type(cfg.threads_per_worker) is int and cfg.processes is False
    assert DEVICES == ("auto", "cuda", "cpu")
    assert [ClusterConfig(device=d).device for d in DEVICES] == list(DEVICES)


# ---------------------------------------------------------------------------
# detection (probe injected) and CUDA_VISIBLE_DEVICES
# ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "env, expected",
    [
        (None, [0, 1, 2]),
        ("2,0", [2, 0]),  # CUDA's order, not NVML's
        ("GPU-bbbb", [1]),  # UUID prefixes work too
        ("1,7,2", [1]),  # CUDA stops at the first invalid entry
        ("-1", []),
        ("", []),
    ],
)
def test_detect_gpus_honours_cuda_visible_devices(monkeypatch, env, expected):
    if env is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", env)
    assert [g.index for g in detect_gpus(probe=lambda: THREE_GPUS)] == expected


def test_detect_gpus_real_probe_runs_here():
    # whatever this machine has, the default probe answers with a list and never raises
    gpus = detect_gpus()
    assert isinstance(gpus, list) and all(isinstance(g, GPUInfo) for g in gpus)


def test_gpuinfo_str():
    assert str(GPUInfo(index=1, name="NVIDIA H100", memory_bytes=80 * GiB)) == "1 (NVIDIA H100, 80 GiB)"


# ---------------------------------------------------------------------------
# the decision
# ---------------------------------------------------------------------------
def _plan(needs_gpu=False, gpus=(), have_dask_cuda=True, cpu_count=8, memory_bytes=64 * GiB, **cfg):
    return plan_cluster(
        ClusterConfig(**cfg),
        needs_gpu=needs_gpu,
        gpus=list(gpus),
        have_dask_cuda=have_dask_cuda,
        dask_cuda_error=None if have_dask_cuda else "dask-cuda is not installed",
        cpu_count=cpu_count,
        memory_bytes=memory_bytes,
    )


def test_auto_without_gpu_gives_cpu_localcluster():
    plan = _plan(cpu_count=6)
    assert (plan.kind, plan.n_workers, plan.threads_per_worker) == ("cpu", 6, 1)
    assert plan.worker_resources is None and plan.worker_env == {}
    kw = plan.cluster_kwargs()
    assert kw["processes"] is True and kw["n_workers"] == 6 and "resources" not in kw


def test_auto_cpu_segmenter_stays_on_cpu_workers_even_with_gpus():
    plan = _plan(gpus=TWO_GPUS, cpu_count=16)
    assert plan.kind == "cpu" and plan.n_workers == 16


def test_auto_gpu_segmenter_gets_one_cuda_worker_per_gpu():
    plan = _plan(needs_gpu=True, gpus=TWO_GPUS)
    assert plan.kind == "cuda"
    assert plan.n_workers == 2 and plan.cuda_visible_devices == "0,1"
    assert plan.worker_resources == {"GPU": 1}
    kw = plan.cluster_kwargs()
    assert kw["CUDA_VISIBLE_DEVICES"] == "0,1" and kw["resources"] == {"GPU": 1}
    assert "processes" not in kw  # LocalCUDACluster insists on processes itself


def test_gpus_selection_gives_cuda_visible_devices_in_given_order():
    plan = plan_cluster(
        ClusterConfig(gpus=(2, 0)), needs_gpu=True, gpus=THREE_GPUS, cpu_count=8, memory_bytes=64 * GiB
    )
    assert (plan.kind, plan.cuda_visible_devices, plan.n_workers) == ("cuda", "2,0", 2)


def test_gpus_option_alone_asks_for_cuda_workers():
    plan = plan_cluster(ClusterConfig(gpus=(1,)), needs_gpu=False, gpus=TWO_GPUS, cpu_count=8)
    assert (plan.kind, plan.cuda_visible_devices) == ("cuda", "1")


def test_n_workers_below_gpu_count_uses_first_gpus():
    plan = plan_cluster(ClusterConfig(n_workers=1), needs_gpu=True, gpus=TWO_GPUS)
    assert (plan.n_workers, plan.cuda_visible_devices) == (1, "0")


def test_n_workers_above_gpu_count_is_refused():
    with pytest.raises(ConfigError, match="`n_workers` 3 exceeds the 2 selected GPU"):
        plan_cluster(ClusterConfig(n_workers=3), needs_gpu=True, gpus=TWO_GPUS)


def test_unknown_gpu_index_is_refused():
    with pytest.raises(ConfigError, match=r"GPU\(s\) \[5\] that are not visible; visible: \[0, 1\]"):
        plan_cluster(ClusterConfig(gpus=(0, 5)), needs_gpu=True, gpus=TWO_GPUS)


def test_device_cuda_without_gpu_says_so_and_suggests_cpu():
    with pytest.raises(BackendUnavailableError, match="device 'cuda' was asked for, but no NVIDIA GPU") as ei:
        plan_cluster(
            ClusterConfig(device="cuda"), needs_gpu=False, gpus=[], gpu_notes=["NVML unavailable (LibraryNotFound)"]
        )
    assert "NVML unavailable" in str(ei.value)
    assert "--device cpu" in ei.value.hint


def test_gpu_segmenter_on_auto_without_gpu_never_falls_back_silently():
    with pytest.raises(BackendUnavailableError, match="the segmenter needs a GPU") as ei:
        _plan(needs_gpu=True, gpus=[])
    assert "--device cpu" in ei.value.hint


@pytest.mark.parametrize("device", ["auto", "cuda"])
def test_missing_dask_cuda_is_an_error_naming_it(device):
    with pytest.raises(BackendUnavailableError, match="dask-cuda is not installed") as ei:
        _plan(needs_gpu=True, gpus=TWO_GPUS, have_dask_cuda=False, device=device)
    assert "remote_samsing[gpu]" in ei.value.hint and "--device cpu" in ei.value.hint


def test_device_cpu_for_gpu_segmenter_gives_cpu_workers_the_gpu_resource():
    plan = _plan(needs_gpu=True, gpus=TWO_GPUS, device="cpu", cpu_count=16, memory_bytes=24 * GiB)
    assert plan.kind == "cpu"
    assert plan.worker_resources == {"GPU": 1}
    # SAM2 needs ~6 GiB per block on CPU: 24 GiB fits 4 workers, not 16
    assert plan.n_workers == 4
    # the GPUs are hidden from CPU workers so the segmenter picks the CPU
    assert plan.worker_env == {"CUDA_VISIBLE_DEVICES": ""}
    assert plan.cluster_kwargs()["env"] == {"CUDA_VISIBLE_DEVICES": ""}
    assert any("CPU workers" in n for n in plan.notes)


def test_device_cpu_n_workers_given_is_kept():
    plan = _plan(needs_gpu=True, device="cpu", n_workers=3, cpu_count=16, memory_bytes=8 * GiB)
    assert plan.n_workers == 3


def test_scheduler_address_means_connect():
    plan = _plan(needs_gpu=True, scheduler="tls://10.0.0.5:8786")
    assert plan == ClusterPlan(kind="connect", address="tls://10.0.0.5:8786", require_gpu_workers=True)
    assert not _plan(scheduler="tcp://h:1").require_gpu_workers
    with pytest.raises(ConfigError):
        plan.cluster_kwargs()


def test_dashboard_needs_bokeh():
    with_bokeh = plan_cluster(ClusterConfig(), needs_gpu=False, have_bokeh=True)
    without = plan_cluster(ClusterConfig(), needs_gpu=False, have_bokeh=False)
    assert with_bokeh.dashboard_address == ":8787"
    assert without.dashboard_address is None and any("bokeh" in n for n in without.notes)
    assert plan_cluster(ClusterConfig(dashboard=False), needs_gpu=False).dashboard_address is None


def test_a_taken_dashboard_port_gives_any_free_port_and_no_dashboard_leaves_it_alone():
    taken = plan_cluster(ClusterConfig(), needs_gpu=False, have_bokeh=True, dashboard_port_free=False)
    assert taken.dashboard_address == ":0" and not taken.notes
    off = plan_cluster(ClusterConfig(dashboard=False), needs_gpu=False)
    # the scheduler's HTTP server (health, metrics) runs without a dashboard too: never on Dask's port
    assert off.cluster_kwargs()["scheduler_kwargs"] == {"dashboard_address": ":0"}
    assert "scheduler_kwargs" not in taken.cluster_kwargs()


@contextlib.contextmanager
def _dashboard_port_taken():
    """Something listens on Dask's dashboard port (this test, or another job of the machine)."""
    from remote_samsing.cluster import DASHBOARD_PORT, _port_is_free

    sock = socket.socket()
    try:
        try:
            sock.bind(("127.0.0.1", DASHBOARD_PORT))
            sock.listen()
        except OSError:  # another job has it: taken all the same
            pass
        assert not _port_is_free(DASHBOARD_PORT)
        yield DASHBOARD_PORT
    finally:
        sock.close()


@pytest.mark.timeout(60)
def test_a_taken_dashboard_port_is_no_warning_and_the_link_names_the_port_used(recwarn):
    from urllib.parse import urlparse

    messages = []
    with _dashboard_port_taken() as port:
        for dashboard in (True, False):
            cfg = ClusterConfig(n_workers=1, processes=False, dashboard=dashboard)
            with make_client(cfg, needs_gpu=False, log=messages.append) as client:
                assert client.submit(pow, 2, 3).result() == 8
    assert not [str(w.message) for w in recwarn if "already in use" in str(w.message)]
    (link,) = [m for m in messages if m.startswith("dashboard: ")]
    assert urlparse(link.split(" ", 1)[1]).port not in (None, port)


def test_describe_is_one_line():
    text = _plan(needs_gpu=True, gpus=TWO_GPUS).describe()
    assert text.startswith("LocalCUDACluster: 2 worker(s) on GPU(s) 0,1") and "GPU=1" in text


# ---------------------------------------------------------------------------
# make_client: errors before anything starts, then real (small) clusters
# ---------------------------------------------------------------------------
def test_make_client_cuda_without_gpu_raises_before_starting():
    with pytest.raises(BackendUnavailableError, match="no NVIDIA GPU"):
        with make_client(ClusterConfig(device="cuda"), needs_gpu=True, probe=lambda: []):
            pytest.fail("no cluster may start")  # pragma: no cover


@pytest.mark.timeout(60)
def test_make_client_local_cpu_cluster_works_and_closes():
    messages = []
    cfg = ClusterConfig(n_workers=1, processes=False, dashboard=False)
    with make_client(cfg, needs_gpu=False, log=messages.append) as client:
        assert client.submit(lambda x: x * 2, 21).result() == 42
        assert len(client.scheduler_info()["workers"]) == 1
        assert dashboard_link(client) is None  # dashboard=False
        # no resource annotations in play: task fusion left as configured
        assert dask.config.get("optimization.fuse.active") is None
    assert client.status == "closed"
    assert messages and messages[-1].startswith("starting LocalCluster: 1 worker(s)")


def _sigint_handler():
    import signal

    return signal.getsignal(signal.SIGINT)


def _log_in_worker():
    import logging

    logging.getLogger("distributed.worker").warning("a worker's warning")
    logging.getLogger("distributed.worker").error("a worker's error")


@pytest.mark.timeout(90)
def test_worker_processes_leave_ctrl_c_to_this_process_and_log_at_its_dask_level(capfd):
    """A terminal's Ctrl-C reaches the worker processes too: they ignore it, the main process closes
    them. They log at this process's level for Dask (the CLI's ERROR); after the cluster closed, in
    order, nothing more is said."""
    import logging
    import signal

    import distributed  # noqa: F401 - its import sets its loggers' levels: the test's must come after

    dask_logger = logging.getLogger("distributed")
    level = dask_logger.level
    dask_logger.setLevel(logging.ERROR)
    own = _sigint_handler()  # Python's own, or SIG_IGN where the tests were started in the background
    try:
        with make_client(ClusterConfig(n_workers=1, dashboard=False), needs_gpu=False) as client:
            (handler,) = client.run(_sigint_handler).values()
            client.run(_log_in_worker)
        time.sleep(1.5)  # a worker outliving the scheduler would fail its heartbeat (every ~0.5 s) here
    finally:
        dask_logger.setLevel(level)
    assert handler == signal.SIG_IGN
    assert _sigint_handler() is own  # this process keeps its own
    err = capfd.readouterr().err
    assert [line for line in err.splitlines() if "distributed." in line or "Traceback" in line] == [
        line for line in err.splitlines() if line.endswith("distributed.worker - ERROR - a worker's error")]
    assert "a worker's error" in err and "a worker's warning" not in err


@pytest.mark.timeout(90)
def test_make_client_worker_processes_get_the_allocator_settings():
    import os

    from remote_samsing.cluster import WORKER_MALLOC_ENV

    cfg = ClusterConfig(n_workers=1, dashboard=False)
    with make_client(cfg, needs_gpu=False) as client:
        env = client.submit(lambda: {k: os.environ.get(k) for k in WORKER_MALLOC_ENV}, pure=False).result()
    assert env == WORKER_MALLOC_ENV


@pytest.mark.timeout(90)
def test_allocator_settings_reach_workers_after_another_cluster_but_a_users_value_is_kept(monkeypatch):
    """An earlier local cluster in this process leaves its nanny's
    ``MALLOC_TRIM_THRESHOLD_=65536`` in the environment, which later nannies
    take over their configuration: ours must still reach our workers. A
    value of the user's own in the environment is kept."""
    import os

    from remote_samsing.cluster import WORKER_MALLOC_ENV

    def worker_value(client):
        return client.submit(lambda: os.environ.get("MALLOC_TRIM_THRESHOLD_"), pure=False).result()

    cfg = ClusterConfig(n_workers=1, dashboard=False)
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")  # what distributed's nanny writes
    with make_client(cfg, needs_gpu=False) as client:
        assert worker_value(client) == WORKER_MALLOC_ENV["MALLOC_TRIM_THRESHOLD_"]
    assert os.environ["MALLOC_TRIM_THRESHOLD_"] == "65536"  # this process's environment as it was
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "131072")  # the user's own
    with make_client(cfg, needs_gpu=False) as client:
        assert worker_value(client) == "131072"


@pytest.mark.timeout(90)
def test_make_client_relaxes_dask_housekeeping_but_keeps_a_users_setting():
    from dask.utils import parse_timedelta

    def intervals():
        from distributed import get_worker

        w = get_worker()
        return {
            "profile": w.periodic_callbacks["profile"].callback_time,
            "tick": w.periodic_callbacks["tick"].callback_time,
            "monitor": w.periodic_callbacks["monitor"].callback_time,
        }

    def scheduler_intervals(dask_scheduler):
        return {k: dask_scheduler.periodic_callbacks[k].callback_time for k in ("tick", "monitor")}

    import distributed  # noqa: F401 - its defaults must be loaded before dask.config.set, whose exit
    # would otherwise drop the whole "distributed" section it saw missing on entry

    cfg = ClusterConfig(n_workers=1, dashboard=False)
    # a user's own tick interval stays; the two others are at Dask's default and are relaxed
    with dask.config.set({"distributed.admin.tick.interval": "35ms"}):
        with make_client(cfg, needs_gpu=False) as client:
            got = client.submit(intervals, pure=False).result()
            on_scheduler = client.run_on_scheduler(scheduler_intervals)
    assert got == {"profile": 100, "tick": 35, "monitor": 1000}  # milliseconds
    assert on_scheduler == {"tick": 35, "monitor": 1000}
    # nothing leaks into this process's configuration
    assert parse_timedelta(dask.config.get("distributed.admin.system-monitor.interval")) == 0.5
    assert parse_timedelta(dask.config.get("distributed.worker.profile.interval"), default="ms") == 0.01


@pytest.mark.timeout(90)
def test_make_client_cpu_fallback_runs_gpu_annotated_tasks():
    cfg = ClusterConfig(device="cpu", n_workers=1, dashboard=False)  # one worker process
    with make_client(cfg, needs_gpu=True) as client:
        (worker,) = client.scheduler_info()["workers"].values()
        assert worker["resources"] == {"GPU": 1}
        assert client.submit(sum, [1, 2], resources={"GPU": 1}).result() == 3
        # the worker process sees no GPU, so "auto" segmenters pick the CPU
        (env,) = client.run(lambda: os.environ.get("CUDA_VISIBLE_DEVICES")).values()
        assert env == ""
        assert dask.config.get("optimization.fuse.active") is False
    assert dask.config.get("optimization.fuse.active") is None


async def _annotated_runs_on(optimize_graph: bool, fuse):
    """Which worker ran the annotated map_overlap tasks: 1 = the GPU worker, 2 = the other."""
    from distributed import Client, Scheduler, Worker

    def seg(block, block_info=None):
        from distributed import get_worker

        return np.full((1, 1), int(get_worker().name), np.int64)

    x = (dask.array.arange(64 * 64 * 3, chunks=16 * 16 * 3).reshape(64, 64, 3).rechunk((16, 16, 3)) % 7) + 1
    with dask.annotate(resources={"GPU": 1}):
        y = dask.array.map_overlap(
            seg, x, depth={0: 2, 1: 2, 2: 0}, boundary="none", trim=False, chunks=(1, 1),
            drop_axis=2, dtype=np.int64, meta=np.empty((0, 0), np.int64),
        )
    async with Scheduler(dashboard_address=None, host="127.0.0.1") as s:
        async with Worker(s.address, name=1, nthreads=1, resources={"GPU": 1}), Worker(
            s.address, name=2, nthreads=1
        ), Client(s.address, asynchronous=True) as c:
            with dask.config.set({"optimization.fuse.active": fuse}):
                r = await c.compute(y, optimize_graph=optimize_graph)
    return sorted(set(np.asarray(r).ravel().tolist()))


@pytest.mark.timeout(60)
def test_resource_annotations_survive_only_without_low_level_fusion():
    # the incantation documented in remote_samsing.cluster: optimize_graph=False, or
    # fusion switched off where the scheduler runs (here: in this process)
    assert asyncio.run(_annotated_runs_on(False, None)) == [1]
    assert asyncio.run(_annotated_runs_on(True, False)) == [1]
    # dask's default drops the annotation: the tasks spread over both workers. If this
    # starts failing, dask keeps annotations through fusion now and the guard can go.
    assert asyncio.run(_annotated_runs_on(True, None)) == [1, 2]


@pytest.mark.timeout(60)
def test_connect_to_existing_scheduler_and_gpu_worker_check():
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, processes=False, dashboard_address=None, threads_per_worker=1) as lc:
        messages = []
        with make_client(ClusterConfig(scheduler=lc.scheduler_address), needs_gpu=False,
                         log=messages.append) as client:
            assert client.submit(lambda: "ok").result() == "ok"
        assert messages == [f"connecting to the Dask scheduler at {lc.scheduler_address} (waiting up to 30 s)",
                            f"scheduler {lc.scheduler_address}: 1 worker (1 thread), no GPU"]
        with pytest.raises(BackendUnavailableError, match="none of the 1 worker") as ei:
            with make_client(ClusterConfig(scheduler=lc.scheduler_address), needs_gpu=True):
                pytest.fail("must refuse a cluster without GPU workers")  # pragma: no cover
        assert "--resources GPU=1" in ei.value.hint


@pytest.mark.timeout(60)
def test_only_a_client_of_a_local_cluster_runs_its_workers_on_this_machine():
    from distributed import Client, LocalCluster

    from remote_samsing.cluster import on_this_machine

    with LocalCluster(n_workers=1, processes=False, dashboard_address=None, threads_per_worker=1) as lc:
        with Client(lc) as own:
            assert on_this_machine(own)
        # the same workers, reached by the scheduler's address: nothing says where they run
        with make_client(ClusterConfig(scheduler=lc.scheduler_address), needs_gpu=False) as by_address:
            assert not on_this_machine(by_address)


@pytest.mark.parametrize(("address", "local"), [
    ("inproc://192.0.2.2/9278/4", True), ("tcp://127.0.0.1:40001", True), ("tcp://[::1]:40001", True),
    ("tcp://localhost:40001", True), ("tcp://10.0.0.5:40001", False), ("tls://node7:8786", False),
    ("ucx://10.1.1.1:13337", False)])
def test_a_worker_is_on_this_machine_in_this_process_or_behind_loopback(address, local):
    """A ``LocalCluster`` listening on the network may have workers from elsewhere: only workers in
    this process or on a loopback address count as sharing this machine's disk."""
    from remote_samsing.cluster import _is_local_address

    assert _is_local_address(address) is local


@pytest.mark.timeout(60)
def test_connecting_says_in_one_line_how_many_workers_and_gpus_it_found():
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, processes=False, dashboard_address=None, threads_per_worker=2,
                      resources={"GPU": 1}) as lc:
        messages = []
        with make_client(ClusterConfig(scheduler=lc.scheduler_address), needs_gpu=True, log=messages.append):
            pass
    assert messages[1:] == [f"scheduler {lc.scheduler_address}: 2 workers (4 threads), 2 GPUs"]


@pytest.mark.timeout(30)
def test_unreachable_scheduler_is_a_clear_error():
    address = f"tcp://127.0.0.1:{_free_port()}"
    with pytest.raises(BackendUnavailableError, match="cannot reach the Dask scheduler"):
        with make_client(ClusterConfig(scheduler=address, connect_timeout=1), needs_gpu=False):
            pass  # pragma: no cover


# ---------------------------------------------------------------------------
# TLS: a real tls:// scheduler with a temporary self-signed certificate
# ---------------------------------------------------------------------------
@pytest.fixture
def tls_scheduler(tmp_path):
    pytest.importorskip("cryptography")  # Security.temporary() needs it
    from distributed import LocalCluster
    from distributed.security import Security

    sec = Security.temporary()  # one self-signed cert + key, held in memory
    cert = tmp_path / "cert.pem"
    key = tmp_path / "key.pem"
    cert.write_text(sec.tls_ca_file)  # self-signed: the certificate is its own CA
    key.write_text(sec.tls_client_key)
    with LocalCluster(
        n_workers=1, processes=False, protocol="tls://", security=sec, dashboard_address=None
    ) as lc:
        yield lc.scheduler_address, str(cert), str(key)


@pytest.mark.timeout(60)
def test_tls_scheduler_with_file_options(tls_scheduler):
    address, cert, key = tls_scheduler
    assert address.startswith("tls://")
    cfg = ClusterConfig(scheduler=address, tls_ca_file=cert, tls_cert=cert, tls_key=key)
    with make_client(cfg, needs_gpu=False) as client:
        assert client.submit(pow, 2, 10).result() == 1024


@pytest.mark.timeout(60)
def test_tls_scheduler_with_dask_config(tls_scheduler):
    address, cert, key = tls_scheduler
    tls = {
        "distributed.comm.tls.ca-file": cert,
        "distributed.comm.tls.client.cert": cert,
        "distributed.comm.tls.client.key": key,
    }
    with dask.config.set(tls):
        with make_client(ClusterConfig(scheduler=address), needs_gpu=False) as client:
            assert client.submit(pow, 3, 3).result() == 27


def test_tls_without_certificates_is_refused_before_connecting():
    with dask.config.set({"distributed.comm.tls.ca-file": None, "distributed.comm.tls.client.cert": None}):
        with pytest.raises(ConfigError, match="uses TLS but no CA file") as ei:
            with make_client(ClusterConfig(scheduler="tls://127.0.0.1:1"), needs_gpu=False):
                pass  # pragma: no cover
    assert "DASK_DISTRIBUTED__COMM__TLS__CA_FILE" in ei.value.hint


# ---------------------------------------------------------------------------
# the real thing, where a GPU exists
# ---------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.timeout(180)
def test_local_cuda_cluster_one_worker_per_gpu():
    pytest.importorskip("dask_cuda")
    gpus = detect_gpus()
    if not gpus:
        pytest.skip("no NVIDIA GPU on this machine")
    cfg = ClusterConfig(device="cuda", dashboard=False)
    with make_client(cfg, needs_gpu=True) as client:
        workers = client.scheduler_info()["workers"]
        assert len(workers) == len(gpus)
        assert all(w["resources"] == {"GPU": 1} for w in workers.values())
        visible = client.run(lambda: os.environ["CUDA_VISIBLE_DEVICES"].split(",")[0])
        # each worker sees its own GPU first
        assert sorted(visible.values()) == sorted(str(g.index) for g in gpus)
        if importlib.util.find_spec("torch"):

            def on_gpu():
                import torch

                return float(torch.ones(4, device="cuda").sum())

            assert client.submit(on_gpu, resources={"GPU": 1}).result() == 4.0


@contextlib.contextmanager
def trimming_memory(interval: float = 1.0):
    """Call :func:`malloc_trim` every ``interval`` seconds in this process while the block runs."""
    import threading

    stop = threading.Event()

    def loop():
        while not stop.wait(float(interval)):
            malloc_trim()

    thread = threading.Thread(target=loop, name="remote-samsing-trim-memory", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def test_malloc_trim_runs_in_a_thread_while_the_block_runs_and_stops_after():
    import threading
    import time

    def trimmers():
        return [t for t in threading.enumerate() if t.name == "remote-samsing-trim-memory"]

    with trimming_memory(0.01):
        assert len(trimmers()) == 1
        time.sleep(0.05)  # a few trims
    assert trimmers() == []
    malloc_trim()  # a no-op where libc has no malloc_trim, never an error


@pytest.mark.parametrize(("status", "kept"), [("running", True), ("paused", True), ("closing", False),
                                              ("closed", False)])
def test_a_worker_closing_drops_its_failed_heartbeat_record_and_only_that(status, kept):
    """A worker of a local cluster logs a failed heartbeat while it runs, not while the cluster closes
    it (distributed logs that race as an error with a traceback); its other records pass."""
    import logging

    from distributed.core import Status

    from remote_samsing._worker_setup import _HeartbeatAtClose

    class Worker:  # what the filter reads of a worker (a weak reference to it is kept)
        pass

    worker = Worker()
    worker.status = Status(status)
    quiet = _HeartbeatAtClose(worker)

    def record(msg):
        return logging.LogRecord("distributed.worker", logging.ERROR, __file__, 1, msg, None, None)

    assert quiet.filter(record("Failed to communicate with scheduler during heartbeat.")) is kept
    assert quiet.filter(record("Compute Failed")) is True
    del worker
    assert quiet.filter(record("Failed to communicate with scheduler during heartbeat.")) is False
