"""Multi-node training launched on a Dask cluster: two worker processes, one torchrun node each,
two CPU ranks (gloo) in one job, through the same code path as the flows (``flows.launch.launch``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.launch import LaunchError
from flows.launch import LaunchSpec, launch
from flows.stages.keys import resolve_config
from pgl_core.contracts import PretrainContract

pytestmark = [pytest.mark.ddp, pytest.mark.slow]
SMALL = ["views.patch_vox=[8,16,16]", "train.batch_size=2", "train.log_every=1", "train.steps=2",
         "train.checkpoint_every_steps=2"]


@pytest.fixture(scope="module")
def cluster():
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      host="127.0.0.1") as c:
        yield c


def test_two_nodes_on_two_dask_workers(cluster, synthetic_store: str, tmp_path: Path):
    cfg = resolve_config("tiny", overrides=SMALL)
    out = str(tmp_path / "run")
    flags = {"store": synthetic_store, "datasets": "dsa,dsb", "output": out, "device": "cpu"}
    results = launch("pgl_core.pretrain", flags, cfg, LaunchSpec(nproc=1, nnodes=2,
                                                                 dask_address=cluster.scheduler_address))
    assert [r["node_rank"] for r in results] == [0, 1]
    assert [r["returncode"] for r in results] == [0, 0]
    assert len({r["master"] for r in results}) == 1  # one rendezvous for both nodes
    assert (Path(out) / "encoder.pt").is_file()
    assert PretrainContract.read(out).steps == 2
    params = [line for line in (Path(out) / "metrics.jsonl").read_text().splitlines() if '"params"' in line]
    assert '"world_size": 2' in params[0]  # both nodes joined one process group


def test_a_failing_node_fails_the_launch_with_its_output(cluster, synthetic_store: str, tmp_path: Path):
    cfg = resolve_config("tiny", overrides=SMALL)
    flags = {"store": synthetic_store, "datasets": "no_such_dataset", "output": str(tmp_path / "bad"),
             "device": "cpu"}
    with pytest.raises(LaunchError) as info:
        launch("pgl_core.pretrain", flags, cfg, LaunchSpec(nnodes=2, dask_address=cluster.scheduler_address))
    assert "node 0 of 2" in str(info.value) and "no_such_dataset" in str(info.value)


def test_a_preempted_multi_process_run_is_reported_as_preempted_not_failed():
    """torchrun exits 1 when its ranks exit 75 (checkpoint written, stopped by SIGTERM): the launcher
    reads torchrun's failure summary, so the retry that resumes the run still happens."""
    from flows.launch import run_torchrun
    from pgl_core.exits import EXIT_PREEMPTED

    lines: list[str] = []
    assert run_torchrun("tests.train.exit_preempted", [], nproc=2, echo=lines.append) == EXIT_PREEMPTED
    assert any("exitcode" in line and "75" in line for line in lines)  # torchrun's own summary said so


def test_a_failure_among_preempted_ranks_is_a_failure():
    from flows.launch import preempted_ranks

    summary = ["[0]:", "  rank      : 0 (local_rank: 0)", "  exitcode  : 75 (pid: 11)",
               "[1]:", "  rank      : 1 (local_rank: 1)", "  exitcode  : 1 (pid: 12)"]
    assert not preempted_ranks(summary) and preempted_ranks(summary[:3]) and not preempted_ranks([])
