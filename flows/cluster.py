"""Dask task runners for the flows: a LocalCluster sized to the machine, or an existing cluster.

Embedded mode (no Prefect server) uses a threaded LocalCluster: worker processes would each start
their own temporary Prefect API (seconds per worker). With a Prefect server, or a cluster address,
workers are processes (or remote machines) and report to the server directly.
"""

from __future__ import annotations

import logging
import os

from prefect_dask import DaskTaskRunner

from flows.runtime import prefect_server_configured


def default_workers() -> int:
    """Workers for a local cluster: one per core (each handles one volume at a time)."""
    return max(1, (os.cpu_count() or 1))


def dask_task_runner(address: str | None = None, n_workers: int | None = None,
                     memory_limit: str | None = None) -> DaskTaskRunner:
    """A DaskTaskRunner joining ``address`` or creating a LocalCluster of ``n_workers``.

    Each worker runs one task at a time (``threads_per_worker=1``) so peak memory per worker is one
    volume; ``memory_limit`` (e.g. "4GiB") bounds it further on process workers.
    """
    address = address or os.environ.get("PGL_DASK_ADDRESS") or None
    if address:
        return DaskTaskRunner(address=address)
    n = n_workers or default_workers()
    processes = prefect_server_configured()
    kwargs: dict = {"n_workers": n, "threads_per_worker": 1, "processes": processes,
                    "dashboard_address": None, "silence_logs": logging.ERROR}
    if processes and memory_limit:
        kwargs["memory_limit"] = memory_limit
    return DaskTaskRunner(cluster_kwargs=kwargs)
