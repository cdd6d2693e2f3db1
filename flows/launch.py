"""Launch ``torch.distributed`` training as a subprocess: one node (torchrun) or one node of many.

The training modules (``pgl_core.pretrain``, ``pgl_core.finetune``) read their rendezvous from the
environment that torchrun sets, so the same module runs on 1..N processes and nodes. Logs are
streamed line by line; a non-zero exit of any rank raises :class:`LaunchError` carrying the last
lines of output. Nothing here assumes localhost: multi-node callers pass the master address.
"""

from __future__ import annotations

import collections
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from typing import Callable

PREEMPTED_EXIT = 75


class LaunchError(RuntimeError):
    """A training process group exited non-zero; ``tail`` holds its last output lines."""

    def __init__(self, returncode: int, tail: list[str], what: str) -> None:
        self.returncode = returncode
        self.tail = tail
        super().__init__(f"{what} exited with status {returncode}; last output:\n" + "\n".join(tail))


@dataclass(frozen=True)
class NodeSpec:
    """Where this node sits in a multi-node job. ``master_addr`` must be reachable from all nodes."""

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


def run_torchrun(module: str, args: list[str], nproc: int = 1, node: NodeSpec = NodeSpec(),
                 env: dict[str, str] | None = None, echo: Callable[[str], None] | None = print,
                 tail_lines: int = 40) -> int:
    """Run ``module`` under torchrun and stream its output.

    Returns the exit status when it is 0 or :data:`PREEMPTED_EXIT` (checkpoint written; rerun to
    resume); raises :class:`LaunchError` with the last ``tail_lines`` lines for any other status.
    """
    cmd = torchrun_command(module, args, nproc, node)
    full_env = dict(os.environ, **(env or {}))
    full_env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // max(nproc, 1))))
    tail: collections.deque[str] = collections.deque(maxlen=tail_lines)
    with subprocess.Popen(cmd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, bufsize=1) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            tail.append(line)
            if echo is not None:
                echo(line)
        code = proc.wait()
    if code not in (0, PREEMPTED_EXIT):
        raise LaunchError(code, list(tail), f"{module} ({nproc} process(es), node {node.node_rank})")
    return code
