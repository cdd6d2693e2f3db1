"""Launch ``torch.distributed`` training: one process, torchrun on this node, or one torchrun per
node on a Dask cluster; the Prefect task around it retries preemption and transient I/O.

The training modules (``pgl_core.pretrain``, ``pgl_core.finetune``) read their rendezvous from the
environment that torchrun sets, so the same module runs on 1..N processes and nodes. Logs are
streamed line by line; a non-zero exit of any rank raises :class:`LaunchError` carrying the last
lines of output. Nothing here assumes localhost: multi-node callers pass the master address.

Multi-node (``nnodes`` > 1): the launcher picks ``nnodes`` Dask workers (those tagged with a ``GPU``
resource when any worker has one; distinct hosts first), takes the first worker's host from its Dask
address as the rendezvous (``master_addr``) with a port that is free *on that host* (asked of that
worker), then submits one launcher task pinned to each worker. Each node writes the resolved config
to its own temporary file, so nodes share nothing but the store and the output URI. Start workers as
one per node (``dask worker tcp://scheduler:8786 --nworkers 1 --nthreads 1 --resources
GPU=<gpus per node>``); ``docs/scale-out.md`` has SLURM and Kubernetes recipes.
"""

from __future__ import annotations

import collections
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NamedTuple
from urllib.parse import urlparse

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from pgl_core.config import PGLConfig, config_to_dict
from pgl_core.exits import EXIT_PREEMPTED
from storage.errors import is_transient

GPU_RESOURCE = "GPU"
# Set when this process was asked to stop (SIGTERM) while training ran: the training got the signal
# too, checkpointed and exited; retrying it here would only restart what the user stopped.
TERMINATED = threading.Event()
# The CLI sets this: a training it runs prints its output on the console too (runs always log it to
# Prefect at INFO). The pipeline leaves it off: parallel fine-tunes would interleave.
ECHO_TO_CONSOLE = False


class LaunchError(RuntimeError):
    """A training process group exited non-zero; ``tail`` holds its last output lines."""

    def __init__(self, returncode: int, tail: list[str], what: str) -> None:
        self.returncode = returncode
        self.tail = tail
        super().__init__(f"{what} exited with status {returncode}; last output:\n" + "\n".join(tail))


class NodeSpec(NamedTuple):
    """Where this node sits in a multi-node job (a value: sent as is to the node's Dask worker).
    ``master_addr`` must be reachable from all nodes."""

    nnodes: int = 1
    node_rank: int = 0
    master_addr: str | None = None
    master_port: int | None = None


def free_port(host: str = "") -> int:
    """A currently free TCP port on this machine (for a rendezvous this node hosts)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def torchrun_command(module: str, args: list[str], nproc: int, node: NodeSpec = NodeSpec()) -> list[str]:
    """The ``python -m torch.distributed.run`` command line for ``module`` with ``args``
    (plain ``python -m module`` for a single process on a single node)."""
    if nproc == 1 and node.nnodes == 1 and node.master_addr is None:
        # one process: no elastic agent or rendezvous to start (saves seconds per launch); the
        # module sees no torchrun variables and runs as a single process
        return [sys.executable, "-m", module, *args]
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}"]
    if node.nnodes == 1 and node.master_addr is None:
        cmd += ["--standalone"]
    else:
        if not node.master_addr or not node.master_port:
            raise ValueError("multi-node launch needs master_addr and master_port")
        cmd += [f"--nnodes={node.nnodes}", f"--node-rank={node.node_rank}",
                f"--master-addr={node.master_addr}", f"--master-port={node.master_port}"]
    return cmd + ["-m", module, *args]


def _forward_sigterm(proc: subprocess.Popen) -> Callable[[], None]:
    """Pass SIGTERM on to ``proc`` while it runs (it checkpoints and exits 75, so a preempted job
    resumes on rerun); returns the function that restores the previous handler. Signal handlers
    exist only in the main thread: elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = signal.getsignal(signal.SIGTERM)

    def forward(signum: int, frame: Any) -> None:
        TERMINATED.set()
        proc.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    return lambda: signal.signal(signal.SIGTERM, previous)


def run_torchrun(module: str, args: list[str], nproc: int = 1, node: NodeSpec = NodeSpec(),
                 env: dict[str, str] | None = None, echo: Callable[[str], None] | None = print,
                 tail_lines: int = 40) -> int:
    """Run ``module`` under torchrun and stream its output.

    Returns the exit status when it is 0 or :data:`EXIT_PREEMPTED` (checkpoint written; rerun to
    resume); raises :class:`LaunchError` with the last ``tail_lines`` lines for any other status.
    """
    cmd = torchrun_command(module, args, nproc, node)
    full_env = dict(os.environ, **(env or {}))
    full_env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // max(nproc, 1))))
    tail: collections.deque[str] = collections.deque(maxlen=tail_lines)
    with subprocess.Popen(cmd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, bufsize=1) as proc:
        restore = _forward_sigterm(proc)
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                line = line.rstrip("\n")
                tail.append(line)
                if echo is not None:
                    echo(line)
            code = proc.wait()
        finally:
            restore()
    if code not in (0, EXIT_PREEMPTED) and preempted_ranks(list(tail)):
        code = EXIT_PREEMPTED
    if code not in (0, EXIT_PREEMPTED):
        raise LaunchError(code, list(tail), f"{module} ({nproc} process(es), node {node.node_rank})")
    return code


_RANK_EXIT = re.compile(r"^\s*exitcode\s*:\s*(-?\d+)")


def preempted_ranks(tail: list[str]) -> bool:
    """True when torchrun's failure summary in ``tail`` lists only ranks that exited with the
    preemption status: torchrun itself exits 1 whatever its ranks' statuses were, so a preempted
    multi-process run would otherwise count as a failure and never be retried."""
    codes = [int(m.group(1)) for line in tail if (m := _RANK_EXIT.match(line))]
    return bool(codes) and all(c == EXIT_PREEMPTED for c in codes)

class Preempted(RuntimeError):
    """Training exited with the preemption status after a checkpoint; a retry resumes it."""


def write_config_file(config: dict[str, Any], folder: str) -> str:
    """The full resolved config (as a dict) as YAML in a local ``folder`` (the training module reads it)."""
    import yaml

    path = Path(folder) / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return str(path)


def train_argv(flags: dict[str, str | None], config_file: str) -> list[str]:
    """The training module's command line: ``--flag value`` pairs plus the full config file (which
    holds every section, so the preset named here changes nothing)."""
    argv = []
    for flag, value in flags.items():
        if value is not None:
            argv += [f"--{flag}", str(value)]
    return argv + ["--preset", "paper", "--config", config_file]

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


def node_main(module: str, flags: dict[str, str | None], config: dict[str, Any], nproc: int,
              node: NodeSpec, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run one node's torchrun (on the Dask worker); returns its status and last output lines.

    Never raises for a training failure: the result carries ``returncode`` and ``tail`` (a
    LaunchError would not survive pickling back to the client).
    """
    with tempfile.TemporaryDirectory(prefix="pgl-node-") as tmp:
        argv = train_argv(flags, write_config_file(config, tmp))
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
    port = client.submit(free_port, master_addr, workers=[workers[0]], allow_other_workers=False,
                         pure=False).result()
    futures = [client.submit(node_main, module, flags, config, nproc,
                             NodeSpec(nnodes=nnodes, node_rank=i, master_addr=master_addr, master_port=port),
                             env, workers=[w], allow_other_workers=False, pure=False,
                             key=f"pgl-node-{i}-{module}-{port}")
               for i, w in enumerate(workers)]
    results = sorted(client.gather(futures), key=lambda r: r["node_rank"])
    for r in results:
        if r["returncode"] not in (0, EXIT_PREEMPTED):
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


def _echo(logger: Any, line: str) -> None:
    logger.info(line)
    if ECHO_TO_CONSOLE:  # not print(): the flows' log_prints would turn it into a log record
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def _retry_launch(task_, task_run, state) -> bool:
    if TERMINATED.is_set():
        return False
    try:
        state.result()
    except Preempted:
        return True
    except Exception as err:  # noqa: BLE001 - a training failure is not transient
        return is_transient(err)
    return False


@dataclass(frozen=True)
class LaunchSpec:
    """How to run a training module: processes per node, nodes, and the Dask cluster for nnodes > 1."""

    nproc: int = 1
    nnodes: int = 1
    dask_address: str | None = None
    threads: int | None = None


def launch(module: str, flags: dict[str, str | None], cfg: PGLConfig, spec: LaunchSpec) -> list[dict]:
    """Run ``module`` under torchrun on this node or on ``spec.nnodes`` Dask workers.

    Returns one ``{"node_rank", "returncode", "host"}`` per node. Raises :class:`LaunchError`
    (with the failing rank's last lines) or :class:`Preempted` (exit 75, checkpoint written).
    """
    if spec.nnodes > 1:
        results = launch_on_dask(module, flags, config_to_dict(cfg), spec.nnodes, spec.nproc, spec.dask_address)
    else:
        env = {"OMP_NUM_THREADS": str(spec.threads)} if spec.threads else None
        logger = get_run_logger()
        with tempfile.TemporaryDirectory(prefix="pgl-launch-") as tmp:
            argv = train_argv(flags, write_config_file(config_to_dict(cfg), tmp))
            code = run_torchrun(module, argv, nproc=spec.nproc, node=NodeSpec(), env=env,
                                echo=lambda line: _echo(logger, line))
        results = [{"node_rank": 0, "returncode": code, "host": os.uname().nodename}]
    if any(r["returncode"] == EXIT_PREEMPTED for r in results):
        raise Preempted(f"{module} was preempted (exit {EXIT_PREEMPTED}); a retry resumes from its checkpoint")
    return results


@task(name="train", retries=2, retry_delay_seconds=[5, 30], retry_condition_fn=_retry_launch,
      cache_policy=NO_CACHE, task_run_name="{module}")
def launch_task(module: str, flags: dict[str, str | None], cfg: PGLConfig, spec: LaunchSpec) -> list[dict]:
    """Prefect task around :func:`launch`: preemption and transient I/O are retried (resuming)."""
    return launch(module, flags, cfg, spec)
