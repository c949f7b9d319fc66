#!/bin/bash
# Train on several nodes under SLURM: one torchrun agent per node, joined by the c10d rendezvous on the first node;
# torchrun restarts a failed group (--max-restarts) and train.py resumes its last checkpoint (--init_from=auto).
# 120 s before the time limit this script gets USR1 and passes it on: every process ends its step, the run saves
# and exits with 75; then the job is requeued and continues. out_dir must be on a file system all nodes share.
#
#     sbatch --nodes=4 scripts/slurm_train.sh config/train_gpt2.py --parallel=fsdp
#
# docs/cluster.md tells what happens on each failure.
#SBATCH --job-name=train
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --time=24:00:00
#SBATCH --signal=B:USR1@120
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=slurm-%j.out

set -u
PREEMPTED=75  # train.py's exit status when a signal stopped it after saving (EX_TEMPFAIL)
master=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
# init_from=auto first: the same command starts the run and continues it (a later --init_from would override it)
srun --kill-on-bad-exit=0 torchrun --nnodes="$SLURM_NNODES" --nproc_per_node="${SLURM_GPUS_ON_NODE:-8}" \
    --rdzv_backend=c10d --rdzv_endpoint="$master:${MASTER_PORT:-29500}" --rdzv_id="$SLURM_JOB_ID" \
    --max-restarts="${MAX_RESTARTS:-3}" --signals-to-handle=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1 \
    train.py --init_from=auto "$@" &
step=$!
warned=0
# srun passes USR1 to the torchrun agents, which pass it to their processes
trap 'warned=1; kill -USR1 "$step"' USR1 TERM
status=0
while kill -0 "$step" 2>/dev/null; do
    wait "$step"  # returns early when the trap runs: wait again until srun has ended
    status=$?
done
if [ "$status" -eq "$PREEMPTED" ] || [ "$warned" -eq 1 ]; then
    echo "preempted: requeueing job $SLURM_JOB_ID to continue from its checkpoint"
    scontrol requeue "$SLURM_JOB_ID"
    exit "$PREEMPTED"
fi
exit "$status"
