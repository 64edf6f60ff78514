#!/usr/bin/env bash
# Multi-node GPU training under SLURM: one process per node, each driving all of its GPUs.
# JAX reads the SLURM environment (node list, task id) to find process 0 and its peers.
# Prepare the data first, in one process: python main.py --mode=prepare (same arguments).
#
#   sbatch --nodes=2 launch/slurm.sh --config configs/d12.py --config.data.path=DATA
#   DRY_RUN=1 launch/slurm.sh --config configs/d12.py     # print what each node would run
#
#SBATCH --job-name=dlm
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=16
#SBATCH --time=24:00:00
#SBATCH --output=dlm-%j.out
#SBATCH --requeue
#SBATCH --signal=USR1@120
set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"
# SIGUSR1 two minutes before the time limit, and the SIGTERM of a preemption or scancel, make
# training checkpoint at the current step (all nodes at the same one) and exit 0. A requeued job
# reruns this same command and resumes from that checkpoint; so does a resubmitted one.
cmd=(python main.py --distributed --workdir="${WORKDIR:-runs/slurm-${SLURM_JOB_NAME:-dlm}}" "$@")
if [[ -n "${DRY_RUN:-}" ]]; then
  echo "each of ${SLURM_JOB_NUM_NODES:-the} node(s), one task: srun $(printf '%q ' "${cmd[@]}")"
  exit 0
fi
srun "${cmd[@]}"
