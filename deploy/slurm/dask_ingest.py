"""Ingest on SLURM: a dask-jobqueue ``SLURMCluster`` (one SLURM job per Dask worker) running the
preprocess stage, one Prefect task per case.

An example to copy and edit, not part of the package (nothing imports it; ``dask-jobqueue`` is not a
dependency: ``pip install dask-jobqueue==0.9.0`` on the login node). Run it on a login node, whose
address the workers' jobs must reach::

    python deploy/slurm/dask_ingest.py --input /shared/raw/LiTS --store s3://pgl/store --dataset LiTS

Each worker job inherits this process's environment (sbatch ``--export=ALL``): the store
credentials (``AWS_*``) and ``PREFECT_API_URL`` when a Prefect server records the runs. They are not
written into the job script (SLURM keeps job scripts where administrators can read them). The same
cluster serves the CLI instead: ``pgl preprocess ... --dask-address <scheduler address>``.
"""

from __future__ import annotations

import argparse
import os



def make_cluster(queue: str | None, account: str | None, jobs: int, walltime: str):
    """A SLURMCluster of ``jobs`` single-worker jobs: 1 thread each (one volume at a time) on 4 booked
    CPUs (the codecs use them), 16 GiB; requeued by SLURM when preempted (Dask reruns the lost cases)."""
    from dask_jobqueue import SLURMCluster

    prologue = [f"source {os.environ['VIRTUAL_ENV']}/bin/activate"] if os.environ.get("VIRTUAL_ENV") else []
    cluster = SLURMCluster(
        queue=queue,
        account=account,
        cores=1,          # Dask threads per job
        processes=1,
        job_cpu=4,        # CPUs booked per job
        memory="16GiB",
        walltime=walltime,
        job_name="pgl-ingest",
        job_extra_directives=["--requeue", "--export=ALL"],
        job_script_prologue=prologue,
        log_directory=os.path.expanduser("~/.pgl/dask-logs"),
    )
    cluster.scale(jobs=jobs)
    return cluster


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--input", required=True, help="Raw CT folder (MSD, volume folder or DICOM tree).")
    p.add_argument("--store", required=True, help="Store root (s3://... or a shared file system).")
    p.add_argument("--dataset", required=True, help="Dataset name in the store.")
    p.add_argument("--jobs", type=int, default=8, help="Worker jobs (default 8).")
    p.add_argument("--queue", help="SLURM partition.")
    p.add_argument("--account", help="SLURM account.")
    p.add_argument("--walltime", default="04:00:00", help="Per worker job (default 04:00:00).")
    args = p.parse_args()

    from flows import runtime

    runtime.configure()
    from flows.stages.preprocess import preprocess

    with make_cluster(args.queue, args.account, args.jobs, args.walltime) as cluster:
        print(f"Dask scheduler {cluster.scheduler_address}, dashboard {cluster.dashboard_link}")
        print(cluster.job_script())
        summary = preprocess(args.input, args.dataset, args.store, dask_address=cluster.scheduler_address)
        print(summary)


if __name__ == "__main__":
    main()
