#!/bin/bash
# One node's training: `python -m torch.distributed.run "$@"`, with the preemption contract kept.
#
# torchrun reports a worker's exit status 75 (preempted after a checkpoint) as 1, so on its own a
# scheduler cannot tell a preemption from a failure. This wrapper forwards SIGTERM / SIGINT to
# torchrun (which passes it to the workers: they checkpoint and exit) and exits 75 when it was
# stopped that way and torchrun then ended non-zero; otherwise it exits with torchrun's status.
# Used as the Kubernetes training Job's command and by deploy/slurm/train.sbatch on every node.
set -uo pipefail

stopped=0
python -m torch.distributed.run "$@" &
child=$!
on_signal() {
  stopped=1
  kill -TERM "$child" 2>/dev/null || true
}
trap on_signal TERM INT

wait "$child"
rc=$?
# a trapped signal interrupts `wait` (status > 128): wait again until torchrun has really ended
while kill -0 "$child" 2>/dev/null; do
  wait "$child"
  rc=$?
done

if (( stopped && rc != 0 )); then
  echo "torchrun-node: stopped by a signal after training checkpointed (torchrun status $rc): exit 75" >&2
  exit 75
fi
exit "$rc"
