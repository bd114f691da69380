"""Set-up of the worker processes of the local clusters :func:`remote_samsing.cluster.make_client` starts.

distributed imports this module in each worker process (its ``preload``
option) and calls :func:`dask_setup` with the worker before the worker
takes tasks, also in a worker the nanny restarts.

A terminal's Ctrl-C sends SIGINT to every process of its foreground group:
the local worker processes as well as the main one. A worker would then die
mid-task with a ``KeyboardInterrupt`` traceback of its own while the main
process, interrupted too, closes the cluster anyway: workers first, then the
scheduler. So worker processes ignore SIGINT and leave the shutdown to the
main process.

A worker being closed with the cluster may still send a heartbeat; when the
scheduler or the worker's own connections are already gone, distributed logs
it as an error with a traceback (``Worker.heartbeat``), noise on a terminal at
the end of a run or an interrupted one (reported by other projects too, e.g.
https://github.com/NVIDIA-NeMo/Curator/issues/9). A filter drops that record
while the worker is closing; a heartbeat failing while it runs is still logged.

Threads of one worker tracing blocks at once (the vectors of a run) make
rasterio warn of a geotransform they have: each worker process filters that
warning for good (:func:`~remote_samsing.io.ignore_shapes_georeferencing`).

A worker may reach Azure through adlfs without the package's own paths
(Zarr arrays in a task graph): it closes those clients at exit as the main
process does (:func:`~remote_samsing._files.close_azure_clients_at_exit`).
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import threading
import weakref

__all__ = ["dask_setup"]

#: How ``distributed.worker`` begins the record of a failed heartbeat.
_HEARTBEAT_FAILED = "Failed to communicate with scheduler during heartbeat"


def dask_setup(worker) -> None:
    """Ignore SIGINT in a worker process (a nanny's child) of a local cluster, drop its failed
    heartbeats while it closes, filter rasterio's spurious georeferencing warning of ``shapes()``, and
    close its Azure clients at exit.

    A worker running as a thread of the main process (``processes=False``)
    keeps the process's handler: there Ctrl-C is the main process's to
    handle. Signal handlers can only be set from a process's main thread,
    where a nanny's worker runs its event loop.
    """
    if multiprocessing.parent_process() is None or threading.current_thread() is not threading.main_thread():
        return
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.getLogger("distributed.worker").addFilter(_HeartbeatAtClose(worker))
    from ._files import close_azure_clients_at_exit
    from .io import ignore_shapes_georeferencing

    ignore_shapes_georeferencing()

    close_azure_clients_at_exit()


class _HeartbeatAtClose(logging.Filter):
    """Drop the failed-heartbeat record of ``worker`` once it is closing (or gone)."""

    def __init__(self, worker) -> None:
        super().__init__()
        self._worker = weakref.ref(worker)

    def filter(self, record: logging.LogRecord) -> bool:
        from distributed.core import Status

        if not str(record.msg).startswith(_HEARTBEAT_FAILED):
            return True
        worker = self._worker()
        return worker is not None and worker.status not in (Status.closing, Status.closing_gracefully,
                                                             Status.closed, Status.failed)
