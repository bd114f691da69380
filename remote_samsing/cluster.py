"""Where the work runs: a local CPU or CUDA cluster, or an existing scheduler.

:func:`make_client` turns a :class:`ClusterConfig` into a connected
``distributed.Client`` in three steps:

1. **Detect** the NVIDIA GPUs (:func:`detect_gpus`: NVML through
   ``nvidia-ml-py``, filtered by ``CUDA_VISIBLE_DEVICES``; ``torch.cuda`` only
   when NVML's Python binding is missing). Detection is skipped when nothing
   depends on it.
2. **Decide** (:func:`plan_cluster`, a pure function, unit-tested with the
   detection injected): connect to ``scheduler``; or start
   ``dask_cuda.LocalCUDACluster`` with one worker process per selected GPU;
   or start a CPU ``distributed.LocalCluster`` with one single-threaded worker
   process per core. A GPU segmenter never falls back to CPU workers
   silently: that happens only with ``device="cpu"``.
3. **Start** it, and close everything when the ``with`` block ends.

Worker resources
----------------
GPU segmenters (SAM2) declare ``resources = {"GPU": 1}`` and the pipeline
annotates their tasks with it, so they run only on workers advertising a
``GPU`` resource, one at a time per worker; merge, relabel and I/O tasks carry
no annotation and run anywhere. Local CUDA workers advertise ``GPU=1`` each.
With ``device="cpu"`` and a GPU segmenter, every CPU worker advertises
``GPU=1`` as well, so the same annotated graph runs on CPU workers, one block
per worker at a time (SAM2 needs several GB of RAM per block; more at once
would only swap). Workers of an existing cluster must be started with
``--resources GPU=1`` (see ``deploy/``).

Annotations and graph optimisation (dask 2026.7)
------------------------------------------------
Dask's low-level task fusion (``optimization.fuse.active``) turns the
optimised array graph into one plain layer *on the scheduler* while it
materialises the graph, and that drops every layer annotation: an annotated
task may then run on any worker. With ``dask scheduler`` + two ``dask
worker`` processes (one with ``--resources GPU=1``), annotated tasks run on
both workers with ``client.compute(x)``, and on the GPU worker only with
``client.compute(x, optimize_graph=False)`` (also ``x.compute(optimize_graph=False)``,
``DataArray.compute(optimize_graph=False)``, ``client.persist(x, optimize_graph=False)``),
or when the *scheduler process* has ``optimization.fuse.active: False``;
setting that option in the client process only helps when the scheduler
runs in the same process. So: compute GPU-annotated graphs with
``optimize_graph=False``; for the clusters started here (scheduler in this
process) :func:`make_client` additionally sets ``optimization.fuse.active``
to False while the client is open.

Running work on the client is :mod:`remote_samsing.execute`'s job.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._progress import counted
from ._validate import check_bool, check_choice, check_int, check_number
from .exceptions import BackendUnavailableError, ConfigError
from .segmenters import DEVICES, GPU_RESOURCES

__all__ = [
    "DASHBOARD_PORT",
    "HOUSEKEEPING_INTERVALS",
    "WORKER_MALLOC_ENV",
    "ClusterConfig",
    "ClusterPlan",
    "GPUInfo",
    "dashboard_link",
    "dask_log_level",
    "detect_gpus",
    "gpu_slots",
    "make_client",
    "malloc_trim",
    "on_this_machine",
    "plan_cluster",
    "resolve_plan",
    "trim_memory_plugin",
]

logger = logging.getLogger(__name__)

#: Peak resident memory of one SAM2 block on CPU workers (5.1-6.7 GB, stack.md §2);
#: caps the number of CPU workers when SAM2 runs on CPU.
_SAM2_CPU_WORKER_BYTES = 6 * 2**30

_SCHEMES = ("tcp", "tls", "inproc", "ucx", "ucxx", "ws", "wss")

#: Dask's dashboard port, which a local cluster takes when nothing else listens on it.
DASHBOARD_PORT = 8787

#: Module that the worker processes of local clusters preload (its ``dask_setup``).
_WORKER_PRELOAD = "remote_samsing._worker_setup"


# ---------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------
def _check_scheduler_address(address: str) -> None:
    scheme, sep, rest = address.partition("://")
    if not sep:  # dask accepts "host:port" and means tcp://
        rest, scheme = address, "tcp"
    if scheme not in _SCHEMES:
        raise ConfigError(
            f"`scheduler` address {address!r} has an unknown protocol `{scheme}://`",
            hint=f"use one of {', '.join(s + '://' for s in _SCHEMES)}, e.g. tcp://10.0.0.5:8786",
        )
    if scheme != "inproc" and (not rest or rest.startswith(":")):
        raise ConfigError(f"`scheduler` address {address!r} has no host", hint="e.g. tcp://10.0.0.5:8786")


@dataclass(frozen=True, kw_only=True)
class ClusterConfig:
    """Where and how the Dask workers run.

    Parameters
    ----------
    scheduler : str, optional
        Address of an existing scheduler (``tcp://host:8786``, ``tls://host:8786``).
        When set, no local cluster is started and ``gpus`` / ``n_workers``
        must be left unset.
    device : {"auto", "cuda", "cpu"}
        ``auto``: GPU segmenters get one CUDA worker per GPU, and an error if
        there is none; CPU segmenters get CPU workers. ``cuda``: always CUDA
        workers (error without GPU or dask-cuda). ``cpu``: CPU workers even
        for GPU segmenters (slow for SAM2, but never chosen silently).
    gpus : tuple of int, optional
        GPU indices (as ``nvidia-smi`` numbers them) for local CUDA workers;
        default all visible GPUs.
    n_workers : int, optional
        Local worker processes; default one per selected GPU, or one per core
        (fewer for SAM2 on CPU, to fit memory).
    threads_per_worker : int
        Threads per worker process.
    memory_limit : str, int, float or None
        Per-worker memory limit for local clusters: ``"auto"`` (system memory
        split evenly), bytes, a fraction of system memory, or a string such
        as ``"8GiB"``.
    processes : bool
        Local CPU workers as processes (default) or threads of this process.
        CUDA workers are always processes.
    dashboard : bool
        Start the dashboard of a local cluster (needs ``bokeh``), on port
        8787, or on any free port while another job holds that one (the
        dashboard line printed names the port). Its task
        profile samples every 100 ms and its system plots every 1 s, not
        Dask's 10 ms and 500 ms (``cluster.HOUSEKEEPING_INTERVALS``; a value
        set in Dask's configuration wins).
    tls_ca_file, tls_cert, tls_key : str, optional
        PEM files for a ``tls://`` scheduler. Unset fields come from Dask's
        configuration (``distributed.comm.tls.ca-file``,
        ``distributed.comm.tls.client.cert``, ``distributed.comm.tls.client.key``,
        or ``DASK_DISTRIBUTED__COMM__TLS__CA_FILE`` etc.).
    connect_timeout : float
        Seconds to wait for an existing scheduler.
    """

    scheduler: str | None = None
    device: str = "auto"
    gpus: tuple[int, ...] | None = None
    n_workers: int | None = None
    threads_per_worker: int = 1
    memory_limit: str | int | float | None = "auto"
    processes: bool = True
    dashboard: bool = True
    tls_ca_file: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    connect_timeout: float = 30.0

    def __post_init__(self) -> None:
        if self.scheduler is not None:
            if not isinstance(self.scheduler, str) or not self.scheduler.strip():
                raise ConfigError(f"`scheduler` must be an address string, got {self.scheduler!r}")
            object.__setattr__(self, "scheduler", self.scheduler.strip())
            _check_scheduler_address(self.scheduler)
        check_choice("device", self.device, DEVICES)
        if self.gpus is not None:
            object.__setattr__(self, "gpus", self._checked_gpus())
        if self.n_workers is not None:
            object.__setattr__(self, "n_workers", check_int("n_workers", self.n_workers, minimum=1))
        if self.scheduler is not None:
            given = [n for n in ("gpus", "n_workers") if getattr(self, n) is not None]
            if given:
                raise ConfigError(
                    f"`{'` and `'.join(given)}` only apply to a local cluster, but `scheduler` "
                    f"{self.scheduler!r} was given",
                    hint="size the existing cluster where its workers are started (see deploy/)",
                )
        object.__setattr__(self, "threads_per_worker", check_int("threads_per_worker", self.threads_per_worker,
                                                                 minimum=1))
        self._check_memory_limit()
        for name in ("processes", "dashboard"):
            object.__setattr__(self, name, check_bool(name, getattr(self, name)))
        self._check_tls_files()
        check_number("connect_timeout", self.connect_timeout, minimum=0, open_min=True)

    def _checked_gpus(self) -> tuple[int, ...]:
        if isinstance(self.gpus, (str, bytes)) or not isinstance(self.gpus, Sequence):
            raise ConfigError(f"`gpus` must be a sequence of GPU indices, got {self.gpus!r}")
        gpus = tuple(self.gpus)
        if not gpus:
            raise ConfigError("`gpus` is empty", hint="leave it unset to use every visible GPU")
        try:
            gpus = tuple(check_int("gpus", g, minimum=0) for g in gpus)
        except ConfigError:
            raise ConfigError(f"`gpus` must hold non-negative integers, got {list(gpus)!r}") from None
        if len(set(gpus)) != len(gpus):
            raise ConfigError(f"`gpus` lists a GPU twice: {list(gpus)!r}")
        if self.device == "cpu":
            raise ConfigError(
                f"`gpus` {list(gpus)!r} was given with device 'cpu'",
                hint="drop --gpus, or use --device cuda",
            )
        return gpus

    def _check_tls_files(self) -> None:
        tls_files = {n: getattr(self, n) for n in ("tls_ca_file", "tls_cert", "tls_key")}
        given_tls = {n: v for n, v in tls_files.items() if v is not None}
        if not given_tls:
            return
        if not (self.scheduler or "").startswith("tls://"):
            raise ConfigError(
                f"`{'`, `'.join(given_tls)}` given, but the scheduler address "
                f"{self.scheduler!r} is not tls://",
                hint="use --scheduler tls://HOST:PORT",
            )
        for name, value in given_tls.items():
            if not isinstance(value, (str, os.PathLike)) or not Path(value).is_file():
                raise ConfigError(f"`{name}` file {value!r} does not exist")
            object.__setattr__(self, name, os.fspath(value))

    def _check_memory_limit(self) -> None:
        m = self.memory_limit
        if m is None or m == "auto":
            return
        if isinstance(m, bool):
            raise ConfigError(f"`memory_limit` must be 'auto', bytes, a fraction or a size string, got {m!r}")
        if isinstance(m, int):
            if m < 0:
                raise ConfigError(f"`memory_limit` must be >= 0 bytes, got {m}")
            return
        if isinstance(m, float):
            if not 0 < m <= 1:
                raise ConfigError(f"`memory_limit` as a fraction must be in (0, 1], got {m}")
            return
        if isinstance(m, str):
            from dask.utils import parse_bytes

            try:
                parse_bytes(m)
            except (ValueError, TypeError):
                raise ConfigError(
                    f"`memory_limit` {m!r} is not a size", hint="e.g. '8GiB', '16GB' or 'auto'"
                ) from None
            return
        raise ConfigError(f"`memory_limit` must be 'auto', bytes, a fraction or a size string, got {m!r}")


# ---------------------------------------------------------------------------
# GPU detection
# ---------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class GPUInfo:
    """One NVIDIA GPU as seen by this process.

    Parameters
    ----------
    index : int
        The device number ``nvidia-smi`` and ``CUDA_VISIBLE_DEVICES`` use.
    name : str
        Product name.
    memory_bytes : int, optional
        Total device memory.
    uuid : str, optional
        ``GPU-...`` identifier.
    """

    index: int
    name: str = "CUDA device"
    memory_bytes: int | None = None
    uuid: str | None = None

    def __str__(self) -> str:
        mem = f", {self.memory_bytes / 2**30:.0f} GiB" if self.memory_bytes else ""
        return f"{self.index} ({self.name}{mem})"


GPUProbe = Callable[[], Sequence[GPUInfo]]


def _visible_filter(gpus: list[GPUInfo], env_value: str | None) -> list[GPUInfo]:
    """Keep the GPUs ``CUDA_VISIBLE_DEVICES`` exposes, in its order.

    NVML enumerates every GPU of the machine whatever the variable says, but
    CUDA (and so torch in the workers) sees only the listed ones.
    """
    if env_value is None:
        return gpus
    out: list[GPUInfo] = []
    for item in (v.strip() for v in env_value.split(",")):
        if not item:
            continue
        if item.lstrip("-").isdigit():
            if int(item) < 0:
                break  # CUDA stops at the first invalid entry ("-1" hides everything after it)
            match = [g for g in gpus if g.index == int(item)]
        else:
            match = [g for g in gpus if g.uuid and g.uuid.startswith(item)]
        if not match:
            break  # same rule: an unknown entry ends the list
        if match[0] not in out:
            out.append(match[0])
    return out


def _nvml_gpus(notes: list[str]) -> list[GPUInfo] | None:
    """Every GPU NVML knows, [] without a driver, None without the binding."""
    try:
        import pynvml  # provided by nvidia-ml-py (a dependency of dask-cuda)
    except ImportError:
        notes.append("nvidia-ml-py (pynvml) is not installed")
        return None
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # noqa: BLE001 - NVMLError_LibraryNotFound, _DriverNotLoaded, ...
        notes.append(f"NVML unavailable ({type(exc).__name__}: {exc}); no NVIDIA driver on this machine?")
        return []
    try:
        out = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(h)
            uuid = pynvml.nvmlDeviceGetUUID(h)
            out.append(
                GPUInfo(
                    index=i,
                    name=name.decode() if isinstance(name, bytes) else str(name),
                    memory_bytes=int(pynvml.nvmlDeviceGetMemoryInfo(h).total),
                    uuid=uuid.decode() if isinstance(uuid, bytes) else str(uuid),
                )
            )
        return out
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()


def _torch_gpus(notes: list[str]) -> list[GPUInfo]:
    """GPUs torch can see (it honours CUDA_VISIBLE_DEVICES itself).

    Only the count is read: ``device_count`` creates no CUDA context, so this
    process keeps no GPU memory while its workers use the devices.
    """
    if importlib.util.find_spec("torch") is None:
        notes.append("torch is not installed")
        return []
    import torch

    n = torch.cuda.device_count()
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [v.strip() for v in env.split(",")] if env else []
    out = []
    for i in range(n):
        phys = int(ids[i]) if i < len(ids) and ids[i].isdigit() else i
        out.append(GPUInfo(index=phys, name="CUDA device (found by torch)"))
    notes.append(
        f"torch.cuda sees {n} GPU(s)" + (" but dask-cuda needs NVML (install nvidia-ml-py)" if n else "")
    )
    return out


def _detect(probe: GPUProbe | None) -> tuple[list[GPUInfo], list[str]]:
    notes: list[str] = []
    gpus = list(probe()) if probe is not None else _nvml_gpus(notes)
    if gpus is None:
        return _torch_gpus(notes), notes
    visible = _visible_filter(gpus, os.environ.get("CUDA_VISIBLE_DEVICES"))
    if gpus and not visible:
        notes.append(f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r} hides all {len(gpus)} GPU(s)")
    return visible, notes


def detect_gpus(*, probe: GPUProbe | None = None) -> list[GPUInfo]:
    """NVIDIA GPUs visible to this process.

    Parameters
    ----------
    probe : callable, optional
        Returns every GPU of the machine, as NVML enumerates them (tests
        inject one). By default NVML is asked through ``nvidia-ml-py``. Either
        answer is then filtered by ``CUDA_VISIBLE_DEVICES`` (indices or
        ``GPU-`` UUID prefixes, in its order, up to the first invalid entry,
        as CUDA reads it). Without ``nvidia-ml-py``, ``torch.cuda.device_count()``
        answers instead (torch is imported only then, never when this module
        is imported).

    Returns
    -------
    list of GPUInfo
        Empty on machines without an NVIDIA driver.

    Examples
    --------
    >>> detect_gpus(probe=lambda: [])  # a machine without NVIDIA GPUs
    []
    >>> str(GPUInfo(index=1, name="NVIDIA A100", memory_bytes=80 * 2**30))
    '1 (NVIDIA A100, 80 GiB)'
    """
    return _detect(probe)[0]


def _dask_cuda_error() -> str | None:
    """None when dask_cuda imports, else why not."""
    if importlib.util.find_spec("dask_cuda") is None:
        return "dask-cuda is not installed"
    try:
        import dask_cuda  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - e.g. ImportError for cuda.bindings (stack.md §5)
        return f"dask-cuda does not import ({type(exc).__name__}: {exc})"
    return None


# ---------------------------------------------------------------------------
# the decision
# ---------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class ClusterPlan:
    """What :func:`make_client` will do; built by :func:`plan_cluster`.

    ``kind`` is ``"connect"`` (existing scheduler at ``address``), ``"cuda"``
    (``dask_cuda.LocalCUDACluster`` on ``cuda_visible_devices``) or ``"cpu"``
    (``distributed.LocalCluster``).
    """

    kind: str
    address: str | None = None
    n_workers: int | None = None
    threads_per_worker: int = 1
    memory_limit: str | int | float | None = "auto"
    processes: bool = True
    cuda_visible_devices: str | None = None
    worker_resources: dict | None = None
    worker_env: dict = field(default_factory=dict)
    dashboard_address: str | None = None
    require_gpu_workers: bool = False
    notes: tuple[str, ...] = ()

    def describe(self) -> str:
        """One line for logs, e.g. ``LocalCUDACluster: 2 worker(s) on GPU(s) 0,1 ...``."""
        if self.kind == "connect":
            return f"existing scheduler {self.address}"
        res = ", resources " + ",".join(f"{k}={v}" for k, v in self.worker_resources.items()) if (
            self.worker_resources
        ) else ""
        where = f" on GPU(s) {self.cuda_visible_devices}" if self.kind == "cuda" else ""
        cls = "LocalCUDACluster" if self.kind == "cuda" else "LocalCluster"
        return (
            f"{cls}: {self.n_workers} worker(s){where}, {self.threads_per_worker} thread(s) each, "
            f"memory limit {self.memory_limit}{res}"
        )

    def cluster_kwargs(self) -> dict:
        """Keyword arguments for the local cluster class."""
        if self.kind == "connect":
            raise ConfigError("a plan that connects to an existing scheduler starts no cluster")
        kw: dict[str, Any] = dict(
            n_workers=self.n_workers,
            threads_per_worker=self.threads_per_worker,
            memory_limit=self.memory_limit,
            dashboard_address=self.dashboard_address,
        )
        if self.dashboard_address is None:
            # the scheduler's HTTP server (health, metrics) runs without a dashboard too, on
            # Dask's dashboard port unless told otherwise: a free port neither takes it nor warns
            kw["scheduler_kwargs"] = {"dashboard_address": ":0"}
        if self.worker_resources:
            kw["resources"] = dict(self.worker_resources)
        if self.kind == "cuda" or self.processes:
            kw["preload"] = [_WORKER_PRELOAD]
        if self.kind == "cuda":
            kw["CUDA_VISIBLE_DEVICES"] = self.cuda_visible_devices
        else:
            kw["processes"] = self.processes
            if self.worker_env and self.processes:
                kw["env"] = dict(self.worker_env)
        return kw


def _no_gpu_message(notes: Sequence[str]) -> str:
    why = f" ({'; '.join(notes)})" if notes else ""
    return f"no NVIDIA GPU was detected{why}"


def plan_cluster(
    config: ClusterConfig,
    *,
    needs_gpu: bool,
    gpus: Sequence[GPUInfo] = (),
    have_dask_cuda: bool = True,
    dask_cuda_error: str | None = None,
    cpu_count: int = 1,
    memory_bytes: int | None = None,
    have_bokeh: bool = True,
    dashboard_port_free: bool = True,
    gpu_notes: Sequence[str] = (),
) -> ClusterPlan:
    """Decide which cluster to use, from facts passed in (no detection here).

    Parameters
    ----------
    config : ClusterConfig
    needs_gpu : bool
        The segmentation tasks ask for ``{"GPU": 1}`` (SAM2).
    gpus : sequence of GPUInfo
        GPUs detected (:func:`detect_gpus`).
    have_dask_cuda : bool
        ``dask_cuda`` imports; ``dask_cuda_error`` says why not.
    cpu_count, memory_bytes : int
        Cores and memory of this machine (sizes CPU clusters).
    have_bokeh : bool
        The dashboard can be served.
    dashboard_port_free : bool
        Nothing listens on :data:`DASHBOARD_PORT`; else the dashboard takes
        any free port.
    gpu_notes : sequence of str
        Why detection found nothing (goes into error messages).

    Returns
    -------
    ClusterPlan

    Raises
    ------
    BackendUnavailableError
        A GPU is required (``device="cuda"``, or a GPU segmenter with
        ``device="auto"``) and there is none, or dask-cuda is missing; the
        hint suggests ``--device cpu``.
    ConfigError
        ``gpus`` names a GPU that is not visible, or ``n_workers`` exceeds the
        selected GPUs.
    """
    if config.scheduler is not None:
        return ClusterPlan(
            kind="connect",
            address=config.scheduler,
            require_gpu_workers=needs_gpu or config.device == "cuda",
        )
    notes: list[str] = []
    dashboard = _dashboard_address(config, have_bokeh, notes, port_free=dashboard_port_free)
    # a CPU segmenter on "auto" gets CPU workers, one per core, even where GPUs
    # exist (one worker per GPU would leave most cores idle)
    wants_cuda = config.device == "cuda" or needs_gpu or config.gpus is not None
    if config.device == "cpu" or not wants_cuda:
        return _cpu_plan(config, needs_gpu=needs_gpu, cpu_count=cpu_count, memory_bytes=memory_bytes,
                         dashboard=dashboard, notes=notes)
    return _cuda_plan(config, needs_gpu=needs_gpu, gpus=gpus, have_dask_cuda=have_dask_cuda,
                      dask_cuda_error=dask_cuda_error, dashboard=dashboard, notes=notes, gpu_notes=gpu_notes)


def _cuda_plan(config: ClusterConfig, *, needs_gpu: bool, gpus: Sequence[GPUInfo], have_dask_cuda: bool,
               dask_cuda_error: str | None, dashboard: str | None, notes: list[str],
               gpu_notes: Sequence[str]) -> ClusterPlan:
    why = "device 'cuda' was asked for" if config.device == "cuda" else (
        "the segmenter needs a GPU" if needs_gpu else f"`gpus` {list(config.gpus or ())} was given"
    )
    selected = _selected_gpus(config, gpus, why=why, gpu_notes=gpu_notes)
    if not have_dask_cuda:
        raise BackendUnavailableError(
            f"{why} and {len(selected)} GPU(s) were found, but {dask_cuda_error or 'dask-cuda is missing'}",
            hint="install the GPU extra: pip install 'remote_samsing[gpu]' "
            "(dask-cuda[cu13] + cuda-bindings), or run on CPU workers with --device cpu",
        )
    n = config.n_workers if config.n_workers is not None else len(selected)
    if n > len(selected):
        raise ConfigError(
            f"`n_workers` {n} exceeds the {len(selected)} selected GPU(s): a CUDA worker owns one GPU",
            hint="lower --n-workers or select more GPUs with --gpus",
        )
    return ClusterPlan(
        kind="cuda",
        n_workers=n,
        threads_per_worker=config.threads_per_worker,
        memory_limit=config.memory_limit,
        processes=True,
        cuda_visible_devices=",".join(str(g.index) for g in selected[:n]),
        worker_resources=dict(GPU_RESOURCES),
        dashboard_address=dashboard,
        notes=tuple(notes),
    )


def _dashboard_address(config: ClusterConfig, have_bokeh: bool, notes: list[str], *,
                       port_free: bool) -> str | None:
    if not config.dashboard:
        return None
    if have_bokeh:
        # Dask's port when it is free; else any free port, which the dashboard line names
        # (Dask would warn in four lines, then take one itself)
        return f":{DASHBOARD_PORT}" if port_free else ":0"
    notes.append("dashboard off: install bokeh to get it")
    return None


def _cpu_plan(config: ClusterConfig, *, needs_gpu: bool, cpu_count: int, memory_bytes: int | None,
              dashboard: str | None, notes: list[str]) -> ClusterPlan:
    n = config.n_workers
    if n is None:
        n = max(1, int(cpu_count))
        if needs_gpu and memory_bytes:
            # one SAM2 block per worker needs several GB: fewer workers than cores
            n = max(1, min(n, int(memory_bytes // _SAM2_CPU_WORKER_BYTES)))
    env = {}
    if config.device == "cpu":
        # hide the GPUs so a segmenter choosing its device sees CPU only
        env["CUDA_VISIBLE_DEVICES"] = ""
    if needs_gpu:
        notes.append(
            "the segmenter asks for a GPU but runs on CPU workers (--device cpu): "
            "each worker offers GPU=1 and segments one block at a time"
        )
    return ClusterPlan(
        kind="cpu",
        n_workers=n,
        threads_per_worker=config.threads_per_worker,
        memory_limit=config.memory_limit,
        processes=config.processes,
        worker_resources=dict(GPU_RESOURCES) if needs_gpu else None,
        worker_env=env,
        dashboard_address=dashboard,
        notes=tuple(notes),
    )


def _selected_gpus(config: ClusterConfig, gpus: Sequence[GPUInfo], *, why: str,
                   gpu_notes: Sequence[str]) -> list[GPUInfo]:
    """The GPUs the CUDA workers get: ``config.gpus`` in its order, or every detected one."""
    if not gpus:
        raise BackendUnavailableError(
            f"{why}, but {_no_gpu_message(gpu_notes)}",
            hint="check `nvidia-smi` and CUDA_VISIBLE_DEVICES, connect to a GPU cluster with --scheduler, "
            "or run on CPU workers with --device cpu (slow for SAM2)",
        )
    if config.gpus is None:
        return list(gpus)
    by_index = {g.index: g for g in gpus}
    missing = [g for g in config.gpus if g not in by_index]
    if missing:
        raise ConfigError(
            f"`gpus` {list(config.gpus)} names GPU(s) {missing} that are not visible; "
            f"visible: {sorted(by_index)}",
            hint="pick from the visible GPUs (`remote-samsing info` lists them)",
        )
    return [by_index[g] for g in config.gpus]


# ---------------------------------------------------------------------------
# starting / connecting
# ---------------------------------------------------------------------------
def _security_for(config: ClusterConfig):
    """A ``distributed.Security`` for a tls:// scheduler, from options or Dask config."""
    from distributed.security import Security

    kw = {}
    if config.tls_ca_file:
        kw["tls_ca_file"] = config.tls_ca_file
    if config.tls_cert:
        kw["tls_client_cert"] = config.tls_cert
    if config.tls_key:
        kw["tls_client_key"] = config.tls_key
    sec = Security(require_encryption=True, **kw)  # unset fields: distributed.comm.tls.* config
    missing = [
        name
        for name, attr in (
            ("CA file (distributed.comm.tls.ca-file)", "tls_ca_file"),
            ("client certificate (distributed.comm.tls.client.cert)", "tls_client_cert"),
        )
        if not getattr(sec, attr)
    ]
    if missing:
        raise ConfigError(
            f"scheduler {config.scheduler!r} uses TLS but no {' and no '.join(missing)} is configured",
            hint="set DASK_DISTRIBUTED__COMM__TLS__CA_FILE, DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT and "
            "DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY (or the same keys in a Dask config file)",
        )
    return sec


def _connect(config: ClusterConfig):
    from distributed import Client

    kw: dict[str, Any] = {"timeout": f"{config.connect_timeout}s"}
    if config.scheduler.startswith("tls://"):
        kw["security"] = _security_for(config)
    try:
        return Client(config.scheduler, **kw)
    except (OSError, TimeoutError) as exc:
        raise BackendUnavailableError(
            f"cannot reach the Dask scheduler at {config.scheduler!r}: {type(exc).__name__}: {exc}",
            hint="check the address and that `dask scheduler` is running there; a tls:// scheduler needs "
            "matching certificates",
        ) from None


def gpu_slots(worker: dict) -> int:
    """The GPUs a worker (as :func:`scheduler_workers` gives it) offers through its ``GPU`` resource."""
    return int(float((worker.get("resources") or {}).get("GPU", 0)))


def _describe_workers(address: str, workers: dict) -> str:
    """One line: what an existing cluster offers, e.g. ``... 2 workers (4 threads), 2 GPUs``."""
    if not workers:
        return f"scheduler {address}: no workers connected yet; blocks wait for workers to join"
    threads = sum(int(w.get("nthreads", 1)) for w in workers.values())
    gpus = sum(gpu_slots(w) for w in workers.values())
    return (f"scheduler {address}: {counted(len(workers), 'workers')} ({counted(threads, 'threads')}), "
            f"{counted(gpus, 'GPUs') if gpus else 'no GPU'}")


def _check_gpu_workers(workers: dict, address: str, log: Callable[[str], None]) -> None:
    if not workers:
        log(
            f"no workers are connected to {address} yet; GPU blocks wait for workers "
            "started with --resources GPU=1"
        )
        return
    if not any(gpu_slots(w) >= 1 for w in workers.values()):
        raise BackendUnavailableError(
            f"the segmenter needs GPU workers, but none of the {len(workers)} worker(s) at {address} "
            "offers the resource GPU (its blocks would wait forever)",
            hint="start GPU workers with `dask cuda worker ADDRESS --resources GPU=1` "
            "(or `dask worker ADDRESS --resources GPU=1` for CPU-only SAM2)",
        )


def _serves_dashboard(dask_scheduler=None) -> bool:
    # the scheduler's HTTP server always runs (health, metrics); the bokeh pages
    # are an application added to it only when the dashboard was asked for and
    # bokeh imported (distributed/dashboard/scheduler.py::connect)
    app = getattr(dask_scheduler, "http_application", None)
    return bool(getattr(app, "applications", None)) and "dashboard" in dask_scheduler.services


def dashboard_link(client) -> str | None:
    """The dashboard URL of ``client``'s scheduler, or None if it serves none.

    ``Client.dashboard_link`` formats a URL whenever the scheduler runs its
    HTTP server, which it always does, with or without a dashboard (bokeh
    missing, or switched off).
    """
    try:
        serves = client.run_on_scheduler(_serves_dashboard)
    except Exception:  # noqa: BLE001 - closed client, or a scheduler refusing run_on_scheduler
        return None
    return client.dashboard_link if serves else None


def on_this_machine(client, workers: dict | None = None) -> bool:
    """Whether every worker of ``client`` runs on this machine and sees its disk: the client's
    cluster is a ``LocalCluster`` (dask-cuda's ``LocalCUDACluster`` is one), started in this process,
    and every worker the scheduler knows (``workers``, by address, as
    :func:`~remote_samsing.execute.scheduler_workers` gives them; asked if not given) is in this
    process or behind a loopback address (a ``LocalCluster`` listening on the network may have
    workers from elsewhere join it). A client connected to a scheduler's address may reach workers
    anywhere: False."""
    from distributed import LocalCluster

    from .execute import scheduler_workers

    if not isinstance(getattr(client, "cluster", None), LocalCluster):
        return False
    return all(_is_local_address(address) for address in (workers if workers is not None
                                                           else scheduler_workers(client)))


def _is_local_address(address: str) -> bool:
    """``address`` (a Dask comm address) is in this process or on a loopback interface."""
    import ipaddress

    from distributed.comm import parse_address, parse_host_port

    scheme, location = parse_address(address)
    if scheme == "inproc":
        return True
    host = parse_host_port(location)[0]
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name
        return host == "localhost"


# ---------------------------------------------------------------------------
# worker settings
# ---------------------------------------------------------------------------
#: glibc allocator settings for worker processes. distributed's nanny sets
#: ``MALLOC_TRIM_THRESHOLD_=65536``, which also switches off glibc's dynamic
#: mmap threshold: every array over 128 KiB is then mmapped and page-faulted
#: afresh, and the merge's per-block numpy work runs about 2x slower in a
#: worker than in a plain process (17.5 vs 8.5 ms per block summary). A fixed
#: 32 MiB mmap threshold with a 64 MiB trim threshold gives the plain
#: process's speed (``benchmarks.bench_pipeline`` at 400 Mpx: 10.1 vs 14.8
#: Mpx/s) and still hands freed memory back. At most two malloc arenas: glibc
#: gives each new thread its own arena (up to 8 per core), and the worker's
#: helper threads (event loop, zarr's I/O loop, offload) each keep a
#: fragmented one, so a worker's peak RSS creeps up with the number of blocks
#: (``benchmarks.bench_pipeline`` from 100 to 900 Mpx: 422 -> 484 MB with
#: glibc's arenas, 326 -> 343 MB with two, at the same speed). The deploy
#: recipes set the same three variables.
WORKER_MALLOC_ENV = {
    "MALLOC_TRIM_THRESHOLD_": str(64 * 2**20),
    "MALLOC_MMAP_THRESHOLD_": str(32 * 2**20),
    "MALLOC_ARENA_MAX": "2",
}


def malloc_trim() -> None:
    """Hand this process's free heap pages back to the OS (``malloc_trim(0)``); a no-op without glibc."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


def trim_memory_plugin(interval: float = 1.0):
    """A worker plugin that hands free heap pages back to the OS every ``interval`` seconds.

    With :data:`WORKER_MALLOC_ENV` the large per-block arrays come from the
    heap (fast), and a long run fragments it; ``malloc_trim(0)`` releases the
    free pages in the middle of the heap too, so a worker's RSS follows what
    it holds instead of ratcheting up with the number of blocks.
    :func:`remote_samsing.pipeline.run` registers it on the cluster it uses.
    """
    from distributed.diagnostics.plugin import WorkerPlugin

    class TrimMemory(WorkerPlugin):
        name = "remote-samsing-trim-memory"

        def __init__(self):
            self._callback = None

        def setup(self, worker):
            from tornado.ioloop import PeriodicCallback

            self._callback = PeriodicCallback(malloc_trim, float(interval) * 1000)
            self._callback.start()

        def teardown(self, worker):
            if self._callback is not None:
                self._callback.stop()

    return TrimMemory()


#: Dask's housekeeping intervals for the clusters started here: (Dask's
#: default, ours). Every worker samples its running task's stack for the
#: dashboard's profile every 10 ms, and every server (scheduler, nannies,
#: workers) wakes its event loop every 20 ms to time it and every 500 ms to
#: read its process's CPU and memory. Each wake-up needs the GIL, which the
#: segmenter holds. With every core busy that is CPU the segmenters lose:
#: on 2 cores, with bare ``client.map`` of Felzenszwalb over 8 oam-tcd
#: windows (process CPU times), a worker spends 3.4-4.5 % above its tasks'
#: own time and the main process (scheduler, client, nannies) 2.7-5.2 % of a
#: core at Dask's intervals, 0.9-1.0 % and 1.6-2.3 % at ours. The
#: profile, the event-loop checks and the dashboard's system plots all
#: remain, coarser; tasks last seconds. Settings a user changed from Dask's
#: default are kept.
HOUSEKEEPING_INTERVALS = {
    "distributed.worker.profile.interval": ("10ms", "100ms"),
    "distributed.admin.tick.interval": ("20ms", "100ms"),
    "distributed.admin.system-monitor.interval": ("500ms", "1s"),
}


def _housekeeping_settings() -> dict:
    """The :data:`HOUSEKEEPING_INTERVALS` to apply: those still at Dask's default."""
    import dask
    from dask.utils import parse_timedelta

    out = {}
    for key, (default, ours) in HOUSEKEEPING_INTERVALS.items():
        current = dask.config.get(key, default=default)
        if parse_timedelta(current, default="ms") == parse_timedelta(default, default="ms"):
            out[key] = ours
    return out


def dask_log_level() -> int:
    """The level below which the clusters started here drop Dask's log records.

    That of this process's ``distributed`` logger, never below WARNING (the
    level ``LocalCluster`` keeps by default). It holds for the scheduler and
    nannies in this process and for the worker processes, which have no
    terminal of their own: they write to this one. The command line sets the
    ``distributed`` logger to ERROR unless ``--debug``.
    """
    return max(logging.WARNING, logging.getLogger("distributed").getEffectiveLevel())


def _start_cluster(plan: ClusterPlan):
    import dask

    kw = {**plan.cluster_kwargs(), "silence_logs": dask_log_level()}
    # the nannies read these when they are created (and hand them to their
    # worker processes, also on restarts); the scheduler and the nannies of a
    # local cluster live in this process and read theirs at creation too
    settings = {f"distributed.nanny.pre-spawn-environ.{k}": v for k, v in WORKER_MALLOC_ENV.items()}
    settings.update(_housekeeping_settings())
    with _unpoisoned_environ(), dask.config.set(settings), _ctrl_c_ignored(plan.kind == "cuda" or plan.processes):
        return _start_cluster_now(plan, kw)


@contextlib.contextmanager
def _ctrl_c_ignored(spawns: bool):
    """Ignore SIGINT in this process while the cluster starts and spawns its worker processes.

    A terminal's Ctrl-C reaches the worker processes too, and one that is
    still importing dies with a traceback: the preload that makes workers
    ignore it (``remote_samsing._worker_setup``) has not run yet. A signal
    ignored at ``exec`` stays ignored in the new process, and Python then
    installs no handler of its own, so the workers spawned now ignore it
    from their first instruction. This process is not interrupted half way
    through the start either, which would leave a cluster that Dask's exit
    handler fails to close. A Ctrl-C in these seconds is dropped: the next
    one stops the run. Signal handlers belong to the main thread; elsewhere
    (or under a handler not set from Python) nothing changes.
    """
    import signal
    import threading

    previous = signal.getsignal(signal.SIGINT)
    if not spawns or previous is None or threading.current_thread() is not threading.main_thread():
        yield
        return
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def _unpoisoned_environ():
    """Let :data:`WORKER_MALLOC_ENV` reach the workers after an earlier cluster in this process.

    A nanny writes its pre-spawn variables into this process's environment
    before it spawns a worker, and every later nanny takes a variable found
    in the environment over its configuration. After any other local cluster
    (a notebook's, a test's), ``MALLOC_TRIM_THRESHOLD_=65536`` then sat in
    the environment and reached our workers instead of ours. While our
    nannies are created, a variable holding just what the configuration says
    (what a nanny wrote) is set to ours; a value of the user's own is kept.
    """
    import dask

    configured = {k: str(v) for k, v in dask.config.get("distributed.nanny.pre-spawn-environ", {}).items()}
    saved = {}
    for key, ours in WORKER_MALLOC_ENV.items():
        current = os.environ.get(key)
        if current is not None and current == configured.get(key):
            saved[key] = current
            os.environ[key] = ours
    try:
        yield
    finally:
        os.environ.update(saved)


def _start_cluster_now(plan: ClusterPlan, kw: dict):
    if plan.kind == "cuda":
        import dask_cuda

        try:
            return dask_cuda.LocalCUDACluster(**kw)
        except Exception as exc:  # noqa: BLE001 - NVMLError_*, CUDA init errors, ...
            raise BackendUnavailableError(
                f"could not start CUDA workers on GPU(s) {plan.cuda_visible_devices}: {type(exc).__name__}: {exc}",
                hint="check `nvidia-smi`; run on CPU workers with --device cpu",
            ) from exc
    from distributed import LocalCluster

    return LocalCluster(**kw)


def _system_facts() -> tuple[int, int | None]:
    from dask.system import CPU_COUNT  # honours cgroup quotas and affinity
    from distributed.system import MEMORY_LIMIT  # honours cgroup memory limits

    return int(CPU_COUNT), int(MEMORY_LIMIT)


def resolve_plan(config: ClusterConfig, *, needs_gpu: bool, probe: GPUProbe | None = None) -> ClusterPlan:
    """Detect what is needed (GPUs, dask-cuda, cores) and call :func:`plan_cluster`."""
    gpus: list[GPUInfo] = []
    notes: list[str] = []
    dc_error: str | None = None
    local = config.scheduler is None
    if local and config.device != "cpu" and (config.device == "cuda" or needs_gpu or config.gpus is not None):
        gpus, notes = _detect(probe)
        if gpus:
            dc_error = _dask_cuda_error()
    cpu_count, memory = _system_facts() if local else (1, None)
    return plan_cluster(
        config,
        needs_gpu=needs_gpu,
        gpus=gpus,
        have_dask_cuda=dc_error is None,
        dask_cuda_error=dc_error,
        cpu_count=cpu_count,
        memory_bytes=memory,
        have_bokeh=importlib.util.find_spec("bokeh") is not None,
        dashboard_port_free=not (local and config.dashboard) or _port_is_free(DASHBOARD_PORT),
        gpu_notes=notes,
    )


def _port_is_free(port: int) -> bool:
    """Nothing listens on TCP ``port`` of any interface of this machine.

    The probe binds every interface, so a server on any one address of the
    port counts, and sets ``SO_REUSEADDR`` as tornado does, so a connection
    of a closed server still in TIME_WAIT does not. Another process may take
    the port between this probe and the cluster's start: Dask then warns and
    picks a port itself.
    """
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("", int(port)))
        except OSError:
            return False
    return True


@contextlib.contextmanager
def make_client(
    config: ClusterConfig,
    *,
    needs_gpu: bool,
    probe: GPUProbe | None = None,
    log: Callable[[str], None] | None = None,
) -> Iterator[Any]:
    """Connect to, or start, the cluster ``config`` describes.

    Parameters
    ----------
    config : ClusterConfig
    needs_gpu : bool
        The segmentation tasks are annotated with ``{"GPU": 1}``
        (:func:`remote_samsing.segmenters.segment_resources`).
    probe : callable, optional
        GPU detection override (tests).
    log : callable, optional
        Receives one-line messages (plan, dashboard link, notes).

    Yields
    ------
    distributed.Client
        Closed, together with any cluster started here, when the block exits.

    Raises
    ------
    BackendUnavailableError, ConfigError
        Before anything is started (see :func:`plan_cluster`), or when the
        scheduler cannot be reached / offers no GPU worker to a GPU segmenter.
    """
    emit = log or logger.info
    plan = resolve_plan(config, needs_gpu=needs_gpu, probe=probe)
    for note in plan.notes:
        emit(note)
    if plan.kind == "connect":
        from .execute import scheduler_workers

        # said first: a scheduler still starting (a batch script's) is waited for, silently otherwise
        emit(f"connecting to the Dask scheduler at {plan.address} (waiting up to {config.connect_timeout:g} s)")
        client = _connect(config)
        try:
            workers = scheduler_workers(client)
            if workers or not plan.require_gpu_workers:  # else the GPU check says it, with what to start
                emit(_describe_workers(plan.address, workers))
            if plan.require_gpu_workers:
                _check_gpu_workers(workers, plan.address, emit)
            yield client
        finally:
            client.close()
        return

    import dask
    from distributed import Client

    emit(f"starting {plan.describe()}")
    cluster = _start_cluster(plan)
    try:
        with Client(cluster) as client:
            link = dashboard_link(client)
            if link:
                emit(f"dashboard: {link}")
            # keep resource annotations through optimisation (module docstring):
            # this scheduler runs in this process, so this setting reaches it
            settings = {"optimization.fuse.active": False} if plan.worker_resources else {}
            with dask.config.set(settings):
                yield client
    finally:
        cluster.close()


