"""Multi-node ``torch.distributed`` training launched on a Dask cluster: one torchrun per node.

The launcher picks ``nnodes`` workers (those tagged with a ``GPU`` resource when any worker has
one; distinct hosts first), takes the first worker's host from its Dask address as the rendezvous
(``master_addr``) with a port that is free *on that host* (asked of that worker), then submits one
launcher task pinned to each worker: ``run_torchrun(module, argv, nproc, NodeSpec(nnodes, i,
master_addr, master_port))``. Each node writes the resolved config to its own temporary file, so
nodes share nothing but the store and the output URI. Nothing assumes localhost: the addresses are
whatever the workers registered with the scheduler.

Start workers as one per node (``dask worker tcp://scheduler:8786 --nworkers 1 --nthreads 1
--resources GPU=<gpus per node>``); ``docs/scale-out.md`` has SLURM and Kubernetes recipes.
"""

from __future__ import annotations

import os
import socket
import tempfile
from typing import Any
from urllib.parse import urlparse

from flows.launch import LaunchError, NodeSpec, free_port, run_torchrun

GPU_RESOURCE = "GPU"


def worker_host(address: str) -> str:
    """The host part of a Dask worker address (``tcp://10.1.2.3:40123`` -> ``10.1.2.3``)."""
    host = urlparse(address).hostname
    if not host:
        raise ValueError(f"cannot read a host from Dask worker address {address!r}")
    return host


def pick_workers(workers: dict[str, dict[str, Any]], nnodes: int, resource: str = GPU_RESOURCE) -> list[str]:
    """``nnodes`` worker addresses from the scheduler's ``workers`` info, one per host when possible.

    Workers advertising ``resource`` are preferred (only they are used when any has it). Raises
    ValueError naming what is available when there are too few.
    """
    tagged = [a for a, info in workers.items() if (info.get("resources") or {}).get(resource, 0) > 0]
    pool = sorted(tagged or workers)
    by_host: dict[str, list[str]] = {}
    for address in pool:
        by_host.setdefault(worker_host(address), []).append(address)
    ordered = [addrs[0] for addrs in by_host.values()] + [a for addrs in by_host.values() for a in addrs[1:]]
    if len(ordered) < nnodes:
        kind = f"with resource {resource!r}" if tagged else "in total"
        raise ValueError(f"need {nnodes} Dask workers for {nnodes} nodes, the cluster has {len(ordered)} {kind}: "
                         f"{sorted(workers)}")
    return ordered[:nnodes]


def _free_port_on(host: str) -> int:
    return free_port(host)


def node_main(module: str, flags: dict[str, str | None], config: dict[str, Any], nproc: int,
              node: NodeSpec, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run one node's torchrun (on the Dask worker); returns its status and last output lines.

    Never raises for a training failure: the result carries ``returncode`` and ``tail`` (a
    LaunchError would not survive pickling back to the client).
    """
    import yaml

    from flows.stage_common import train_argv

    with tempfile.TemporaryDirectory(prefix="pgl-node-") as tmp:
        path = os.path.join(tmp, "config.yaml")
        with open(path, "w") as fh:
            yaml.safe_dump(config, fh, sort_keys=False)
        argv = train_argv(flags, path)
        try:
            code, tail = run_torchrun(module, argv, nproc=nproc, node=node, env=env, echo=None), []
        except LaunchError as err:
            code, tail = err.returncode, err.tail
    return {"node_rank": node.node_rank, "returncode": code, "tail": tail, "host": socket.gethostname(),
            "master": f"{node.master_addr}:{node.master_port}"}


def run_on_client(client: Any, module: str, flags: dict[str, str | None], config: dict[str, Any], nnodes: int,
                  nproc: int = 1, env: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Launch ``nnodes`` torchrun node groups through a ``distributed.Client``; gather their results.

    Raises :class:`LaunchError` naming the first failing node with its last output lines.
    """
    workers = pick_workers(client.scheduler_info(n_workers=-1)["workers"], nnodes)
    master_addr = worker_host(workers[0])
    port = client.submit(_free_port_on, master_addr, workers=[workers[0]], allow_other_workers=False,
                         pure=False).result()
    futures = [client.submit(node_main, module, flags, config, nproc,
                             NodeSpec(nnodes=nnodes, node_rank=i, master_addr=master_addr, master_port=port),
                             env, workers=[w], allow_other_workers=False, pure=False,
                             key=f"pgl-node-{i}-{module}-{port}")
               for i, w in enumerate(workers)]
    results = sorted(client.gather(futures), key=lambda r: r["node_rank"])
    for r in results:
        if r["returncode"] not in (0, 75):
            raise LaunchError(r["returncode"], r["tail"],
                              f"{module} node {r['node_rank']} of {nnodes} on {r['host']} (rendezvous {r['master']})")
    return results


def launch_on_dask(module: str, flags: dict[str, str | None], config: dict[str, Any], nnodes: int,
                   nproc: int = 1, address: str | None = None, env: dict[str, str] | None = None) -> list[dict]:
    """Connect to the Dask scheduler at ``address`` (or ``PGL_DASK_ADDRESS``) and run :func:`run_on_client`."""
    from distributed import Client

    address = address or os.environ.get("PGL_DASK_ADDRESS")
    if not address:
        raise ValueError(f"nnodes={nnodes} needs a Dask cluster: pass dask_address or set PGL_DASK_ADDRESS")
    with Client(address, timeout="60s") as client:
        return run_on_client(client, module, flags, config, nnodes, nproc, env)
