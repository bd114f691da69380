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

A worker may reach Azure through adlfs without the package's own paths
(Zarr arrays in a task graph): it closes those clients at exit as the main
process does (:func:`~remote_samsing._files.close_azure_clients_at_exit`).
"""

from __future__ import annotations

import multiprocessing
import signal
import threading

__all__ = ["dask_setup"]


def dask_setup(worker) -> None:
    """Ignore SIGINT in a worker process (a nanny's child) of a local cluster, and close its Azure
    clients at exit.

    A worker running as a thread of the main process (``processes=False``)
    keeps the process's handler: there Ctrl-C is the main process's to
    handle. Signal handlers can only be set from a process's main thread,
    where a nanny's worker runs its event loop.
    """
    if multiprocessing.parent_process() is None or threading.current_thread() is not threading.main_thread():
        return
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from ._files import close_azure_clients_at_exit

    close_azure_clients_at_exit()
