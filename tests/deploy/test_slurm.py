"""deploy/slurm and deploy/torchrun-node.sh: the sbatch script parses, asks for requeue and an early
SIGTERM, rendezvous with c10d under the job id, runs its concurrent Dask steps with --overlap and
requeues exactly when a run was preempted (run against stand-in srun / scontrol); the node wrapper
turns torchrun's status back into 75 after a SIGTERM (with the real torchrun). The dask-jobqueue
example compiles against the stage API. No SLURM cluster is used."""

from __future__ import annotations

import ast
import inspect
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.deploy.files import DEPLOY, REPO, SLURM

SBATCH = SLURM / "train.sbatch"
NODE = DEPLOY / "torchrun-node.sh"


@pytest.mark.parametrize("script", [SBATCH, NODE, DEPLOY / "postgres-init.sh"], ids=lambda p: p.name)
def test_shell_scripts_parse(script):
    proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def _directives() -> list[str]:
    """The #SBATCH options: sbatch reads them only before the first command."""
    out = []
    for line in SBATCH.read_text().splitlines()[1:]:
        if line.startswith("#SBATCH"):
            out.append(line.split(None, 1)[1])
        elif line.strip() and not line.startswith("#"):
            break
    return out


def test_sbatch_asks_for_requeue_and_an_early_signal():
    directives = _directives()
    assert "--requeue" in directives
    signal_opt = next(d for d in directives if d.startswith("--signal="))
    assert re.fullmatch(r"--signal=B:TERM@(\d+)", signal_opt) and int(signal_opt.rsplit("@", 1)[1]) >= 60
    assert "--open-mode=append" in directives, "a requeued job's log continues the first one"
    assert "--ntasks-per-node=1" in directives, "one torchrun per node"


def test_sbatch_rendezvous_and_overlapping_steps():
    text = SBATCH.read_text()
    assert '--rdzv-id="$SLURM_JOB_ID"' in text
    assert "--rdzv-backend=c10d" in text and '--rdzv-endpoint="$head_node:$RDZV_PORT"' in text
    # the Dask scheduler and workers run for the whole job beside each other: both need --overlap
    dask_steps = [line for line in text.splitlines() if line.strip().startswith("srun") and "dask" in
                  text.splitlines()[text.splitlines().index(line) + 1]]
    assert len(dask_steps) == 2 and all("--overlap" in line for line in dask_steps)
    assert "scontrol requeue" in text and "EXIT_PREEMPTED=75" in text


STUB_SRUN = """#!/bin/bash
echo "$@" >> "$FAKE_LOG.srun"
case "$FAKE_SRUN" in
  wait) trap 'exit 75' TERM; echo started > "$FAKE_LOG.started"; while true; do sleep 0.05; done ;;
  *) exit "$FAKE_SRUN" ;;
esac
"""
STUB_SCONTROL = """#!/bin/bash
case "$1" in
  show) printf 'node1\\nnode2\\n' ;;
  requeue) echo "$@" >> "$FAKE_LOG.requeue" ;;
esac
"""


def _stubs(tmp_path: Path) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in (("srun", STUB_SRUN), ("scontrol", STUB_SCONTROL)):
        (bin_dir / name).write_text(body)
        (bin_dir / name).chmod(0o755)
    return {"PATH": f"{bin_dir}:/usr/bin:/bin", "FAKE_LOG": str(tmp_path / "log"), "SLURM_JOB_ID": "4242",
            "SLURM_JOB_NODELIST": "node[1-2]", "SLURM_JOB_NUM_NODES": "2", "SLURM_GPUS_ON_NODE": "4",
            "SLURM_CPUS_PER_TASK": "16", "SLURM_SUBMIT_DIR": str(REPO), "HOME": str(tmp_path),
            "PGL_STORE": "s3://pgl/store", "PGL_DATASETS": "A,B", "PGL_OUTPUT": "s3://pgl/runs/x"}


def _read(path: str) -> str:
    return Path(path).read_text() if Path(path).exists() else ""


@pytest.mark.parametrize("srun_status, script_status, requeued",
                         [("0", 0, False), ("75", 0, True), ("1", 1, False)],
                         ids=["done", "preempted", "failed"])
def test_sbatch_requeues_only_a_preempted_run(tmp_path, srun_status, script_status, requeued):
    env = _stubs(tmp_path) | {"FAKE_SRUN": srun_status}
    proc = subprocess.run(["bash", str(SBATCH)], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == script_status, proc.stdout + proc.stderr
    assert (_read(env["FAKE_LOG"] + ".requeue") == "requeue 4242\n") == requeued
    srun = _read(env["FAKE_LOG"] + ".srun")
    for arg in ("--rdzv-id=4242", "--rdzv-endpoint=node1:29500", "--nnodes=2", "--nproc-per-node=4",
                "--rdzv-backend=c10d", "-m pgl_core.pretrain", "--datasets A,B", str(NODE)):
        assert arg in srun, f"{arg} not in: {srun}"


def test_sbatch_passes_sigterm_to_the_step_and_requeues(tmp_path):
    env = _stubs(tmp_path) | {"FAKE_SRUN": "wait"}
    proc = subprocess.Popen(["bash", str(SBATCH)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    deadline = time.monotonic() + 30
    while not Path(env["FAKE_LOG"] + ".started").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)  # what --signal=B:TERM@120 sends before the time limit
    out = proc.communicate(timeout=30)[0]
    assert proc.returncode == 0, out
    assert _read(env["FAKE_LOG"] + ".requeue") == "requeue 4242\n", out
    assert "training ended with status 75" in out


def test_sbatch_refuses_to_start_without_its_inputs(tmp_path):
    env = _stubs(tmp_path) | {"FAKE_SRUN": "0"}
    del env["PGL_OUTPUT"]
    proc = subprocess.run(["bash", str(SBATCH)], env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0 and "PGL_OUTPUT" in proc.stderr
    assert not Path(env["FAKE_LOG"] + ".srun").exists()


FAKE_TRAIN = """import signal, sys, time
if sys.argv[1] != "wait":
    sys.exit(int(sys.argv[1]))
signal.signal(signal.SIGTERM, lambda *a: sys.exit(75))   # checkpoint, then the preemption status
print("ready", flush=True)
while True:
    time.sleep(0.05)
"""


def _node(tmp_path: Path, mode: str) -> subprocess.Popen:
    (tmp_path / "fake_train.py").write_text(FAKE_TRAIN)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}", OMP_NUM_THREADS="1")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return subprocess.Popen(["bash", str(NODE), "--standalone", "--nproc-per-node=1", "fake_train.py", mode],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.ddp
def test_node_wrapper_exits_75_when_torchrun_was_stopped(tmp_path):
    proc = _node(tmp_path, "wait")
    deadline = time.monotonic() + 60
    for line in proc.stdout:
        if "ready" in line or time.monotonic() > deadline:
            break
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 75, out


@pytest.mark.ddp
def test_node_wrapper_keeps_torchrun_status_otherwise(tmp_path):
    failed = _node(tmp_path, "3")
    out = failed.communicate(timeout=60)[0]
    assert failed.returncode == 1, out  # torchrun's own status for a failed worker, not a preemption


def test_dask_jobqueue_example_matches_the_stage_api():
    path = SLURM / "dask_ingest.py"
    tree = ast.parse(path.read_text())
    calls = {n.func.id if isinstance(n.func, ast.Name) else getattr(n.func, "attr", None)
             for n in ast.walk(tree) if isinstance(n, ast.Call)}
    assert "SLURMCluster" in calls and "preprocess" in calls
    cluster_call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "SLURMCluster")
    keywords = {k.arg for k in cluster_call.keywords}
    assert {"cores", "processes", "memory", "walltime", "job_extra_directives", "job_script_prologue"} <= keywords
    from flows.stages.preprocess import preprocess

    assert "dask_address" in inspect.signature(preprocess).parameters
    # an example, not a module: nothing in the package imports it
    for package in ("flows", "pgl_core", "storage", "phantoms"):
        for source in (REPO / package).rglob("*.py"):
            assert "dask_ingest" not in source.read_text(), source
